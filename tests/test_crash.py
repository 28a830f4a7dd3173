"""Crash suite (SPEC 7: fsync durability, consistency after any crash, no flip-flopping data).

Black-box: the `nffs` CLI, real mounts, kill -9 of the daemon, the tier directories only to
wipe or corrupt them. Quick slice by default; raise it with
NFFS_CRASH_ROUNDS=N (random crash rounds) and NFFS_CRASHMONKEY=all (every short workload).
"""
from __future__ import annotations

import errno
import os
import random
import time
from pathlib import Path

import pytest

from crashkit import (Loss, Rig, ByteModel, Tally, check_init_oracle, crash_loop, crashmonkey_workloads, drop_caches,
                      kill_during_fsync, recover_and_check, run_crashmonkey, spec_init_bytes, verify)
from mounting import fuse_available

ROUNDS = int(os.environ.get("NFFS_CRASH_ROUNDS", "4"))
SEED = int(os.environ.get("NFFS_CRASH_SEED", "0")) or random.randrange(1 << 30)


@pytest.fixture(autouse=True)
def _need_fuse() -> None:
    assert fuse_available(), "crash tests need /dev/fuse"
    assert os.geteuid() == 0, "crash tests need root (kill -9 of the daemon, drop_caches)"


@pytest.fixture
def rig(tmp_path: Path):
    r = Rig(tmp_path / "rig")
    try:
        yield r
    finally:
        r.cleanup()


# --------------------------------------------------------------------------- SPEC 2.3 oracle
def test_init_oracle_matches_scalar_formula() -> None:
    for cfg in ({"seed": 0}, {"seed": 12345678901234567890, "init_scale": 0.5},
                {"seed": 7, "dtype": "float16", "init_scale": 1.0}, {"seed": 3, "init": "zeros"}):
        check_init_oracle(cfg, [0, 1, 2, 1000, 123456789, (1 << 40) + 17])


@pytest.mark.parametrize("args", [("--seed", "0"), ("--seed", "987654321", "--init-scale", "0.25"),
                                  ("--seed", "5", "--dtype", "float16", "--init-scale", "1")])
def test_fresh_field_reads_spec_init(tmp_path: Path, args: tuple[str, ...]) -> None:
    rig = Rig(tmp_path / "r", init_args=("--dims", "2", "--levels", "3", "--log2-table-size", "10", "--page-size", "4K", *args))
    try:
        rig.mount()
        verify(rig, ByteModel(spec_init_bytes(rig.cfg, rig.size)), Tally(), f"fresh field {args}")
    finally:
        rig.cleanup()


# --------------------------------------------------------------------------- random crashes
@pytest.mark.parametrize("memory", ["8M", "16K"], ids=["roomy-dram", "migrating-16K-dram"])
def test_random_crashes(tmp_path: Path, memory: str) -> None:
    """Random pwrite/level/mmap/concept/fsync/sleep sequences, kill -9 after them, during
    write-back or during an fsync (with a 16K dram tier also during migrations), sometimes
    wiping the dram tier; after each: recovery, model check, clean umount, fsck exit 0,
    remount, nothing flipped."""
    tally = Tally()
    try:
        crash_loop(tmp_path / "loop", ROUNDS, SEED, tally, memory=memory)
    except Loss as exc:
        raise AssertionError(f"seed {SEED} (rerun with NFFS_CRASH_SEED={SEED}): {exc}\n{tally.summary()}") from None
    assert tally.rounds == ROUNDS and tally.bytes_verified > 0, tally.summary()


# --------------------------------------------------------------------------- CrashMonkey style
_ALL = crashmonkey_workloads()
_QUICK = [w for i, w in enumerate(_ALL) if i % 37 == 0] + [
    ((), ("p0",), False), ((), ("p0",), True), (("p0",), ("sp",), True), (("lv", "mm"), ("p1",), False)]
_CM = _ALL if os.environ.get("NFFS_CRASHMONKEY") == "all" else list(dict.fromkeys(_QUICK))


def test_crashmonkey_enumeration_is_exhaustive() -> None:
    # 5 writes; 0-2 before the fsync (an unsynced mmap only last), 0-1 after; 1-3 writes; x2 (wipe or not)
    assert len(_ALL) == 2 * (5 + 5 * 6 + 20 * 6)
    assert all(1 <= len(pre) + len(post) <= 3 for pre, post, _ in _ALL)


@pytest.mark.parametrize("workload", _CM, ids=lambda w: f"{'-'.join(w[0]) or 'none'}_fsync_{'-'.join(w[1]) or 'none'}{'_wipe' if w[2] else ''}")
def test_crashmonkey(tmp_path: Path, workload: tuple) -> None:
    run_crashmonkey(tmp_path / "cm", workload, Tally())


# --------------------------------------------------------------------------- issue 7 regressions
def test_stale_memory_copy_after_kill9(rig: Rig) -> None:
    """Issue 7: 4 KiB of A at 0, fsync, wait, 100 B of B at 0, kill -9, lazy unmount, mount:
    whatever the field shows must survive fsync + umount + mount unchanged."""
    rig.mount()
    rig.pwrite("params", 0, b"A" * 4096)
    rig.fsync()
    time.sleep(2)
    rig.pwrite("params", 0, b"B" * 100)
    rig.kill9()
    rig.mount()
    first = rig.read_all()[:4096].tobytes()
    assert first[100:] == b"A" * 3996, "fsynced bytes beyond the unsynced write changed"
    assert first[:100] in (b"A" * 100, b"B" * 100), f"bytes 0..99 hold neither old nor new data: {first[:8]!r}"
    rig.fsync()
    rig.umount()
    rig.mount()
    second = rig.read_all()[:4096].tobytes()
    assert second == first, (f"after kill -9 the field showed {first[:4]!r}..., after fsync + umount + mount "
                             f"it shows {second[:4]!r}...: data changed without a write")


