"""Security suite (SPEC 6 "private unless --allow-other", SPEC 7: tier directories private,
nothing reached through planted links, missing/replaced tier roots are errors, no unpickling,
bounded client buffers). See docs/threat-model.md.

Another local user is created with useradd and runs commands through setpriv. Everything is
placed in a world-traversable temp dir so that only nffs's own permissions stand in the way.
"""
from __future__ import annotations

import errno
import io
import json
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from crashkit import Rig, find_daemon_pid, is_mounted, nffs

OTHER = "nffsother"


@pytest.fixture(scope="session")
def other_user() -> tuple[int, int]:
    assert os.geteuid() == 0, "security tests need root (useradd, mounts)"
    assert shutil.which("setpriv"), "security tests need setpriv (util-linux)"
    try:
        pw = pwd.getpwnam(OTHER)
    except KeyError:
        res = subprocess.run(["useradd", "-M", "-r", "-s", "/bin/sh", OTHER], capture_output=True, text=True)
        assert res.returncode == 0, f"cannot create the other local user: {res.stderr}"
        pw = pwd.getpwnam(OTHER)
    assert pw.pw_uid != 0
    return pw.pw_uid, pw.pw_gid


def as_other(user: tuple[int, int], *cmd: str, timeout: float = 30) -> subprocess.CompletedProcess:
    uid, gid = user
    return subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", *cmd],
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def pub(tmp_path: Path):
    """A temp dir every user can traverse (tmp_path itself is 0700)."""
    d = Path(tempfile.mkdtemp(prefix="nffs-sec-", dir="/tmp"))
    os.chmod(d, 0o755)
    rigs: list[Rig] = []
    try:
        yield d, rigs
    finally:
        for r in rigs:
            r.cleanup()
        shutil.rmtree(d, ignore_errors=True)


SMALL = ("--dims", "2", "--levels", "2", "--log2-table-size", "10", "--page-size", "4K")


def make_rig(pub, **kw) -> Rig:
    d, rigs = pub
    r = Rig(d / f"r{len(rigs)}", init_args=SMALL, **kw)
    os.chmod(r.base, 0o755)
    os.chmod(r.mnt, 0o755)
    rigs.append(r)
    return r


def victim(d: Path) -> tuple[Path, dict[str, bytes]]:
    v = d / "victim"
    v.mkdir()
    files = {"precious.txt": b"do not touch\n", "0": b"looks like a page\n", "1-abc": b"x" * 100}
    for name, data in files.items():
        (v / name).write_bytes(data)
    return v, files


def assert_untouched(v: Path, files: dict[str, bytes]) -> None:
    assert sorted(os.listdir(v)) == sorted(files), f"victim dir changed: {sorted(os.listdir(v))}"
    for name, data in files.items():
        assert (v / name).read_bytes() == data, f"victim file {name} changed"
        assert (v / name).stat().st_uid == 0


def use_mount(rig: Rig, eio_ok: bool = False) -> int | None:
    """Write, fsync and read through the mount. With eio_ok, an error is returned (errno) instead
    of raised, so that the caller can first check the victim and then the error."""
    try:
        rig.pwrite("params", 0, b"\x11" * 8192)
        rig.fsync()
        rig.read_all()
    except OSError as exc:
        if not eio_ok:
            raise
        return exc.errno
    return None


# --------------------------------------------------------------------------- access control
def test_private_mount_not_readable_by_other_user(pub, other_user) -> None:
    rig = make_rig(pub)
    rig.mount()
    for name in ("params", "field.json", "stats"):
        res = as_other(other_user, "cat", str(rig.mnt / name))
        assert res.returncode != 0, f"another user read {name} of a private mount"
    res = as_other(other_user, "ls", str(rig.mnt))
    assert res.returncode != 0, "another user listed a private mount"


