"""TRANSITIONAL: a `PrefetchPort` over the pre-#7 `PageStore`, through its public methods only.

The storage-core rewrite (issue #7) gives the store a real ``store.port``; until it is
merged, this adapter lets the new prefetcher run on today's mounts (so the workload
suite measures it). It wraps the store instance's public ``read``, ``page_arrays``,
``write`` and ``add_to_elements`` to publish typed events and page versions, and maps
``fetch`` to ``page_bytes``. Delete this module when the port lands.
"""
from __future__ import annotations

import time
from collections import defaultdict

import numpy as np

from ..tiers.port import AccessEvent, AccessKind, FetchResult, Priority


class LegacyStorePort:
    def __init__(self, store) -> None:
        self.store = store
        self.page_size = store.layout.page_size
        self.n_pages = store.layout.n_pages
        self.listeners = []
        self.versions: dict[int, int] = defaultdict(int)
        self._in_read = 0
        self.gathered: set[int] = set()  # pages the old store's resident copy holds for gathers
        self._inflight = 0  # our own fetches (the old store counts them as "demand waiting")
        # the old store has 16 I/O slots shared by everyone: keep 4 free for demand reads
        import trio

        self._slots = trio.CapacityLimiter(12)
        self._wrap()

    # ------------------------------------------------------------------ wrapping
    def _wrap(self) -> None:
        st = self.store
        orig_read, orig_arrays = st.read, st.page_arrays
        orig_write, orig_add = st.write, st.add_to_elements
        ps = self.page_size
        port = self

        async def read(offset: int, size: int):
            first = offset // ps
            last = max(first, (offset + max(size, 1) - 1) // ps)
            pages = np.arange(first, min(last, port.n_pages - 1) + 1, dtype=np.int64)
            if len(pages) <= 64:
                slow = np.array([not st.is_fast(int(p)) for p in pages], dtype=bool)
            else:  # a big read: one counter comparison instead of a lookup per page
                before = port.slow_tier_reads()
            t0 = time.monotonic()
            port._in_read += 1
            try:
                data = await orig_read(offset, size)
            finally:
                port._in_read -= 1
            if len(pages) > 64:
                slow = np.full(len(pages), port.slow_tier_reads() != before, dtype=bool)
            port._emit(AccessEvent(AccessKind.READ, pages, slow, offset, size, t0))
            return data

        async def page_arrays(pages):
            arr = np.asarray(pages, dtype=np.int64)
            slow = np.array([not st.is_fast(int(p)) for p in arr], dtype=bool)
            t0 = time.monotonic()
            out = await orig_arrays(pages)
            if st._resident is not None:  # the old store keeps gathered pages in a resident copy
                port.gathered.update(arr.tolist())
            if not port._in_read:
                port._emit(AccessEvent(AccessKind.GATHER, arr, slow, 0, 0, t0))
            return out

        def bump(offset: int, length: int) -> np.ndarray:
            first, last = offset // ps, (offset + max(length, 1) - 1) // ps
            for p in range(first, last + 1):
                port.versions[p] += 1
            return np.arange(first, last + 1, dtype=np.int64)

        async def write(offset: int, data):
            n = len(memoryview(data).cast("B"))
            bump(offset, n)
            try:
                return await orig_write(offset, data)
            finally:
                pages = bump(offset, n)
                port._emit(AccessEvent(AccessKind.WRITE, pages, np.zeros(len(pages), bool), offset, n, time.monotonic()))

        async def add_to_elements(elements, deltas):
            flat = np.asarray(elements, dtype=np.uint64).reshape(-1)
            pages = np.unique(flat * np.uint64(st.itemsize) // np.uint64(ps)).astype(np.int64)
            for p in pages.tolist():
                port.versions[p] += 1
            try:
                return await orig_add(elements, deltas)
            finally:
                for p in pages.tolist():
                    port.versions[p] += 1
                port._emit(AccessEvent(AccessKind.WRITE, pages, np.zeros(len(pages), bool), 0, 0, time.monotonic()))

        st.read, st.page_arrays, st.write, st.add_to_elements = read, page_arrays, write, add_to_elements

    def _emit(self, ev: AccessEvent) -> None:
        for listener in self.listeners:
            listener(ev)

    # ------------------------------------------------------------------ the port
    def add_listener(self, listener) -> None:
        self.listeners.append(listener)

    def is_cheap(self, page: int) -> bool:
        page = int(page)
        return page in self.gathered or bool(self.store.is_fast(page))

    def cheap_mask(self, pages: np.ndarray) -> np.ndarray:
        return np.array([self.is_cheap(p) for p in np.asarray(pages).tolist()], dtype=bool)

    async def fetch(self, page: int, priority: Priority = Priority.PREFETCH) -> FetchResult:
        page = int(page)
        slow = not self.store.is_fast(page)
        version = self.versions[page]
        try:
            if priority == Priority.DEMAND:
                data = await self.store.page_bytes(page)
            else:
                async with self._slots:
                    self._inflight += 1
                    try:
                        data = await self.store.page_bytes(page)
                    finally:
                        self._inflight -= 1
        except OSError:
            return FetchResult(page, None, version, slow, False)
        if self.versions[page] != version:
            version = -1  # changed while we read: the caller will refetch
        return FetchResult(page, bytes(data), version, slow, False)

    def page_version(self, page: int) -> int:
        return self.versions.get(int(page), 0)

    def lend_heat(self, page: int, amount: float) -> None:
        if amount > 0:
            self.store.raise_heat(int(page), amount)

    def demand_waiting(self) -> int:
        return max(0, int(getattr(self.store, "demand_waiting", 0)) - self._inflight)

    def slow_tier_reads(self) -> int:
        return sum(t.counters.reads for t in self.store.durable_tiers)
