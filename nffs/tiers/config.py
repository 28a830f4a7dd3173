"""Every tuning constant of the storage core, in one documented place.

Values are defaults; `StoreConfig` can be overridden per store (tests use smaller
numbers).  Nothing here changes on-disk formats except `slab_bytes` (recorded per tier).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StoreConfig:
    #: CPU-heavy worker jobs (big gathers, their page scans) run at this nice level (or the
    #: daemon's, if that is lower priority already), so that a FUSE request never waits long
    #: for a core while a 1 Mi-point query keeps every core busy (SPEC 8 isolation)
    cpu_nice: int = 5
    #: memory tiers are kept below this fill ratio; above it the coldest copies move down...
    high_watermark: float = 0.90
    #: ...until this ratio is reached (SPEC 3: 90 % / 80 %)
    low_watermark: float = 0.80
    #: half-life of the decayed access count of homes (seconds): which homes move up a tier
    heat_half_life_s: float = 30.0
    #: the hotness of memory copies (what eviction ranks) is a decayed access count whose
    #: clock is the accesses themselves: it halves each time the memory tiers see this many
    #: times as many page accesses as they hold pages (LRFU). Decayed by wall time (30 s),
    #: a moving working set lost its newest pages first: a camera's frame of 626 pages of
    #: 64 KiB in a 1,024-page tier, its departed pages hot from thirty frames of use, the
    #: frame's own newest ones coldest — each eviction emptied the frame being read (frames
    #: of 50-100 ms against 15 ms, twice the slow reads of no prefetch). Counted in accesses,
    #: a page used in the last frames outranks one last used a turnover ago, and a page used
    #: often still outranks one used once
    heat_half_life_turnovers: float = 1.0
    #: heat loans remembered (to take back exactly what was lent; the oldest forgotten)
    heat_loans_kept: int = 1 << 16
    #: a home on a slower durable tier whose decayed access count reaches this moves up
    promote_heat: float = 4.0
    #: a durable tier's pages live in slab files of this many bytes at most (at least
    #: `min_slots_per_slab` slots), so 10^6 pages need a handful of files, not 10^6
    slab_bytes: int = 1 << 30
    min_slots_per_slab: int = 4096
    #: threads that may serve demand reads of durable tiers at once
    demand_threads: int = 32
    #: prefetch fetches in flight at once (kept well below demand_threads, which demand
    #: has to itself). 16: a camera's next frames bring 20-40 new pages each, and with 8
    #: slots over a 5 ms tier (1,600 pages/s) frames 5-10 ms apart outran the prefetcher;
    #: scans, strides and interleaved readers measured the same with 8 and 16
    prefetch_slots: int = 16
    #: of those, how many may be in a worker thread (reading, checking) at once; the rest
    #: wait their turn in order. All 16 in threads shared two CPUs and the interpreter
    #: lock: every run finished late together, the one a reader waited on (the oldest)
    #: no sooner than the newest (its fetches took 30 ms over a 5 ms tier)
    prefetch_threads: int = 2
    #: a fetched page of at least this many bytes is copied into its memory slot (and its
    #: chunks hashed) in a worker thread, not on the trio thread: a 1 MiB page costs ~0.45
    #: ms there, and a plan's pages arriving together kept every request waiting behind
    #: them (a strided reader over 1 MiB pages: its reads from the kernel's cache took 1.4-
    #: 2.4 ms, the first 7.6 ms). Smaller pages cost less than the hop to a worker
    install_in_worker_bytes: int = 256 << 10
    #: a prefetch waits while more demand reads than this wait on slow tiers
    prefetch_yield_demand: int = 2
    #: a slow-tier operation (slot read, write-back batch, migration) that takes longer than
    #: this is given up with EIO: a hung network file system must not hang fsync for ever
    durable_io_timeout_s: float = 20.0
    #: times a write looks for a memory slot before giving up with EIO: other writers may take
    #: the slot that a write-back just freed, each attempt waits for a write-back of its own
    write_attempts: int = 64
    #: threads for write-back and migration
    background_threads: int = 2
    #: dirty bytes in memory tiers that start a write-back before the interval is up (like the
    #: kernel's dirty_background_bytes): a long copy drains to disk while it runs, so the
    #: final fsync has little left to do
    dirty_background_bytes: int = 32 << 20
    #: a write-back batch writes at most this many bytes before its group commit
    writeback_batch_bytes: int = 16 << 20
    #: bytes gathered into one pwritev when consecutive slots are written
    coalesce_bytes: int = 8 << 20
    #: write-back runs of at least this many bytes go to the durable tier with O_DIRECT,
    #: straight from the memory tier (no page-cache copy); smaller ones through the page
    #: cache, where one fsync covers many (SlabHomes.write_many). 0: never O_DIRECT
    direct_write_bytes: int = 512 << 10
    #: free memory-tier slots whose memory is given back (a hole punched in the arena file)
    #: per background tick, once a tick passed without evictions (under eviction pressure a
    #: freed slot is reused at once, and punching it would be wasted work)
    trim_slots_per_tick: int = 4096
    #: background tick: watermarks, write-back timer and tier health (seconds, at most)
    background_tick_s: float = 0.5
    #: page-table rows kept in memory (homes); the rest is SQLite's job (its cache is small
    #: too: memory per materialised page must stay far below 200 B, SPEC 8)
    row_cache_entries: int = 1 << 13
    #: homes whose recent reads are remembered, to move hot ones up a durable tier
    home_heat_entries: int = 1 << 13
    #: a field whose pages fit in the first memory tier maps page p to slot p there, so a
    #: gather is one numpy take; below this page count the page->slot index is a dense array
    dense_index_pages: int = 1 << 20
    #: memory for line sums of the first memory tier's verified chunks (arena.LineSums):
    #: small gathers check the 128-byte lines of their rows instead of hashing ~60 whole
    #: chunks. Fixed, whatever the field's size: 8 MiB (8 B per 128-byte line) covers
    #: 128 MiB of arena (a smaller arena takes only what it has lines for)
    line_sums_bytes: int = 8 << 20
    #: slots of the direct-mapped arena whose chunks the background verifies and gives line
    #: sums per tick, once small gathers use them (16 MiB of 64 KiB pages: a 57 MB field
    #: is covered within two seconds of its first single-point query)...
    learn_lines_slots_per_tick: int = 256
    #: ...in steps of this many bytes, between which FUSE requests are served (~3 ms of
    #: the trio thread per MiB when the chunks are cold)
    learn_lines_step_bytes: int = 256 << 10
    #: memory given to an in-process arena when no memory tier is configured
    anonymous_arena_bytes: int = 64 << 20
    #: how long a verified tier-root identity is trusted before it is checked again (seconds)
    root_check_interval_s: float = 1.0
    #: the writer publishes the page table for readers on other machines (docs/sharing.md)
    #: at every fsync and, after background write-backs, at most this often (seconds)
    publish_interval_s: float = 2.0
    #: a publish writes only the rows changed since the previous one (a delta) until the
    #: chain of deltas holds this share of the base's rows, or this many files; then a new
    #: full base (generations.Publisher). An fsync after a few writes then costs what they
    #: changed, not 36 B per materialised page
    publish_delta_share: float = 0.25
    publish_max_chain: int = 32
    #: while a reader's lease is younger than `reader_lease_fresh_s`, freed slots stay out
    #: of use this long, so a reader of the previous generation never reads a reused slot
    reader_retain_s: float = 30.0
    reader_lease_fresh_s: float = 120.0


DEFAULT = StoreConfig()
