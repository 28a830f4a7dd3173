"""The multi-resolution hash-grid encoding (SPEC 2.1), its scalar oracle, and concept updates (SPEC 2.4).

Everything here is pure math on numpy arrays: parameter values come in through a
*gather* callable, so the same code serves an in-memory array, a tiered page
store, or a test's synthetic function of the element index.

The gather contract (row gather)
--------------------------------
``gather(entries) -> values``: ``entries`` is a ``uint64`` array of any shape
holding *global entry indices* (``offset_l + i``, SPEC 2.2); the result is a
float array of shape ``entries.shape + (F,)`` whose ``[..., f]`` is parameter
element ``entry * F + f``. It is called exactly once per :func:`encode`, with
every corner of every level of every point, so a page store can work out all
the pages involved (see :func:`touched_pages`) and fetch them concurrently.
Rows rather than single elements because a row is ``F * itemsize`` contiguous
bytes: the store does ``F`` times fewer index computations and numpy can copy
each row as one machine word (for F=2 float32, a uint64 ``take``). Entry indices
are always ``< 2**63`` so ``entries.view(np.int64)`` is a free, valid index array.
The result may be any float dtype (float16 rows are widened) and may be
read-only: the encoder only reads it.

Where this deliberately differs from tiny-cuda-nn's CUDA code
-------------------------------------------------------------
``grid_index`` in tiny-cuda-nn keeps ``stride`` in a ``uint32`` while it tests
``stride <= hashmap_size``. When that product wraps to a small value (e.g.
resolution 65536, reached at level 12 with the default N0=16, b=2, where
65536**2 wraps to 0) the loop runs on, the final ``hashmap_size < stride`` test
fails, and the level silently uses a truncated *linear* index instead of the
hash. SPEC 2.1 fixes the rule as
"dense iff ``res**D <= n_l``", which is what the stride loop means without the
overflow, and that is what both implementations here compute (the stride is
an unbounded integer). :func:`encode_reference` can reproduce the CUDA quirk
with ``tcnn_stride_overflow=True`` so the difference stays documented by a
test. For such levels a checkpoint from tiny-cuda-nn would be read with a
different index; they lie beyond the resolutions Instant-NGP configurations
use (finest ~2048-8192 per axis).

Cell coordinates are ``floor(pos)`` reduced modulo 2**32 (2**64 for wide
tables), i.e. wrapping like every other uint operation; CUDA's ``(int)``
conversion saturates instead, which only matters for resolutions >= 2**31.
"""
from __future__ import annotations

import logging
import math
import re
import weakref
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable

import numpy as np
import xxhash

from ..arrays import sorted_unique
from .layout import HASH_PRIMES, FieldLayout

log = logging.getLogger(__name__)

#: ``gather(entries: uint64 array) -> float array of shape entries.shape + (F,)``.
Gather = Callable[[np.ndarray], np.ndarray]

_MASK32 = (1 << 32) - 1
_MASK64 = (1 << 64) - 1
#: float64 ``p + 0.5`` is exact for 2**-6 <= |p| < 2**46 (p a float32*float32 product);
#: outside that band it may round, so those elements get the exact round-to-odd path.
_FMA_SMALL_LIMIT = 0.5 + 2.0**-6
_FMA_BIG_LIMIT = 2.0**46
#: Below this many points :func:`interpolate` uses a single einsum instead of per-level loops.
_SMALL_BATCH = 1024


# ---------------------------------------------------------------------------
# Per-layout constants, built once.
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _LevelPlan:
    dense: bool
    n: int  # entries in the level
    offset: int
    pow2: bool  # n is a power of two: `& (n-1)` instead of `% n`
    strides: np.ndarray  # (D,) res**d in the index dtype (dense levels)
    corner_offsets: np.ndarray  # (C,) sum_d bit_d * res**d in the index dtype (dense levels)


@dataclass(frozen=True)
class _Plan:
    udtype: np.dtype  # uint32, or uint64 for wide layouts
    primes: np.ndarray  # (D,) in udtype
    scales64: np.ndarray  # (L, 1, 1) float64 copies of the float32 scales
    max_scale: float
    levels: tuple[_LevelPlan, ...]


_PLANS: "weakref.WeakKeyDictionary[FieldLayout, _Plan]" = weakref.WeakKeyDictionary()


def _plan(layout: FieldLayout) -> _Plan:
    plan = _PLANS.get(layout)
    if plan is not None:
        return plan
    dims = layout.dims
    udtype = np.dtype(np.uint64 if layout.wide else np.uint32)
    mask = _MASK64 if layout.wide else _MASK32
    bits = (np.arange(1 << dims)[:, None] >> np.arange(dims)[None, :]) & 1  # (C, D)
    levels = []
    for lv in layout.levels:
        strides_int = [(lv.resolution**d) & mask for d in range(dims)]
        offsets_int = [sum(int(b) * s for b, s in zip(row, strides_int)) & mask for row in bits]
        levels.append(
            _LevelPlan(
                dense=lv.dense,
                n=lv.entries,
                offset=lv.offset,
                pow2=lv.entries & (lv.entries - 1) == 0,
                strides=np.array(strides_int, dtype=udtype),
                corner_offsets=np.array(offsets_int, dtype=udtype),
            )
        )
    plan = _Plan(
        udtype=udtype,
        primes=np.array(HASH_PRIMES[:dims], dtype=udtype),
        scales64=layout.level_scales.astype(np.float64).reshape(-1, 1, 1),
        max_scale=float(layout.level_scales.max()),
        levels=tuple(levels),
    )
    _PLANS[layout] = plan
    return plan


