"""The ledger (every prefetched page from plan to outcome) and the feedback controller.

Definitions (SPEC 5, issue #8), per space (address, field, hint):

- *issued*: a prefetch fetch that really read a slow tier (``FetchResult.from_slow_tier``
  and not joined to a demand fetch). Pages found cheap, cancelled because demand came
  first, or still queued never count.
- *useful*: an issued page that was then demanded while resident — a READ/GATHER that
  found it without waiting (``slow`` false), or (address space) a pushed page the reader
  passed on its way to a later position of its stream (it was read from the kernel's
  cache, where we put it). A useful page later demanded from a slow tier (evicted
  before its real use) is moved from useful to wasted.
- *late*: an issued page demanded while its fetch was in flight (the demand waited less,
  but waited): the demand joined the fetch, and the store's access event says it waited
  on the slow tier (``PageStore._fetch``), whether the drain task sees the event before
  or after the page arrived.
- *wasted*: an issued page never demanded within ``ledger_ttl_s``, evicted and fetched
  again by demand, or arriving after the reader passed it.
- *demand misses*: demanded pages that waited on a slow tier and were not in flight as
  prefetches. Misses without prefetch ≈ useful + late + demand misses, so
  ``coverage = useful / (useful + late + demand misses)``; ``accuracy = useful / issued``;
  ``timeliness = useful / (useful + late)``.

The controller keeps the last outcomes per space. A space whose wasted or late share
exceeds ``stop_waste`` / ``stop_late`` (``field_stop_late`` for the field space) stops issuing; its predictions are then only
recorded as *shadow* entries (never fetched) and it resumes once ``resume_accuracy`` of
its shadow predictions are demanded.
"""
from __future__ import annotations

from collections import OrderedDict, deque
from itertools import islice
from typing import Callable

import numpy as np

from ..arrays import fibonacci_slot
from .config import PrefetchConfig

QUEUED, INFLIGHT, READY, SHADOW = 0, 1, 2, 3
SPACES = ("address", "field", "hint")
COUNTS = ("issued", "useful", "late", "wasted", "demand_misses", "cancelled", "cheap", "joined", "failed",
          "pushed", "push_skipped", "inferred", "shadow", "shadow_hits", "reclassified")


#: how many pages wasted on arrival (passed while in flight) are remembered for a demand
#: read that joined their fetch (Ledger.passed_arrivals)
PASSED_ARRIVALS_KEPT = 256


class Entry:
    __slots__ = ("space", "state", "push", "marker", "hole", "pushed", "passed", "t", "stream", "conf", "heat",
                 "arrived_t", "head_t", "unsure")

    def __init__(self, space: str, state: int, push: bool, marker: bool, t: float, stream: int, conf: float) -> None:
        self.space = space
        self.state = state
        self.push = push
        self.marker = marker
        #: a marker's hole, (start, end) bytes within the page left out of its push (None: a
        #: marker is not pushed at all)
        self.hole: tuple[int, int] | None = None
        self.pushed = False
        self.passed = False
        self.t = t
        self.stream = stream
        self.conf = conf
        self.heat = 0.0
        self.arrived_t = 0.0
        self.head_t = 0.0  # first page of an address plan, or a field plan's page: the time of the read or batch behind it
        #: planned for a stride's error only (its reader may not touch it): passed by, it is
        #: not inferred read (useful) but counted wasted
        self.unsure = False


