"""The optional decoder MLP (SPEC 2.5), loaded from untrusted ``.npz`` bytes without unpickling.

``decoder.npz`` is written by users through the file system, so loading it must
never execute anything (``allow_pickle=False``) and must turn every malformed
input into one clear ValueError, never a crash or a half-loaded model. Array
headers are checked before any array is read, so a small compressed file cannot
inflate into gigabytes.
"""
from __future__ import annotations

import io
import logging
import re
import zipfile

import numpy as np

log = logging.getLogger(__name__)

#: Upper bound on the decoder's total number of values (256 MiB of float32).
MAX_DECODER_VALUES = 1 << 26

_KEY = re.compile(r"([Wb])(0|[1-9][0-9]*)")


class Decoder:
    """A ReLU MLP: ``h = x; h = relu(h @ W_k + b_k)`` for every layer but the last, which has no ReLU."""

    def __init__(self, weights: list[np.ndarray], biases: list[np.ndarray]) -> None:
        if not weights or len(weights) != len(biases):
            raise ValueError("a decoder needs at least one layer and one bias per weight matrix")
        self.weights = [np.ascontiguousarray(w, dtype=np.float32) for w in weights]
        self.biases = [np.ascontiguousarray(b, dtype=np.float32) for b in biases]
        for k, (w, b) in enumerate(zip(self.weights, self.biases)):
            if w.ndim != 2 or 0 in w.shape:
                raise ValueError(f"W{k} must be a non-empty 2-D (in, out) matrix, got shape {w.shape}")
            if b.shape != (w.shape[1],):
                raise ValueError(f"b{k} must have shape ({w.shape[1]},) to match W{k} {w.shape}, got {b.shape}")
            if k and w.shape[0] != self.weights[k - 1].shape[1]:
                raise ValueError(
                    f"W{k} has {w.shape[0]} rows but layer {k - 1} has {self.weights[k - 1].shape[1]} outputs"
                )
            if not (np.isfinite(w).all() and np.isfinite(b).all()):
                raise ValueError(f"W{k} and b{k} must hold finite numbers")

    @property
    def in_width(self) -> int:
        return int(self.weights[0].shape[0])

    @property
    def out_width(self) -> int:
        return int(self.weights[-1].shape[1])

    @property
    def n_layers(self) -> int:
        return len(self.weights)

    def apply(self, x: np.ndarray) -> np.ndarray:
        """(N, in) -> (N, out) float32, one matrix product per layer for the whole batch."""
        h = np.asarray(x, dtype=np.float32)
        if h.ndim != 2 or h.shape[1] != self.in_width:
            raise ValueError(f"decoder input must have shape (N, {self.in_width}), got {h.shape}")
        last = len(self.weights) - 1
        for k, (w, b) in enumerate(zip(self.weights, self.biases)):
            h = h @ w
            h += b
            if k != last:
                np.maximum(h, np.float32(0.0), out=h)
        return np.ascontiguousarray(h, dtype=np.float32)

    def to_npz_bytes(self) -> bytes:
        """The decoder as ``.npz`` bytes (uncompressed), readable by :meth:`from_npz_bytes`."""
        arrays: dict[str, np.ndarray] = {}
        for k, (w, b) in enumerate(zip(self.weights, self.biases)):
            arrays[f"W{k}"] = w
            arrays[f"b{k}"] = b
        buf = io.BytesIO()
        np.savez(buf, **arrays)  # type: ignore[arg-type]
        return buf.getvalue()

    @classmethod
    def from_npz_bytes(cls, data: bytes, in_width: int) -> "Decoder":
        """Load and validate; ``in_width`` is the encoding width L*F that W0 must accept.

        Accepts arrays ``W0, b0, W1, b1, ...`` numbered from 0 without gaps and no
        other keys, of any real floating dtype (cast to float32). Raises ValueError
        with a message naming the problem for anything else, including object
        arrays (never unpickled), non-npz data and corrupt archives.
        """
        try:
            npz = np.load(io.BytesIO(bytes(data)), allow_pickle=False)
        except Exception as exc:  # any parse failure is the user's bad file, not our crash
            raise ValueError(f"decoder is not a valid .npz file: {exc}") from None
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise ValueError("decoder must be a .npz archive of arrays W0, b0, W1, b1, ... (got a single array)")
        with npz:
            names = list(npz.files)
            layers = _layer_count(names)
            total = 0
            for name in names:
                dtype, shape = _peek_header(npz, name)
                if dtype.kind != "f":
                    raise ValueError(f"{name} must be a real floating-point array, got dtype {dtype}")
                total += int(np.prod(shape, dtype=np.int64))
                if total > MAX_DECODER_VALUES:
                    raise ValueError(f"decoder is too large (more than {MAX_DECODER_VALUES:,} values)")
            try:
                weights = [npz[f"W{k}"] for k in range(layers)]
                biases = [npz[f"b{k}"] for k in range(layers)]
            except Exception as exc:
                raise ValueError(f"decoder arrays cannot be read: {exc}") from None
        decoder = cls(weights, biases)
        if decoder.in_width != in_width:
            raise ValueError(f"W0 must have {in_width} rows (the encoding width L*F), got {decoder.in_width}")
        log.debug("loaded decoder: %d layers, %d -> %d", decoder.n_layers, decoder.in_width, decoder.out_width)
        return decoder


def _layer_count(names: list[str]) -> int:
    """Number of layers if the keys are exactly W0, b0, ..., W{k-1}, b{k-1}; else ValueError."""
    found: dict[str, set[int]] = {"W": set(), "b": set()}
    for name in names:
        match = _KEY.fullmatch(name)
        if not match:
            raise ValueError(f"unexpected array {name!r} in decoder (only W0, b0, W1, b1, ... are allowed)")
        found[match.group(1)].add(int(match.group(2)))
    if not found["W"]:
        raise ValueError("decoder has no W0")
    layers = max(found["W"]) + 1
    for kind in ("W", "b"):
        missing = sorted(set(range(layers)) - found[kind])
        if missing:
            raise ValueError(f"decoder is missing {kind}{missing[0]}")
    extra = sorted(found["b"] - set(range(layers)))
    if extra:
        raise ValueError(f"decoder has b{extra[0]} without W{extra[0]}")
    return layers


def _peek_header(npz: "np.lib.npyio.NpzFile", name: str) -> tuple[np.dtype, tuple[int, ...]]:
    """dtype and shape of one member, read from its .npy header without loading the data."""
    try:
        with npz.zip.open(name + ".npy") as member:
            version = np.lib.format.read_magic(member)
            if version == (1, 0):
                shape, _fortran, dtype = np.lib.format.read_array_header_1_0(member)
            elif version == (2, 0):
                shape, _fortran, dtype = np.lib.format.read_array_header_2_0(member)
            else:
                raise ValueError(f"unsupported .npy format version {version}")
    except (KeyError, OSError, zipfile.BadZipFile, ValueError, EOFError) as exc:
        raise ValueError(f"decoder array {name} is unreadable: {exc}") from None
    return np.dtype(dtype), tuple(shape)