def test_allow_other_respects_modes(pub, other_user) -> None:
    rig = make_rig(pub)
    rig.mount("--allow-other")
    use_mount(rig)
    before = rig.read_all()
    res = as_other(other_user, "cat", str(rig.mnt / "field.json"))
    assert res.returncode == 0, f"--allow-other: another user cannot read field.json: {res.stderr}"
    mode = (rig.mnt / "params").stat().st_mode
    assert not mode & stat.S_IWOTH, "params is world-writable"
    for name in ("params", "levels/00"):
        res = as_other(other_user, "dd", "if=/dev/zero", f"of={rig.mnt / name}", "bs=4096", "count=1", "conv=notrunc")
        assert res.returncode != 0, f"another user wrote {name} although its mode forbids it"
    res = as_other(other_user, "touch", str(rig.mnt / "concepts" / "intruder"))
    assert res.returncode != 0, "another user created a concept in a directory it may not write"
    res = as_other(other_user, "dd", "if=/dev/zero", f"of={rig.mnt / 'decoder.npz'}", "bs=16", "count=1")
    assert res.returncode != 0, "another user installed a decoder"
    assert np.array_equal(rig.read_all(), before), "the field changed after denied writes"
    assert "intruder" not in os.listdir(rig.mnt / "concepts")


# --------------------------------------------------------------------------- tier directories
def test_tier_dirs_private_and_metadata_not_world_readable(pub) -> None:
    rig = make_rig(pub)
    rig.mount()
    use_mount(rig)
    time.sleep(0.5)
    for tier in (rig.dram, rig.nvme):
        mode = stat.S_IMODE(tier.stat().st_mode)
        assert mode & 0o077 == 0, f"tier directory {tier} has mode {mode:o}, not 0700"
        for root, dirs, files in os.walk(tier):
            for name in dirs + files:
                m = stat.S_IMODE(os.lstat(os.path.join(root, name)).st_mode)
                assert m & 0o007 == 0, f"{os.path.join(root, name)} is accessible to other users ({m:o})"
    for name in os.listdir(rig.field):
        if name.startswith("meta") or name == "lock":
            m = stat.S_IMODE((rig.field / name).stat().st_mode)
            assert m & 0o044 == 0, f"field metadata {name} is readable by others ({m:o})"


def test_default_memory_tier_unguessable_and_private(pub) -> None:
    d, rigs = pub
    field = d / "deffield"
    nffs("init", str(field), *SMALL)
    mnt = d / "defmnt"
    mnt.mkdir()
    names = []
    try:
        for _ in range(2):
            nffs("mount", str(field), str(mnt), "--prefetch", "none")
            layout = json.loads((mnt / "field.json").read_text())
            dram = [t for t in layout["tiers"] if t["kind"] in ("dram", "cxl")]
            assert dram and dram[0]["path"].startswith("/dev/shm/"), layout["tiers"]
            path = Path(dram[0]["path"])
            names.append(path.name)
            st = os.lstat(path)
            assert stat.S_ISDIR(st.st_mode) and st.st_uid == 0
            assert stat.S_IMODE(st.st_mode) & 0o077 == 0, f"{path} has mode {stat.S_IMODE(st.st_mode):o}"
            nffs("umount", str(mnt))
        # Unguessable: not derivable from anything another user can read in the field directory.
        for name in names:
            token = name.split("-", 1)[-1]
            for f in field.iterdir():
                if f.is_file() and f.stat().st_mode & stat.S_IROTH:
                    assert token.encode() not in f.read_bytes(), f"memory tier name {name} appears in world-readable {f.name}"
    finally:
        if is_mounted(mnt):
            subprocess.run(["umount", "-l", str(mnt)])


