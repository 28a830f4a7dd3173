#!/usr/bin/env python3
"""Micro-benchmark of the vectorised hash-grid encoder, in process (no FUSE).

Compares, for one batch of random points and an in-memory parameter array:
  * encode = corner_entries + row gather + interpolation (what `query` does per batch),
  * numpy's own gather `np.take(params, elements)` of the same corner elements
    (the SPEC 8 "inference" baseline: ratio encode/take should stay <= 2),
  * scalar per-point Python loops on a small sample, scaled up (SPEC 8
    "vectorisation": the vectorised path should be >= 20x faster): a plain
    float/int loop as anyone would write it, and the exact oracle
    `encode_reference` (much slower: it rounds through fractions).

Usage: python scripts/bench_encode.py [--points 65536] [--repeat 5] [--scalar-sample 64]
"""
from __future__ import annotations

import argparse
import math
import time

import numpy as np

from nffs.encoding.hashgrid import array_gather, corner_entries, encode, encode_reference, entry_elements
from nffs.encoding.layout import HASH_PRIMES, FieldConfig, FieldLayout


def best_of(repeat: int, fn) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def plain_scalar_encode(layout: FieldLayout, point: np.ndarray, params: np.ndarray) -> list[float]:
    """The obvious per-point loop (Python floats and ints), as a fair scalar baseline.

    It does its float math in float64, so at fine levels (where float32 positions
    are coarse) its values differ from tiny-cuda-nn's; it is only timed.
    """
    dims, feats = layout.dims, layout.features
    mask = (1 << 64) - 1 if layout.wide else (1 << 32) - 1
    xs = [float(v) for v in point]
    out: list[float] = []
    for lv in layout.levels:
        frac, cell = [], []
        for x in xs:
            p = lv.scale * x + 0.5
            g = math.floor(p)
            cell.append(g)
            frac.append(p - g)
        acc = [0.0] * feats
        for c in range(1 << dims):
            w = 1.0
            index = 0
            stride = 1
            for d in range(dims):
                bit = (c >> d) & 1
                w *= frac[d] if bit else 1.0 - frac[d]
                coord = cell[d] + bit
                if lv.dense:
                    index += coord * stride
                    stride *= lv.resolution
                else:
                    index ^= (coord * HASH_PRIMES[d]) & mask
            base = (lv.offset + (index & mask) % lv.entries) * feats
            for f in range(feats):
                acc[f] += w * float(params[base + f])
        out.extend(acc)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, default=65536)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--scalar-sample", type=int, default=64)
    parser.add_argument("--log2-table-size", type=int, default=19)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    layout = FieldLayout(FieldConfig(log2_table_size=args.log2_table_size))
    rng = np.random.default_rng(args.seed)
    params = rng.uniform(-1, 1, layout.n_params).astype(np.float32)
    points = rng.random((args.points, layout.dims), dtype=np.float32)
    gather = array_gather(params, layout.features)

    entries, weights = corner_entries(layout, points)
    elements = entry_elements(layout, entries).reshape(-1)  # uint64, as a page store would see them
    n = args.points
    print(f"layout: D={layout.dims} L={layout.n_levels} F={layout.features} T=2^{layout.cfg.log2_table_size} "
          f"params={layout.n_params:,} ({layout.params_bytes / 2**20:.0f} MiB); batch {n:,} points, "
          f"{elements.size:,} elements")

    t_corners = best_of(args.repeat, lambda: corner_entries(layout, points))
    t_encode = best_of(args.repeat, lambda: encode(layout, points, gather))
    t_take = best_of(args.repeat, lambda: np.take(params, elements))
    t_take_i64 = best_of(args.repeat, lambda: np.take(params, elements.view(np.int64)))

    sample = points[: args.scalar_sample]
    start = time.perf_counter()
    for p in sample:
        plain_scalar_encode(layout, p, params)
    t_plain = (time.perf_counter() - start) / len(sample) * n
    oracle_sample = sample[: max(1, len(sample) // 16)]
    start = time.perf_counter()
    oracle = [encode_reference(layout, p, params.item) for p in oracle_sample]
    t_scalar = (time.perf_counter() - start) / len(oracle_sample) * n
    error = float(np.abs(encode(layout, oracle_sample, gather) - np.array(oracle)).max())

    def row(name: str, seconds: float) -> None:
        print(f"  {name:<44} {seconds * 1e3:10.1f} ms  {n / seconds:14,.0f} points/s")

    row("corner_entries only", t_corners)
    row("encode (corner_entries + gather + interp)", t_encode)
    row("np.take(params, elements) uint64 indices", t_take)
    row("np.take(params, elements) int64 indices", t_take_i64)
    row(f"plain scalar loop (x{len(sample)}, scaled)", t_plain)
    row(f"scalar encode_reference (x{len(oracle_sample)}, scaled)", t_scalar)
    print(f"  encode / take(uint64)  = {t_encode / t_take:.2f}x time   (target <= 2)")
    print(f"  encode / take(int64)   = {t_encode / t_take_i64:.2f}x time")
    print(f"  plain scalar / encode  = {t_plain / t_encode:,.0f}x speed-up (target >= 20)")
    print(f"  oracle / encode        = {t_scalar / t_encode:,.0f}x speed-up")
    print(f"  max |encode - encode_reference| on the oracle sample = {error:.2e}")


if __name__ == "__main__":
    main()
