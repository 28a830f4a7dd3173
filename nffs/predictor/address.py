"""Address-space prediction: per-stream trend detection over READ events, readahead-style windows.

Input: the byte ``offset`` and ``size`` of every read of ``params``/``levels`` that
reached the daemon (a kernel page-cache miss). Output: :class:`AddressPlan`s — pages to
fetch (and push into the kernel cache), in the order the reader will want them.

How (docs/prefetch.md has the pictures):

- **Streams.** A read that lies on an existing stream's trend (near its position or
  on its lattice of predicted positions) belongs to it. Other reads are *orphans*; three
  orphans in arithmetic progression (within the kernel's 4 KiB alignment) or two
  contiguous ones start a stream, whatever the distance between interleaved readers.
- **Majority vote** (Leap): each stream keeps its last ``vote_window`` deltas; a delta
  is a *contiguity token* (this read starts where the last ended, forward or backward —
  kernel readahead and mmap faults make contiguous requests of varying sizes) or a byte
  delta. Deltas within one alignment quantum of each other vote together, so a stride
  that is not a multiple of the page size (whose page-aligned requests alternate
  deltas 4K, 8K, 4K, ...) still forms a majority. A trend holds when one class has a
  strict majority of at least ``min_votes`` deltas; otherwise nothing is issued from it.
- **Readahead window.** A confirmed trend plans ``ra_initial_steps`` steps ahead; one
  page of the plan (the *marker*, like Linux's PG_readahead) is fetched but not pushed
  (a contiguous stream's marker is pushed but for a *hole*, the 4 KiB kernel page where
  its reader enters it), so that the reader's arrival there reaches the daemon (as a
  read of 4 KiB from memory, with a hole, not of a whole page): that read confirms the trend,
  measures the reader's speed and plans further. The window then is a *lead* (speed x
  measured reaction time x margin) and a *chunk*, planned a chunk at a time with a
  marker per chunk (``markers_per_lead``), within ``ra_max_steps`` / ``ra_max_bytes`` /
  ``ra_max_pages``. Pages of steps the reader has passed are reported *consumed*.
- **Learned deltas.** When no majority holds, the learned model (``markov`` successor
  counts or river's Hoeffding tree) predicts the next delta class from the last
  ``model_history`` classes; above ``model_min_proba`` it chains up to ``model_steps``
  predictions (alternating strides, repeated trace fragments).

This module is pure computation (no I/O, no trio): it runs in the learning thread.
"""
from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from .config import PrefetchConfig
from .models import Predictor

#: the kernel reads FUSE files in 4 KiB pages: request offsets are quantised to it
QUANTUM = 4096
FWD, BWD = "+", "-"  # contiguity tokens
#: a bound on the steps past a plan looked at for its drift pages' owners (the loop stops
#: when a step lies beyond them: a drift is at most half a page, a few steps of any stride)
MAX_STEPS_BEYOND = 64


@dataclass
class AddressPlan:
    stream: int
    pages: list[int] = field(default_factory=list)  # to fetch, in order
    #: marker pages: fetched, pushed but for a hole, (start, end) bytes within the page, that
    #: the reader's first read of the page touches; None: not pushed at all (the hole would
    #: be the whole page)
    markers: dict[int, tuple[int, int] | None] = field(default_factory=dict)
    consumed: list[int] = field(default_factory=list)  # planned pages the reader has passed
    #: pages planned only for the stride's drift (`AddressPredictor._extend`): the reader may
    #: never touch them, so passing them by says nothing of their use
    unsure: set[int] = field(default_factory=set)
    source: str = "trend"  # "trend" or "model"
    #: pushed into the kernel cache as they arrive (False: fetched into memory for the
    #: kernel's own read-ahead to find, see PrefetchConfig.kernel_readahead_page_bytes)
    push: bool = True
    confidence: float = 1.0
    #: time of the read that triggered the plan: the reaction time (trigger to the arrival of
    #: the plan's first page) is what the stream's lead must cover
    t_event: float = 0.0


class Stream:
    __slots__ = ("id", "last_off", "last_end", "last_size", "deltas", "sizes", "steps", "anchor",
                 "frontier", "planned", "markers", "chunk", "t", "classes", "chain", "trend", "unit", "hits", "rate",
                 "boost", "late_seen", "sized", "phases", "seen", "kernel_led", "progression", "whole_markers",
                 "t_done", "gaps", "services", "holes_passed", "base", "base_end", "reader", "waited",
                 "stride_samples", "exact", "awaiting")

    def __init__(self, sid: int, off: int, end: int, now: float, window: int, markers_per_lead: int,
                 reader: int = 0) -> None:
        self.id = sid
        #: the open file its reads came through (`AccessEvent.reader`): reads of another one
        #: join it only on one of its markers, and never found or grow it
        self.reader = reader
        self.last_off = off
        self.last_end = end
        self.last_size = end - off
        self.deltas: deque = deque(maxlen=window)  # tokens: FWD / BWD / int byte delta
        self.sizes: deque = deque(maxlen=window)
        self.steps = 0  # readahead window, in trend steps: a lead and a chunk
        self.chunk = 1  # trend steps between markers (a lead / markers_per_lead)
        self.anchor = off  # byte offset of step 0 of the current plan
        self.frontier = 0  # last planned step (relative to anchor)
        self.planned: deque = deque()  # (step, [pages]) not yet passed
        #: (step, page, holed) of the markers planned and not yet reached, in the reader's
        #: order; holed: pushed but for a hole
        self.markers: deque = deque()
        #: markers' holes passed by (section "marker holes" of docs/prefetch.md): the stream
        #: only looked contiguous — the kernel's read-ahead had filled its gaps — and its reader
        #: skips bytes. At `holes_passed_for_whole_markers` its markers are no longer pushed at
        #: all (one alone can be a marker that was never pushed: found in memory already, or
        #: its push skipped); a new trend starts over
        self.holes_passed = 0
        self.whole_markers = False
        #: seconds its reads have waited on a slow tier so far (misses and late prefetches,
        #: told as they start and answered): the reader's own pace leaves them out
        self.waited = 0.0
        #: (time, offset, waited) of the latest marker hits: the reader's speed is measured from the
        #: oldest to the newest hit, about a lead (a single chunk is too short a baseline)
        self.hits: deque = deque(maxlen=markers_per_lead)
        self.rate = 0.0  # bytes/s the reader advances (measured between marker hits)
        self.boost = 1.0  # lead multiplier from measured lateness (1: none seen)
        self.late_seen = 0  # this stream's late count at the last marker hit
        self.sized = False  # the current window was sized from the measured speed (ramp over)
        #: offsets of the reads within one step: (0,) for a plain trend; a periodic trend
        #: (strides a, b, a, b, ...: step a + b) has (0, a) — the lag-p vote below
        self.phases: tuple[float, ...] = (0.0,)
        self.unit = 1  # trend steps per window unit (a step smaller than a page: a page's worth)
        self.t = now
        #: when the last read was answered, the reader's gaps between an answer and its next
        #: request, and how long its requests took: before a trend holds, its reads are
        #: misses, and their pace says nothing of the reader's own
        #: (`AddressPredictor._size_from_founding_reads`)
        self.t_done = now
        self.gaps: deque = deque(maxlen=window)
        self.services: deque = deque(maxlen=window)
        self.classes: deque = deque(maxlen=8)  # delta classes for the model
        self.chain: list[tuple[int, str]] = []  # (offset, class) predicted by the model, pending
        self.trend: tuple | None = None  # (token, step bytes, extent bytes)
        #: steps of baseline the trend's byte stride was measured over: request offsets are
        #: the reads' offsets rounded down to 4 KiB, so the stride errs by under 4 KiB / base
        #: per step (0: no such error to allow for — a contiguity token, a periodic trend)
        self.base = 0
        #: ... and the step (from the anchor) where that baseline ends: the stride's error
        #: grows from there, by under 4 KiB / base per step
        self.base_end = 0
        #: the latest stride estimates from single reads (offset from the anchor / steps, and
        #: those steps): the stride is their median (`AddressPredictor._advance`)
        self.stride_samples: deque = deque(maxlen=3)
        #: a stride of whole 4 KiB blocks that every read so far has followed to the byte
        #: (identical deltas): planned without drift pages until a read strays off it
        self.exact = False
        self.seen = 0  # the predictor's event count at this stream's last read
        #: the kernel's read-ahead follows this stream: its pages are fetched, not pushed
        #: (PrefetchConfig.kernel_readahead_page_bytes)
        self.kernel_led = False
        #: founded on three recent reads in arithmetic progression: its first trend needs
        #: only PrefetchConfig.min_votes_progression votes
        self.progression = False
        #: its latest read was a miss not answered yet: a contiguous request asked for
        #: meanwhile is another part of that read (the kernel splits a read, and adds its
        #: read-around, as requests at once), not its reader's next one
        self.awaiting = False

    def note_answer(self, start: float, done: float | None) -> None:
        """A read of the stream, requested at `start` and answered at `done` (None: not yet, a
        miss told as it starts; :meth:`AddressPredictor.answered` completes it): its gap after
        the previous answer and its service time."""
        self.gaps.append(max(0.0, start - self.t_done))
        if done is None:
            self.t_done = start
            return
        self.services.append(done - start)
        self.t_done = done