def test_planted_symlink_in_memory_tier(pub, other_user) -> None:
    """Another user pre-creates the memory tier dir and plants links to a victim dir in it."""
    d, _ = pub
    v, files = victim(d)
    rig = make_rig(pub)
    rig.dram.mkdir()
    os.chown(rig.dram, *other_user)
    for name in ("0", "1", "pages", "arena", "slots"):
        os.symlink(v, rig.dram / name)
    os.lchown(rig.dram / "0", *other_user)
    res = nffs("mount", str(rig.field), str(rig.mnt), *rig.tiers, *rig.mount_args, check=False)
    if res.returncode == 0:
        rig.pid = find_daemon_pid(rig.mnt)
        err = use_mount(rig, eio_ok=True)
        rig.umount()
        res2 = nffs("mount", str(rig.field), str(rig.mnt), *rig.tiers, *rig.mount_args, check=False)
        if res2.returncode == 0:
            rig.read_all()
            rig.umount()
        assert_untouched(v, files)
        assert err in (None, errno.EIO), f"using the mount gave {errno.errorcode.get(err, err)}: was the planted link followed?"
    else:
        assert res.stderr.strip(), "mount failed without a message"
    assert_untouched(v, files)


def test_memory_tier_dir_replaced_by_symlink(pub) -> None:
    d, _ = pub
    v, files = victim(d)
    rig = make_rig(pub)
    rig.mount()
    use_mount(rig)
    rig.umount()
    shutil.rmtree(rig.dram, ignore_errors=True)
    os.symlink(v, rig.dram)
    res = nffs("mount", str(rig.field), str(rig.mnt), *rig.tiers, *rig.mount_args, check=False)
    if res.returncode == 0:
        err = use_mount(rig, eio_ok=True)
        rig.umount()
        assert_untouched(v, files)
        assert err in (None, errno.EIO), f"using the mount gave {errno.errorcode.get(err, err)}: was the symlinked tier root followed?"
    else:
        assert res.stderr.strip(), "mount failed without a message"
    assert_untouched(v, files)


def test_default_memory_tier_planted_by_other_user(pub, other_user) -> None:
    """Issue 7: the default /dev/shm tier name is learnt and re-created by another user with a
    link to a victim dir; the next root mount must not empty the victim."""
    d, _ = pub
    v, files = victim(d)
    field = d / "deffield"
    nffs("init", str(field), *SMALL)
    mnt = d / "defmnt"
    mnt.mkdir()
    shm: Path | None = None
    try:
        nffs("mount", str(field), str(mnt), "--prefetch", "none")
        layout = json.loads((mnt / "field.json").read_text())
        shm = Path([t for t in layout["tiers"] if t["kind"] == "dram"][0]["path"])
        fd = os.open(mnt / "params", os.O_WRONLY)
        os.pwrite(fd, b"\x12" * 8192, 0)
        os.fsync(fd)
        os.close(fd)
        nffs("umount", str(mnt))
        if shm.exists():
            # The root-owned dir is left behind: the other user cannot plant in it if it is 0700.
            res = as_other(other_user, "ln", "-s", str(v), str(shm / "0"))
            assert res.returncode != 0, "another user planted a link inside the memory tier dir"
        else:
            res = as_other(other_user, "sh", "-c", f"mkdir {shm} && chmod 777 {shm} && ln -s {v} {shm}/0 && ln -s {v} {shm}/pages")
            assert res.returncode == 0, res.stderr
        res = nffs("mount", str(field), str(mnt), "--prefetch", "none", check=False)
        if res.returncode == 0:
            fd = os.open(mnt / "params", os.O_RDWR)
            data = os.pread(fd, 8192, 0)
            os.pwrite(fd, b"\x13" * 4096, 8192)
            os.fsync(fd)
            os.close(fd)
            assert data == b"\x12" * 8192
            nffs("umount", str(mnt))
        assert_untouched(v, files)
    finally:
        if is_mounted(mnt):
            subprocess.run(["umount", "-l", str(mnt)])
        # Remove only what this test planted (never follow the planted links).
        if shm is not None and os.path.lexists(shm):
            if shm.is_symlink():
                shm.unlink()
            elif os.lstat(shm).st_uid != 0:
                shutil.rmtree(shm, ignore_errors=True)  # rmtree does not follow symlinks inside


