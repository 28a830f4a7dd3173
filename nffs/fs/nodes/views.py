"""`params`, `levels/` and `levels/NN`: byte views of the parameter array, and their cache coherence.

These are the only files read through the kernel page cache (`keep_cache`, no
`direct_io`), so that `MAP_SHARED` mmap works. `params` and every `levels/NN` are
different inodes over the same bytes; `PageCacheSync` keeps their cached copies
equal: a write through one view is pushed into the others with
`pyfuse3.notify_store`, and pages changed behind the kernel's back (concept writes,
prefetched pages) are pushed into every view that may be cached.
"""
from __future__ import annotations

import errno
import logging
import stat
from time import perf_counter_ns
from typing import Awaitable, Callable, Iterator

import pyfuse3
import trio

from ...encoding.layout import FieldLayout
from .. import inodes as ino
from ..errors import store_errors
from ..latency import MEMORY_READ_SAMPLE
from .base import DirEntry, DirNode, Handle, MountContext, Node, fs_error, indexed_entries, make_attr

log = logging.getLogger(__name__)

NotifyStore = Callable[[int, int, memoryview], None]
ReadBytes = Callable[[int, int], Awaitable[bytes]]


class PageCacheSync:
    """Pushes bytes of the parameter space into the kernel cache of every view that may hold them.

    Only views opened since mount can have cached pages, so only those are notified.
    `notify_store` runs in a worker thread and is awaited: the kernel may hold a page
    lock of the target while it waits for this very daemon (no deadlock on the trio
    thread), and the other views are current when the write returns.
    """

    def __init__(self, layout: FieldLayout, notify_store: NotifyStore = pyfuse3.notify_store) -> None:
        self.layout = layout
        self.notify_store = notify_store
        self.level_ranges = [layout.level_byte_range(level) for level in range(layout.n_levels)]
        self.opened_views: set[int] = set()

    def view_opened(self, inode: int) -> None:
        self.opened_views.add(inode)

    def has_aliases(self, source: int) -> bool:
        """May another opened view cache bytes that `source` changes? (Checked before each
        write's notification: most writers have one view open, and the coroutines of a
        notification that finds nothing to do were ~4 % of a small write's time.)"""
        views = self.opened_views
        return len(views) > 1 or (len(views) == 1 and source not in views)

    def alias_targets(self, offset: int, length: int, source: int) -> list[tuple[int, int, int, int]]:
        """(inode, file offset, slice start, slice end) of every other opened view of these bytes."""
        if not self.has_aliases(source):
            return []  # nothing else can cache these bytes
        out = []
        end = offset + length
        if source != ino.PARAMS and ino.PARAMS in self.opened_views:
            out.append((ino.PARAMS, offset, 0, length))
        for level, (lo, hi) in enumerate(self.level_ranges):
            inode = ino.level_inode(level)
            if inode == source or inode not in self.opened_views or hi <= offset or lo >= end:
                continue
            a, b = max(lo, offset), min(hi, end)
            out.append((inode, a - lo, a - offset, b - offset))
        return out

    async def notify_aliases(self, offset: int, data: bytes | memoryview, source: int) -> None:
        await self._notify_pieces([(offset, data)], source)

    async def _notify_pieces(self, pieces: list[tuple[int, bytes | memoryview]], source: int) -> None:
        """Store each (params offset, bytes) into every other opened view, in one worker-thread hop."""
        jobs = []
        for offset, data in pieces:
            view = memoryview(data)
            jobs += [(inode, file_off, view[a:b]) for inode, file_off, a, b in self.alias_targets(offset, len(view), source)]
        if not jobs:
            return
        notify = self.notify_store

        def push() -> None:
            for inode, file_off, piece in jobs:
                try:
                    notify(inode, file_off, piece)
                except OSError as exc:
                    # ENOENT: the kernel forgot the inode (nothing cached). Anything else only
                    # costs a stale-cache window that the next read of the page closes.
                    if exc.errno != errno.ENOENT:
                        log.debug("notify_store(%d): %s", inode, exc)

        await trio.to_thread.run_sync(push)

    async def push_pages(self, pages: list[tuple[int, bytes, tuple[int, int] | None]]) -> None:
        """Put pages' current bytes into the kernel page cache of params and every level view,
        in order, in one worker-thread hop.

        The prefetcher's last step: the next read of these bytes never reaches the daemon.
        A marker's hole (start, end bytes within the page, on 4 KiB kernel-page bounds in
        params) is left out: the reader's read there still reaches the daemon, and costs
        a few KiB from memory rather than the whole page.
        """
        pieces: list[tuple[int, bytes | memoryview]] = []
        for page, data, hole in pages:
            lo, hi = self.layout.page_byte_range(page)
            view = memoryview(data)[: hi - lo]
            spans = [(0, len(view))] if hole is None else [(0, hole[0]), (hole[1], len(view))]
            pieces += [(lo + x, view[x:y]) for x, y in spans if y > x]
        await self._notify_pieces(pieces, source=-1)

    async def refresh_pages(self, pages: list[int], read: ReadBytes) -> None:
        """Pages changed behind the kernel's back (concept writes): push their new bytes."""
        if not self.opened_views:
            return
        for page in pages:
            lo, hi = self.layout.page_byte_range(page)
            await self.notify_aliases(lo, await read(lo, hi - lo), source=-1)


