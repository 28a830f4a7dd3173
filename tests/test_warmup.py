"""`nffs warmup`: a range, a level, a concept or points end up in the fastest (dram) tier."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from mounting import Mounts, nffs


def dram_pages(mnt: Path) -> int:
    stats = json.loads((mnt / "stats").read_text())
    (dram,) = [t for t in stats["store"]["tiers"] if t["name"] == "dram"]
    return int(dram["pages"])


def cold_field(mounts: Mounts, pages: int) -> tuple[Path, list[str]]:
    """A field whose first `pages` pages are materialised at home only (an empty dram tier)."""
    field = mounts.init("--log2-table-size", "16")
    mnt = mounts.mount(field, *mounts.tiers(field, memory="64M"), "--prefetch", "none")
    with open(mnt / "params", "r+b") as f:
        f.write(os.urandom(pages * 65536))
    mounts.umount(mnt)
    cold = ["--tier", f"dram={field}-dram2,kind=dram,capacity=64M", "--tier", f"nvme={field}-nvme,kind=nvme"]
    return field, cold


@pytest.mark.mount
def test_warmup_range_and_level_fill_the_dram_tier(mounts: Mounts) -> None:
    field, tiers = cold_field(mounts, 40)
    mnt = mounts.mount(field, *tiers, "--prefetch", "none")
    assert dram_pages(mnt) == 0
    res = nffs("warmup", str(mnt), "--range", "0", "16M")  # clipped to the 40 materialised pages' file
    assert "warmed up" in res.stdout and "tier dram" in res.stdout
    assert "\r" not in res.stdout  # no progress bar when stdout is not a terminal
    assert dram_pages(mnt) >= 40
    info = json.loads((mnt / "field.json").read_text())
    assert nffs("warmup", str(mnt), "--level", str(len(info["per_level"]) - 1)).returncode == 0


@pytest.mark.mount
def test_warmup_points_and_concept(mounts: Mounts, tmp_path: Path) -> None:
    field, tiers = cold_field(mounts, 64)
    mnt = mounts.mount(field, *tiers, "--prefetch", "none")
    points = tmp_path / "points.txt"
    points.write_text("0.1 0.2 0.3\n0.5,0.5,0.5\n# a comment\n0.9 0.8 0.7\n")
    nffs("warmup", str(mnt), "--points", str(points))
    after_points = dram_pages(mnt)
    assert after_points > 0
    (mnt / "concepts" / "cat").write_bytes(b"")
    nffs("warmup", str(mnt), "--concept", "cat")
    raw = tmp_path / "points.f32"
    np.random.default_rng(0).random((500, 3), dtype=np.float32).tofile(raw)
    nffs("warmup", str(mnt), "--points", str(raw))
    assert dram_pages(mnt) >= after_points


@pytest.mark.mount
def test_warmup_errors_are_clear(mounts: Mounts, tmp_path: Path) -> None:
    field = mounts.init("--log2-table-size", "14")
    mnt = mounts.mount(field, *mounts.tiers(field), "--prefetch", "none")
    for args, message in ((["--level", "99"], "no level 99"), (["--concept", "nope"], "no concept 'nope'"),
                          (["--range", "0", "0"], "bad range"), ([], "nothing to warm up")):
        res = nffs("warmup", str(mnt), *args, check=False)
        assert res.returncode == 1 and message in res.stderr, res.stderr
    bad = tmp_path / "bad.txt"
    bad.write_text("0.1 0.2\n")
    res = nffs("warmup", str(mnt), "--points", str(bad), check=False)
    assert res.returncode == 1 and "D=3" in res.stderr
    res = nffs("warmup", str(tmp_path), "--range", "0", "1", check=False)
    assert res.returncode == 1 and "not an nffs mount" in res.stderr


def test_progress_bar_draws_only_on_a_terminal() -> None:
    import io

    from nffs.ui.progress import Progress

    quiet = io.StringIO()
    with Progress("warmup", total=100, unit="B", stream=quiet) as p:
        p.advance(50)
    assert quiet.getvalue() == ""
    loud = io.StringIO()
    with Progress("warmup", total=4 << 20, unit="B", stream=loud, enabled=True) as p:
        p.advance(1 << 20)
        assert "25.0%" in p.line() and "1.0 MiB/4.0 MiB" in p.line()
    assert loud.getvalue().startswith("\r") and loud.getvalue().endswith("\n")
