"""`query` (SPEC 4.1): per handle, write `N*D` float32, read `N*O` float32 back.

Memory per handle is bounded by construction: a request may not exceed
`max_batch * D * 4` bytes, and a write that would leave a gap (an offset beyond the
current end) is refused *without* allocating the gap — before this bound a single
write at offset 12 MiB made the daemon allocate 12 MiB of zeros. A refused request
fails its read with EINVAL; the next write at offset 0 starts afresh on the same
handle.
"""
from __future__ import annotations

import stat

import numpy as np
import pyfuse3
import trio

from ...errors import InvalidInput
from ...field import INLINE_POINTS
from .. import inodes as ino
from ..errors import store_errors
from .base import DYNAMIC_TIMEOUT, Handle, MountContext, Node, make_attr


def _answer_bytes(out: np.ndarray) -> bytes:
    return np.ascontiguousarray(out, dtype="<f4").tobytes()


class QueryHandle(Handle):
    __slots__ = ("request", "answer", "error", "computing")

    def __init__(self, node: Node, flags: int) -> None:
        super().__init__(node, flags)
        #: one answer computation at a time: a read arriving while the answer is being
        #: computed (a big pread split by the kernel) waits for it instead of starting over
        self.computing = trio.Lock()
        self.request = bytearray()
        #: the answer of the last request, until the next write
        self.answer: bytes | None = None
        #: why the request being written is already refused (reported by the next read)
        self.error: str | None = None

    def restart(self) -> None:
        self.request = bytearray()
        self.answer = None
        self.error = None

    def refuse(self, why: str) -> None:
        self.request = bytearray()
        self.error = why


class QueryNode(Node):
    writable = True
    writable_read_only = True

    def __init__(self, ctx: MountContext) -> None:
        super().__init__(ctx, ino.QUERY)

    @property
    def row_bytes(self) -> int:
        return self.ctx.layout.dims * 4

    @property
    def max_request_bytes(self) -> int:
        return self.ctx.max_batch * self.row_bytes

    def getattr(self) -> pyfuse3.EntryAttributes:
        return make_attr(self.ctx, self.inode, stat.S_IFREG | 0o666, 0, timeout=DYNAMIC_TIMEOUT)

    async def open(self, flags: int) -> Handle:
        self.check_open(flags)
        return QueryHandle(self, flags)

    async def write(self, handle: Handle, off: int, buf: bytes) -> int:
        assert isinstance(handle, QueryHandle)
        if off == 0 or handle.answer is not None:
            handle.restart()  # a write at 0, or after an answer, starts a new request
        if handle.error is not None:
            return len(buf)  # already refused: swallow the rest, report on read
        end = off + len(buf)
        if end > self.max_request_bytes:
            handle.refuse(f"request exceeds --max-batch ({self.ctx.max_batch} points)")
        elif off > len(handle.request):
            handle.refuse(f"request written with a gap (offset {off}, {len(handle.request)} bytes so far)")
        else:
            handle.request[off:end] = buf
        return len(buf)

    async def read(self, handle: Handle, off: int, size: int) -> bytes:
        assert isinstance(handle, QueryHandle)
        async with handle.computing:
            if handle.answer is None:
                error, request = handle.error, bytes(handle.request)
                handle.restart()
                if error is not None:
                    raise InvalidInput(error)
                points = self.parse(request)
                with store_errors():
                    out = await self.ctx.field.infer(points)
                if points.shape[0] > INLINE_POINTS:  # tens of MiB to copy: not on the trio thread
                    handle.answer = await trio.to_thread.run_sync(_answer_bytes, out)
                else:
                    handle.answer = _answer_bytes(out)
            return handle.answer[off:off + size]

    def parse(self, request: bytes) -> np.ndarray:
        if len(request) % self.row_bytes:
            raise InvalidInput(f"request of {len(request)} bytes is not a multiple of D*4 = {self.row_bytes}")
        points = np.frombuffer(request, dtype="<f4").reshape(-1, self.ctx.layout.dims)
        if points.shape[0] > self.ctx.max_batch:
            raise InvalidInput(f"request exceeds --max-batch ({self.ctx.max_batch} points)")
        if not np.isfinite(points).all():
            raise InvalidInput("request holds NaN or infinity")
        return points
