"""Array helpers shared by the encoding and the storage core."""
from __future__ import annotations

import numpy as np


def sorted_unique(a: np.ndarray) -> np.ndarray:
    """The distinct values of `a`, ascending: np.unique by a sort and a neighbour test.
    numpy 2.x's np.unique hashes, several times slower on the thousands to millions of
    integers a gather, a page scan or a mount looks at."""
    out = np.sort(a.reshape(-1))
    if out.size > 1:
        keep = np.empty(out.size, dtype=bool)
        keep[0] = True
        np.not_equal(out[1:], out[:-1], out=keep[1:])
        out = out[keep]
    return out


#: 2^64 / golden ratio: multiplying by it spreads consecutive keys over a table (Fibonacci
#: hashing); the top bits of the 64-bit product are the slot
FIBONACCI_MULTIPLIER = 0x9E3779B97F4A7C15
_MASK64 = (1 << 64) - 1


def consecutive_runs(values: "list[int]", max_len: int = 0, block: int = 0) -> "list[tuple[int, int]]":
    """(start, end) index ranges of the runs of consecutive integers in ascending `values`:
    each run at most `max_len` long (0: no limit) and, with `block`, within one block of
    `block` integers (a slab's slots). The slot runs read, written or populated with one
    system call each."""
    runs = []
    i, n = 0, len(values)
    while i < n:
        j = i + 1
        while (j < n and values[j] == values[j - 1] + 1 and (not max_len or j - i < max_len)
               and (not block or values[j] // block == values[i] // block)):
            j += 1
        runs.append((i, j))
        i = j
    return runs


#: numpy lets go of the interpreter lock for loops over more than 500 elements. On the trio
#: thread that is a hand-over to whichever worker thread wants the lock, and taking it back
#: waits up to the switch interval: a 512-element fill cost 20-50 us there instead of 1 us
GIL_KEPT_ELEMENTS = 500


def fill_keeping_gil(a: np.ndarray, start: int, end: int, value) -> None:
    """a[start:end] = value in pieces numpy does not release the interpreter lock for."""
    for lo in range(start, end, GIL_KEPT_ELEMENTS):
        a[lo:min(end, lo + GIL_KEPT_ELEMENTS)] = value


def fibonacci_slot(key: int, shift: int) -> int:
    """The slot of a non-negative key in a table of 2^(64 - shift) slots."""
    return ((key * FIBONACCI_MULTIPLIER) & _MASK64) >> shift


def fibonacci_slots(keys: np.ndarray, shift: int) -> np.ndarray:
    """:func:`fibonacci_slot` of an array of non-negative keys (int64 slots)."""
    wrapped = np.asarray(keys).astype(np.uint64) * np.uint64(FIBONACCI_MULTIPLIER)
    return (wrapped >> np.uint64(shift)).astype(np.int64)
