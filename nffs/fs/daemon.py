"""The mount daemon: one trio nursery owns the FUSE loop and every background worker."""
from __future__ import annotations

import faulthandler
import gc
import logging
import os
import signal
import sys
from dataclasses import dataclass, field
from typing import Callable

import pyfuse3
import trio

from ..concepts import ConceptCatalog
from ..errors import InvalidInput
from ..field import Field
from ..tiers.fielddir import OpenField, open_field
from ..tiers.spec import TierSpec
from .mounts import is_mounted
from .ops import FieldOperations

log = logging.getLogger(__name__)

#: how long a thread may hold the GIL before the interpreter hands it over (seconds)
GIL_SWITCH_INTERVAL_S = 0.0005
#: `kill -USR2 <pid>` writes every thread's stack to the daemon's stderr (the field's
#: nffs.log): what a hung mount is waiting on, without a debugger on the machine
STACK_DUMP_SIGNAL = signal.SIGUSR2


@dataclass
class MountOptions:
    tiers: list[TierSpec] = field(default_factory=list)
    prefetch: str = "hoeffding"
    read_only: bool = False
    allow_other: bool = False
    max_batch: int = 1 << 20
    writeback_interval: float = 5.0
    metrics_listen: str | None = None  # [ADDR:]PORT of an HTTP /metrics endpoint (nffs.ui.metrics_http)
    #: a read-only mount loads the writer's newest published generation this often
    #: (seconds; 0: only on `nffs refresh`, i.e. SIGUSR1)
    refresh_interval: float = 5.0


class UnsafeMountPoint(InvalidInput, ValueError):
    """The mount point overlaps the field's own storage (a ValueError too, for the CLI)."""


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def check_mount_location(mountpoint: str, places: list[tuple[str, str]]) -> None:
    """Refuse a mount point that is, or is inside, the field directory or a tier, or holds one.

    The daemon reads and writes its pages through those paths: if they lead into its own
    mount, every page access waits on a FUSE request that only the waiting thread could
    answer (a deadlock of the whole mount). `places` are (label, path) pairs; paths are
    compared after resolving symlinks.
    """
    mnt = os.path.realpath(mountpoint)
    for label, path in places:
        real = os.path.realpath(path)
        if _inside(mnt, real):
            raise UnsafeMountPoint(f"cannot mount on {mountpoint}: it is inside {label} {real} "
                                   "(the daemon would wait on its own mount); choose a mount point outside it")
        if _inside(real, mnt):
            raise UnsafeMountPoint(f"cannot mount on {mountpoint}: {label} {real} is inside it "
                                   "(the daemon would wait on its own mount); choose a mount point elsewhere")


def serve(field_dir: str, mountpoint: str, opts: MountOptions, on_ready: Callable[[list[str]], None] | None = None) -> None:
    """Open the field, mount, serve until unmounted or signalled, then flush and clean up.

    `on_ready` gets the warnings the user must see at mount (a durable tier that could not
    be opened: its pages give EIO, the rest of the field serves on)."""
    # Worker threads run numpy and checksums in many short calls that hold the GIL; the
    # trio thread must get it back within a fraction of a millisecond, not the default 5 ms.
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    opened = open_field(field_dir, opts.tiers or None, read_only=opts.read_only)
    catalog: ConceptCatalog | None = None
    try:
        check_mount_location(mountpoint, [("the field directory", opened.field_dir)]
                             + [(f"tier {t['name']}", t["path"]) for t in opened.store.describe_tiers()])
        catalog = ConceptCatalog.open(opened.field_dir, read_only=opts.read_only)
        fld = Field(opened.layout, opened.store, opened.field_dir)
        prefetcher = None
        ops = FieldOperations(
            fld,
            catalog,
            max_batch=opts.max_batch,
            read_only=opts.read_only,
            stats_extra=(lambda: {"mountpoint": os.path.abspath(mountpoint), "prefetch": prefetcher.stats() if prefetcher else {"predictor": "none"}}),
        )
        if opts.prefetch != "none":
            from ..predictor.prefetch import Prefetcher

            # the predictor sees the store only through its typed port (nffs/tiers/port.py)
            prefetcher = Prefetcher(opened.store.port, opened.layout, kind=opts.prefetch, push=ops.push_pages)
            fld.point_listeners.append(prefetcher.on_points)
            ops.hint_sink = prefetcher.hint
        fuse_options = set(pyfuse3.default_options)
        fuse_options.update({"fsname=nffs", "subtype=nffs"})
        if opts.allow_other:
            fuse_options.add("allow_other")
        # --read-only protects the field; it is enforced by the handlers (EROFS), not with the
        # kernel's `ro`, so that the query protocol (write a request, read the answer) still works.
        pyfuse3.init(ops, mountpoint, fuse_options)
    except BaseException:
        if catalog is not None:
            catalog.close()
        _close_field(opened)
        raise
    unmount = True
    try:
        warnings = [f"tier {t.name}: {t.broken} -- its pages give EIO until it is back and the field is remounted"
                    for t in opened.tiers if t.broken is not None]
        ready = None if on_ready is None else (lambda: on_ready(warnings))
        trio.run(_run, ops, opened.store, prefetcher, opts, ready)
        # main() returns when the kernel unmounted us, or on a signal (still mounted then)
        unmount = is_mounted(mountpoint)
    finally:
        try:
            pyfuse3.close(unmount=unmount)
        except Exception:
            log.exception("closing the FUSE session")
        catalog.close()
        _close_field(opened)
        log.info("daemon for %s exited cleanly", mountpoint)


