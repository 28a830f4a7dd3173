"""Implicit initialisation (SPEC 2.3): never-written values are a pure function of (seed, index)."""
from __future__ import annotations

import numpy as np

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15


def implicit_values(seed: int, start: int, count: int, init: str, init_scale: float, dtype: np.dtype) -> np.ndarray:
    """Values of elements [start, start+count), vectorised (SplitMix64 finaliser).

    numpy uint64 array arithmetic wraps modulo 2^64, which is exactly the SPEC's arithmetic.
    """
    dtype = np.dtype(dtype)
    if init == "zeros":
        return np.zeros(count, dtype=dtype)
    z = np.arange(count, dtype=np.uint64)
    z += np.uint64(((seed * _GOLDEN) + start + 1) & _MASK64)
    return _finish(z, init_scale, dtype)


def implicit_values_at(seed: int, indices: np.ndarray, init: str, init_scale: float, dtype: np.dtype) -> np.ndarray:
    """:func:`implicit_values` of arbitrary element indices (a gather over never-written
    pages needs a few scattered elements of each, not the whole pages)."""
    dtype = np.dtype(dtype)
    idx = np.asarray(indices)
    if init == "zeros":
        return np.zeros(idx.shape, dtype=dtype)
    z = idx.astype(np.uint64)
    z += np.uint64(((seed * _GOLDEN) + 1) & _MASK64)
    return _finish(z, init_scale, dtype)


def _finish(z: np.ndarray, init_scale: float, dtype: np.dtype) -> np.ndarray:
    """SplitMix64's finaliser on z = seed * golden + index + 1 (in place), then the top 24
    bits as a uniform value in [-init_scale, init_scale)."""
    z ^= z >> np.uint64(30)
    z *= np.uint64(0xBF58476D1CE4E5B9)
    z ^= z >> np.uint64(27)
    z *= np.uint64(0x94D049BB133111EB)
    z ^= z >> np.uint64(31)
    u = (z >> np.uint64(40)).astype(np.float64) * (1.0 / 2**24)
    return (init_scale * (2.0 * u - 1.0)).astype(dtype)


def implicit_value_scalar(seed: int, index: int, init: str, init_scale: float) -> float:
    """The SPEC formula one element at a time, in plain Python ints (the test oracle)."""
    if init == "zeros":
        return 0.0
    z = (seed * _GOLDEN + index + 1) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    z = z ^ (z >> 31)
    u = (z >> 40) / 2**24
    return init_scale * (2 * u - 1)
