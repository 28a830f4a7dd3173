"""Black-box crash kit shared by the crash, model, fault and concurrency suites and scripts/soak.py.

Everything here drives nffs through its command line and real FUSE mounts; the on-disk
field directory and tier directories are touched only to kill, wipe, corrupt or plant.
No nffs module is imported.

Pieces:
- `spec_init_bytes` / `splitmix_scalar`: SPEC 2.3's implicit init (numpy, and a scalar
  oracle written straight from the SPEC to cross-check it).
- `Rig`: one field with explicit tiers in a temp dir, its mount point, kill -9 of the
  daemon (found through /proc), lazy unmount, wiping the volatile tier, fsck, and a
  watchdog that turns a hung operation into a recorded hang instead of a hung test.
- `ByteModel`: what every byte of `params` may read after a crash (fsynced bytes exactly;
  unsynced bytes: their last synced value or any value written since).
- Workloads (`crash_round`, `crashmonkey_workloads`, `run_crashmonkey`, `concurrency_round`)
  used by the tests and by the soak, counting into `Tally`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import itertools
import json
import mmap
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

NFFS = [sys.executable, "-m", "nffs.cli"]
OP_TIMEOUT = float(os.environ.get("NFFS_OP_TIMEOUT", "60"))

M64 = (1 << 64) - 1


class Loss(AssertionError):
    """A promise was broken (data lost or flipped, fsck failed, daemon hung...)."""


def nffs(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    res = subprocess.run([*NFFS, *args], capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        raise AssertionError(f"nffs {' '.join(args)} failed ({res.returncode}): {res.stderr}{res.stdout}")
    return res


def is_mounted(path: Path | str) -> bool:
    target = os.path.realpath(str(path))
    with open("/proc/self/mounts") as f:
        return any(len(line.split()) > 1 and line.split()[1] == target for line in f)


# ---------------------------------------------------------------------------------------------
# SPEC 2.3 implicit init
def splitmix_scalar(seed: int, e: int) -> float:
    """The SPEC's formula, one element at a time, in Python integers (the oracle)."""
    z = (seed * 0x9E3779B97F4A7C15 + e + 1) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    z = z ^ (z >> 31)
    return (z >> 40) / 2**24


def spec_init_values(seed: int, start: int, count: int, init: str = "uniform", init_scale: float = 1e-4,
                     dtype: str = "float32") -> np.ndarray:
    """Elements [start, start+count) of a never-written field, vectorised (numpy uint64 wraps mod 2^64)."""
    if init == "zeros":
        return np.zeros(count, dtype=dtype)
    with np.errstate(over="ignore"):
        e = np.arange(start, start + count, dtype=np.uint64)
        z = np.uint64((seed * 0x9E3779B97F4A7C15) & M64) + e + np.uint64(1)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    u = (z >> np.uint64(40)).astype(np.float64) / float(2**24)
    return (init_scale * (2.0 * u - 1.0)).astype(dtype)


def spec_init_bytes(cfg: dict, nbytes: int) -> np.ndarray:
    item = np.dtype(cfg.get("dtype", "float32")).itemsize
    vals = spec_init_values(int(cfg.get("seed", 0)), 0, nbytes // item, cfg.get("init", "uniform"),
                            float(cfg.get("init_scale", 1e-4)), cfg.get("dtype", "float32"))
    return np.frombuffer(vals.tobytes(), dtype=np.uint8).copy()


def check_init_oracle(cfg: dict, sample: Sequence[int]) -> None:
    """The numpy init agrees with the scalar oracle on the given element indices."""
    dtype = np.dtype(cfg.get("dtype", "float32"))
    seed = int(cfg.get("seed", 0))
    scale = float(cfg.get("init_scale", 1e-4))
    for e in sample:
        want = dtype.type(scale * (2 * splitmix_scalar(seed, e) - 1)) if cfg.get("init", "uniform") != "zeros" else dtype.type(0)
        got = spec_init_values(seed, e, 1, cfg.get("init", "uniform"), scale, dtype.name)[0]
        assert got.tobytes() == np.asarray(want, dtype=dtype).tobytes(), (e, got, want)


# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Tally:
    rounds: int = 0
    operations: int = 0
    bytes_verified: int = 0
    faults_injected: int = 0
    losses: int = 0
    flips: int = 0
    fsck_failures: int = 0
    hangs: int = 0
    daemon_crashes: int = 0
    problems: list = dataclasses.field(default_factory=list)

    def problem(self, kind: str, text: str) -> None:
        self.problems.append(f"{kind}: {text}")

    def ok(self) -> bool:
        return not (self.losses or self.flips or self.fsck_failures or self.hangs or self.daemon_crashes)

    def summary(self) -> str:
        return (f"rounds={self.rounds} operations={self.operations} bytes_verified={self.bytes_verified} "
                f"faults_injected={self.faults_injected} losses={self.losses} flips={self.flips} "
                f"fsck_failures={self.fsck_failures} hangs={self.hangs} daemon_crashes={self.daemon_crashes}")


# ---------------------------------------------------------------------------------------------
def find_daemon_pid(mnt: Path | str) -> int | None:
    """The daemon serving `mnt`: the `nffs.cli mount ... MNT --foreground` process, found in /proc."""
    target = os.path.abspath(str(mnt))
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        args = [a.decode(errors="replace") for a in argv]
        if "nffs.cli" in args and "mount" in args and "--foreground" in args and target in args:
            if process_alive(int(name)):
                return int(name)
    return None


def process_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def lazy_unmount(mnt: Path | str) -> None:
    subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
    if is_mounted(mnt):
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def drop_caches() -> None:
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


SMALL_FIELD = ("--dims", "2", "--levels", "3", "--features", "2", "--log2-table-size", "10", "--page-size", "4K")


