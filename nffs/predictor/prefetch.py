"""The prefetch policy: observe accesses, predict off the trio thread, fetch ahead, push.

Wiring (the daemon)::

    prefetcher = Prefetcher(store.port, layout, kind=opts.prefetch, push=ops.push_pages)
    field.point_listeners.append(prefetcher.on_points)
    ops.hint_sink = prefetcher.hint
    await nursery.start(prefetcher.run)
    ... stats()["prefetch"] = prefetcher.stats()

The predictor sees the store only through :mod:`nffs.tiers.port`.

Never blocking a demand read:

- the access and point listeners only append to one bounded queue (full: drop the
  item and count it) and wake the drain task;
- the drain task does the ledger's bookkeeping (a dict lookup per page) and hands the
  events to a worker thread (``trio.to_thread``) where learning and prediction run;
- ``concurrency`` fetch tasks take planned pages; before each fetch they yield while
  demand reads wait on a slow tier; fetches go through ``port.fetch(page, PREFETCH)``.

Never stale: a fetched page is pushed into the kernel cache only if its version did not
change between the fetch and the end of the push (else it is fetched and pushed again),
and never over a page the kernel may hold already (read, written or pushed within
``repush_after_s``: it could be dirty through mmap).
"""
from __future__ import annotations

import array
import logging
import sys
import time
from collections import deque
from typing import Awaitable, Callable, Sequence

import numpy as np
import trio

from ..arrays import fibonacci_slot, fibonacci_slots
from ..tiers.port import AccessEvent, AccessKind, FetchResult, PrefetchPort, Priority
from .address import AddressPlan, AddressPredictor
from .config import PrefetchConfig
from .fieldspace import FieldPlan, FieldPredictor
from .ledger import INFLIGHT, QUEUED, SPACES, Entry, Ledger
from .models import Predictor, make_model

log = logging.getLogger(__name__)

#: puts pages into the kernel cache: (page, bytes, marker hole or None) each, in order, in one
#: hand-off to a worker thread (a push per hop cost a run of pages a hop each). A hole is
#: (start, end) bytes within the page left for the reader's read to reach the daemon (a
#: marker). The caller hands it current bytes and it takes them in before its first
#: checkpoint; any change of a page after that must win over the push (the mount's
#: `PageCacheSync.push_pages` patches pushed bytes and stores raced writes' bytes again)
PushFn = Callable[["list[tuple[int, bytes, tuple[int, int] | None]]"], Awaitable[None]]


class RecentPages:
    """Pages the kernel may hold (read, written or pushed within ``horizon_s``).

    Never a false "no": a push over such a page could overwrite bytes an mmap writer has
    not synced yet. A false "yes" only skips a push. So: a fixed table of the latest time
    per hash bucket, 4 bytes a bucket whatever the number of pages (the LRU of page ->
    time it replaces cost ~140 B of daemon memory per page and forgot pages beyond its
    capacity, which is a false "no").
    """

    def __init__(self, buckets: int = 1 << 20, horizon_s: float = 120.0) -> None:
        self.bits = max(1, (buckets - 1).bit_length())
        self.horizon_s = horizon_s
        self._t0 = time.monotonic() - 1.0  # stored times are > 0; 0 means never
        self._shift = 64 - self.bits
        # a Python array (one read by index costs half of numpy's .item()) with a numpy
        # view of the same memory for the vectorised add_many
        self._times = array.array("f", bytes(4 << self.bits))
        self._t = np.frombuffer(self._times, dtype=np.float32)
        #: pages noted by the hot path (`pending.append`), entered at the next lookup or
        #: `flush()` with the time of the flush (later than the reads: never a false "no")
        self.pending: list[int] = []

    def flush(self) -> int:
        """Enter the pending pages; how many there were. The list is emptied in place: the
        store appends to it directly while reads skip the predictor (`log_memory_reads`)."""
        pending = self.pending
        n = len(pending)
        if n:
            pages = np.array(pending, dtype=np.int64)
            pending.clear()
            self.add_many(pages, time.monotonic())
        return n

    def _bucket(self, page: int) -> int:
        return fibonacci_slot(page, self._shift)  # consecutive pages land far apart

    def add(self, page: int, now: float) -> None:
        """One page now (the hot paths append to `pending` instead)."""
        b = self._bucket(page)
        t = now - self._t0
        times = self._times
        if t > times[b]:
            times[b] = t

    def add_many(self, pages: np.ndarray, now: float) -> None:
        if len(pages) <= 8:  # a write of a page or two: ufunc.at costs more than the loop
            for p in np.asarray(pages).tolist():
                self.add(p, now)
            return
        b = fibonacci_slots(pages, self._shift)
        np.maximum.at(self._t, b, np.float32(now - self._t0))

    def __contains__(self, page: int) -> bool:
        if self.pending:
            self.flush()
        t = self._times[self._bucket(page)]
        # float32 seconds: the slack covers their rounding
        return t > 0.0 and time.monotonic() - self._t0 - t < self.horizon_s + 1.0