# ---------------------------------------------------------------------------
# Vectorised encoding.
# ---------------------------------------------------------------------------


def _check_points(layout: FieldLayout, points: np.ndarray) -> np.ndarray:
    pts = np.asarray(points, dtype=np.float32)
    if pts.ndim != 2 or pts.shape[1] != layout.dims:
        raise ValueError(f"points must have shape (N, {layout.dims}), got {pts.shape}")
    if not np.isfinite(pts).all():
        raise ValueError("points must be finite (no NaN or infinity)")
    return pts


def _fma_round_to_f32(p: np.ndarray, c: float) -> np.ndarray:
    """float32(p + c) correctly rounded, p being exact float64 products (1-D).

    Round-to-odd to float64 first, then round-to-nearest to float32: with 53 >= 24+2
    bits this double rounding is innocuous, which plain float64 rounding is not.
    """
    s = p + c
    bb = s - p
    err = (p - (s - bb)) + (c - bb)  # TwoSum: s + err == p + c exactly
    adjust = (err != 0) & ((s.view(np.int64) & 1) == 0)
    if adjust.any():
        s[adjust] = np.nextafter(s[adjust], np.where(err[adjust] > 0, np.inf, -np.inf))
    return s.astype(np.float32)


def _floor_to_uint(fl: np.ndarray, udtype: np.dtype) -> np.ndarray:
    """floor values (float, any magnitude or sign) to unsigned ints modulo 2**bits, exactly."""
    r = np.fmod(fl.astype(np.float64), 2.0**64)  # exact, in (-2**64, 2**64)
    r[r >= 2.0**63] -= 2.0**64  # exact (Sterbenz)
    r[r < -(2.0**63)] += 2.0**64
    return r.astype(np.int64).view(np.uint64).astype(udtype)


class _Work:
    """Per-call scratch buffers of one level's size, reused across levels to stay in cache."""

    def __init__(self, dims: int, n_points: int, udtype: np.dtype) -> None:
        self.s64 = np.empty((dims, n_points), dtype=np.float64)
        self.pos = np.empty((dims, n_points), dtype=np.float32)
        self.fl = np.empty((dims, n_points), dtype=np.float32)
        self.tmp = np.empty((dims, n_points), dtype=np.float32)
        self.cells = np.empty((dims, n_points), dtype=udtype)
        self.idx = np.empty((1 << dims, n_points), dtype=udtype)
        self.a = np.empty(n_points, dtype=udtype)
        self.b = np.empty(n_points, dtype=udtype)


def _level_positions(
    layout: FieldLayout, plan: _Plan, level: int, x64: np.ndarray, suspect: np.ndarray, fast_cells: bool, work: _Work
) -> None:
    """Fill work.cells (uint) and work.pos (interpolation fractions, float32) for one level.

    pos = float32(scale*x + 0.5) as one rounding: the product is exact in float64 and
    so is the sum, except for the coordinates in ``suspect`` (tiny or huge products),
    which are redone with an exact round-to-odd step.
    """
    scale = float(plan.scales64[level, 0, 0])
    np.multiply(x64, scale, out=work.s64)
    np.add(work.s64, 0.5, out=work.s64)
    pos = work.pos
    np.copyto(pos, work.s64, casting="same_kind")
    if suspect.size:
        pos.reshape(-1)[suspect] = _fma_round_to_f32(scale * x64.reshape(-1)[suspect], 0.5)
    np.floor(pos, out=work.fl)
    np.subtract(pos, work.fl, out=pos)  # the CUDA code's `pos -= floor(pos)`, in float32
    if fast_cells:
        np.copyto(work.cells, work.fl, casting="unsafe")  # small non-negative integers: exact
    else:
        work.cells[...] = _floor_to_uint(work.fl, plan.udtype)
    if layout.cfg.interpolation == "smoothstep":
        # frac*frac*(3 - 2*frac), evaluated left to right in float32 like the CUDA code.
        t = work.tmp
        np.multiply(pos, np.float32(2.0), out=t)
        np.subtract(np.float32(3.0), t, out=t)
        np.multiply(pos, pos, out=pos)
        np.multiply(pos, t, out=pos)


def _level_weights(frac: np.ndarray, one_minus: np.ndarray, w: np.ndarray) -> None:
    """w (C, N): corner c's weight is prod_d (frac_d if bit d of c else 1-frac_d), d ascending."""
    dims = frac.shape[0]
    np.subtract(np.float32(1.0), frac, out=one_minus)
    w[0] = one_minus[0]
    w[1] = frac[0]
    size = 2
    for d in range(1, dims):
        # corners with bit d set: the first `size` corners times frac_d; then those times 1-frac_d.
        np.multiply(w[:size], frac[d], out=w[size : 2 * size])
        np.multiply(w[:size], one_minus[d], out=w[:size])
        size *= 2