def _whole_steps(x: float) -> int:
    """Steps to cover `x` steps' worth, less a hair: a speed measured in floats as
    40.0000001 steps per reaction time is 40 steps, not 41."""
    return math.ceil(x - 1e-6)


def _close(a, b, tol: int) -> bool:
    if isinstance(a, str) or isinstance(b, str):
        return a == b
    return abs(a - b) <= tol


def majority(tokens, tol: int = QUANTUM):
    """The token class holding a strict majority of ``tokens`` (within ``tol`` bytes), and its votes.

    Boyer-Moore's vote finds the only possible candidate in one pass; a second pass counts it.
    """
    cand, count = None, 0
    for t in tokens:
        if count == 0:
            cand, count = t, 1
        elif _close(t, cand, tol):
            count += 1
        else:
            count -= 1
    if cand is None:
        return None, 0
    votes = [t for t in tokens if _close(t, cand, tol)]
    if 2 * len(votes) <= len(tokens):
        return None, len(votes)
    if isinstance(cand, str):
        return cand, len(votes)
    return sum(votes) / len(votes), len(votes)


class AddressPredictor:
    def __init__(self, cfg: PrefetchConfig, model: Predictor, *, page_size: int, params_bytes: int,
                 memory_pages: int = 1 << 40) -> None:
        self.cfg = cfg
        self.model = model
        self.page_size = page_size
        self.params_bytes = params_bytes
        #: pages the memory tiers hold (bounds every window, ``ra_max_memory_fraction``)
        self.memory_pages = memory_pages
        self.n_pages = (params_bytes + page_size - 1) // page_size
        self.streams: OrderedDict[int, Stream] = OrderedDict()
        self.orphans: deque = deque(maxlen=16)  # (off, end, t, t_done or None: not answered yet, reader)
        self._next_id = 1
        self.vocab: OrderedDict = OrderedDict()  # delta class -> count (bounded)
        self.counters = {"events": 0, "orphans": 0, "streams_started": 0, "trend_plans": 0, "model_plans": 0,
                         "marker_hits": 0, "model_hits": 0, "holes_passed": 0, "founding_sized": 0,
                         "kernel_led": 0, "pushed_again": 0, "hole_skippers": 0}
        self.predict_s = 0.0
        self.predicts = 0
        #: measured reaction time (set by the policy): from the read that triggers a plan to
        #: the arrival of that plan's first page; the lead a stream needs is its speed x this
        self.fetch_latency_s = 0.0
        #: late prefetches per stream (incremented by the policy on the trio thread: a plain
        #: int += under the GIL; read at marker hits in the learning thread)
        self.late: dict[int, int] = {}
        #: open files (readers) seen skipping marker holes (a stream's own holes passed,
        #: `Stream.whole_markers`, or windows run out of past them, `_note_overrun`): their
        #: forward streams are kernel-led from then on (`_note_hole_skipper`); bounded
        self.hole_skippers: OrderedDict[int, None] = OrderedDict()
        #: reader -> windows it ran out of past holed markers (`_note_overrun`)
        self._overruns: dict[int, int] = {}

    # ------------------------------------------------------------------ helpers
    def _pages(self, lo: float, hi: float) -> list[int]:
        lo = max(0, int(lo))
        hi = min(self.params_bytes, int(hi))
        if hi <= lo:
            return []
        return list(range(lo // self.page_size, (hi - 1) // self.page_size + 1))

    def _cls(self, token) -> str:
        """A delta's class for the model: contiguity tokens, or the byte delta (bounded vocabulary)."""
        label = token if isinstance(token, str) else str(int(token))
        if label in self.vocab:
            self.vocab[label] += 1
            self.vocab.move_to_end(label)
        else:
            self.vocab[label] = 1
            if len(self.vocab) > self.cfg.model_classes:
                self.vocab.popitem(last=False)
        return label

    def _features(self, s: Stream) -> dict:
        h = list(s.classes)[-self.cfg.model_history:]
        x = {}
        for i in range(self.cfg.model_history):
            x[f"c{i + 1}"] = h[-1 - i] if i < len(h) else "_"
        return x

    def _cap_steps(self, step: float, extent: int) -> int:
        """The window's limit in trend steps: ra_max_steps window units, bytes fetched and
        pages ahead."""
        c = self.cfg
        unit = max(1, math.ceil(self.page_size / max(1, abs(step))))
        if abs(step) < self.page_size:
            pages_per_step = 1.0 / unit
        elif extent >= abs(step):  # a contiguous stream: each step is its own whole pages
            pages_per_step = abs(step) / self.page_size
        else:  # a stride: the pages of one read, which may straddle a page boundary
            pages_per_step = max(1.0, (min(abs(step), extent) + extent) / self.page_size)
        # bytes fetched, not bytes of address space passed: a stride of 2 MiB over 1 MiB
        # pages fetches half of what it passes (capped by its span, 16 steps of a window that
        # needed 25, it was late every fifth step)
        by_bytes = int(c.ra_max_bytes // max(1.0, min(abs(step), pages_per_step * self.page_size)))
        max_pages = min(c.ra_max_pages, max(2, int(c.ra_max_memory_fraction * self.memory_pages)))
        by_pages = int(max_pages / pages_per_step)
        return max(1, min(c.ra_max_steps * unit, by_bytes, by_pages))

    # ------------------------------------------------------------------ matching
    def _on_trend(self, s: Stream, off: int, end: int) -> int | None:
        """The step index (from the anchor) this read falls on, if it is on the stream's trend."""
        if s.trend is None:
            return None
        token, step, extent = s.trend
        rel = off - s.anchor
        reach = s.frontier + max(s.steps, self.cfg.ra_initial_steps) + 1
        if isinstance(token, str):
            k = math.floor(rel / step) if step > 0 else math.ceil(rel / step)
            if k < -1 or k > reach:
                return None
            # a contiguous stream: any read overlapping its (slightly widened) path, up to the
            # first page past what was planned — where a reader that outran its window (served
            # from the pushed pages, unseen until then) comes back. Reads further out are not
            # its reader's: a window's worth past the frontier was accepted, and random reads
            # landing there carried a stream along a whole run, a window planned at each
            past = (s.frontier + 1) * step + math.copysign(self.page_size + QUANTUM, step)
            if step > 0:
                ok = s.anchor - extent - QUANTUM <= off <= s.anchor + past
            else:
                ok = s.anchor + past <= off <= s.anchor + extent + QUANTUM
            if ok and s.markers:
                # ... and not past its next marker without reading it: the reader of pushed
                # pages comes back to us at each marker, so a read more than a page beyond
                # the next one, ahead of the last read, is someone else's — unless it is on a
                # later marker and the markers have holes: a reader whose reads skip bytes
                # can skip a hole (section "marker holes"; the holes it passes turn its
                # markers whole, which no reader skips)
                marker = s.markers[0][1]
                first, last = off // self.page_size, (end - 1) // self.page_size
                if step > 0:
                    ok = first <= marker + 1 or off <= s.last_end + QUANTUM
                else:
                    ok = last >= marker - 1 or end >= s.last_off - QUANTUM
                ok = ok or (not s.whole_markers and any(first <= m[1] <= last for m in s.markers))
            return k if ok else None
        # misses come at the first read of each page that was not pushed, so their phase on
        # the lattice wanders by up to a page (or half a step, whichever is smaller)
        gaps = [abs(b - a) for a, b in zip(s.phases, [*s.phases[1:], step])]
        tol = max(QUANTUM, extent, min(min(gaps) / 2, self.page_size))
        for ph in s.phases:
            k = round((rel - ph) / step)
            if abs(rel - ph - k * step) <= tol and -1 <= k <= reach:
                return k
        return None

    def _near(self, s: Stream, off: int) -> bool:
        radius = self.cfg.stream_radius_bytes
        if abs(off - s.last_off) <= radius or abs(off - s.last_end) <= radius:
            return True
        # or where the last delta, repeated, would land — or the one before it (a period of two)
        for d in list(s.deltas)[-2:]:
            if not isinstance(d, str) and abs(off - (s.last_off + d)) <= max(2 * QUANTUM, min(abs(d) / 2, self.page_size)):
                return True
        return False

    # ------------------------------------------------------------------ observe
    def observe(self, off: int, size: int, now: float | None = None, done: float | None = None, *,
                answered: bool = True, reader: int = 0) -> list[AddressPlan]:
        """One READ event (the request began at `now`, was answered at `done`); returns the
        plans it triggers (possibly none). ``answered=False``: a miss told as it starts (its
        answer comes to :meth:`answered`), so that its plan does not wait for the tier.

        `reader` names the open file the read came through. As the kernel keeps read-ahead
        state per open file, a read is looked for first on the trends of its own file's
        streams, and only orphans and young streams of its own file found or grow a stream:
        two readers converging on the same bytes (one forward, one backward) no longer take
        each other's reads, and interleaved readers' first reads never pair up across files.
        A read of another file joins a stream only on one of its markers (two processes
        scanning the same region: the one behind reaches the markers' holes first)."""
        t0 = time.perf_counter()
        now = time.monotonic() if now is None else now
        done = (now if done is None else max(now, done)) if answered else None
        end = off + max(1, size)
        self.counters["events"] += 1
        plans: list[AddressPlan] = []
        s = None
        k = None
        for cand in reversed(self.streams.values()):
            if cand.reader == reader:
                k = self._on_trend(cand, off, end)
                if k is not None:
                    s = cand
                    break
        if s is None and self.streams:
            # another file's reader on one of a stream's markers (two readers of one region:
            # the one behind reads what the one ahead was pushed, but for the markers' holes)
            first, last = off // self.page_size, (end - 1) // self.page_size
            for cand in reversed(self.streams.values()):
                if cand.reader != reader and any(first <= m[1] <= last for m in cand.markers):
                    k = self._on_trend(cand, off, end)
                    if k is not None:
                        s = cand
                        break
        if s is None:
            # young streams (no trend yet) take reads near them — if the stream's reader read
            # recently: a read that lands near a stream after many others is a coincidence of
            # random reads, not its reader's next read (in a small file, random reads land
            # near every stream sooner or later); otherwise look for a new stream
            idle = self.cfg.young_stream_idle_events
            events = self.counters["events"]
            for cand in reversed(self.streams.values()):
                if cand.trend is None and cand.reader == reader and events - cand.seen <= idle and self._near(cand, off):
                    s = cand
                    break
        if s is None and reader and self.cfg.hole_skippers_kernel_led and reader not in self.hole_skippers:
            self._note_overrun(off, reader)
        if s is None:
            s = self._from_orphans(off, end, now, reader)
            if s is None:
                self.orphans.append((off, end, now, done, reader))
                self.counters["orphans"] += 1
                self._timed(t0)
                return plans
        self.streams.move_to_end(s.id)
        s.seen = self.counters["events"]
        if s.trend is None and s.awaiting and self._token(s, off, end) in (FWD, BWD):
            # a part of the stream's last read, not a read of its own: neither a vote nor a
            # gap of its reader's pace (a random read of tens of KiB and the kernel's
            # read-around of it, three requests at once, voted a contiguous trend in with the
            # read before it, and its window was sized at a pace of zero: 31 pages nobody read)
            s.last_off, s.last_end = min(s.last_off, off), max(s.last_end, end)
            self._timed(t0)
            return plans
        s.awaiting = not answered
        if s.trend is None:
            s.note_answer(now, done)
        else:
            s.t_done = now if done is None else done
            if done is not None:
                s.waited += done - now  # (answered with its event: a read from memory, mostly)
        if k is not None:
            plan = self._advance(s, k, off, end, now)
        else:
            plan = self._learn_delta(s, off, end, now)
        if plan is not None and (plan.pages or plan.consumed):
            plan.t_event = now
            plans.append(plan)
        self._timed(t0)
        return plans

    def answered(self, off: int, size: int, start: float, done: float, reader: int = 0) -> None:
        """The answer to a read :meth:`observe` saw as it started (``answered=False``): its
        stream's reader paces itself from the answer, and a trend-less stream measures its
        reads' service time (`Stream.note_answer`)."""
        end = off + max(1, size)
        for s in reversed(self.streams.values()):
            if s.last_off == off and s.last_end == end or s.awaiting and s.last_off <= off and end <= s.last_end:
                s.awaiting = False
                s.waited += max(0.0, done - start)
                if s.t_done == start:  # (a later read of the stream moved it on already)
                    s.t_done = max(start, done)
                    if s.trend is None:
                        s.services.append(s.t_done - start)
                return
        for i in range(len(self.orphans) - 1, -1, -1):
            o_off, o_end, o_t, o_done, o_reader = self.orphans[i]
            if o_off == off and o_end == end and o_done is None and o_reader == reader:
                self.orphans[i] = (o_off, o_end, o_t, max(o_t, done), reader)
                return

    def _timed(self, t0: float) -> None:
        self.predict_s += time.perf_counter() - t0
        self.predicts += 1

    def _token(self, s: Stream, off: int, end: int):
        if abs(off - s.last_end) < QUANTUM and off >= s.last_off:
            return FWD
        if abs(end - s.last_off) < QUANTUM and end <= s.last_end:
            return BWD
        return off - s.last_off

    def _from_orphans(self, off: int, end: int, now: float, reader: int = 0) -> Stream | None:
        """Two contiguous orphans, or three in arithmetic progression, of the same open file,
        start a stream (three in a row — this read and the file's latest orphans — one marked
        ``progression``: its first trend needs fewer votes). Contiguous means a read asked
        for after the other was answered: requests made together are one read, split."""
        orphans = [o for o in self.orphans if o[4] == reader]
        offsets = [o[0] for o in orphans]
        found = None
        progression = False
        for i in range(len(orphans) - 1, -1, -1):
            b_off, b_end, b_done = orphans[i][0], orphans[i][1], orphans[i][3]
            if -QUANTUM < off - b_end < QUANTUM and off > b_off or -QUANTUM < end - b_off < QUANTUM and end < b_end:
                if b_done is None or b_done > now:
                    # asked for before that read was answered: two parts of one read the
                    # kernel split (its read-around of a random read of tens of KiB comes as
                    # two or three requests at once), not a reader's next read
                    continue
                found = [orphans[i]]
                break
            d = off - b_off
            if d == 0:
                continue
            # an earlier orphan a with b - a = d (to 4 KiB): a within a quantum of b - d (the
            # test written as one range, this loop runs for every random read: 16 x 15 of it
            # was most of the predictor's time per random read)
            lo, hi = b_off - d - QUANTUM, b_off - d + QUANTUM
            for j in range(i - 1, -1, -1):
                if lo <= offsets[j] <= hi:
                    found = [orphans[j], orphans[i]]
                    # in a row: the two orphans are the latest ones (within the setting)
                    k = self.cfg.progression_recent_orphans
                    progression = k > 0 and j >= len(orphans) - k
                    break
            if found:
                break
        if not found:
            return None
        for o in found:
            self.orphans.remove(o)
        sid = self._next_id
        self._next_id += 1
        s = Stream(sid, found[0][0], found[0][1], now, self.cfg.vote_window, self.cfg.markers_per_lead, reader)
        if found[0][3] is not None:
            s.services.append(found[0][3] - found[0][2])
        s.t_done = found[0][2] if found[0][3] is None else found[0][3]
        for o_off, o_end, o_t, o_done, _ in found[1:]:
            self._push_delta(s, self._token(s, o_off, o_end), o_off, o_end)
            s.note_answer(o_t, o_done)
        s.progression = progression
        self.streams[sid] = s
        while len(self.streams) > self.cfg.max_streams:
            self.streams.popitem(last=False)
        self.counters["streams_started"] += 1
        return s

    def _push_delta(self, s: Stream, token, off: int, end: int, learn: bool = True) -> None:
        label = self._cls(token)
        if learn and self.cfg.use_model and len(s.classes) >= 1:
            self.model.learn_one(self._features(s), label)
        s.deltas.append(token)
        s.sizes.append(end - off)
        s.classes.append(label)
        s.last_off, s.last_end, s.last_size = off, end, end - off

    def _learn_delta(self, s: Stream, off: int, end: int, now: float) -> AddressPlan | None:
        """A read of a stream without a (matching) trend: vote, maybe plan."""
        token = self._token(s, off, end)
        if token == 0:
            return None
        # a pending model chain: did the reader follow it?
        if s.chain:
            for i, (c_off, label) in enumerate(s.chain):
                if abs(c_off - off) < QUANTUM:
                    self.counters["model_hits"] += 1
                    for c_off2, label2 in s.chain[: i + 1]:
                        # the predicted deltas happened (unseen by the daemon: they were pushed)
                        tok = label2 if label2 in (FWD, BWD) else int(label2)
                        self.model.learn_one(self._features(s), label2)
                        s.deltas.append(tok)
                        s.classes.append(label2)
                    s.last_off, s.last_end = off, end
                    s.chain = []
                    s.t = now
                    return self._vote(s, now) or self._model_plan(s)
            s.chain = []
        self._push_delta(s, token, off, end)
        s.t = now
        return self._vote(s, now) or self._model_plan(s)

    def _vote(self, s: Stream, now: float) -> AddressPlan | None:
        cfg = self.cfg
        if len(s.deltas) < min(cfg.min_votes, cfg.min_votes_contiguous):
            return None
        deltas = list(s.deltas)
        cand, votes = majority(deltas)
        need = cfg.min_votes_contiguous if cand in (FWD, BWD) else cfg.min_votes
        if s.progression:
            need = min(need, cfg.min_votes_progression)
        phases: tuple[float, ...] = (0.0,)
        if cand is None or votes < need or cand == 0:
            periodic = self._periodic(deltas)
            if periodic is None:
                s.trend = None
                return None
            cand, phases = periodic
        size = sorted(s.sizes)[len(s.sizes) // 2]
        ps = self.page_size
        if cand in (FWD, BWD):
            unit = -(-max(size, QUANTUM) // ps) * ps  # whole pages
            step, extent = (unit, unit) if cand == FWD else (-unit, unit)
            anchor = s.last_off // ps * ps
        else:
            step, extent = float(cand), size
            if abs(step) < QUANTUM // 2:
                return None
            anchor = s.last_off
        s.trend = (cand, step, extent)
        # a byte stride averaged over its votes (consecutive deltas: the first and last offsets)
        s.base = votes if cand not in (FWD, BWD) and len(phases) == 1 else 0
        # identical deltas of whole 4 KiB blocks: the reader's requests land on the lattice to
        # the byte (a stride of 12,288 bytes is read at 12,288 apart every time), and Occam
        # says the stride is exact. The drift bound of a vote of two (2 KiB a step) planned a
        # page either side of every step over 4 KiB pages: 350 of 1,900 prefetches wasted.
        # Over bigger pages Occam is wrong too often: a stride of 140,330 bytes is requested
        # 139,264 apart three times in four, so two identical deltas say little, and a first
        # window planned without drift lost the reader's second page at its seventh step (a
        # miss in every such run). There a drift page is a fraction of a step, not two
        # pages, and the stride must earn its exactness on the lattice (`_advance`)
        s.exact = bool(s.base) and float(cand) % QUANTUM == 0 and all(
            d == cand for d in deltas if not isinstance(d, str) and abs(d - cand) <= QUANTUM
        ) and self.page_size <= cfg.stride_exact_founding_page_bytes
        s.base_end = 0  # (the anchor is the last of the reads it was measured on)
        s.progression = False  # later trends of this stream are voted as usual
        s.phases = phases
        s.sized = False
        s.anchor = anchor
        s.frontier = 0
        s.planned.clear()
        s.markers.clear()
        s.holes_passed = 0
        s.whole_markers = False
        s.unit = max(1, math.ceil(ps / abs(step)))
        s.kernel_led = cand == FWD and (ps <= cfg.kernel_readahead_page_bytes or s.reader in self.hole_skippers)
        s.steps = min(max(cfg.ra_initial_steps * s.unit, self._kernel_floor(s, step)), self._cap_steps(step, extent))
        s.hits.clear()
        s.stride_samples.clear()
        s.rate = 0.0
        lead = 0
        if len(phases) == 1 and not s.kernel_led:
            lead = self._size_from_founding_reads(s, step, extent)
        # one marker in the first window: until its reader reaches it, nothing says the trend
        # is real, and nothing extends the window. Half-way for a window of the ramp; in a
        # window sized at the reader's pace, where a whole lead is still planned beyond it: a
        # marker half-way left 0.6 of a lead, and the next window came late at its end
        # (a miss at read 11-15 of every strided run, docs/prefetch.md 6.0z)
        first_marker = max(1, min(s.steps // 2, s.steps - lead) if lead else s.steps // 2)
        s.chunk = s.steps - first_marker
        return self._extend(s, 0, first_marker=first_marker)

    def _size_from_founding_reads(self, s: Stream, step: float, extent: int) -> int:
        """A stream's first window from its reader's own pace, not a ramp — a strided stream,
        or a contiguous one over pages the kernel's read-ahead does not follow; returns its
        lead in steps (0: not sized, no pace or reaction time known yet).

        Its founding reads were misses (the kernel's read-ahead does not follow a stride),
        so they came a miss apart; the reader's pace is what it does between an answer and
        its next request (`Stream.gaps`), plus a read from the cache. A reader 1.2 ms a
        step over a tier that answers in ~8 ms goes a dozen steps while the first window
        is on its way: a first window of `ra_initial_steps` (4) ran out, and the steps
        after it were misses too, while the ramp caught up (in a run of ~550 reads, the
        p99). The reaction time is the measured one, or before any (a fresh mount) the
        founding reads' own service time. The window stays within the usual caps and
        `founding_max_steps` (requests issued concurrently leave no gap at all, and three
        random reads can line up)."""
        cfg = self.cfg
        if not s.gaps:
            return 0
        gaps = sorted(s.gaps)
        pace = gaps[len(gaps) // 2] + cfg.cached_read_s
        reaction = self.fetch_latency_s
        if reaction <= 0 and s.services:
            services = sorted(s.services)
            reaction = services[len(services) // 2]
        if reaction <= 0:
            return 0
        s.rate = abs(step) / pace
        lead = max(s.unit, _whole_steps(reaction * cfg.lead_margin / pace))
        want = lead + max(s.unit, math.ceil(lead / max(1, cfg.markers_per_lead)))
        s.steps = min(max(s.steps, want), cfg.founding_max_steps * s.unit, self._cap_steps(step, extent))
        self.counters["founding_sized"] += 1
        return lead

    def _kernel_floor(self, s: Stream, step: float) -> int:
        """Steps a kernel-led stream plans at least (0 for the others)."""
        if not s.kernel_led:
            return 0
        return math.ceil(self.cfg.kernel_readahead_lead_bytes / abs(step))

    def _periodic(self, deltas: list) -> tuple[float, tuple[float, ...]] | None:
        """No single delta holds a majority: try Leap's vote on lag-p differences (p = 2 .. max_period):
        strides a, b, a, b, ... have no majority delta, but every two consecutive deltas sum
        to a + b. Returns (step = the period's sum, offsets of the reads within a period, in
        the order they come next), or None. Byte deltas only (contiguous runs have a majority)."""
        cfg = self.cfg
        if any(isinstance(d, str) for d in deltas):
            return None
        for p in range(2, cfg.max_period + 1):
            sums = [sum(deltas[i:i + p]) for i in range(len(deltas) - p + 1)]
            if len(sums) < cfg.min_votes:
                continue
            total, votes = majority(sums)
            if total is None or votes < cfg.min_votes or abs(total) < QUANTUM:
                continue
            # the next delta is the one p back; each phase's delta averaged over its periods
            nxt = []
            for j in range(p):
                same = deltas[len(deltas) - p + j::-p]
                nxt.append(sum(same) / len(same))
            if max(nxt) - min(nxt) <= QUANTUM:
                return None  # one stride after all (its majority failed on noise)
            phases = [0.0]
            for d in nxt[:-1]:
                phases.append(phases[-1] + d)
            return float(total), tuple(phases)
        return None

    def _advance(self, s: Stream, k: int, off: int, end: int, now: float) -> AddressPlan | None:
        """A read on the stream's trend at step k: confirm, report what was passed, plan ahead."""
        token, step, extent = s.trend
        s.t = now
        if (not isinstance(token, str) and k >= 2 and abs(step) >= self.page_size and len(s.phases) == 1
                and k > s.base and (off % self.page_size or self.page_size <= QUANTUM) and end - off <= extent):
            # refine the stride over the longest baseline: quantised offsets err by < 4 KiB / k
            # (from a page up: a stride of 1.3 pages estimated from its founding reads alone
            # erred by 535 bytes a step, and the pages planned for that drift were a fifth of
            # its prefetches; strides under a page touch every page anyway). Not from a
            # request that starts on a page boundary: a read that began in the page
            # before (pushed, in the kernel's cache) reaches us only from the next page on,
            # and its offset says nothing of where the reader is (a marker hit's, mostly) —
            # but for 4 KiB pages, where every request starts on a page boundary anyway.
            # The kernel's own read-ahead fills the pages between a stride's pushed ones,
            # from the first page it lacks, not where the reader is: such requests (44 KiB,
            # or 4 KiB two pages past the reader) turned a stride of 12,288 bytes into
            # 12,377 and 12,248 over 4 KiB pages, and the stream lost its reader tens of
            # steps later with as many steps of wrong pages in flight. So: not from a
            # request longer than the reader's reads, and the stride is the median of the
            # last three estimates (`Stream.stride_samples`), which one such request does
            # not move
            # a stride of whole 4 KiB blocks that this read, that many steps from the anchor,
            # follows to the byte as it was predicted before the read: exact (the estimate
            # made from this read itself would prove nothing)
            on_lattice = (k >= self.cfg.stride_exact_after_steps and step % QUANTUM == 0
                          and off - s.anchor == k * step)
            s.stride_samples.append(((off - s.anchor) / k, k))
            # (of two, the longer baseline's; and the chosen estimate's own baseline: one from
            # four steps, kept by a median of two, errs by up to 1 KiB a step, and its drift
            # was planned as if it erred by 4 KiB / 19)
            if len(s.stride_samples) == 2:
                step, base = max(s.stride_samples, key=lambda sample: sample[1])
            else:
                step, base = sorted(s.stride_samples)[len(s.stride_samples) // 2]
            s.trend = (token, step, extent)
            s.base = s.base_end = base
            s.exact = s.exact or on_lattice
        passed = max(0, k - max(0, round((s.last_off - s.anchor) / step)))
        if len(s.phases) > 1:  # a periodic trend: its deltas, in turn
            seq = [b - a for a, b in zip(s.phases, [*s.phases[1:], s.phases[0] + step])]
            for _ in range(min(passed, self.cfg.vote_window)):
                for d in seq:
                    s.deltas.append(d)
                    s.classes.append(self._cls(d))
        else:
            for _ in range(min(passed, self.cfg.vote_window)):
                s.deltas.append(token)
                s.classes.append(self._cls(token))
        s.last_off, s.last_end = off, end
        consumed: list[int] = []
        first_page, last_page = off // self.page_size, (end - 1) // self.page_size
        if s.exact and off - s.anchor != k * step:
            s.exact = False  # a read off the exact lattice: the stride's drift is planned again
        while s.planned and s.planned[0][0] < k:
            # (not this read's own pages: its demand settles them, and seen as it starts — a
            # MISS — it is counted after this plan is applied)
            consumed.extend(p for p in s.planned.popleft()[1] if not first_page <= p <= last_page)
        # markers reached: by step (the reader may skip a marker's page) or by this read's pages
        hit = False
        while s.markers and (k >= s.markers[0][0] or first_page <= s.markers[0][1] <= last_page):
            _, page, holed = s.markers.popleft()
            hit = True
            if holed and (first_page > page if step > 0 else last_page < page):
                # the reader is past this marker's page and never read its hole (nothing else
                # of it reaches us): its reads have gaps, and a hole can lie in one. (A read
                # entering the marker's step elsewhere — a backward reader meets a step's
                # highest page first, the marker is its lowest — has not passed it.)
                s.holes_passed += 1
                self.counters["holes_passed"] += 1
                s.whole_markers = s.holes_passed >= self.cfg.holes_passed_for_whole_markers
                if s.whole_markers and s.reader and token == FWD and self.cfg.hole_skippers_kernel_led:
                    self._note_hole_skipper(s)
        overtook = k > s.frontier  # the reader got past everything planned: the window was short
        if hit or overtook:
            self.counters["marker_hits"] += int(hit)
            if hit:
                s.hits.append((now, off, s.waited))
                t0, off0, waited0 = s.hits[0]
                if now > t0:
                    # the reader's own speed: the time its reads spent waiting on us is left
                    # out. Measured through its waits, a reader slowed by late pages looked
                    # slow, its lead shrank, and more of its pages came late (a 3-page stride
                    # over 4 KiB pages: 23 steps, then 9, then 5, every read a miss)
                    elapsed = now - t0
                    own = max(elapsed - (s.waited - waited0), elapsed * self.cfg.own_pace_min_share)
                    s.rate = abs(off - off0) / own
                    self._choose_kernel_led(s, token)
            s.steps = self._window(s, step, extent, overtook)
            s.chunk = self._chunk(s, s.steps)
        plan = None
        if hit or overtook or s.frontier - k < max(s.unit, s.steps - s.chunk):
            plan = self._extend(s, k)
        if plan is None:
            plan = AddressPlan(s.id)
        plan.consumed = consumed
        return plan

    def _choose_kernel_led(self, s: Stream, token) -> None:
        """Leave a forward stream to the kernel's own read-ahead while it is slow enough for it.

        The kernel reads a forward reader's next window (`kernel_readahead_window_bytes`)
        ahead of it, asynchronously; while the reader goes less than that in one reaction
        time, the kernel's request for a page comes before the reader needs it, and, our
        fetch ahead having put the page in memory, it is answered at once: the reader never
        waits. Pushing instead costs such a reader a request to the daemon at every marker
        (0.2-0.3 ms on the test machine), and pushed pages carry no read-ahead mark, so the
        kernel stops reading ahead: `--prefetch none` was at 0.03-0.08 ms p99 where pushes
        gave 0.25 (docs/prefetch.md 6.0m). A stream over small pages is always kernel-led
        (`kernel_readahead_page_bytes`); another switches at a marker hit, by its measured
        speed, back to pushes once it goes twice the window per reaction time — and only while
        what it keeps in memory fits there."""
        cfg = self.cfg
        window = cfg.kernel_readahead_window_bytes
        if token != FWD or window <= 0 or self.page_size <= cfg.kernel_readahead_page_bytes or self.fetch_latency_s <= 0:
            return
        if s.reader in self.hole_skippers:
            return  # pushed pages hide its reads from us (`_note_hole_skipper`)
        ahead = s.rate * self.fetch_latency_s  # bytes the reader goes while a page is on its way
        # the pages fetched ahead wait in memory for the kernel's requests (a page may take
        # two of them): our lead and two of the kernel's windows must fit this stream's share
        # of the memory tiers, or they are evicted before the kernel asks (a 2 MiB tier: a
        # scan's pages fetched again from the slow tier, `tests/test_prefetch_mount.py`)
        # — with room to spare (half the share) to switch, the whole share to stay: a speed
        # near a bound must not flip the stream at every marker hit
        kept = ahead * cfg.lead_margin + 2 * window
        share = cfg.ra_max_memory_fraction * self.memory_pages * self.page_size
        if not s.kernel_led and ahead < window and kept <= share / 2:
            s.kernel_led = True
            self.counters["kernel_led"] += 1
        elif s.kernel_led and (ahead > 2 * window or kept > share):
            s.kernel_led = False
            self.counters["pushed_again"] += 1

    def _note_overrun(self, off: int, reader: int) -> None:
        """A read of `reader` that no stream took: if it lands where one of the reader's own
        forward streams ran out of planned pages, past markers with holes it never read, its
        reader went through the pushed pages without a request and skipped the holes (the
        read past a window founds a new stream, so the holes passed are never counted on the
        old one). Two such overruns make the reader a hole skipper (`_note_hole_skipper`)."""
        first = off // self.page_size
        for cand in reversed(self.streams.values()):
            if cand.reader != reader or cand.trend is None or cand.trend[0] != FWD or not cand.planned:
                continue
            last_planned = max(cand.planned[-1][1], default=-1)
            holed = [m for m in cand.markers if m[2] and m[1] < first]
            if holed and last_planned <= first <= last_planned + 1:
                cand.holes_passed += len(holed)
                self.counters["holes_passed"] += len(holed)
                runs = self._overruns.get(reader, 0) + 1
                self._overruns[reader] = runs
                if len(self._overruns) > self.cfg.max_streams:
                    self._overruns.pop(next(iter(self._overruns)))
                if runs >= self.cfg.holes_passed_for_whole_markers:
                    self._note_hole_skipper(cand)
                return

    def _note_hole_skipper(self, s: Stream) -> None:
        """The stream's reader went past marker holes without reading them: a forward reader
        with gaps that the kernel's read-ahead filled (an `mmap` reader touching a few KiB
        every stride: each fault's read-around is a contiguous request). Pushed pages hide
        its reads from us — it touches them without a request, skips the holes, and each
        window ended in a miss (docs/prefetch.md 6.0zb). Its open file's forward
        streams are kernel-led from now on: fetched ahead into memory, not pushed, so every
        read-around request reaches the daemon and is answered from memory."""
        if not s.kernel_led:
            s.kernel_led = True
            self.counters["kernel_led"] += 1
        self.counters["hole_skippers"] += s.reader not in self.hole_skippers
        self.hole_skippers[s.reader] = None
        self.hole_skippers.move_to_end(s.reader)
        while len(self.hole_skippers) > self.cfg.max_streams:
            self.hole_skippers.popitem(last=False)

    def _window(self, s: Stream, step: float, extent: int, overtook: bool) -> int:
        """The stream's new window (in trend steps) at a marker hit.

        From first principles: the reader must not reach a page before it arrives, so the
        lead (how far ahead of the reader the next plan's pages start) must cover the
        reader's speed x the reaction time x ``lead_margin``; the window is the lead and one
        chunk (``markers_per_lead`` markers per lead, a chunk apart: a hit still leaves a
        lead planned beyond it). Lateness since the last hit (pages demanded in flight, or
        the reader overtaking the window) raises a boost on that lead (doubling it per lead of
        lateness); a stream all on time lets it decay — it never grows a window that is
        already on time. Until the speed is known the window ramps, doubling per lead
        travelled, like Linux readahead. Never more than twice the last window at once,
        never less than two window units (a page's worth of steps each), never beyond the
        byte/page/step caps.
        """
        cfg = self.cfg
        late = self.late.get(s.id, 0)
        fresh = late - s.late_seen
        s.late_seen = late
        if s.sized:
            # lateness says something about the lead formula only once the window follows it;
            # during the ramp, late pages are the ramp's own (it starts short on purpose)
            # per hit, i.e. per chunk: a shortfall makes the pages of several chunks late, so
            # lateness doubles the boost per lead of it, and on-time reading lets it decay by
            # ra_boost_decay per lead
            per_hit = 1.0 / max(1, cfg.markers_per_lead)
            if fresh > 0 or overtook:
                s.boost = min(cfg.ra_boost_max, s.boost * 2.0 ** per_hit)
            else:
                s.boost = max(1.0, s.boost * cfg.ra_boost_decay ** per_hit)
        cap = self._cap_steps(step, extent)
        floor = min(cap, max(2 * s.unit, self._kernel_floor(s, step)))
        if s.rate > 0 and self.fetch_latency_s > 0:
            lead = max(s.unit, _whole_steps(s.rate * self.fetch_latency_s * cfg.lead_margin * s.boost / abs(step)))
            want = lead + max(s.unit, math.ceil(lead / max(1, cfg.markers_per_lead)))
            # a window at its cap follows the lead as far as it can: sized (its boost decays)
            s.sized = want <= 2 * s.steps or s.steps >= cap
            if want > 2 * s.steps:
                # the speed and the reaction time are measured: twice the window per hit
                # towards them, not the ramp's 2^(1/4) (a first window sized on its founding
                # reads' service, 7 ms, grew 12 -> 15 -> 18 steps where runs took 15-22 ms
                # to land, and the reader met the end of its second window: a miss)
                want = 2 * s.steps
            return max(floor, min(cap, want))
        s.sized = False
        return max(floor, min(cap, self._ramp(s)))

    def _cores_beyond(self, s: Stream, target: int, widen: int, reach_lo: int, reach_hi: int) -> set[int]:
        """The own pages (no drift) of the steps after ``target`` that lie within pages
        reach_lo..reach_hi: the steps a plan's drift pages may belong to."""
        token, step, extent = s.trend
        out: set[int] = set()
        if not step:
            return out
        ps = self.page_size
        for j in range(target + 1, target + 1 + MAX_STEPS_BEYOND):
            los = [s.anchor + j * step + ph for ph in s.phases]
            if (step > 0 and (min(los) - widen) // ps > reach_hi) or (step < 0 and (max(los) + extent) // ps < reach_lo):
                break
            for lo in los:
                out.update(p for p in self._pages(*self._step_span(lo, extent, widen)) if reach_lo <= p <= reach_hi)
        return out

    @staticmethod
    def _step_span(lo: float, extent: int, widen: int) -> tuple[float, float]:
        """The bytes of a step's own reads planned at byte `lo` (no drift). Requests are the
        reads aligned to 4 KiB: the true one starts in (lo - widen, lo + widen) and, its size
        being the aligned size, ends by lo + extent (+ widen when it starts late)."""
        return lo - widen, lo + extent + (widen if extent < 2 * QUANTUM else 0)

    def _ramp(self, s: Stream) -> int:
        """The window while the speed is unknown (or far above it): it doubles per lead the
        reader travels — 2^(1/markers_per_lead) per hit, a hit per chunk — like Linux
        readahead per window: a step estimated from the first reads errs by a few bytes,
        and a window grown faster than the estimate improves plans pages off the reader's
        lattice."""
        return max(s.steps + 1, math.ceil(s.steps * 2.0 ** (1.0 / max(1, self.cfg.markers_per_lead))))

    def _chunk(self, s: Stream, window: int) -> int:
        """Steps between markers for a window: its lead / ``markers_per_lead``, at least two
        units (a page's worth of steps each): a marker on every page would push nothing, and
        every read would cost its reader a request to the daemon. A window of two to four
        units thus has a marker every two units (with a two-unit window, on its frontier:
        the next plan's first new step is then one unit, its lead, past the marker)."""
        return max(2 * s.unit, window // (max(1, self.cfg.markers_per_lead) + 1))

    def _extend(self, s: Stream, k: int, first_marker: int = 0) -> AddressPlan | None:
        """Plan steps up to k + window; a marker page every chunk of what is new (or only
        one, ``first_marker`` steps ahead, in a trend's first window)."""
        token, step, extent = s.trend
        target = k + s.steps
        first = max(s.frontier, k) + 1
        if target < first:
            return None
        pages: list[int] = []
        seen = set(p for _, ps in s.planned for p in ps)
        # (nor the pages of the read that triggers the plan: it is fetching them itself)
        seen.update(self._pages(s.last_off, s.last_end))
        unsure: set[int] = set()  # pages of some step's drift ...
        cores: set[int] = set()  # ... and of some step's own reads
        widen = 0 if isinstance(token, str) or all((step + ph) % QUANTUM == 0 for ph in s.phases) else QUANTUM
        new_steps = []
        sure: dict[int, int] = {}  # step -> the page its reader surely reads first (a marker)
        drift_max = max(self.cfg.stride_drift_max_bytes, self.page_size // 2)
        # a stride under a page reads every page on its path, a page shared by two or three
        # steps: its marker may be a page an earlier step of this plan brought in (planned
        # before this plan, it may be pushed already; a bigger stride's own pages are new)
        sub_page = QUANTUM < self.page_size and abs(step) < self.page_size
        planned_before = set(seen) if sub_page else seen
        for j in range(first, target + 1):
            ps = []
            inside = False
            # the stride's own error, j steps from where it was measured (`Stream.base`,
            # `Stream.base_end`), each step's share under 4 KiB / base: a founding stride
            # from three reads errs by up to 2 KiB a step, and by the tenth step its reads lie
            # past the pages planned for them (a straddled page missed, the p99 of a run of a
            # few hundred reads)
            drift = min(drift_max, abs(j - s.base_end) * QUANTUM / s.base) if s.base and not s.exact else 0.0
            if drift < self.cfg.stride_drift_min_bytes:
                drift = 0.0
            for ph in s.phases:
                lo = s.anchor + j * step + ph
                inside = inside or 0 <= lo < self.params_bytes
                a, b = self._step_span(lo, extent, widen)
                core = self._pages(a, b)
                if core and j not in sure:
                    # a marker must be a page its reader surely reads, or the stream loses its
                    # hit and its window runs out (a miss): the read's first page, when the
                    # read surely starts in it — anywhere in (lo - u, lo + u), u the 4 KiB
                    # alignment and the stride's drift so far; else the step takes no marker.
                    # (The span's first page, the marker before, lay off the read of step 6 of
                    # a stride measured 1,299 bytes short, and no read hit it. Not a page
                    # further into the read: a marker later in a read is a miss the kernel
                    # answers with read-ahead into the stride's gap, docs 6.0p)
                    if self.page_size <= QUANTUM or abs(step) < self.page_size:
                        # (a read's first 4 KiB page is never sure within 4 KiB: the span's
                        # first page, as before — a lost hit there is the next read's miss,
                        # which finds the stream again. A stride under a page reads every
                        # page on its path, so the span's first page is sure whatever the
                        # drift: sure only within the drift, a stride of 24,206 bytes over
                        # 64 KiB pages — its founding estimate 7 % short, its drift bound
                        # half a page by the tenth step — had no sure page left, its one
                        # marker went on its window's last step, and every window ended in
                        # a miss: docs/prefetch.md 6.0za)
                        m = core[0]
                    else:
                        u = widen + drift
                        m = int((lo - u) // self.page_size)
                        if m != int((lo + u) // self.page_size):
                            m = -1
                    if m >= 0 and m not in planned_before:
                        sure[j] = m
                wide = self._pages(a - drift, b + drift) if drift else core
                cores.update(core)
                if drift:
                    unsure.update(p for p in wide if p not in core)
                ps += [p for p in wide if p not in seen and p not in ps]
            if not ps and not inside:
                break
            seen.update(ps)
            new_steps.append((j, ps))
            pages.extend(ps)
        if not new_steps:
            return None
        s.planned.extend(new_steps)
        s.frontier = new_steps[-1][0]
        plan = AddressPlan(s.id, pages=pages, source="trend", push=not s.kernel_led)
        unsure = unsure.difference(cores).intersection(pages)
        if unsure:
            # the last steps' drift reaches into the steps the next plan will take: their own
            # pages are no less sure for being planned early (counted wasted when the reader
            # passed them, they were an eighth of a stride's prefetches)
            unsure.difference_update(self._cores_beyond(s, target, widen, min(unsure), max(unsure)))
        plan.unsure = unsure
        # markers: the first page of a new step every chunk beyond the last marker, so that a
        # hit leaves a lead planned beyond it and a stopped reader leaves at most a chunk of
        # pushed pages read but unseen; a stream with none left gets one on its last new step
        # (a marker is the first page of the step's reads as planned without the stride's
        # drift: pages added for the drift may lie off the reader's path, and a marker it
        # skips is a marker hit lost)
        def place_marker(j: int, ps: list[int]) -> None:
            m = sure[j] if j in sure else ps[0]
            hole = plan.markers[m] = self._trend_hole(s, m)
            s.markers.append((j, m, hole is not None and plan.push))

        # (on steps with a sure page only: a step without one passes the marker to the next)
        last = s.markers[-1][0] if s.markers else k
        for j, ps in new_steps:
            if first_marker and s.markers:
                break
            if (ps or sub_page) and j in sure and j - last >= (first_marker or s.chunk):
                place_marker(j, ps)
                last = j
        if not s.markers:
            j, ps = next(((j, ps) for j, ps in reversed(new_steps) if ps and j in sure),
                         next(((j, ps) for j, ps in reversed(new_steps) if ps), (0, [])))
            if ps:
                place_marker(j, ps)
        self.counters["trend_plans"] += 1
        return plan

    def _trend_hole(self, s: Stream, page: int) -> tuple[int, int] | None:
        """The hole of a marker page: the kernel page (4 KiB) where the stream's reader surely
        first touches it. A contiguous stream reads every byte in order, so it enters a page
        at its first byte going forward and at its last going backward. None (the page is not
        pushed at all) for a strided stream: its true stride is known only to within the
        kernel's 4 KiB alignment, a hole a few steps ahead may lie off the bytes it reads, and
        a hole missed leaves the stream without its marker hit. None, too, once the stream's
        reader went past a hole (`Stream.whole_markers`): contiguous requests can hide a
        reader that skips bytes (the kernel's read-ahead fills its gaps until pushes stop it)."""
        token = s.trend[0]
        if not self.cfg.marker_holes or token not in (FWD, BWD) or s.whole_markers:
            return None
        base = page * self.page_size
        end = min(base + self.page_size, self.params_bytes)
        first = base if token == FWD else end - 1
        a = first // QUANTUM * QUANTUM
        b = min(end, a + QUANTUM)
        if a <= base and b >= end:
            return None  # the hole would be the whole page
        return a - base, b - base

    def _model_plan(self, s: Stream) -> AddressPlan | None:
        """No majority: chain the learned model's next-delta predictions while confident."""
        cfg = self.cfg
        # only streams with a full window of history: a young stream is noise until shown otherwise
        if not cfg.use_model or not getattr(self.model, "ready", True) or len(s.deltas) < cfg.vote_window:
            return None
        hist = deque(s.classes, maxlen=8)
        off, end = s.last_off, s.last_end
        size = max(QUANTUM, end - off)
        chain: list[tuple[int, str]] = []
        pages: list[int] = []
        conf = 1.0
        for _ in range(cfg.model_steps):
            x = {f"c{i + 1}": (list(hist)[-1 - i] if i < len(hist) else "_") for i in range(cfg.model_history)}
            label, p = self.model.best(x)
            if label is None or p < cfg.model_min_proba:
                break
            conf *= p
            if conf < cfg.model_min_proba * cfg.model_min_proba:
                break
            if label == FWD:
                off, end = end, end + size
            elif label == BWD:
                off, end = off - size, off
            else:
                try:
                    d = int(label)
                except ValueError:
                    break
                off, end = off + d, off + d + size
            if off < 0 or off >= self.params_bytes:
                break
            chain.append((off, label))
            pages.extend(p2 for p2 in self._pages(off, end) if p2 not in pages)
            hist.append(label)
        if not chain:
            return None
        s.chain = chain
        self.counters["model_plans"] += 1
        plan = AddressPlan(s.id, pages=pages, source="model", confidence=conf)
        last_pages = self._pages(chain[-1][0], chain[-1][0] + size)
        if last_pages:
            plan.markers[last_pages[0]] = None  # where a learned chain enters it is not sure: no hole
        return plan

    def forget(self, stream_id: int) -> None:
        """The controller gave up on a stream's trend (its plans were wasted)."""
        s = self.streams.get(stream_id)
        if s is not None:
            s.steps = max(1, s.steps // 2)
            s.chunk = min(s.chunk, self._chunk(s, s.steps))

    def stats(self) -> dict:
        return {
            **self.counters,
            "streams": len(self.streams),
            "trending": sum(1 for s in self.streams.values() if s.trend is not None),
            "reaction_ms": round(1e3 * self.fetch_latency_s, 3),
            # the most recent trending streams: window (steps), speed (MB/s), lateness boost
            "windows": [{"steps": s.steps, "chunk": s.chunk, "step": round(s.trend[1]), "mb_s": round(s.rate / 1e6, 2),
                         "boost": round(s.boost, 2)}
                        for s in list(self.streams.values())[-4:] if s.trend is not None],
            "predict_us": round(1e6 * self.predict_s / self.predicts, 2) if self.predicts else 0.0,
        }
