#!/usr/bin/env python3
"""Replay a block-I/O trace as reads of a mounted field's ``params`` file.

Traces are CSV (optionally gzipped) with the columns ``version,time,op,size,lbn`` of
/work/shared/traces (see its README): ``lbn`` in 512-byte blocks, ``size`` in bytes,
``op`` ``28`` for reads (SCSI READ(10)) and ``2a`` for writes. Each read maps to
``offset = (lbn * 512) % params_size`` and reads ``size`` bytes there (clipped at the end
of params). Writes are skipped: the replay measures read latency only.

    python scripts/replay_trace.py MOUNTPOINT [--trace FILE] [--limit N] [--think-us US]

prints a JSON summary: reads, bytes, p50/p99/max latency (ms), slow reads (> 1 ms).
The benchmark (scripts/bench_prefetch.py) imports :func:`load_reads` and :func:`replay`.
"""
from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import os
import sys
import time

import numpy as np

DEFAULT_TRACE = "/work/shared/traces/cloudphysics-w106.csv.gz"
READ_OPS = {"28", "88", "r", "R", "read"}


def load_reads(path: str, params_size: int, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, sizes) int64 arrays of the trace's reads, mapped into ``params``."""
    opener = gzip.open if path.endswith(".gz") else open
    offsets: list[int] = []
    sizes: list[int] = []
    with opener(path, "rb") as raw:
        for row in csv.DictReader(io.TextIOWrapper(raw, encoding="ascii")):
            if row["op"].strip() not in READ_OPS:
                continue
            size = int(row["size"])
            if size <= 0:
                continue
            offset = (int(row["lbn"]) * 512) % params_size
            offsets.append(offset)
            sizes.append(min(size, params_size - offset))
            if limit is not None and len(offsets) >= limit:
                break
    return np.asarray(offsets, dtype=np.int64), np.asarray(sizes, dtype=np.int64)


def replay(fd: int, offsets: np.ndarray, sizes: np.ndarray, think_s: float = 0.0) -> np.ndarray:
    """pread each (offset, size) in order with ``think_s`` of "work" after each; latencies (s)."""
    lat = np.empty(len(offsets), dtype=np.float64)
    for i, (off, size) in enumerate(zip(offsets.tolist(), sizes.tolist())):
        t0 = time.perf_counter()
        os.pread(fd, size, off)
        lat[i] = time.perf_counter() - t0
        if think_s:
            time.sleep(think_s)
    return lat


def summary(lat_s: np.ndarray, sizes: np.ndarray | None = None) -> dict:
    ms = lat_s * 1e3
    out = {
        "reads": int(ms.size),
        "p50_ms": round(float(np.percentile(ms, 50)), 4) if ms.size else None,
        "p99_ms": round(float(np.percentile(ms, 99)), 4) if ms.size else None,
        "max_ms": round(float(ms.max()), 3) if ms.size else None,
        "mean_ms": round(float(ms.mean()), 4) if ms.size else None,
        "slow_reads_over_1ms": int((ms > 1.0).sum()),
    }
    if sizes is not None:
        out["bytes"] = int(sizes.sum())
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("mountpoint")
    ap.add_argument("--trace", default=DEFAULT_TRACE)
    ap.add_argument("--limit", type=int, default=None, help="replay only the first N reads")
    ap.add_argument("--think-us", type=float, default=0.0, help="think time after each read (default: back to back)")
    args = ap.parse_args(argv)
    path = os.path.join(args.mountpoint, "params")
    fd = os.open(path, os.O_RDONLY)
    try:
        offsets, sizes = load_reads(args.trace, os.fstat(fd).st_size, args.limit)
        lat = replay(fd, offsets, sizes, args.think_us * 1e-6)
    finally:
        os.close(fd)
    print(json.dumps(summary(lat, sizes)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
