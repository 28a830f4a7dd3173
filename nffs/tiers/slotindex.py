"""page -> memory-copy code for fields too big for a dense array (the page table's index).

A field of more than `dense_index_pages` pages (a petabyte field has billions) cannot
have an array entry per page, so resident pages were a Python dict: ~110 bytes per
resident page with its int objects, ~30 MB for a 1 GiB dram tier of 4 KiB pages, which
counted against SPEC 8's 200 bytes of daemon memory per materialised page. This is an
open-addressing table in two numpy arrays instead: linear probing from a Fibonacci hash,
deletion by backward shift (no tombstones), 16 bytes per entry, at a load factor between
one quarter and one half (it doubles when half full: 32-64 bytes per resident page, and
nothing is allocated for slots that are never used; growing four times at once left
up to 128 bytes a page, which showed as ~120 B/page of SPEC 8's 200 between 3*10^4 and
10^5 pages in scripts/bench_scale.py's range). A key is the page + 1:
0 means empty.

Single-threaded like the rest of the page table (the trio thread).
"""
from __future__ import annotations

import numpy as np

from ..arrays import fibonacci_slot, fibonacci_slots



class SlotIndex:
    def __init__(self, initial_entries: int = 1024) -> None:
        self._alloc(initial_entries)
        self.count = 0

    def _alloc(self, entries: int) -> None:
        self.bits = max(4, (entries - 1).bit_length())
        size = 1 << self.bits
        self.mask = size - 1
        self._shift = 64 - self.bits
        self.keys = np.zeros(size, dtype=np.int64)
        self.codes = np.zeros(size, dtype=np.int64)

    def _home(self, page: int) -> int:
        return fibonacci_slot(page, self._shift)

    def _homes(self, pages: np.ndarray) -> np.ndarray:
        return fibonacci_slots(pages, self._shift)

    def _grow(self) -> None:
        """Twice the size, every entry placed again (vectorised: on the trio thread, a
        table of 10^5 pages takes milliseconds, not the Python loop's tenth of a second)."""
        keys, codes = self.keys, self.codes
        used = np.flatnonzero(keys)
        self._alloc(2 * (self.mask + 1))
        self._place_many(keys[used], codes[used])

    def _place_many(self, keys: np.ndarray, codes: np.ndarray) -> None:
        """Insert distinct keys absent from the table, in rounds: each round every key tries
        the next slot of its probe run and, of those wanting the same free slot, the first
        gets it. Nothing is deleted meanwhile, so every key ends before the first empty slot
        of its run, as one-by-one insertion would leave it."""
        k = self._homes(keys - 1)
        todo = np.arange(keys.size)
        while todo.size:
            slots = k[todo]
            free = self.keys[slots] == 0
            cand, cslots = todo[free], slots[free]
            uniq, first = np.unique(cslots, return_index=True)
            winners = cand[first]
            self.keys[uniq] = keys[winners]
            self.codes[uniq] = codes[winners]
            placed = np.zeros(keys.size, dtype=bool)
            placed[winners] = True
            todo = todo[~placed[todo]]
            k[todo] = (k[todo] + 1) & self.mask
        self.count = int(np.count_nonzero(self.keys))

    def _find(self, key: int) -> int:
        """The slot holding `key` (page + 1), or the empty slot where its probe run ends."""
        keys, mask = self.keys, self.mask
        k = self._home(key - 1)
        while True:
            x = keys.item(k)
            if x == key or x == 0:
                return k
            k = (k + 1) & mask

    def get(self, page: int) -> int:
        """The page's code, or -1."""
        k = self._find(page + 1)
        return self.codes.item(k) if self.keys.item(k) else -1

    def get_many(self, pages: np.ndarray) -> np.ndarray:
        """`get` of an int64 array of pages (vectorised probing)."""
        pages = np.asarray(pages, dtype=np.int64)
        out = np.full(pages.shape, -1, dtype=np.int64)
        if pages.size == 0 or self.count == 0:
            return out
        want = pages + 1
        k = self._homes(pages)
        todo = np.arange(pages.size)
        while todo.size:
            x = self.keys[k]
            hit = x == want
            out[todo[hit]] = self.codes[k[hit]]
            go_on = ~hit & (x != 0)
            todo, want, k = todo[go_on], want[go_on], (k[go_on] + 1) & self.mask
        return out

    def set(self, page: int, code: int) -> None:
        key = page + 1
        k = self._find(key)
        self.codes[k] = code
        if self.keys.item(k) == key:
            return
        self.keys[k] = key
        self.count += 1
        if 2 * self.count > self.mask + 1:  # half full: keep probe runs short
            self._grow()

    def pop(self, page: int) -> None:
        """Forget the page (nothing if absent); the entries after it in its probe run move
        back so that every lookup still finds its entry before an empty slot."""
        keys, codes, mask = self.keys, self.codes, self.mask
        k = self._find(page + 1)
        if keys.item(k) == 0:
            return
        self.count -= 1
        hole = k
        keys[hole] = 0
        j = hole
        while True:
            j = (j + 1) & mask
            x = keys.item(j)
            if x == 0:
                return
            home = self._home(x - 1)
            # the entry at j may fill the hole unless its home lies cyclically in (hole, j]
            if (hole < j and hole < home <= j) or (j < hole and (home > hole or home <= j)):
                continue
            keys[hole] = x
            codes[hole] = codes.item(j)
            keys[j] = 0
            hole = j