@pytest.mark.parametrize("how", ["symlink", "foreign-dir"])
def test_durable_tier_root_replaced_while_unmounted(pub, other_user, how: str) -> None:
    d, _ = pub
    v, files = victim(d)
    rig = make_rig(pub)
    rig.mount()
    use_mount(rig)
    rig.umount()
    real = rig.nvme.with_name("nvme-real")
    os.rename(rig.nvme, real)
    if how == "symlink":
        os.symlink(v, rig.nvme)
    else:
        rig.nvme.mkdir()
        os.chown(rig.nvme, *other_user)
        os.chmod(rig.nvme, 0o777)
    res = nffs("mount", str(rig.field), str(rig.mnt), *rig.tiers, *rig.mount_args, check=False)
    if res.returncode == 0:
        rig.pid = find_daemon_pid(rig.mnt)
        from test_faults import read_pages  # noqa: E402 (shared helper)

        got = read_pages(rig, range(2))
        assert all(g == errno.EIO for g in got.values()), f"pages of a replaced tier root were served: {got}"
        try:
            rig.pwrite("params", 0, b"\x14" * 4096)
            rig.fsync()
            wrote = True
        except OSError:
            wrote = False
        assert not wrote, "write + fsync onto a replaced tier root succeeded"
        rig.umount()
    else:
        assert "nvme" in (res.stderr + res.stdout) or str(rig.nvme) in res.stderr, f"unclear mount error: {res.stderr}"
    assert_untouched(v, files)
    if how == "foreign-dir":
        assert os.listdir(rig.nvme) == [], "the daemon wrote into a directory owned by another user"
        os.rmdir(rig.nvme)
    else:
        os.unlink(rig.nvme)
    os.rename(real, rig.nvme)
    rig.mount()
    data = rig.read_all()[:8192].tobytes()
    assert data[4096:] == b"\x11" * 4096, "fsynced data lost after the real tier came back"
    assert data[:4096] in (b"\x11" * 4096, b"\x14" * 4096), "page 0 is neither its fsynced nor its unsynced content"


# --------------------------------------------------------------------------- input handling
class _Boom:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


MARKER = "/tmp/nffs-unpickled-marker"


def test_pickled_decoder_rejected(pub) -> None:
    rig = make_rig(pub)
    rig.mount()
    if os.path.exists(MARKER):
        os.unlink(MARKER)
    width = rig.layout["encoding_width"]
    buf = io.BytesIO()
    obj = np.empty(1, dtype=object)
    obj[0] = _Boom()
    np.savez(buf, W0=np.ones((width, 2), dtype="f4"), b0=obj)
    err = None
    try:
        with open(rig.mnt / "decoder.npz", "wb") as f:
            f.write(buf.getvalue())
    except OSError as exc:
        err = exc.errno
    assert err == errno.EINVAL, f"a decoder with a pickled object array gave {err}, not EINVAL"
    assert not os.path.exists(MARKER), "the pickled payload was executed"
    assert not (rig.mnt / "decoder.npz").exists() or (rig.mnt / "decoder.npz").stat().st_size == 0
    # also a raw .npy pickle inside the zip
    zbuf = io.BytesIO()
    with zipfile.ZipFile(zbuf, "w") as z:
        import pickle

        z.writestr("W0.npy", pickle.dumps(_Boom()))
    err = None
    try:
        with open(rig.mnt / "decoder.npz", "wb") as f:
            f.write(zbuf.getvalue())
    except OSError as exc:
        err = exc.errno
    assert err == errno.EINVAL
    assert not os.path.exists(MARKER), "the pickled payload was executed"


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_hints_buffer_bounded(pub) -> None:
    rig = make_rig(pub)
    rig.mount()
    before = _rss(rig.pid)
    chunk = b"p" * (1 << 20)
    fd = os.open(rig.mnt / "hints", os.O_WRONLY)
    rejected = 0
    try:
        for _ in range(64):  # 64 MiB without a newline
            try:
                os.write(fd, chunk)
            except OSError as exc:
                assert exc.errno in (errno.EINVAL, errno.E2BIG, errno.ENOSPC, errno.EFBIG), exc
                rejected += 1
        grown = _rss(rig.pid) - before
    finally:
        try:
            os.close(fd)
        except OSError:
            pass
    assert grown < 16 << 20, f"an unterminated hints line grew the daemon by {grown >> 20} MiB"
    json.loads((rig.mnt / "stats").read_bytes())  # still serving


