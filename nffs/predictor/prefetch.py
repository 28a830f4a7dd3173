"""The prefetch policy: observe accesses, predict, fetch ahead, push into the kernel cache.

Wiring (``fs/daemon.py``): ``Prefetcher(store, layout, kind, push=ops.push_page,
field=field)`` registers itself on ``store.access_listeners`` and
``field.point_listeners``; ``await nursery.start(prefetcher.run)`` runs it in the
daemon's nursery; ``hint(pages)`` takes the ``hints`` file; ``stats()`` goes into
``stats`` under ``"prefetch"``.

Never blocking a demand read:

- listeners only append to bounded ring buffers and set an event (O(pages of the access));
- learning and prediction run in the prefetch task, the point-set geometry of field
  space in a worker thread; a backlog of reads is thinned to the newest ``max_backlog``;
- fetches run in ``concurrency`` worker tasks (a bounded pool, 8 by default, so the
  store's I/O slots are never all taken by prefetch), each waiting while demand reads
  are queued on slow tiers;
- a prefetch never writes: pushes into the kernel cache skip dirty pages and pages read
  or pushed in the last ``repush_after_s`` seconds (the kernel may hold them dirty from
  an mmap writer), and a page written while it was being fetched is pushed again fresh.

The ledger and the statistics are described in docs/prefetch.md.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from collections import OrderedDict, deque
from itertools import islice
from typing import Awaitable, Callable

import numpy as np
import trio

from .address import AddressPredictor
from .fieldspace import FieldPredictor
from .models import Predictor, make_model

log = logging.getLogger(__name__)

QUEUED, INFLIGHT, READY = 0, 1, 2
SPACES = ("address", "field", "hint")

PushFn = Callable[[int, bytes], Awaitable[None]]


class Entry:
    __slots__ = ("space", "state", "push", "pushed", "conf", "t", "stream", "boost")

    def __init__(self, space: str, push: bool, conf: float, t: float, stream: int) -> None:
        self.space = space
        self.state = QUEUED
        self.push = push
        self.pushed = False
        self.conf = conf
        self.t = t
        self.stream = stream
        self.boost = 0.0  # heat this prefetch added to the page in the store


class Ledger:
    """Every page asked for, from queued to used (or wasted): the source of the statistics.

    - *issued*: a fetch started (queued pages that are cancelled, used first or already
      cheap never count);
    - *useful*: an issued page that was then used — read or gathered by the daemon, or
      skipped over by a reader that continued past it in a pushed window (inferred);
    - *late*: a useful page whose demand came while the prefetch was still in flight;
    - *wasted*: an issued page not used within ``ttl_s``, or (field space) no longer cheap
      to gather (evicted) before it was used.
    """

    def __init__(self, capacity: int = 1 << 14, ttl_s: float = 30.0, release: Callable[[int, Entry], None] | None = None) -> None:
        self.capacity = capacity
        self.ttl_s = ttl_s
        #: called with every started entry that leaves the ledger (used, wasted, failed)
        self.release = release or (lambda page, e: None)
        self.entries: OrderedDict[int, Entry] = OrderedDict()
        self.counts = {s: {"issued": 0, "useful": 0, "inferred": 0, "late": 0, "wasted": 0, "pushed": 0, "cancelled": 0} for s in SPACES}

    def get(self, page: int) -> Entry | None:
        return self.entries.get(page)

    def add(self, page: int, entry: Entry) -> None:
        self.entries[page] = entry
        while len(self.entries) > self.capacity:
            old_page, old = self.entries.popitem(last=False)
            self._retire(old_page, old)

    def _retire(self, page: int, e: Entry) -> None:
        if e.state == QUEUED:
            self.counts[e.space]["cancelled"] += 1
        else:
            self.counts[e.space]["wasted"] += 1
            self.release(page, e)

    def started(self, page: int, e: Entry) -> None:
        e.state = INFLIGHT
        self.counts[e.space]["issued"] += 1

    def used(self, page: int, inferred: bool = False) -> None:
        e = self.entries.get(page)
        if e is None:
            return
        if e.state == QUEUED:
            if inferred:
                return  # not fetched yet: the reader cannot have found it in a cache
            del self.entries[page]  # demand got there first: the fetch is pointless now
            self.counts[e.space]["cancelled"] += 1
            return
        if inferred and not e.pushed:
            return
        del self.entries[page]
        self.release(page, e)
        c = self.counts[e.space]
        c["useful"] += 1
        if inferred:
            c["inferred"] += 1
        if e.state == INFLIGHT:
            c["late"] += 1

    def cancel(self, page: int) -> None:
        e = self.entries.get(page)
        if e is not None and e.state == QUEUED:
            del self.entries[page]
            self.counts[e.space]["cancelled"] += 1

    def drop(self, page: int) -> None:
        """A page whose prefetch failed or turned out pointless: forget it, as wasted."""
        e = self.entries.pop(page, None)
        if e is not None and e.state != QUEUED:
            self.counts[e.space]["wasted"] += 1
            self.release(page, e)

    def expire(self, now: float, still_cheap: Callable[[int], bool], budget: int = 512) -> None:
        """Retire entries older than the TTL, and field prefetches that lost their memory copy."""
        for page in list(islice(self.entries, budget)):
            e = self.entries[page]
            if e.state == READY and e.space != "address" and not still_cheap(page):
                del self.entries[page]
                self.counts[e.space]["wasted"] += 1
                self.release(page, e)
            elif now - e.t > self.ttl_s:
                del self.entries[page]
                self._retire(page, e)

    def pending(self, space: str) -> int:
        return sum(1 for e in self.entries.values() if e.space == space and e.state != QUEUED)


class RecentPages:
    """Pages read by the daemon or pushed into the kernel cache recently (bounded LRU)."""

    def __init__(self, capacity: int = 1 << 16, horizon_s: float = 120.0) -> None:
        self.capacity = capacity
        self.horizon_s = horizon_s
        self._t: OrderedDict[int, float] = OrderedDict()

    def add(self, page: int, now: float) -> None:
        self._t[page] = now
        self._t.move_to_end(page)
        if len(self._t) > self.capacity:
            self._t.popitem(last=False)

    def __contains__(self, page: int) -> bool:
        t = self._t.get(page)
        return t is not None and time.monotonic() - t < self.horizon_s


class Prefetcher:
    def __init__(
        self,
        store,
        layout,
        kind: str = "hoeffding",
        *,
        push: PushFn | None = None,
        field=None,
        concurrency: int = 8,
        max_backlog: int = 256,
        repush_after_s: float = 120.0,
        heat_boost: float = 4.0,
    ) -> None:
        self.store = store
        self.layout = layout
        self.kind = kind
        self.push = push
        self.concurrency = concurrency
        # A fetched page must outlive, in the memory tier, the pages around it until it is
        # used: it gets `heat_boost` x confidence accesses' worth of heat (a demand read
        # gives one), so the store's coldest-first eviction takes other pages first.
        self.heat_boost = heat_boost
        self.max_backlog = max_backlog
        self.address_model: Predictor = make_model(kind, lazy=True)
        self.field_model: Predictor = make_model(kind, lazy=True)
        self.address = AddressPredictor(self.address_model, layout.n_pages, layout.page_size)
        self.fieldp = FieldPredictor(self.field_model, layout)
        self.ledger = Ledger(release=self._withdraw)
        self.recent = RecentPages(horizon_s=repush_after_s)
        self._reads: deque[tuple[int, int, float]] = deque(maxlen=4096)
        self._batches: deque[np.ndarray] = deque(maxlen=4)
        self._hints: deque[list[int]] = deque(maxlen=64)
        self._queue: deque[int] = deque()
        self._wake = trio.Event()
        self._work = trio.Event()
        self._own_loading = 0
        # The store runs at most `io slots` slow-tier reads at once; prefetch takes at most
        # `concurrency` of them and waits whenever demand reads need more than the rest.
        limiter = getattr(store, "_io_limiter", None)
        io_slots = int(getattr(limiter, "total_tokens", 16))
        self._demand_room = max(0, io_slots - concurrency)
        self._stream_pages: dict[int, set[int]] = {}
        self.counters = {
            "reads_seen": 0,
            "gathers_seen": 0,
            "batches_seen": 0,
            "reads_dropped": 0,
            "batches_dropped": 0,
            "hinted": 0,
            "slow_fetches": 0,
            "cheap_fetches": 0,
            "errors": 0,
            "repushed": 0,
            "push_skipped": 0,
        }
        self._fetch_s = 0.0
        self.loop_lag_max = 0.0
        trace = os.environ.get("NFFS_PREFETCH_TRACE")
        self._trace = open(trace, "a", buffering=1) if trace else None
        store.access_listeners.append(self._on_access)
        if field is not None:
            field.point_listeners.append(self._on_points)

    def _t(self, *what) -> None:
        """Debug trace (NFFS_PREFETCH_TRACE=FILE): one line per event, for tuning."""
        if self._trace is not None:
            self._trace.write(f"{time.monotonic():.6f} " + " ".join(map(str, what)) + "\n")

    # ------------------------------------------------------------------ listeners (O(1))
    def _on_access(self, pages) -> None:
        # The store calls listeners from read() (a params/levels read that reached the
        # daemon) and from its gathers (pages a query/at/concept batch needed). Only the
        # former are address-space history; both count as uses of prefetched pages.
        try:
            self._access(sys._getframe(1).f_code.co_name, pages)
        except Exception:  # never fail the demand read that called us
            log.exception("prefetch: access listener failed")

    def _access(self, caller: str, pages) -> None:
        pages = list(pages)
        if not pages:
            return
        now = time.monotonic()
        if self._trace is not None:
            st = [self.ledger.get(p) for p in pages]
            self._t("access", caller, len(pages), "ready", sum(1 for e in st if e and e.state == READY),
                    "inflight", sum(1 for e in st if e and e.state == INFLIGHT), "queued", sum(1 for e in st if e and e.state == QUEUED))
        for page in pages:
            self.ledger.used(page)
        if caller == "read":
            if self._trace is not None:
                self._t("read", min(pages), max(pages))
            self.counters["reads_seen"] += 1
            for page in pages:
                self.recent.add(page, now)
            if len(self._reads) == self._reads.maxlen:
                self.counters["reads_dropped"] += 1
            self._reads.append((min(pages), max(pages), now))
            self._wake.set()
        else:
            self.counters["gathers_seen"] += 1

    def _on_points(self, points: np.ndarray) -> None:
        if self._trace is not None:
            ready = [p for p, e in self.ledger.entries.items() if e.state == READY and e.space == "field"]
            self._t("batch", points.shape[0], "ready", len(ready), "evicted", sum(1 for p in ready if not self.store.is_fast(p)),
                    "dram", [t.pages for t in self.store.memory_tiers])
        self.counters["batches_seen"] += 1
        if len(self._batches) == self._batches.maxlen:
            self.counters["batches_dropped"] += 1
        self._batches.append(points)
        self._wake.set()

    def hint(self, pages: list[int]) -> None:
        """Pages an application announced (``hints`` file): fetch and push them."""
        self._hints.append(list(pages)[:8192])
        self._wake.set()

    # ------------------------------------------------------------------ the task
    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            for _ in range(self.concurrency):
                nursery.start_soon(self._worker)
            nursery.start_soon(self._housekeeping)
            nursery.start_soon(self._build_models)
            task_status.started()
            while True:
                await self._wake.wait()
                self._wake = trio.Event()
                try:
                    await self._drain()
                except Exception:  # a bug here must never take the file system down
                    log.exception("prefetch prediction failed")

    async def _build_models(self) -> None:
        """River takes seconds to import: build the trees in a thread while the mount serves."""
        for model in (self.address_model, self.field_model):
            build = getattr(model, "build", None)
            if build is not None and not model.ready:
                try:
                    model.install(await trio.to_thread.run_sync(build))
                except Exception:
                    log.exception("cannot build the %s model: prefetch stays off", self.kind)

    async def _drain(self) -> None:
        while self._hints:
            pages = self._hints.popleft()
            now = time.monotonic()
            for page in pages:
                if 0 <= page < self.layout.n_pages:
                    self.counters["hinted"] += 1
                    self._want(page, "hint", True, 1.0, now, 0)
            self._work.set()
        if len(self._reads) > self.max_backlog:
            # fell behind: learn from the newest reads only
            drop = len(self._reads) - self.max_backlog
            self.counters["reads_dropped"] += drop
            for _ in range(drop):
                self._reads.popleft()
        n = 0
        while self._reads:
            first, last, t = self._reads.popleft()
            self._observe_read(first, last, t)
            n += 1
            if n % 16 == 0:
                await trio.lowlevel.checkpoint()
        while self._batches:
            points = self._batches.popleft()
            if self._batches:
                # only the newest batch is worth predicting from; older ones still teach
                self.fieldp.observe(points, time.monotonic())
                continue
            await self._observe_batch(points)

    def _observe_read(self, first: int, last: int, t: float) -> None:
        plan = self.address.observe(first, last, t)
        if plan is None:
            return
        for page in plan.consumed:
            self.ledger.used(page, inferred=True)
        if self._trace is not None and plan.window:
            trips = [p for p, push, _ in plan.window if not push]
            self._t("plan", plan.stream, "consumed", plan.consumed, "window", plan.window[0][0], plan.window[-1][0], len(plan.window), "trip", trips)
        wanted = {page for page, _, _ in plan.window}
        old = self._stream_pages.get(plan.stream)
        if old:
            for page in old - wanted:
                self.ledger.cancel(page)
        self._stream_pages[plan.stream] = wanted
        if len(self._stream_pages) > 4 * self.address.max_streams:
            live = set(self.address.streams)
            self._stream_pages = {k: v for k, v in self._stream_pages.items() if k in live}
        now = time.monotonic()
        for page, push, conf in plan.window:
            self._want(page, "address", push and self.push is not None, conf, now, plan.stream)
        if plan.window:
            self._work.set()

    async def _observe_batch(self, points: np.ndarray) -> None:
        plan = self.fieldp.observe(points, time.monotonic())
        if plan is None:
            return
        pages, n_next = await trio.to_thread.run_sync(self.fieldp.pages, plan)
        valid = getattr(self.store, "_resident_valid", None)
        if valid is not None and pages.size:
            keep = ~valid[pages.astype(np.int64)]  # not yet in the gather table
            n_next = int(keep[:n_next].sum())
            pages = pages[keep]
        now = time.monotonic()
        wanted = 0
        urgent: list[int] = []
        entries = self.ledger.entries
        for i, page in enumerate(pages.tolist()):
            if page in entries or self.store.is_fast(page):
                continue
            self.ledger.add(page, Entry("field", False, plan.conf, now, -1))
            if i < n_next:
                urgent.append(page)  # the very next batch needs it: ahead of older plans
            else:
                self._queue.append(page)
            wanted += 1
            if wanted >= self.fieldp.max_pages:
                break
            if i % 64 == 63:
                self._work.set()
                await trio.lowlevel.checkpoint()  # metadata look-ups: let demand run
        self._queue.extendleft(reversed(urgent))
        if wanted:
            self._work.set()
        if self._trace is not None:
            self._t("fplan", plan.label, len(plan.steps), "candidates", len(pages), "wanted", wanted, "queue", len(self._queue))

    def _gather_ready(self, page: int) -> bool:
        """True when a gather needs no slow-tier read for this page."""
        valid = getattr(self.store, "_resident_valid", None)
        if valid is not None and page < len(valid) and valid[page]:
            return True
        row = self.store.lookup(page)
        return row is None or (row.mem is not None and row.mem in self.store.tier_by_id)

    def _want(self, page: int, space: str, push: bool, conf: float, now: float, stream: int) -> None:
        e = self.ledger.get(page)
        if e is not None:
            if push and not e.push:
                e.push = True
                if e.state == READY:
                    self._queue.append(page)  # fetched earlier as a tripwire: push it now
            e.conf = max(e.conf, conf)
            return
        if not push and space != "hint" and self.store.is_fast(page):
            return  # already cheap, and nothing to push
        self.ledger.add(page, Entry(space, push, conf, now, stream))
        self._queue.append(page)

    # ------------------------------------------------------------------ fetching
    async def _worker(self) -> None:
        while True:
            while not self._queue:
                self._work = trio.Event() if self._work.is_set() else self._work
                await self._work.wait()
            page = self._queue.popleft()
            try:
                await self._fetch(page)
            except Exception:  # a bug here must never take the file system down
                log.exception("prefetch of page %d failed", page)
                self.ledger.drop(page)

    async def _fetch(self, page: int) -> None:
        """Fetch one queued page into the memory tier (and push it), at background priority."""
        store = self.store
        e = self.ledger.get(page)
        if e is None:
            return
        if e.state == READY:
            if e.push and not e.pushed:
                await self._push_page(page, e, None)
            return
        if e.state != QUEUED:
            return
        # background priority: never take an I/O slot a queued demand read could use
        while store.demand_waiting - self._own_loading > self._demand_room:
            await trio.sleep(0.0005)
        if self.ledger.get(page) is not e or e.state != QUEUED:
            return
        self.ledger.started(page, e)
        writes = store.counters.get("writes", 0)
        slow = not store.is_fast(page)
        e.boost = self.heat_boost * e.conf
        store.raise_heat(page, e.boost)
        t0 = time.monotonic()
        if slow:
            self._own_loading += 1
        try:
            data = await store.page_bytes(page, promote=True)
        except OSError as exc:
            self.counters["errors"] += 1
            log.debug("prefetch of page %d failed: %s", page, exc)
            self.ledger.drop(page)
            return
        finally:
            if slow:
                self._own_loading -= 1
        if self._trace is not None:
            self._t("fetched", page, "slow" if slow else "cheap", f"{time.monotonic() - t0:.4f}")
        if slow:
            dt = time.monotonic() - t0
            self.counters["slow_fetches"] += 1
            self._fetch_s += dt
            self.address.latency_s = 0.8 * self.address.latency_s + 0.2 * dt
        else:
            self.counters["cheap_fetches"] += 1
        if self.ledger.get(page) is e:
            e.state = READY
        if e.push:
            await self._push_page(page, e, data, writes)

    async def _push_page(self, page: int, e: Entry, data: bytes | None, writes: int | None = None) -> None:
        if self.push is None:
            return
        if page in self.store.dirty or page in self.recent:
            self.counters["push_skipped"] += 1
            e.pushed = True  # the kernel most likely has it already
            return
        store = self.store
        if data is None or writes is None:
            writes = store.counters.get("writes", 0)
            try:
                data = await store.page_bytes(page, promote=False)
            except OSError:
                self.counters["errors"] += 1
                return
        t0 = time.monotonic()
        try:
            await self.push(page, data)
            if store.counters.get("writes", 0) != writes:
                # a write landed while this page was fetched or pushed: push fresh bytes
                self.counters["repushed"] += 1
                await self.push(page, await store.page_bytes(page, promote=False))
        except OSError as exc:
            self.counters["errors"] += 1
            log.debug("push of page %d failed: %s", page, exc)
            return
        e.pushed = True
        self._withdraw(page, e)  # the kernel cache has it now; the memory copy may go
        if self._trace is not None:
            self._t("pushed", page, f"{time.monotonic() - t0:.4f}")
        self.recent.add(page, time.monotonic())
        self.ledger.counts[e.space]["pushed"] += 1

    def _withdraw(self, page: int, e: Entry) -> None:
        """Take back the heat a prefetch lent a page, once it is used, pushed or given up."""
        if e.boost:
            self.store.raise_heat(page, -e.boost)
            e.boost = 0.0

    async def _housekeeping(self) -> None:
        tick = 0.25
        while True:
            t = time.monotonic()
            await trio.sleep(tick)
            now = time.monotonic()
            lag = now - t - tick
            self.loop_lag_max = max(self.loop_lag_max, lag)
            if lag > 0.005:
                if self._trace is not None:
                    self._t("lag", f"{lag:.4f}")
            self.ledger.expire(now, self._gather_ready)

    # ------------------------------------------------------------------ statistics
    def stats(self) -> dict:
        counts = self.ledger.counts
        total = {k: sum(counts[s][k] for s in SPACES) for k in counts["address"]}
        durable_reads = sum(t.counters.reads for t in self.store.durable_tiers)
        slow = self.counters["slow_fetches"]
        demand_slow = max(0, durable_reads - slow)
        avoided = max(0, total["useful"] - total["late"])

        def ratios(c: dict) -> dict:
            issued = c["issued"]
            return {
                **c,
                "accuracy": round(c["useful"] / issued, 4) if issued else None,
            }

        return {
            "predictor": self.kind,
            "ready": self.address_model.ready and self.field_model.ready,
            "issued": total["issued"],
            "useful": total["useful"],
            "late": total["late"],
            "wasted": total["wasted"],
            "pending": len(self.ledger.entries),
            "accuracy": round(total["useful"] / total["issued"], 4) if total["issued"] else None,
            "coverage": round(avoided / (avoided + demand_slow), 4) if avoided + demand_slow else None,
            "misses_avoided": avoided,
            "demand_slow_reads": demand_slow,
            "prefetch_slow_reads": slow,
            "mean_fetch_ms": round(1e3 * self._fetch_s / slow, 3) if slow else None,
            "queue": len(self._queue),
            "loop_lag_max_ms": round(self.loop_lag_max * 1e3, 3),
            "spaces": {s: ratios(counts[s]) for s in SPACES},
            "models": {"address": self.address_model.stats(), "field": self.field_model.stats()},
            "model_bytes": self.address_model.model_bytes() + self.field_model.model_bytes(),
            "learn_us": _mean_us(self.address_model, self.field_model, "learn"),
            "predict_us": _mean_us(self.address_model, self.field_model, "predict"),
            "address": self.address.stats(),
            "field": self.fieldp.stats(),
            **self.counters,
        }


def _mean_us(a: Predictor, b: Predictor, what: str) -> float:
    n = getattr(a, what + "s") + getattr(b, what + "s")
    s = getattr(a, f"_{what}_s") + getattr(b, f"_{what}_s")
    return round(1e6 * s / n, 2) if n else 0.0
