"""One writer, many readers (docs/sharing.md) at the storage-core level, no FUSE."""
from __future__ import annotations

import json
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

        served_meanwhile: list[int] = []

        async def note(pages: list[int]) -> None:
            # the kernel's caches are being refreshed: `nffs refresh` (which waits for the
            # generation in `stats`) must not return yet
            served_meanwhile.append(reader.store.stats()["generation"])
            changed.extend(pages)

        reader.store.on_pages_changed = note
        was = reader.store.generation
        assert await reader.store.refresh() == writer.store.generation
        assert served_meanwhile == [was]
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
    generations.Publisher(str(tmp_path)).publish_full(7, rows)
    got = generations.load_current(str(tmp_path))
    assert got is not None and got.number == 7 and got.rows["page"].tolist() == [1, 5, 9]
    assert_refused_once_damaged(tmp_path, tmp_path / "gen" / "7.pt", -1)


def assert_refused_once_damaged(field: Path, path: Path, at: int) -> None:
    """Flip bits of one byte of a generation's file: loading CURRENT must refuse it."""
    raw = bytearray(path.read_bytes())
    raw[at] ^= 0x10
    path.write_bytes(bytes(raw))
    try:
        generations.load_current(str(field))
    except generations.GenerationError as exc:
        assert "checksum" in str(exc)
    else:
        raise AssertionError(f"a damaged {path.name} was accepted")


def rows_of(pages: list[int], tier: int = 0, slot0: int = 0) -> np.ndarray:
    rows = np.zeros(len(pages), dtype=generations.ROW)
    rows["page"] = pages
    rows["tier"] = tier
    rows["slot"] = np.arange(slot0, slot0 + len(pages))
    rows["sum"] = rows["slot"] * 7 + 1
    return rows


def test_deltas_apply_in_order_the_last_change_wins_and_no_home_drops() -> None:
    base = rows_of([1, 2, 3, 4])
    first = rows_of([2, 9], tier=1, slot0=100)
    second = rows_of([2, 3], tier=0, slot0=200)
    second["tier"][1] = generations.NO_HOME  # page 3 lost its home
    got = generations.apply_deltas(base, [first, second])
    assert got["page"].tolist() == [1, 2, 4, 9]
    assert got["slot"].tolist() == [0, 200, 3, 101]
    assert got["tier"].tolist() == [0, 0, 0, 1]


async def test_fsyncs_publish_deltas_that_readers_apply_exactly(tmp_path: Path) -> None:
    """An fsync publishes what changed since the last one, not the whole table; a reader
    that loads CURRENT gets exactly the writer's homes; the chain is rebased before it
    grows past its bounds, and only the files the last two CURRENTs name stay."""
    field = tmp_path / "f"
    init_field(str(field), FieldConfig(levels=4, log2_table_size=12, page_size=PAGE), specs(tmp_path, "writer"))
    writer = open_field(str(field), specs(tmp_path, "writer"))
    store = writer.store
    gen_dir = field / "gen"
    n_pages = writer.layout.params_bytes // PAGE
    rng = np.random.default_rng(3)
    try:
        await store.write(0, rng.integers(0, 256, writer.layout.params_bytes, dtype=np.uint8).tobytes())
        await store.sync()  # the writer's first publish is a base
        assert not list(gen_dir.glob("*.pd"))
        kinds = []

        def named_by_current() -> set[str]:
            meta = json.loads((gen_dir / "CURRENT").read_text())
            return {meta["file"], *(d["file"] for d in meta.get("deltas", []))}

        previous = named_by_current()
        for i in range(12):
            page = int(rng.integers(0, n_pages))
            await store.write(page * PAGE + 10, bytes([i]) * 100)
            await store.sync()
            newest = max((p for p in gen_dir.iterdir() if p.suffix in (".pt", ".pd")), key=lambda p: int(p.stem))
            kinds.append(newest.suffix)
            got = generations.load_current(str(field))
            assert got is not None and got.number == store.generation
            want = store.table.export_rows()
            assert got.rows.tobytes() == want.tobytes(), f"publish {i}: the reader's rows differ from the writer's"
            # what neither this CURRENT nor the one before names is gone
            named = named_by_current()
            assert {p.name for p in gen_dir.iterdir() if p.suffix in (".pt", ".pd")} == named | previous
            previous = named
        assert ".pd" in kinds, "small fsyncs should publish deltas"
        assert kinds.count(".pt") >= 1, "the chain should be rebased (delta_share of a small base)"
    finally:
        writer.close()
    # a writer that starts again publishes a base first (it does not know what it missed)
    writer = open_field(str(field), specs(tmp_path, "writer"))
    try:
        await writer.store.write(10, b"again")
        await writer.store.sync()
        meta = json.loads((gen_dir / "CURRENT").read_text())
        assert "deltas" not in meta and meta["file"] == f"{writer.store.generation}.pt"
        got = generations.load_current(str(field))
        assert got is not None and got.rows.tobytes() == writer.store.table.export_rows().tobytes()
    finally:
        writer.close()


def test_a_damaged_delta_is_refused(tmp_path: Path) -> None:
    pub = generations.Publisher(str(tmp_path))
    pub.publish_full(1, rows_of(list(range(100))))
    assert not pub.wants_full(3)
    pub.publish_delta(2, rows_of([5, 7, 200], tier=1, slot0=500))
    got = generations.load_current(str(tmp_path))
    assert got is not None and got.number == 2 and got.rows["page"].tolist()[-1] == 200
    assert_refused_once_damaged(tmp_path, tmp_path / "gen" / "2.pd", -3)


async def test_a_restarted_writer_does_not_reuse_slots_a_readers_generation_names(tmp_path: Path, monkeypatch) -> None:
    """The writer crashes after committing new homes it never published: the published
    generation still names the old slots, which the page table no longer references. While
    a reader holds a fresh lease, the restarted writer must not reuse them: a reader that
    loads that generation reads its bytes, not EIO or another page's."""
    from test_store_core import crash

    field = tmp_path / "f"
    init_field(str(field), FieldConfig(levels=4, log2_table_size=16, page_size=PAGE), specs(tmp_path, "writer"))
    writer = open_field(str(field), specs(tmp_path, "writer"))
    first = np.random.default_rng(5).integers(0, 256, 8 * PAGE, dtype=np.uint8).tobytes()
    await writer.store.write(0, first)
    await writer.store.sync()  # published: pages 0..7 in their first slots
    reader = open_field(str(field), specs(tmp_path, "reader"), read_only=True)  # a fresh lease, on that generation
    assert generations.readers_active(str(field), 60.0)

    def not_now(*args, **kwargs):
        raise OSError(5, "the publish of a writer about to crash")

    monkeypatch.setattr(generations.Publisher, "publish_delta", not_now)
    monkeypatch.setattr(generations.Publisher, "publish_full", not_now)
    await writer.store.write(0, bytes(8 * PAGE))
    await writer.store.sync()  # committed to new slots, not published
    monkeypatch.undo()
    crash(writer)

    writer = open_field(str(field), specs(tmp_path, "writer"))
    try:
        n = writer.layout.params_bytes // PAGE
        assert n >= 24  # new pages enough to take every slot the crash left free
        await writer.store.write(8 * PAGE, np.random.default_rng(6).integers(0, 256, (n - 8) * PAGE, dtype=np.uint8).tobytes())
        await writer.store.sync()  # many new homes: none may take a slot the reader's generation names
        assert await reader.store.read(0, 8 * PAGE) == first
    finally:
        reader.close()
        writer.close()
