"""The served field: hash-grid encoding and decoding over the page store.

This is where `encoding/` (pure math) meets `tiers/` (pages): the encoder says which
elements a batch needs, the store gathers them all at once (so slow pages are fetched
concurrently), and the interpolation and decoder run vectorised over the batch.
"""
from __future__ import annotations

import errno
import logging
import os
from typing import TYPE_CHECKING, Callable

import numpy as np

from .encoding import hashgrid

if TYPE_CHECKING:
    from .encoding.decoder import Decoder
from .encoding.layout import FieldLayout
from .tiers.store import PageStore

log = logging.getLogger(__name__)

DECODER_FILE = "decoder.npz"
#: points per encode pass: about L * 2^D * 64Ki * 20 bytes of temporaries at the peak
INFER_CHUNK = 1 << 16


class Field:
    def __init__(self, layout: FieldLayout, store: PageStore, field_dir: str) -> None:
        self.layout = layout
        self.store = store
        self.field_dir = field_dir
        self.decoder: Decoder | None = None
        self.decoder_bytes: bytes | None = None
        #: called with every batch of points read through query, at/ and concepts (field-space prefetch)
        self.point_listeners: list[Callable[[np.ndarray], None]] = []
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
        """Validate first, then persist atomically: a bad file changes nothing."""
        from .encoding.decoder import Decoder

        decoder = Decoder.from_npz_bytes(data, self.layout.encoding_width)
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
        if observe:
            for listener in self.point_listeners:
                listener(points)
        if points.shape[0] == 0:
            return np.zeros((0, self.layout.encoding_width), dtype=np.float32)
        entries, weights = hashgrid.corner_entries(self.layout, points)
        rows = await self.store.gather_rows(entries)  # (L, C, N, F), all pages fetched at once
        return hashgrid.interpolate(self.layout, weights, rows)

    async def infer(self, points: np.ndarray) -> np.ndarray:
        """Decoder(encoding), in chunks so that a huge batch never needs gigabytes of corners."""
        if points.shape[0] <= INFER_CHUNK:
            return self._decode(await self.encode(points))
        parts = []
        for start in range(0, points.shape[0], INFER_CHUNK):
            parts.append(self._decode(await self.encode(points[start:start + INFER_CHUNK])))
        return np.concatenate(parts)

    def _decode(self, enc: np.ndarray) -> np.ndarray:
        return enc if self.decoder is None else self.decoder.apply(enc)

    # -- concepts --------------------------------------------------------------------
    async def write_at(self, point: np.ndarray, offset: int, data: bytes) -> list[int]:
        """Set components [offset/4, ...) of the encoding at `point` (SPEC 2.4); returns the changed pages."""
        width = self.layout.encoding_width * 4
        if offset % 4 or len(data) % 4 or offset < 0 or offset + len(data) > width:
            raise OSError(errno.EINVAL, "concept writes must be 4-byte aligned and inside the vector")
        values = np.frombuffer(data, dtype="<f4")
        if not np.all(np.isfinite(values)):
            raise OSError(errno.EINVAL, "concept values must be finite")
        pts = point.reshape(1, -1).astype(np.float32)
        current = (await self.encode(pts, observe=False))[0]
        target = current.copy()
        target[offset // 4: offset // 4 + values.size] = values
        elements, deltas = hashgrid.concept_update(self.layout, pts[0], current, target)
        if elements.size == 0:
            return []
        return await self.store.add_to_elements(elements, deltas)
