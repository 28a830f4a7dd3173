"""A field whose durable home is on a real MooseFS cluster (issue 11; SPEC 3 and 7).

Each module run starts a master and two chunkservers in network namespaces (see
scripts/moosefs.py and docs/moosefs.md) and tears them down at the end.  The mfsmount
options make an outage an I/O error after ``mfstimeout`` (10 s), not a hang.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from mounting import NFFS, Mounts, is_mounted, nffs, wait_until

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import moosefs  # noqa: E402  (scripts/moosefs.py, the harness)

if TYPE_CHECKING:
    from moosefs_fixture import Mfs

pytest_plugins = ["moosefs_fixture"]   # fixtures mfs_cluster, mfs, mfs_mounts
CLIENT = "r1"                          # the client namespace of the fixture's cluster

PAGE = 16384
SMALL = ("--levels", "8", "--log2-table-size", "14", "--page-size", "16K")   # 58 pages of 16 KiB
LARGER = ("--levels", "8", "--log2-table-size", "18", "--page-size", "16K")  # about 600 pages of 16 KiB
OUTAGE_BOUND = 30.0   # seconds within which I/O on an unreachable page must fail (mfstimeout=10)


def stats(mnt: Path) -> dict:
    return json.loads((mnt / "stats").read_text())


def tier_stats(mnt: Path) -> dict[str, dict]:
    return {t["name"]: t for t in stats(mnt)["store"]["tiers"]}


def files_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def random_bytes(n: int, seed: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def write_params(mnt: Path, data: bytes, offset: int = 0) -> None:
    with open(mnt / "params", "r+b") as f:
        f.seek(offset)
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def kill9(mounts: Mounts, mnt: Path) -> None:
    pid = stats(mnt)["pid"]
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not moosefs.pid_alive(pid), 10, what=f"killed daemon {pid} to exit")
    subprocess.run(["umount", "-l", str(mnt)], check=True)
    mounts.mounted.remove(mnt)


def timed_pread(fd: int, n: int, off: int) -> tuple[bytes | OSError, float]:
    t0 = time.monotonic()
    try:
        out: bytes | OSError = os.pread(fd, n, off)
    except OSError as e:
        out = e
    return out, time.monotonic() - t0


# ------------------------------------------------------------------ the harness itself

def test_harness_starts_real_servers_and_leaves_nothing_behind() -> None:
    """A second, private cluster: goal 2 on two chunkservers, then down removes every trace."""
    with moosefs.cluster(chunkservers=2, clients=1) as c:
        mnt = c.mount("root")
        rmnt = c.mount(CLIENT, client=CLIENT)
        (mnt / "f").write_bytes(b"x" * 100_000)
        os.sync()
        assert (rmnt / "f").read_bytes() == b"x" * 100_000       # another "machine" sees it
        # one copy per chunkserver: made by the write, or by replication soon after when the
        # second chunkserver had not yet reported its disks as the chunk was created (a
        # slow machine: one copy at once, the second within seconds)
        infos = []

        def two_copies() -> bool:
            infos.append(subprocess.run(["mfsfileinfo", str(mnt / "f")], capture_output=True, text=True).stdout)
            return infos[-1].count("status:VALID") == 2

        wait_until(two_copies, 30, what=lambda: f"a copy on each chunkserver: {infos[-1]}", interval=0.5)
        pids = [n.pid for n in c.nodes.values() if n.pid] + c.mfsmount_pids("root") + c.mfsmount_pids(CLIENT)
        namespaces = [n.ns for n in c.nodes.values()] + [c.switch_ns]
        base = c.base
    assert not base.exists()
    assert not moosefs.mounts_under(base)
    assert not [p for p in pids if moosefs.pid_alive(p)]
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not [ns for ns in namespaces if ns in listed]
    assert not Path(f"/sys/class/net/nm{c.run_id}ha").exists()


# ------------------------------------------------------------------ a field homed on MooseFS

def test_tiers_above_moosefs_spill_down_and_read_back_after_remount(mfs: Mfs, mfs_mounts: Mounts, tmp_path: Path) -> None:
    """Local DRAM and a small local NVMe tier above a MooseFS home: pages spill to MooseFS."""
    field = mfs_mounts.init(*SMALL)
    far = mfs.dir / "far"
    tiers = ["--tier", f"dram={tmp_path}/dram,kind=dram,capacity=64K",
             "--tier", f"nvme={tmp_path}/nvme,kind=nvme,capacity=128K",
             "--tier", f"far={far},kind=hdd"]
    mnt = mfs_mounts.mount(field, *tiers, "--prefetch", "none")
    size = (mnt / "params").stat().st_size
    data = random_bytes(size, 11)
    write_params(mnt, data)
    ts = tier_stats(mnt)
    assert ts["far"]["pages"] > 0 and stats(mnt)["store"]["dirty_pages"] == 0
    mfs_mounts.umount(mnt)
    homes = files_under(far)
    assert homes and sum(p.stat().st_size for p in homes) >= (size // PAGE - 8 - 4) * PAGE // 2
    goals = subprocess.run(["mfsgetgoal", *map(str, homes)], capture_output=True, text=True).stdout
    assert all(line.rstrip().endswith(": 2") for line in goals.splitlines()), goals
    assert nffs("fsck", str(field)).returncode == 0
    mnt = mfs_mounts.mount(field, *tiers, "--prefetch", "none")
    assert (mnt / "params").read_bytes() == data


def test_kill_9_loses_no_fsynced_byte_with_the_home_on_moosefs(mfs: Mfs, mfs_mounts: Mounts, tmp_path: Path) -> None:
    field = mfs_mounts.init(*SMALL)
    tiers = ["--tier", f"dram={tmp_path}/dram,kind=dram,capacity=4M", "--tier", f"far={mfs.dir}/far,kind=hdd"]
    mnt = mfs_mounts.mount(field, *tiers, "--prefetch", "none", "--writeback-interval", "3600")
    size = (mnt / "params").stat().st_size
    data = bytearray(random_bytes(size, 12))
    write_params(mnt, bytes(data))
    # a second round of scattered small writes, fsynced, then killed at once
    fd = os.open(mnt / "params", os.O_RDWR)
    try:
        for k, off in enumerate(range(1000, size - 4096, 5 * PAGE + 777)):
            chunk = bytes([k % 251]) * 3000
            os.pwrite(fd, chunk, off)
            data[off:off + 3000] = chunk
        os.fsync(fd)
    finally:
        os.close(fd)
    kill9(mfs_mounts, mnt)
    shutil.rmtree(tmp_path / "dram", ignore_errors=True)      # every volatile copy lost
    res = nffs("fsck", str(field), check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    mnt = mfs_mounts.mount(field, *tiers, "--prefetch", "none")
    assert (mnt / "params").read_bytes() == bytes(data)


# ------------------------------------------------------------------ faults of a real cluster

def _field_homed_on_moosefs(mfs: Mfs, mounts: Mounts, tmp_path: Path, seed: int,
                            settings: tuple[str, ...] = SMALL) -> tuple[Path, list[str], bytes]:
    field = mounts.init(*settings)
    tiers = ["--tier", f"dram={tmp_path}/dram,kind=dram,capacity=4M", "--tier", f"far={mfs.dir}/far,kind=hdd"]
    mnt = mounts.mount(field, *tiers, "--prefetch", "none")
    size = (mnt / "params").stat().st_size
    data = random_bytes(size - 6 * PAGE, seed)          # the last 6 pages stay implicit (never written)
    write_params(mnt, data)
    mounts.umount(mnt)                                   # a clean unmount empties the memory tier
    return field, tiers, data


def test_one_chunkserver_down_with_goal_2_keeps_the_data_readable(mfs: Mfs, mfs_mounts: Mounts, tmp_path: Path) -> None:
    field, tiers, data = _field_homed_on_moosefs(mfs, mfs_mounts, tmp_path, 13)
    mfs.cluster.stop_chunkserver(0, signal.SIGKILL)
    mnt = mfs_mounts.mount(field, *tiers, "--prefetch", "none")
    t0 = time.monotonic()
    assert (mnt / "params").read_bytes()[:len(data)] == data
    assert time.monotonic() - t0 < OUTAGE_BOUND
    # writes still land (undergoal) and are durable
    more = random_bytes(3 * PAGE, 14)
    write_params(mnt, more, 5 * PAGE)
    mfs_mounts.umount(mnt)
    mfs.cluster.start_chunkserver(0)
    expect = data[:5 * PAGE] + more + data[8 * PAGE:]
    mnt = mfs_mounts.mount(field, *tiers, "--prefetch", "none")
    assert (mnt / "params").read_bytes()[:len(data)] == expect


def test_all_chunkservers_down_is_eio_for_moosefs_pages_only_and_recovers(mfs: Mfs, mfs_mounts: Mounts, tmp_path: Path) -> None:
    # Pages share slab files: a field larger than mfsmount's read-ahead (1 MiB beyond each
    # read) keeps the never-read pages out of the client's caches, so they really need a
    # chunkserver.
    field, tiers, data = _field_homed_on_moosefs(mfs, mfs_mounts, tmp_path, 15, LARGER)
    mnt = mfs_mounts.mount(field, *tiers, "--prefetch", "none")
    size = (mnt / "params").stat().st_size
    written = len(data) // PAGE
    hot = list(range(0, 8))                              # read now: promoted to the DRAM tier
    cold = [written - 3, written - 2]                    # never read: only on MooseFS
    implicit = list(range(written + 1, size // PAGE))    # never written: no tier involved
    fd = os.open(mnt / "params", os.O_RDONLY)
    try:
        for p in hot:
            assert os.pread(fd, PAGE, p * PAGE) == data[p * PAGE:(p + 1) * PAGE]
        assert tier_stats(mnt)["dram"]["pages"] >= len(hot)
        # hot pages are served by the kernel cache now; drop it so the daemon serves them
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        mfs.cluster.stop_all_chunkservers()

        # a read of a MooseFS-only page fails within a bound ...
        result: dict = {}
        blocked = threading.Thread(target=lambda: result.update(r=timed_pread(fd, 100, cold[0] * PAGE)))
        blocked.start()
        time.sleep(0.5)
        # ... and while it is pending, the rest of the field keeps working, fast
        for p in hot:
            got, dt = timed_pread(fd, PAGE, p * PAGE)
            assert got == data[p * PAGE:(p + 1) * PAGE], got
            assert dt < 5.0, f"page {p} on the DRAM tier took {dt:.1f}s during the outage"
        for p in implicit:
            got, dt = timed_pread(fd, PAGE, p * PAGE)
            assert isinstance(got, bytes) and len(got) == PAGE and dt < 5.0
        assert (mnt / "field.json").read_text()
        blocked.join(OUTAGE_BOUND + 5)
        assert not blocked.is_alive(), "a read of an unreachable page hung"
        got, dt = result["r"]
        assert isinstance(got, OSError) and got.errno == errno.EIO, got
        assert dt < OUTAGE_BOUND
        assert stats(mnt)["pid"] > 0                     # the daemon stays up

        mfs.cluster.start_all_chunkservers()             # recovery, without a remount
        for p in cold:
            wait_until(lambda: isinstance(timed_pread(fd, PAGE, p * PAGE)[0], bytes), 30, what=f"page {p} back", interval=0.5)
            assert os.pread(fd, PAGE, p * PAGE) == data[p * PAGE:(p + 1) * PAGE]
    finally:
        os.close(fd)
    mfs_mounts.umount(mnt)
    assert nffs("fsck", str(field)).returncode == 0


def test_fsync_during_a_full_outage_is_eio_within_a_bound(mfs: Mfs, mfs_mounts: Mounts, tmp_path: Path) -> None:
    """SPEC 7: a failing tier gives EIO for its pages -- fsync must not wait for the cluster to come back."""
    field, tiers, data = _field_homed_on_moosefs(mfs, mfs_mounts, tmp_path, 17)
    mnt = mfs_mounts.mount(field, *tiers, "--prefetch", "none")
    fd = os.open(mnt / "params", os.O_RDWR)
    result: dict = {}

    def write_and_fsync() -> None:
        t0 = time.monotonic()
        try:
            os.pwrite(fd, b"\xa5" * PAGE, 2 * PAGE)
            os.fsync(fd)
            result["r"] = ("ok", time.monotonic() - t0)
        except OSError as e:
            result["r"] = (e, time.monotonic() - t0)

    try:
        mfs.cluster.stop_all_chunkservers()
        th = threading.Thread(target=write_and_fsync)
        th.start()
        th.join(OUTAGE_BOUND)
        hung = th.is_alive()
        mfs.cluster.start_all_chunkservers()           # unblocks a hung fsync either way
        th.join(120)
        assert not hung, f"fsync still blocked after {OUTAGE_BOUND}s of outage"
        got, dt = result["r"]
        assert isinstance(got, OSError) and got.errno == errno.EIO, got
        # after recovery the page is either the old or the new bytes, never torn
        os.fsync(fd)
        page = os.pread(fd, PAGE, 2 * PAGE)
        assert page in (data[2 * PAGE:3 * PAGE], b"\xa5" * PAGE)
    finally:
        os.close(fd)


def test_moosefs_mount_gone_is_eio_and_nothing_lands_in_the_bare_mount_point(mfs: Mfs, mfs_mounts: Mounts, tmp_path: Path) -> None:
    field, tiers, data = _field_homed_on_moosefs(mfs, mfs_mounts, tmp_path, 16)
    mnt = mfs_mounts.mount(field, *tiers, "--prefetch", "none")
    written = len(data) // PAGE
    fd = os.open(mnt / "params", os.O_RDWR)
    try:
        for p in range(4):
            assert os.pread(fd, PAGE, p * PAGE) == data[p * PAGE:(p + 1) * PAGE]
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        mfs.cluster.kill_mount("root")                   # mfsmount dies; the mount point is bare
        bare = mfs.mnt
        assert not is_mounted(bare) and os.listdir(bare) == []

        got, dt = timed_pread(fd, 100, (written - 2) * PAGE)
        assert isinstance(got, OSError) and got.errno == errno.EIO, got
        assert dt < OUTAGE_BOUND
        for p in range(4):                               # on the DRAM tier: still served
            assert os.pread(fd, PAGE, p * PAGE) == data[p * PAGE:(p + 1) * PAGE]
        # a write whose home is gone cannot be made durable: EIO by fsync at the latest
        with pytest.raises(OSError) as err:
            os.pwrite(fd, b"\x5a" * PAGE, (written + 2) * PAGE)
            os.fsync(fd)
        assert err.value.errno == errno.EIO
        time.sleep(1.0)                                  # give a background write-back its chance
        assert os.listdir(bare) == [], "nffs wrote into the bare mount point"
        assert stats(mnt)["pid"] > 0
    finally:
        os.close(fd)
    assert os.listdir(mfs.mnt) == []
    mfs.cluster.mount("root")                            # the mount is back: so is every page
    subprocess.run([*NFFS, "umount", str(mnt)], capture_output=True, timeout=120)
    if is_mounted(mnt):
        subprocess.run(["umount", "-l", str(mnt)])
    mfs_mounts.mounted.remove(mnt)
    mnt = mfs_mounts.mount(field, *tiers, "--prefetch", "none")
    assert (mnt / "params").read_bytes()[:len(data)] == data


# ------------------------------------------------------------------ several machines

def _reader_mount(mfs: Mfs, mounts: Mounts, field_r: Path, tiers_r: list[str]) -> Path:
    """nffs mount --read-only from the client namespace: its own network, our mount namespace."""
    mounts.counter += 1
    mnt = mounts.tmp / f"reader{mounts.counter}"
    mnt.mkdir()
    ns = mfs.cluster.nodes[CLIENT].ns
    res = subprocess.run([*moosefs.Cluster.netns_argv(ns), *NFFS, "mount", str(field_r), str(mnt), "--read-only",
                          *tiers_r, "--prefetch", "none"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr + res.stdout
    mounts.mounted.append(mnt)
    assert is_mounted(mnt)
    return mnt


def test_another_machine_reads_the_field_read_only_after_the_writer_left(mfs: Mfs, mfs_mounts: Mounts, tmp_path: Path) -> None:
    """Field directory and home on MooseFS; the reader in namespace r1, through its own mfsmount."""
    field_w = mfs.dir / "field"
    nffs("init", str(field_w), *SMALL)
    tiers_w = ["--tier", f"dram={tmp_path}/dram-w,kind=dram,capacity=4M", "--tier", f"far={mfs.dir}/far,kind=hdd"]
    writer = mfs_mounts.mount(field_w, *tiers_w, "--prefetch", "none")
    size = (writer / "params").stat().st_size
    gen1 = random_bytes(size, 19)
    write_params(writer, gen1)
    mfs_mounts.umount(writer)
    rdir = mfs.client_dir()
    tiers_r = ["--tier", f"dram={tmp_path}/dram-r,kind=dram,capacity=4M", "--tier", f"far={rdir}/far,kind=hdd"]
    reader = _reader_mount(mfs, mfs_mounts, rdir / "field", tiers_r)
    pid = stats(reader)["pid"]
    assert os.readlink(f"/proc/{pid}/ns/net") != os.readlink("/proc/self/ns/net")     # really "elsewhere"
    assert os.readlink(f"/proc/{pid}/ns/mnt") == os.readlink("/proc/self/ns/mnt")     # mount visible here
    assert (reader / "params").read_bytes() == gen1
    mfs_mounts.umount(reader)


def test_read_only_mount_from_another_machine_reads_what_was_fsynced(mfs: Mfs, mfs_mounts: Mounts, tmp_path: Path) -> None:
    """No refresh needed: the reader mounts after the writer's fsync, while the writer stays mounted."""
    field_w = mfs.dir / "field"
    nffs("init", str(field_w), *SMALL)
    tiers_w = ["--tier", f"dram={tmp_path}/dram-w,kind=dram,capacity=4M", "--tier", f"far={mfs.dir}/far,kind=hdd"]
    writer = mfs_mounts.mount(field_w, *tiers_w, "--prefetch", "none")
    size = (writer / "params").stat().st_size
    gen1 = random_bytes(size, 20)
    write_params(writer, gen1)
    rdir = mfs.client_dir()
    tiers_r = ["--tier", f"dram={tmp_path}/dram-r,kind=dram,capacity=4M", "--tier", f"far={rdir}/far,kind=hdd"]
    reader = _reader_mount(mfs, mfs_mounts, rdir / "field", tiers_r)
    assert (reader / "params").read_bytes() == gen1
    with pytest.raises(OSError) as err:
        with open(reader / "params", "r+b") as f:
            f.write(b"no")
    assert err.value.errno in (errno.EROFS, errno.EACCES, errno.EPERM)
    mfs_mounts.umount(reader)
    assert (writer / "params").read_bytes() == gen1


