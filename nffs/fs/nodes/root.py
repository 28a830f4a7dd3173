"""The root directory: fixed files and directories, plus `decoder.npz` while one exists."""
from __future__ import annotations

import errno
import stat
from typing import Iterator

import pyfuse3

from ...errors import NotFound
from .. import inodes as ino
from .base import DirEntry, DirNode, Handle, MountContext, Node, fs_error, indexed_entries, make_attr
from .decoder import DecoderNode

DECODER_NAME = b"decoder.npz"


class RootDirNode(DirNode):
    def __init__(self, ctx: MountContext, children: dict[bytes, Node], decoder: DecoderNode) -> None:
        super().__init__(ctx, ino.ROOT)
        self.children = children  # name -> node, decoder.npz included
        self.decoder = decoder

    def getattr(self) -> pyfuse3.EntryAttributes:
        return make_attr(self.ctx, self.inode, stat.S_IFDIR | 0o755)

    async def lookup(self, name: bytes) -> Node:
        node = self.children.get(name)
        if node is None:
            raise NotFound("no such file")
        node.getattr()  # decoder.npz: ENOENT while absent
        return node

    def entries(self, token: int) -> Iterator[DirEntry]:
        items = [(name, node.getattr()) for name, node in self.children.items()
                 if node is not self.decoder or self.decoder.exists]
        return indexed_entries(items, token)

    async def create(self, name: bytes, mode: int, flags: int) -> tuple[Node, Handle]:
        self.ctx.check_writable()
        if name == DECODER_NAME:
            return self.decoder, await self.decoder.create(flags)
        raise fs_error(errno.EACCES, "only decoder.npz can be created here")

    async def unlink(self, name: bytes) -> None:
        self.ctx.check_writable()
        if name == DECODER_NAME:
            await self.decoder.remove()
            return
        raise fs_error(errno.EPERM, "the namespace's own files cannot be removed")
