"""Shared helpers of the SPEC 8 benchmarks: temp dirs, nffs and baseline mounts, cache control, tables.

Every mount made here is undone in a finally block (and by `Workspace.close`), and
every temp dir (including the dram tier under /dev/shm) is removed afterwards.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Callable, Iterable, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
MINIMAL_FS = os.path.join(HERE, "minimal_fs.py")


def nffs_command() -> list[str]:
    """The `nffs` console script next to this interpreter (the venv's), else `python -m nffs.cli`."""
    script = os.path.join(os.path.dirname(sys.executable), "nffs")
    return [script] if os.access(script, os.X_OK) else [sys.executable, "-m", "nffs.cli"]


def run_nffs(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    res = subprocess.run([*nffs_command(), *args], capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0:
        raise RuntimeError(f"nffs {' '.join(args)} failed ({res.returncode}): {res.stderr.strip()} {res.stdout.strip()}")
    return res


def is_mounted(path: str) -> bool:
    target = os.path.realpath(path)
    with open("/proc/self/mounts") as f:
        return any(len(parts) > 1 and parts[1] == target for parts in (line.split() for line in f))


def force_unmount(path: str) -> None:
    if is_mounted(path):
        subprocess.run(["umount", "-l", path], capture_output=True)
    if is_mounted(path):
        subprocess.run(["fusermount3", "-uz", path], capture_output=True)


class Workspace:
    """A temp dir on disk (fields, durable tiers, mount points) and one in /dev/shm (dram tiers)."""

    def __init__(self, prefix: str = "nffs-bench-") -> None:
        # SIGTERM becomes SystemExit, so that `with Workspace()` still unmounts and cleans up.
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
        self.disk = tempfile.mkdtemp(prefix=prefix, dir=os.environ.get("NFFS_BENCH_DIR", "/tmp"))
        self.shm = tempfile.mkdtemp(prefix=prefix, dir="/dev/shm")
        self.mounts: list[Any] = []
        self._n = 0

    def path(self, name: str) -> str:
        return os.path.join(self.disk, name)

    def mountpoint(self, name: str = "mnt") -> str:
        self._n += 1
        p = os.path.join(self.disk, f"{name}{self._n}")
        os.makedirs(p)
        return p

    def close(self) -> None:
        for m in list(self.mounts):
            try:
                m.unmount()
            except Exception as exc:  # keep cleaning up
                print(f"warning: unmounting {m.mountpoint}: {exc}", file=sys.stderr)
                force_unmount(m.mountpoint)
        shutil.rmtree(self.shm, ignore_errors=True)
        shutil.rmtree(self.disk, ignore_errors=True)

    def __enter__(self) -> "Workspace":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def init_field(ws: Workspace, name: str, *options: str) -> str:
    field = ws.path(name)
    run_nffs("init", field, *options)
    return field


def prefetch_args(choice: str) -> list[str]:
    """Mount flags for a benchmark's ``--prefetch`` choice: "default" passes none, so the
    measured mount runs the predictor `nffs mount` picks by itself (SPEC 8's targets hold
    with the default options)."""
    return [] if choice == "default" else ["--prefetch", choice]


def tier_args(ws: Workspace, name: str, dram_capacity: str | None = None, home_dir: str | None = None) -> list[str]:
    """A dram tier on tmpfs (/dev/shm) and an nvme home tier (on disk unless home_dir says otherwise)."""
    dram = os.path.join(ws.shm, f"{name}-dram")
    home = os.path.join(home_dir or ws.disk, f"{name}-nvme")
    cap = f",capacity={dram_capacity}" if dram_capacity else ""
    return ["--tier", f"dram={dram},kind=dram{cap}", "--tier", f"nvme={home},kind=nvme"]


class NffsMount:
    """`nffs mount` (background mode) on a fresh mount point; `unmount()` is `nffs umount`."""

    def __init__(self, ws: Workspace, field: str, *options: str) -> None:
        self.ws = ws
        self.field = field
        self.mountpoint = ws.mountpoint("nffs")
        start = time.perf_counter()
        run_nffs("mount", field, self.mountpoint, *options)
        self.mount_seconds = time.perf_counter() - start
        ws.mounts.append(self)
        self.pid = int(self.stats()["pid"])

    def file(self, name: str) -> str:
        return os.path.join(self.mountpoint, name)

    def stats(self) -> dict[str, Any]:
        with open(self.file("stats"), "rb") as f:
            return json.loads(f.read())

    def store_reads(self) -> int:
        return int(self.stats()["store"]["reads"])

    def settle(self, timeout: float = 60.0) -> float:
        """Wait until the prefetcher reports ready (when it reports it) and the RSS stops moving.

        `nffs mount` now returns once the predictor's model is loaded, so this is quick; it
        stays a guard for benchmarks that measure right after mounting (memory, first
        reads). Returns seconds waited.
        """
        start = time.monotonic()
        deadline = start + timeout
        while time.monotonic() < deadline:
            prefetch = self.stats().get("prefetch") or {}
            if prefetch.get("ready", True):
                break
            time.sleep(0.1)
        last = rss_bytes(self.pid)
        while time.monotonic() < deadline:
            time.sleep(0.5)
            now = rss_bytes(self.pid)
            if abs(now - last) < 256 * 1024:
                break
            last = now
        return time.monotonic() - start

    def unmount(self) -> None:
        if self in self.ws.mounts:
            self.ws.mounts.remove(self)
        try:
            if is_mounted(self.mountpoint):
                run_nffs("umount", self.mountpoint)
        finally:
            force_unmount(self.mountpoint)


class MinimalMount:
    """scripts/minimal_fs.py serving `size` random bytes as `data` (read-write in one `backing` file if given)."""

    def __init__(self, ws: Workspace, size: int, blksize: int = 65536, backing: str | None = None) -> None:
        self.ws = ws
        self.mountpoint = ws.mountpoint("minimal")
        extra = ["--backing", backing] if backing else []
        self.proc = subprocess.Popen([sys.executable, MINIMAL_FS, self.mountpoint, "--size", str(size), "--blksize", str(blksize),
                                      *extra],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        ws.mounts.append(self)
        line = self.proc.stdout.readline()
        deadline = time.monotonic() + 60
        while not is_mounted(self.mountpoint):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.poll() is not None else ""
                raise RuntimeError(f"minimal_fs did not mount ({line!r}): {err}")
            time.sleep(0.01)
        self.pid = self.proc.pid

    def file(self, name: str = "data") -> str:
        return os.path.join(self.mountpoint, name)

    def stats(self) -> dict[str, Any]:
        with open(self.file("stats"), "rb") as f:
            return json.loads(f.read())

    def store_reads(self) -> int:
        return int(self.stats()["reads"])

    def unmount(self) -> None:
        if self in self.ws.mounts:
            self.ws.mounts.remove(self)
        try:
            if is_mounted(self.mountpoint):
                subprocess.run(["umount", self.mountpoint], capture_output=True, timeout=60)
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.terminate()  # our own child
            self.proc.wait(timeout=30)
        finally:
            force_unmount(self.mountpoint)


# ---------------------------------------------------------------------- cache and processes
def drop_file_cache(path: str) -> None:
    """Evict a file's pages from the kernel page cache (posix_fadvise DONTNEED: no global drop)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


class SameCpu:
    """Within the block: the calling thread (the benchmark's reader) and every thread of the
    given daemons on one CPU.

    Why: on a small VM the scheduler's placement decides a FUSE round trip's cost more than
    the daemons do. A reader whose daemon happens to share its CPU waits for a plain
    context switch; one whose daemon sits on the other CPU waits for an idle CPU to wake
    (an inter-processor interrupt and a VM exit). Two identical minimal_fs mounts read
    alternately, unpinned, measured 1.8-3.1x apart on the 2-vCPU VM of docs/benchmarks.md
    (the first-mounted one always faster); pinned like this they measure 0.99-1.01x. With
    one CPU for all, each side pays exactly its own CPU work per request (the daemon's
    Python, pyfuse3, the kernel's copy), which is what the ratio is meant to compare.
    Threads a daemon starts later inherit the CPU of the thread that starts them; on the
    way out they get their daemon's original CPUs back like the others.
    """

    def __init__(self, *pids: int, cpu: int | None = None) -> None:
        self.pids = pids
        self.cpu = max(os.sched_getaffinity(0)) if cpu is None else cpu
        self._saved: dict[int, set[int]] = {}

    @staticmethod
    def _threads(pid: int) -> list[int]:
        try:
            return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
        except FileNotFoundError:
            return []

    def __enter__(self) -> "SameCpu":
        try:
            for tid in [0] + [t for pid in self.pids for t in self._threads(pid)]:
                try:
                    cpus = os.sched_getaffinity(tid)
                    os.sched_setaffinity(tid, {self.cpu})
                except ProcessLookupError:  # a thread that ended meanwhile
                    continue
                self._saved[tid] = cpus
        except BaseException:
            self.__exit__(None, None, None)  # nothing stays pinned
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        for tid, cpus in self._saved.items():
            try:
                os.sched_setaffinity(tid, cpus)
            except OSError:
                pass
        for pid in self.pids:  # threads started meanwhile: their daemon's original CPUs
            cpus = self._saved.get(pid, os.sched_getaffinity(0))
            for tid in self._threads(pid):
                if tid not in self._saved:
                    try:
                        os.sched_setaffinity(tid, cpus)
                    except OSError:
                        pass
        self._saved = {}


def rss_bytes(pid: int) -> int:
    """The daemon's own memory: RssAnon. The memory tier's pages are mapped into the daemon
    (its arena file on tmpfs) and show in VmRSS as shared file pages, but they are the tier's
    storage, counted in the tier's `used_bytes`, not daemon memory."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no RssAnon for {pid}")


def machine() -> dict[str, Any]:
    mem = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "ram_gib": round(mem / 2**30, 1), "cpu": model, "kernel": os.uname().release,
            "python": sys.version.split()[0]}


def print_machine() -> None:
    m = machine()
    print(f"machine: nproc={m['nproc']} RAM={m['ram_gib']} GiB cpu={m['cpu'] or '?'} kernel={m['kernel']} python={m['python']}")


# ---------------------------------------------------------------------- numbers and tables
def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def human_rate(value: float, unit: str) -> str:
    for scale, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:.2f} {prefix}{unit}"
    return f"{value:.1f} {unit}"


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    text = [[str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in text)) if text else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    print(line)
    print("  ".join("-" * w for w in widths))
    for r in text:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))


def verdict(ratio: float, target: float, higher_is_better: bool = True) -> str:
    ok = ratio >= target if higher_is_better else ratio <= target
    return "meets" if ok else "MISSES"


# ---------------------------------------------------------------------- machine-readable results
def result_row(key: str, label: str, nffs: float | None, baseline: float | None, baseline_name: str, unit: str,
               ratio: float | None, target: float | None, higher_is_better: bool = True, **extra: Any) -> dict[str, Any]:
    """One SPEC 8 row as `--json` writes it and `nffs bench` reads it (see docs/benchmarks.md)."""
    meets = None
    if ratio is not None and target is not None:
        meets = ratio >= target if higher_is_better else ratio <= target
    return {"key": key, "row": label, "nffs": nffs, "baseline": baseline, "baseline_name": baseline_name, "unit": unit,
            "ratio": ratio, "target": target, "higher_is_better": higher_is_better, "meets": meets, **extra}


def write_json(path: str | None, script: str, rows: list[dict[str, Any]], **extra: Any) -> None:
    """Write {"script", "machine", "rows", ...} to `path` (nothing when path is None)."""
    if not path:
        return
    with open(path, "w") as f:
        json.dump({"script": script, "machine": machine(), "rows": rows, **extra}, f, indent=2)
