"""`decoder.npz` (SPEC 2.5): absent until written; written whole, validated on close.

Each open handle edits a private copy of the file; on flush (close) a changed copy
is validated and installed atomically by the field, or refused with EINVAL and the
installed decoder kept. The buffer is bounded: a decoder may hold at most
`MAX_DECODER_VALUES` values, so its file cannot legitimately be much larger; and, as
for `query`, a write that would leave a gap is refused rather than zero-filled (a
file is written front to back; a gap would only make the daemon allocate memory).
"""
from __future__ import annotations

import errno
import logging
import os
import stat

import pyfuse3
import trio

from ...encoding.decoder import MAX_DECODER_VALUES
from ...errors import InvalidInput, NffsError, NotFound
from .. import inodes as ino
from ..errors import store_errors
from .base import Handle, MountContext, Node, fs_error, make_attr

log = logging.getLogger(__name__)

#: float64 arrays plus zip and .npy headers
MAX_DECODER_FILE = MAX_DECODER_VALUES * 8 + (1 << 20)


class DecoderHandle(Handle):
    __slots__ = ("buffer", "dirty")

    def __init__(self, node: Node, flags: int, content: bytes, dirty: bool) -> None:
        super().__init__(node, flags)
        self.buffer = bytearray(content)
        self.dirty = dirty


class DecoderNode(Node):
    writable = True

    def __init__(self, ctx: MountContext) -> None:
        super().__init__(ctx, ino.DECODER)
        #: open handles in opening order; the newest one's size is what stat shows
        self._open: list[DecoderHandle] = []

    @property
    def exists(self) -> bool:
        return self.ctx.field.decoder_bytes is not None or bool(self._open)

    def getattr(self) -> pyfuse3.EntryAttributes:
        if not self.exists:
            raise NotFound("no decoder installed")
        size = len(self._open[-1].buffer) if self._open else len(self.ctx.field.decoder_bytes or b"")
        return make_attr(self.ctx, self.inode, stat.S_IFREG | self.ctx.rw_mode(), size, timeout=0)

    def _track(self, handle: DecoderHandle) -> DecoderHandle:
        self._open.append(handle)
        return handle

    async def open(self, flags: int) -> Handle:
        self.getattr()
        self.check_open(flags)
        truncate = bool(flags & os.O_TRUNC)
        current = b"" if truncate else (self.ctx.field.decoder_bytes or b"")
        return self._track(DecoderHandle(self, flags, current, dirty=truncate))

    async def create(self, flags: int) -> Handle:
        """`decoder.npz` created in the root directory (O_CREAT): an empty new file."""
        self.ctx.check_writable()
        return self._track(DecoderHandle(self, flags | os.O_RDWR, b"", dirty=True))

    async def read(self, handle: Handle, off: int, size: int) -> bytes:
        assert isinstance(handle, DecoderHandle)
        return bytes(handle.buffer[off:off + size])

    async def write(self, handle: Handle, off: int, buf: bytes) -> int:
        assert isinstance(handle, DecoderHandle)
        self.ctx.check_writable()
        if off + len(buf) > MAX_DECODER_FILE:
            raise fs_error(errno.EFBIG, f"a decoder file is at most {MAX_DECODER_FILE} bytes")
        if off > len(handle.buffer):
            raise InvalidInput(f"decoder.npz written with a gap (offset {off}, {len(handle.buffer)} bytes so far)")
        handle.buffer[off:off + len(buf)] = buf
        handle.dirty = True
        return len(buf)

    async def setattr(self, attr: pyfuse3.EntryAttributes, fields: pyfuse3.SetattrFields, handle: Handle | None) -> pyfuse3.EntryAttributes:
        if fields.update_size and isinstance(handle, DecoderHandle):
            self.ctx.check_writable()
            if attr.st_size > MAX_DECODER_FILE:
                raise fs_error(errno.EFBIG, f"a decoder file is at most {MAX_DECODER_FILE} bytes")
            if attr.st_size < len(handle.buffer):
                del handle.buffer[attr.st_size:]
            else:
                handle.buffer.extend(bytes(attr.st_size - len(handle.buffer)))
            handle.dirty = True
        return self.getattr()

    async def flush(self, handle: Handle) -> None:
        assert isinstance(handle, DecoderHandle)
        if handle.dirty:
            await self._install(handle)

    async def release(self, handle: Handle) -> None:
        assert isinstance(handle, DecoderHandle)
        try:
            if handle.dirty:
                await self._install(handle)
        except NffsError as exc:
            # nobody is left to tell (close already returned): the log is the only witness
            log.warning("decoder.npz written without close() reporting: %s", exc)
        finally:
            self._open.remove(handle)

    async def _install(self, handle: DecoderHandle) -> None:
        data = bytes(handle.buffer)
        handle.dirty = False
        try:
            with store_errors():
                await trio.to_thread.run_sync(self.ctx.field.install_decoder, data)
        except InvalidInput as exc:
            log.warning("rejected decoder.npz: %s", exc)
            raise

    async def remove(self) -> None:
        self.ctx.check_writable()
        if self.ctx.field.decoder_bytes is None:
            raise NotFound("no decoder installed")
        with store_errors():
            await trio.to_thread.run_sync(self.ctx.field.remove_decoder)