@pytest.mark.parametrize("max_batch", [None, "1000"], ids=["default-max-batch", "max-batch-1000"])
def test_query_buffer_bounded(pub, max_batch: str | None) -> None:
    """A query written with a gap is EINVAL and buffers nothing (issue 9: it buffered up to the
    whole max request); a request beyond --max-batch is EINVAL and not buffered past the bound."""
    extra = ("--max-batch", max_batch) if max_batch else ()
    rig = make_rig(pub, mount_args=("--prefetch", "none", *extra))
    rig.mount()
    before = _rss(rig.pid)
    fd = os.open(rig.mnt / "query", os.O_RDWR)
    try:
        # A gap: 8 bytes at 0, then 8 bytes at 6 MiB (inside the default bound of 1 Mi 2-D points = 8 MiB).
        os.pwrite(fd, np.zeros(2, "<f4").tobytes(), 0)
        err = None
        try:
            os.pwrite(fd, np.zeros(2, "<f4").tobytes(), 6 << 20)
            os.pread(fd, 16, 0)
        except OSError as exc:
            err = exc.errno
        grown_gap = _rss(rig.pid) - before
        assert err == errno.EINVAL and grown_gap < 2 << 20, (
            f"a query written with a gap gave {errno.errorcode.get(err, err)} (want EINVAL) and grew the daemon by "
            f"{grown_gap / 2**20:.1f} MiB (want < 2)")
        if max_batch:
            # Far more than --max-batch points, in order: rejected, not buffered.
            chunk = np.full(1 << 18, 0.5, "<f4").tobytes()  # 1 MiB
            err = None
            for i in range(32):
                try:
                    os.pwrite(fd, chunk, i * len(chunk))
                except OSError as exc:
                    err = exc.errno
                    break
            if err is None:
                try:
                    os.pread(fd, 16, 0)
                except OSError as exc:
                    err = exc.errno
            assert err == errno.EINVAL, f"a request beyond --max-batch gave {err}"
            grown = _rss(rig.pid) - before
            assert grown < 8 << 20, f"a request beyond --max-batch (1000 points = 8 KB) grew the daemon by {grown >> 20} MiB"
        # the handle stays usable
        os.pwrite(fd, np.zeros(2, "<f4").tobytes(), 0)
        assert len(os.pread(fd, 1 << 12, 0)) == rig.layout["encoding_width"] * 4
    finally:
        os.close(fd)


def test_concept_names_never_host_paths(pub) -> None:
    rig = make_rig(pub)
    rig.mount()
    names = ["evil", "..evil", "a b", "-rf", "~root", "%2e%2e", "x" * 255]
    for name in names:
        with open(rig.mnt / "concepts" / name, "wb") as f:
            f.write(np.zeros(rig.layout["encoding_width"], "<f4").tobytes())
    with pytest.raises(OSError):  # concepts/../x is the mount root, where nothing can be created
        open(rig.mnt / "concepts" / ".." / "x", "wb").close()
    with pytest.raises(OSError) as ei:
        open(rig.mnt / "concepts" / ("y" * 256), "wb").close()
    assert ei.value.errno == errno.ENAMETOOLONG
    rig.fsync()
    rig.umount()
    for root in (rig.field, rig.dram, rig.nvme, rig.base):
        for dirpath, dirs, files in os.walk(root):
            for name in dirs + files:
                assert name not in names, f"concept name {name!r} became a host path {dirpath}/{name}"
