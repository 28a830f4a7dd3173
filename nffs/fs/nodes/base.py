"""What every node of the mounted namespace shares: the mount context, handles, defaults.

A *node* is one kind of entry of the namespace (SPEC 4): it answers getattr, open,
read, write, flush, release, setattr and the xattr calls for its inodes, and owns
the state of its open handles. `FieldOperations` (fs/ops.py) only finds the node of
an inode or the handle of an fh and forwards the call; the error contract is applied
there, once, so nodes raise `nffs.errors` exceptions and never build FUSE replies
for errors themselves.
"""
from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field as dc_field
from typing import TYPE_CHECKING, Any, Callable, Iterator

import pyfuse3

from ...errors import NffsError, ReadOnly
from ..latency import LatencyHistogram

if TYPE_CHECKING:
    from ...concepts import ConceptCatalog
    from ...encoding.layout import FieldLayout
    from ...field import Field
    from ...tiers.store import PageStore
    from ..pagecache import PageCacheSync

NAME_MAX = 255
#: attributes and entries that never change while mounted
STATIC_TIMEOUT = 3600.0
#: entries that may come and go (concepts, query, hints)
DYNAMIC_TIMEOUT = 1.0


def fs_error(code: int, message: str = "") -> NffsError:
    """A domain error with a file-system errno that has no class of its own (EACCES, EPERM, ...)."""
    return NffsError(message or os.strerror(code), code=code)


@dataclass
class MountContext:
    """State every node may read: the field, the catalog, mount options, the kernel cache."""

    field: "Field"
    catalog: "ConceptCatalog"
    cache: "PageCacheSync"
    read_only: bool
    max_batch: int
    uid: int = dc_field(default_factory=os.geteuid)
    gid: int = dc_field(default_factory=os.getegid)
    mount_time_ns: int = 0
    #: the live statistics (filled in by the dispatcher, which owns the counters)
    stats: Callable[[], dict[str, Any]] = lambda: {}
    #: where hint pages go (the prefetcher); None: hints are parsed and dropped
    hint_sink: Callable[[list[int]], None] | None = None
    #: latency of the `params` / `levels/NN` reads the daemon serves (stats: read_latency_seconds)
    read_latency: LatencyHistogram = dc_field(default_factory=LatencyHistogram)

    @property
    def store(self) -> "PageStore":
        return self.field.store

    @property
    def layout(self) -> "FieldLayout":
        return self.field.layout

    def rw_mode(self) -> int:
        return 0o444 if self.read_only else 0o644

    def check_writable(self) -> None:
        if self.read_only:
            raise ReadOnly("mounted read-only")


def make_attr(ctx: MountContext, inode: int, mode: int, size: int = 0, timeout: float = STATIC_TIMEOUT) -> pyfuse3.EntryAttributes:
    a = pyfuse3.EntryAttributes()
    a.st_ino = inode
    a.generation = 0
    a.entry_timeout = timeout
    a.attr_timeout = timeout
    a.st_mode = mode
    a.st_nlink = 2 if stat.S_ISDIR(mode) else 1
    a.st_uid = ctx.uid
    a.st_gid = ctx.gid
    a.st_rdev = 0
    a.st_size = size
    a.st_blksize = min(ctx.layout.page_size, 1 << 17)
    a.st_blocks = (size + 511) // 512
    a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = ctx.mount_time_ns
    return a


class Handle:
    """One open file. Nodes with per-handle state subclass it."""

    __slots__ = ("node", "writable", "flags", "fh")

    def __init__(self, node: "Node", flags: int) -> None:
        self.node = node
        self.flags = flags
        self.writable = (flags & os.O_ACCMODE) in (os.O_WRONLY, os.O_RDWR)
        #: the FUSE file handle it was registered under (0 until then): names the open file
        #: a read came through, as the kernel keeps read-ahead state per open file
        self.fh = 0


class SnapshotHandle(Handle):
    """A handle whose whole content was computed at open (stats, metrics, at/): a reader
    sees one consistent document however it splits its reads."""

    __slots__ = ("content",)

    def __init__(self, node: "Node", flags: int, content: bytes) -> None:
        super().__init__(node, flags)
        self.content = content