class Controller:
    """Stops a space that does not pay; resumes it when its shadow predictions come true."""

    def __init__(self, cfg: PrefetchConfig, stop_late: float | None = None) -> None:
        self.cfg = cfg
        self.stop_late = cfg.stop_late if stop_late is None else stop_late
        self.active = True
        self.outcomes: deque = deque(maxlen=cfg.feedback_window)
        #: how many of `outcomes` are wasted ("w") and late ("l"): kept as they come and go
        #: (counting the window at every outcome was ~2 % of the FUSE thread's time)
        self._counts = {"w": 0, "l": 0, "u": 0}
        self.shadow: deque = deque(maxlen=cfg.feedback_window)
        self.stops = 0
        self.resumes = 0
        self.shadow_seen = 0  # shadow outcomes since the last stop

    def outcome(self, what: str) -> None:
        counts = self._counts
        if len(self.outcomes) == self.outcomes.maxlen:
            counts[self.outcomes[0]] -= 1  # the oldest leaves the window
        self.outcomes.append(what)
        counts[what] += 1
        c = self.cfg
        if not self.active or len(self.outcomes) < c.feedback_min:
            return
        n = len(self.outcomes)
        wasted = counts["w"] / n
        late = counts["l"] / n
        if wasted > c.stop_waste or late > self.stop_late:
            self.active = False
            self.stops += 1
            self.shadow.clear()
            self.shadow_seen = 0

    def shadow_outcome(self, hit: bool) -> None:
        """A shadow prediction came true (or not). Resuming takes ``feedback_min`` of them after
        the first stop and twice as many after each further stop: right predictions that did
        not pay when fetched (pages evicted before use, or late on a busy tier) stop the space
        again, and each such cycle costs a burst of wasted fetches — so it backs off."""
        self.shadow.append(hit)
        self.shadow_seen += 1
        c = self.cfg
        need = c.feedback_min << min(10, max(0, self.stops - 1))
        if self.active or len(self.shadow) < c.feedback_min or self.shadow_seen < need:
            return
        if sum(self.shadow) / len(self.shadow) >= c.resume_accuracy:
            self.active = True
            self.resumes += 1
            self.outcomes.clear()
            self._counts = dict.fromkeys(self._counts, 0)

    def accuracy(self) -> float:
        if not self.outcomes:
            return 1.0
        return self._counts["u"] / len(self.outcomes)

    def stats(self) -> dict:
        return {"active": self.active, "stops": self.stops, "resumes": self.resumes,
                "window_accuracy": round(self.accuracy(), 4)}


class RecentUseful:
    """Pages recently counted useful, with their space: a direct-mapped table of fixed size
    (9 bytes a slot, allocated once), where a newer page takes an older one's slot. An
    ordered dict of up to ``ledger_capacity`` pages held ~180 bytes each (11.5 MB at its
    cap, SPEC 8 memory per page); forgetting an old page early only means a later slow
    read of it is not moved from useful to wasted."""

    def __init__(self, capacity: int) -> None:
        bits = max(1, (capacity - 1).bit_length())
        self._shift = 64 - bits
        self.pages = np.full(1 << bits, -1, dtype=np.int64)
        self.spaces = np.zeros(1 << bits, dtype=np.uint8)

    def _slot(self, page: int) -> int:
        # Fibonacci hashing: pages a power of two apart (strides, interleaved readers) must
        # not all take one slot
        return fibonacci_slot(page, self._shift)

    def add(self, page: int, space: str) -> None:
        k = self._slot(page)
        self.pages[k] = page
        self.spaces[k] = SPACES.index(space)

    def __contains__(self, page: int) -> bool:
        return self.pages.item(self._slot(page)) == page

    def pop(self, page: int) -> str | None:
        """The page's space, forgotten; None if it is not (or no longer) here."""
        k = self._slot(page)
        if self.pages.item(k) != page:
            return None
        self.pages[k] = -1
        return SPACES[self.spaces.item(k)]


