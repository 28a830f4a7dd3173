"""pyfuse3 Operations for the mounted field (SPEC 4): a thin dispatcher to the node classes.

Every handler finds the node of an inode (`node`) or the handle of an fh (`handle`)
and forwards the call; the behaviour of each kind of file lives in `fs/nodes/`. The
error contract (fs/errors.py) is applied here, once, by `fuse_handler`.
"""
from __future__ import annotations

import errno
import logging
import os
import time
from typing import Any, Callable

import pyfuse3

from ..concepts import ConceptCatalog
from ..errors import NotFound
from ..field import Field
from . import inodes as ino
from .errors import ErrorCounters, fuse_error_for, fuse_handler, store_errors
from .nodes.at import AtDirNode
from .nodes.base import NAME_MAX, DirNode, Handle, MountContext, Node, fs_error
from .nodes.concepts import ConceptsDirNode
from .nodes.decoder import DecoderNode
from .nodes.hints import HintsNode
from .nodes.info import FieldJsonNode, MetricsNode, StatsNode
from .nodes.query import QueryNode
from .nodes.root import RootDirNode
from .nodes.views import LevelNode, LevelsDirNode, ParamsNode
from .pagecache import NotifyStore, PageCacheSync

log = logging.getLogger(__name__)

#: extended-attribute namespaces the kernel queries by itself (capabilities before each
#: write, ACLs); nffs stores none of them
KERNEL_XATTR_PREFIXES = (b"security.", b"system.")

DURABLE_KINDS = frozenset({"nvme", "hdd"})
ReaddirReply = Callable[[Any, bytes, pyfuse3.EntryAttributes, int], bool]


