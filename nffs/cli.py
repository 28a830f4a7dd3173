"""nffs command line (SPEC 6): init / mount / umount / stat / fsck / refresh / top / warmup / bench.

`nffs FIELD_DIR MOUNTPOINT -o OPTS` (how mount.fuse3 calls a FUSE helper for
`mount -t fuse.nffs` and /etc/fstab) is the same as `nffs mount` with those options.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from typing import Any, Sequence

from .encoding.layout import FieldConfig, FieldLayout
from .tiers.spec import TierSpecError, parse_size, parse_tier_spec

log = logging.getLogger("nffs")

LOG_NAME = "nffs.log"

try:
    _EXCEPTION_GROUP: type = BaseExceptionGroup  # Python >= 3.11
except NameError:  # 3.10: trio depends on the backport
    from exceptiongroup import BaseExceptionGroup as _EXCEPTION_GROUP


class CliError(Exception):
    """A problem the user can fix; printed as one line, exit status 1 (2 for usage errors)."""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _int(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def _seconds(text: str) -> float:
    """A time to wait: a finite number of seconds above 0."""
    value = _float(text)
    if not (0 < value < float("inf")):
        raise argparse.ArgumentTypeError(f"expected a number of seconds above 0, got {text!r}")
    return value


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except TierSpecError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _tier(text: str):
    try:
        return parse_tier_spec(text)
    except TierSpecError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _interval(text: str) -> float:
    value = _float(text)
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nffs", description="nffs - the neural field file system")
    p.add_argument("--log-level", default=os.environ.get("NFFS_LOG_LEVEL", "INFO"), help="logging level (default INFO)")
    sub = p.add_subparsers(dest="command", required=True)

    d = FieldConfig()
    pi = sub.add_parser("init", help="create a field directory")
    pi.add_argument("field_dir")
    pi.add_argument("--dims", type=_int, default=d.dims, help="input dimensions D (1..7, default 3)")
    pi.add_argument("--levels", type=_int, default=d.levels, help="resolution levels L (1..64, default 16)")
    pi.add_argument("--features", type=_int, default=d.features, help="features per entry F (1..64, default 2)")
    pi.add_argument("--log2-table-size", type=_int, default=d.log2_table_size, help="log2 of max entries per level (4..48, default 19)")
    pi.add_argument("--base-resolution", type=_int, default=d.base_resolution, help="coarsest resolution N0 (>=2, default 16)")
    pi.add_argument("--per-level-scale", type=_float, default=d.per_level_scale, help="growth per level b (>1, default 2.0)")
    pi.add_argument("--interpolation", choices=["linear", "smoothstep"], default=d.interpolation)
    pi.add_argument("--dtype", choices=["float32", "float16"], default=d.dtype)
    pi.add_argument("--init", choices=["uniform", "zeros"], default=d.init)
    pi.add_argument("--init-scale", type=_float, default=d.init_scale, help="uniform init range (default 1e-4)")
    pi.add_argument("--seed", type=_int, default=d.seed, help="seed of the implicit init (uint64)")
    pi.add_argument("--page-size", type=_size, default=d.page_size, help="bytes per page: power of two, 4K..4M (default 64K)")
    pi.add_argument("--tier", type=_tier, action="append", default=[], metavar="SPEC",
                    help="NAME=PATH[,kind=dram|cxl|nvme|hdd][,capacity=SIZE][,numa=N][,latency=DURATION], fastest first")

    pm = sub.add_parser("mount", help="mount a field (returns once the mount is ready)")
    pm.add_argument("field_dir")
    pm.add_argument("mountpoint")
    pm.add_argument("--tier", type=_tier, action="append", default=[], metavar="SPEC", help="override the field's tiers (fastest first)")
    pm.add_argument("--prefetch", choices=["hoeffding", "markov", "none"], default="hoeffding")
    pm.add_argument("--foreground", action="store_true", help="serve in this process until unmounted")
    pm.add_argument("--read-only", action="store_true")
    pm.add_argument("--allow-other", action="store_true", help="let other users access the mount")
    pm.add_argument("--max-batch", type=_positive_int, default=1 << 20, help="max points per query request (default 1048576)")
    pm.add_argument("--writeback-interval", type=_interval, default=5.0, help="seconds before dirty pages go home (default 5)")
    pm.add_argument("--refresh-interval", type=_float, default=5.0,
                    help="read-only mounts: seconds between loads of the writer's newest published generation (0: only on `nffs refresh`)")
    pm.add_argument("--metrics-listen", type=_listen, default=None, metavar="[ADDR:]PORT",
                    help="serve Prometheus metrics at http://ADDR:PORT/metrics (loopback when only a port is given)")
    pm.add_argument("--lock-wait", type=_float, default=float(os.environ.get("NFFS_LOCK_WAIT", "30")), metavar="S",
                    help="seconds to wait for a previous daemon of the same field to finish flushing (default 30)")
    pm.add_argument("-o", dest="options", action="append", default=[], metavar="OPT[,OPT...]",
                    help="mount options as mount(8) and /etc/fstab give them: every flag above as name[=value] "
                         "(prefetch=markov, tier=SPEC, allow_other, ro, max_batch=N, writeback_interval=S, "
                         "metrics_listen=PORT); generic ones (rw, dev, suid, _netdev, ...) are ignored")
    pm.add_argument("--ready-fd", type=int, default=None, help=argparse.SUPPRESS)

    pr = sub.add_parser("refresh", help="read-only mount: serve the writer's newest published generation now")
    pr.add_argument("mountpoint")
    pr.add_argument("--timeout", type=_seconds, default=60.0, help="seconds to wait for the new generation (default 60)")

    pu = sub.add_parser("umount", help="flush, unmount and wait for the daemon to exit")
    pu.add_argument("mountpoint")
    pu.add_argument("--timeout", type=_seconds, default=600.0, help="seconds to wait for the daemon (default 600)")

    ps = sub.add_parser("stat", help="show a field or a mounted field")
    ps.add_argument("target", help="FIELD_DIR or MOUNTPOINT")
    ps.add_argument("--json", action="store_true")
    ps.add_argument("--hardware", action="store_true", help="list NUMA nodes and CXL candidates")

    pf = sub.add_parser("fsck", help="check pages against metadata and checksums")
    pf.add_argument("field_dir")
    pf.add_argument("--repair", action="store_true")

    pt = sub.add_parser("top", help="live view of a mount, refreshed every second (q quits)")
    pt.add_argument("mountpoint")
    pt.add_argument("--interval", type=_interval, default=1.0, help="seconds between refreshes (default 1)")
    pt.add_argument("--once", action="store_true", help="print one frame (two samples, one interval apart) and exit")
    pt.add_argument("--ascii", action="store_true", help="plain ASCII bars (for terminals without UTF-8)")

    pw = sub.add_parser("warmup", help="bring pages into the fastest tier (and the kernel cache) before a job")
    pw.add_argument("mountpoint")
    pw.add_argument("--range", nargs=2, type=_size_or_int, action="append", default=[], metavar=("OFFSET", "LENGTH"),
                    help="a byte range of params (sizes take K/M/G suffixes)")
    pw.add_argument("--level", type=_int, action="append", default=[], metavar="N", help="a whole level's table")
    pw.add_argument("--concept", action="append", default=[], metavar="NAME", help="a concept's pages")
    pw.add_argument("--points", action="append", default=[], metavar="FILE",
                    help="points: text (D numbers a line) or raw little-endian float32 (.f32/.bin)")

    pb = sub.add_parser("bench", help="the SPEC 8 benchmarks side by side with their baselines")
    pb.add_argument("--quick", action="store_true", help="small sizes and few rounds (under 5 minutes)")
    pb.add_argument("--json", default=None, metavar="FILE", help="write every figure here")
    pb.add_argument("--plot", default=None, metavar="DIR", help="write PNG plots here (needs matplotlib: pip install nffs[plot])")
    pb.add_argument("--only", default=None, metavar="NAMES", help="comma-separated subset of: io, writes, query, prefetch, scale, noharm, occupancy")
    return p


def _listen(text: str) -> str:
    from .ui.metrics_http import ListenError, parse_listen

    try:
        parse_listen(text)
    except ListenError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _size_or_int(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        return _size(text)


# ---------------------------------------------------------------------- init
def cmd_init(args: argparse.Namespace) -> int:
    from .tiers.fielddir import FieldError, init_field
    from .tiers.spec import check_tier_set

    cfg = FieldConfig(
        dims=args.dims, levels=args.levels, features=args.features, log2_table_size=args.log2_table_size,
        base_resolution=args.base_resolution, per_level_scale=args.per_level_scale,
        interpolation=args.interpolation, dtype=args.dtype, init=args.init, init_scale=args.init_scale,
        seed=args.seed, page_size=args.page_size,
    )
    try:
        cfg.validate()
        if args.tier:
            check_tier_set(args.tier)
        init_field(args.field_dir, cfg, args.tier or None)
    except (ValueError, FieldError) as exc:
        raise CliError(str(exc)) from None
    layout = FieldLayout(cfg)
    print(f"initialised {args.field_dir}: {layout.n_params} parameters, {_human(layout.params_bytes)} of {cfg.dtype}, "
          f"{layout.n_pages} pages of {_human(cfg.page_size)}")
    return 0


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if abs(n) < 1024 or unit == "EiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return str(n)


# ---------------------------------------------------------------------- mount
def _check_mountpoint(mountpoint: str) -> None:
    from .fs.mounts import is_mounted

    if not os.path.isdir(mountpoint):
        raise CliError(f"mount point {mountpoint} is not a directory")
    if is_mounted(mountpoint):
        raise CliError(f"{mountpoint} is already a mount point")


def _mount_options(args: argparse.Namespace):
    from .fs.daemon import MountOptions
    from .tiers.spec import check_tier_set

    if args.tier:
        try:
            check_tier_set(args.tier)
        except TierSpecError as exc:
            raise CliError(str(exc)) from None
    return MountOptions(tiers=args.tier, prefetch=args.prefetch, read_only=args.read_only, allow_other=args.allow_other,
                        max_batch=args.max_batch, writeback_interval=args.writeback_interval,
                        refresh_interval=args.refresh_interval, metrics_listen=args.metrics_listen)


def _check_listen(listen: str) -> None:
    """Fail before mounting when the metrics address cannot be bound (port in use, no such address)."""
    import socket

    from .ui.metrics_http import parse_listen

    host, port = parse_listen(listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise CliError(f"cannot listen for metrics on {listen}: {exc.strerror or exc}") from None


def _wait_for_field_lock(field_dir: str, timeout: float) -> None:
    """Wait while a previous daemon of this field still holds its lock.

    After a plain `umount` (or a systemd stop) the kernel detaches the mount at once,
    but the daemon goes on flushing dirty pages home before it exits and releases the
    field. A mount started meanwhile waits for that instead of failing.
    """
    import fcntl

    try:
        from .tiers.fielddir import LOCK_NAME
    except ImportError:
        LOCK_NAME = "lock"
    path = os.path.join(field_dir, LOCK_NAME)
    if not os.path.exists(path):
        return
    deadline = time.monotonic() + max(0.0, timeout)
    told = False
    while True:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        finally:
            os.close(fd)
        if time.monotonic() >= deadline:
            raise CliError(f"{field_dir} is in use by another nffs process (mounted elsewhere?); "
                           f"waited {timeout:g}s for it to finish")
        if not told:
            log.info("waiting for the previous daemon of %s to finish flushing", field_dir)
            told = True
        time.sleep(0.1)


def cmd_mount(args: argparse.Namespace) -> int:
    from .tiers.fielddir import load_config, FieldError

    field_dir = os.path.abspath(args.field_dir)
    mountpoint = os.path.abspath(args.mountpoint)
    try:
        load_config(field_dir)
    except FieldError as exc:
        raise CliError(str(exc)) from None
    _check_mountpoint(mountpoint)
    opts = _mount_options(args)
    if args.metrics_listen and args.ready_fd is None:
        _check_listen(args.metrics_listen)
    if args.foreground:
        _adopt_daemon_environment(args)
        # from here on `kill -USR2` shows where the daemon waits (the lock, the tiers)
        from .fs.daemon import enable_stack_dump

        enable_stack_dump()
    if not args.read_only:  # a reader takes no lock: the writer may be mounted anywhere
        _wait_for_field_lock(field_dir, args.lock_wait)
    if args.foreground:
        return _serve_foreground(field_dir, mountpoint, opts, args.ready_fd)
    return _spawn_daemon(args, field_dir, mountpoint)


def _serve_foreground(field_dir: str, mountpoint: str, opts, ready_fd: int | None) -> int:
    from .fs.daemon import serve
    from .tiers.fielddir import FieldError

    def ready(warnings: list[str]) -> None:
        log.info("mounted %s on %s (pid %d)", field_dir, mountpoint, os.getpid())
        if ready_fd is not None:
            # the waiting `nffs mount` prints the warnings (a foreground daemon logged them)
            os.write(ready_fd, b"".join(f"warning: {w}\n".encode() for w in warnings) + b"ok\n")
            os.close(ready_fd)

    try:
        try:
            serve(field_dir, mountpoint, opts, on_ready=ready)
        except _EXCEPTION_GROUP as group:  # a trio nursery wraps a start-up failure
            if len(group.exceptions) == 1 and isinstance(group.exceptions[0], Exception):
                raise group.exceptions[0] from None
            raise
    except (FieldError, TierSpecError, ValueError, OSError, RuntimeError) as exc:
        message = str(exc) or exc.__class__.__name__
        if isinstance(exc, RuntimeError) and "mount" in message:
            message = f"cannot mount on {mountpoint}: {message} (is /dev/fuse usable and fusermount3 installed?)"
        if ready_fd is not None:
            try:
                os.write(ready_fd, f"error: {message}\n".encode())
            except OSError:
                pass
        raise CliError(message) from None
    return 0


def daemon_environment(env: "os._Environ[str] | dict[str, str]") -> dict[str, str]:
    """The daemon's environment: the caller's, with glibc's allocator for Python objects.

    Python's own small-object allocator (pymalloc) keeps 1 MiB arenas as long as one object
    in them lives: the per-page temporaries of write-back batches and FUSE requests left
    more and more of them two-thirds empty, ~100-200 B of daemon memory per materialised
    page beyond what is alive (SPEC 8: 200 B). glibc's malloc gives such memory back at
    the daemon's `malloc_trim`; at most two malloc arenas, not one per worker thread. A
    value the caller set (PYTHONMALLOC=debug, say) is kept. A foreground daemon started
    without them takes them too (`_adopt_daemon_environment`). See docs/design.md, "Memory".
    """
    out = dict(env)
    out.setdefault("PYTHONMALLOC", "malloc")
    out.setdefault("MALLOC_ARENA_MAX", "2")
    return out


def _adopt_daemon_environment(args: argparse.Namespace) -> None:
    """A daemon run in the foreground by hand (a systemd unit, a test fixture) serves with the
    same allocator settings as one `nffs mount` starts (`daemon_environment`): when they are
    missing from its environment, the process starts again with them — same pid, arguments,
    descriptors and working directory (`execve`). Not when called in process, nor when the
    caller chose an allocator."""
    if args.program_argv is None or "PYTHONMALLOC" in os.environ:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "nffs.cli", *args.program_argv], daemon_environment(os.environ))


def _spawn_daemon(args: argparse.Namespace, field_dir: str, mountpoint: str) -> int:
    """Run the daemon detached; return only when it reports the mount ready (or its error)."""
    read_fd, write_fd = os.pipe()
    cmd = [sys.executable, "-m", "nffs.cli", "--log-level", args.log_level, "mount", field_dir, mountpoint, "--foreground",
           "--ready-fd", str(write_fd), "--prefetch", args.prefetch, "--max-batch", str(args.max_batch),
           "--writeback-interval", repr(args.writeback_interval), "--refresh-interval", repr(args.refresh_interval),
           "--lock-wait", repr(args.lock_wait)]
    if args.metrics_listen:
        cmd += ["--metrics-listen", args.metrics_listen]
    for spec in args.tier:
        cmd += ["--tier", str(spec)]
    if args.read_only:
        cmd.append("--read-only")
    if args.allow_other:
        cmd.append("--allow-other")
    log_path = os.path.join(field_dir, LOG_NAME)
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file, pass_fds=(write_fd,),
                                start_new_session=True, cwd="/", env=daemon_environment(os.environ))
    os.close(write_fd)
    chunks = []
    warnings = []
    deadline = time.monotonic() + 120
    with os.fdopen(read_fd, "rb") as pipe:
        while time.monotonic() < deadline:
            data = pipe.readline()
            if not data:
                break
            if data.startswith(b"warning: "):
                warnings.append(data.decode(errors="replace").strip())
                continue
            chunks.append(data)
            if data.startswith(b"ok") or data.startswith(b"error"):
                break
    message = b"".join(chunks).decode(errors="replace").strip()
    if message.startswith("ok"):
        for w in warnings:  # mounted, but part of the field is unavailable: say so
            print(f"nffs mount: {w}", file=sys.stderr)
        return 0
    if not message:
        proc.poll()
        message = f"the daemon exited before the mount was ready (see {log_path})"
    raise CliError(message.removeprefix("error: "))


# ---------------------------------------------------------------------- umount
def _read_mount_stats(mountpoint: str, timeout: float = 30.0) -> dict[str, Any] | None:
    """Read <mountpoint>/stats in a child thread so a wedged mount cannot hang us forever."""
    import threading

    result: dict[str, Any] = {}

    def work() -> None:
        try:
            with open(os.path.join(mountpoint, "stats"), "rb") as f:
                result["stats"] = json.loads(f.read())
        except (OSError, ValueError) as exc:
            result["error"] = exc

    t = threading.Thread(target=work, daemon=True)
    t.start()
    t.join(timeout)
    return result.get("stats")


def _process_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def cmd_refresh(args: argparse.Namespace) -> int:
    """Ask a read-only mount's daemon (SIGUSR1) to load the newest generation; wait until it serves it."""
    import signal

    from .fs.mounts import is_nffs_mount
    from .tiers.generations import current_number

    mountpoint = os.path.abspath(args.mountpoint)
    if not is_nffs_mount(mountpoint):
        raise CliError(f"{mountpoint} is not an nffs mount")
    stats = _read_mount_stats(mountpoint)
    if not stats or "pid" not in stats:
        raise CliError(f"{mountpoint}: the mount does not answer")
    store = stats.get("store", {})
    wanted = current_number(str(stats.get("field_dir", "")))
    os.kill(int(stats["pid"]), signal.SIGUSR1)
    deadline = time.monotonic() + args.timeout
    while True:
        now_serving = (_read_mount_stats(mountpoint) or {}).get("store", {}).get("generation", store.get("generation", 0))
        if now_serving >= wanted:
            print(f"{mountpoint}: generation {now_serving}")
            return 0
        if time.monotonic() > deadline:
            raise CliError(f"{mountpoint}: still on generation {now_serving} after {args.timeout:g} s (newest: {wanted})")
        time.sleep(0.1)