def _level_indices(plan: _Plan, lp: _LevelPlan, cells: np.ndarray, work: _Work, out: np.ndarray) -> None:
    """Write offset + index of every corner of one level into out (C, N) uint64."""
    dims = cells.shape[0]
    idx, a, b = work.idx, work.a, work.b
    if lp.dense:
        # linear index sum_d (cell_d + bit_d) * res**d == base + corner_offset (mod 2**bits)
        np.copyto(a, cells[0])
        for d in range(1, dims):
            np.multiply(cells[d], lp.strides[d], out=b)
            np.add(a, b, out=a)
        np.add(a[None, :], lp.corner_offsets[:, None], out=idx)
    else:
        # XOR_d (cell_d + bit_d) * P_d, with (cell+1)*P == cell*P + P (mod 2**bits)
        np.multiply(cells[0], plan.primes[0], out=a)
        idx[0] = a
        np.add(a, plan.primes[0], out=idx[1])
        size = 2
        for d in range(1, dims):
            np.multiply(cells[d], plan.primes[d], out=a)
            np.add(a, plan.primes[d], out=b)
            np.bitwise_xor(idx[:size], b, out=idx[size : 2 * size])
            np.bitwise_xor(idx[:size], a, out=idx[:size])
            size *= 2
    if lp.pow2:
        np.bitwise_and(idx, plan.udtype.type(lp.n - 1), out=idx)
    else:
        np.remainder(idx, plan.udtype.type(lp.n), out=idx)
    np.add(idx, np.uint64(lp.offset), out=out)


