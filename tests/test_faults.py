"""Fault suite (SPEC 7: a vanished or failing tier gives EIO for its pages while the rest of the
field keeps working; a full durable tier is ENOSPC; nothing else changes; recovery when the
fault clears; nothing left behind). Black-box: real mounts, the tier directories are moved,
remounted read-only, filled, or served through tests/faultfs.py."""
from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from crashkit import Rig, drop_caches, is_mounted, lazy_unmount

PAGE = 4096
FIELD = ("--dims", "2", "--levels", "3", "--log2-table-size", "12", "--page-size", "4K")


@pytest.fixture(autouse=True)
def _root() -> None:
    assert os.geteuid() == 0, "fault tests need root (tmpfs mounts, drop_caches)"


def page_data(p: int, salt: int = 0) -> bytes:
    return bytes([(0x10 + p * 3 + salt) & 0x3F]) * PAGE


def write_pages(rig: Rig, pages: range, salt: int = 0) -> None:
    fd = os.open(rig.mnt / "params", os.O_WRONLY)
    try:
        for p in pages:
            os.pwrite(fd, page_data(p, salt), p * PAGE)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_pages(rig: Rig, pages: range) -> dict[int, bytes | int]:
    """page -> its bytes, or the errno of the failed read."""
    out: dict[int, bytes | int] = {}
    fd = os.open(rig.mnt / "params", os.O_RDONLY)
    try:
        for p in pages:
            try:
                out[p] = os.pread(fd, PAGE, p * PAGE)
            except OSError as exc:
                out[p] = exc.errno
    finally:
        os.close(fd)
    return out


def assert_daemon_serves(rig: Rig, query: bool = True) -> None:
    """The rest of the mount keeps working: stats, field.json, concepts/ and (when every page
    is readable) a query answer."""
    import json
    import numpy as np

    json.loads((rig.mnt / "stats").read_bytes())
    json.loads((rig.mnt / "field.json").read_bytes())
    os.listdir(rig.mnt / "concepts")
    if query:
        fd = os.open(rig.mnt / "query", os.O_RDWR)
        try:
            os.pwrite(fd, np.zeros(rig.layout["dims"], dtype="<f4").tobytes(), 0)
            assert len(os.pread(fd, 1 << 16, 0)) == rig.layout["encoding_width"] * 4
        finally:
            os.close(fd)


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def three_tiers(base: Path, nvme: Path | None = None, nvme_cap: str = "32K") -> list[str]:
    return ["--tier", f"dram={base}/dram,kind=dram,capacity=16K",
            "--tier", f"nvme={nvme or base / 'nvme'},kind=nvme,capacity={nvme_cap}",
            "--tier", f"hdd={base}/hdd,kind=hdd"]


# --------------------------------------------------------------------------- vanished tier
def test_vanished_durable_tier(tmp_path: Path) -> None:
    rig = Rig(tmp_path / "v", init_args=FIELD, tiers=three_tiers(tmp_path / "v"))
    try:
        rig.mount()
        n = rig.size // PAGE
        write_pages(rig, range(n))
        time.sleep(1)  # write-back and migrations settle; the 16K dram tier holds few pages
        away = tmp_path / "v" / "nvme-away"
        os.rename(tmp_path / "v" / "nvme", away)
        drop_caches()
        got = read_pages(rig, range(n))
        for p, v in got.items():
            assert v == errno.EIO or v == page_data(p), f"page {p}: neither EIO nor its data: {v if isinstance(v, int) else v[:4]}"
        eio = [p for p, v in got.items() if v == errno.EIO]
        good = [p for p, v in got.items() if v != errno.EIO]
        assert eio, "no page gave EIO although its only copy is on the vanished tier"
        # nvme (capacity 32K) can home at most 8 of the n pages: the others live on hdd and must keep working.
        assert len(good) >= n - 8, f"only {good} of {n} pages readable: pages on the hdd tier must keep working"
        assert_daemon_serves(rig, query=False)
        # A partial write to a page that is only on the vanished tier, then fsync: must fail (EIO).
        p = eio[0]
        failed = None
        fd = os.open(rig.mnt / "params", os.O_WRONLY)
        try:
            try:
                os.pwrite(fd, b"\x3f" * 100, p * PAGE + 10)
                os.fsync(fd)
            except OSError as exc:
                failed = exc.errno
        finally:
            os.close(fd)
        assert failed == errno.EIO, f"partial write + fsync to a page on a vanished tier gave {failed} instead of EIO"
        assert not (tmp_path / "v" / "nvme").exists(), "the vanished tier directory was recreated"
        # A whole-page overwrite needs no old data, but its home is still the vanished tier: EIO too.
        failed = None
        fd = os.open(rig.mnt / "params", os.O_WRONLY)
        try:
            try:
                os.pwrite(fd, page_data(p, 9), p * PAGE)
                os.fsync(fd)
            except OSError as exc:
                failed = exc.errno
        finally:
            os.close(fd)
        assert not (tmp_path / "v" / "nvme").exists(), f"the vanished tier directory was recreated (fsync gave {failed})"
        assert failed == errno.EIO, f"whole-page write + fsync to a page on a vanished tier gave {failed} instead of EIO"
        os.rename(away, tmp_path / "v" / "nvme")
        rig.umount()
        rig.mount()
        got = read_pages(rig, range(n))
        for q in range(n):
            assert got[q] == page_data(q), f"page {q} not intact after the tier came back: {got[q] if isinstance(got[q], int) else got[q][:4]}"
        rig.umount()
        res = rig.fsck()
        assert res.returncode == 0, res.stdout + res.stderr
    finally:
        rig.cleanup()


