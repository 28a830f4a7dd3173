"""Latency histograms for `stats` / `metrics`: fixed log-spaced buckets, O(1) per observation.

The shape is the per-bucket form `nffs.ui.view.parse_histogram` reads (docs/operations.md,
"Statistics keys the status tools read"): ``{"le": [bounds in s], "counts": [one per bound,
then one for +Inf], "sum": seconds, "count": n}``. Observations are integer nanoseconds
(`time.perf_counter_ns()` differences) so that the hot path does no float arithmetic.
"""
from __future__ import annotations

from bisect import bisect_left
from typing import Any

#: upper bounds in seconds: 1-2-5 steps per decade from 1 µs to 10 s (log-spaced, readable labels)
BOUNDS_S: tuple[float, ...] = tuple(m * 10.0**e for e in range(-6, 1) for m in (1, 2, 5)) + (10.0,)
_BOUNDS_NS: tuple[int, ...] = tuple(round(b * 1e9) for b in BOUNDS_S)


#: reads of params / levels served from memory are timed one in this many: such a read
#: costs the daemon a few microseconds of Python, and two clock reads plus an update of
#: the histogram per read were about 6 % of the rate of cold 4 KiB reads from memory.
#: Each timed one is counted for the untimed ones before it (a sampled histogram: exact
#: count, sampled latencies). Reads that go further than memory are all timed.
MEMORY_READ_SAMPLE = 32


class LatencyHistogram:
    """Counts per bucket (an observation lands in the first bucket whose bound is >= it), sum, count.

    For a sampled hot path: `untimed` counts events not timed (the caller increments it);
    the next `observe_sample(ns)` counts them with its sample, and `as_dict` counts any
    left with the last sample. It starts at `MEMORY_READ_SAMPLE`, so the first event is
    timed."""

    __slots__ = ("counts", "sum_ns", "count", "untimed", "last_ns")

    def __init__(self) -> None:
        self.counts = [0] * (len(_BOUNDS_NS) + 1)  # the last one is +Inf
        self.sum_ns = 0
        self.count = 0
        self.untimed = MEMORY_READ_SAMPLE
        self.last_ns = -1  # the last sample; < 0: none yet

    def observe(self, ns: int) -> None:
        self.counts[bisect_left(_BOUNDS_NS, ns)] += 1
        self.sum_ns += ns
        self.count += 1

    def observe_sample(self, ns: int) -> None:
        """A timed event of the sampled path, standing for itself and the untimed ones before it."""
        n = 1 if self.last_ns < 0 else self.untimed + 1
        self.untimed = 0
        self.last_ns = ns
        self.counts[bisect_left(_BOUNDS_NS, ns)] += n
        self.sum_ns += ns * n
        self.count += n

    def as_dict(self) -> dict[str, Any]:
        if self.last_ns >= 0 and self.untimed:
            n, self.untimed = self.untimed, 0
            self.counts[bisect_left(_BOUNDS_NS, self.last_ns)] += n
            self.sum_ns += self.last_ns * n
            self.count += n
        return {"le": list(BOUNDS_S), "counts": list(self.counts), "sum": self.sum_ns / 1e9, "count": self.count}


class QueryStats:
    """What `stats` reports under `queries`: requests answered or refused, points answered, latency."""

    __slots__ = ("requests", "points", "errors", "latency")

    def __init__(self) -> None:
        self.requests = 0
        self.points = 0
        self.errors = 0
        self.latency = LatencyHistogram()

    def answered(self, points: int, ns: int) -> None:
        self.requests += 1
        self.points += points
        self.latency.observe(ns)

    def failed(self) -> None:
        self.requests += 1
        self.errors += 1

    def as_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "points": self.points, "errors": self.errors,
                "latency_seconds": self.latency.as_dict()}
