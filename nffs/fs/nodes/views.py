"""`params`, `levels/` and `levels/NN`: byte views of the parameter array.

These are the only files read through the kernel page cache (`keep_cache`, no
`direct_io`), so that `MAP_SHARED` mmap works; `nffs.fs.pagecache` keeps the cached
copies of the views equal to the store's bytes.
"""
from __future__ import annotations

import errno
import logging
import stat
from time import perf_counter_ns
from typing import Iterator

import pyfuse3

from .. import inodes as ino
from ..errors import store_errors
from ..latency import MEMORY_READ_SAMPLE
from .base import DirEntry, DirNode, Handle, MountContext, Node, fs_error, indexed_entries, make_attr

log = logging.getLogger(__name__)


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
        if cache.concerned(self.inode):  # (most writes: no coroutine, see `has_aliases`)
            await cache.bytes_changed(self.start + off, buf, source=self.inode)
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