# --------------------------------------------------------------------------- read-only tier
def test_read_only_durable_tier(tmp_path: Path) -> None:
    base = tmp_path / "ro"
    base.mkdir()
    with tmpfs(base / "nvme", "8M") as nvme:
        rig = Rig(base, init_args=FIELD, tiers=["--tier", f"dram={base}/dram,kind=dram,capacity=8M",
                                                  "--tier", f"nvme={nvme},kind=nvme"])
        try:
            rig.mount()
            write_pages(rig, range(0, 4))
            time.sleep(0.5)
            subprocess.run(["mount", "-o", "remount,ro", str(nvme)], check=True)
            fd = os.open(rig.mnt / "params", os.O_WRONLY)
            err = None
            try:
                try:
                    os.pwrite(fd, page_data(5, 1), 5 * PAGE)
                    os.pwrite(fd, page_data(1, 1), 1 * PAGE)
                    os.fsync(fd)
                except OSError as exc:
                    err = exc.errno
            finally:
                os.close(fd)
            assert err in (errno.EROFS, errno.EIO, errno.ENOSPC), f"fsync onto a read-only durable tier gave {err}"
            assert_daemon_serves(rig)
            subprocess.run(["mount", "-o", "remount,rw", str(nvme)], check=True)
            write_pages(rig, range(4, 7), salt=2)  # works again once writable
            rig.umount()
            rig.mount()
            got = read_pages(rig, range(0, 7))
            for p in (0, 2, 3):
                assert got[p] == page_data(p), f"page {p} changed by a failed fsync"
            assert got[1] in (page_data(1), page_data(1, 1)), "page 1 is neither old nor new"
            for p in (4, 5, 6):
                assert got[p] == page_data(p, 2), f"page {p} written after the fault cleared was lost"
            rig.umount()
            res = rig.fsck()
            assert res.returncode == 0, res.stdout + res.stderr
        finally:
            rig.cleanup()


# --------------------------------------------------------------------------- full tier
def test_full_durable_tier_enospc(tmp_path: Path) -> None:
    base = tmp_path / "full"
    base.mkdir()
    with tmpfs(base / "nvme", "4M") as nvme:
        rig = Rig(base, init_args=("--dims", "3", "--levels", "4", "--log2-table-size", "16", "--page-size", "64K"),
                  tiers=["--tier", f"dram={base}/dram,kind=dram,capacity=8M", "--tier", f"nvme={nvme},kind=nvme"])
        try:
            rig.mount()
            assert rig.size >= 1 << 20
            rig.pwrite("params", 0, b"\x21" * 4096)
            rig.fsync()
            filler = nvme / "filler"
            with open(filler, "wb") as f:  # leave ~256 KiB free
                free = os.statvfs(nvme).f_bavail * os.statvfs(nvme).f_frsize
                f.write(b"\0" * max(0, free - (256 << 10)))
            big = b"\x22" * (1 << 20)
            err = None
            fd = os.open(rig.mnt / "params", os.O_WRONLY)
            try:
                try:
                    os.pwrite(fd, big, 65536)
                    os.fsync(fd)
                except OSError as exc:
                    err = exc.errno
            finally:
                os.close(fd)
            assert err == errno.ENOSPC, f"writing 1 MiB onto a full durable tier gave {err}, not ENOSPC"
            assert_daemon_serves(rig)
            assert rig.read_all()[:4096].tobytes() == b"\x21" * 4096, "fsynced data changed when the tier filled"
            filler.unlink()
            rig.pwrite("params", 65536, big)
            rig.fsync()  # works once space is free
            rig.umount()
            rig.mount()
            data = rig.read_all()
            assert data[:4096].tobytes() == b"\x21" * 4096
            assert data[65536:65536 + len(big)].tobytes() == big, "data fsynced after freeing space was lost"
            rig.umount()
            res = rig.fsck()
            assert res.returncode == 0, res.stdout + res.stderr
            leftovers = [p for p in nvme.rglob("*") if p.is_file() and p.name.endswith(".tmp")]
            assert not leftovers, f"temporary files left on the tier: {leftovers[:5]}"
        finally:
            rig.cleanup()