class FieldOperations(pyfuse3.Operations):
    supports_dot_lookup = True
    enable_writeback_cache = False

    def __init__(
        self,
        field: Field,
        catalog: ConceptCatalog,
        *,
        max_batch: int = 1 << 20,
        read_only: bool = False,
        stats_extra: Callable[[], dict[str, Any]] | None = None,
        hint_sink: Callable[[list[int]], None] | None = None,
        notify_store: NotifyStore = pyfuse3.notify_store,
        readdir_reply: ReaddirReply = pyfuse3.readdir_reply,
    ) -> None:
        """`notify_store` and `readdir_reply` are pyfuse3's; tests driving the handlers
        without a FUSE session pass recorders instead."""
        super().__init__()
        self.field = field
        self.store = field.store
        self.catalog = catalog
        self.stats_extra = stats_extra
        self.errors = ErrorCounters()
        self._readdir_reply = readdir_reply
        self.cache = PageCacheSync(field.layout, notify_store)
        self.ctx = MountContext(field=field, catalog=catalog, cache=self.cache, read_only=read_only, max_batch=max_batch,
                                mount_time_ns=time.time_ns(), stats=self.stats, hint_sink=hint_sink)
        self.handles: dict[int, Handle] = {}
        self._next_fh = 1

        ctx = self.ctx
        levels = [LevelNode(ctx, level) for level in range(field.layout.n_levels)]
        self.decoder = DecoderNode(ctx)
        self.levels_dir = LevelsDirNode(ctx, levels)
        self.concepts_dir = ConceptsDirNode(ctx)
        self.at_dir = AtDirNode(ctx)
        self.query = QueryNode(ctx)
        children: dict[bytes, Node] = {
            b"field.json": FieldJsonNode(ctx),
            b"params": ParamsNode(ctx),
            b"stats": StatsNode(ctx),
            b"metrics": MetricsNode(ctx),
            b"query": self.query,
            b"hints": HintsNode(ctx),
            b"decoder.npz": self.decoder,
            b"levels": self.levels_dir,
            b"concepts": self.concepts_dir,
            b"at": self.at_dir,
        }
        self.root = RootDirNode(ctx, children, self.decoder)
        self._fixed: dict[int, Node] = {n.inode: n for n in (self.root, *children.values(), *levels)}

    # ------------------------------------------------------------------ wiring
    @property
    def read_only(self) -> bool:
        return self.ctx.read_only

    @property
    def hint_sink(self) -> Callable[[list[int]], None] | None:
        return self.ctx.hint_sink

    @hint_sink.setter
    def hint_sink(self, sink: Callable[[list[int]], None] | None) -> None:
        self.ctx.hint_sink = sink

    async def push_pages(self, pages: list[tuple[int, bytes, tuple[int, int] | None]]) -> None:
        """The prefetcher's last step: pages' bytes (but for a marker's hole) into the kernel
        cache of every view, in order, in one hand-off to a worker thread."""
        await self.cache.push_pages(pages)

    # ------------------------------------------------------------------ dispatch
    def node(self, inode: int) -> Node:
        found = self._fixed.get(inode)
        if found is not None:
            return found
        if ino.is_concept(inode):
            return self.concepts_dir.child(inode)
        if ino.is_at(inode):
            return self.at_dir.child(inode)
        raise NotFound(f"no inode {inode}")

    def dir_node(self, inode: int) -> DirNode:
        found = self.node(inode)
        if not isinstance(found, DirNode):
            raise fs_error(errno.ENOTDIR, "not a directory")
        return found

    def handle(self, fh: int) -> Handle:
        h = self.handles.get(fh)
        if h is None:
            raise fs_error(errno.EBADF, "unknown file handle")
        return h

    def _register(self, h: Handle) -> pyfuse3.FileInfo:
        fh = self._next_fh
        self._next_fh += 1
        self.handles[fh] = h
        h.fh = fh
        return pyfuse3.FileInfo(fh=fh, keep_cache=h.node.keep_cache, direct_io=h.node.direct_io)

    # ------------------------------------------------------------------ attributes, lookup
    @fuse_handler
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext = None) -> pyfuse3.EntryAttributes:
        return self.node(inode).getattr()

    @fuse_handler
    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes, fields: pyfuse3.SetattrFields, fh: int | None,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        handle = self.handles.get(fh) if fh is not None else None
        return await self.node(inode).setattr(attr, fields, handle)

    @fuse_handler
    async def lookup(self, parent: int, name: bytes, ctx: pyfuse3.RequestContext = None) -> pyfuse3.EntryAttributes:
        if name == b".":
            return self.node(parent).getattr()
        if name == b"..":
            return self.root.getattr()
        return (await self.dir_node(parent).lookup(name)).getattr()

    async def forget(self, inode_list: list[tuple[int, int]]) -> None:
        for inode, nlookup in inode_list:
            if ino.is_at(inode):
                self.at_dir.forget(inode, nlookup)

    # ------------------------------------------------------------------ directories
    @fuse_handler
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        return self.dir_node(inode).inode

    @fuse_handler
    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        for entry in self.dir_node(fh).entries(start_id):
            if not self._readdir_reply(token, entry.name, entry.attr, entry.next_token):
                break

    async def releasedir(self, fh: int) -> None:
        return None

    @fuse_handler
    async def create(self, parent: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext):
        node, handle = await self.dir_node(parent).create(name, mode, flags)
        return self._register(handle), node.getattr()

    @fuse_handler
    async def mknod(self, parent: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext):
        return (await self.dir_node(parent).mknod(name, mode)).getattr()

    @fuse_handler
    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext):
        self.ctx.check_writable()
        raise fs_error(errno.EPERM, "directories cannot be created")

    @fuse_handler
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self.ctx.check_writable()
        raise fs_error(errno.EPERM, "directories cannot be removed")

    @fuse_handler
    async def unlink(self, parent: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self.dir_node(parent).unlink(name)

    @fuse_handler
    async def rename(self, parent_old: int, name_old: bytes, parent_new: int, name_new: bytes, flags: int,
                     ctx: pyfuse3.RequestContext) -> None:
        await self.dir_node(parent_old).rename(name_old, self.dir_node(parent_new), name_new, flags)

    # ------------------------------------------------------------------ files
    @fuse_handler
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        return self._register(await self.node(inode).open(flags))

    async def read(self, fh: int, off: int, size: int) -> bytes:
        # The hottest request (every cold 4 KiB read of params): the error contract is applied
        # inline, not by `fuse_handler`, whose extra coroutine per request is one more step of
        # a cold read's few microseconds (scripts/bench_io.py); self.handle() inlined as well.
        try:
            h = self.handles.get(fh)
            if h is None:
                raise fs_error(errno.EBADF, "unknown file handle")
            node = h.node
            data = node.read_now(off, size, fh)
            if data is not None:
                return data
            return await node.read(h, off, size)
        except pyfuse3.FUSEError:
            raise
        except Exception as exc:
            raise fuse_error_for(self.errors, "read", exc) from None

    @fuse_handler
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        h = self.handle(fh)
        return await h.node.write(h, off, buf)

    @fuse_handler
    async def flush(self, fh: int) -> None:
        h = self.handles.get(fh)
        if h is not None:
            await h.node.flush(h)

    @fuse_handler
    async def release(self, fh: int) -> None:
        h = self.handles.pop(fh, None)
        if h is not None:
            await h.node.release(h)

    @fuse_handler
    async def fsync(self, fh: int, datasync: bool) -> None:
        if not self.read_only:
            with store_errors():
                await self.store.sync()

    # ------------------------------------------------------------------ xattrs
    @fuse_handler
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        if name.startswith(KERNEL_XATTR_PREFIXES):
            # The kernel's own probes, not a user's question: it asks for security.capability
            # before EVERY write (FUSE keeps SB_NOSEC off, so no answer is cached), which
            # makes each write two round trips. nffs keeps no such attribute: answered at
            # once, without the node lookup or counting it among the errors users made.
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        return await self.node(inode).getxattr(name)

    @fuse_handler
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        return await self.node(inode).listxattr()

    @fuse_handler
    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self.node(inode).setxattr(name, value)

    @fuse_handler
    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self.node(inode).removexattr(name)

    # ------------------------------------------------------------------ stats, statfs
    def stats(self) -> dict[str, Any]:
        """Live statistics: O(1) in the number of concepts (the catalog counts in memory)."""
        decoder = self.field.decoder
        out: dict[str, Any] = {
            "pid": os.getpid(),
            "field_dir": self.field.field_dir,
            "params_bytes": self.field.layout.params_bytes,
            "page_size": self.field.layout.page_size,
            "open_handles": len(self.handles),
            "decoder": None if decoder is None else {"out_width": decoder.out_width},
            "concepts": self.catalog.count,
            "errors": self.errors.as_dict(),
            "store": self.store.stats(),
            "queries": self.query.stats.as_dict(),
            "read_latency_seconds": self.ctx.read_latency.as_dict(),
        }
        if self.stats_extra is not None:
            out.update(self.stats_extra())
        return out

    @fuse_handler
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        layout = self.field.layout
        s = pyfuse3.StatvfsData()
        bsize = layout.page_size
        s.f_bsize = bsize
        s.f_frsize = bsize
        s.f_blocks = -(-layout.params_bytes // bsize)
        free = self.store.free_bytes()
        s.f_bfree = s.f_bavail = min(s.f_blocks, free // bsize)
        s.f_files = 16 + layout.n_levels + self.catalog.count
        s.f_ffree = s.f_favail = 1 << 20
        s.f_namemax = NAME_MAX
        return s
