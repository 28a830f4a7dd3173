"""`concepts/` and `concepts/<name>` (SPEC 2.4): named points of the field as files.

The directory is backed by the `ConceptCatalog`; a concept's inode is
`CONCEPT_BASE + id`. Listing pages through the catalog by id (the readdir offset
token), so `ls` of 10^5 concepts costs O(entries returned) per call, not a scan of
the table per call.
"""
from __future__ import annotations

import errno
import stat
from typing import Iterator

import numpy as np
import pyfuse3

from ...concepts import Concept
from ...encoding import hashgrid
from ...errors import InvalidInput, NameTooLong, NotFound
from .. import inodes as ino
from ..errors import store_errors
from .base import DYNAMIC_TIMEOUT, NAME_MAX, DirEntry, DirNode, Handle, MountContext, Node, fs_error, make_attr

POINT_XATTR = b"user.nffs.point"
#: concepts fetched from the catalog per query while listing
READDIR_BATCH = 256


def point_text(point: np.ndarray) -> str:
    return " ".join(f"{v:.9g}" for v in point.tolist())


def concept_point(concept: Concept, dims: int) -> np.ndarray:
    """The pinned point, else the one derived from the name (SPEC 2.4)."""
    if concept.point:
        return hashgrid.parse_point(concept.point, dims)
    return hashgrid.point_from_name(concept.name, dims)


def check_name(name: bytes) -> None:
    """A concept name is one path component; it is never used as a host path."""
    if len(name) > NAME_MAX:
        raise NameTooLong(f"concept names are at most {NAME_MAX} bytes")
    if not name or b"/" in name or b"\0" in name or name in (b".", b".."):
        raise InvalidInput("not a valid concept name")


class ConceptNode(Node):
    """One concept: read its encoding, write to set the field there, xattr for its point."""

    writable = True

    def __init__(self, ctx: MountContext, cid: int) -> None:
        super().__init__(ctx, ino.CONCEPT_BASE + cid)
        self.cid = cid

    def _concept(self) -> Concept:
        found = self.ctx.catalog.by_id(self.cid)
        if found is None:
            raise NotFound("concept was removed")
        return found

    def point(self) -> np.ndarray:
        return concept_point(self._concept(), self.ctx.layout.dims)

    def getattr(self) -> pyfuse3.EntryAttributes:
        self._concept()
        return attr_of(self.ctx, self.cid)

    async def read(self, handle: Handle, off: int, size: int) -> bytes:
        point = self.point()
        with store_errors():
            enc = (await self.ctx.field.encode(point.reshape(1, -1)))[0]
        return enc.astype("<f4").tobytes()[off:off + size]

    async def write(self, handle: Handle, off: int, buf: bytes) -> int:
        self.ctx.check_writable()
        point = self.point()
        with store_errors():
            changed = await self.ctx.field.write_at(point, off, bytes(buf))
            # the changed pages are current in every cached view before write() returns
            await self.ctx.cache.refresh_pages(changed, self.ctx.store.read)
        return len(buf)

    # -- the point as an extended attribute ----------------------------------------------
    async def getxattr(self, name: bytes) -> bytes:
        if name != POINT_XATTR:
            raise fs_error(pyfuse3.ENOATTR, "no such attribute")
        found = self._concept()
        if found.point:
            return found.point.encode()
        return point_text(hashgrid.point_from_name(found.name, self.ctx.layout.dims)).encode()

    async def listxattr(self) -> list[bytes]:
        return [POINT_XATTR]

    async def setxattr(self, name: bytes, value: bytes) -> None:
        self.ctx.check_writable()
        if name != POINT_XATTR:
            raise fs_error(errno.ENOTSUP, f"only {POINT_XATTR.decode()} can be set")
        try:
            text = bytes(value).decode("ascii").strip().strip("\0")
            point = hashgrid.parse_point(text, self.ctx.layout.dims)
        except (UnicodeDecodeError, ValueError) as exc:
            raise InvalidInput(f"bad point: {exc}") from None
        if not self.ctx.catalog.set_point(self.cid, point_text(point)):
            raise NotFound("concept was removed")

    async def removexattr(self, name: bytes) -> None:
        if name != POINT_XATTR:
            raise fs_error(pyfuse3.ENOATTR, "no such attribute")
        self.ctx.check_writable()
        if not self.ctx.catalog.set_point(self.cid, None):
            raise NotFound("concept was removed")