class ByteView(Node):
    """A window [start, end) of the parameter bytes: reads and writes at any offset and length."""

    keep_cache = True
    direct_io = False
    writable = True

    def __init__(self, ctx: MountContext, inode: int, start: int, end: int) -> None:
        super().__init__(ctx, inode)
        self.start = start
        self.end = end
        self.store = ctx.store
        self.read_latency = ctx.read_latency  # one histogram for every view of the mount

    @property
    def size(self) -> int:
        return self.end - self.start

    async def open(self, flags: int) -> Handle:
        self.check_open(flags)
        self.ctx.cache.view_opened(self.inode)
        return Handle(self, flags)

    def read_now(self, off: int, size: int, fh: int = 0) -> memoryview | None:
        # The hottest path of the daemon (every cold 4 KiB read of params): bytes served from
        # memory need no coroutine and, but one in MEMORY_READ_SAMPLE (the one `read`
        # times), no clock; the store raises domain errors itself.
        pos = self.start + off
        latency = self.read_latency
        if 0 < size and pos + size <= self.end and latency.untimed < MEMORY_READ_SAMPLE - 1:
            data = self.store.read_from_memory(pos, size, fh)
            if data is not None:
                latency.untimed += 1
                return data
        return None

    async def read(self, handle: Handle, off: int, size: int) -> bytes:
        pos = self.start + off
        latency = self.read_latency
        size_left = self.end - pos
        if size_left <= 0:
            return b""
        size = min(size, size_left)
        t0 = perf_counter_ns()
        data = self.store.read_from_memory(pos, size, handle.fh)
        if data is not None:
            latency.observe_sample(perf_counter_ns() - t0)
            return data
        data = await self.store.read(pos, size, zero_copy=True, reader=handle.fh)
        latency.observe(perf_counter_ns() - t0)
        return data

    async def write(self, handle: Handle, off: int, buf: bytes) -> int:
        self.ctx.check_writable()
        if off >= self.size:
            raise fs_error(errno.EFBIG, "write past the end of a fixed-size file")
        if off + len(buf) > self.size:
            buf = memoryview(buf)[: self.size - off]  # a write across the end is short
        with store_errors():
            await self.ctx.store.write(self.start + off, buf)
        cache = self.ctx.cache
        if cache.has_aliases(self.inode):
            await cache.notify_aliases(self.start + off, buf, source=self.inode)
        return len(buf)


class ParamsNode(ByteView):
    """`params`: the whole flat parameter array (SPEC 2.2)."""

    def __init__(self, ctx: MountContext) -> None:
        super().__init__(ctx, ino.PARAMS, 0, ctx.layout.params_bytes)

    def getattr(self) -> pyfuse3.EntryAttributes:
        a = make_attr(self.ctx, self.inode, stat.S_IFREG | self.ctx.rw_mode(), self.size)
        # st_blocks tells `du` what the field really occupies: its materialised pages.
        a.st_blocks = self.ctx.store.materialised_pages() * self.ctx.layout.page_size // 512
        return a


class LevelNode(ByteView):
    """`levels/NN`: one level's table, a view of the same bytes as `params`."""

    def __init__(self, ctx: MountContext, level: int) -> None:
        lo, hi = ctx.layout.level_byte_range(level)
        super().__init__(ctx, ino.level_inode(level), lo, hi)
        self.level = level

    def getattr(self) -> pyfuse3.EntryAttributes:
        return make_attr(self.ctx, self.inode, stat.S_IFREG | self.ctx.rw_mode(), self.size)


class LevelsDirNode(DirNode):
    """`levels/`: `00` … `NN`, fixed for the life of the mount."""

    def __init__(self, ctx: MountContext, levels: list[LevelNode]) -> None:
        super().__init__(ctx, ino.LEVELS_DIR)
        self.levels = levels

    def getattr(self) -> pyfuse3.EntryAttributes:
        return make_attr(self.ctx, self.inode, stat.S_IFDIR | 0o555)

    async def lookup(self, name: bytes) -> Node:
        if len(name) == 2 and name.isdigit() and int(name) < len(self.levels):
            return self.levels[int(name)]
        raise fs_error(errno.ENOENT, "no such level")

    def entries(self, token: int) -> Iterator[DirEntry]:
        return indexed_entries([(f"{n.level:02d}".encode(), n.getattr()) for n in self.levels], token)