def enable_stack_dump() -> None:
    """`kill -USR2` writes every thread's stack to stderr (the field's nffs.log) and the
    daemon goes on (`STACK_DUMP_SIGNAL`). Registered by the CLI's foreground mount before
    it waits for the field lock, so it covers that wait and all of `serve`."""
    try:
        faulthandler.register(STACK_DUMP_SIGNAL, file=sys.stderr, all_threads=True)
    except (AttributeError, ValueError, OSError):  # a stderr without a file descriptor: no dump
        log.info("no stack dump on signal %s: stderr has no file descriptor", STACK_DUMP_SIGNAL.name)


def _close_field(opened: OpenField) -> None:
    """After the final flush: the field's own close removes its private memory tiers."""
    opened.close()


def _freeze_long_lived() -> None:
    """Take everything alive now (modules, the field's tables, the learned model) out of the
    cyclic collector's scans. A full collection walks every tracked object while holding
    the GIL; with numpy, river and trio loaded that is a 20-40 ms pause of the FUSE thread,
    longer than the p99 of any read, several times a minute under load. Objects made
    later are collected as usual; plain garbage among the frozen ones is still freed by
    reference counting (only reference cycles among them would stay). Once, before the
    first request (the learned model is built by then): the collection first, then the
    freeze, so that no garbage is frozen."""
    gc.collect()
    gc.freeze()


async def _run(ops: FieldOperations, store, prefetcher, opts: MountOptions, on_ready) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(ops.ctx.cache.run)  # stores that follow writes raced by pushes
        if not opts.read_only:
            await nursery.start(store.run_background, opts.writeback_interval)
        else:
            async def refresh_caches(pages: list[int]) -> None:
                await ops.ctx.cache.refresh_pages(pages, store.read)

            store.on_pages_changed = refresh_caches
            await nursery.start(store.run_reader, opts.refresh_interval)
            nursery.start_soon(_refresh_on_signal, store)
        if prefetcher is not None:
            await nursery.start(prefetcher.run)
        nursery.start_soon(_terminate_on_signal)
        if opts.metrics_listen:
            from ..ui import metrics_http

            await nursery.start(metrics_http.start, opts.metrics_listen, ops.stats)
        _freeze_long_lived()  # before the first request: the pause costs nobody
        if on_ready is not None:
            on_ready()
        await pyfuse3.main()
        nursery.cancel_scope.cancel()
    # The loop is over (unmounted or terminated): make every write durable before exiting.
    with trio.CancelScope(shield=True):
        if not opts.read_only:
            await store.shutdown()


async def _refresh_on_signal(store) -> None:
    """`nffs refresh MOUNTPOINT` sends SIGUSR1: load the writer's newest generation now."""
    with trio.open_signal_receiver(signal.SIGUSR1) as signals:
        async for _ in signals:
            store.request_refresh()


async def _terminate_on_signal() -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            log.info("signal %d: unmounting", signum)
            pyfuse3.terminate()
            return
