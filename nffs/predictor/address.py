"""Address-space prediction: which pages of ``params`` a reader will touch next.

Input: the reads that reach the daemon, each a contiguous page range ``[first, last]``
(kernel page-cache misses of ``params`` / ``levels/NN``). Output: a *window* of pages
to fetch ahead, nearest first, each flagged push (into the kernel page cache) or not.

Streams. Reads are grouped into at most ``max_streams`` streams (LRU): a read joins the
stream whose planned window it falls in, or whose last page is within ``slack`` pages;
otherwise it forks a new stream that inherits the most recent stream's history (so a
large constant stride, which never falls within ``slack``, is still learned as a
sequence of deltas). The model is shared; its features are per stream
(``history.StreamHistory``): the last four delta classes and stride consistency.
A fork never teaches the model ``other`` (it is a switch between streams, not a step
of one), so interleaved scans keep their confidence.

Thinning. Once pushed pages are in the kernel page cache, their reads never reach the
daemon: the observed stream is thinned to the reads that miss. Two rules keep learning
and accounting sound:

- *Continuation*: a read that falls inside the planned window confirms every planned
  step before it. Those steps (which the reader served from the kernel cache, unseen)
  are appended to the history with their planned classes — the model learns on the
  predicted-stream positions, at most ``learn_cap`` steps per read — and their pages
  are reported as *consumed* (inferred used).
- *Tripwires*: a page every ``spacing`` pages a stream plans is fetched into the memory
  tier but not pushed, and a page keeps the role it was first given. The reader's
  arrival at a tripwire is a (fast) daemon read that reveals its position while
  ``lead`` pushed pages still lie ahead of it — time enough to extend the window before
  it runs dry. (A tripwire only at the end of the window would come too late: the
  kernel's own readahead, started by the tripwire miss, would reach past the window
  into slow demand reads.) A window with no tripwire ahead of the reader makes its new
  last page one.

Depth. ``lead`` covers the time to fetch an extension at the stream's observed rate:
``lead = rate_pages_per_s × (2 × observed fetch latency + 3 ms) + 2``; tripwires are
``spacing = max(2 × lead, min_spacing)`` planned pages apart (64; 256 for a strided
stream, which makes about one read per planned page: each tripwire costs the reader
one daemon round trip, so it must meet few), and the window holds
``spacing + lead + 1`` pages (at most ``max_depth_pages``). Like the kernel's readahead,
a young stream's window starts at 2 pages and doubles with every confirmed step, and it
grows only while the cumulative probability of the rolled-out steps stays above
``min_cum``. A stream prefetches only after its latest step was predicted correctly (so
random reads, which fork or miss every time, prefetch nothing).
"""
from __future__ import annotations

import math
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from .history import EMPTY, OTHER, DeltaVocabulary, StreamHistory, label_delta
from .models import Predictor


@dataclass(slots=True)
class Step:
    """One planned read: pages ``lo..hi`` reached with class ``label`` (probability ``p``)."""

    lo: int
    hi: int
    label: str
    delta: int
    p: float


@dataclass
class Stream:
    sid: int
    hist: StreamHistory
    window: list[Step] = field(default_factory=list)
    pending_x: dict | None = None
    predicted: str | None = None
    hits: deque = field(default_factory=lambda: deque(maxlen=4))
    t_last: float = 0.0
    rate: float = 0.0  # pages per second, EWMA
    #: push flag of every page the stream planned recently (a page keeps its first role)
    roles: OrderedDict = field(default_factory=OrderedDict)
    ordinal: int = 0
    last_trip: int = 0
    stray: int = 0  # reads in a row inside the window that were not planned steps
    streak: int = 0  # confirmed steps in a row


@dataclass
class AddressPlan:
    """What one observed read leads to."""

    stream: int
    #: pages the reader must have read from the kernel cache (planned steps it skipped over)
    consumed: list[int]
    #: the wanted window: (page, push, confidence), nearest first; any page the stream
    #: asked for before and that is not in it any more is no longer wanted
    window: list[tuple[int, bool, float]]


