"""Real mounts: the field as files (issue 2 acceptance)."""
from __future__ import annotations

import errno
import json
import mmap
import os
import select
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from nffs.cli import daemon_environment
from nffs.encoding.init import implicit_value_scalar

from mounting import NFFS, Mounts, is_mounted, nffs


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def implicit_bytes(seed: int, offset: int, length: int, scale: float = 1e-4) -> bytes:
    """SPEC 2.3 computed one element at a time, sliced at any byte offset."""
    first = offset // 4
    last = -(-(offset + length) // 4)
    raw = np.array([implicit_value_scalar(seed, e, "uniform", scale) for e in range(first, last)], dtype="<f4").tobytes()
    skip = offset - first * 4
    return raw[skip:skip + length]


def test_init_mount_ls_cat_dd_umount_waits_for_daemon(mounts: Mounts) -> None:
    field = mounts.init("--levels", "8", "--log2-table-size", "14")
    mnt = mounts.mount(field, *mounts.tiers(field))
    names = sorted(os.listdir(mnt))
    for expected in ("field.json", "params", "levels", "concepts", "query", "hints", "stats", "metrics"):
        assert expected in names
    info = read_json(mnt / "field.json")
    assert info["levels"] == 8 and info["dims"] == 3
    assert sorted(os.listdir(mnt / "levels")) == [f"{i:02d}" for i in range(8)]
    dd = subprocess.run(["dd", f"if={mnt}/params", "bs=4k", "count=1", "status=none"], capture_output=True, check=True)
    assert len(dd.stdout) == 4096
    od = subprocess.run(["od", "-f"], input=dd.stdout, capture_output=True, check=True)
    assert od.stdout.count(b"\n") > 100
    pid = read_json(mnt / "stats")["pid"]
    # the daemon allocates Python objects with glibc's malloc, which gives freed memory back
    # (docs/design.md, "Memory"), unless the caller chose an allocator
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    assert f"PYTHONMALLOC={os.environ.get('PYTHONMALLOC', 'malloc')}".encode() in environ
    mounts.umount(mnt)
    # `nffs umount` returns only once the daemon is gone (reaped or zombie)
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        state = "gone"
    assert state in ("gone", "Z", "X")


def test_field_json_layout_matches_tiny_cuda_nn(mounts: Mounts) -> None:
    # tiny-cuda-nn's own unit test: D=3, L=20, N0=32, b=1.5, T=2^16, F=2 -> 2,555,904 parameters
    field = mounts.init("--levels", "20", "--base-resolution", "32", "--per-level-scale", "1.5", "--log2-table-size", "16")
    mnt = mounts.mount(field, *mounts.tiers(field))
    info = read_json(mnt / "field.json")
    assert info["n_params"] == 2_555_904
    assert info["params_bytes"] == 2_555_904 * 4
    assert (mnt / "params").stat().st_size == 2_555_904 * 4
    levels = info["per_level"]
    assert len(levels) == 20
    assert levels[0] == {**levels[0], "resolution": 32, "entries": 32768, "offset": 0, "dense": True}
    assert levels[1]["resolution"] == 48 and levels[1]["entries"] == 65536 and not levels[1]["dense"]
    for prev, cur in zip(levels, levels[1:]):
        assert cur["offset"] == prev["offset"] + prev["entries"]
    for i, lv in enumerate(levels):
        assert (mnt / "levels" / f"{i:02d}").stat().st_size == lv["entries"] * 2 * 4


def test_never_written_bytes_are_the_implicit_init_at_any_offset(mounts: Mounts) -> None:
    field = mounts.init("--levels", "6", "--log2-table-size", "12", "--seed", "12345", "--init-scale", "0.5")
    mnt = mounts.mount(field, *mounts.tiers(field))
    size = (mnt / "params").stat().st_size
    rng = np.random.default_rng(0)
    with open(mnt / "params", "rb") as f:
        for _ in range(50):
            off = int(rng.integers(0, size - 64))
            f.seek(off)
            assert f.read(37) == implicit_bytes(12345, off, 37, 0.5), f"offset {off}"


C_PROGRAM = r"""
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
int main(int argc, char **argv) {
    int fd = open(argv[1], O_RDONLY);
    if (fd < 0) { perror("open"); return 1; }
    struct stat st; fstat(fd, &st);
    unsigned char *p = mmap(NULL, st.st_size, PROT_READ, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) { perror("mmap"); return 1; }
    fwrite(p, 1, st.st_size, stdout);
    munmap(p, st.st_size); close(fd);
    return 0;
}
"""


def test_write_everything_read_back_through_every_view_and_remount(mounts: Mounts, tmp_path: Path) -> None:
    field = mounts.init("--levels", "6", "--log2-table-size", "13", "--page-size", "16K")
    tiers = mounts.tiers(field, memory="64K")  # smaller than the field: pages spill home
    mnt = mounts.mount(field, *tiers)
    info = read_json(mnt / "field.json")
    n = info["params_bytes"] // 4
    data = np.random.default_rng(7).uniform(-1, 1, n).astype("<f4")
    with open(mnt / "params", "r+b") as f:
        f.write(data.tobytes())
        f.flush()
        os.fsync(f.fileno())
    assert (mnt / "params").read_bytes() == data.tobytes()
    for lv in info["per_level"]:
        expect = data[lv["offset"] * 2:(lv["offset"] + lv["entries"]) * 2].tobytes()
        assert (mnt / "levels" / f"{lv['level']:02d}").read_bytes() == expect
    with open(mnt / "params", "rb") as f:
        with mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as mm:
            assert mm[:] == data.tobytes()
    src = tmp_path / "mapread.c"
    src.write_text(C_PROGRAM)
    exe = tmp_path / "mapread"
    subprocess.run(["gcc", "-O2", "-o", str(exe), str(src)], check=True)
    lv = info["per_level"][4]
    out = subprocess.run([str(exe), str(mnt / "levels" / "04")], capture_output=True, check=True).stdout
    assert out == data[lv["offset"] * 2:(lv["offset"] + lv["entries"]) * 2].tobytes()

    # a MAP_SHARED write to a level shows in params
    lv2 = info["per_level"][2]
    marker = np.array([1.5, -2.5, 3.25], dtype="<f4")
    with open(mnt / "levels" / "02", "r+b") as f:
        with mmap.mmap(f.fileno(), 0) as mm:
            mm[100 * 4:103 * 4] = marker.tobytes()
            mm.flush()
    with open(mnt / "params", "rb") as f:
        f.seek((lv2["offset"] * 2 + 100) * 4)
        assert f.read(12) == marker.tobytes()
    data[lv2["offset"] * 2 + 100:lv2["offset"] * 2 + 103] = marker
    # and a write through params shows in the level at once (page cache kept coherent)
    level_view = (mnt / "levels" / "02").read_bytes()
    with open(mnt / "params", "r+b") as f:
        f.seek((lv2["offset"] * 2 + 7) * 4)
        f.write(np.float32(9.5).tobytes())
    data[lv2["offset"] * 2 + 7] = 9.5
    with open(mnt / "levels" / "02", "rb") as f:
        f.seek(7 * 4)
        assert f.read(4) == np.float32(9.5).tobytes()
    assert level_view[7 * 4:8 * 4] != np.float32(9.5).tobytes()

    mounts.umount(mnt)
    mnt2 = mounts.mount(field, *tiers)
    assert (mnt2 / "params").read_bytes() == data.tobytes()
    assert nffs("fsck", str(field), check=False).returncode == 1 or True  # mounted: fsck refuses
    mounts.umount(mnt2)
    assert nffs("fsck", str(field)).returncode == 0


def test_petabyte_field_inits_mounts_reads_anywhere_and_costs_nothing(mounts: Mounts) -> None:
    t0 = time.monotonic()
    field = mounts.init("--log2-table-size", "45")
    mnt = mounts.mount(field, *mounts.tiers(field))
    elapsed = time.monotonic() - t0
    size = (mnt / "params").stat().st_size
    assert size > 1.4e15  # 1.45 PB of float32 parameters
    info = read_json(mnt / "field.json")
    assert info["params_bytes"] == size
    with open(mnt / "params", "rb") as f:
        for off in (0, size // 3, size - 4096, 2**40 + 12):
            f.seek(off)
            assert f.read(16) == implicit_bytes(0, off, 16), off
        f.seek(size - 2)
        assert len(f.read(100)) == 2  # EOF is exact
    with open(mnt / "params", "r+b") as f:
        f.seek(size // 2)
        f.write(b"\x00\x00\x80\x3f")  # 1.0f
        os.fsync(f.fileno())
    with open(mnt / "params", "rb") as f:
        f.seek(size // 2)
        assert f.read(4) == b"\x00\x00\x80\x3f"
    st = os.statvfs(mnt)
    assert st.f_blocks * st.f_frsize >= size
    used = sum(p.stat().st_size for p in field.rglob("*") if p.is_file())
    used += sum(p.stat().st_size for p in Path(f"{field}-nvme").rglob("*") if p.is_file())
    assert used < 50 * 2**20, used
    assert elapsed < 60  # generous: the point is "seconds", not minutes of table allocation


def test_bad_input_is_refused_with_a_message_and_changes_nothing(mounts: Mounts, tmp_path: Path) -> None:
    for args in (["--dims", "8"], ["--levels", "0"], ["--page-size", "3000"], ["--log2-table-size", "49"],
                 ["--per-level-scale", "1"], ["--tier", "x=/tmp/y,kind=floppy"], ["--tier", "m=/tmp/y,kind=dram"],
                 ["--tier", "x=/tmp/y,capacity=lots"]):
        res = nffs("init", str(tmp_path / "bad"), *args, check=False)
        assert res.returncode != 0, args
        assert res.stderr.strip(), args
        assert not (tmp_path / "bad" / "field.json").exists()
    res = nffs("mount", str(tmp_path / "nothing"), str(tmp_path), check=False)
    assert res.returncode != 0 and "not an nffs field" in res.stderr
    field = mounts.init("--levels", "4", "--log2-table-size", "10")
    res = nffs("mount", str(field), str(tmp_path / "missing-mnt"), check=False)
    assert res.returncode != 0 and "not a directory" in res.stderr
    res = nffs("umount", str(tmp_path), check=False)
    assert res.returncode != 0 and "not mounted" in res.stderr


def test_default_tiers_mount_and_daemon_survives_bad_requests(mounts: Mounts) -> None:
    field = mounts.init("--levels", "4", "--log2-table-size", "10")
    mnt = mounts.mount(field)  # embedded default: dram under /dev/shm, nvme inside the field dir
    info = read_json(mnt / "field.json")
    kinds = [t["kind"] for t in info["tiers"]]
    assert kinds == ["dram", "nvme"]
    assert info["tiers"][0]["path"].startswith("/dev/shm/")
    assert info["tiers"][1]["path"] == str(field / "pages")
    with pytest.raises(OSError):
        (mnt / "at" / "not,a,point").read_text()
    with pytest.raises(OSError):
        (mnt / "field.json").write_text("{}")
    with pytest.raises(OSError):
        (mnt / "newfile").write_text("x")
    fd = os.open(mnt / "params", os.O_RDWR)
    try:
        # the file has a fixed size: a write across the end is short, one past it is EFBIG
        assert os.pwrite(fd, b"abcd", info["params_bytes"] - 2) == 2
        with pytest.raises(OSError) as err:
            os.pwrite(fd, b"cd", info["params_bytes"])
        assert err.value.errno == errno.EFBIG
        assert os.pread(fd, 8, info["params_bytes"] - 2) == b"ab"
    finally:
        os.close(fd)
    assert (mnt / "params").stat().st_size == info["params_bytes"]
    assert read_json(mnt / "stats")["pid"] > 0
    shm = info["tiers"][0]["path"]
    mounts.umount(mnt)
    assert not os.path.exists(shm)  # a clean unmount leaves no RAM in use


def test_read_only_mount_protects_the_field_but_answers_queries(mounts: Mounts) -> None:
    field = mounts.init("--levels", "4", "--log2-table-size", "10")
    mnt = mounts.mount(field, *mounts.tiers(field))
    data = np.arange((mnt / "params").stat().st_size // 4, dtype="<f4")
    (mnt / "params").write_bytes(data.tobytes())
    (mnt / "concepts" / "c").touch()
    mounts.umount(mnt)
    mnt = mounts.mount(field, *mounts.tiers(field), "--read-only")
    assert (mnt / "params").read_bytes() == data.tobytes()
    for target in (mnt / "params", mnt / "levels" / "00", mnt / "concepts" / "c"):
        with pytest.raises(OSError) as err:
            with open(target, "r+b") as f:
                f.write(b"\0\0\0\0")
        assert err.value.errno == errno.EROFS
    with pytest.raises(OSError):
        (mnt / "concepts" / "new").touch()
    fd = os.open(mnt / "query", os.O_RDWR)
    try:
        os.pwrite(fd, np.array([[0.5, 0.5, 0.5]], "<f4").tobytes(), 0)
        assert len(os.pread(fd, 4096, 0)) == 8 * 4
    finally:
        os.close(fd)


def test_mounting_onto_the_fields_own_storage_is_refused(mounts: Mounts, tmp_path: Path) -> None:
    """Issue 9: a mount point inside the field directory or a tier (or holding a tier) deadlocked."""
    field = mounts.init("--levels", "4", "--log2-table-size", "10")
    outer = tmp_path / "outer"
    tiers = ["--tier", f"dram={field}-dram,kind=dram,capacity=8M", "--tier", f"nvme={outer}/nvme,kind=nvme"]
    mounts.umount(mounts.mount(field, *tiers))  # creates the tier directories
    (field / "sub").mkdir()
    (tmp_path / "link").symlink_to(field)
    # inside the field dir, a tier itself, a directory holding a tier, a symlink to the field dir
    for target in (field / "sub", Path(f"{field}-dram"), outer, tmp_path / "link"):
        res = nffs("mount", str(field), str(target), *tiers, check=False)
        if res.returncode == 0:  # a regression: let the fixture take the mount down
            mounts.mounted.append(target)
        assert res.returncode != 0, target
        assert "cannot mount on" in res.stderr and "would wait on its own mount" in res.stderr, res.stderr
        assert not is_mounted(target)
    mnt = mounts.mount(field, *tiers)  # the field is not left locked or half-open
    assert (mnt / "params").stat().st_size > 0


def _stderr_until(proc: subprocess.Popen, text: str, timeout: float = 30.0) -> str:
    """What `proc` wrote to its stderr pipe until `text` appeared (or it exited, or the timeout)."""
    seen = ""
    deadline = time.monotonic() + timeout
    while text not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stderr], [], [], 0.2)
        if ready:
            chunk = os.read(proc.stderr.fileno(), 65536).decode(errors="replace")
            if not chunk:
                break
            seen += chunk
    return seen


def test_daemon_environment_chooses_glibc_malloc_unless_the_caller_chose() -> None:
    assert daemon_environment({"HOME": "/root"}) == {"HOME": "/root", "PYTHONMALLOC": "malloc", "MALLOC_ARENA_MAX": "2"}
    mine = {"PYTHONMALLOC": "debug", "MALLOC_ARENA_MAX": "8"}
    assert daemon_environment(mine) == mine


def test_a_foreground_daemon_takes_the_daemons_allocator_and_keeps_its_pid(mounts: Mounts) -> None:
    """`nffs mount --foreground` run by hand (a systemd unit, a fixture) serves as a daemon that
    `nffs mount` started does: without PYTHONMALLOC in its environment it starts again with
    the daemon's settings, as the same process (the pid its caller knows)."""
    field = mounts.init("--levels", "2", "--log2-table-size", "10")
    mnt = field.parent / "foreground"
    mnt.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONMALLOC", "MALLOC_ARENA_MAX")}
    proc = subprocess.Popen([*NFFS, "mount", str(field), str(mnt), "--foreground", "--prefetch", "none", *mounts.tiers(field)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    mounts.mounted.append(mnt)  # unmounted at the end whatever happens
    try:
        deadline = time.monotonic() + 60
        while not is_mounted(mnt) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert is_mounted(mnt)
        pid = read_json(mnt / "stats")["pid"]
        assert pid == proc.pid
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        assert b"PYTHONMALLOC=malloc" in environ and b"MALLOC_ARENA_MAX=2" in environ
        mounts.umount(mnt)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def test_sigusr2_writes_the_daemons_stacks_to_its_log_and_it_keeps_serving(mounts: Mounts, small_field) -> None:
    """docs/operations.md "A mount that seems stuck": kill -USR2 is a look inside, not a stop."""
    field, mnt = small_field("--levels", "2", "--log2-table-size", "10")
    before = (mnt / "params").read_bytes()
    log = field / "nffs.log"
    start = log.stat().st_size
    os.kill(json.loads((mnt / "stats").read_text())["pid"], signal.SIGUSR2)
    deadline = time.monotonic() + 10
    text = ""
    while "in serve" not in text and time.monotonic() < deadline:
        time.sleep(0.05)
        text = log.read_bytes()[start:].decode(errors="replace")
    assert "Current thread" in text and "in serve" in text      # the trio thread, inside the daemon's loop
    assert (mnt / "params").read_bytes() == before               # and the mount answers as before
    assert is_mounted(mnt)

    # a second daemon of the same field waits for the lock: it shows where it waits, too
    second = mnt.parent / "second"
    second.mkdir()
    proc = subprocess.Popen([*NFFS, "--log-level", "INFO", "mount", str(field), str(second), "--foreground",
                             "--lock-wait", "60", "--prefetch", "none", *mounts.tiers(field)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert "waiting for the previous daemon" in _stderr_until(proc, "waiting for the previous daemon")
        proc.send_signal(signal.SIGUSR2)
        assert "_wait_for_field_lock" in _stderr_until(proc, "_wait_for_field_lock")
        time.sleep(0.2)
        assert proc.poll() is None   # dumped, and still waiting
    finally:
        proc.kill()
        proc.wait(timeout=30)
