"""The served field: hash-grid encoding and decoding over the page store.

This is where `encoding/` (pure math) meets `tiers/` (pages): the encoder says which
elements a batch needs, the store gathers them all at once (so slow pages are fetched
concurrently), and the interpolation and decoder run vectorised over the batch.

The trio thread also serves every FUSE request, so a big batch must not hold it:
above `INLINE_POINTS` points the corner computation, the interpolation and the
decoder run in a worker thread (`trio.to_thread.run_sync`) while the gather stays an
`await` on the store. Small batches (one `at/` point, a concept, a one-point query)
stay inline: a thread hop would cost more than the arithmetic, which for them is
`hashgrid.corner_entries_small` (all levels at once, bit-identical to the level loop).
"""
from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Callable

import numpy as np
import trio

from .encoding import hashgrid
from .errors import InvalidInput

if TYPE_CHECKING:
    from .encoding.decoder import Decoder
from .encoding.layout import FieldLayout
from .tiers.store import PageStore
from .workers import run_niced

log = logging.getLogger(__name__)

DECODER_FILE = "decoder.npz"
#: points per encode pass: about L * 2^D * 64Ki * 20 bytes of temporaries at the peak
INFER_CHUNK = 1 << 16
#: batches up to this many points are encoded on the calling (trio) thread, by the
#: all-levels small path (`hashgrid.corner_entries_small`, the same bound): a camera
#: frame of tens of points costs less there than the two hops to a worker thread it saves
INLINE_POINTS = 256
#: the encoding, interpolation and decoder of big batches run at this nice level (see
#: `workers.run_niced`): FUSE requests come first
INFER_NICE = 5
#: a batch of at least this many points is split into parts that run at once, one per core
PARALLEL_MIN_POINTS = 1 << 14


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


#: parts of one batch (and of concurrent batches) computed at once: numpy releases the GIL
#: in the hashing, take and interpolation of a part, so each core can run one
INFER_WORKERS = max(1, min(8, _cores()))


