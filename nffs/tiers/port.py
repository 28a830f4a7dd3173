"""The typed port between the page store and the prefetcher (brief: "through a typed port
into the store, never its private state").

The store publishes `AccessEvent`s to its listeners and implements `PrefetchPort`;
the predictor package depends on this module only, never on the store's internals.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Callable, Mapping, Protocol

import numpy as np


class Priority(enum.IntEnum):
    """I/O classes of the scheduler, most urgent first. Demand never queues behind the others."""

    DEMAND = 0
    PREFETCH = 1
    BACKGROUND = 2


class AccessKind(enum.Enum):
    READ = "read"  # a read of params/levels that reached the daemon (a kernel page-cache miss)
    GATHER = "gather"  # pages gathered for query/at/concept reads
    WRITE = "write"
    #: a READ about to wait on a slow tier, told as it starts (its READ event, ``announced``,
    #: follows when it is answered): a reader's next request comes only after the answer, so
    #: a plan made now has a whole tier latency of head start (Linux starts its read-ahead
    #: window on the synchronous miss too, before it waits)
    MISS = "miss"


class AccessEvent:
    """One access the store saw. A plain slotted class, not a dataclass, with its page
    numbers kept as the store had them (a Python list on the read path) and turned into
    arrays only when asked for: the store builds one per read that reaches the daemon,
    and listeners mostly look at ``any_slow`` and ``page_list`` only. Treat it as
    immutable."""

    __slots__ = ("kind", "_pages", "_slow", "offset", "size", "time", "end", "any_slow", "announced", "reader")

    def __init__(self, kind: AccessKind, pages: "np.ndarray | list[int]", slow: "np.ndarray | list[bool]",
                 offset: int = 0, size: int = 0, time: float = 0.0, end: float = 0.0,
                 announced: bool = False, reader: int = 0) -> None:
        self.kind = kind
        self._pages = pages  # page numbers in access order (unique for GATHER)
        self._slow = slow  # per page: the demand had to wait on a non-memory tier (a miss)
        self.offset = offset  # READ: byte offset and size of the request within params
        self.size = size
        self.time = time  # time.monotonic() of the request
        #: ... and of its answer: a reader's own pace is the gap between one request's end
        #: and its next request's start, whatever its misses cost
        self.end = end or time
        #: some page of the access waited on a slow tier
        self.any_slow = bool(slow.any()) if isinstance(slow, np.ndarray) else True in slow
        #: READ: a MISS event told this read as it started (this one is its answer)
        self.announced = announced
        #: READ / MISS: the open file the request came through (the FUSE file handle; 0:
        #: not known). Readers of their own open files are told apart by it, as the kernel
        #: keeps read-ahead state per open file
        self.reader = reader

    @property
    def pages(self) -> np.ndarray:
        """int64 page numbers."""
        p = self._pages
        if not isinstance(p, np.ndarray):
            p = self._pages = np.array(p, dtype=np.int64)
        return p

    @property
    def slow(self) -> np.ndarray:
        """bool per page."""
        s = self._slow
        if not isinstance(s, np.ndarray):
            s = self._slow = np.array(s, dtype=bool)
        return s

    @property
    def page_list(self) -> list[int]:
        p = self._pages
        return p.tolist() if isinstance(p, np.ndarray) else p

    @property
    def slow_list(self) -> list[bool]:
        s = self._slow
        return s.tolist() if isinstance(s, np.ndarray) else s

    def __repr__(self) -> str:
        return (f"AccessEvent({self.kind}, pages={self.page_list}, slow={self.slow.tolist()}, "
                f"offset={self.offset}, size={self.size}, time={self.time})")


AccessListener = Callable[[AccessEvent], None]

#: The hottest event of all, without an `AccessEvent`: a read answered from a memory tier
#: (its first page, byte offset in params, size, reader as in `AccessEvent.reader`), called
#: as it is answered (the listener
#: reads the clock if it needs to); its pages are first .. (offset + size - 1) // page_size.
#: A 4 KiB read served from memory costs the daemon a few microseconds, and building an
#: event object per read and walking it was a large share of them.
MemoryReadListener = Callable[[int, int, int, int], None]

#: A small gather (a single point, a concept, an `at/` lookup) answered wholly from memory:
#: the page of each row it read, as an int64 array in no order and with repeats (making
#: them distinct cost a one-point query more than the listener that usually ignores them).
MemoryGatherListener = Callable[[np.ndarray], None]


@dataclass(frozen=True)
class FetchResult:
    page: int
    data: bytes | None  # the page's bytes (for a push into the kernel cache), None if failed
    version: int  # page_version() at the time `data` was read
    from_slow_tier: bool  # it really came from a durable tier (not already in memory)
    joined: bool  # a demand fetch of the same page was already in flight


class PrefetchPort(Protocol):
    page_size: int
    n_pages: int

    def add_listener(self, listener: AccessListener, on_memory_read: MemoryReadListener | None = None,
                     on_memory_gather: MemoryGatherListener | None = None) -> None:
        """Every access as an `AccessEvent`; with `on_memory_read` / `on_memory_gather`,
        reads and small gathers served from memory go there instead (the same event,
        unpacked)."""

    def log_memory_reads(self, log: list[int] | None, watched: Mapping[int, object] | None = None) -> None:
        """While `log` is set, a read served from memory none of whose pages is in `watched`
        only appends its pages to `log` (no call of `on_memory_read`: a cold 4 KiB read
        costs the daemon ~30 µs, and a call per read was several of them); the others are
        reported as usual. None: report every read again."""

    def logged_memory_reads(self) -> int:
        """Reads that went to a log instead of `on_memory_read` so far."""

    def is_cheap(self, page: int) -> bool:
        """True when reading the page costs no slow-tier I/O (memory copy, or never written)."""

    def cheap_mask(self, pages: np.ndarray) -> np.ndarray: ...

    async def fetch(self, page: int, priority: Priority = Priority.PREFETCH) -> FetchResult:
        """Bring the page to the fastest memory tier (bounded concurrency, yields to demand)."""

    async def fetch_many(self, pages: list[int], priority: Priority = Priority.PREFETCH) -> list[FetchResult]:
        """:meth:`fetch` of a run of pages as one I/O (one slot of the class), in order."""

    def page_version(self, page: int) -> int:
        """Changes whenever the page's content changes (writes, concept updates)."""

    def lend_heat(self, page: int, amount: float) -> None:
        """Raise a page's hotness by the predictor's confidence (negative to take it back)."""

    def demand_waiting(self) -> int:
        """Demand reads currently waiting on a slow tier."""

    def memory_capacity_pages(self) -> int:
        """Pages the memory tiers hold at most: a plan bigger than a part of it would evict
        the pages it is meant to serve."""

    def slow_tier_reads(self) -> int:
        """Page reads served by durable tiers so far (demand + prefetch), for honest coverage."""
