"""Every tuning constant of the prefetcher, in one place (docs/prefetch.md explains each).

Nothing else in ``nffs/predictor`` hard-codes a threshold, a window or a budget: the
predictors and the policy take a :class:`PrefetchConfig`. The defaults were chosen
from first principles (Leap's majority vote, Linux readahead's ramp, a 5 ms tier) and
checked with the sensitivity run in docs/prefetch.md (each constant halved and doubled
in the simulator), not fitted to the workload suite.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields, replace


@dataclass(frozen=True)
class PrefetchConfig:
    # ---------------------------------------------------------------- plumbing
    #: access events and point batches waiting for the learning thread; beyond it the
    #: listener drops the newest and counts it (``dropped`` in stats)
    queue_capacity: int = 4096
    #: prefetch fetches in flight at once (kept below the store's I/O slots)
    concurrency: int = 32
    #: while demand reads wait on a slow tier, a prefetch worker sleeps this long before
    #: looking again (demand always goes first)
    demand_yield_s: float = 0.002
    #: ... but never waits longer than this in a row (so prefetch is not starved for ever)
    demand_yield_max_s: float = 0.05
    #: the interpreter's thread switch interval while the prefetcher runs: the learning
    #: thread holds the GIL for Python work, and with the default 5 ms a FUSE request on
    #: the trio thread can wait that long for it (0: leave the interpreter's setting)
    gil_switch_interval_s: float = 0.0005
    #: at most one thinking round (a hop to the learning thread) per this interval: events
    #: that arrive meanwhile are handled together in the next round
    think_interval_s: float = 0.002
    #: consecutive planned pages — or the next queued pages of the field space, wherever they
    #: lie — fetched (and pushed) together as one run, at most
    fetch_run_pages: int = 16
    #: ... and at most this many bytes (at least one page): every page of a run arrives when
    #: the last does, so a run of 1 MiB pages made a reader that reached its first page wait
    #: for the whole run (2-16 MiB read and pushed: 10-15 ms over a 5 ms tier), more than a
    #: plain miss; pages this big are fetched one per I/O, concurrently
    fetch_run_bytes: int = 1 << 20
    #: ... and an address-space run goes on over gaps of up to this many pages (one stream's
    #: pages, in one direction): a stride that is not a multiple of the page size plans 1-4
    #: pages a step with a page or two between, and a run per step cost a hop to a worker
    #: thread per step (0: consecutive pages only)
    fetch_run_gap_pages: int = 4
    #: planned pages waiting to be fetched; the oldest plans are dropped beyond it
    max_queued: int = 8192
    #: after this many READ events in a row that neither waited on a slow tier nor touched
    #: a planned page, such events skip the predictor (the data is in memory already:
    #: nothing to gain, and the kernel's readahead works); the next slow one resumes it
    cheap_skip_after: int = 8
    #: a read that waits on a slow tier is looked at as it starts (a MISS event, a thinking
    #: round during its wait); after this many such misses in a row that planned nothing (a
    #: random reader), with its answer instead (as before MISS events), until an address plan comes
    miss_quiet_after: int = 8
    #: a GATHER event of at most this many pages, all served from memory and none of them
    #: planned by us, skips the predictor at once (a single-point query touches ~60 pages)
    small_gather_pages: int = 256

    # ---------------------------------------------------------------- address space
    #: byte deltas kept per stream for the majority vote (Leap's window)
    vote_window: int = 8
    #: a trend needs at least this many deltas in the window, and a strict majority
    min_votes: int = 3
    #: ... but a contiguous run (each read starting where the last ended, forward or
    #: backward) needs only this many: contiguity is a strong signal on its own, and every
    #: read before the trend is a miss that lands in the p99 of short runs and of
    #: interleaved readers. Not 1 (a trend at a stream's second read, where Linux's
    #: read-ahead starts): random reads in a small file pair up often enough that it
    #: prefetched hundreds of pages for nothing (docs/prefetch.md 6.0u)
    min_votes_contiguous: int = 2
    #: ... and a stream founded on three reads in arithmetic progression (to 4 KiB), read
    #: one after the other — the read and the `progression_recent_orphans` unmatched reads
    #: just before it — needs only this many (its two deltas): a strided reader's reads are
    #: all misses until its trend holds, and in a run of a few hundred reads the fourth
    #: miss is its p99. Three random reads in a row rarely line up (a false trend costs its
    #: first window); progressions found further back in the orphans (interleaved readers)
    #: still need `min_votes`
    min_votes_progression: int = 2
    progression_recent_orphans: int = 2
    #: when no delta holds a majority, the vote runs over sums of p consecutive deltas for
    #: p = 2 .. this (strides a, b, a, b, ... : every two sum to a + b); longer cycles are
    #: left to the learned model (a vote over p deltas needs p x min_votes of history)
    max_period: int = 3
    #: a contiguous forward stream over pages of at most this many bytes is left to the
    #: kernel's own read-ahead: its pages are fetched into memory ahead of the kernel's
    #: requests, not pushed into the page cache (0: push every stream). The kernel's
    #: asynchronous read-ahead keeps such a reader in page-cache hits by itself once its
    #: requests are served from memory; pushed pages carry no read-ahead mark, so pushing
    #: them switches it off and the reader meets our markers as blocking misses instead
    #: (docs/prefetch.md 6.0c: 4 KiB seq / stride-odd / mmap-seq p99 0.1 ms with `none`,
    #: 0.5-0.6 ms with pushes). Backward and strided streams are pushed: the kernel's
    #: read-ahead does not follow them
    kernel_readahead_page_bytes: int = 16 << 10
    #: ... and so is a forward stream over bigger pages while it goes less than this many
    #: bytes in one reaction time (measured at its marker hits): the kernel's read-ahead
    #: window for the mount (Linux's default for FUSE, 128 KiB), which then asks for each
    #: page before its reader gets there (0: push every forward stream over bigger pages)
    kernel_readahead_window_bytes: int = 128 << 10
    #: ... such a stream's window reaches at least this many bytes beyond the kernel's latest
    #: request: the kernel's read-ahead runs up to one of its windows (128 KiB by default)
    #: ahead of the reader, and its next request must find its pages fetched already
    kernel_readahead_lead_bytes: int = 256 << 10
    #: readahead window (in trend steps) when a trend is first confirmed ...
    ra_initial_steps: int = 4
    #: ... or, for a strided stream, a lead and a chunk at its reader's own pace: the gap
    #: between a founding read's answer and the next request, plus this (seconds) for a
    #: read from the kernel's cache once its pages are pushed (its founding reads were
    #: misses, a tier's latency apart, which says nothing of the reader's speed)
    cached_read_s: float = 50e-6
    #: ... and at most this many window units (a reader with requests in flight together has
    #: no gap between them, and three random reads in a row can line up by chance)
    founding_max_steps: int = 32
    #: a byte stride measured over few steps errs by up to 4 KiB / steps per step (request
    #: offsets are rounded down to 4 KiB); a step planned j steps past the end of that
    #: baseline is widened by that error times j on each side (its pages pushed, never its
    #: marker; passed by, they count as wasted), up to this many bytes
    #: or half a page, whichever is more: a founding stride (two steps) errs by 2 KiB a step,
    #: and its first window reaches 10-20 steps before a marker hit measures it again
    stride_drift_max_bytes: int = 16 << 10
    #: ... and not at all while that error is under this many bytes: a refined stride's
    #: (hundreds of steps measured) stays under it for tens of steps, and a page it would add
    #: is read only if the read ends within that error of a page boundary — a stride of whole
    #: 4 KiB chunks ending on one had a never-read page planned every step (a third of its
    #: prefetches)
    stride_drift_min_bytes: int = 1024
    #: a stride of whole 4 KiB blocks voted by identical deltas is taken as exact (no drift
    #: planned) at once over pages of at most this many bytes, where a drift page is a whole
    #: page more per step; over bigger pages identical quantised deltas come often from a
    #: stride that is not exact (140,330 bytes is requested 139,264 apart three times in
    #: four), and a drift page is a fraction of a step ...
    stride_exact_founding_page_bytes: int = 4096
    #: ... there the stride is taken as exact once a read lands on its lattice to the byte
    #: this many steps from the anchor (a stride off by f bytes a step is off the lattice
    #: within 4096 / f steps; one that is not, errs by under a 4 KiB block by then)
    stride_exact_after_steps: int = 8
    #: the window doubles on each confirmed marker hit up to this many steps ...
    ra_max_steps: int = 256
    #: ... and never reaches further than this many bytes ahead of the reader
    ra_max_bytes: int = 32 << 20
    #: nor further than this many pages ahead
    ra_max_pages: int = 1024
    #: nor more pages than this part of the memory tiers' capacity: a window that outgrows
    #: memory evicts its own pages before the reader gets there, and a false trend (random
    #: reads that happen to line up) costs at most this much
    ra_max_memory_fraction: float = 0.25
    #: ... nor further than timeliness needs. The *lead* a stream needs is how far its reader
    #: goes while one prefetch is on its way: reader speed (measured between marker hits)
    #: x the measured reaction time (from the read that triggers a plan to the arrival of
    #: the plan's first page), times this safety margin. The window is the lead plus one
    #: *chunk* (below): a marker every chunk, so a hit still leaves a lead in flight, and a
    #: reader that stops leaves at most a lead and a chunk of fetched pages unseen.
    lead_margin: float = 2.0
    #: the reader's speed between two marker hits leaves out the time its reads waited on a
    #: slow tier (its own pace, not what we let it do), but is taken over at least this share
    #: of the time between the hits: a reader that only waited moves no faster than 20x
    #: what it was seen to do (the window's caps bound it anyway)
    own_pace_min_share: float = 0.05
    #: markers per lead: the window is planned a chunk (a lead / this) at a time, one marker
    #: per chunk. One marker per lead (1) needs a window of two leads — what a stopped reader
    #: leaves unread and, behind its last marker, read but unseen; more markers shorten
    #: that tail, each costing its reader one read served from memory instead of the cache
    markers_per_lead: int = 4
    #: a contiguous stream's marker page is pushed but for a hole (the 4 KiB kernel page where
    #: its reader enters it): the read that reaches the daemon there moves 4 KiB, not a whole
    #: page (False: markers are not pushed at all; a strided stream's never are)
    marker_holes: bool = True
    #: ... until the stream's reader has gone past this many holes without reading them: its
    #: reads have gaps (contiguous requests were the kernel's read-ahead filling them), and
    #: its markers are whole from then on (one alone may be a marker never pushed: found in
    #: memory already, or its push skipped)
    holes_passed_for_whole_markers: int = 2
    #: ... and, for a forward stream of an open file, that file's forward streams are left
    #: to the kernel from then on (kernel-led: fetched ahead, not pushed), whatever their
    #: speed: its reader touches pushed pages without a request (docs/prefetch.md 6.0zb)
    hole_skippers_kernel_led: bool = True
    #: the reaction time is the median of this many recent samples (plan heads): robust to
    #: one-off stalls of a loaded machine, quick to follow a lasting change
    reaction_samples: int = 15
    #: a stream whose pages were late (demanded while in flight), or whose reader overtook
    #: its window, doubles its lead (up to this factor) at the next marker hit ...
    ra_boost_max: float = 8.0
    #: ... and a stream all on time since the last marker hit lets that boost decay by this
    #: factor per hit (never below 1): the window follows measured lateness, not a guess
    ra_boost_decay: float = 0.8
    #: a read within this many bytes of a young stream's position (or at its last delta
    #: repeated) joins it; other reads are orphans until three form a progression
    stream_radius_bytes: int = 256 << 10
    #: ... within this many reads (of any stream) after the stream's last one: a reader's next
    #: read comes within a few of the others' (interleaved readers), while random reads land
    #: near every stream sooner or later and would found false trends
    young_stream_idle_events: int = 32
    #: streams followed at once (least recently used is forgotten)
    max_streams: int = 32
    #: use the learned model at all (False: majority-vote trends only; for ablations)
    use_model: bool = True
    #: the learned model (markov / hoeffding) predicts the next delta when no majority
    #: holds; it is trusted only above this probability ...
    model_min_proba: float = 0.7
    #: ... and then chains at most this many steps ahead
    model_steps: int = 8
    #: distinct byte deltas the model knows as classes (the rest are "other")
    model_classes: int = 32
    #: history depth given to the model as features (last k delta classes)
    model_history: int = 3

    # ---------------------------------------------------------------- field space
    #: frames predicted ahead of the last batch, at least ...
    field_frames_ahead: int = 2
    #: ... and at most: between the two, as many as the field space's measured reaction time
    #: (a batch's arrival to its planned pages' arrival: thinking, queueing, the slow read)
    #: spans frames, plus one. A camera whose frames come every 5 ms over a 5 ms tier needs
    #: its pages planned three or four frames before it asks (two left most of them late)
    field_frames_ahead_max: int = 8
    #: ... the reaction time taken as this quantile of the last ``reaction_samples`` plans: a
    #: frame waits on the slowest of its pages, so the lead covers most plans, not half of them
    field_reaction_quantile: float = 0.8
    #: ... and the time between batches: a shorter gap sets it at once, a longer one moves it
    #: a quarter of the way, counting as this many periods at most: a camera that paused
    #: must not plan two frames ahead for the next twenty
    field_pause_periods: float = 4.0
    #: a level is predictable when the measured prediction error of the last frame,
    #: in that level's cells, is below this fraction of a cell
    field_cell_fraction: float = 0.25
    #: a frame (beyond the next) predicted again with its points within this fraction of the
    #: finest cell of the previous prediction's keeps that prediction's pages: not hashed nor
    #: planned again. The refits of a steady camera from float32 points drift by ~0.03 of the
    #: finest cell of a 2^19-resolution level, less than 10^-3 of a 2^11 one: a few of the
    #: finest level's corners move, and the next frame, hashed afresh, takes them up
    field_reuse_cells: float = 0.05
    #: pages fetched per predicted frame at most (coarse levels first)
    field_page_budget: int = 4096
    #: ... and never fewer than this once stops have cut it (each stop quarters the budget;
    #: a full feedback window at ``resume_accuracy`` doubles it back)
    field_budget_min: int = 8
    #: a predicted frame touching more pages than this part of the memory tiers' capacity
    #: is not prefetched: the frame's working set does not fit, so its prefetches would
    #: evict its own pages (and each other) before use — every fetch waste. Consecutive
    #: frames share most pages (a smooth camera brings tens of new ones), so a frame up to
    #: three quarters of memory still leaves room for the next ones. (The count covers the
    #: levels judged predictable, hashed for at most ``field_max_points`` points: a lower
    #: bound of the frame's working set.)
    field_memory_fraction: float = 0.75
    #: points hashed per predicted frame at most (a random subsample beyond)
    field_max_points: int = 1 << 16
    #: batches below this size are single lookups (concepts, at/): no motion model
    field_min_points: int = 16

    # ---------------------------------------------------------------- feedback
    #: outcomes (useful / late / wasted) remembered per space for the controller
    feedback_window: int = 128
    #: a space stops issuing when wasted / outcomes exceeds this over the window ...
    stop_waste: float = 0.5
    #: ... or late / outcomes exceeds this in the address space (1.0: never on lateness
    #: alone). A late prefetch still pays: its demand joins it and waits for what is left of
    #: the read. A reader faster than the store (a `cat` of a 64 KiB-page field) is late on
    #: most pages whatever the depth; stopped at 0.6, it fell back to demand misses for
    #: 255 reads (a second) at a time, p99 8.7 ms, the same as `none`. The reason 0.6 once
    #: had — deepening a late stream floods the memory tier — is gone: a window never
    #: reaches past `ra_max_memory_fraction` of it (docs/prefetch.md 6.0x)
    stop_late: float = 1.0
    #: ... in the field space: a field-space prefetch has no depth to flood memory with (its
    #: budget is per frame), and a late one still shortens the frame that joins it — a
    #: camera over a tier slower than its frames come (seed 29's orbit: ~30 new pages a
    #: frame, late two times in three) had frames of 5.8 ms (p50) with its late prefetches,
    #: 13.4 ms once stopped on lateness, 18 ms without prefetch (docs/prefetch.md 6.0m).
    field_stop_late: float = 1.0
    #: outcomes needed before the controller judges at all
    feedback_min: int = 32
    #: a stopped space keeps predicting in the shadow; it resumes when this share of
    #: its shadow predictions is demanded (over the last ``feedback_window``)
    resume_accuracy: float = 0.8
    #: while demand reads wait on a slow tier, prefetch keeps at most this share of
    #: ``concurrency`` in flight (tier load); the rest waits
    load_depth_factor: float = 0.25

    # ---------------------------------------------------------------- ledger
    #: a fetched page not demanded within this many seconds is wasted
    ledger_ttl_s: float = 10.0
    #: pages the ledger follows at once (the oldest are retired, as wasted)
    ledger_capacity: int = 1 << 16
    #: a page read by the daemon or pushed within this many seconds may be in the
    #: kernel's cache (possibly dirty through mmap): never push over it
    repush_after_s: float = 120.0
    #: buckets of the table that remembers when pages were last read, written or pushed (4
    #: bytes each; more buckets, fewer pushes skipped for a page that only shares a bucket)
    recent_buckets: int = 1 << 20
    #: after a write reached the daemon, pages are fetched but not pushed into the kernel
    #: cache for this long: a margin for a writer whose other pages have not reached the
    #: daemon yet (an mmap writer's dirty pages; a push racing a write is patched by it)
    write_quiet_s: float = 2.0
    #: heat lent to a fetched page per unit of confidence (taken back when used/wasted)
    heat_boost: float = 4.0

    def with_(self, **changes) -> "PrefetchConfig":
        return replace(self, **changes)

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_env(cls, var: str = "NFFS_PREFETCH_CONFIG") -> "PrefetchConfig":
        """Defaults, overridden by a JSON object in ``$NFFS_PREFETCH_CONFIG`` (sensitivity runs
        through real mounts); unknown names are an error."""
        text = os.environ.get(var, "").strip()
        if not text:
            return cls()
        changes = json.loads(text)
        unknown = set(changes) - set(cls.names())
        if unknown:
            raise ValueError(f"unknown prefetch settings in ${var}: {sorted(unknown)}")
        return cls(**changes)
