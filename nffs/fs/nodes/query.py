"""`query` (SPEC 4.1): per handle, write `N*D` float32, read `N*O` float32 back.

Memory per handle is bounded by construction: a request may not exceed
`max_batch * D * 4` bytes, and a write that would leave a gap (an offset beyond the
current end) is refused *without* allocating the gap — before this bound a single
write at offset 12 MiB made the daemon allocate 12 MiB of zeros. A refused request
fails its read with EINVAL; the next write at offset 0 starts afresh on the same
handle.

The single-point path is short on purpose (SPEC 8: a one-point request within 3x of
two minimal round trips): the request bytearray is parsed in place (`frombuffer`, no
copy), the field's small-batch path runs inline, and the answer is kept as the
float32 array itself; a read copies only the slice it returns. Big requests are parsed
and checked in a worker thread, and their answer is never copied into a `bytes`
object: `tobytes()` of a 128 MiB answer is one memcpy that holds the GIL for tens of
milliseconds, stalling every other FUSE request (SPEC 8 "isolation").

Every request is counted in `stats` under `queries` (requests, points, errors, and
a latency histogram from the request's first write to its answer).
"""
from __future__ import annotations

import math
import stat
from time import perf_counter_ns

import numpy as np
import pyfuse3
import trio

from ...errors import InvalidInput, NffsError
from .. import inodes as ino
from ..errors import domain_error
from ..latency import QueryStats
from .base import DYNAMIC_TIMEOUT, Handle, MountContext, Node, make_attr

_F32LE = np.dtype("<f4")


#: requests of up to this many points are checked, and their answers viewed, on the trio
#: thread: tens of microseconds, less than the two hops to a worker thread they would cost
PARSE_INLINE_POINTS = 8192
#: requests of up to this many values are checked for NaN and infinity in Python (a few
#: points: cheaper than numpy's two calls)
SMALL_REQUEST_VALUES = 64


def _answer_view(out: np.ndarray) -> memoryview:
    """The answer's bytes as a flat memoryview, without a copy when `out` is contiguous little-endian float32."""
    if out.dtype != _F32LE or not out.flags.c_contiguous:
        out = np.ascontiguousarray(out, dtype=_F32LE)
    return memoryview(out.reshape(-1).view(np.uint8))


class QueryHandle(Handle):
    __slots__ = ("request", "answer", "error", "computing", "started_ns")

    def __init__(self, node: Node, flags: int) -> None:
        super().__init__(node, flags)
        #: one answer computation at a time: a read arriving while the answer is being
        #: computed (a big pread split by the kernel) waits for it instead of starting over
        self.computing = trio.Lock()
        self.request = bytearray()
        #: the answer of the last request (its bytes, a view of the result array), until the next write
        self.answer: memoryview | None = None
        #: why the request being written is already refused (reported by the next read)
        self.error: str | None = None
        #: perf_counter_ns() of the request's first write (0: none yet)
        self.started_ns = 0

    def restart(self) -> None:
        self.request = bytearray()  # a new one: the old one may back the points being answered
        self.answer = None
        self.error = None
        self.started_ns = 0

    def refuse(self, why: str) -> None:
        self.request = bytearray()
        self.error = why


class QueryNode(Node):
    writable = True
    writable_read_only = True

    def __init__(self, ctx: MountContext) -> None:
        super().__init__(ctx, ino.QUERY)
        self.stats = QueryStats()
        self.row_bytes = ctx.layout.dims * 4  # bytes per point of a request

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
            handle.started_ns = perf_counter_ns()
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
        computing = handle.computing
        answer = handle.answer
        if answer is None:
            try:
                # without a checkpoint when free: a trip through trio's scheduler costs a
                # one-point query about 5 % (SPEC 8 single point)
                computing.acquire_nowait()
            except trio.WouldBlock:
                # a big pread split by the kernel: wait for the answer being computed (trio
                # hands a released lock to the next waiter, so this may be our turn to compute)
                await computing.acquire()
            try:
                answer = handle.answer
                if answer is None:
                    answer = handle.answer = await self._answer(handle)
            finally:
                computing.release()
        return answer[off:off + size].tobytes()  # one read's worth (<= max_read), never the whole answer

    async def _answer(self, handle: QueryHandle) -> memoryview:
        """Compute the answer of the request written so far; counts it (or its failure) in `stats`."""
        error, request, started = handle.error, handle.request, handle.started_ns or perf_counter_ns()
        handle.restart()
        try:
            if error is not None:
                raise InvalidInput(error)
            big = len(request) > PARSE_INLINE_POINTS * self.row_bytes  # megabytes to check and copy: not on the trio thread
            points = await trio.to_thread.run_sync(self.parse, request) if big else self.parse(request)
            try:  # store_errors() inline: its context manager costs a one-point query ~1 %
                out = await self.ctx.field.infer(points)
            except NffsError:
                raise
            except OSError as exc:
                raise domain_error(exc) from exc
            answer = await trio.to_thread.run_sync(_answer_view, out) if big else _answer_view(out)
        except Exception:
            self.stats.failed()
            raise
        self.stats.answered(points.shape[0], perf_counter_ns() - started)
        return answer

    def parse(self, request: bytes | bytearray) -> np.ndarray:
        if len(request) % self.row_bytes:
            raise InvalidInput(f"request of {len(request)} bytes is not a multiple of D*4 = {self.row_bytes}")
        points = np.frombuffer(request, dtype="<f4").reshape(-1, self.ctx.layout.dims)
        if points.shape[0] > self.ctx.max_batch:
            raise InvalidInput(f"request exceeds --max-batch ({self.ctx.max_batch} points)")
        finite = (all(map(math.isfinite, points.reshape(-1).tolist())) if points.size <= SMALL_REQUEST_VALUES
                  else bool(np.isfinite(points).all()))
        if not finite:
            raise InvalidInput("request holds NaN or infinity")
        return points