def corner_entries(layout: FieldLayout, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Global entry indices and interpolation weights of every corner of every level.

    points: (N, D) floats, nominally in [0, 1] (any finite value is encoded the way
    the CUDA code would, with wrapping cell coordinates). Returns ``entries``
    (uint64, shape (L, 2**D, N), ``offset_l + index``) and ``weights`` (float32, same
    shape), corner ``c`` taking ``cell_d + 1`` where bit d of c is set (SPEC 2.1).
    Raises ValueError for a wrong shape or non-finite coordinates.

    Works level by level with scratch buffers of one level's size, so that the
    dozen passes per level run in cache rather than over (L, D, N) arrays.
    """
    pts = _check_points(layout, points)
    plan = _plan(layout)
    n_points = pts.shape[0]
    n_corners = 1 << layout.dims
    entries = np.empty((layout.n_levels, n_corners, n_points), dtype=np.uint64)
    weights = np.empty((layout.n_levels, n_corners, n_points), dtype=np.float32)
    if n_points == 0:
        return entries, weights
    x64 = np.ascontiguousarray(pts.T, dtype=np.float64)  # (D, N)
    ax = np.abs(x64)
    max_abs = float(ax.max())
    min_scale = float(plan.scales64.min())
    # Coordinates whose product with some level's scale may leave [2**-6, 2**46), where
    # float64 `p + 0.5` can round; a slightly generous superset is harmless.
    tiny = ax * min_scale <= 2.0**-6 * 1.001
    if plan.max_scale * max_abs >= _FMA_BIG_LIMIT * 0.999:
        tiny |= ax * plan.max_scale >= _FMA_BIG_LIMIT * 0.999
    suspect = np.flatnonzero(tiny)
    limit = 2.0**62 if layout.wide else 2.0**31
    fast_cells = float(pts.min()) >= 0.0 and plan.max_scale * max_abs + 1.0 < limit
    work = _Work(layout.dims, n_points, plan.udtype)
    for level, lp in enumerate(plan.levels):
        _level_positions(layout, plan, level, x64, suspect, fast_cells, work)
        _level_weights(work.pos, work.tmp, weights[level])
        _level_indices(plan, lp, work.cells, work, entries[level])
    return entries, weights


# ---------------------------------------------------------------------------
# Small batches (1-64 points): all levels at once.
# ---------------------------------------------------------------------------

#: :func:`corner_entries_small` serves batches up to this many points (the level loop wins above)
_SMALL_PATH_POINTS = 256


@dataclass(frozen=True)
class _SmallConsts:
    """Per-level constants shaped to broadcast against (L, D[, N]) / (L, C[, N]) arrays."""

    scales64: np.ndarray  # (L, 1[, 1]) float64 copies of the float32 scales
    strides: np.ndarray  # (n_dense, D[, 1]) udtype: res**d (wrapped)
    corner_offsets: np.ndarray  # (n_dense, C[, 1]) udtype: sum_d bit_d * res**d (wrapped)
    dense_sizes: np.ndarray  # (n_dense, 1[, 1]) udtype: entries per dense level
    hashed_sizes: np.ndarray  # (L - n_dense, 1[, 1]) udtype: entries, or entries-1 as a mask
    offsets: np.ndarray  # (L, 1[, 1]) uint64


@dataclass(frozen=True)
class _OnePointConsts:
    """Constants of the single-point path, which works on (L, C, D) arrays."""

    scales64: np.ndarray  # (L, 1) float64
    pick: np.ndarray  # (C, D) intp: bit_d(c) * D + d, picks from a (L, 2D) [value at cell, at cell+1] array
    mult: np.ndarray  # (L, D) udtype: res**d on dense levels, P_d on hashed ones
    dense_sizes: np.ndarray  # (n_dense, 1) udtype
    hashed_sizes: np.ndarray  # (L - n_dense, 1) udtype: entries, or entries-1 as a mask
    offsets: np.ndarray  # (L, 1) uint64


@dataclass(frozen=True)
class _SmallPlan:
    udtype: np.dtype
    min_scale: float
    max_scale: float
    n_dense: int  # dense levels are levels[:n_dense] (resolution grows with the level)
    primes: tuple  # D udtype scalars
    hashed_pow2: bool  # every hashed level has 2**k entries: `&` instead of `%`
    smooth: bool
    cell_limit: float  # products below this floor to exact small non-negative integers
    one: _OnePointConsts  # for a single point
    many: _SmallConsts  # for 2.._SMALL_PATH_POINTS points


_SMALL_PLANS: "weakref.WeakKeyDictionary[FieldLayout, _SmallPlan | None]" = weakref.WeakKeyDictionary()


def _small_plan(layout: FieldLayout) -> "_SmallPlan | None":
    try:
        return _SMALL_PLANS[layout]
    except KeyError:
        pass
    plan = _plan(layout)
    levels = plan.levels
    dense = [lp.dense for lp in levels]
    n_dense = sum(dense)
    small: _SmallPlan | None = None
    if dense == [True] * n_dense + [False] * (len(dense) - n_dense):  # always so; else the level loop
        ud = plan.udtype
        hashed = levels[n_dense:]
        hashed_pow2 = all(lp.pow2 for lp in hashed)
        dims = layout.dims
        hashed_sizes = np.array([lp.n - 1 if hashed_pow2 else lp.n for lp in hashed], dtype=ud).reshape(-1, 1)
        dense_sizes = np.array([lp.n for lp in levels[:n_dense]], dtype=ud).reshape(-1, 1)
        offsets = np.array([lp.offset for lp in levels], dtype=np.uint64).reshape(-1, 1)
        bits = ((np.arange(1 << dims)[:, None] >> np.arange(dims)[None, :]) & 1).astype(bool)  # (C, D)
        one = _OnePointConsts(
            scales64=plan.scales64.reshape(-1, 1),
            pick=(bits * dims + np.arange(dims)[None, :]).astype(np.intp),
            mult=np.array([lp.strides if lp.dense else plan.primes for lp in levels], dtype=ud).reshape(-1, dims),
            dense_sizes=dense_sizes,
            hashed_sizes=hashed_sizes,
            offsets=offsets,
        )
        many = _SmallConsts(
            scales64=plan.scales64,
            strides=np.array([lp.strides for lp in levels[:n_dense]], dtype=ud).reshape(n_dense, dims, 1),
            corner_offsets=np.array([lp.corner_offsets for lp in levels[:n_dense]], dtype=ud).reshape(n_dense, 1 << dims, 1),
            dense_sizes=dense_sizes[..., None],
            hashed_sizes=hashed_sizes[..., None],
            offsets=offsets[..., None],
        )
        small = _SmallPlan(
            udtype=ud,
            min_scale=float(plan.scales64.min()),
            max_scale=plan.max_scale,
            n_dense=n_dense,
            primes=tuple(plan.primes),
            hashed_pow2=hashed_pow2,
            smooth=layout.cfg.interpolation == "smoothstep",
            cell_limit=2.0**62 if layout.wide else 2.0**31,
            one=one,
            many=many,
        )
    _SMALL_PLANS[layout] = small
    return small


def _positions(plan: "_SmallPlan", x64: np.ndarray, scales64: np.ndarray, min_abs: float, max_abs: float,
               min_x: float) -> tuple[np.ndarray, np.ndarray]:
    """(cells, fracs) of every level at once, shape (L,) + x64.shape; the arithmetic of _level_positions."""
    p = scales64 * x64  # exact float32 x float32 products
    if min_abs * plan.min_scale > 2.0**-6 * 1.001 and max_abs * plan.max_scale < _FMA_BIG_LIMIT * 0.999:
        p += 0.5  # exact in float64: the cast below is the only rounding
        pos = p.astype(np.float32)
    else:
        pos = _fma_round_to_f32(p.reshape(-1), 0.5).reshape(p.shape)
    fl = np.floor(pos)
    if min_x >= 0.0 and plan.max_scale * max_abs + 1.0 < plan.cell_limit:
        cells = fl.astype(plan.udtype)  # small non-negative integers: exact
    else:
        cells = _floor_to_uint(fl, plan.udtype)
    frac = pos - fl  # the CUDA code's `pos -= floor(pos)`, in float32
    if plan.smooth:
        # frac*frac*(3 - 2*frac), evaluated left to right in float32 like the CUDA code.
        frac = (frac * frac) * (np.float32(3.0) - frac * np.float32(2.0))
    return cells, frac


def corner_entries_small(layout: FieldLayout, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`corner_entries` for small batches, every level at once: bit-for-bit the same result.

    The level loop of :func:`corner_entries` costs a dozen numpy calls per level
    (~0.4 ms for one point of the default field); here each step is one call over
    all levels, with the per-layout constants built once: (L, C, D) arrays for a
    single point, (L, D, N) / (L, C, N) ones with a few calls per dimension for more.
    The arithmetic is the same: ``pos`` is ``float32(scale*x + 0.5)`` rounded once
    (exact float64 product and sum, or the round-to-odd step when some product is
    tiny or huge), weights are products over d ascending in float32, indices wrap in
    uint32 (uint64 for wide tables). Batches of more than ``_SMALL_PATH_POINTS``
    points go to :func:`corner_entries`, which is faster there.
    """
    plan = _small_plan(layout)
    pts = np.asarray(points, dtype=np.float32)
    if plan is not None and pts.shape == (1, layout.dims):
        xs = pts[0].tolist()  # the float32 values, exactly, as Python floats
        if not all(map(math.isfinite, xs)):
            raise ValueError("points must be finite (no NaN or infinity)")
        return _corners_one(layout, plan, xs)
    pts = _check_points(layout, pts)
    n_points = pts.shape[0]
    if plan is None or n_points == 0 or n_points > _SMALL_PATH_POINTS:
        return corner_entries(layout, pts)
    n_levels, dims = layout.n_levels, layout.dims
    n_corners = 1 << dims
    ud = plan.udtype
    k = plan.many
    x64 = pts.T.astype(np.float64)  # (D, N)
    ax = np.abs(x64)
    cells, frac = _positions(plan, x64, k.scales64, float(np.minimum.reduce(ax, axis=None)),
                             float(np.maximum.reduce(ax, axis=None)), float(np.minimum.reduce(x64, axis=None)))  # (L, D, N)
    # -- weights (L, C, N): corner c's weight is prod_d (frac_d if bit d of c else 1-frac_d), d ascending
    one_minus = np.float32(1.0) - frac
    weights = np.empty((n_levels, n_corners, n_points), dtype=np.float32)
    weights[:, 0] = one_minus[:, 0]
    weights[:, 1] = frac[:, 0]
    size = 2
    for d in range(1, dims):
        np.multiply(weights[:, :size], frac[:, d, None], out=weights[:, size:2 * size])
        np.multiply(weights[:, :size], one_minus[:, d, None], out=weights[:, :size])
        size *= 2
    # -- indices (L, C, N)
    idx = np.empty((n_levels, n_corners, n_points), dtype=ud)
    nd = plan.n_dense
    if nd:
        # linear index sum_d (cell_d + bit_d) * res**d == base + corner_offset (mod 2**bits)
        base = np.add.reduce(np.multiply(cells[:nd], k.strides), axis=1, dtype=ud)  # (nd, N)
        np.add(base[:, None], k.corner_offsets, out=idx[:nd])
        np.remainder(idx[:nd], k.dense_sizes, out=idx[:nd])
    if nd < n_levels:
        # XOR_d (cell_d + bit_d) * P_d, with (cell+1)*P == cell*P + P (mod 2**bits)
        hashed = idx[nd:]
        primes = plan.primes
        a = np.multiply(cells[nd:, 0], primes[0])
        hashed[:, 0] = a
        np.add(a, primes[0], out=hashed[:, 1])
        size = 2
        for d in range(1, dims):
            a = np.multiply(cells[nd:, d], primes[d])
            b = np.add(a, primes[d])
            np.bitwise_xor(hashed[:, :size], b[:, None], out=hashed[:, size:2 * size])
            np.bitwise_xor(hashed[:, :size], a[:, None], out=hashed[:, :size])
            size *= 2
        if plan.hashed_pow2:
            np.bitwise_and(hashed, k.hashed_sizes, out=hashed)
        else:
            np.remainder(hashed, k.hashed_sizes, out=hashed)
    entries = idx.astype(np.uint64)
    entries += k.offsets
    return entries, weights


def _corners_one(layout: FieldLayout, plan: "_SmallPlan", xs: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """One point (its finite float32 coordinates as Python floats): every (level, corner, dimension)
    term in one (L, C, D) array, then reductions over D."""
    k = plan.one
    n_levels, dims = layout.n_levels, layout.dims
    ud = plan.udtype
    mags = [abs(v) for v in xs]
    cells, frac = _positions(plan, np.array(xs), k.scales64, min(mags), max(mags), min(xs))  # (L, D)
    # (L, C, D) terms picked from [value at cell_d | value at cell_d + 1] (L, 2D) tables
    sel = np.concatenate((np.float32(1.0) - frac, frac), axis=1).take(k.pick, axis=1)  # 1-frac_d or frac_d
    weights = sel[:, :, 0].copy()
    for d in range(1, dims):
        weights *= sel[:, :, d]  # d ascending, one float32 rounding each, as the doubling does
    lo = cells * k.mult  # cell_d * m_d, wrapping
    terms = np.concatenate((lo, lo + k.mult), axis=1).take(k.pick, axis=1)  # (cell_d + bit_d) * m_d, wrapping
    idx = np.empty((n_levels, 1 << dims), dtype=ud)
    nd = plan.n_dense
    if nd:
        np.add.reduce(terms[:nd], axis=2, out=idx[:nd])  # wrapping: any order gives the same sum
        np.remainder(idx[:nd], k.dense_sizes, out=idx[:nd])
    if nd < n_levels:
        np.bitwise_xor.reduce(terms[nd:], axis=2, out=idx[nd:])
        if plan.hashed_pow2:
            np.bitwise_and(idx[nd:], k.hashed_sizes, out=idx[nd:])
        else:
            np.remainder(idx[nd:], k.hashed_sizes, out=idx[nd:])
    entries = np.add(idx, k.offsets, dtype=np.uint64)
    return entries.reshape(n_levels, -1, 1), weights.reshape(n_levels, -1, 1)


def interpolate(layout: FieldLayout, weights: np.ndarray, values: np.ndarray) -> np.ndarray:
    """(N, L*F) float32 encoding from corner weights (L, C, N) and gathered rows (L, C, N, F).

    ``out[n, l*F+f] = sum_c weights[l, c, n] * values[l, c, n, f]``, corners summed
    in order like the CUDA kernel's running sum. ``values`` is only read.

    Speed: an F-wide row is split into "lanes" the multiply can stream over; pairs of
    float32 features are viewed as one complex64 (a complex times a real weight is
    exactly the two real products), so for the default F=2 each corner is a single
    contiguous multiply-add over N items. Work happens one level at a time with
    N-sized accumulators so the temporaries stay in cache.
    """
    n_levels, n_corners, n_points = weights.shape
    feats = layout.features
    if values.shape != (n_levels, n_corners, n_points, feats):
        raise ValueError(f"gathered values have shape {values.shape}, expected {(n_levels, n_corners, n_points, feats)}")
    vals = np.ascontiguousarray(values, dtype=np.float32)
    w = np.ascontiguousarray(weights, dtype=np.float32)
    if n_points < _SMALL_BATCH:
        # Few points (concept reads, at/): one einsum beats L * lanes * C tiny calls.
        small = np.einsum("lcn,lcnf->nlf", w, vals)
        return np.ascontiguousarray(small, dtype=np.float32).reshape(n_points, n_levels * feats)
    out = np.empty((n_points, n_levels, feats), dtype=np.float32)
    if feats % 2 == 0:
        lane_vals = vals.view(np.complex64)  # (L, C, N, F/2)
        lane_out = out.view(np.complex64)  # (N, L, F/2)
    else:
        lane_vals, lane_out = vals, out
    n_lanes = lane_vals.shape[-1]
    acc = np.empty(n_points, dtype=lane_vals.dtype)
    tmp = np.empty(n_points, dtype=lane_vals.dtype)
    for level in range(n_levels):
        wl = w[level]
        for lane in range(n_lanes):
            vl = lane_vals[level, :, :, lane]  # (C, N)
            np.multiply(vl[0], wl[0], out=acc)
            for c in range(1, n_corners):
                np.multiply(vl[c], wl[c], out=tmp)
                np.add(acc, tmp, out=acc)
            lane_out[:, level, lane] = acc
    return out.reshape(n_points, n_levels * feats)


def encode(
    layout: FieldLayout,
    points: np.ndarray,
    gather: Gather,
    corners: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """Encode (N, D) points to (N, L*F) float32, level-major: ``out[:, l*F+f]``.

    ``gather`` is called once, with the (L, 2**D, N) uint64 entry array (see the
    module docstring for its contract). Pass ``corners`` (the result of
    :func:`corner_entries` for the same points) to skip recomputing them, e.g.
    after the caller has used the entries to fetch pages asynchronously.
    Memory: about ``L * 2**D * N * (12 + 4F)`` bytes at the peak; callers serving
    huge batches should encode them in chunks of ~64 Ki points.
    """
    entries, weights = corner_entries(layout, points) if corners is None else corners
    values = gather(entries)
    return interpolate(layout, weights, np.asarray(values))


def array_gather(params: np.ndarray, features: int) -> Gather:
    """A row gather over an in-memory flat parameter array (any float dtype; float32 out).

    Rows of 4 or 8 bytes are taken as single uint32/uint64 items, which is
    numpy's fastest gather.
    """
    flat = np.ascontiguousarray(params).reshape(-1)
    row_bytes = features * flat.dtype.itemsize
    word = {4: np.uint32, 8: np.uint64}.get(row_bytes)
    as_words = flat.view(word) if word is not None and flat.size % features == 0 else None
    as_rows = flat.reshape(-1, features)

    def gather(entries: np.ndarray) -> np.ndarray:
        idx = entries.view(np.int64) if entries.dtype == np.uint64 else entries.astype(np.int64)
        if as_words is not None:
            rows = np.take(as_words, idx).view(flat.dtype).reshape(entries.shape + (features,))
        else:
            rows = np.take(as_rows, idx, axis=0)
        return rows if rows.dtype == np.float32 else rows.astype(np.float32)

    return gather


def entry_elements(layout: FieldLayout, entries: np.ndarray) -> np.ndarray:
    """Flat element indices (entries.shape + (F,), uint64) of the rows in ``entries``: entry*F + f."""
    feats = layout.features
    return entries[..., None] * np.uint64(feats) + np.arange(feats, dtype=np.uint64)


def touched_pages(layout: FieldLayout, entries: np.ndarray) -> np.ndarray:
    """Sorted unique page numbers (uint64) holding any byte of the rows in ``entries``.

    A row may straddle two pages when ``F * itemsize`` does not divide the page
    size, so both the first and the last byte of every row are counted.
    """
    row = layout.features * layout.itemsize
    shift = layout.page_size.bit_length() - 1
    flat = entries.reshape(-1)
    first = (flat * np.uint64(row)) >> np.uint64(shift)
    if layout.page_size % row:
        last = (flat * np.uint64(row) + np.uint64(row - 1)) >> np.uint64(shift)
        first = np.concatenate([first, last])
    if layout.n_pages <= (1 << 26):
        seen = np.zeros(layout.n_pages, dtype=bool)
        seen[first.view(np.int64)] = True
        return np.flatnonzero(seen).astype(np.uint64)
    return sorted_unique(first)


# ---------------------------------------------------------------------------
# Scalar oracle, straight from tiny-cuda-nn's kernel_grid / grid_index / pos_fract.
# ---------------------------------------------------------------------------


def _fmaf(a: np.float32, b: np.float32, c: np.float32) -> np.float32:
    """fmaf: a*b+c rounded once to float32 (nearest, ties to even), via exact rationals."""
    exact = Fraction(float(a)) * Fraction(float(b)) + Fraction(float(c))
    guess = np.float32(float(exact))
    best: np.float32 | None = None
    best_key: tuple[Fraction, int] | None = None
    for cand in (np.nextafter(guess, np.float32(-np.inf)), guess, np.nextafter(guess, np.float32(np.inf))):
        if not np.isfinite(cand):
            continue
        key = (abs(Fraction(float(cand)) - exact), int(np.array(cand).view(np.uint32)) & 1)
        if best_key is None or key < best_key:
            best, best_key = cand, key
    assert best is not None
    return np.float32(best)


def _grid_index(wide: bool, hashmap_size: int, resolution: int, pos_grid: list[int], tcnn_stride_overflow: bool) -> int:
    mask = _MASK64 if wide else _MASK32
    stride = 1
    index = 0
    for dim in range(len(pos_grid)):
        if not stride <= hashmap_size:
            break
        index = (index + pos_grid[dim] * stride) & mask
        stride = stride * resolution
        if tcnn_stride_overflow:
            stride &= mask
    if hashmap_size < stride:
        result = 0
        for dim, coord in enumerate(pos_grid):
            result ^= (coord * HASH_PRIMES[dim]) & mask
        index = result
    return index % hashmap_size


def encode_reference(
    layout: FieldLayout,
    point: "np.ndarray | list[float]",
    read_value: Callable[[int], float],
    tcnn_stride_overflow: bool = False,
) -> list[float]:
    """One point, one corner, one feature at a time: the test oracle for :func:`encode`.

    ``read_value(element)`` returns parameter element ``element`` (SPEC 2.2).
    Float math is np.float32 scalars, integer math Python ints masked to 32 (or,
    for wide tables, 64) bits. ``tcnn_stride_overflow=True`` reproduces the CUDA
    uint32 stride wrap described in the module docstring (non-SPEC).
    """
    dims = layout.dims
    feats = layout.features
    mask = _MASK64 if layout.wide else _MASK32
    x = [np.float32(v) for v in np.asarray(point, dtype=np.float32).reshape(-1)]
    if len(x) != dims:
        raise ValueError(f"point must have {dims} coordinates")
    smooth = layout.cfg.interpolation == "smoothstep"
    out: list[float] = []
    for lv in layout.levels:
        scale = np.float32(lv.scale)
        pos: list[np.float32] = []
        pos_grid: list[int] = []
        for dim in range(dims):
            p = _fmaf(scale, x[dim], np.float32(0.5))
            tmp = np.floor(p)
            pos_grid.append(int(tmp) & mask)
            p = np.float32(p - tmp)
            if smooth:
                p = np.float32(p * p * (np.float32(3.0) - np.float32(2.0) * p))
            pos.append(p)
        result = [np.float32(0.0)] * feats
        for idx in range(1 << dims):
            weight = np.float32(1.0)
            local = []
            for dim in range(dims):
                if (idx & (1 << dim)) == 0:
                    weight = np.float32(weight * (np.float32(1.0) - pos[dim]))
                    local.append(pos_grid[dim])
                else:
                    weight = np.float32(weight * pos[dim])
                    local.append((pos_grid[dim] + 1) & mask)
            index = _grid_index(layout.wide, lv.entries, lv.resolution, local, tcnn_stride_overflow)
            for f in range(feats):
                value = np.float32(read_value((lv.offset + index) * feats + f))
                result[f] = np.float32(float(weight) * float(value) + float(result[f]))
        out.extend(float(r) for r in result)
    return out


# ---------------------------------------------------------------------------
# Concepts (SPEC 2.4).
# ---------------------------------------------------------------------------


def concept_update(
    layout: FieldLayout,
    point: np.ndarray,
    current_enc: np.ndarray,
    target: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Element deltas that move the encoding at ``point`` from ``current_enc`` to ``target``.

    Per level l and corner c: ``e_c += w_c * (v_l - enc_l) / sum_c w_c**2`` (SPEC 2.4).
    When several corners of one level share an entry (a hash collision), the
    corners are merged first: the entry's weight is the sum of theirs, and the
    update is ``W_e * delta / sum_e W_e**2``. Without duplicates that is exactly
    the SPEC formula; with them it still makes the point read back ``target``,
    which summing the per-corner increments would not.

    Returns ``(elements, deltas)``: sorted unique uint64 element indices and the
    float32 amounts to add to them. Levels whose target equals their current value
    and corners of weight 0 produce no elements, so no page is touched needlessly.
    Deltas are computed in float64; adding them to float16 parameters rounds.
    """
    feats = layout.features
    pt = np.asarray(point, dtype=np.float32).reshape(1, -1)
    cur = np.asarray(current_enc, dtype=np.float64).reshape(-1)
    tgt = np.asarray(target, dtype=np.float64).reshape(-1)
    width = layout.encoding_width
    if cur.size != width or tgt.size != width:
        raise ValueError(f"current_enc and target must have {width} values")
    if not (np.isfinite(cur).all() and np.isfinite(tgt).all()):
        raise ValueError("current_enc and target must be finite")
    entries, weights = corner_entries_small(layout, pt)  # bit-identical to corner_entries, ~15x faster for one point
    elems: list[np.ndarray] = []
    deltas: list[np.ndarray] = []
    for level in range(layout.n_levels):
        delta = tgt[level * feats : (level + 1) * feats] - cur[level * feats : (level + 1) * feats]
        if not delta.any():
            continue
        uniq, inverse = np.unique(entries[level, :, 0], return_inverse=True)
        merged = np.bincount(inverse, weights=weights[level, :, 0].astype(np.float64), minlength=uniq.size)
        keep = merged != 0
        uniq, merged = uniq[keep], merged[keep]
        norm = float(np.dot(merged, merged))
        step = (merged / norm)[:, None] * delta[None, :]  # (k, F)
        elems.append((uniq[:, None] * np.uint64(feats) + np.arange(feats, dtype=np.uint64)).reshape(-1))
        deltas.append(step.reshape(-1))
    if not elems:
        return np.empty(0, dtype=np.uint64), np.empty(0, dtype=np.float32)
    all_elems = np.concatenate(elems)
    all_deltas = np.concatenate(deltas).astype(np.float32)
    nonzero = all_deltas != 0
    all_elems, all_deltas = all_elems[nonzero], all_deltas[nonzero]
    order = np.argsort(all_elems, kind="stable")  # levels are disjoint: elements are already unique
    return all_elems[order], all_deltas[order]


# ---------------------------------------------------------------------------
# Points from names and text.
# ---------------------------------------------------------------------------


def point_from_name(name: bytes | str, dims: int) -> np.ndarray:
    """A concept's default point: ``x_d = (xxh3_64(name, seed=d) >> 40) / 2**24``, in [0, 1).

    ``str`` names are encoded like file names (``os.fsencode`` rules: UTF-8 with
    surrogateescape) so a name means the same point however it arrives.
    """
    raw = name.encode("utf-8", "surrogateescape") if isinstance(name, str) else bytes(name)
    return np.array(
        [(xxhash.xxh3_64_intdigest(raw, seed=d) >> 40) / 2.0**24 for d in range(dims)], dtype=np.float32
    )


_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
#: one comma (with optional spaces around it) or a run of spaces: "0.1,,0.2" has an empty field.
_SEPARATORS = re.compile(r"\s*,\s*|\s+")


def parse_point(text: str | bytes, dims: int) -> np.ndarray:
    """Parse ``dims`` decimal numbers in [0, 1] separated by spaces and/or commas.

    Only plain decimal notation is accepted (no nan, inf, hex or underscores), so
    anything odd is reported instead of being guessed at. Raises ValueError.
    """
    if isinstance(text, (bytes, bytearray, memoryview)):
        try:
            text = bytes(text).decode("ascii")
        except UnicodeDecodeError:
            raise ValueError("point must be ASCII text") from None
    stripped = text.strip()
    if not stripped:
        raise ValueError(f"point needs {dims} numbers, got none")
    tokens = _SEPARATORS.split(stripped)
    if len(tokens) != dims:
        raise ValueError(f"point needs {dims} numbers, got {len(tokens)}: {text!r}")
    values = []
    for token in tokens:
        if not token:
            raise ValueError(f"empty coordinate in {text!r}")
        if not _NUMBER.fullmatch(token):
            raise ValueError(f"not a decimal number: {token!r}")
        value = float(token)
        if not math.isfinite(value) or not 0.0 <= value <= 1.0:
            raise ValueError(f"coordinate {token} is outside [0, 1]")
        values.append(value)
    return np.array(values, dtype=np.float32)
