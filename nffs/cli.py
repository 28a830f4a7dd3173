"""nffs command line: init / mount / umount / stat / fsck (SPEC 6)."""
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
    pm.add_argument("--ready-fd", type=int, default=None, help=argparse.SUPPRESS)

    pr = sub.add_parser("refresh", help="read-only mount: serve the writer's newest published generation now")
    pr.add_argument("mountpoint")
    pr.add_argument("--timeout", type=_float, default=60.0, help="seconds to wait for the new generation (default 60)")

    pu = sub.add_parser("umount", help="flush, unmount and wait for the daemon to exit")
    pu.add_argument("mountpoint")
    pu.add_argument("--timeout", type=_float, default=600.0, help="seconds to wait for the daemon (default 600)")

    ps = sub.add_parser("stat", help="show a field or a mounted field")
    ps.add_argument("target", help="FIELD_DIR or MOUNTPOINT")
    ps.add_argument("--json", action="store_true")
    ps.add_argument("--hardware", action="store_true", help="list NUMA nodes and CXL candidates")

    pf = sub.add_parser("fsck", help="check pages against metadata and checksums")
    pf.add_argument("field_dir")
    pf.add_argument("--repair", action="store_true")
    return p


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
                        refresh_interval=args.refresh_interval)


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
    if args.foreground:
        return _serve_foreground(field_dir, mountpoint, opts, args.ready_fd)
    return _spawn_daemon(args, field_dir, mountpoint)


def _serve_foreground(field_dir: str, mountpoint: str, opts, ready_fd: int | None) -> int:
    from .fs.daemon import serve
    from .tiers.fielddir import FieldError

    def ready() -> None:
        log.info("mounted %s on %s (pid %d)", field_dir, mountpoint, os.getpid())
        if ready_fd is not None:
            os.write(ready_fd, b"ok\n")
            os.close(ready_fd)

    try:
        serve(field_dir, mountpoint, opts, on_ready=ready)
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


def _spawn_daemon(args: argparse.Namespace, field_dir: str, mountpoint: str) -> int:
    """Run the daemon detached; return only when it reports the mount ready (or its error)."""
    read_fd, write_fd = os.pipe()
    cmd = [sys.executable, "-m", "nffs.cli", "--log-level", args.log_level, "mount", field_dir, mountpoint, "--foreground",
           "--ready-fd", str(write_fd), "--prefetch", args.prefetch, "--max-batch", str(args.max_batch),
           "--writeback-interval", repr(args.writeback_interval), "--refresh-interval", repr(args.refresh_interval)]
    for spec in args.tier:
        cmd += ["--tier", str(spec)]
    if args.read_only:
        cmd.append("--read-only")
    if args.allow_other:
        cmd.append("--allow-other")
    log_path = os.path.join(field_dir, LOG_NAME)
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file, pass_fds=(write_fd,),
                                start_new_session=True, cwd="/")
    os.close(write_fd)
    chunks = []
    deadline = time.monotonic() + 120
    with os.fdopen(read_fd, "rb") as pipe:
        while time.monotonic() < deadline:
            data = pipe.readline()
            if not data:
                break
            chunks.append(data)
            if data.startswith(b"ok") or data.startswith(b"error"):
                break
    message = b"".join(chunks).decode(errors="replace").strip()
    if message.startswith("ok"):
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
            tiers.append({**spec.to_dict(), "home_pages": by_home.get(tid, 0)})
        concepts = int(meta.conn.execute("SELECT COUNT(*) FROM concepts").fetchone()[0])
        return {"field_dir": os.path.abspath(field_dir), "settings": cfg.to_dict(), "params_bytes": layout.params_bytes,
                "n_pages": layout.n_pages, "materialised_pages": sum(by_home.values()), "dirty_pages": 0,
                "concepts": concepts, "tiers": tiers}
    finally:
        meta.close()


def cmd_stat(args: argparse.Namespace) -> int:
    from .fs.mounts import is_nffs_mount

    target = os.path.abspath(args.target)
    if is_nffs_mount(target):
        info = _read_mount_stats(target)
        if info is None:
            raise CliError(f"{target}: the mount does not answer")
        info = {"mounted": True, **info}
    elif os.path.isdir(target):
        info = {"mounted": False, **field_summary(target)}
    else:
        raise CliError(f"{target}: neither a field directory nor an nffs mount")
    if args.hardware:
        info["hardware"] = hardware_info()
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        _print_human(info)
    return 0


def _print_human(info: dict[str, Any]) -> None:
    if info.get("mounted"):
        store = info.get("store", {})
        print(f"mounted field {info.get('field_dir')} at {info.get('mountpoint')} (pid {info.get('pid')})")
        print(f"  params: {_human(info.get('params_bytes', 0))}, materialised pages: {store.get('materialised_pages')}, "
              f"dirty pages: {store.get('dirty_pages')}")
        tiers = store.get("tiers", [])
    else:
        print(f"field {info['field_dir']} (not mounted)")
        s = info["settings"]
        print(f"  D={s['dims']} L={s['levels']} F={s['features']} T=2^{s['log2_table_size']} N0={s['base_resolution']} "
              f"b={s['per_level_scale']} {s['interpolation']} {s['dtype']} page={_human(s['page_size'])}")
        print(f"  params: {_human(info['params_bytes'])} in {info['n_pages']} pages, materialised: {info['materialised_pages']}, "
              f"dirty: {info['dirty_pages']}, concepts: {info['concepts']}")
        tiers = info["tiers"]
    for t in tiers:
        cap = t.get("capacity")
        cap_text = "unbounded" if cap is None else (_human(cap) if isinstance(cap, int) else str(cap))
        counters = ", ".join(f"{k}={t[k]}" for k in ("pages", "dirty_pages", "reads", "writes", "promotions", "demotions",
                                                       "checksum_failures", "home_pages", "memory_pages") if k in t)
        print(f"  tier {t['name']} [{t['kind']}] {t['path']} capacity {cap_text}: {counters}")
    if "prefetch" in info:
        print(f"  prefetch: {json.dumps(info['prefetch'])}")
    hw = info.get("hardware")
    if hw:
        for n in hw["numa_nodes"]:
            tag = " (CXL candidate: no CPUs)" if n["cxl_candidate"] else ""
            mem = _human(n["memory_bytes"]) if n["memory_bytes"] else "?"
            print(f"  numa node {n['node']}: cpus [{n['cpus']}] memory {mem}{tag}")
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
            report = fsck(field_dir, repair=args.repair)
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = getattr(logging, str(args.log_level).upper(), logging.INFO)
    logging.basicConfig(level=level, format="%(asctime)s %(process)d %(name)s %(levelname)s: %(message)s")
    handlers = {"init": cmd_init, "mount": cmd_mount, "umount": cmd_umount, "stat": cmd_stat, "fsck": cmd_fsck,
                "refresh": cmd_refresh}
    try:
        return handlers[args.command](args)
    except CliError as exc:
        print(f"nffs {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