class Node:
    """A regular file of the namespace. Subclasses override what their kind supports.

    Class attributes say how the kernel may treat the file: `keep_cache` / `direct_io`
    (only the views of the parameter bytes go through the page cache), `writable`
    (may be opened for writing at all), `writable_read_only` (stays writable on a
    `--read-only` mount: the query protocol and hints write without changing the field).
    """

    keep_cache = False
    direct_io = True
    writable = False
    writable_read_only = False

    def __init__(self, ctx: MountContext, inode: int) -> None:
        self.ctx = ctx
        self.inode = inode

    # -- attributes ------------------------------------------------------------------
    def getattr(self) -> pyfuse3.EntryAttributes:
        raise NotImplementedError

    async def setattr(self, attr: pyfuse3.EntryAttributes, fields: pyfuse3.SetattrFields, handle: Handle | None) -> pyfuse3.EntryAttributes:
        # Fixed-size files: truncation (O_TRUNC, `>`) is accepted and ignored, so that tools
        # that rewrite files whole keep working.
        return self.getattr()

    # -- open / close ----------------------------------------------------------------
    def check_open(self, flags: int) -> None:
        """EROFS / EACCES before any handle state is built."""
        wants_write = (flags & os.O_ACCMODE) in (os.O_WRONLY, os.O_RDWR)
        if wants_write and self.ctx.read_only and not self.writable_read_only:
            raise ReadOnly("mounted read-only")
        if wants_write and not self.writable:
            raise fs_error(errno.EACCES, "read-only file")

    async def open(self, flags: int) -> Handle:
        self.getattr()  # ENOENT for an entry that vanished since lookup
        self.check_open(flags)
        return Handle(self, flags)

    def read_now(self, off: int, size: int, fh: int = 0) -> bytes | memoryview | None:
        """The bytes at once, without awaiting anything, when the node can (the dispatcher
        tries this before `read`: one coroutine fewer on the hottest request); None: ask
        `read`. Errors are raised as in `read`. `fh`: the open file read through."""
        return None

    async def read(self, handle: Handle, off: int, size: int) -> bytes:
        raise fs_error(errno.EINVAL, "not readable")

    async def write(self, handle: Handle, off: int, buf: bytes) -> int:
        raise fs_error(errno.EACCES, "not writable")

    async def flush(self, handle: Handle) -> None:
        return None

    async def release(self, handle: Handle) -> None:
        return None

    # -- extended attributes ---------------------------------------------------------
    async def getxattr(self, name: bytes) -> bytes:
        raise fs_error(pyfuse3.ENOATTR, "no such attribute")

    async def listxattr(self) -> list[bytes]:
        return []

    async def setxattr(self, name: bytes, value: bytes) -> None:
        self.ctx.check_writable()
        raise fs_error(errno.ENOTSUP, "no extended attributes here")

    async def removexattr(self, name: bytes) -> None:
        raise fs_error(pyfuse3.ENOATTR, "no such attribute")


@dataclass(frozen=True)
class DirEntry:
    """One readdir reply: `next_token` is the offset the kernel hands back to resume after it."""

    name: bytes
    attr: pyfuse3.EntryAttributes
    next_token: int


class DirNode(Node):
    """A directory. Names resolve to nodes; mutations are refused unless a subclass allows them."""

    #: renames into or out of this directory are EXDEV (rather than EPERM)
    holds_concepts = False

    async def open(self, flags: int) -> Handle:
        raise fs_error(errno.EISDIR, "is a directory")

    async def lookup(self, name: bytes) -> Node:
        raise fs_error(errno.ENOENT, "no such entry")

    def entries(self, token: int) -> Iterator[DirEntry]:
        """Entries after offset `token` (0: from the start), produced lazily."""
        return iter(())

    async def create(self, name: bytes, mode: int, flags: int) -> tuple[Node, Handle]:
        self.ctx.check_writable()
        raise fs_error(errno.EPERM, "files cannot be created here")

    async def mknod(self, name: bytes, mode: int) -> Node:
        self.ctx.check_writable()
        raise fs_error(errno.EPERM, "files cannot be created here")

    async def unlink(self, name: bytes) -> None:
        self.ctx.check_writable()
        raise fs_error(errno.EPERM, "entries cannot be removed here")

    async def rename(self, name: bytes, new_parent: "DirNode", new_name: bytes, flags: int) -> None:
        self.ctx.check_writable()
        if new_parent is not self and (self.holds_concepts or new_parent.holds_concepts):
            raise fs_error(errno.EXDEV, "concepts stay in concepts/")
        raise fs_error(errno.EPERM, "entries cannot be renamed here")

    def forget(self, inode: int, nlookup: int) -> None:
        """The kernel dropped `nlookup` references to a child (only at/ keeps dynamic inodes)."""
        return None


def indexed_entries(items: list[tuple[bytes, pyfuse3.EntryAttributes]], token: int) -> Iterator[DirEntry]:
    """Readdir over a short fixed list: the offset token is the index of the next entry."""
    for index in range(token, len(items)):
        name, attr = items[index]
        yield DirEntry(name, attr, index + 1)