class AddressPredictor:
    def __init__(
        self,
        model: Predictor,
        n_pages: int,
        page_size: int,
        *,
        max_streams: int = 8,
        slack: int = 16,
        min_conf: float = 0.5,
        min_cum: float = 0.3,
        min_depth: int = 8,
        max_depth_pages: int | None = None,
        max_steps: int = 512,
        learn_cap: int = 4,
        max_model_calls: int = 64,
        max_stray: int = 3,
        min_spacing: int = 64,
        min_spacing_strided: int = 256,
    ) -> None:
        self.model = model
        self.n_pages = n_pages
        self.page_size = page_size
        self.max_streams = max_streams
        self.slack = slack
        self.min_conf = min_conf
        self.min_cum = min_cum
        self.min_depth = min_depth
        self.max_depth_pages = max_depth_pages or max(16, min(1024, (64 << 20) // page_size))
        self.max_steps = max_steps
        self.learn_cap = learn_cap
        self.max_model_calls = max_model_calls
        self.max_stray = max_stray
        self.min_spacing = min_spacing
        self.min_spacing_strided = min_spacing_strided
        self.vocab = DeltaVocabulary()
        self.streams: OrderedDict[int, Stream] = OrderedDict()
        self._next_sid = 0
        #: seconds a prefetch of a slow page takes (EWMA; the prefetcher updates it)
        self.latency_s = 0.005
        self.counters = {"events": 0, "forks": 0, "continuations": 0, "implied": 0, "skipped": 0, "stray": 0}

    # ------------------------------------------------------------------ streams
    def _new_stream(self, hist: StreamHistory) -> Stream:
        self._next_sid += 1
        s = Stream(self._next_sid, hist)
        self.streams[s.sid] = s
        while len(self.streams) > self.max_streams:
            self.streams.popitem(last=False)
        return s

    def _match(self, first: int, last: int) -> tuple[Stream | None, int, bool]:
        """(stream, index of the last window step the read covers or passed, beyond?).

        ``beyond`` is True when the read lies just past the end of the stream's window
        (within ``slack`` pages in the stream's direction): the reader went through the
        whole window, unseen, and then went on.
        """
        near: Stream | None = None
        for s in reversed(self.streams.values()):
            j = self._window_index(s, first, last)
            if j >= 0:
                return s, j, False
            if s.window:
                end = s.window[-1]
                if end.delta > 0 and end.hi < first <= end.hi + self.slack:
                    return s, len(s.window) - 1, True
                if end.delta < 0 and end.lo - self.slack <= last < end.lo:
                    return s, len(s.window) - 1, True
            if near is None and s.hist.last_page >= 0 and abs(first - s.hist.last_page) <= self.slack:
                near = s
        return near, -1, False

    @staticmethod
    def _window_index(s: Stream, first: int, last: int) -> int:
        j = -1
        for i, st in enumerate(s.window):
            if st.lo <= last and first <= st.hi:
                j = i
        return j

    def _stray(self, s: Stream, first: int, last: int) -> bool:
        """A read between the planned steps of a confirmed stream, not one of them.

        The kernel's own readahead (of partly cached pages around the stream) and other
        readers produce such reads; up to ``max_stray`` in a row leave the stream, its
        window and its model untouched. More than that means the pattern changed.
        """
        if not s.window or not s.hits or not s.hits[-1]:
            return False
        lp = s.hist.last_page
        end = s.window[-1]
        if end.delta > 0:
            inside = lp < first and last <= end.hi
        else:
            inside = end.lo <= first and last < lp
        if not inside or s.stray >= self.max_stray:
            return False
        s.stray += 1
        self.counters["stray"] += 1
        self.streams.move_to_end(s.sid)
        return True

    def _consume(self, s: Stream, j: int, first: int, last: int, consumed: list[int]) -> int:
        """Steps 0..j of the window happened: history, learning, consumed pages; returns pages."""
        self.counters["continuations"] += 1
        s.stray = 0
        done, s.window = s.window[: j + 1], s.window[j + 1:]
        learned = 0
        for i, st in enumerate(done):
            if not (st.lo <= last and first <= st.hi):
                self.counters["implied"] += 1
            # the pages of a step the read itself did not touch were (or are being) read
            # from the kernel cache: the read listener reports the others exactly
            consumed.extend(p for p in range(st.lo, st.hi + 1) if not first <= p <= last)
            if learned < self.learn_cap or i == len(done) - 1:
                self.model.learn_one(s.hist.features(), st.label)
                learned += 1
            self.vocab.observe(st.delta)
            s.hist.push(st.delta, st.label, st.hi if st.delta > 0 else st.lo)
        s.hits.append(True)
        s.streak += 1
        return sum(st.hi - st.lo + 1 for st in done)

    def _delta(self, hist: StreamHistory, first: int, last: int) -> tuple[int, int] | None:
        """(delta, new last page) of a read after the stream's last page; None for a re-read.

        A read just behind a stream that moves steadily one way (``slack`` pages) is a
        late or re-read piece of what it already passed — the kernel issues readahead
        concurrently and the daemon may complete it out of order — not a step back.
        """
        lp = hist.last_page
        if first <= lp <= last:
            if last == lp:
                return None  # re-read of the stream's last page(s)
            return 1, last
        if lp - hist.ext < first and last < lp:
            return None
        if len(hist.deltas) >= 2:
            forward = sum(1 for d in hist.deltas if d > 0)
            if forward == len(hist.deltas) and lp - self.slack <= first and last < lp:
                return None
            if forward == 0 and lp < first and last <= lp + self.slack:
                return None
        if first > lp:
            return first - lp, last
        return last - lp, first  # backwards: from the nearest page of the read

    # ------------------------------------------------------------------ observe
    def observe(self, first: int, last: int, now: float) -> AddressPlan | None:
        """One read of pages ``first..last`` reached the daemon at time ``now``."""
        self.counters["events"] += 1
        s, j, beyond = self._match(first, last)
        consumed: list[int] = []
        pages_done = max(1, last - first + 1)
        if s is not None and j >= 0 and not beyond:
            # Continuation: every planned step up to j happened.
            pages_done = self._consume(s, j, first, last, consumed)
            d = s.window[-1].delta if s.window else 0
            if d >= 0 and last > s.hist.last_page:
                s.hist.last_page = last
            elif d < 0 and first < s.hist.last_page:
                s.hist.last_page = first
        else:
            if s is not None and not beyond and self._stray(s, first, last):
                return None
            if beyond:
                pages_done = self._consume(s, j, first, last, consumed)
            ref = s
            if s is None:
                ref = next(reversed(self.streams.values()), None)
            if ref is None:
                s = self._new_stream(StreamHistory())
                s.hist.start(first, last)
                s.t_last = now
                self._predict(s, now)
                return None
            moved = self._delta(ref.hist, first, last)
            if moved is None:
                self.counters["skipped"] += 1
                if s is None:
                    return None
                self.streams.move_to_end(s.sid)
                if not beyond:
                    return None
                label = None  # the window was confirmed; the read itself adds nothing
            else:
                delta, end = moved
                label = self.vocab.observe(delta)
            if label is None:
                pass
            elif s is not None:
                # near the stream (or just past its window), but not a planned step
                if beyond:
                    x = s.hist.features()
                    if label != OTHER:
                        self.model.learn_one(x, label)
                    predicted, _ = self.model.best(x)
                    s.hits[-1] = predicted == label
                    if not s.hits[-1]:
                        s.streak = 0
                else:
                    if s.pending_x is not None:
                        self.model.learn_one(s.pending_x, label)
                    s.hits.append(s.predicted == label)
                    if not s.hits[-1]:
                        s.streak = 0
                    s.window = []
                s.hist.push(delta, label, end, last - first + 1)
            else:
                # a jump: a new stream forked from the most recent one
                self.counters["forks"] += 1
                if label != OTHER and ref.pending_x is not None:
                    self.model.learn_one(ref.pending_x, label)
                hist = ref.hist.copy()
                hist.push(delta, label, end, last - first + 1)
                s = self._new_stream(hist)  # t_last 0: no rate until its next read
        self.streams.move_to_end(s.sid)
        dt = max(now - s.t_last, 1e-4)
        if s.t_last:
            inst = pages_done / dt
            s.rate = inst if s.rate == 0.0 else 0.7 * s.rate + 0.3 * inst
        s.t_last = now
        window = self._predict(s, now)
        return AddressPlan(s.sid, consumed, window)

    # ------------------------------------------------------------------ predict
    def lead_pages(self, s: Stream) -> int:
        """Pages a stream consumes while an extension of its window is being fetched."""
        return math.ceil(s.rate * (2.0 * self.latency_s + 0.003)) + 2

    def spacing(self, s: Stream) -> int:
        """Planned pages between two tripwires: twice the lead, and at least ``min_spacing``.

        Each tripwire is one (fast) daemon round trip for the reader. A sequential reader
        makes many reads per page and meets one every ``spacing`` pages' worth of reads;
        a strided one (steps of more than one page) makes about one read per planned page,
        so its tripwires are ``min_spacing_strided`` apart to stay as rare.
        """
        strided = any(abs(d) > 1 for d in s.hist.deltas)
        floor = self.min_spacing_strided if strided else self.min_spacing
        return min(self.max_depth_pages // 2, max(floor, 2 * self.lead_pages(s)))

    def depth_pages(self, s: Stream) -> int:
        # like the kernel's readahead, a young stream starts small and doubles with every
        # confirmed step: short runs waste little, long ones reach full depth quickly
        ramp = 2 ** min(s.streak + 1, 20)
        full = self.spacing(s) + self.lead_pages(s) + 1
        return min(ramp, max(self.min_depth, min(self.max_depth_pages, full)))

    def _predict(self, s: Stream, now: float) -> list[tuple[int, bool, float]]:
        x = s.hist.features()
        s.pending_x = x
        memo: dict[tuple, tuple[str | None, float]] = {}
        label, p = self.model.best(x)
        memo[StreamHistory.key(x)] = (label, p)
        s.predicted = label
        # keep the remaining window only while its next step is still what the model says
        if s.window and s.window[0].label != label:
            s.window = []
        if label is None or label == OTHER or label_delta(label) in (None, 0):
            s.window = []
            return []
        confirmed = bool(s.hits) and s.hits[-1]
        if not confirmed:
            # plan (without fetching) only the next step: a read there confirms the stream
            del s.window[1:]
            self._extend(s, memo, max_steps=1)
            return []
        self._extend(s, memo)
        if p < self.min_conf or not s.window:
            return []
        pages: list[tuple[int, bool, float]] = []
        seen: set[int] = set()
        cum = 1.0
        for st in s.window:
            cum *= st.p
            for page in (range(st.lo, st.hi + 1) if st.delta > 0 else range(st.hi, st.lo - 1, -1)):
                if page not in seen:
                    seen.add(page)
                    pages.append((page, True, cum))
            if len(pages) >= self.max_depth_pages:
                break
        pages = pages[: self.max_depth_pages]
        spacing = self.spacing(s)
        roles = s.roles
        any_trip = False
        last_new = False
        for i, (page, _, c) in enumerate(pages):
            push = roles.get(page)
            last_new = push is None
            if push is None:
                s.ordinal += 1
                push = s.ordinal - s.last_trip < spacing
                if not push:
                    s.last_trip = s.ordinal
                roles[page] = push
            any_trip = any_trip or not push
            pages[i] = (page, push, c)
        if not any_trip and last_new and len(pages) > 1:
            # no tripwire ahead of the reader: make the window's (new) last page one, so
            # that reaching the end is at least a fast read that extends the window
            page, _, c = pages[-1]
            roles[page] = False
            s.last_trip = s.ordinal
            pages[-1] = (page, False, c)
        while len(roles) > 4 * self.max_depth_pages:
            roles.popitem(last=False)
        return pages

    def _extend(self, s: Stream, memo: dict, max_steps: int | None = None) -> None:
        """Roll the model forward from the end of the window until it is deep enough."""
        vh = s.hist.copy()
        cum = 1.0
        n_pages = 0
        for st in s.window:
            vh.push(st.delta, st.label, st.hi if st.delta > 0 else st.lo)
            cum *= st.p
            n_pages += st.hi - st.lo + 1
        want_pages = self.depth_pages(s) if max_steps is None else 1
        want = self.max_steps if max_steps is None else max_steps
        ext = max(1, min(vh.ext, 64))
        calls = 0
        while len(s.window) < want and n_pages < want_pages:
            x = vh.features()
            key = StreamHistory.key(x)
            hit = memo.get(key)
            if hit is None:
                if calls >= self.max_model_calls:
                    break
                hit = self.model.best(x)
                calls += 1
                memo[key] = hit
            label, p = hit
            delta = label_delta(label) if label not in (None, EMPTY) else None
            if not delta or p < self.min_conf or cum * p < self.min_cum:
                break
            cum *= p
            if delta > 0:
                lo = vh.last_page + delta
                hi = lo + ext - 1
                end = hi
            else:
                hi = vh.last_page + delta
                lo = hi - ext + 1
                end = lo
            if lo < 0 or hi >= self.n_pages:
                break
            s.window.append(Step(lo, hi, label, delta, p))
            n_pages += hi - lo + 1
            vh.push(delta, label, end)

    def stats(self) -> dict:
        return {
            **self.counters,
            "streams": len(self.streams),
            "classes": len(self.vocab),
            "latency_ms": round(self.latency_s * 1e3, 3),
        }
