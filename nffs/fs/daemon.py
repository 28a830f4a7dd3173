"""The mount daemon: one trio nursery owns the FUSE loop and every background worker."""
from __future__ import annotations

import logging
import os
import signal
from dataclasses import dataclass, field
from typing import Callable

import pyfuse3
import trio

from ..field import Field
from ..tiers.fielddir import open_field
from ..tiers.spec import TierSpec
from .mounts import is_mounted
from .ops import FieldOperations

log = logging.getLogger(__name__)


@dataclass
class MountOptions:
    tiers: list[TierSpec] = field(default_factory=list)
    prefetch: str = "hoeffding"
    read_only: bool = False
    allow_other: bool = False
    max_batch: int = 1 << 20
    writeback_interval: float = 5.0
    metrics_listen: str | None = None  # [ADDR:]PORT of an HTTP /metrics endpoint (nffs.ui.metrics_http)


def serve(field_dir: str, mountpoint: str, opts: MountOptions, on_ready: Callable[[], None] | None = None) -> None:
    """Open the field, mount, serve until unmounted or signalled, then flush and clean up."""
    opened = open_field(field_dir, opts.tiers or None, read_only=opts.read_only)
    fld = Field(opened.layout, opened.store, opened.field_dir)
    prefetcher = None
    ops = FieldOperations(
        fld,
        max_batch=opts.max_batch,
        read_only=opts.read_only,
        stats_extra=(lambda: {"mountpoint": os.path.abspath(mountpoint), "prefetch": prefetcher.stats() if prefetcher else {"predictor": "none"}}),
    )
    if opts.prefetch != "none" and False:  # TEMP: predictor moves to the store port
        from ..predictor.prefetch import Prefetcher

        prefetcher = Prefetcher(opened.store, opened.layout, kind=opts.prefetch, push=ops.push_page, field=fld)
        ops.hint_sink = prefetcher.hint
    fuse_options = set(pyfuse3.default_options)
    fuse_options.update({"fsname=nffs", "subtype=nffs"})
    if opts.allow_other:
        fuse_options.add("allow_other")
    # --read-only protects the field; it is enforced by the handlers (EROFS), not with the
    # kernel's `ro`, so that the query protocol (write a request, read the answer) still works.
    try:
        pyfuse3.init(ops, mountpoint, fuse_options)
    except Exception:
        opened.close()
        raise
    unmount = True
    try:
        trio.run(_run, ops, opened.store, prefetcher, opts, on_ready)
        # main() returns when the kernel unmounted us, or on a signal (still mounted then)
        unmount = is_mounted(mountpoint)
    finally:
        try:
            pyfuse3.close(unmount=unmount)
        except Exception:
            log.exception("closing the FUSE session")
        opened.close()
        log.info("daemon for %s exited cleanly", mountpoint)


async def _run(ops: FieldOperations, store, prefetcher, opts: MountOptions, on_ready) -> None:
    async with trio.open_nursery() as nursery:
        if not opts.read_only:
            await nursery.start(store.run_background, opts.writeback_interval)
        if prefetcher is not None:
            await nursery.start(prefetcher.run)
        nursery.start_soon(_terminate_on_signal)
        if opts.metrics_listen:
            from ..ui import metrics_http

            await nursery.start(metrics_http.start, opts.metrics_listen, ops.stats)
        if on_ready is not None:
            on_ready()
        await pyfuse3.main()
        nursery.cancel_scope.cancel()
    # The loop is over (unmounted or terminated): make every write durable before exiting.
    with trio.CancelScope(shield=True):
        if not opts.read_only:
            await store.shutdown()


async def _terminate_on_signal() -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            log.info("signal %d: unmounting", signum)
            pyfuse3.terminate()
            return