class Rig:
    """A field with a dram tier and an nvme tier in `base`, mounted at base/mnt."""

    def __init__(self, base: Path, init_args: Sequence[str] = SMALL_FIELD, memory: str = "8M",
                 writeback: float = 0.2, mount_args: Sequence[str] = ("--prefetch", "none"),
                 tiers: Sequence[str] | None = None) -> None:
        self.base = Path(base)
        self.base.mkdir(parents=True, exist_ok=True)
        self.field = self.base / "field"
        self.dram = self.base / "dram"
        self.nvme = self.base / "nvme"
        self.mnt = self.base / "mnt"
        self.mnt.mkdir(exist_ok=True)
        self.tiers = list(tiers) if tiers is not None else [
            "--tier", f"dram={self.dram},kind=dram,capacity={memory}", "--tier", f"nvme={self.nvme},kind=nvme"]
        self.mount_args = [*mount_args, "--writeback-interval", str(writeback)]
        nffs("init", str(self.field), *init_args)
        with open(self.field / "field.json") as f:
            self.cfg = json.load(f)
        self.layout: dict | None = None
        self.pid: int | None = None

    # -- mounting
    def mount(self, *extra: str) -> None:
        nffs("mount", str(self.field), str(self.mnt), *self.tiers, *self.mount_args, *extra)
        assert is_mounted(self.mnt), "nffs mount returned 0 but nothing is mounted"
        self.pid = find_daemon_pid(self.mnt)
        assert self.pid is not None, "cannot find the daemon in /proc"
        if self.layout is None:
            with open(self.mnt / "field.json") as f:
                self.layout = json.load(f)

    @property
    def size(self) -> int:
        assert self.layout is not None
        return int(self.layout["params_bytes"])

    @property
    def page_size(self) -> int:
        assert self.layout is not None
        return int(self.layout["page_size"])

    def level_span(self, level: int) -> tuple[int, int]:
        assert self.layout is not None
        lv = self.layout["per_level"][level]
        return int(lv["byte_offset"]), int(lv["bytes"])

    def umount(self, timeout: float = 120) -> None:
        res = nffs("umount", str(self.mnt), check=False, timeout=timeout)
        if res.returncode != 0 or is_mounted(self.mnt):
            raise Loss(f"clean umount failed ({res.returncode}): {res.stderr}")
        self.pid = None

    def kill9(self) -> None:
        """kill -9 the daemon, wait until it is gone, lazily unmount."""
        pid = find_daemon_pid(self.mnt) or self.pid
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 30
            while process_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.01)
            if process_alive(pid):
                raise Loss(f"daemon {pid} survived SIGKILL for 30 s (uninterruptible?)")
        lazy_unmount(self.mnt)
        self.pid = None

    def wipe_volatile(self) -> None:
        """Lose every volatile tier: empty the dram tier directory (its root stays)."""
        if self.dram.is_dir():
            for child in self.dram.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()

    def fsck(self, *extra: str) -> subprocess.CompletedProcess:
        return nffs("fsck", str(self.field), *extra, check=False, timeout=300)

    def cleanup(self) -> None:
        if is_mounted(self.mnt):
            res = subprocess.run([*NFFS, "umount", str(self.mnt)], capture_output=True, timeout=120)
            if res.returncode != 0 or is_mounted(self.mnt):
                pid = find_daemon_pid(self.mnt)
                if pid:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                lazy_unmount(self.mnt)

    # -- I/O through the mount
    @contextlib.contextmanager
    def watchdog(self, what: str, timeout: float = OP_TIMEOUT) -> Iterator[None]:
        """Run a block that talks to the mount; if it hangs, kill -9 the daemon (which aborts the
        connection and unblocks us) and raise Loss('hang')."""
        fired = threading.Event()

        def fire() -> None:
            fired.set()
            pid = find_daemon_pid(self.mnt)
            if pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

        timer = threading.Timer(timeout, fire)
        timer.start()
        try:
            yield
        except OSError:
            if fired.is_set():
                raise Loss(f"hang: {what} did not finish within {timeout:g}s") from None
            raise
        finally:
            timer.cancel()
        if fired.is_set():
            raise Loss(f"hang: {what} did not finish within {timeout:g}s")

    def read_all(self, path: str = "params") -> np.ndarray:
        with self.watchdog(f"read {path}"):
            fd = os.open(self.mnt / path, os.O_RDONLY)
            try:
                out = bytearray()
                size = os.fstat(fd).st_size
                while len(out) < size:
                    chunk = os.pread(fd, min(1 << 20, size - len(out)), len(out))
                    if not chunk:
                        break
                    out += chunk
            finally:
                os.close(fd)
        return np.frombuffer(bytes(out), dtype=np.uint8).copy()

    def pwrite(self, path: str, offset: int, data: bytes) -> None:
        with self.watchdog(f"pwrite {path}"):
            fd = os.open(self.mnt / path, os.O_WRONLY)
            try:
                n = os.pwrite(fd, data, offset)
                assert n == len(data), f"short write {n} < {len(data)}"
            finally:
                os.close(fd)

    def fsync(self, path: str = "params") -> None:
        with self.watchdog(f"fsync {path}"):
            fd = os.open(self.mnt / path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def mmap_write(self, path: str, offset: int, data: bytes, sync: bool) -> None:
        with self.watchdog(f"mmap write {path}"):
            fd = os.open(self.mnt / path, os.O_RDWR)
            try:
                start = offset - offset % mmap.PAGESIZE
                length = offset + len(data) - start
                m = mmap.mmap(fd, length, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=start)
                try:
                    m[offset - start: offset - start + len(data)] = data
                    if sync:
                        m.flush()  # msync(MS_SYNC)
                finally:
                    m.close()
            finally:
                os.close(fd)

    def concept_write(self, name: str, values: np.ndarray, offset: int = 0) -> None:
        with self.watchdog(f"concept write {name}"):
            fd = os.open(self.mnt / "concepts" / name, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                os.pwrite(fd, np.asarray(values, dtype="<f4").tobytes(), offset)
            finally:
                os.close(fd)

    def concept_read(self, name: str) -> np.ndarray:
        with self.watchdog(f"concept read {name}"):
            with open(self.mnt / "concepts" / name, "rb") as f:
                return np.frombuffer(f.read(), dtype="<f4").copy()


# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Rec:
    offset: int
    data: np.ndarray
    kind: str  # pwrite | mmap | concept
    path: str  # the file the write went through (mmap writes are flushed by a sync of that file)


class ByteModel:
    """What each byte of `params` may read.

    `base` holds bytes that are settled (fsynced, or read back after a recovery and then
    made durable by a clean umount). `pending` holds writes since the last sync that covered
    them; a pending byte may read its `base` value or any pending value written to it.
    """

    def __init__(self, init: np.ndarray) -> None:
        self.base = init.copy()
        self.latest = init.copy()
        self.pending: list[Rec] = []

    def write(self, offset: int, data: bytes | np.ndarray, kind: str = "pwrite", path: str = "params") -> None:
        arr = np.frombuffer(bytes(data), dtype=np.uint8).copy() if not isinstance(data, np.ndarray) else data.astype(np.uint8)
        self.pending.append(Rec(offset, arr, kind, path))
        self.latest[offset:offset + len(arr)] = arr

    def synced(self, path: str = "params") -> None:
        """A sync through `path` returned success: pwrite/concept writes (which the daemon had
        received) and mmap writes through `path` are now settled."""
        left = [r for r in self.pending if r.kind == "mmap" and r.path != path]
        assert not left, "workloads must not leave unsynced mmap writes of another file behind a sync"
        self.base = self.latest.copy()
        self.pending = []

    def allowed(self, observed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mismatches among settled bytes, mismatches among pending bytes) as index arrays."""
        touched = np.zeros(len(self.base), dtype=bool)
        ok = observed == self.base
        for r in self.pending:
            sl = slice(r.offset, r.offset + len(r.data))
            touched[sl] = True
            ok[sl] |= observed[sl] == r.data
        settled_bad = np.nonzero(~ok & ~touched)[0]
        pending_bad = np.nonzero(~ok & touched)[0]
        return settled_bad, pending_bad

    def accept(self, observed: np.ndarray) -> None:
        self.base = observed.copy()
        self.latest = observed.copy()
        self.pending = []


def describe(idx: np.ndarray, observed: np.ndarray, want: np.ndarray, page: int) -> str:
    pages = sorted({int(i) // page for i in idx})
    i = int(idx[0])
    return (f"{len(idx)} byte(s) on page(s) {pages[:10]}; first at {i}: read {observed[i]:#04x}, "
            f"expected {want[i]:#04x}")


def verify(rig: Rig, model: ByteModel, tally: Tally, when: str) -> np.ndarray:
    observed = rig.read_all()
    if len(observed) != len(model.base):
        raise Loss(f"{when}: params has {len(observed)} bytes, expected {len(model.base)}")
    settled_bad, pending_bad = model.allowed(observed)
    tally.bytes_verified += len(observed)
    if len(settled_bad):
        tally.losses += 1
        raise Loss(f"{when}: fsynced bytes (or bytes an earlier recovery showed) changed: {describe(settled_bad, observed, model.base, rig.page_size)}")
    if len(pending_bad):
        tally.losses += 1
        raise Loss(f"{when}: unsynced bytes hold a value never written: "
                   f"{describe(pending_bad, observed, model.latest, rig.page_size)}")
    return observed


def recover_and_check(rig: Rig, model: ByteModel, tally: Tally, when: str) -> None:
    """After a crash: mount, check against the model, clean umount, fsck (exit 0),
    mount again and check that nothing flipped; the model then settles on what was read."""
    try:
        rig.mount()
    except AssertionError as exc:
        tally.daemon_crashes += 1
        raise Loss(f"{when}: mount after crash failed: {exc}") from None
    observed = verify(rig, model, tally, f"{when} (first read after recovery)")
    rig.umount()
    res = rig.fsck()
    if res.returncode != 0:
        tally.fsck_failures += 1
        raise Loss(f"{when}: nffs fsck exited {res.returncode} after recovery + clean umount:\n{res.stdout}{res.stderr}")
    rig.mount()
    again = rig.read_all()
    tally.bytes_verified += len(again)
    if not np.array_equal(observed, again):
        bad = np.nonzero(observed != again)[0]
        tally.flips += 1
        i = int(bad[0])
        raise Loss(f"{when}: data changed without a write between the first read after recovery and the read "
                   f"after a clean umount/mount: {len(bad)} byte(s) on page(s) {sorted({int(b) // rig.page_size for b in bad})[:10]}; "
                   f"first at {i}: first read {observed[i]:#04x}, after umount/mount {again[i]:#04x}")
    model.accept(again)


# ---------------------------------------------------------------------------------------------
# Random crash rounds
def _rand_bytes(rng: random.Random, n: int) -> bytes:
    """Random bytes below 0x40: every float32 made of them, at any alignment, is finite and < 2
    in magnitude, so concept writes never meet NaN or overflow in the random field."""
    return bytes(b & 0x3F for b in rng.randbytes(n))


def _rand_span(rng: random.Random, rig: Rig, max_len: int = 6000) -> tuple[int, int]:
    size = rig.size
    length = rng.choice([1, 4, 100, 512, 4096, rng.randint(1, max_len)])
    length = min(length, size)
    if rng.random() < 0.3:  # page aligned
        off = rng.randrange(0, size // rig.page_size + 1) * rig.page_size
        off = min(off, size - length)
    else:
        off = rng.randint(0, size - length)
    return off, length


def random_op(rig: Rig, model: ByteModel, rng: random.Random, allow_unsynced_mmap: bool) -> str:
    """One random operation through the mount, recorded in the model (before it is issued, so
    that a write cut short by a crash still counts as possibly applied)."""
    assert rig.layout is not None
    r = rng.random()
    if r < 0.35:
        off, n = _rand_span(rng, rig)
        data = _rand_bytes(rng, n)
        model.write(off, data, "pwrite", "params")
        rig.pwrite("params", off, data)
        return "pwrite params"
    if r < 0.55:
        level = rng.randrange(len(rig.layout["per_level"]))
        lo, ln = rig.level_span(level)
        n = min(ln, rng.choice([4, 64, 700, 4096]))
        off = rng.randint(0, ln - n)
        data = _rand_bytes(rng, n)
        model.write(lo + off, data, "pwrite", f"levels/{level:02d}")
        rig.pwrite(f"levels/{level:02d}", off, data)
        return "pwrite level"
    if r < 0.70:
        off, n = _rand_span(rng, rig, 3000)
        data = _rand_bytes(rng, n)
        sync = not allow_unsynced_mmap or rng.random() < 0.7
        model.write(off, data, "mmap", "params")
        rig.mmap_write("params", off, data, sync=sync)
        if sync:
            model.synced("params")
        return "mmap+msync" if sync else "mmap"
    if r < 0.80:
        width = int(rig.layout["encoding_width"])
        vals = np.asarray([rng.uniform(-1, 1) for _ in range(width)], dtype="<f4")
        name = f"c{rng.randrange(4)}"
        try:
            rig.concept_write(name, vals)
        except OSError as exc:
            # random bytes written earlier may have put a NaN/inf where the concept reads: SPEC
            # 2.4's update cannot move a non-finite value, and the daemon refuses with EINVAL
            if exc.errno != errno.EINVAL or np.isfinite(rig.concept_read(name)).all():
                raise
            return "concept (refused: non-finite)"
        after = rig.read_all()
        diff = np.nonzero(after != model.latest)[0]
        if len(diff):
            lo, hi = int(diff[0]), int(diff[-1]) + 1
            model.write(lo, after[lo:hi], "concept", "params")
        return "concept"
    if r < 0.95:
        rig.fsync(rng.choice(["params", "levels/00", "stats"]) if rng.random() < 0.3 else "params")
        model.synced("params")
        return "fsync"
    time.sleep(rng.uniform(0, 0.5))  # let write-back run
    return "sleep"


def kill_during_fsync(rig: Rig, delay: float, tally: Tally | None = None) -> bool:
    """Start an fsync of params in a thread, kill -9 the daemon `delay` s later; True if the
    fsync returned success (then everything before it must be durable)."""
    done = threading.Event()
    result: dict = {}

    def do_fsync() -> None:
        try:
            fd = os.open(rig.mnt / "params", os.O_RDONLY)
            try:
                os.fsync(fd)
                result["ok"] = True
            finally:
                os.close(fd)
        except OSError as exc:
            result["err"] = exc
        done.set()

    t = threading.Thread(target=do_fsync, daemon=True)
    t.start()
    time.sleep(delay)
    rig.kill9()
    if not done.wait(OP_TIMEOUT):
        if tally is not None:
            tally.hangs += 1
        raise Loss("hang: fsync did not return after the daemon was killed")
    return bool(result.get("ok"))


def crash_round(rig: Rig, model: ByteModel, rng: random.Random, tally: Tally, ops: int = 8) -> None:
    """Random operations, then kill -9 at a random moment (after the ops, during a sleep that
    spans write-back, or during an fsync), maybe losing the volatile tier; then recover and check."""
    mode = rng.choice(["after", "writeback", "fsync"])
    n = rng.randint(1, ops)
    for i in range(n):
        last = i == n - 1
        random_op(rig, model, rng, allow_unsynced_mmap=last and mode == "after")
        tally.operations += 1
    if mode == "writeback":
        time.sleep(rng.uniform(0, 0.6))
    if mode == "fsync":
        # Unsynced writes, then an fsync that the kill interrupts (or not): success means settled.
        off, length = _rand_span(rng, rig)
        data = _rand_bytes(rng, length)
        model.write(off, data, "pwrite", "params")
        rig.pwrite("params", off, data)
        ok = kill_during_fsync(rig, rng.uniform(0, 0.02), tally)
        if ok:
            model.synced("params")
        tally.operations += 1
    else:
        rig.kill9()
    tally.faults_injected += 1
    wipe = rng.random() < 0.4
    if wipe:
        rig.wipe_volatile()
    recover_and_check(rig, model, tally, f"round {tally.rounds} (kill during {mode}{', dram wiped' if wipe else ''})")
    tally.rounds += 1


def crash_loop(base: Path, rounds: int, seed: int, tally: Tally, ops: int = 8, memory: str = "8M") -> None:
    """`memory` small (e.g. 16K: four 4 KiB pages) makes pages migrate between the tiers while
    the writes and kills happen."""
    rng = random.Random(seed)
    rig = Rig(base, memory=memory)
    try:
        rig.mount()
        model = ByteModel(spec_init_bytes(rig.cfg, rig.size))
        verify(rig, model, tally, "fresh field (SPEC 2.3 init)")
        for _ in range(rounds):
            crash_round(rig, model, rng, tally, ops)
        rig.umount()
        res = rig.fsck()
        if res.returncode != 0:
            tally.fsck_failures += 1
            raise Loss(f"fsck after the loop exited {res.returncode}: {res.stdout}{res.stderr}")
    finally:
        rig.cleanup()


# ---------------------------------------------------------------------------------------------
# CrashMonkey-style workloads: <= 3 writes around one fsync, on a 4 KiB-page field.
# Each write is (name, kind, path, params offset, length, fill byte).
CM_WRITES = {
    "p0": ("pwrite", "params", 0, 100, 0x11),          # small write at the start of page 0
    "p1": ("pwrite", "params", 4096, 4096, 0x22),      # a whole page
    "sp": ("pwrite", "params", 4000, 200, 0x33),       # spans pages 0 and 1
    "lv": ("pwrite", "levels/02", 10240 + 100, 64, 0x44),  # through levels/02 (level 2 starts at byte 10240)
    "mm": ("mmap", "params", 8192 + 512, 300, 0x15),  # MAP_SHARED write, not msynced (no overlap with lv)
}


def crashmonkey_workloads() -> list[tuple[tuple[str, ...], tuple[str, ...], bool]]:
    """(writes before fsync, writes after fsync, wipe volatile): every combination with at most
    3 writes in all and at most one after the fsync; an unsynced mmap write only last."""
    names = list(CM_WRITES)
    out = []
    for npre in range(0, 3):
        for pre in itertools.product(names, repeat=npre):
            for post in [()] + [(n,) for n in names]:
                if len(pre) + len(post) > 3 or len(pre) + len(post) == 0:
                    continue
                if "mm" in pre[:-1]:
                    continue  # keep an unsynced mmap write last before the fsync (see ByteModel.synced)
                for wipe in (False, True):
                    out.append((pre, post, wipe))
    return out


def _cm_apply(rig: Rig, model: ByteModel, name: str, salt: int) -> None:
    kind, path, off, length, fill = CM_WRITES[name]
    data = bytes([(fill + salt) & 0xFF]) * length
    if path.startswith("levels/"):
        lo, _ = rig.level_span(int(path.split("/")[1]))
        model.write(off, data, kind, path)
        rig.pwrite(path, off - lo, data)
    elif kind == "mmap":
        model.write(off, data, kind, path)
        rig.mmap_write(path, off, data, sync=False)
    else:
        model.write(off, data, kind, path)
        rig.pwrite(path, off, data)


def run_crashmonkey(base: Path, workload: tuple, tally: Tally, settle: float = 0.5) -> None:
    """Fresh field; write A everywhere the workload touches and fsync (so there is an old home),
    wait past write-back, run the workload, kill -9, maybe wipe dram, recover and check."""
    pre, post, wipe = workload
    assert all(CM_WRITES[n][2] + CM_WRITES[n][3] <= 3 * 4096 for n in CM_WRITES)
    rig = Rig(base, init_args=("--dims", "2", "--levels", "3", "--features", "2", "--log2-table-size", "10", "--page-size", "4K"))
    try:
        rig.mount()
        model = ByteModel(spec_init_bytes(rig.cfg, rig.size))
        base_data = bytes([0x41]) * 4096
        model.write(0, base_data)
        rig.pwrite("params", 0, base_data)
        model.write(8192, base_data)
        rig.pwrite("params", 8192, base_data)
        rig.fsync()
        model.synced()
        time.sleep(settle)  # the memory copy is now clean; write-back has run
        for i, name in enumerate(pre):
            _cm_apply(rig, model, name, i)
            tally.operations += 1
        rig.fsync()
        model.synced()
        tally.operations += 1
        for i, name in enumerate(post):
            _cm_apply(rig, model, name, 10 + i)
            tally.operations += 1
        rig.kill9()
        tally.faults_injected += 1
        if wipe:
            rig.wipe_volatile()
        recover_and_check(rig, model, tally, f"workload {pre} fsync {post}{' +wipe' if wipe else ''}")
        rig.umount()
        tally.rounds += 1
    finally:
        rig.cleanup()


# ---------------------------------------------------------------------------------------------
# Concurrency: several processes at once on one mount, each on its own disjoint byte range.
def _worker(mnt: str, idx: int, lo: int, hi: int, seed: int, width: int, dims: int, rounds: int,
            q: "object") -> None:
    import numpy as _np

    rng = random.Random(seed)
    out = {"idx": idx, "writes": [], "queries": 0, "concepts": [], "error": None}
    try:
        fd = os.open(os.path.join(mnt, "params"), os.O_RDWR)
        try:
            for r in range(rounds):
                op = rng.random()
                if op < 0.4:
                    n = rng.randint(1, min(2048, hi - lo))
                    off = rng.randint(lo, hi - n)
                    data = rng.randbytes(n)
                    assert os.pwrite(fd, data, off) == n
                    out["writes"].append((off, data))
                    got = os.pread(fd, n, off)
                    if got != data:
                        raise AssertionError(f"worker {idx}: read-after-write mismatch at {off}")
                elif op < 0.6:
                    n = rng.randint(1, 4096)
                    off = rng.randint(0, max(0, hi - n))
                    os.pread(fd, n, off)
                elif op < 0.8:
                    pts = _np.asarray([[rng.random() for _ in range(dims)] for _ in range(rng.randint(1, 64))], dtype="<f4")
                    qfd = os.open(os.path.join(mnt, "query"), os.O_RDWR)
                    try:
                        os.pwrite(qfd, pts.tobytes(), 0)
                        ans = os.pread(qfd, len(pts) * width * 4, 0)
                        if len(ans) != len(pts) * width * 4:
                            raise AssertionError(f"worker {idx}: query answer {len(ans)} bytes for {len(pts)} points")
                        out["queries"] += 1
                    finally:
                        os.close(qfd)
                else:
                    name = f"w{idx}-{r}"
                    cfd = os.open(os.path.join(mnt, "concepts", name), os.O_RDWR | os.O_CREAT, 0o644)
                    os.close(cfd)
                    out["concepts"].append(name)
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException as exc:  # reported to the parent, which fails the round
        out["error"] = f"{type(exc).__name__}: {exc}"
    q.put(out)


def concurrency_round(rig: Rig, model: ByteModel, tally: Tally, procs: int, rounds: int, seed: int,
                      timeout: float = 120) -> None:
    """`procs` processes write disjoint ranges, read, query and create concepts at once.
    Afterwards params equals the sequential model (each range's writes applied in order),
    every concept exists, and nothing hung."""
    import multiprocessing as mp

    assert rig.layout is not None
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    width = int(rig.layout["encoding_width"])
    dims = int(rig.layout["dims"])
    step = rig.size // procs
    ps = []
    for i in range(procs):
        lo, hi = i * step, (i + 1) * step if i < procs - 1 else rig.size
        p = ctx.Process(target=_worker, args=(str(rig.mnt), i, lo, hi, seed * 1000 + i, width, dims, rounds, q))
        p.start()
        ps.append(p)
    results = []
    deadline = time.monotonic() + timeout
    try:
        for _ in ps:
            left = deadline - time.monotonic()
            try:
                results.append(q.get(timeout=max(0.1, left)))
            except Exception:
                tally.hangs += 1
                raise Loss(f"hang: {procs - len(results)} of {procs} workers did not finish within {timeout:g}s") from None
    finally:
        for p in ps:
            p.join(timeout=1)
            if p.is_alive():
                p.kill()
    errors = [r["error"] for r in results if r["error"]]
    if errors:
        tally.losses += 1
        raise Loss("worker errors: " + "; ".join(errors))
    for r in sorted(results, key=lambda r: r["idx"]):
        for off, data in r["writes"]:
            model.write(off, data)
            tally.operations += 1
        tally.operations += r["queries"] + len(r["concepts"])
    model.synced()
    observed = verify(rig, model, tally, "after concurrent writers")
    listed = set(os.listdir(rig.mnt / "concepts"))
    missing = [n for r in results for n in r["concepts"] if n not in listed]
    if missing:
        tally.losses += 1
        raise Loss(f"concepts created concurrently are missing: {missing[:5]}")
    if rig.pid is not None and not process_alive(rig.pid):
        tally.daemon_crashes += 1
        raise Loss("the daemon died during the concurrent round")
    model.accept(observed)
    tally.rounds += 1
