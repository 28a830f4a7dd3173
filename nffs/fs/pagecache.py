"""The kernel page cache of `params` and `levels/NN`, kept equal to the store's bytes.

These are the only files read through the kernel page cache (`keep_cache`, no
`direct_io`), so that `MAP_SHARED` mmap works. `params` and every `levels/NN` are
different inodes over the same bytes; `PageCacheSync` keeps their cached copies
equal: a write through one view is pushed into the others with
`pyfuse3.notify_store`, and pages changed behind the kernel's back (concept writes,
prefetched pages) are pushed into every view that may be cached — never over newer
bytes of a write (the races are in `PageCacheSync`'s docstring).
"""
from __future__ import annotations

import errno
import logging
import threading
import time
from typing import Awaitable, Callable

import pyfuse3
import trio

from ..encoding.layout import FieldLayout
from . import inodes as ino

log = logging.getLogger(__name__)

NotifyStore = Callable[[int, int, memoryview], None]
ReadBytes = Callable[[int, int], Awaitable[bytes]]


def _store_each(notify: NotifyStore, jobs: list[tuple[int, int, memoryview]]) -> None:
    """`notify_store` each (inode, file offset, bytes), in a worker thread."""
    for inode, file_off, piece in jobs:
        try:
            notify(inode, file_off, piece)
        except OSError as exc:
            # ENOENT: the kernel forgot the inode (nothing cached). Anything else only
            # costs a stale-cache window that the next read of the page closes.
            if exc.errno != errno.ENOENT:
                log.debug("notify_store(%d): %s", inode, exc)


#: A write through a view reaches the daemon after the kernel put its bytes into that view's
#: cache (and, the page being up to date, unlocked it): a push that landed within this long
#: before the write reached the daemon may have landed in between, over the new bytes
PUSH_RACE_HORIZON_S = 1.0
#: how long a raced write waits for its bytes to be stored again before it is answered: the
#: store lands in a worker-thread hop, unless the kernel holds the page lock for this very
#: write (a page that was not up to date: no push could have landed over it), when it can
#: land only after the answer
RACED_WRITE_WAIT_S = 0.005
#: the landing times are pruned once they cover this many pages (a few hundred KiB)
LANDED_PRUNE_AT = 4096