class ReactionParts:
    """Where plan heads' reaction time goes, summed over the heads measured: trigger (a read
    or a batch) -> plan, plan -> fetch start, the fetch itself. Diagnostics for `stats`."""

    __slots__ = ("samples", "sums")

    def __init__(self) -> None:
        self.samples = 0
        self.sums = [0.0, 0.0, 0.0]

    def add(self, e: Entry, t_fetch: float, t_done: float) -> None:
        self.samples += 1
        for i, part in enumerate((e.t - e.head_t, t_fetch - e.t, t_done - t_fetch)):
            self.sums[i] += part

    def means_ms(self) -> list[float]:
        return [round(1e3 * x / self.samples, 3) if self.samples else 0.0 for x in self.sums]


class Prefetcher:
    def __init__(
        self,
        port: PrefetchPort,
        layout,
        *,
        kind: str = "hoeffding",
        push: PushFn | None = None,
        config: PrefetchConfig | None = None,
    ) -> None:
        self.port = port
        self.layout = layout
        self.kind = kind
        self.cfg = config or PrefetchConfig.from_env()
        self.push = push
        self.model: Predictor = make_model(kind, lazy=True)
        self.address = AddressPredictor(self.cfg, self.model, page_size=layout.page_size, params_bytes=layout.params_bytes,
                                        memory_pages=port.memory_capacity_pages())
        self.fieldp = FieldPredictor(self.cfg, layout)
        self.ledger = Ledger(self.cfg, release=self._release)
        self.ledger.on_late = self._on_late
        self.recent = RecentPages(self.cfg.recent_buckets, horizon_s=self.cfg.repush_after_s)
        self._queue: deque = deque()  # ("event", AccessEvent) | ("points", ndarray, arrival) | ("hint", ...)
        self._fetchq: deque = deque()
        self._fetch_ready: trio.Event | None = None
        self._wake: trio.Event | None = None
        self._token = None
        self._wake_pending = False
        self.counters = {"events": 0, "batches": 0, "dropped": 0, "think_calls": 0, "think_s": 0.0, "misses_quiet": 0,
                         "push_redone": 0, "fetches_inflight": 0, "cheap_skipped": 0, "small_batches": 0,
                         "field_oversized": 0, "field_frames_trimmed": 0}
        self._cheap_run = 0
        #: `_cheap_run` is past `cfg.cheap_skip_after` and the store logs reads of unplanned
        #: pages served from memory into `recent` (`log_memory_reads`)
        self._skip_memory_reads = False
        self._planned = self.ledger.entries  # page -> ledger entry: the pages the store's log watches
        self._page_size = layout.page_size
        self._reaction_parts = ReactionParts()  # address plans' heads
        self._field_reaction_parts = ReactionParts()  # field plans' fetch runs
        self._reactions: deque = deque(maxlen=self.cfg.reaction_samples)
        self._field_reactions: deque = deque(maxlen=self.cfg.reaction_samples)
        #: numbers of predicted frames whose pages were all planned (a later plan that predicts
        #: the same pages for them skips them; one cut by the budget is applied again)
        self._field_applied: set[int] = set()
        self._field_budget = self.cfg.field_page_budget
        self._field_stops_seen = 0
        self._field_judged = 0
        self._last_write = -1e9
        #: misses in a row whose early look (MISS events) planned nothing (see `_on_event`)
        self._misses_idle = 0
        port.add_listener(self._on_event, self._on_memory_read, self._on_memory_gather)

    # ------------------------------------------------------------------ listeners (any thread)
    def _enqueue(self, item, wake: bool = True) -> None:
        if len(self._queue) >= self.cfg.queue_capacity:
            self.counters["dropped"] += 1
            return
        self._queue.append(item)
        if not wake or self._token is None or self._wake_pending:
            return
        self._wake_pending = True
        try:
            on_trio = trio.lowlevel.current_trio_token() is self._token
        except RuntimeError:
            on_trio = False
        if on_trio:
            self._wake.set()
        else:
            try:
                self._token.run_sync_soon(self._set_wake)
            except trio.RunFinishedError:
                pass

    def _on_late(self, e: Entry) -> None:
        """A page demanded before its prefetch arrived: tell its stream (deepens its lead)."""
        if e.space == "address" and e.stream:
            late = self.address.late
            late[e.stream] = late.get(e.stream, 0) + 1

    def _set_wake(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def _on_memory_read(self, page: int, offset: int, size: int, reader: int) -> None:
        """A read served from memory, pages page..last (trio thread; the store's hottest
        path), as an event: `_on_event` notes its pages in `recent` at once and skips the
        predictor past a run of cheap reads. Once such a run hands the store a log
        (`_account`), reads of pages we did not plan never get here."""
        last = (offset + size - 1) // self._page_size
        n = last - page + 1
        self._on_event(AccessEvent(AccessKind.READ, list(range(page, last + 1)), [False] * n, offset, size,
                                   time.monotonic(), reader=reader))

    def _on_memory_gather(self, pages: np.ndarray) -> None:
        """A small gather served from memory (trio thread; a one-point query's path): with
        nothing of ours in flight or unused, or none of its pages planned by us, there is
        nothing to count or learn (the GATHER case of `_on_event`, without making the pages
        distinct first)."""
        if pages.size <= self.cfg.small_gather_pages:
            entries = self.ledger.entries
            if not entries or entries.keys().isdisjoint(pages.tolist()):
                self.counters["events"] += 1
                self.counters["cheap_skipped"] += 1
                return
        distinct = sorted(set(pages.tolist()))
        self._on_event(AccessEvent(AccessKind.GATHER, distinct, [False] * len(distinct), 0, 0, time.monotonic()))

    def _on_event(self, ev: AccessEvent) -> None:
        """Called by the store for every access but the reads from memory that
        `_on_memory_read` settles itself (trio thread): as little as possible here."""
        if ev.kind is AccessKind.MISS:
            # a read that waits on a slow tier, as it starts: the kernel will cache its pages
            # (never push over them); the predictor sees it now, the bookkeeping waits for its
            # answer (the READ event, announced)
            self.recent.pending.extend(ev.page_list)
            # looked at at once while misses lead somewhere; past `miss_quiet_after` misses
            # whose early look planned nothing (a random reader), with their answers: a
            # thinking round during the read's own wait cost such a reader 5 % of its time
            quiet = self._misses_idle >= self.cfg.miss_quiet_after
            self.counters["misses_quiet"] += quiet
            self._enqueue(("event", ev), wake=not quiet)
            return
        self.counters["events"] += 1
        if ev.kind is AccessKind.WRITE:
            # nothing to learn; the kernel caches what was written (never push over it) and
            # pushes wait for writes to go quiet. Done here: a wake-up of the drain task per
            # write cost about 8 % of the rate of small writes (scripts/bench_write.py)
            self._last_write = ev.time
            self.recent.pending.extend(ev.page_list)
            return
        if ev.kind is AccessKind.READ:
            # the kernel caches what it read: never push over these pages (an mmap writer
            # may dirty them), from now on, not only once the drain task gets to the event
            pages = ev.page_list
            self.recent.pending.extend(pages)
            if not ev.any_slow and not ev.announced and self._cheap_run > self.cfg.cheap_skip_after:
                entries = self.ledger.entries
                planned = pages[0] in entries if len(pages) == 1 else not entries.keys().isdisjoint(pages)
                if not planned:
                    # a run of reads served from memory that we did not prefetch: nothing to
                    # learn or count, and waking the predictor for each would cost more than
                    # the read
                    self.counters["cheap_skipped"] += 1
                    return
        elif (ev.kind is AccessKind.GATHER and not ev.any_slow and len(ev.page_list) <= self.cfg.small_gather_pages
                and self.ledger.entries.keys().isdisjoint(ev.page_list)):
            # a small lookup (single points, at/, concepts) served from memory, of pages we did
            # not plan: nothing to count, and a round trip through the learning thread per lookup
            # would cost several times the lookup itself
            self.counters["cheap_skipped"] += 1
            return
        self._enqueue(("event", ev))

    def on_points(self, points: np.ndarray) -> None:
        """A batch of query/at/concept points (field space). A huge batch is thinned to a
        fixed stride (the same points of the same-sized next batch, so the motion fit still
        pairs them) before the copy, so the caller's thread copies little."""
        self.counters["batches"] += 1
        n = len(points)
        if n < self.cfg.field_min_points:  # single lookups have no motion to learn (see FieldPredictor)
            self.counters["small_batches"] += 1
            return
        step = -(-n // self.cfg.field_max_points) if n > self.cfg.field_max_points else 1
        self._enqueue(("points", np.array(points[::step], dtype=np.float32, copy=True), time.monotonic()))

    def hint(self, what) -> None:
        """An application hint: a ``hints`` line (``page P``, ``range OFF LEN``, ``point x y z``),
        a point (ndarray of D floats, or (N, D)), or page numbers."""
        if isinstance(what, (str, bytes)):
            line = what.decode() if isinstance(what, bytes) else what
            word, _, rest = line.strip().partition(" ")
            if word == "page":
                self._enqueue(("hint", [int(rest)], True))
            elif word == "range":
                off, length = (int(v) for v in rest.split())
                ps = self.layout.page_size
                end = min(off + length, self.layout.params_bytes)
                if end > off >= 0:
                    self._enqueue(("hint", list(range(off // ps, (end - 1) // ps + 1)), True))
            elif word == "point":
                pts = np.array([float(v) for v in rest.replace(",", " ").split()], dtype=np.float32)
                self._enqueue(("hintpoints", pts))
            else:
                raise ValueError(f"unknown hint {line!r} (concepts are resolved to points by the daemon)")
        elif isinstance(what, np.ndarray) and what.dtype.kind == "f":
            self._enqueue(("hintpoints", what.astype(np.float32)))
        else:
            self._enqueue(("hint", [int(p) for p in what], True))

    # ------------------------------------------------------------------ tasks
    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        if 0 < self.cfg.gil_switch_interval_s < sys.getswitchinterval():
            # our learning thread must not hold the FUSE thread up for a whole 5 ms slice
            sys.setswitchinterval(self.cfg.gil_switch_interval_s)
        log.info("prefetcher %s running (module %s)", self.kind, __file__)
        self._token = trio.lowlevel.current_trio_token()
        self._wake = trio.Event()
        self._fetch_ready = trio.Event()
        await self._build_model()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._drain)
            for _ in range(self.cfg.concurrency):
                nursery.start_soon(self._worker)
            nursery.start_soon(self._housekeeping)
            task_status.started()
            if self._queue:
                self._wake.set()

    async def _build_model(self) -> None:
        """Load the learned model (river) before the prefetcher starts, so before the mount
        reports ready: loading it is ~0.6 s of pure Python holding the GIL, and any request
        that arrived meanwhile waited for it (a fresh mount read at once measured 0.35x of
        `--prefetch none` sequentially over MooseFS; deferred to the first quiet moment,
        it fell between two phases of a benchmark and halved the writes of the second)."""
        build = getattr(self.model, "build", None)
        if build is None or getattr(self.model, "model", None) is not None:
            return
        try:
            self.model.install(await trio.to_thread.run_sync(build))
        except Exception:  # no river: the trend detector still works
            log.exception("building the %s model", self.kind)

    async def _drain(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            self._wake_pending = False
            items = []
            while self._queue:
                items.append(self._queue.popleft())
            if not items:
                continue
            now = time.monotonic()
            keep = []
            for item in items:
                if item[0] != "event" or item[1].kind is AccessKind.MISS:
                    keep.append(item)
                elif self._account(item[1], now) or item[1].announced:
                    keep.append(item)  # (an announced read's answer: its stream waits for it)
            items = keep
            if not items:
                continue
            if all(item[0] == "event" and item[1].announced for item in items):
                # only answers to reads the predictor saw as they started: a few field updates
                # each, done here (no thinking round runs meanwhile: this task is the only one
                # that starts them). A round per answer doubled the hops of a random reader,
                # every read a miss: 5 % of its total time (docs/prefetch.md 6.0q)
                for item in items:
                    ev = item[1]
                    self.address.answered(ev.offset, ev.size, ev.time, ev.end, ev.reader)
                continue
            t0 = time.perf_counter()
            results = await trio.to_thread.run_sync(self._think, items)
            self.counters["think_calls"] += 1
            self.counters["think_s"] += time.perf_counter() - t0
            if any(space == "address" and plan.pages for space, plan in results):
                self._misses_idle = 0
            else:
                self._misses_idle += sum(1 for item in items if item[0] == "event" and item[1].kind is AccessKind.MISS)
            try:
                self._apply(results, time.monotonic())
            except Exception:  # a bug here must not take the mount down: log it, go on
                log.exception("applying prefetch plans failed")
            if self.cfg.think_interval_s > 0 and any(item[0] == "event" for item in items):
                # let events gather: one thinking round per interval at most, so a reader
                # going faster than a thread hop pays one hop per batch, not one per read.
                # (Not after a round of query batches only: they come a frame apart, and a
                # camera's plan waiting out the interval reached its pages later)
                await trio.sleep(self.cfg.think_interval_s)

    def _account(self, ev: AccessEvent, now: float) -> bool:
        """Demand bookkeeping for one access event (trio thread; a dict lookup per page).
        Returns whether the predictor should see the event."""
        space = "address" if ev.kind == AccessKind.READ else "field"
        pages = ev.page_list
        slow = ev.slow_list
        if len(slow) != len(pages):
            slow = [False] * len(pages)
        interesting = ev.any_slow
        if len(pages) > 64 and ev.kind != AccessKind.READ:
            # a big gather: only pages the ledger knows (or, when slow, recently counted
            # useful) need a look one by one; the other slow ones are plain demand misses.
            # One dict lookup per page: building sets of the ledger per gather costs more.
            entries, recent_useful = self.ledger.entries, self.ledger.recent_useful
            passed_arrivals = self.ledger.passed_arrivals
            kept_pages: list[int] = []
            kept_slow: list[bool] = []
            misses = 0
            for p, s in zip(pages, slow):
                if p in entries or (s and (p in recent_useful or p in passed_arrivals)):
                    kept_pages.append(p)
                    kept_slow.append(s)
                elif s:
                    misses += 1
            self.ledger.counts[space]["demand_misses"] += misses
            pages, slow = kept_pages, kept_slow
        for p, s in zip(pages, slow):
            if p in self.ledger.entries:
                interesting = True
            self.ledger.demand(p, s, space, ev.time)  # (read pages went to `recent` in the listener)
        if ev.kind != AccessKind.READ:
            return False
        if interesting:
            self._cheap_run = 0
            if self._skip_memory_reads:
                self._skip_memory_reads = False
                self.port.log_memory_reads(None)
            return True
        self._cheap_run += 1
        if self._cheap_run > self.cfg.cheap_skip_after:
            if not self._skip_memory_reads:
                # from now on the store only notes such reads' pages in `recent` (no call per
                # read) until one touches a planned page, which it reports as before
                self._skip_memory_reads = True
                self.port.log_memory_reads(self.recent.pending, self._planned)
            self.counters["cheap_skipped"] += 1
            return False
        return True

    def _think(self, items: list) -> list:
        """Learning and prediction (worker thread)."""
        out = []
        for item in items:
            try:
                if item[0] == "event":
                    ev: AccessEvent = item[1]
                    if ev.kind is AccessKind.MISS:
                        for plan in self.address.observe(ev.offset, ev.size, ev.time or None, answered=False,
                                                         reader=ev.reader):
                            out.append(("address", plan))
                    elif ev.kind is AccessKind.READ and ev.announced:
                        self.address.answered(ev.offset, ev.size, ev.time, ev.end, ev.reader)
                    elif ev.kind is AccessKind.READ:
                        for plan in self.address.observe(ev.offset, ev.size, ev.time or None, ev.end or None,
                                                         reader=ev.reader):
                            out.append(("address", plan))
                elif item[0] == "points":
                    plan = self.fieldp.observe(item[1], item[2])
                    if plan is not None:
                        out.append(("field", plan))
                elif item[0] == "hintpoints":
                    out.append(("hint", (self.fieldp.point_pages(item[1]).tolist(), False)))
                elif item[0] == "hint":
                    out.append(("hint", (item[1], item[2])))
            except Exception:
                log.exception("prefetch prediction failed")
        return out

    def _apply(self, results: list, now: float) -> None:
        added = 0
        for space, plan in results:
            if space == "address":
                p: AddressPlan = plan
                for page in p.consumed:
                    self.ledger.passed(page)
                cheap = self._cheap(p.pages)
                head = True
                for page, is_cheap in zip(p.pages, cheap):
                    if is_cheap:
                        continue
                    e = self.ledger.plan(page, "address", push=p.push, marker=page in p.markers, now=now,
                                         stream=p.stream, conf=p.confidence, hole=p.markers.get(page),
                                         unsure=page in p.unsure)
                    if e is not None and e.state == QUEUED:
                        if head:  # the plan's first page measures the reaction time
                            e.head_t = p.t_event or now
                            head = False
                        self._fetchq.append(page)
                        added += 1
            elif space == "field":
                fp: FieldPlan = plan
                # the frame read and the frames planned must fit memory together, or prefetches
                # evict the frame's own pages and each other: as many frames ahead as fit, and
                # none (do no harm) when not even the next one does
                room = self.cfg.field_memory_fraction * self.port.memory_capacity_pages()
                fitting = sum(1 for h in fp.held if h <= room)  # (held grows frame by frame)
                if fitting == 0:
                    self.counters["field_oversized"] += 1
                    continue
                if fitting < len(fp.frames):
                    self.counters["field_frames_trimmed"] += 1
                    fp.frames = fp.frames[:fitting]
                    fp.fresh = fp.fresh[:fitting]
                budget = self._field_budget_now()
                fresh_flags = fp.fresh if len(fp.fresh) == len(fp.frames) else [True] * len(fp.frames)
                applied = self._field_applied
                for i, (frame, fresh) in enumerate(zip(fp.frames, fresh_flags)):
                    number = fp.first + i
                    if not fresh and number in applied:  # the same pages, all planned before
                        continue
                    # a frame names ~a thousand pages, nearly all in memory already: only the
                    # others are looked at one by one
                    pages = np.asarray(frame, dtype=np.int64)
                    whole = True
                    new: list[int] = []
                    for page in pages[~np.asarray(self.port.cheap_mask(pages), dtype=bool)].tolist():
                        if budget <= 0:
                            whole = False
                            break
                        e = self.ledger.plan(page, "field", push=False, marker=False, now=now)
                        if e is None:  # known already
                            continue
                        budget -= 1
                        if e.state == QUEUED:
                            e.head_t = fp.t_batch  # the reaction time runs from the batch's arrival
                            new.append(page)
                    if i == 0:
                        # the next frame's pages that earlier plans did not foresee: the most
                        # urgent, fetched before the farther frames' pages queued earlier
                        self._fetchq.extendleft(reversed(new))
                    else:
                        self._fetchq.extend(new)
                    added += len(new)
                    if whole:
                        applied.add(number)
                # frames already asked for are forgotten (their numbers only grow)
                self._field_applied = {n for n in applied if n >= fp.first}
            else:
                pages, push = plan
                for page in pages:
                    if 0 <= page < self.port.n_pages and not self.port.is_cheap(page):
                        e = self.ledger.plan(page, "hint", push=push, marker=False, now=now)
                        if e is not None:
                            self._fetchq.appendleft(page)
                            added += 1
        while len(self._fetchq) > self.cfg.max_queued:
            old = self._fetchq.popleft()
            e = self.ledger.entries.get(old)
            if e is not None and e.state == QUEUED:
                self.ledger.not_issued(old, e, "cancelled")
        if added:
            self._fetch_ready.set()

    def _field_budget_now(self) -> int:
        """Pages the field space may plan per batch. Its predictions can be right and still
        not pay: a frame whose pages outgrow the memory tier evicts what it prefetched, and a
        tier busy with the frame's own misses delivers prefetches late. The controller then
        stops the space, and its shadow predictions (right) resume it — an oscillation that
        costs a burst of wasted fetches each time. So each stop quarters the budget (down to
        ``field_budget_min``) and a full window of outcomes at ``resume_accuracy`` or better
        doubles it (up to ``field_page_budget``): depth follows measured waste."""
        c = self.ledger.control["field"]
        cfg = self.cfg
        if c.stops > self._field_stops_seen:
            self._field_stops_seen = c.stops
            self._field_budget = max(cfg.field_budget_min, self._field_budget // 4)
            self._field_judged = self._field_outcomes()
            log.info("field prefetch stopped (%d): budget %d pages per batch", c.stops, self._field_budget)
        elif (c.active and self._field_budget < cfg.field_page_budget
              and self._field_outcomes() - self._field_judged >= cfg.feedback_window
              and c.accuracy() >= cfg.resume_accuracy):
            self._field_judged = self._field_outcomes()
            self._field_budget = min(cfg.field_page_budget, 2 * self._field_budget)
        return self._field_budget

    def _field_outcomes(self) -> int:
        k = self.ledger.counts["field"]
        return k["useful"] + k["late"] + k["wasted"]

    def _cheap(self, pages: Sequence[int]) -> list[bool]:
        if not len(pages):
            return []
        return np.asarray(self.port.cheap_mask(np.asarray(pages, dtype=np.int64)), dtype=bool).tolist()

    async def _worker(self) -> None:
        while True:
            try:
                await self._work()
            except Exception:  # never take the mount down: log, and keep serving
                log.exception("prefetch worker failed")
                await trio.sleep(0.1)

    async def _work(self) -> None:
        cfg = self.cfg
        while True:
            if not self._fetchq:
                if self._fetch_ready.is_set():
                    self._fetch_ready = trio.Event()
                await self._fetch_ready.wait()
                continue
            # tier load: while demand waits on a slow tier, only a few prefetches stay in
            # flight. Waited out before a page leaves the queue: workers that each took one
            # page and then waited took a plan apart — the pages after a 16-page run went as
            # eight fetches of one page, in whatever order their workers woke (the reader's
            # next page last: a miss at its plan's end, docs/prefetch.md 6.0z)
            waited = 0.0
            limit = max(1, int(cfg.concurrency * cfg.load_depth_factor))
            while (self.port.demand_waiting() > 0 and self.counters["fetches_inflight"] >= limit
                   and waited < cfg.demand_yield_max_s):
                await trio.sleep(cfg.demand_yield_s)
                waited += cfg.demand_yield_s
            if not self._fetchq:
                continue
            page = self._fetchq.popleft()
            e = self.ledger.entries.get(page)
            if e is None or e.state != QUEUED:
                continue
            if self.port.is_cheap(page):
                self.ledger.not_issued(page, e, "cheap")
                continue
            run = self._take_run(page, e)  # (in flight from here)
            self.counters["fetches_inflight"] += len(run)  # pages: the tier-load limit counts pages
            try:
                t_fetch = time.monotonic()
                if len(run) == 1:
                    results: list[FetchResult | None] = [await self.port.fetch(page, Priority.PREFETCH)]
                else:  # one read of ascending slots, the results back in the reader's order
                    got = await self.port.fetch_many(sorted(p for p, _ in run), Priority.PREFETCH)
                    by_page = {r.page: r for r in got}
                    results = [by_page.get(p) for p, _ in run]
                # the reaction time sizes address-space windows: measured on their fetches only
                # (a field batch of 16 scattered pages says nothing about a stream's plan head)
                # (not on a fetch it joined: the rest of another read says nothing of the reaction)
                if any(r is not None and r.from_slow_tier and not r.joined for r in results):
                    if e.space == "address":
                        self._note_latency(e, t_fetch, time.monotonic())
                    elif e.space == "field" and e.head_t:
                        t_done = time.monotonic()
                        self._field_reaction_parts.add(e, t_fetch, t_done)
                        self._note_field_reaction(t_done - e.head_t)
            except Exception:
                log.debug("prefetch of pages %s failed", [p for p, _ in run], exc_info=True)
                results = [None] * len(run)
            finally:
                self.counters["fetches_inflight"] -= len(run)
            to_push: list[tuple[int, Entry, bytes, int]] = []
            for (p, x), res in zip(run, results):
                if res is None or res.data is None:
                    self.ledger.not_issued(p, x, "failed")
                    continue
                if res.joined:
                    self.ledger.not_issued(p, x, "joined")
                    continue
                if not res.from_slow_tier:
                    self.ledger.not_issued(p, x, "cheap")
                    continue
                self.ledger.issued(p, x)
                try:
                    self.port.lend_heat(p, cfg.heat_boost * x.conf)
                    x.heat = cfg.heat_boost * x.conf
                except Exception:
                    pass
                if (x.push and (not x.marker or x.hole is not None) and self.push is not None
                        and self.ledger.entries.get(p) is x):
                    to_push.append((p, x, res.data, res.version))
                else:
                    self.ledger.arrived(p, x, time.monotonic())
            try:
                await self._push_run(to_push)
            finally:  # a failed or cancelled push must not leave the rest INFLIGHT for ever
                for p, x, _, _ in to_push:
                    if x.state == INFLIGHT:
                        self.ledger.arrived(p, x, time.monotonic())

    def _take_run(self, page: int, e: Entry) -> list[tuple[int, Entry]]:
        """The page and the queued pages right after it that continue it in one direction,
        one page at a time or over gaps of up to ``fetch_run_gap_pages`` (a stream's window,
        forward or backward, planned together: a stride's pages), in the reader's order —
        or, for the field space, the next queued pages of the predicted frames, wherever
        they are (scattered by the hash, all wanted by the same frames: a camera bringing
        20-40 new pages per frame outran 16 slots of one page): fetched as one run, one I/O
        and one slot instead of one per page (``fetch_run_pages`` and ``fetch_run_bytes`` at
        most). Every page taken is marked in flight at once: a page can sit in the queue
        twice (demanded, then planned again), and its second copy ends the run."""
        run = [(page, e)]
        e.state = INFLIGHT
        q = self._fetchq
        anywhere = e.space == "field"
        gap = max(0, self.cfg.fetch_run_gap_pages)  # missing pages a run may bridge
        sign = 0
        max_pages = max(1, min(self.cfg.fetch_run_pages, self.cfg.fetch_run_bytes // self.port.page_size))
        while q and len(run) < max_pages:
            nxt = q[0]
            d = nxt - run[-1][0]
            if not anywhere and (d == 0 or abs(d) > gap + 1 or (sign and (d > 0) != (sign > 0))):
                break
            x = self.ledger.entries.get(nxt)
            if x is None or x.state != QUEUED or x.space != e.space or x.push != e.push:
                break
            if not anywhere and x.stream != e.stream:
                break
            if self.port.is_cheap(nxt):
                break
            q.popleft()
            x.state = INFLIGHT
            sign = d
            run.append((nxt, x))
        return run

    def _note_field_reaction(self, dt: float) -> None:
        """A field plan's reaction time (a batch's arrival to a page of its plan landing, as the
        run's first page saw it): a high quantile of the last few (`field_reaction_quantile`)
        sets how many frames ahead the field predictor plans (`FieldPredictor._frames_ahead`)."""
        if dt <= 0:
            return
        self._field_reactions.append(dt)
        ordered = sorted(self._field_reactions)
        q = min(1.0, max(0.0, self.cfg.field_reaction_quantile))
        self.fieldp.reaction_s = ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def _note_latency(self, e: Entry, t_fetch: float, t_done: float) -> None:
        """The reaction time a stream's lead must cover: from the read that triggered a plan to
        the arrival of the plan's first page (event delivery, thinking, queueing and the slow
        read). Only plan heads are sampled: the later pages of a window wait behind it but are
        needed later too, and counting their wait would deepen windows that are on time.
        Until a head has been measured, the fetch's own duration stands in. The estimate is
        the median of the last ``reaction_samples``: a loaded machine's one-off 50 ms fetch
        must not deepen every window for a while (real, lasting lateness raises the boost)."""
        if e.head_t:
            dt = t_done - e.head_t
            self._reaction_parts.add(e, t_fetch, t_done)
        elif self._reaction_parts.samples:
            return
        else:
            dt = t_done - t_fetch
        if dt <= 0:
            return
        self._reactions.append(dt)
        ordered = sorted(self._reactions)  # a median of ~15 floats: np.median costs 20 us here
        mid = len(ordered) // 2
        self.address.fetch_latency_s = ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2

    def _push_blocked(self, page: int) -> bool:
        """No push now: the kernel may hold bytes of its own for the page (read or written
        lately: `recent`), or writes have not gone quiet (`write_quiet_s`)."""
        return page in self.recent or time.monotonic() - self._last_write < self.cfg.write_quiet_s

    async def _push_run(self, run: list[tuple[int, Entry, bytes, int]]) -> None:
        """Push a fetched run's pages into the kernel cache, in the reader's order, in one
        hand-off to a worker thread, and mark them arrived; each page checked as
        :meth:`_push` does, before and after. The pages land one after the other within
        microseconds: one hop per page (as before) cost a run of four pages four hops, each
        1-5 ms on a loaded two-CPU machine, the last page arriving ~10 ms after the first
        (docs/prefetch.md 6.0p)."""
        if not run or self.push is None:
            return
        # right before the push, with no checkpoint until `push` has registered it (from then
        # on a write patches the pushed bytes): the page may have changed since the fetch, the
        # kernel may have read (and an mmap writer dirtied) it meanwhile, or a write come
        ready: list[tuple[int, Entry, bytes, int]] = []
        changed: list[tuple[int, Entry, bytes, int]] = []
        for page, e, data, version in run:
            if self.port.page_version(page) != version:
                changed.append((page, e, data, version))
            elif self._push_blocked(page):
                self.ledger.counts[e.space]["push_skipped"] += 1
                self.ledger.arrived(page, e, time.monotonic())
            else:
                ready.append((page, e, data, version))
        if ready:
            await self.push([(page, data, e.hole) for page, e, data, _ in ready])
        now = time.monotonic()
        for page, e, data, version in ready:
            self.recent.add(page, now)
            if self.port.page_version(page) == version:
                e.pushed = True
                self.ledger.counts[e.space]["pushed"] += 1
            else:
                # changed during the push: the mount's push patched its bytes, but a push that
                # does not (a test's) may have left the old ones: push the new bytes
                await self._push(page, e, data, version, pushed_once=True)
            self.ledger.arrived(page, e, time.monotonic())
        for page, e, data, version in changed:
            await self._push(page, e, data, version)  # changed since the fetch: the slow way
            self.ledger.arrived(page, e, time.monotonic())

    async def _push(self, page: int, e: Entry, data: bytes, version: int, pushed_once: bool = False) -> None:
        """Push the page into the kernel cache, never leaving older bytes than the store's
        (`pushed_once`: older bytes of ours may be there already, which only a push of the
        new ones puts right)."""
        c = self.ledger.counts[e.space]
        if not pushed_once and self._push_blocked(page):
            c["push_skipped"] += 1
            return
        for _ in range(8):
            if self.port.page_version(page) != version:
                # changed: fetch the new bytes at once (demand class: a stale copy may be in
                # the kernel cache until this push lands)
                self.counters["push_redone"] += 1
                res = await self.port.fetch(page, Priority.DEMAND)
                if res.data is None:
                    return
                data, version = res.data, res.version
                continue
            # read or written while we fetched: the kernel may hold bytes of its own. Not
            # once our push landed: then the kernel holds ours, which the change made stale,
            # and only the new bytes put that right
            if not pushed_once and page in self.recent:
                c["push_skipped"] += 1
                return
            await self.push([(page, data, e.hole)])
            pushed_once = True
            self.recent.add(page, time.monotonic())
            if self.port.page_version(page) == version:
                e.pushed = True
                c["pushed"] += 1
                return
            # changed during the push: the kernel may hold the old bytes; push the new ones
        log.warning("page %d kept changing while being pushed", page)

    def _release(self, page: int, e: Entry) -> None:
        if e.heat:
            try:
                self.port.lend_heat(page, -e.heat)
            except Exception:
                pass
            e.heat = 0.0

    async def _housekeeping(self) -> None:
        while True:
            await trio.sleep(0.5)
            self.recent.flush()  # bounds `recent.pending` by half a second of reads
            try:
                self.ledger.expire(time.monotonic(), self.port.is_cheap)
            except Exception:
                log.exception("prefetch ledger expiry failed")

    # ------------------------------------------------------------------ statistics
    def stats(self) -> dict:
        self.recent.flush()
        skipped_reads = self.port.logged_memory_reads()  # memory reads that skipped the predictor
        spaces = {s: self.ledger.summary(s) for s in SPACES}
        total = {k: sum(spaces[s][k] for s in SPACES)
                 for k in ("issued", "useful", "late", "wasted", "pending", "demand_misses", "pushed")}
        resolved = total["issued"] - total["pending"]
        without = total["useful"] + total["late"] + total["demand_misses"]
        m = self.model.stats()
        think = self.counters["think_calls"]
        return {
            "predictor": self.kind,
            "ready": bool(getattr(self.model, "ready", True)),
            **total,
            "prefetch_slow_reads": total["issued"],
            # SPEC 5: useful / issued, pending pages (fetched, not yet demanded) count against it
            "accuracy": round(total["useful"] / total["issued"], 4) if total["issued"] else None,
            # the same over the prefetches whose outcome is known (pending ones left out)
            "accuracy_resolved": round(total["useful"] / resolved, 4) if resolved > 0 else None,
            "coverage": round(total["useful"] / without, 4) if without else None,
            "timeliness": round(total["useful"] / (total["useful"] + total["late"]), 4) if total["useful"] + total["late"] else None,
            "model_bytes": m.get("model_bytes", 0),
            "learn_us": m.get("learn_us", 0.0),
            "predict_us": round((self.address.predict_s + self.fieldp.predict_s) * 1e6
                                / max(1, self.address.predicts + self.fieldp.predicts), 2),
            "spaces": spaces,
            "model": m,
            "address_model": self.address.stats(),
            "field_model": self.fieldp.stats(),
            "queue": len(self._queue),
            "queued_fetches": len(self._fetchq),
            "fetches_inflight": self.counters["fetches_inflight"],
            "dropped": self.counters["dropped"],
            "events": self.counters["events"] + skipped_reads,
            "batches": self.counters["batches"],
            "think_mean_ms": round(1e3 * self.counters["think_s"] / think, 3) if think else 0.0,
            #: misses looked at with their answers, not as they started (`miss_quiet_after`)
            "misses_quiet": self.counters["misses_quiet"],
            "push_redone": self.counters["push_redone"],
            "cheap_skipped": self.counters["cheap_skipped"] + skipped_reads,
            "field_budget": self._field_budget,
            # predicted frames not prefetched because they touch more than memory can hold
            "field_oversized": self.counters["field_oversized"],
            # plans cut to the frames ahead that fit memory with the frame being read
            "field_frames_trimmed": self.counters["field_frames_trimmed"],
            # mean reaction time of plan heads split: trigger read -> plan, plan -> fetch, fetch
            "reaction_parts_ms": self._reaction_parts.means_ms(),
            # ... and of field plans' fetch runs: batch -> plan, plan -> fetch start, fetch
            "field_reaction_parts_ms": self._field_reaction_parts.means_ms(),
            "slow_tier_reads": self.port.slow_tier_reads(),
        }