# --------------------------------------------------------------------------- failing tier (faultfs)
@contextlib.contextmanager
def faultfs(source: Path, mnt: Path, control: Path):
    source.mkdir(parents=True, exist_ok=True)
    mnt.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("faultfs.py")), str(source), str(mnt), str(control)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.strip() == "ready", f"faultfs did not start: {line}{proc.stderr.read() if proc.poll() is not None else ''}"
        assert is_mounted(mnt)
        yield mnt
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        if is_mounted(mnt):
            lazy_unmount(mnt)


def test_failing_durable_tier(tmp_path: Path) -> None:
    base = tmp_path / "ff"
    base.mkdir()
    control = base / "control"
    with faultfs(base / "nvme-src", base / "nvme", control) as nvme:
        rig = Rig(base, init_args=FIELD, tiers=["--tier", f"dram={base}/dram,kind=dram,capacity=16K",
                                                  "--tier", f"nvme={nvme}/tier,kind=nvme"])
        try:
            rig.mount()
            n = rig.size // PAGE
            write_pages(rig, range(n))
            time.sleep(1)
            control.write_text("read")
            drop_caches()
            got = read_pages(rig, range(n))
            for p, v in got.items():
                assert v == errno.EIO or v == page_data(p), f"page {p}: neither EIO nor its data"
            assert any(v == errno.EIO for v in got.values()), "no EIO although the tier fails every read"
            assert any(v != errno.EIO for v in got.values()), "pages in the memory tier must keep working"
            assert_daemon_serves(rig, query=False)
            for cycle in range(3):  # fail, clear, recover: three times, each may leave something behind
                control.write_text("write fsync")
                err = None
                try:
                    rig.pwrite("params", 0, page_data(0, 5 + cycle))
                    rig.fsync()
                except OSError as exc:
                    err = exc.errno
                assert err == errno.EIO, f"fsync onto a tier failing writes gave {err}, not EIO"
                control.write_text("")
                drop_caches()
                got = read_pages(rig, range(1, n))
                for p, v in got.items():
                    assert v == page_data(p, 7 if cycle else 0), f"page {p} did not recover once the fault cleared"
                write_pages(rig, range(n), salt=7)  # writes work again
            rig.umount()
            rig.mount()
            got = read_pages(rig, range(n))
            for p, v in got.items():
                assert v == page_data(p, 7), f"page {p}: data fsynced after recovery lost"
            rig.umount()
            res = rig.fsck()
            assert res.returncode == 0, res.stdout + res.stderr
            leftovers = [p for p in (base / "nvme-src").rglob("*") if p.is_file() and p.name.endswith(".tmp")]
            assert not leftovers, f"temporary files left on the tier: {leftovers[:5]}"
        finally:
            rig.cleanup()


# --------------------------------------------------------------------------- issue 9: bad input as a new user
@pytest.mark.parametrize("where", ["dram", "nvme", "field"])
def test_mount_on_own_tier_or_field_dir_refused(tmp_path: Path, where: str) -> None:
    """Mounting on the field's own memory tier, durable tier or field directory must be refused
    (accepted today, the first write deadlocks the daemon). Nothing is written if it is accepted,
    so the deadlock cannot wedge the test run."""
    rig = Rig(tmp_path / "own", init_args=FIELD)
    rig.mount()
    rig.umount()  # the tier dirs exist now
    target = {"dram": rig.dram, "nvme": rig.nvme, "field": rig.field}[where]
    res = subprocess.run([sys.executable, "-m", "nffs.cli", "mount", str(rig.field), str(target), *rig.tiers,
                          "--prefetch", "none"], capture_output=True, text=True, timeout=60)
    if res.returncode == 0:
        from crashkit import find_daemon_pid
        import signal

        pid = find_daemon_pid(target)
        if pid:
            os.kill(pid, signal.SIGKILL)
        lazy_unmount(target)
    assert res.returncode != 0, f"mounting on the field's own {where} directory was accepted"
    assert res.stderr.strip(), "refused without a message"


@pytest.mark.parametrize("bad", ["regular-file", "proc"])
def test_init_refuses_impossible_tier_paths(tmp_path: Path, bad: str) -> None:
    path = {"regular-file": tmp_path / "afile", "proc": Path("/proc/self/nffs-tier")}[bad]
    if bad == "regular-file":
        path.write_text("not a directory")
    field = tmp_path / "f"
    res = subprocess.run([sys.executable, "-m", "nffs.cli", "init", str(field), "--tier", f"nvme={path},kind=nvme"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode != 0, f"init accepted a tier at {path}"
    assert res.stderr.strip(), "refused without a message"
    assert not field.exists(), "a refused init created the field directory"