class Ledger:
    def __init__(self, cfg: PrefetchConfig, release: Callable[[int, Entry], None] | None = None) -> None:
        self.cfg = cfg
        self.entries: OrderedDict[int, Entry] = OrderedDict()
        self.counts = {s: {k: 0 for k in COUNTS} for s in SPACES}
        self.control = {s: Controller(cfg, cfg.field_stop_late if s == "field" else None) for s in SPACES}
        #: pages counted wasted as they arrived because the reader had passed them while
        #: in flight, with their space and arrival time: a demand read that was waiting for
        #: that very fetch (it began before the page arrived) used it late, and is no demand
        #: miss: the slow tier was read once, by the prefetch. Concurrent FUSE requests can
        #: report a page passed before its own read is told. Bounded: rare by nature.
        self.passed_arrivals: OrderedDict[int, tuple[str, float]] = OrderedDict()
        #: recently useful pages: a later slow demand of one turns it into wasted
        self.recent_useful = RecentUseful(cfg.ledger_capacity)
        self.release = release or (lambda page, e: None)
        #: called with the entry of a page demanded before its prefetch arrived (late, or still
        #: queued): the address predictor deepens that stream's lead
        self.on_late: Callable[[Entry], None] = lambda e: None

    # ------------------------------------------------------------------ planning
    def plan(self, page: int, space: str, *, push: bool, marker: bool, now: float, stream: int = 0,
             conf: float = 1.0, hole: tuple[int, int] | None = None, unsure: bool = False) -> Entry | None:
        """A page a predictor wants; None when it is already known. Shadow entry when stopped."""
        if page in self.entries:
            return None
        active = self.control[space].active or space == "hint"
        e = Entry(space, QUEUED if active else SHADOW, push, marker, now, stream, conf)
        e.hole = hole if marker else None
        e.unsure = unsure
        self.entries[page] = e
        if not active:
            self.counts[space]["shadow"] += 1
        while len(self.entries) > self.cfg.ledger_capacity:
            old_page, old = self.entries.popitem(last=False)
            self._retire(old_page, old)
        return e

    # ------------------------------------------------------------------ fetch lifecycle
    def not_issued(self, page: int, e: Entry, why: str) -> None:
        """The fetch did not read a slow tier (cheap, joined a demand, failed): forget it."""
        if self.entries.get(page) is e:
            del self.entries[page]
        self.counts[e.space][why] += 1

    def issued(self, page: int, e: Entry) -> None:
        self.counts[e.space]["issued"] += 1

    def arrived(self, page: int, e: Entry, now: float) -> None:
        """The fetch completed (issued). Resolves entries the reader passed while in flight."""
        if self.entries.get(page) is not e:
            return  # demand already resolved it (late)
        e.state = READY
        e.arrived_t = now
        if e.passed:
            self._wasted(page, e)
            self.passed_arrivals[page] = (e.space, now)
            if len(self.passed_arrivals) > PASSED_ARRIVALS_KEPT:
                self.passed_arrivals.popitem(last=False)

    # ------------------------------------------------------------------ demand
    def demand(self, page: int, slow: bool, space: str, t: float = 0.0) -> None:
        """A page the daemon read or gathered; ``t`` is when the request began (0: unknown)."""
        e = self.entries.get(page)
        if e is None:
            if slow and self._joined_a_passed_fetch(page, t):
                return
            if slow:
                self.counts[space]["demand_misses"] += 1
                sp = self.recent_useful.pop(page)
                if sp is not None:
                    c = self.counts[sp]
                    c["useful"] -= 1
                    c["wasted"] += 1
                    c["reclassified"] += 1
                    self.control[sp].outcome("w")
            return
        del self.entries[page]
        if e.state == QUEUED:
            self.counts[e.space]["cancelled"] += 1
            if slow:
                self.counts[space]["demand_misses"] += 1
                self.on_late(e)
        elif e.state == SHADOW:
            self.counts[e.space]["shadow_hits"] += 1
            self.control[e.space].shadow_outcome(True)
            if slow:
                self.counts[space]["demand_misses"] += 1
        elif e.state == INFLIGHT:
            self.counts[e.space]["late"] += 1
            self.control[e.space].outcome("l")
            self.on_late(e)
            self.release(page, e)
        else:  # READY
            if slow and t and e.arrived_t >= t:
                # the request began while our fetch was in flight and waited for it
                self.counts[e.space]["late"] += 1
                self.control[e.space].outcome("l")
                self.on_late(e)
                self.release(page, e)
            elif slow:  # evicted before use, fetched again by demand
                self._wasted(page, e, already_removed=True)
                self.counts[space]["demand_misses"] += 1
            else:
                self._useful(page, e)

    def _joined_a_passed_fetch(self, page: int, t: float) -> bool:
        """A slow demand that waited for a prefetch counted wasted on arrival (passed while in
        flight): move that prefetch from wasted to late."""
        got = self.passed_arrivals.pop(page, None) if self.passed_arrivals else None
        if got is None or not t or got[1] < t:
            return False
        c = self.counts[got[0]]
        c["wasted"] -= 1
        c["late"] += 1
        c["reclassified"] += 1
        self.control[got[0]].outcome("l")
        return True

    def passed(self, page: int) -> None:
        """The reader went past this planned page without the daemon seeing a read of it."""
        e = self.entries.get(page)
        if e is None:
            return
        if e.state == READY:
            del self.entries[page]
            if e.pushed and not e.unsure:
                self.counts[e.space]["inferred"] += 1
                self._useful(page, e)
            else:
                self._wasted(page, e, already_removed=True)
        elif e.state == INFLIGHT:
            e.passed = True
        elif e.state == QUEUED:
            del self.entries[page]
            self.counts[e.space]["cancelled"] += 1
        elif e.state == SHADOW:
            del self.entries[page]
            self.counts[e.space]["shadow_hits"] += 1
            self.control[e.space].shadow_outcome(True)

    def _useful(self, page: int, e: Entry) -> None:
        self.counts[e.space]["useful"] += 1
        self.control[e.space].outcome("u")
        self.recent_useful.add(page, e.space)
        self.release(page, e)

    def _wasted(self, page: int, e: Entry, already_removed: bool = False) -> None:
        if not already_removed and self.entries.get(page) is e:
            del self.entries[page]
        self.counts[e.space]["wasted"] += 1
        if not e.unsure:
            # a page planned only for a stride's possible drift is insurance the stream took
            # knowingly, and counts wasted when unused; the controller judges whether the
            # predictions pay, not the insurance: a founding stride over 4 KiB pages plans two
            # drift pages a step, and their waste stopped it within its first window, every
            # read a miss until it resumed (a 3-page stride: 248 pages missed, two stops)
            self.control[e.space].outcome("w")
        self.release(page, e)

    def _retire(self, page: int, e: Entry) -> None:
        if e.state == QUEUED:
            self.counts[e.space]["cancelled"] += 1
        elif e.state == SHADOW:
            self.control[e.space].shadow_outcome(False)
        elif e.state == READY:
            self._wasted(page, e, already_removed=True)
        else:  # in flight: the worker resolves it when the fetch completes
            e.passed = True

    def expire(self, now: float, still_resident: Callable[[int], bool], budget: int = 1024) -> None:
        """Retire entries past their TTL; field/hint pages that lost their memory copy are wasted."""
        ttl = self.cfg.ledger_ttl_s
        for page in list(islice(self.entries, budget)):
            e = self.entries[page]
            if e.state == READY and e.space != "address" and not still_resident(page):
                self._wasted(page, e)
            elif now - e.t > ttl and e.state != INFLIGHT:
                del self.entries[page]
                self._retire(page, e)

    def pending(self, space: str) -> int:
        return sum(1 for e in self.entries.values() if e.space == space and e.state in (INFLIGHT, READY))

    def summary(self, space: str) -> dict:
        c = dict(self.counts[space])
        issued, useful, late = c["issued"], c["useful"], c["late"]
        without = useful + late + c["demand_misses"]
        c["pending"] = self.pending(space)
        c["accuracy"] = round(useful / issued, 4) if issued else None
        resolved = issued - c["pending"]
        c["accuracy_resolved"] = round(useful / resolved, 4) if resolved > 0 else None
        c["coverage"] = round(useful / without, 4) if without else None
        c["timeliness"] = round(useful / (useful + late), 4) if useful + late else None
        c.update(self.control[space].stats())
        return c
