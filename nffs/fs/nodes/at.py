"""`at/` and `at/<x>,<y>,…`: the inference output at a point, as one line of text.

The directory lists nothing: any well-formed point name resolves. A looked-up name
gets an inode (`AT_BASE + serial`) that lives until the kernel forgets it, so the
table of known points is bounded by what the kernel holds, not by what was ever asked.
"""
from __future__ import annotations

import stat

import numpy as np
import pyfuse3

from ...encoding import hashgrid
from ...errors import InvalidInput, NameTooLong, NotFound
from .. import inodes as ino
from ..errors import store_errors
from .base import NAME_MAX, DirNode, Handle, MountContext, Node, SnapshotHandle, make_attr


class AtPointNode(Node):
    def __init__(self, ctx: MountContext, inode: int, name: bytes, point: np.ndarray) -> None:
        super().__init__(ctx, inode)
        self.name = name
        self.point = point
        self.lookups = 0

    def getattr(self) -> pyfuse3.EntryAttributes:
        return make_attr(self.ctx, self.inode, stat.S_IFREG | 0o444, 0, timeout=0)

    async def open(self, flags: int) -> Handle:
        self.check_open(flags)
        with store_errors():
            out = (await self.ctx.field.infer(self.point.reshape(1, -1)))[0]
        text = (" ".join(f"{v:.9g}" for v in out.tolist()) + "\n").encode()
        return SnapshotHandle(self, flags, text)

    async def read(self, handle: Handle, off: int, size: int) -> bytes:
        assert isinstance(handle, SnapshotHandle)
        return handle.content[off:off + size]


class AtDirNode(DirNode):
    def __init__(self, ctx: MountContext) -> None:
        super().__init__(ctx, ino.AT_DIR)
        self._by_inode: dict[int, AtPointNode] = {}
        self._by_name: dict[bytes, AtPointNode] = {}
        self._serial = 0

    def getattr(self) -> pyfuse3.EntryAttributes:
        return make_attr(self.ctx, self.inode, stat.S_IFDIR | 0o555)

    def parse(self, name: bytes) -> np.ndarray:
        try:
            return hashgrid.parse_point(name.decode("ascii"), self.ctx.layout.dims)
        except (UnicodeDecodeError, ValueError) as exc:
            raise InvalidInput(f"at/: not a point: {exc}") from None

    async def lookup(self, name: bytes) -> Node:
        if len(name) > NAME_MAX:
            raise NameTooLong("point name too long")
        node = self._by_name.get(name)
        if node is None:
            point = self.parse(name)
            self._serial += 1
            node = AtPointNode(self.ctx, ino.AT_BASE + self._serial, name, point)
            self._by_name[name] = node
            self._by_inode[node.inode] = node
        node.lookups += 1
        return node

    def child(self, inode: int) -> AtPointNode:
        node = self._by_inode.get(inode)
        if node is None:
            raise NotFound("forgotten at/ entry")
        return node

    def forget(self, inode: int, nlookup: int) -> None:
        node = self._by_inode.get(inode)
        if node is None:
            return
        node.lookups -= nlookup
        if node.lookups <= 0:
            del self._by_inode[inode]
            del self._by_name[node.name]

    async def unlink(self, name: bytes) -> None:
        self.ctx.check_writable()
        raise NotFound("at/ lists nothing")

    @property
    def known(self) -> int:
        return len(self._by_inode)