def attr_of(ctx: MountContext, cid: int) -> pyfuse3.EntryAttributes:
    return make_attr(ctx, ino.CONCEPT_BASE + cid, stat.S_IFREG | ctx.rw_mode(), ctx.layout.encoding_width * 4,
                     timeout=DYNAMIC_TIMEOUT)


class ConceptsDirNode(DirNode):
    """`concepts/`: create, list, rename, unlink concepts."""

    holds_concepts = True

    def __init__(self, ctx: MountContext) -> None:
        super().__init__(ctx, ino.CONCEPTS_DIR)

    def getattr(self) -> pyfuse3.EntryAttributes:
        mode = stat.S_IFDIR | (0o555 if self.ctx.read_only else 0o755)
        return make_attr(self.ctx, self.inode, mode, timeout=DYNAMIC_TIMEOUT)

    def child(self, inode: int) -> ConceptNode:
        """The node of a concept inode the kernel still knows (NotFound once deleted)."""
        cid = inode - ino.CONCEPT_BASE
        if self.ctx.catalog.by_id(cid) is None:
            raise NotFound("concept was removed")
        return ConceptNode(self.ctx, cid)

    async def lookup(self, name: bytes) -> Node:
        if len(name) > NAME_MAX:
            raise NameTooLong(f"concept names are at most {NAME_MAX} bytes")
        found = self.ctx.catalog.by_name(name)
        if found is None:
            raise NotFound("no such concept")
        return ConceptNode(self.ctx, found.id)

    def entries(self, token: int) -> Iterator[DirEntry]:
        """Concepts with id > token, fetched in batches only as far as the kernel reads."""
        after = token
        while True:
            batch = self.ctx.catalog.page_after(after, READDIR_BATCH)
            for concept in batch:
                yield DirEntry(concept.name, attr_of(self.ctx, concept.id), concept.id)
            if len(batch) < READDIR_BATCH:
                return
            after = batch[-1].id

    def _create(self, name: bytes) -> ConceptNode:
        self.ctx.check_writable()
        check_name(name)
        return ConceptNode(self.ctx, self.ctx.catalog.create(name).id)

    async def create(self, name: bytes, mode: int, flags: int) -> tuple[Node, Handle]:
        node = self._create(name)
        return node, Handle(node, flags)

    async def mknod(self, name: bytes, mode: int) -> Node:
        self.ctx.check_writable()
        if not stat.S_ISREG(mode):
            raise fs_error(errno.EPERM, "concepts are regular files")
        return self._create(name)

    async def unlink(self, name: bytes) -> None:
        self.ctx.check_writable()
        found = self.ctx.catalog.by_name(name)
        if found is None:
            raise NotFound("no such concept")
        self.ctx.catalog.delete(found.id)

    async def rename(self, name: bytes, new_parent: DirNode, new_name: bytes, flags: int) -> None:
        self.ctx.check_writable()
        if new_parent is not self:
            raise fs_error(errno.EXDEV, "concepts stay in concepts/")
        if flags & pyfuse3.RENAME_EXCHANGE:
            raise InvalidInput("RENAME_EXCHANGE is not supported")
        check_name(new_name)
        src = self.ctx.catalog.by_name(name)
        if src is None:
            raise NotFound("no such concept")
        dst = self.ctx.catalog.by_name(new_name)
        if dst is not None and dst.id == src.id:
            return
        if dst is not None and flags & pyfuse3.RENAME_NOREPLACE:
            raise fs_error(errno.EEXIST, "target exists")
        # A concept's point follows its name unless pinned: renaming a name-derived concept
        # keeps its point (and so its content) by pinning the old point.
        pinned = None if src.point else point_text(hashgrid.point_from_name(name, self.ctx.layout.dims))
        self.ctx.catalog.rename(src.id, new_name, point=pinned)