def _pages(offset: int, length: int, page_size: int) -> range:
    """The pages bytes [offset, offset + length) touch (one, for length 0)."""
    return range(offset // page_size, (offset + max(1, length) - 1) // page_size + 1)


class PushedBytes:
    """Bytes on their way into the kernel cache (a page a prefetch pushes, or a write's bytes
    stored again): as handed over and, once the worker thread comes to them (or a change
    patches them first), the copy the kernel will read."""

    __slots__ = ("start", "data", "buf")

    def __init__(self, start: int, data: bytes | memoryview) -> None:
        self.start = start  # params offset of the first byte
        self.data = data
        self.buf: bytearray | None = None

    def pages(self, page_size: int) -> range:
        return _pages(self.start, len(self.data), page_size)


#: (inode, file offset, start, end of the slice of the pushed bytes) a push stores
Target = tuple[int, int, int, int]


class PageCacheSync:
    """Pushes bytes of the parameter space into the kernel cache of every view that may hold them.

    Only views opened since mount can have cached pages, so only those are notified.
    `notify_store` runs in a worker thread and is awaited: the kernel may hold a page
    lock of the target while it waits for this very daemon (no deadlock on the trio
    thread), and the other views are current when the write returns.

    A prefetch push must never leave older bytes than a write's, and it races writes two ways:
    - the write holds the kernel's page lock until this daemon answers it (a page not up to
      date in the kernel), and the push's `notify_store` waits for it, then copies the push's
      buffer: so a push's bytes are a buffer of our own that every change patches
      (:meth:`bytes_changed`, on the trio thread, before the change is answered) until the
      push has landed;
    - the page was up to date: the kernel copied the write's bytes into it and unlocked it
      before the write reached the daemon, and a push landing in between put the old bytes
      back. Nothing here can see when the kernel copied; so a write of a page that a push
      may have reached (in flight, or landed within `PUSH_RACE_HORIZON_S`) is stored into
      the writer's view once more, and the write waits up to `RACED_WRITE_WAIT_S` for that
      store before it is answered: never longer, since the kernel may hold the page lock
      for this very write (a page that was not up to date, which no push reached) and the
      store then lands only after the answer.
    No lock is held across `notify_store` (the write it waits for needs the trio thread).
    """

    def __init__(self, layout: FieldLayout, notify_store: NotifyStore = pyfuse3.notify_store) -> None:
        self.layout = layout
        self.notify_store = notify_store
        self.level_ranges = [layout.level_byte_range(level) for level in range(layout.n_levels)]
        self.opened_views: set[int] = set()
        #: page -> the pushes in flight over it; the lock orders a patch and a buffer's copy
        self._pushing: dict[int, list[PushedBytes]] = {}
        self._pushing_lock = threading.Lock()
        #: page -> when a push over it last landed (pruned past `PUSH_RACE_HORIZON_S`)
        self._landed: dict[int, float] = {}
        self._last_landing = 0.0
        #: where the stores after a raced write run (`run`, in the daemon's nursery)
        self._nursery: trio.Nursery | None = None

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Host the stores that follow raced writes until cancelled (the daemon's nursery)."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None

    def view_opened(self, inode: int) -> None:
        self.opened_views.add(inode)

    def has_aliases(self, source: int) -> bool:
        """May another opened view cache bytes that `source` changes? (Checked before each
        write's notification: most writers have one view open, and the coroutines of a
        notification that finds nothing to do were ~4 % of a small write's time.)"""
        views = self.opened_views
        return len(views) > 1 or (len(views) == 1 and source not in views)

    def concerned(self, source: int) -> bool:
        """Does a change written through `source` need :meth:`bytes_changed`: another view
        may cache its bytes, or a push may be on its way or have landed lately?"""
        if self._landed and time.monotonic() - self._last_landing > PUSH_RACE_HORIZON_S:
            self._landed.clear()  # none within the horizon
        return bool(self._pushing or self._landed) or self.has_aliases(source)

    def alias_targets(self, offset: int, length: int, source: int) -> list[Target]:
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

    def _view_offset(self, inode: int, offset: int) -> int:
        """The file offset in view `inode` of params offset `offset`."""
        if inode == ino.PARAMS:
            return offset
        return offset - self.level_ranges[inode - ino.level_inode(0)][0]

    async def bytes_changed(self, offset: int, data: bytes | memoryview, source: int) -> None:
        """The store holds new bytes at params `offset` (written through view `source`, or
        changed behind the kernel's back: -1): patch pushes in flight, store them again into
        the writer's view if a push may have raced the write, and into every other opened
        view. Called before the change is answered."""
        if self._pushing or self._landed:
            view = memoryview(data)
            if self._pushing:
                self._patch_pushes(offset, view)
            if source >= 0 and self._nursery is not None and self._raced(offset, len(view)):
                again = PushedBytes(offset, bytes(view))
                job = (again, [(source, self._view_offset(source, offset), 0, len(view))])
                self._register(job)
                landed = trio.Event()
                self._nursery.start_soon(self._land, [job], landed)
                with trio.move_on_after(RACED_WRITE_WAIT_S):
                    await landed.wait()
        if self.has_aliases(source):
            await self._notify_pieces([(offset, data)], source)

    def pending_stores(self) -> int:
        """Pushes (and stores after raced writes) not landed yet."""
        return len({id(pushed) for pushes in self._pushing.values() for pushed in pushes})

    def _raced(self, offset: int, length: int) -> bool:
        """May a push have landed over these bytes since a write of them was made?"""
        since = time.monotonic() - PUSH_RACE_HORIZON_S
        landed = self._landed
        return any(p in self._pushing or landed.get(p, 0.0) > since
                   for p in _pages(offset, length, self.layout.page_size))

    def _patch_pushes(self, offset: int, data: memoryview) -> None:
        end = offset + len(data)
        patched: set[int] = set()
        for page in _pages(offset, len(data), self.layout.page_size):
            pushes = self._pushing.get(page)
            if not pushes:
                continue
            with self._pushing_lock:
                for pushed in pushes:
                    if id(pushed) in patched:
                        continue  # (registered under each of its pages)
                    patched.add(id(pushed))
                    if pushed.buf is None:
                        pushed.buf = bytearray(pushed.data)
                    a = max(offset, pushed.start)
                    b = min(end, pushed.start + len(pushed.buf))
                    if b > a:
                        pushed.buf[a - pushed.start:b - pushed.start] = data[a - offset:b - offset]

    def _own_copy(self, pushed: PushedBytes) -> memoryview:
        """The buffer the kernel copies a push from (made in the worker thread, right before
        its first `notify_store`: the trio thread copies nothing unless a change patches)."""
        with self._pushing_lock:
            if pushed.buf is None:
                pushed.buf = bytearray(pushed.data)
            return memoryview(pushed.buf)

    def _register(self, job: tuple[PushedBytes, list[Target]]) -> None:
        for page in job[0].pages(self.layout.page_size):
            self._pushing.setdefault(page, []).append(job[0])

    async def _land(self, jobs: list[tuple[PushedBytes, list[Target]]], landed: trio.Event | None = None) -> None:
        """Store registered pushes into their targets in one worker-thread hop; then forget
        them (a later change patches nothing), note when they landed and set `landed`."""
        notify = self.notify_store
        own_copy = self._own_copy

        def store_all() -> None:
            for pushed, targets in jobs:
                view = own_copy(pushed)
                _store_each(notify, [(inode, file_off, view[a:b]) for inode, file_off, a, b in targets])

        try:
            await trio.to_thread.run_sync(store_all)
        finally:
            now = time.monotonic()
            ps = self.layout.page_size
            for pushed, _ in jobs:
                for page in pushed.pages(ps):
                    pushes = self._pushing[page]
                    pushes.remove(pushed)
                    if not pushes:
                        del self._pushing[page]
                    self._landed[page] = now
            self._last_landing = now
            if len(self._landed) > LANDED_PRUNE_AT:
                since = now - PUSH_RACE_HORIZON_S
                self._landed = {p: t for p, t in self._landed.items() if t > since}
            if landed is not None:
                landed.set()

    async def _notify_pieces(self, pieces: list[tuple[int, bytes | memoryview]], source: int) -> None:
        """Store each (params offset, bytes) into every other opened view, in one worker-thread hop."""
        jobs = []
        for offset, data in pieces:
            view = memoryview(data)
            jobs += [(inode, file_off, view[a:b]) for inode, file_off, a, b in self.alias_targets(offset, len(view), source)]
        if not jobs:
            return
        notify = self.notify_store
        await trio.to_thread.run_sync(lambda: _store_each(notify, jobs))

    async def push_pages(self, pages: list[tuple[int, bytes, tuple[int, int] | None]]) -> None:
        """Put pages' current bytes into the kernel page cache of params and every level view,
        in order, in one worker-thread hop.

        The prefetcher's last step: the next read of these bytes never reaches the daemon.
        A marker's hole (start, end bytes within the page, on 4 KiB kernel-page bounds in
        params) is left out: the reader's read there still reaches the daemon, and costs
        a few KiB from memory rather than the whole page.

        The caller checks that the bytes are the page's current ones; from then on, with no
        checkpoint in between, the push is registered here and every change patches it.
        """
        jobs: list[tuple[PushedBytes, list[Target]]] = []
        for page, data, hole in pages:
            lo, hi = self.layout.page_byte_range(page)
            size = hi - lo
            spans = [(0, size)] if hole is None else [(0, hole[0]), (hole[1], size)]
            targets = [(inode, file_off, x + a, x + b)
                       for x, y in spans if y > x
                       for inode, file_off, a, b in self.alias_targets(lo + x, y - x, source=-1)]
            if targets:
                job = (PushedBytes(lo, memoryview(data)[:size]), targets)
                self._register(job)
                jobs.append(job)
        if jobs:
            await self._land(jobs)

    async def refresh_pages(self, pages: list[int], read: ReadBytes) -> None:
        """Pages changed behind the kernel's back (concept writes): push their new bytes."""
        if not self.opened_views:
            return  # nothing cached, nothing pushed
        for page in pages:
            lo, hi = self.layout.page_byte_range(page)
            await self.bytes_changed(lo, await read(lo, hi - lo), source=-1)