class Field:
    def __init__(self, layout: FieldLayout, store: PageStore, field_dir: str) -> None:
        self.layout = layout
        self.store = store
        self.field_dir = field_dir
        self.decoder: Decoder | None = None
        self.decoder_bytes: bytes | None = None
        #: called with every batch of points read through query, at/ and concepts (field-space prefetch)
        self.point_listeners: list[Callable[[np.ndarray], None]] = []
        self._parts = trio.CapacityLimiter(INFER_WORKERS)
        self._load_decoder()

    # -- decoder ---------------------------------------------------------------------
    def _decoder_path(self) -> str:
        return os.path.join(self.field_dir, DECODER_FILE)

    def _load_decoder(self) -> None:
        try:
            with open(self._decoder_path(), "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return
        from .encoding.decoder import Decoder

        try:
            self.decoder = Decoder.from_npz_bytes(data, self.layout.encoding_width)
            self.decoder_bytes = data
        except ValueError as exc:
            log.error("ignoring invalid %s: %s", self._decoder_path(), exc)

    def install_decoder(self, data: bytes) -> None:
        """Validate first, then persist atomically: a bad file changes nothing.

        Raises InvalidInput for a malformed or mismatched file, OSError if the field
        directory cannot be written. Blocking: call it from a worker thread.
        """
        from .encoding.decoder import Decoder

        try:
            decoder = Decoder.from_npz_bytes(data, self.layout.encoding_width)
        except ValueError as exc:
            raise InvalidInput(f"decoder.npz rejected: {exc}") from None
        path = self._decoder_path()
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, path)
        self.decoder, self.decoder_bytes = decoder, data

    def remove_decoder(self) -> None:
        try:
            os.unlink(self._decoder_path())
        except FileNotFoundError:
            pass
        self.decoder = self.decoder_bytes = None

    @property
    def output_width(self) -> int:
        return self.decoder.out_width if self.decoder is not None else self.layout.encoding_width

    # -- inference -------------------------------------------------------------------
    async def encode(self, points: np.ndarray, *, observe: bool = True) -> np.ndarray:
        """(N, D) float32 in [0,1] -> (N, L*F) float32, level-major."""
        return await self._run(points, None, observe=observe)

    async def infer(self, points: np.ndarray) -> np.ndarray:
        """Decoder(encoding), in chunks so that a huge batch never needs gigabytes of corners.

        The decoder is taken once for the whole batch: one installed between two chunks
        must not give the batch rows of two different widths.
        """
        decoder = self.decoder
        n = points.shape[0]
        if n < PARALLEL_MIN_POINTS:
            return await self._run(points, decoder)
        # parts of at most INFER_CHUNK points (bounded temporaries), at least one per worker,
        # computed INFER_WORKERS at a time and put back in order
        step = min(INFER_CHUNK, -(-n // INFER_WORKERS))
        starts = list(range(0, n, step))
        parts: list[np.ndarray | None] = [None] * len(starts)

        async def part(i: int, start: int) -> None:
            async with self._parts:
                parts[i] = await self._run(points[start:start + step], decoder, observe=False)

        async with trio.open_nursery() as nursery:
            for i, start in enumerate(starts):
                nursery.start_soon(part, i, start)
        out = await trio.to_thread.run_sync(np.concatenate, parts)
        self._observed(points)  # the batch as one: the motion model pairs whole batches
        return out

    async def _run(self, points: np.ndarray, decoder: Decoder | None, *, observe: bool = True) -> np.ndarray:
        """Corners -> gather -> interpolate (-> decoder), off the trio thread for big batches."""
        if points.shape[0] == 0:
            width = self.layout.encoding_width if decoder is None else decoder.out_width
            return np.zeros((0, width), dtype=np.float32)
        if points.shape[0] <= INLINE_POINTS:
            # the small-batch path: all levels at once, a few dozen numpy calls (SPEC 8 "single point")
            entries, weights = hashgrid.corner_entries_small(self.layout, points)
            rows = self.store.gather_rows_now(entries)  # from memory at once, when it can...
            if rows is None:
                rows = await self.store.gather_rows(entries)  # ...else (L, C, N, F), all pages fetched at once
            out = self._finish(weights, rows, decoder)
        else:
            entries, weights = await trio.to_thread.run_sync(run_niced, INFER_NICE, hashgrid.corner_entries, self.layout, points)
            rows = await self.store.gather_rows(entries)
            out = await trio.to_thread.run_sync(run_niced, INFER_NICE, self._finish, weights, rows, decoder)
        if observe:
            self._observed(points)
        return out

    def _observed(self, points: np.ndarray) -> None:
        """Tell the listeners (field-space prefetch) of a batch, after its answer: the
        prediction from it is for the next batches, and computing it alongside this one
        would only slow this one down."""
        for listener in self.point_listeners:
            listener(points)

    def _finish(self, weights: np.ndarray, rows: np.ndarray, decoder: Decoder | None) -> np.ndarray:
        enc = hashgrid.interpolate(self.layout, weights, rows)
        return enc if decoder is None else decoder.apply(enc)

    # -- concepts --------------------------------------------------------------------
    async def write_at(self, point: np.ndarray, offset: int, data: bytes) -> list[int]:
        """Set components [offset/4, ...) of the encoding at `point` (SPEC 2.4); returns the changed pages.

        Only the written components take part in the update: the other components keep
        their value by definition, so a non-finite value elsewhere in the field (another
        level, another feature) is none of this write's business. Raises InvalidInput for
        an unaligned write, one past the vector, non-finite values, or a written component
        whose current value is itself not finite (no additive update can repair it).
        """
        width = self.layout.encoding_width * 4
        if offset % 4 or len(data) % 4 or offset < 0 or offset + len(data) > width:
            raise InvalidInput("concept writes must be 4-byte aligned and inside the vector")
        values = np.frombuffer(data, dtype="<f4")
        if not np.all(np.isfinite(values)):
            raise InvalidInput("concept values must be finite")
        if values.size == 0:
            return []
        pts = point.reshape(1, -1).astype(np.float32)
        current = (await self.encode(pts, observe=False))[0]
        lo, hi = offset // 4, offset // 4 + values.size
        if not np.all(np.isfinite(current[lo:hi])):
            raise InvalidInput("the field holds a non-finite value under a written component; write params instead")
        # Unwritten components: current == target == 0, so they contribute no delta.
        cur = np.zeros_like(current)
        cur[lo:hi] = current[lo:hi]
        target = np.zeros_like(current)
        target[lo:hi] = values
        elements, deltas = hashgrid.concept_update(self.layout, pts[0], cur, target)
        if elements.size == 0:
            return []
        return await self.store.add_to_elements(elements, deltas)
