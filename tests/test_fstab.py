"""Mounting the usual way: `mount -t fuse.nffs -o ...`, an fstab line, plain `umount`.

mount(8) runs mount.fuse3, which runs `nffs FIELD_DIR MOUNTPOINT -o OPTS` with its own
PATH (/usr/local/bin first), so these tests need /usr/local/bin/nffs to be this
checkout's entry point: scripts/setup.sh links it; `system_nffs` re-links it when
another checkout on the machine took the link.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mounting import Mounts, is_mounted, nffs
from nffs.ui.mountopts import MountOptionError, options_to_args, rewrite_argv, split_options

COMMANDS = {"init", "mount", "umount", "stat", "fsck", "refresh", "top", "warmup", "bench"}


# ---------------------------------------------------------------------- option parsing (no mount)
def test_tier_specs_keep_their_commas() -> None:
    opts = "rw,prefetch=markov,tier=dram=/x,kind=dram,capacity=8M,tier=home=/y,kind=nvme,latency=5ms,allow_other,dev,suid"
    assert split_options(opts) == ["rw", "prefetch=markov", "tier=dram=/x,kind=dram,capacity=8M",
                                   "tier=home=/y,kind=nvme,latency=5ms", "allow_other", "dev", "suid"]


def test_every_mount_flag_has_an_o_form() -> None:
    g, m = options_to_args(["prefetch=none,read_only,allow-other,max_batch=64,writeback_interval=2.5,"
                            "metrics_listen=127.0.0.1:9100,foreground,log_level=DEBUG,tier=a=/a,kind=dram"])
    assert g == ["--log-level", "DEBUG"]
    assert m == ["--prefetch", "none", "--read-only", "--allow-other", "--max-batch", "64", "--writeback-interval", "2.5",
                 "--metrics-listen", "127.0.0.1:9100", "--foreground", "--tier", "a=/a,kind=dram"]
    assert options_to_args(["ro"])[1] == ["--read-only"]


def test_the_parser_has_no_flag_without_an_o_form() -> None:
    import argparse

    from nffs.cli import build_parser
    from nffs.ui.mountopts import FLAGS, VALUED

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["mount"]
    flags = {s for a in sub._actions for s in a.option_strings if s.startswith("--")} - {"--help", "--ready-fd"}
    assert flags == set(FLAGS.values()) | set(VALUED.values())


def test_generic_options_are_ignored_and_unknown_ones_refused() -> None:
    assert options_to_args(["rw,dev,suid,nodev,nosuid,exec,noexec,auto,noauto,user,_netdev,nofail,defaults,"
                            "x-systemd.automount,noatime,comment=x"]) == ([], [])
    with pytest.raises(MountOptionError, match="unknown mount option 'prefetsh=none'"):
        options_to_args(["prefetsh=none"])
    with pytest.raises(MountOptionError, match="needs a value"):
        options_to_args(["prefetch"])


def test_mount_fuse3_call_form_becomes_nffs_mount() -> None:
    assert rewrite_argv(["/f", "/m", "-o", "rw,prefetch=markov,dev,suid"], COMMANDS) == \
        ["mount", "/f", "/m", "--prefetch", "markov"]
    assert rewrite_argv(["mount", "/f", "/m", "-oallow_other"], COMMANDS) == ["mount", "/f", "/m", "--allow-other"]
    assert rewrite_argv(["stat", "/m"], COMMANDS) == ["stat", "/m"]
    assert rewrite_argv(["/f", "/m"], COMMANDS) == ["mount", "/f", "/m"]
    assert rewrite_argv(["mout", "/f", "/m"], COMMANDS) == ["mout", "/f", "/m"]  # a typo stays a typo
    assert rewrite_argv(["--log-level", "DEBUG", "/f", "/m", "-o", "ro"], COMMANDS) == \
        ["--log-level", "DEBUG", "mount", "/f", "/m", "--read-only"]


def test_bad_option_is_a_clear_error() -> None:
    res = nffs("/nonexistent/f", "/nonexistent/m", "-o", "bogus=1", check=False)
    assert res.returncode == 2
    assert "unknown mount option 'bogus=1'" in res.stderr


# ---------------------------------------------------------------------- real mounts
def system_nffs() -> str:
    """Make `nffs` on mount.fuse3's PATH this checkout's (as scripts/setup.sh does)."""
    target = Path(sys.executable).parent / "nffs"
    assert target.exists(), f"{target} missing: run scripts/setup.sh"
    link = Path("/usr/local/bin/nffs")
    if os.path.realpath(link) != os.path.realpath(target):
        assert os.geteuid() == 0, "mount -t fuse.nffs tests need root (mount(8) runs the helper)"
        subprocess.run(["ln", "-sfn", str(target), str(link)], check=True)
    assert shutil.which("mount.fuse3") or shutil.which("mount.fuse"), "fuse3 (mount.fuse3) is not installed"
    return str(link)


def _write_and_check(mnt: Path) -> bytes:
    data = os.urandom(3 * 65536 + 100)
    fd = os.open(mnt / "params", os.O_WRONLY)
    try:
        os.pwrite(fd, data, 12345)  # no fsync: the unmount must make it durable
    finally:
        os.close(fd)
    return data


def _wait_until_released(field: Path, timeout: float = 120.0) -> None:
    """Wait until no daemon holds the field (plain umount returns while the daemon still flushes)."""
    import fcntl
    import time

    deadline = time.monotonic() + timeout
    while True:
        fd = os.open(field / "lock", os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            assert time.monotonic() < deadline, "the daemon never released the field after unmounting"
        finally:
            os.close(fd)
        time.sleep(0.05)


def _read_back(mounts: Mounts, field: Path, tiers: list[str], data: bytes) -> None:
    """After the daemon has exited, lose the volatile tier, remount: every write must be there."""
    _wait_until_released(field)
    dram = Path(f"{field}-dram")
    if dram.exists():
        for entry in dram.iterdir():
            if entry.is_dir():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    mnt = mounts.mount(field, *tiers, "--prefetch", "none")
    with open(mnt / "params", "rb") as f:
        f.seek(12345)
        assert f.read(len(data)) == data
    mounts.umount(mnt)


def _spec_opts(tiers: list[str]) -> str:
    return ",".join(f"tier={spec}" for flag, spec in zip(tiers[::2], tiers[1::2]))


@pytest.mark.mount
@pytest.mark.parametrize("how", ["plain umount", "nffs umount"])
def test_mount_t_fuse_nffs_and_durable_unmount(mounts: Mounts, tmp_path: Path, how: str) -> None:
    system_nffs()
    field = mounts.init("--log2-table-size", "14")
    tiers = mounts.tiers(field)
    mnt = tmp_path / "fstab-mnt"
    mnt.mkdir()
    opts = f"prefetch=none,{_spec_opts(tiers)},writeback_interval=600"
    res = subprocess.run(["mount", "-t", "fuse.nffs", "-o", opts, str(field), str(mnt)], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr + res.stdout
    mounts.mounted.append(mnt)
    assert is_mounted(mnt)
    pid = json.loads(nffs("stat", str(mnt), "--json").stdout)["pid"]
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert cmdline[cmdline.index(b"--prefetch") + 1] == b"none"
    assert cmdline[cmdline.index(b"--writeback-interval") + 1] == b"600.0"
    data = _write_and_check(mnt)
    if how == "plain umount":
        res = subprocess.run(["umount", str(mnt)], capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr
        mounts.mounted.remove(mnt)
    else:
        mounts.umount(mnt)
    assert not is_mounted(mnt)
    # mounting again at once must wait for the old daemon's flush, not fail on its lock
    _read_back(mounts, field, tiers, data)


@pytest.mark.mount
def test_fstab_line(mounts: Mounts, tmp_path: Path) -> None:
    """An fstab line of type fuse.nffs (in a private fstab file: /etc/fstab stays untouched)."""
    system_nffs()
    field = mounts.init("--log2-table-size", "14")
    tiers = mounts.tiers(field)
    mnt = tmp_path / "fstab-line-mnt"
    mnt.mkdir()
    fstab = tmp_path / "fstab"
    fstab.write_text(f"{field}  {mnt}  fuse.nffs  noauto,_netdev,nofail,prefetch=markov,allow_other,{_spec_opts(tiers)}  0 0\n")
    res = subprocess.run(["mount", "--fstab", str(fstab), str(mnt)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr + res.stdout
    mounts.mounted.append(mnt)
    # the options reached the daemon: allow_other in the mount table, the rest on its command line
    line = next(l for l in open("/proc/self/mounts") if f" {mnt} " in l)
    assert "allow_other" in line.split()[3]
    pid = json.loads(nffs("stat", str(mnt), "--json").stdout)["pid"]
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert cmdline[cmdline.index(b"--prefetch") + 1] == b"markov"
    assert cmdline.count(b"--tier") == 2
    data = _write_and_check(mnt)
    res = subprocess.run(["umount", str(mnt)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    mounts.mounted.remove(mnt)
    _read_back(mounts, field, tiers, data)


@pytest.mark.mount
def test_mount_waits_for_the_previous_daemons_lock(mounts: Mounts, tmp_path: Path) -> None:
    """A daemon still flushing after a plain umount holds the field's lock: a new mount waits for it."""
    import fcntl
    import threading
    import time

    field = mounts.init("--log2-table-size", "14")
    fd = os.open(field / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        mnt = tmp_path / "late-mnt"
        mnt.mkdir()
        res = nffs("mount", str(field), str(mnt), *mounts.tiers(field), "--lock-wait", "0.5", check=False)
        assert res.returncode == 1 and "in use by another nffs process" in res.stderr and "waited 0.5s" in res.stderr
        threading.Timer(1.5, lambda: os.close(fd)).start()
        start = time.monotonic()
        mounted = mounts.mount(field, *mounts.tiers(field), "--prefetch", "none")
        assert time.monotonic() - start >= 1.0
        assert is_mounted(mounted)
    finally:
        try:
            os.close(fd)
        except OSError:
            pass
