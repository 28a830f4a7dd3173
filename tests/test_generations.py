"""One writer, many readers (docs/sharing.md) at the storage-core level, no FUSE."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from nffs.encoding.layout import FieldConfig
from nffs.tiers import generations
from nffs.tiers.fielddir import init_field, open_field
from nffs.tiers.spec import parse_tier_spec

PAGE = 16384


def specs(tmp: Path, who: str) -> list:
    # each machine has its own memory tier; the durable tier is shared (same name, its own path)
    return [parse_tier_spec(f"dram={tmp}/{who}-dram,kind=dram,capacity=1M"), parse_tier_spec(f"nvme={tmp}/shared,kind=nvme")]


async def test_a_reader_sees_what_the_writer_fsynced_after_a_refresh(tmp_path: Path) -> None:
    field = tmp_path / "f"
    init_field(str(field), FieldConfig(levels=4, log2_table_size=12, page_size=PAGE), specs(tmp_path, "writer"))
    writer = open_field(str(field), specs(tmp_path, "writer"))
    n = writer.layout.params_bytes
    first = np.random.default_rng(0).integers(0, 256, n, dtype=np.uint8).tobytes()
    await writer.store.write(0, first)
    await writer.store.sync()
    assert writer.store.generation >= 1
    before = os.listdir(field)
    reader = open_field(str(field), specs(tmp_path, "reader"), read_only=True)  # no lock: the writer holds it
    try:
        assert sorted(os.listdir(field)) == sorted(before)  # a reader creates nothing in the field directory
        assert await reader.store.read(0, n) == first
        # the writer changes a few pages; unsynced changes stay invisible, synced ones appear after a refresh
        await writer.store.write(PAGE + 100, b"\x01" * 5000)
        await reader.store.refresh()
        assert await reader.store.read(0, n) == first
        await writer.store.sync()
        changed: list[int] = []

        async def note(pages: list[int]) -> None:
            changed.extend(pages)

        reader.store.on_pages_changed = note
        assert await reader.store.refresh() == writer.store.generation
        second = bytearray(first)
        second[PAGE + 100:PAGE + 5100] = b"\x01" * 5000
        assert await reader.store.read(0, n) == bytes(second)
        assert changed == [1]
    finally:
        reader.close()
        writer.close()


async def test_slots_a_reader_may_still_use_are_not_reused_while_its_lease_is_fresh(tmp_path: Path) -> None:
    field = tmp_path / "f"
    init_field(str(field), FieldConfig(levels=4, log2_table_size=12, page_size=PAGE), specs(tmp_path, "writer"))
    writer = open_field(str(field), specs(tmp_path, "writer"))
    await writer.store.write(0, b"\x02" * PAGE)
    await writer.store.sync()
    reader = open_field(str(field), specs(tmp_path, "reader"), read_only=True)
    try:
        assert generations.readers_active(str(field), 60.0)
        await writer.store.write(0, b"\x03" * PAGE)
        await writer.store.sync()  # publishes, sees the lease: freed slots are retained
        await writer.store.write(0, b"\x04" * PAGE)
        await writer.store.sync()
        # the reader still on the first generation reads its bytes, not a reused slot
        assert await reader.store.read(0, PAGE) == b"\x02" * PAGE
        await reader.store.refresh()
        assert await reader.store.read(0, PAGE) == b"\x04" * PAGE
    finally:
        reader.close()
        writer.close()


def test_a_damaged_generation_is_refused(tmp_path: Path) -> None:
    rows = np.zeros(3, dtype=generations.ROW)
    rows["page"] = [1, 5, 9]
    generations.publish(str(tmp_path), 7, rows)
    got = generations.load_current(str(tmp_path))
    assert got is not None and got.number == 7 and got.rows["page"].tolist() == [1, 5, 9]
    path = tmp_path / "gen" / "7.pt"
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(bytes(raw))
    try:
        generations.load_current(str(tmp_path))
    except generations.GenerationError as exc:
        assert "checksum" in str(exc)
    else:
        raise AssertionError("a damaged generation was accepted")