def cmd_umount(args: argparse.Namespace) -> int:
    from .fs.mounts import is_mounted, is_nffs_mount

    mountpoint = os.path.abspath(args.mountpoint)
    if not is_mounted(mountpoint):
        raise CliError(f"{mountpoint} is not mounted")
    if not is_nffs_mount(mountpoint):
        raise CliError(f"{mountpoint} is not an nffs mount")
    stats = _read_mount_stats(mountpoint)
    pid = int(stats["pid"]) if stats and "pid" in stats else None
    if pid is not None:
        # Flush while the mount still answers, so an error can still be reported.
        try:
            fd = os.open(os.path.join(mountpoint, "params"), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            log.warning("flush before unmount failed: %s", exc)
    if os.geteuid() == 0 or not shutil.which("fusermount3"):
        cmd = ["umount", mountpoint]
    else:
        cmd = ["fusermount3", "-u", mountpoint]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise CliError(f"cannot unmount {mountpoint}: {res.stderr.strip() or res.stdout.strip()}")
    if pid is None:
        print(f"unmounted {mountpoint} (daemon not reachable; nothing to wait for)", file=sys.stderr)
        return 0
    deadline = time.monotonic() + args.timeout
    while _process_alive(pid):
        if time.monotonic() > deadline:
            raise CliError(f"daemon {pid} still running after {args.timeout:g}s")
        time.sleep(0.05)
    return 0


# ---------------------------------------------------------------------- stat
def hardware_info() -> dict[str, Any]:
    """NUMA nodes from sysfs; CPU-less nodes with memory are CXL candidates."""
    nodes = []
    base = "/sys/devices/system/node"
    try:
        names = sorted((n for n in os.listdir(base) if n.startswith("node") and n[4:].isdigit()), key=lambda n: int(n[4:]))
    except OSError:
        names = []
    for name in names:
        path = os.path.join(base, name)
        try:
            cpulist = open(os.path.join(path, "cpulist")).read().strip()
        except OSError:
            cpulist = ""
        mem_total = mem_free = None
        try:
            for line in open(os.path.join(path, "meminfo")):
                parts = line.split()
                if "MemTotal:" in parts:
                    mem_total = int(parts[parts.index("MemTotal:") + 1]) * 1024
                if "MemFree:" in parts:
                    mem_free = int(parts[parts.index("MemFree:") + 1]) * 1024
        except OSError:
            pass
        nodes.append({"node": int(name[4:]), "cpus": cpulist, "memory_bytes": mem_total, "free_bytes": mem_free,
                      "cxl_candidate": not cpulist and bool(mem_total)})
    return {"numa_nodes": nodes, "cxl_candidates": [n["node"] for n in nodes if n["cxl_candidate"]]}


def field_summary(field_dir: str) -> dict[str, Any]:
    from .tiers.fielddir import FieldError, load_config, open_meta, tiers_for_check
    from .tiers.pagetable import PageTable

    try:
        cfg = load_config(field_dir)
        meta = open_meta(field_dir, read_only=True)
    except FieldError as exc:
        raise CliError(str(exc)) from None
    try:
        layout = FieldLayout(cfg)
        names = meta.tier_names()
        table = PageTable(meta.path, 0, dense_limit=0, row_cache=1, read_only=True)
        try:
            by_home = table.count_by_tier()
        finally:
            table.close()
        tiers = []
        for spec in tiers_for_check(meta, field_dir):
            tid = next((i for i, n in names.items() if n == spec.name), None)
            home = by_home.get(tid, 0)
            try:
                capacity = spec.capacity_bytes()
            except (TierSpecError, OSError, ValueError):
                capacity = None
            tiers.append({**spec.to_dict(), "capacity": capacity, "capacity_spec": spec.capacity, "pages": home,
                          "used_bytes": home * cfg.page_size, "home_pages": home})
        from .concepts import ConceptCatalog

        catalog = ConceptCatalog.open(field_dir, read_only=True)
        try:
            concepts = catalog.count
        finally:
            catalog.close()
        return {"field_dir": os.path.abspath(field_dir), "settings": cfg.to_dict(),
                "field": {**cfg.to_dict(), "params_bytes": layout.params_bytes, "n_pages": layout.n_pages},
                "params_bytes": layout.params_bytes, "n_pages": layout.n_pages,
                "materialised_pages": sum(by_home.values()), "dirty_pages": 0, "concepts": concepts, "tiers": tiers,
                "in_use": _field_in_use(field_dir)}
    finally:
        meta.close()


def _mount_field_info(mountpoint: str) -> dict[str, Any] | None:
    """The mounted field's settings from its `field.json` (older daemons leave them out of `stats`)."""
    try:
        with open(os.path.join(mountpoint, "field.json"), "rb") as f:
            data = json.loads(f.read())
    except (OSError, ValueError):
        return None
    return {k: v for k, v in data.items() if not isinstance(v, (list, dict))} if isinstance(data, dict) else None


def mount_stats(mountpoint: str) -> dict[str, Any]:
    """The `stats` of a mount, with `field` filled in from field.json when the daemon omits it."""
    info = _read_mount_stats(mountpoint)
    if info is None:
        raise CliError(f"{mountpoint}: the mount does not answer")
    info = {"mounted": True, **info}
    if not isinstance(info.get("field"), dict):
        extra = _mount_field_info(mountpoint)
        if extra:
            info["field"] = extra
    return info


def _field_in_use(field_dir: str) -> bool:
    """True while a daemon holds the field's lock (it is mounted somewhere)."""
    import fcntl

    try:
        from .tiers.fielddir import LOCK_NAME
    except ImportError:
        LOCK_NAME = "lock"
    try:
        fd = os.open(os.path.join(field_dir, LOCK_NAME), os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def cmd_stat(args: argparse.Namespace) -> int:
    from .fs.mounts import is_nffs_mount
    from .ui.status import render_status

    target = os.path.abspath(args.target)
    if is_nffs_mount(target):
        info = mount_stats(target)
    elif os.path.isdir(target):
        info = {"mounted": False, **field_summary(target)}
    else:
        raise CliError(f"{target}: neither a field directory nor an nffs mount")
    if args.hardware:
        info["hardware"] = hardware_info()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    ascii_only = "utf" not in (sys.stdout.encoding or "").lower()
    sys.stdout.write(render_status(info, ascii_only=ascii_only))
    if args.hardware:
        _print_hardware(info["hardware"])
    return 0


def _print_hardware(hw: dict[str, Any]) -> None:
    print("hardware")
    for n in hw["numa_nodes"]:
        tag = " (CXL candidate: memory without CPUs)" if n["cxl_candidate"] else ""
        mem = _human(n["memory_bytes"]) if n["memory_bytes"] else "?"
        print(f"  numa node {n['node']}: cpus [{n['cpus'] or 'none'}], memory {mem}{tag}")
    if not hw["numa_nodes"]:
        print("  no NUMA information under /sys/devices/system/node")


# ---------------------------------------------------------------------- fsck
def cmd_fsck(args: argparse.Namespace) -> int:
    from .tiers.fielddir import FieldError, load_config, lock_field
    from .tiers.fsck import fsck

    field_dir = os.path.abspath(args.field_dir)
    try:
        load_config(field_dir)
        try:
            lock_fd = lock_field(field_dir)
        except FieldError:
            raise CliError(f"{field_dir} is mounted; unmount it before fsck") from None
        try:
            report = _fsck_with_progress(fsck, field_dir, args.repair)
        finally:
            os.close(lock_fd)
    except FieldError as exc:
        raise CliError(str(exc)) from None
    for line in report.problems:
        print(f"problem: {line}")
    for line in report.repaired:
        print(f"repaired: {line}")
    for line in report.notes:
        print(f"note: {line}")
    if args.repair:
        for line in report.unrepaired:
            print(f"not repaired: {line}")
    verdict = "clean" if report.clean else ("repaired" if args.repair and not report.unrepaired else "PROBLEMS FOUND")
    print(f"fsck {field_dir}: {report.pages_checked} pages checked, {len(report.problems)} problem(s): {verdict}")
    return 0 if report.clean else 1


def _materialised_pages(field_dir: str) -> int | None:
    """Pages with a home, for the fsck progress bar (None when the metadata cannot say cheaply)."""
    try:
        summary = field_summary(field_dir)
    except Exception:  # the metadata belongs to the storage core; a bar is not worth failing for
        return None
    return int(summary.get("materialised_pages") or 0)


def _fsck_with_progress(fsck, field_dir: str, repair: bool):
    """Run fsck with a progress bar on a terminal.

    When the checker reports progress (a `progress(done, total)` keyword) the bar shows
    pages checked of all pages; otherwise it shows the page count and elapsed time while
    the check runs in a worker thread.
    """
    import inspect
    import threading

    from .ui.progress import Progress, is_tty

    if not is_tty():
        return fsck(field_dir, repair=repair)
    total = _materialised_pages(field_dir)
    bar = Progress("fsck", total=total, unit="pages")
    if "progress" in inspect.signature(fsck).parameters:
        with bar:
            return fsck(field_dir, repair=repair, progress=lambda done, n=None: bar.update(done, n))
    result: dict[str, Any] = {}

    def work() -> None:
        try:
            result["report"] = fsck(field_dir, repair=repair)
        except BaseException as exc:  # re-raised in the caller's thread
            result["error"] = exc

    bar.total = None
    bar.note = f"checking {total:,} page{'' if total == 1 else 's'}" if total is not None else "checking pages"
    with bar:
        t = threading.Thread(target=work, daemon=True)
        t.start()
        while t.is_alive():
            t.join(0.1)
            bar.draw()
    if "error" in result:
        raise result["error"]
    return result["report"]


def cmd_top(args: argparse.Namespace) -> int:
    from .ui.top import run_top

    return run_top(os.path.abspath(args.mountpoint), interval=args.interval, once=args.once, ascii_only=args.ascii)


def cmd_warmup(args: argparse.Namespace) -> int:
    from .ui.warmup import WarmupError, run_warmup

    try:
        return run_warmup(os.path.abspath(args.mountpoint), ranges=args.range, levels=args.level, concepts=args.concept,
                          point_files=args.points)
    except WarmupError as exc:
        raise CliError(str(exc)) from None


def cmd_bench(args: argparse.Namespace) -> int:
    from .ui.bench import BenchError, run_bench

    try:
        return run_bench(quick=args.quick, json_path=args.json, plot_dir=args.plot,
                         only=args.only.split(",") if args.only else None)
    except BenchError as exc:
        raise CliError(str(exc)) from None


HANDLERS = {"init": cmd_init, "mount": cmd_mount, "umount": cmd_umount, "stat": cmd_stat, "fsck": cmd_fsck,
            "refresh": cmd_refresh, "top": cmd_top, "warmup": cmd_warmup, "bench": cmd_bench}


def main(argv: Sequence[str] | None = None) -> int:
    from .ui.mountopts import MountOptionError, rewrite_argv

    raw = list(sys.argv[1:] if argv is None else argv)
    try:
        raw = rewrite_argv(raw, set(HANDLERS))
    except MountOptionError as exc:
        print(f"nffs mount: {exc}", file=sys.stderr)
        return 2
    parser = build_parser()
    args = parser.parse_args(raw)
    #: the command line as a program got it (None when called in process): a foreground
    #: daemon may start again with it (`_adopt_daemon_environment`)
    args.program_argv = raw if argv is None else None
    level = getattr(logging, str(args.log_level).upper(), logging.INFO)
    logging.basicConfig(level=level, format="%(asctime)s %(process)d %(name)s %(levelname)s: %(message)s")
    handlers = HANDLERS
    try:
        return handlers[args.command](args)
    except CliError as exc:
        print(f"nffs {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