def test_read_only_reader_on_another_machine_sees_fsynced_generations(mfs: Mfs, mfs_mounts: Mounts, tmp_path: Path) -> None:
    """One writer (root namespace), one reader (namespace r1, its own mfsmount and DRAM tier)."""
    # the field directory and the durable tier both live on MooseFS
    field_w = mfs.dir / "field"
    nffs("init", str(field_w), *SMALL)
    tiers_w = ["--tier", f"dram={tmp_path}/dram-w,kind=dram,capacity=4M", "--tier", f"far={mfs.dir}/far,kind=hdd"]
    writer = mfs_mounts.mount(field_w, *tiers_w, "--prefetch", "none")
    size = (writer / "params").stat().st_size
    gen1 = random_bytes(size, 21)
    write_params(writer, gen1)

    rdir = mfs.client_dir()                      # same directory, through r1's own mfsmount
    tiers_r = ["--tier", f"dram={tmp_path}/dram-r,kind=dram,capacity=4M", "--tier", f"far={rdir}/far,kind=hdd"]
    reader = _reader_mount(mfs, mfs_mounts, rdir / "field", tiers_r)
    assert (reader / "params").read_bytes() == gen1

    # the writer changes half the field and fsyncs: after a refresh the reader sees exactly that
    half = random_bytes(size // 2, 22)
    write_params(writer, half, size // 4)
    gen2 = gen1[:size // 4] + half + gen1[size // 4 + len(half):]
    nffs("refresh", str(reader))
    assert (reader / "params").read_bytes() == gen2

    # the writer crashes: the reader keeps serving the last published generation, whole pages only
    more = random_bytes(4 * PAGE, 23)
    with open(writer / "params", "r+b") as f:          # written, never fsynced
        f.seek(0)
        f.write(more)
    kill9(mfs_mounts, writer)
    nffs("refresh", str(reader))
    got = (reader / "params").read_bytes()
    for p in range(size // PAGE):
        page = got[p * PAGE:(p + 1) * PAGE]
        assert page == gen2[p * PAGE:(p + 1) * PAGE] or (p < 4 and page == more[p * PAGE:(p + 1) * PAGE]), p

    # the writer restarts (recovery on MooseFS), writes and fsyncs; the reader follows
    writer = mfs_mounts.mount(field_w, *tiers_w, "--prefetch", "none")
    gen3 = random_bytes(size, 24)
    write_params(writer, gen3)
    nffs("refresh", str(reader))
    assert (reader / "params").read_bytes() == gen3
    mfs_mounts.umount(writer)
    assert (reader / "params").read_bytes() == gen3