def _flip_memory_tier(dram: Path) -> int:
    """XOR every byte of every regular file below the dram tier directory; returns bytes flipped."""
    flipped = 0
    for root, _dirs, files in os.walk(dram):
        for name in files:
            path = os.path.join(root, name)
            if os.path.islink(path):
                continue
            with open(path, "r+b") as f:
                data = f.read()
                if data:
                    f.seek(0)
                    f.write(bytes(b ^ 0xFF for b in data))
                    flipped += len(data)
    return flipped


def _read_eio_or(rig: Rig, want: bytes, off: int = 0) -> None:
    fd = os.open(rig.mnt / "params", os.O_RDONLY)
    try:
        try:
            got = os.pread(fd, len(want), off)
        except OSError as exc:
            assert exc.errno == errno.EIO, f"expected EIO or the committed data, got {exc}"
            return
    finally:
        os.close(fd)
    flipped = bytes(b ^ 0xFF for b in want)
    assert got != flipped, "a corrupted memory copy was returned as data"
    assert got == want, f"read neither EIO nor the committed data: {got[:8]!r}"


def test_corrupted_memory_copy_while_mounted(rig: Rig) -> None:
    """Issue 7 / SPEC 3+7: a memory copy that fails its checksum is never returned."""
    rig.mount()
    want = bytes(range(256)) * 16 * 2  # pages 0 and 1
    want = bytes(b & 0x3F for b in want)
    rig.pwrite("params", 0, want)
    rig.fsync()
    time.sleep(1)  # write-back done: clean memory copies
    assert _flip_memory_tier(rig.dram) > 0, "no memory-tier copy to corrupt (is the dram tier used at all?)"
    drop_caches()
    _read_eio_or(rig, want)


def test_corrupted_memory_copy_after_crash(rig: Rig) -> None:
    rig.mount()
    want = bytes(b & 0x3F for b in os.urandom(8192))
    rig.pwrite("params", 0, want)
    rig.fsync()
    time.sleep(1)
    rig.kill9()
    assert _flip_memory_tier(rig.dram) > 0, "no memory-tier copy to corrupt after the crash"
    rig.mount()
    _read_eio_or(rig, want)


def test_crash_leftovers_reclaimed(tmp_path: Path) -> None:
    """Issue 7: after crashes during write-back and during fsync + recovery + clean umount,
    fsck exits 0 (superseded homes and temporary files are reclaimed). 42 pages of 4 KiB, so
    each fsync has many pages in flight when the kill lands."""
    rig = Rig(tmp_path / "left", init_args=("--dims", "2", "--levels", "4", "--log2-table-size", "14", "--page-size", "4K"))
    try:
        rig.mount()
        model = ByteModel(spec_init_bytes(rig.cfg, rig.size))
        tally = Tally()
        rng = random.Random(1)
        pages = rig.size // rig.page_size
        for rnd in range(6):
            for i in range(pages):
                data = bytes([0x20 + rnd]) * rig.page_size
                model.write(i * rig.page_size, data)
                rig.pwrite("params", i * rig.page_size, data)
            rig.fsync()
            model.synced()
            time.sleep(0.3)
            for i in range(pages):
                data = bytes([0x30 + rnd]) * 1000
                model.write(i * rig.page_size + 7, data)
                rig.pwrite("params", i * rig.page_size + 7, data)
            if rnd % 3 == 0:
                time.sleep(rng.uniform(0.15, 0.35))  # in the middle of write-back
                rig.kill9()
            elif kill_during_fsync(rig, 0.002 * rnd, tally):  # in the middle of an fsync
                model.synced()
            if rnd == 2:
                rig.wipe_volatile()
            recover_and_check(rig, model, tally, f"leftovers round {rnd}")  # includes fsck after a clean umount
        rig.umount()
        res = rig.fsck()
        assert res.returncode == 0, f"fsck after crashes + recovery + clean umount: {res.stdout}{res.stderr}"
    finally:
        rig.cleanup()


def test_recovered_data_survives_a_second_crash(rig: Rig) -> None:
    """SPEC 7: after a crash the field never shows data that later changes without a write.
    What the first recovery shows must still be there after a second kill -9 that also loses
    the volatile tier (found by the model test: recovery showed an unsynced write from a dirty
    memory copy without making it durable; the second crash brought the old home back)."""
    rig.mount()
    rig.pwrite("params", 0, b"\x21" * 4096)
    rig.fsync()
    time.sleep(0.5)
    rig.pwrite("params", 3000, b"\x22" * 100)  # not synced
    rig.kill9()
    rig.mount()
    first = rig.read_all()[:4096].tobytes()
    assert first[3000:3100] in (b"\x21" * 100, b"\x22" * 100)
    rig.kill9()
    rig.wipe_volatile()
    rig.mount()
    second = rig.read_all()[:4096].tobytes()
    assert second == first, (f"the first recovery showed {first[3000:3004]!r}, after a second crash (no write in "
                             f"between) the field shows {second[3000:3004]!r}")
