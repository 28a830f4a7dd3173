"""The page store: the flat parameter byte space cut into pages over tiers (SPEC 3, 7).

One path for every page access. "Where is page p?" is answered by the page table
alone (pagetable.py); bytes live in memory-tier arenas (arena.py) and durable slab
homes (homes.py); slow I/O goes through the scheduler's classes (scheduler.py).
Everything here runs on the trio thread except what is handed to worker threads
explicitly: slot reads and writes, fsyncs, commits, checksums of whole pages and
gathers.

The crash protocol (docs/design.md) in one paragraph: a write only ever changes a
memory copy; write-back writes dirty copies into *free* slab slots, fsyncs them,
then commits the new (tier, slot, checksum) rows in one SQLite transaction with
synchronous=FULL; only then do the old slots become free. Memory copies are never
trusted across a restart. So after any crash the field is exactly its last committed
homes: fsynced data is there, unsynced data may be missing, and nothing changes later
without a write. Slots written but not committed are free at the next mount.
"""
from __future__ import annotations

import contextlib
import errno
import functools
import logging
import math
import sqlite3
import time
from dataclasses import dataclass
from typing import Awaitable, Callable, Mapping

import numpy as np
import trio
import xxhash

from ..arrays import sorted_unique
from ..encoding.init import implicit_values, implicit_values_at
from ..encoding.layout import FieldLayout
from ..errors import ChecksumMismatch, InvalidInput, NoSpace, NffsError, PageIOError, ReadOnly, TierTimeout, TierUnavailable
from .arena import MemoryArena, chunk_sums
from .config import StoreConfig
from .pagetable import Home, MemTier, PageTable
from .port import AccessEvent, AccessKind, AccessListener, FetchResult, MemoryGatherListener, MemoryReadListener, Priority
from . import generations
from .homes import SlabHomes, chunk_size, mask_runs, stored_checksum
from .scheduler import IOScheduler
from .tier import Tier

#: a gather of at most this many entries (8 points of a 16-level 3-D field) takes the small path
SMALL_GATHER_ENTRIES = 1024
#: a gather of at most this many elements finds its pages on the trio thread ...
INLINE_GATHER_ELEMENTS = 16384
#: ... and takes its rows there too when its pages are at most this many (~1 µs of checksum a
#: page), or, whatever its pages, when it has at most `LINE_CHECK_ROWS` elements and the
#: memory tiers it takes from keep line sums (the rows' lines are checked in a few numpy
#: calls, see `MemoryArena.bad_slots_of_rows`): a camera's frame, which two hops to a worker
#: thread held up behind queued prefetch work; bigger batches go to a worker
INLINE_TAKE_PAGES = 512
#: a gather of up to this many rows verifies only the chunks its rows are in (when they are
#: fewer than the chunks of the pages it lists); beyond, sorting the rows' chunks costs
#: more than hashing every chunk of the pages
MID_GATHER_ROWS = 1 << 18
#: a gather of at most this many rows (elements, when its tiers are not direct-mapped)
#: checks the rows' lines on the trio thread (`MemoryArena.bad_slots_of_rows`: a sort and a
#: few vectorised calls, ~1 ms at this size) and takes them there; beyond, a worker hashes
#: the rows' whole chunks. A camera's frame of ~150 points (14,000 rows on ~5,000 chunks of
#: 4 KiB) hashed 20 MB a frame in the worker: 4-5 ms, with the GIL held for most of it by
#: its loop of hash calls (docs/prefetch.md 6.0u). Lines not yet known cost their chunk's
#: hash once, on the trio thread then (the background learns resident slots' lines ahead)
LINE_CHECK_ROWS = 1 << 15
#: a batch of fetched pages is installed this many at a time, other tasks (FUSE requests
#: among them) running in between: 16 pages of 64 KiB installed at once held up every
#: request for up to a millisecond. Within a stretch the pages installed are pinned (the
#: next ones must not evict them); between stretches they are not
#: (`test_a_write_finds_room_while_a_batch_bigger_than_memory_is_installed`)
INSTALL_CHECKPOINT_PAGES = 4
#: a published generation of at least this many rows gives its temporaries back (malloc_trim)
TRIM_AFTER_PUBLISH_ROWS = 1 << 15
#: so do this many pages loaded from their homes or written back to them (at the next
#: background tick), and any such work once a tick passed without more of it
TRIM_AFTER_PAGES = 1 << 13
#: small gathers whose heat may wait for the background tick (see `_apply_deferred_heat`)
GATHER_HEAT_PENDING = 1024
#: one-page reads from memory whose heat and counts may wait (`MemTier.pending_hits`)
READ_HEAT_PENDING = 4096
#: the unsigned word that holds one row of 2, 4 or 8 bytes (a row taken as one word)
_ROW_WORDS = {2: np.uint16, 4: np.uint32, 8: np.uint64}

log = logging.getLogger(__name__)

_h = xxhash.xxh3_64_intdigest


def _release_heap() -> None:
    """Return freed heap memory to the system (glibc keeps what big temporaries such as a
    published table's rows freed, and the daemon's memory would grow with the largest)."""
    global _malloc_trim
    if _malloc_trim is None:
        import ctypes
        import ctypes.util

        try:
            _malloc_trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim = None


#: the access clock's unit is recomputed after this part of a half-life (its steps: 1 %)
HEAT_UNIT_STEPS = 64
#: ... and the heats are scaled back (divided by the unit) when it grows past this
HEAT_UNIT_MAX = float(2 ** 32)


def add_accesses(heat: np.ndarray, slots: np.ndarray, unit: float = 1.0) -> None:
    """heat[s] += unit for each s in slots (repeats count): by counting when the slots are
    many for the array (`np.add.at` took 6 ms for the 131,072 rows of 1,024 deferred
    single-point gathers over 13,896 slots, on the trio thread; a dense bincount 0.2 ms),
    else where they fall."""
    if slots.size * 8 >= heat.size:
        counts = np.bincount(slots, minlength=heat.size)
        np.add(heat, counts if unit == 1.0 else counts * unit, out=heat, casting="unsafe")
    else:
        np.add.at(heat, slots, unit)


@dataclass
class _InFlight:
    done: trio.Event
    priority: Priority
    home: Home  # the version being read: joiners use the bytes only while it is still current
    data: bytes | None = None
    error: BaseException | None = None
    cancelled: bool = False  # the fetching task was cancelled: joiners fetch for themselves
    joined_by_demand: bool = False

    @property
    def landed(self) -> bool:
        """Read and checked (its install may still be to come: a batch's flight stays
        registered until its page is installed); its bytes are `data`."""
        return self.done.is_set() and self.error is None


class PageStore:
    def __init__(self, layout: FieldLayout, table: PageTable, tiers: list[Tier], cfg: StoreConfig, *, read_only: bool = False,
                 field_dir: str | None = None) -> None:
        self.layout = layout
        self.field_dir = field_dir
        self.table = table
        self.tiers = tiers
        self.cfg = cfg
        self.read_only = read_only
        self.page_size = layout.page_size
        self.itemsize = layout.itemsize
        self.elems_per_page = self.page_size // self.itemsize
        self.n_pages = layout.n_pages
        self.chunk = chunk_size(self.page_size)
        self.n_chunks = self.page_size // self.chunk
        self.full_mask = (1 << self.n_chunks) - 1
        self.memory_tiers = [t for t in tiers if t.mem is not None]
        self.durable_tiers = [t for t in tiers if not t.volatile]
        self.tier_by_id = {t.id: t for t in tiers}
        self.io = IOScheduler(cfg)
        self._gen = 0  # write generation: dirty stamps and page versions
        self._version = {mt.index: np.zeros(mt.arena.n_slots, dtype=np.int64) for mt in table.mem_tiers}
        self._inflight: dict[int, _InFlight] = {}
        #: held by the prefetch batch installing its pages (see `_fetch_batch`)
        self._prefetch_installs = trio.Lock()
        #: slots dropped while pinned: released when the last pin goes
        self._unpin_release: set[tuple[int, int]] = set()
        self._wb_lock = trio.Lock()
        self._publish_lock = trio.Lock()
        self._wb_kick = trio.Event()
        self._dirty_kick_pages = max(1, cfg.dirty_background_bytes // self.page_size)
        self._last_writeback = time.monotonic()
        self._gathers_active = 0
        self._home_heat: dict[int, tuple[float, float]] = {}
        #: the memory copies' access clock (`heat_half_life_turnovers`): page accesses so far,
        #: what one adds now (2^(clock / half-life)), and when that is recomputed
        capacity = sum(self._mem_capacity(t) for t in self.memory_tiers) if self.memory_tiers else 1
        self._heat_half = max(1.0, cfg.heat_half_life_turnovers * capacity)
        self._heat_clock = 0.0
        self._heat_unit = 1.0
        self._heat_due = self._heat_half / HEAT_UNIT_STEPS
        #: reads from memory whose heat waits (`READ_HEAT_PENDING`), but no more than a step
        #: of the clock's unit: applied later, they count as accesses of that moment, and
        #: reads a turnover apart must not come out as one
        self._read_heat_pending = max(1, min(READ_HEAT_PENDING, int(self._heat_half / HEAT_UNIT_STEPS)))
        #: the prefetcher's heat loans on memory copies, in heat as lent (taken back alike)
        self._heat_loans: dict[int, float] = {}
        self._listeners: list[AccessListener] = []
        #: one per listener: how a read served from memory reaches it
        self._memory_read_listeners: list[MemoryReadListener] = []
        #: ... and how a small gather served from memory does
        self._memory_gather_listeners: list[MemoryGatherListener] = []
        #: while set, reads from memory of pages not in `_read_log_watched` only append their
        #: pages here (`log_memory_reads`), counted in `_logged_reads`
        self._read_log: list[int] | None = None
        self._read_log_watched: Mapping[int, object] = {}
        self._logged_reads = 0
        #: pages [first, last] of each level, and whether all of them sit complete in the
        #: direct-mapped arena (then a gather needs no per-entry page bookkeeping for it)
        self._level_pages = [(lo // self.page_size, (hi - 1) // self.page_size)
                             for lo, hi in (layout.level_byte_range(l) for l in range(layout.n_levels))]
        self._level_ready = [False] * layout.n_levels
        #: every level ready: a small gather needs no residency check (`_gather_small_now`)
        self._all_levels_ready = False
        #: the direct-mapped arena's parameter rows, as one word per row where one fits
        self._row_table = np.zeros(0, dtype=np.uint8)
        self._row_table_arena: MemoryArena | None = None
        #: pages of recent small gathers, counted in the direct arena's heat later (`_apply_deferred_heat`)
        self._gather_heat: list[np.ndarray] = []
        #: a small gather was answered since the last background tick (`_learn_lines`)
        self._small_gathered = False
        first = self.memory_tiers[0] if self.memory_tiers else None
        self._direct = first is not None and first.mem is not None and first.mem.direct and table.dense
        #: the direct-mapped first tier (slot = page), whose copies the fast path finds without
        #: asking the page table; None when the first tier is slotted
        self._direct_mem: MemTier | None = first.mem if self._direct else None  # type: ignore[union-attr]
        if first is not None and first.mem is not None:
            # small gathers check their rows' lines, not whole chunks: the direct arena's
            # synchronous path, and a slotted arena's inline gathers (a camera's frame touches
            # ~a thousand pages, nearly all checked before)
            first.mem.arena.enable_line_sums(self.cfg.line_sums_bytes)
        self._row_bytes = layout.features * layout.itemsize
        #: small gathers may take the synchronous path (`gather_rows_now`)
        self._direct_rows = self._direct and self.page_size % self._row_bytes == 0
        self._rows_page_shift = (self.page_size // self._row_bytes).bit_length() - 1
        #: the background's pass giving the direct arena's chunks line sums (`_learn_lines`):
        #: the next slot, chunks learned in this pass, LineSums.changes when a whole pass
        #: found nothing left to learn (nothing to do until a write changes some chunk) and
        #: when the last tick looked (a pass waits for a tick without writes)
        self._learn_cursor = 0
        self._learn_in_pass = 0
        self._learn_done_at = -1
        self._learn_seen_changes = -1
        self._learn_seen_reads = 0  # the store's reads at the last tick: reads since then postpone the pass
        self.counters = {
            "reads": 0,
            "writes": 0,
            "implicit_reads": 0,
            "pages_materialised": 0,
            "writebacks": 0,
            "writeback_batches": 0,
            "evictions": 0,
            "checksum_failures": 0,
            "io_errors": 0,
            "enospc": 0,
            "late_joins": 0,
            "migrations": 0,
        }
        #: published generation (writer) or the one in use (reader); docs/sharing.md
        self.generation = 0
        self._unpublished = True
        self._last_publish = 0.0
        self._publisher: generations.Publisher | None = None  # the writer's, made at its first publish
        self._rows_since_trim = 0  # rows published since the heap was last trimmed
        self._paged_since_trim = 0  # pages loaded from or written to their homes since then
        self._paged_at_last_tick = 0
        self._publish_attempt = 0  # the last generation number a publish tried
        self._refresh_kick = trio.Event()
        #: awaited with the pages a reader's refresh changed (the FUSE layer refreshes its caches)
        self.on_pages_changed: Callable[[list[int]], Awaitable[None]] | None = None
        self.port = StorePort(self)
        self._evictions_at_last_tick = 0

    # ================================================================== start-up
    def recover(self) -> None:
        """Free slots are the ones the page table does not reference: crash leftovers vanish.

        Except, while readers on other machines hold fresh leases, the slots the published
        generation names: after a crash the page table may already have moved pages on
        (committed, never published), and a reader still on that generation must not read
        a slot reused under it. Those slots wait in limbo for `reader_retain_s`, as slots
        freed by a running writer do (docs/sharing.md)."""
        used = self.table.scan_homes()
        empty = np.zeros(0, dtype=np.int64)
        published: dict[int, np.ndarray] = {}
        readers = not self.read_only and self._readers_active()
        if readers:
            assert self.field_dir is not None
            try:
                gen = generations.load_current(self.field_dir)
            except generations.GenerationError as exc:
                log.warning("readers hold leases, but the published generation is unreadable: %s", exc)
                gen = None
            if gen is not None:
                for tid in np.unique(gen.rows["tier"]).tolist():
                    named = gen.rows["slot"][gen.rows["tier"] == tid].astype(np.int64)
                    published[int(tid)] = np.setdiff1d(named, used.get(int(tid), empty))
            self._retain_for_readers(True)
        for t in self.durable_tiers:
            if t.homes is not None:
                mine, theirs = used.get(t.id, empty), published.get(t.id, empty)
                t.homes.load_used(np.concatenate([mine, theirs]) if theirs.size else mine)
                t.homes.committed -= int(theirs.size)
                for slot in theirs.tolist():
                    t.homes.retire(slot)
        del used, published
        _release_heap()  # the scan's temporaries were the size of the table
        if self.field_dir is not None:
            if self.read_only:
                gen = generations.load_current(self.field_dir)
                if gen is not None:
                    self.table.use_generation(gen.rows)
                    self.generation = gen.number
                    generations.renew_lease(self.field_dir, gen.number)
            else:
                self.generation = generations.current_number(self.field_dir)

    # ================================================================== helpers
    def _check_range(self, offset: int, size: int) -> None:
        if offset < 0 or size < 0 or offset + size > self.layout.params_bytes:
            raise InvalidInput("range outside params")

    def implicit_bytes(self, page: int, start: int, length: int) -> bytes:
        """Never-written bytes [start, start+length) of a page (zero past the end of params)."""
        first = start // self.itemsize
        last = -(-(start + length) // self.itemsize)
        base = page * self.elems_per_page
        count = max(0, min(last, self.layout.n_params - base) - first)
        cfg = self.layout.cfg
        raw = implicit_values(cfg.seed, base + first, count, cfg.init, cfg.init_scale, self.layout.dtype).tobytes()
        skip = start - first * self.itemsize
        chunk = raw[skip:skip + length]
        return chunk + bytes(length - len(chunk))

    def implicit_page(self, page: int) -> bytes:
        return self.implicit_bytes(page, 0, self.page_size)

    def _heat_step(self, accesses: int) -> float:
        """Count `accesses` page accesses on the memory copies' clock; what one adds now."""
        self._heat_clock += accesses
        if self._heat_clock >= self._heat_due:
            unit = math.exp2(self._heat_clock / self._heat_half)
            if unit > HEAT_UNIT_MAX:  # scale every heat back: only their order matters
                for t in self.memory_tiers:
                    if t.mem is not None:
                        t.mem.heat *= np.float32(1.0 / unit)
                self._heat_loans = {p: v / unit for p, v in self._heat_loans.items()}
                self._heat_clock, unit = 0.0, 1.0
            self._heat_unit = unit
            self._heat_due = self._heat_clock + self._heat_half / HEAT_UNIT_STEPS
            for t in self.memory_tiers:
                if t.mem is not None:
                    t.mem.heat_unit = unit
        return self._heat_unit

    def _touch(self, mt: MemTier, slot: int) -> None:
        """One access of a memory copy."""
        mt.heat[slot] += self._heat_step(1)

    def lend_heat(self, page: int, amount: float) -> None:
        """The prefetcher's confidence in a page it fetched (`amount` accesses' worth), or
        the loan taken back (a negative amount): from a memory copy, exactly what was lent
        (it has decayed with every access since, as accesses do); else the home's heat."""
        loc = self.table.mem(page)
        if amount >= 0:
            if loc is None:
                self._touch_home(page, amount)
                return
            lent = amount * self._heat_unit
            loc[0].heat[loc[1]] += lent
            self._heat_loans[page] = self._heat_loans.get(page, 0.0) + lent
            if len(self._heat_loans) > self.cfg.heat_loans_kept:
                del self._heat_loans[next(iter(self._heat_loans))]
            return
        lent = self._heat_loans.pop(page, None)
        if lent is None:
            if loc is None:
                self._touch_home(page, amount)
            return
        if loc is not None:
            mt, slot = loc
            mt.heat[slot] = max(0.0, mt.heat.item(slot) - lent)

    def _apply_deferred_heat(self) -> None:
        """Count the pages of the small gathers and of the one-page reads from memory since
        the last call as accesses (one per row or read): deferred, as neither a single-point
        query nor a cold 4 KiB read can spare the numpy calls of doing it at once, and
        applied before anything ranks pages by heat or reports reads."""
        if self._gather_heat:
            mt = self.memory_tiers[0].mem
            assert mt is not None
            pages = np.concatenate(self._gather_heat)
            add_accesses(mt.heat, pages, self._heat_step(pages.size))
            self._gather_heat.clear()
        for t in self.memory_tiers:
            mt = t.mem
            if mt is not None and mt.pending_hits:
                self._apply_read_heat(mt)

    def _apply_read_heat(self, mt: MemTier) -> None:
        hits = mt.pending_hits
        add_accesses(mt.heat, np.array(hits, dtype=np.int64), self._heat_step(len(hits)))
        mt.fast_hits += len(hits)
        self.counters["reads"] += len(hits)
        hits.clear()

    def _touch_home(self, page: int, boost: float = 1.0) -> None:
        now = time.monotonic()
        heat, last = self._home_heat.get(page, (0.0, now))
        self._home_heat[page] = (heat * math.exp2(-(now - last) / self.cfg.heat_half_life_s) + boost, now)
        if len(self._home_heat) > self.cfg.home_heat_entries:
            items = sorted(self._home_heat.items(), key=lambda kv: kv[1][0])
            for p, _ in items[: len(items) // 2]:
                del self._home_heat[p]

    def _emit(self, kind: AccessKind, pages: list[int], slow: list[bool], offset: int = 0, size: int = 0,
              started: float | None = None, announced: bool = False, reader: int = 0) -> None:
        """Tell the listeners; `started` is when the request began (a request that waited on
        a slow tier: its wait must not look shorter than it was), else now."""
        if not self._listeners:
            return
        now = time.monotonic()
        event = AccessEvent(kind, pages, slow, offset, size, now if started is None else started, now, announced, reader)
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:
                log.exception("access listener failed")

    def _next_gen(self) -> int:
        self._gen += 1
        return self._gen

    def _tier_error(self, tier: Tier, exc: BaseException, page: int) -> NffsError:
        tier.counters.io_errors += 1
        self.counters["io_errors"] += 1
        if isinstance(exc, NffsError):
            return exc
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            self.counters["enospc"] += 1
            return NoSpace(f"tier {tier.name} is full")
        log.error("page %d: I/O error on tier %s: %s", page, tier.name, exc)
        return PageIOError(f"page {page}: tier {tier.name}: {exc}")

    # ================================================================== memory slots
    def _mem_capacity(self, t: Tier) -> int:
        cap = t.capacity_pages()
        assert cap is not None
        return cap

    def _alloc_slot(self, page: int) -> tuple[MemTier, int] | None:
        """A free memory slot for `page` on the fastest memory tier with room, evicting clean copies."""
        for attempt in range(2):
            for t in self.memory_tiers:
                mt = t.mem
                assert mt is not None
                if mt.resident + mt.reserved >= self._mem_capacity(t):
                    continue
                if mt.direct:
                    if page < mt.arena.n_slots and mt.slot_page[page] < 0:
                        mt.arena.alloc_at(page)
                        return mt, page
                    continue
                slot = mt.arena.alloc()
                if slot is not None:
                    return mt, slot
            if attempt == 0:
                # even when nothing of the full tier could go (all pinned), making room below
                # it may have freed a slot in a lower memory tier: look once more
                self._evict_for_room()
        return None

    def _evict_for_room(self) -> bool:
        """Drop (or move down) the coldest clean copies of the first full memory tier."""
        for i, t in enumerate(self.memory_tiers):
            if t.mem is not None and t.mem.resident + t.mem.reserved >= self._mem_capacity(t):
                target = int(self.cfg.low_watermark * self._mem_capacity(t))
                return self._shrink(i, max(1, t.mem.resident + t.mem.reserved - target)) > 0
        return False

    def _victims(self, mt: MemTier, count: int, *, clean_only: bool) -> np.ndarray:
        self._apply_deferred_heat()
        slots = np.flatnonzero((mt.slot_page >= 0) & (mt.pins == 0))
        if clean_only:
            slots = slots[mt.dirty_gen[slots] == 0]
        if slots.size == 0 or count <= 0:
            return slots[:0]
        heat = mt.heat[slots]
        if count < slots.size:
            order = np.argpartition(heat, count)[:count]
            return slots[order]
        return slots

    def _shrink(self, tier_pos: int, count: int) -> int:
        """Move `count` cold copies of memory tier `tier_pos` down (or drop clean ones)."""
        if self._gathers_active and self.memory_tiers[tier_pos].mem.direct:  # type: ignore[union-attr]
            return 0
        t = self.memory_tiers[tier_pos]
        mt = t.mem
        assert mt is not None
        lower = self.memory_tiers[tier_pos + 1] if tier_pos + 1 < len(self.memory_tiers) else None
        if lower is not None and lower.mem is not None and lower.mem.resident + count > self._mem_capacity(lower):
            self._shrink(tier_pos + 1, lower.mem.resident + count - self._mem_capacity(lower))  # make room below first
        moved = 0
        for slot in self._victims(mt, count, clean_only=lower is None).tolist():
            page = int(mt.slot_page[slot])
            if lower is not None and lower.mem is not None and lower.mem.resident < self._mem_capacity(lower):
                if self._move_copy(page, mt, slot, lower):
                    moved += 1
                    continue
            if mt.dirty_gen[slot]:
                continue
            self._drop_copy(page, mt, slot)
            t.counters.demotions += 1
            moved += 1
        return moved

    def _move_copy(self, page: int, mt: MemTier, slot: int, dest: Tier) -> bool:
        dmt = dest.mem
        assert dmt is not None
        if dmt.direct:
            if page >= dmt.arena.n_slots or dmt.slot_page[page] >= 0:
                return False
            dmt.arena.alloc_at(page)
            dslot = page
        else:
            got = dmt.arena.alloc()
            if got is None:
                return False
            dslot = got
        dmt.arena.copy_from(dslot, mt.arena, slot)
        gen, home_tier, has_home = int(mt.dirty_gen[slot]), int(mt.home_tier[slot]), bool(mt.has_home[slot])
        version = int(self._version[mt.index][slot])
        self._drop_copy(page, mt, slot, counted=False)
        self.table.set_mem(page, dmt, dslot, dirty_gen=gen, home_tier=home_tier, has_home=has_home)
        self._version[dmt.index][dslot] = version
        self.memory_tiers[mt.index].counters.demotions += 1
        return True

    def _drop_copy(self, page: int, mt: MemTier, slot: int, *, counted: bool = True) -> None:
        self.table.clear_mem(page, mt, slot)
        self._version[mt.index][slot] = 0
        if mt.pins[slot] > 0 and not mt.direct:
            # a write-back or gather still reads this slot: it is reused only once unpinned
            self._unpin_release.add((mt.index, slot))
        else:
            mt.arena.release(slot, direct=mt.direct)
        if counted:
            self.counters["evictions"] += 1
        if mt.direct:
            self._levels_unready()

    def _levels_unready(self) -> None:
        """A page of the direct-mapped arena left memory or became incomplete."""
        if self._all_levels_ready or True in self._level_ready:  # every write of a new page comes here
            self._level_ready = [False] * self.layout.n_levels
        self._all_levels_ready = False

    def _refresh_levels_ready(self) -> None:
        """Mark the levels whose pages all sit complete in the direct-mapped arena (a few
        numpy calls per level; big gathers do it as they go, this is for small ones)."""
        mt = self.memory_tiers[0].mem
        assert mt is not None
        full = np.uint64(mt.arena.full_mask)
        for l, ready in enumerate(self._level_ready):
            if not ready:
                lo, hi = self._level_pages[l]
                if (mt.slot_page[lo:hi + 1] >= 0).all() and (mt.arena.valid[lo:hi + 1] == full).all():
                    self._level_ready[l] = True
        self._all_levels_ready = all(self._level_ready)

    def _unpin(self, mt: MemTier, slot: int) -> None:
        mt.pins[slot] -= 1
        if mt.pins[slot] == 0 and (mt.index, slot) in self._unpin_release:
            self._unpin_release.discard((mt.index, slot))
            mt.arena.release(slot, direct=mt.direct)

    def _unpin_many(self, mt: MemTier, slots: np.ndarray) -> None:
        """:meth:`_unpin` of distinct slots of one tier at once."""
        mt.pins[slots] -= 1
        if self._unpin_release:
            for slot in slots[mt.pins[slots] == 0].tolist():
                if (mt.index, slot) in self._unpin_release:
                    self._unpin_release.discard((mt.index, slot))
                    mt.arena.release(slot, direct=mt.direct)

    def _install(self, page: int, data: bytes | bytearray | memoryview | None, *, has_home: bool, home_tier: int,
                 stored: int, sums: np.ndarray | None = None) -> tuple[MemTier, int] | None:
        """A copy of the page in memory: `data` is the whole page (None: all implicit so far);
        `stored` are the chunks that belong to the stored page; `sums` the chunks' checksums
        when they were computed from these bytes already (`chunk_sums`)."""
        loc = self._alloc_slot(page)
        if loc is None:
            return None
        mt, slot = loc
        if data is None:
            mt.arena.install_empty(slot)
            if mt.direct:
                self._levels_unready()
        else:
            try:
                mt.arena.install(slot, data, stored=stored, sums=sums)
            except BaseException:
                mt.arena.release(slot, direct=mt.direct)  # the slot was never the page's
                raise
        self._record_copy(page, mt, slot, home_tier=home_tier, has_home=has_home)
        return loc

    def _record_copy(self, page: int, mt: MemTier, slot: int, *, home_tier: int, has_home: bool) -> None:
        """The slot, holding the page's bytes, becomes its clean memory copy in the table.

        Bringing a page into memory counts as an access on the heat clock: the copy starts
        with the clock's current unit, above every copy brought in before it and not used
        since. Otherwise a stream
        of pushed pages (read from the kernel's cache, never seen here) left the clock
        still, a fresh copy tied with the copies its reader had long passed, and the
        evictions that made room for a prefetched run took pages of that very run before
        their reader came (a miss every ~150 reads of a strided reader, docs/prefetch.md 6.0z)."""
        self._heat_step(1)
        self.table.set_mem(page, mt, slot, dirty_gen=0, home_tier=home_tier, has_home=has_home)
        self._version[mt.index][slot] = self._next_gen()

    def _fill_implicit(self, page: int, mt: MemTier, slot: int, offset: int = 0, length: int | None = None) -> None:
        """Give chunks of a memory copy that are still implicit their init bytes (computed now)."""
        if length is None:
            offset, length = 0, self.page_size
        missing = mt.arena.missing(slot, offset, length)
        if missing:
            c = self.chunk
            for a, b in mask_runs(missing, self.n_chunks):
                mt.arena.fill(slot, a, self.implicit_bytes(page, a * c, (b - a) * c))

    def _complete_page(self, page: int, data: bytes, mask: int) -> bytes:
        """A home's bytes with its unstored chunks replaced by the implicit init (any thread)."""
        if mask == self.full_mask:
            return data
        out = bytearray(data)
        c = self.chunk
        for a, b in mask_runs(~mask & self.full_mask, self.n_chunks):
            out[a * c:b * c] = self.implicit_bytes(page, a * c, (b - a) * c)
        return bytes(out)

    # ================================================================== slow fetches
    async def _read_home(self, page: int, home: Home, priority: Priority,
                         urgent: Callable[[], bool] | None = None) -> tuple[bytes, np.ndarray]:
        """The page's bytes from its home, checked, and their chunk checksums (both computed in
        the worker that reads them: the install takes the checksums as they are)."""
        tier = self.tier_by_id.get(home.tier)
        if tier is None or tier.homes is None or tier.root is None:
            self.counters["io_errors"] += 1
            if tier is not None:
                tier.counters.io_errors += 1
            raise TierUnavailable(f"page {page}: its home tier is not available")
        homes = tier.homes
        try:
            tier.root.require()
        except TierUnavailable as exc:
            raise self._tier_error(tier, exc, page) from None
        epoch = homes.begin_read()

        def read_verified() -> tuple[bytes, np.ndarray]:
            self._populate_ahead([page])
            data = self._page_from_home(page, homes.read(home.slot), home)
            if data is None:
                raise ChecksumMismatch(f"page {page}: tier {tier.name} slot {home.slot} fails its checksum")
            return data, chunk_sums(data, self.chunk)

        try:
            got = await self.io.run(priority, read_verified, latency=tier.latency, urgent=urgent)
        except ChecksumMismatch:
            tier.counters.checksum_failures += 1
            self.counters["checksum_failures"] += 1
            log.error("page %d: home copy on tier %s fails its checksum: EIO", page, tier.name)
            raise
        except (OSError, NffsError) as exc:
            raise self._tier_error(tier, exc, page) from None
        finally:
            homes.end_read(epoch)
        tier.counters.reads += 1
        self._touch_home(page)
        return got

    def _page_from_home(self, page: int, data: bytes, home: Home) -> bytes | None:
        """The whole page from the bytes of its home slot, or None when they fail the
        checksum committed with the home (worker thread)."""
        if stored_checksum(data, home.mask, self.chunk, self.n_chunks) != home.checksum:
            return None
        return self._complete_page(page, data, home.mask)

    def _install_fetched(self, page: int, data: bytes, home: Home, sums: np.ndarray | None = None) -> int:
        """A page just read from `home` becomes a clean memory copy, unless a write installed a
        newer copy (or moved its home) while the read was in flight. Returns the version of
        the copy made from `data`, -1 when none was (no room, or that newer copy)."""
        version = -1
        if self.table.mem(page) is None and self.table.home(page) == home:
            loc = self._install(page, data, has_home=True, home_tier=home.tier, stored=home.mask, sums=sums)
            if loc is not None:
                self.memory_tiers[loc[0].index].counters.promotions += 1
                version = int(self._version[loc[0].index][loc[1]])
            self._paged_since_trim += 1  # its read's temporaries (see `_trim_heap_if_due`)
        return version

    async def _install_fetched_in_worker(self, page: int, data: bytes, home: Home, sums: np.ndarray | None = None) -> None:
        """:meth:`_install_fetched` with the copy into the slot in a worker thread (big pages,
        ``install_in_worker_bytes``): the slot is taken here and the page recorded here, after
        the copy, only if no write installed a newer copy or moved its home meanwhile. A
        direct-mapped slot is the page's own, which a write may take while the copy runs:
        those copies stay on this thread."""
        if self.table.mem(page) is not None or self.table.home(page) != home:
            return
        self._paged_since_trim += 1  # its read's temporaries, as in `_install_fetched`
        loc = self._alloc_slot(page)
        if loc is None:
            return
        mt, slot = loc
        mt.reserved += 1
        try:
            if mt.direct:
                mt.arena.install(slot, data, stored=home.mask, sums=sums)
            else:
                await self.io.cpu(functools.partial(mt.arena.install, slot, data, stored=home.mask, sums=sums))
        except BaseException:
            mt.arena.release(slot, direct=mt.direct)  # the slot was never the page's
            raise
        finally:
            mt.reserved -= 1
        if self.table.mem(page) is not None or self.table.home(page) != home:
            mt.arena.release(slot, direct=mt.direct)
            return
        self._record_copy(page, mt, slot, home_tier=home.tier, has_home=True)
        self.memory_tiers[mt.index].counters.promotions += 1

    async def _fetch_batch(self, pages: list[int], priority: Priority, versions: dict[int, int] | None = None,
                           homes_read: dict[int, Home] | None = None) -> dict[int, bytes]:
        """Bring several pages home -> memory with one worker call per home tier (the
        multi-page read path: a 1 MiB read of 4 KiB pages is one hop to a worker thread, not
        256). Returns the pages read from a slow tier (and installed when memory had room),
        with their bytes.

        Best effort: pages in memory, in flight, implicit or on an unavailable tier are left
        out, and a page that fails (I/O error, checksum) is simply not installed — the
        caller's page-by-page path then reads it again and reports the error as a single
        read does. The in-flight entries let concurrent readers of these pages join.
        `versions`, when given, receives the version of each memory copy made from the
        bytes returned (a page whose bytes are returned but not installed has none), and
        `homes_read` the home each page's bytes were read from."""
        groups: dict[int, list[tuple[int, Home]]] = {}
        wanted = [p for p in pages if p not in self._inflight and self.table.mem(p) is None]
        self.table.load_homes(wanted)
        for p in wanted:
            home = self.table.home(p)
            if home is None:
                continue
            tier = self.tier_by_id.get(home.tier)
            if tier is None or tier.homes is None or tier.root is None or not tier.root.still_here():
                continue
            groups.setdefault(home.tier, []).append((p, home))
        done: dict[int, bytes] = {}
        for tier_id, items in groups.items():
            tier = self.tier_by_id[tier_id]
            homes = tier.homes
            assert homes is not None
            flights = {p: _InFlight(trio.Event(), priority, home) for p, home in items}
            self._inflight.update(flights)
            epoch = homes.begin_read()

            def read_all(items: list[tuple[int, Home]] = items,
                         homes: SlabHomes = homes) -> list[tuple[bytes, np.ndarray] | None]:
                self._populate_ahead([p for p, _ in items])
                out: list[tuple[bytes, np.ndarray] | None] = []
                got = homes.read_many([home.slot for _, home in items], self.cfg.coalesce_bytes)
                for p, home in items:
                    data = got[home.slot]
                    page_data = None if isinstance(data, OSError) else self._page_from_home(p, data, home)
                    out.append(None if page_data is None else (page_data, chunk_sums(page_data, self.chunk)))
                return out

            pinned: list[tuple[MemTier, int]] = []
            installing = False
            try:
                datas = await self.io.run(priority, read_all, latency=tier.latency,
                                          urgent=lambda fl=flights: any(f.joined_by_demand for f in fl.values()))
                # the readers waiting on these pages go now, with the bytes just read and
                # checked, not after the whole batch is installed: with the FUSE thread busy,
                # installing a run of 50 pages four at a time took tens of milliseconds, and a
                # reader at the run's first page waited for all of it. The flights stay
                # registered until each page is installed: a read meanwhile joins at once
                for (p, _), fetched in zip(items, datas):
                    if fetched is not None:
                        flights[p].data = fetched[0]
                        flights[p].done.set()
                if priority == Priority.PREFETCH:
                    # one prefetch batch installs at a time (first come, first served): with
                    # every batch in flight installing between two looks at the FUSE queue,
                    # a request for a page already in memory waited 2-50 ms for its turn
                    await self._prefetch_installs.acquire()
                    installing = True
                for i, ((p, home), fetched) in enumerate(zip(items, datas)):
                    if fetched is None:
                        continue
                    if i and i % INSTALL_CHECKPOINT_PAGES == 0:
                        # requests waiting meanwhile go first; the pages installed so far are
                        # unpinned before: a batch bigger than memory must not hold every
                        # slot while others wait for one (a write gave up with EIO)
                        for mt, slot in pinned:
                            self._unpin(mt, slot)
                        pinned.clear()
                        await trio.lowlevel.checkpoint()
                    data, sums = fetched
                    tier.counters.reads += 1
                    self._touch_home(p)
                    version = self._install_fetched(p, data, home, sums)
                    if versions is not None and version >= 0:
                        versions[p] = version
                    if homes_read is not None:
                        homes_read[p] = home
                    done[p] = data
                    if self._inflight.get(p) is flights[p]:  # in memory now (or no room): done
                        del self._inflight[p]
                    loc = self.table.mem(p)
                    if loc is not None:  # the batch's next pages must not evict this one
                        loc[0].pins[loc[1]] += 1
                        pinned.append(loc)
            except BaseException as exc:
                for f in flights.values():
                    if f.data is None:
                        f.error = exc if isinstance(exc, Exception) else PageIOError("fetch cancelled")
                        f.cancelled = True  # joiners fetch for themselves and see their own error
                if isinstance(exc, TierTimeout):
                    # a tier that did not answer in time: fail the read now, not once per page
                    raise self._tier_error(tier, exc, items[0][0]) from None
                if isinstance(exc, (OSError, NffsError)):
                    return done  # the page-by-page path reads (and reports) them one by one
                raise
            finally:
                if installing:
                    self._prefetch_installs.release()
                    installing = False
                for mt, slot in pinned:
                    self._unpin(mt, slot)
                homes.end_read(epoch)
                for p, f in flights.items():
                    if f.data is None and f.error is None:
                        # failed in the batch: a joiner reads it itself (and meets the error itself)
                        f.error = PageIOError(f"page {p}: batch read failed")
                        f.cancelled = True
                    if self._inflight.get(p) is f:
                        del self._inflight[p]
                    f.done.set()
        return done

    def _populate_ahead(self, pages: list[int]) -> None:
        """Worker thread, before a batch of these pages is read: the memory slots their
        installs will take are populated here, not on the trio thread — the fresh slots of
        the first memory tier that still hands some out (`MemoryArena.populate_fresh`), or
        the pages' own slots in a direct-mapped one with room for them
        (`MemoryArena.populate_slots`): there each 64 KiB install spent ~110 us in the
        system call, on the FUSE thread."""
        for t in self.memory_tiers:
            mt = t.mem
            if mt is None:
                continue
            if mt.direct:
                if mt.resident + len(pages) <= self._mem_capacity(t):
                    mt.arena.populate_slots(pages)
                    return
                continue
            if mt.arena.allocates_fresh():
                mt.arena.populate_fresh(len(pages))
                return

    async def _fetch(self, page: int, priority: Priority) -> tuple[bytes | None, bool]:
        """Bring a materialised page into memory. Returns (bytes, waited_on_slow_tier).

        A second request for a page in flight joins the first (a demand joining a
        prefetch is counted as late) and waited on the slow tier as much as the first did,
        for what remained of its read: its access event says so, and the prefetcher counts
        the prefetch it joined as late, not useful. bytes is None for an implicit page.
        """
        flight = self._inflight.get(page)
        while flight is not None:
            if flight.landed and flight.home == self.table.home(page):
                # read already, its install still to come (a batch installs a few at a time):
                # the bytes are here, nothing was waited for
                return flight.data, False
            if priority == Priority.DEMAND and flight.priority != Priority.DEMAND and not flight.joined_by_demand:
                flight.joined_by_demand = True
                self.counters["late_joins"] += 1
                self.io.demand_joined()  # a prefetch still waiting for room goes now
            await flight.done.wait()
            if flight.error is None:
                if flight.home == self.table.home(page):
                    return flight.data, True
                # the page was written (and went home) while that fetch read an older version
            elif not flight.cancelled:
                raise flight.error
            if self.table.mem(page) is not None:
                return None, False  # installed meanwhile (a batch's flight ends at its install)
            stale, flight = flight, self._inflight.get(page)  # fetch the current version ourselves
            if flight is stale:  # a batch still installing its other pages: not this one's bytes
                flight = None
        if self.table.mem(page) is not None:
            return None, False
        home = self.table.home(page)
        if home is None:
            return None, False
        flight = _InFlight(trio.Event(), priority, home)
        self._inflight[page] = flight
        try:
            data, sums = await self._read_home(page, home, priority, urgent=lambda: flight.joined_by_demand)
            flight.data = data
            if self.page_size >= self.cfg.install_in_worker_bytes:
                await self._install_fetched_in_worker(page, data, home, sums)
            else:
                self._install_fetched(page, data, home, sums)
            return data, True
        except BaseException as exc:
            flight.error = exc if isinstance(exc, Exception) else PageIOError("fetch cancelled")
            flight.cancelled = not isinstance(exc, Exception)
            raise
        finally:
            if self._inflight.get(page) is flight:
                del self._inflight[page]
            flight.done.set()

    # ================================================================== reading
    def read_from_memory(self, offset: int, size: int, reader: int = 0) -> memoryview | None:
        """The common read without a coroutine: bytes [offset, offset+size) of one page (or
        of a run of pages side by side in a direct-mapped arena) whose memory copy holds
        them intact, as a view into the tier's mapping (valid until the caller next
        awaits); None sends the caller to :meth:`read`. `size` > 0, within params; `reader`:
        the open file read through, for the listeners (`AccessEvent.reader`)."""
        ps = self.page_size
        first = offset // ps
        start = offset - first * ps
        read_log = self._read_log
        if start + size > ps:
            view = self._run_from_memory(first, start, offset, size)
            if view is None:
                return None
            self.counters["reads"] += 1
            if read_log is not None and self._to_read_log(range(first, (offset + size - 1) // ps + 1)):
                return view
        else:
            mt = self._direct_mem
            if mt is not None and mt.slot_page.item(first) >= 0:  # direct-mapped: slot = page
                slot = first
            else:
                loc = self.table.mem(first)
                if loc is None:
                    return None
                mt, slot = loc
            view = mt.arena.checked_view(slot, start, size)
            if view is None:
                return None
            hits = mt.pending_hits  # heat, the tier's hits and the store's reads, applied later
            hits.append(slot)
            if len(hits) >= self._read_heat_pending:
                self._apply_read_heat(mt)
            if read_log is not None and first not in self._read_log_watched:
                read_log.append(first)
                self._logged_reads += 1
                return view
        for listener in self._memory_read_listeners:
            try:
                listener(first, offset, size, reader)
            except Exception:
                log.exception("access listener failed")
        return view

    def _run_from_memory(self, first: int, start: int, offset: int, size: int) -> memoryview | None:
        """The bytes of :meth:`read_from_memory` spanning pages first..last, when they sit side
        by side in a direct-mapped arena (slot = page), complete and intact; counted as hits."""
        if not self._direct:
            return None
        mt = self.memory_tiers[0].mem
        assert mt is not None
        last = (offset + size - 1) // self.page_size
        slot_page = mt.slot_page
        for p in range(first, last + 1):
            if slot_page.item(p) < 0:
                return None
        view = mt.arena.checked_range(first, start, size)
        if view is None:
            return None
        heat = mt.heat
        unit = self._heat_step(last - first + 1)
        for p in range(first, last + 1):  # a few pages: item updates cost less than a slice op
            heat[p] = heat.item(p) + unit
        mt.fast_hits += last - first + 1
        return view

    async def read(self, offset: int, size: int, *, zero_copy: bool = False,
                   reader: int = 0) -> bytes | bytearray | memoryview:
        """Bytes [offset, offset+size) clipped to params.

        With `zero_copy` the answer may be a view into a memory tier's mapping, valid only
        until the caller next awaits: exactly what a FUSE read reply needs (pyfuse3 copies
        it into the reply before anything else runs on the trio thread).
        """
        size = max(0, min(size, self.layout.params_bytes - offset))
        if size <= 0:
            return b""
        view = self.read_from_memory(offset, size, reader)
        if view is not None:
            return view if zero_copy else view.tobytes()
        ps = self.page_size
        first = offset // ps
        start = offset - first * ps
        loc = self.table.mem(first)
        last = (offset + size - 1) // ps
        if loc is not None and first < last and loc[0].direct and self._direct_resident(loc[0], first, last):
            # pages first..last sit side by side in a direct-mapped arena, some of the chunks
            # read still implicit: give those their init, then it is the one-range read
            mt, slot = loc
            end = start + size
            for i in range(last - first + 1):
                a = max(0, start - i * ps)
                self._fill_implicit(first + i, mt, slot + i, a, min(ps, end - i * ps) - a)
            view = self.read_from_memory(offset, size, reader)
            if view is not None:
                return view if zero_copy else view.tobytes()
            # a bad chunk somewhere: the page by page path below finds and handles it
        self.counters["reads"] += 1
        started = time.monotonic()
        announced = self._announce_miss(first, last, offset, size, started, reader)
        if first == last:
            out = bytearray(size)
            slow = await self._read_page_into(first, start, memoryview(out))
            self._emit_read([first], [slow], offset, size, started, announced, reader)
            return out
        out = bytearray(size)
        view = memoryview(out)
        fetched_slow: dict[int, bytes] = {}
        missing = [p for p in range(first, last + 1) if self.table.mem(p) is None]
        if len(missing) > 1:
            # bring them all at once: a 1 MiB read of 4 KiB pages on a home tier is 256 slab
            # reads, which one by one cost 256 latencies and 256 hops to a worker thread
            fetched_slow = await self._fetch_batch(missing, Priority.DEMAND)
        pages, slows = [], []
        pos, end = offset, offset + size
        while pos < end:
            page = pos // ps
            start = pos - page * ps
            length = min(ps - start, end - pos)
            was_slow = await self._read_page_into(page, start, view[pos - offset:pos - offset + length])
            slows.append(was_slow or page in fetched_slow)
            pages.append(page)
            pos += length
        self._emit_read(pages, slows, offset, size, started, announced, reader)
        return out

    def _announce_miss(self, first: int, last: int, offset: int, size: int, started: float, reader: int = 0) -> bool:
        """Tell the listeners now of a read that is about to wait on a slow tier (a MISS
        event; its READ event follows, ``announced``), and return whether it was told.

        Its reader's next request comes only once it is answered, so a plan made from it
        now has a tier latency of head start over one made from its answer: a strided
        reader's fourth read, planned from its third's answer, waited as long as a miss.
        A page on its way already (a prefetch the read joins) counts as a wait too."""
        if not self._listeners:
            return False
        mem, home, inflight = self.table.mem, self.table.home, self._inflight
        # the rows of the pages not in memory in one query, which the read needs next anyway:
        # a query per page here (its SQLite pages cold after a while) cost each random read of
        # two pages ~0.3 ms on this thread with the prefetcher on (docs/prefetch.md 6.0za)
        not_in_memory = [p for p in range(first, last + 1) if mem(p) is None]
        self.table.load_homes(not_in_memory)
        for p in not_in_memory:
            flight = inflight.get(p)
            if flight is not None and flight.landed:
                continue  # read already, not yet installed: no wait
            if flight is not None or home(p) is not None:
                pages = list(range(first, last + 1))
                self._emit(AccessKind.MISS, pages, [True] * len(pages), offset, size, started, reader=reader)
                return True
        return False

    def _emit_read(self, pages: list[int], slows: list[bool], offset: int, size: int, started: float,
                   announced: bool = False, reader: int = 0) -> None:
        """A read's event; one served from memory goes to the read log instead while one is
        set (`log_memory_reads`), as in :meth:`read_from_memory`: reads of 128 KiB across
        two pages come this way, and an event per request cost reads of data already in
        memory ~5-10 % (scripts/prefetch_suite.py seq-dram). An announced read's answer is
        always told: the listeners wait for it."""
        if not announced and self._read_log is not None and not any(slows) and self._to_read_log(pages):
            return
        self._emit(AccessKind.READ, pages, slows, offset, size, started, announced, reader)

    def _to_read_log(self, pages: "range | list[int]") -> bool:
        """A read of several pages into the read log, unless one of them is watched."""
        if not self._read_log_watched.keys().isdisjoint(pages):
            return False
        self._read_log.extend(pages)  # type: ignore[union-attr]
        self._logged_reads += 1
        return True

    def _count_hits(self, mt: MemTier, slot: int, pages: int) -> None:
        """Reads of `pages` consecutive slots answered from a memory tier."""
        heat = mt.heat
        unit = self._heat_step(pages)
        if pages == 1:  # an item update costs a tenth of a slice update
            heat[slot] = heat.item(slot) + unit
        else:
            heat[slot:slot + pages] += unit
        c = self.memory_tiers[mt.index].counters
        c.reads += pages
        c.hits += pages

    @staticmethod
    def _direct_resident(mt: MemTier, first: int, last: int) -> bool:
        """Pages first..last all resident in a direct-mapped arena: one contiguous range of it."""
        return bool((mt.slot_page[first:last + 1] >= 0).all())

    async def _read_page_into(self, page: int, start: int, out: memoryview) -> bool:
        """Fill `out` from the page; True when the read had to wait on a slow tier."""
        refreshed = False
        for _ in range(3):
            loc = self.table.mem(page)
            if loc is not None:
                mt, slot = loc
                try:
                    self._fill_implicit(page, mt, slot, start, len(out))
                    mt.arena.read_into(slot, start, out)
                except ChecksumMismatch:
                    self._bad_memory_copy(page, mt, slot)
                    continue
                self._count_hits(mt, slot, 1)
                return False
            try:
                data, slow = await self._fetch(page, Priority.DEMAND)
            except ChecksumMismatch:
                if not self.read_only or refreshed:
                    raise
                # a reader on an old generation whose slot the writer reused: load the newest
                refreshed = True
                await self.refresh()
                continue
            if data is not None:
                out[:] = data[start:start + len(out)]
                return slow
            if self.table.mem(page) is None and self.table.home(page) is None:
                self.counters["implicit_reads"] += 1
                out[:] = self.implicit_bytes(page, start, len(out))
                return False
        raise PageIOError(f"page {page}: no intact copy could be read")

    def _drop_bad_copies(self, pages: list[int]) -> None:
        """The memory copies a gather found failing their checksum (before it looks again)."""
        for page in pages:
            loc = self.table.mem(page)
            if loc is not None:
                self._bad_memory_copy(page, *loc)

    def _bad_memory_copy(self, page: int, mt: MemTier, slot: int) -> None:
        """A memory copy failed its checksum: never return it. Clean -> re-read the home; dirty -> EIO."""
        tier = self.memory_tiers[mt.index]
        tier.counters.checksum_failures += 1
        self.counters["checksum_failures"] += 1
        dirty = bool(mt.dirty_gen[slot])
        log.error("page %d: memory copy on tier %s fails its checksum (%s)", page, tier.name,
                  "dirty: its unsynced data is lost, EIO" if dirty else "clean: re-reading its home")
        home_tier = int(mt.home_tier[slot])
        has_home = bool(mt.has_home[slot])
        self._drop_copy(page, mt, slot, counted=False)
        if dirty:
            if not has_home and home_tier >= 0:
                t = self.tier_by_id.get(home_tier)
                if t is not None:
                    t.reserved -= 1
            raise ChecksumMismatch(f"page {page}: its dirty memory copy is corrupted")

    # ================================================================== writing
    async def write(self, offset: int, data: bytes | memoryview) -> None:
        if self.read_only:
            raise ReadOnly("mounted read-only")
        view = memoryview(data).cast("B")
        self._check_range(offset, len(view))
        self.counters["writes"] += 1
        ps = self.page_size
        if len(view) > ps:
            self._check_room_for(range(offset // ps, (offset + len(view) - 1) // ps + 1))
        if self._listeners:
            touched = list(range(offset // ps, (offset + max(1, len(view)) - 1) // ps + 1))
            self._emit(AccessKind.WRITE, touched, [False] * len(touched), offset, len(view))
        pos = 0
        while pos < len(view):
            page = (offset + pos) // ps
            start = offset + pos - page * ps
            length = min(ps - start, len(view) - pos)
            await self._write_page(page, start, view[pos:pos + length])
            pos += length

    async def _writable_copy(self, page: int, full: memoryview | None) -> tuple[tuple[MemTier, int], bool]:
        """The page's memory copy, fetched or materialised, ready to be patched.

        `full` is the new content of a whole-page write: a page not in memory is then
        installed with it directly (no old content to read); the flag says so.
        """
        for _ in range(self.cfg.write_attempts):
            loc = self.table.mem(page)
            if loc is not None:
                mt, slot = loc
                if mt.home_tier[slot] < 0:
                    # a copy of a never-written page (cached for a gather): it materialises now
                    mt.home_tier[slot] = self._reserve_home().id
                    self.counters["pages_materialised"] += 1
                return loc, False
            home = self.table.home(page)
            if home is not None:
                tier = self.tier_by_id.get(home.tier)
                if tier is None or not tier.available():
                    # its home cannot take a new version: EIO now, not a write that fsync refuses
                    raise TierUnavailable(f"page {page}: its home tier is not available")
                if full is not None:
                    loc = await self._install_for_write(page, full, has_home=True, home_tier=home.tier, stored=self.full_mask)
                    if loc is not None:
                        return loc, True
                    continue
                data, _ = await self._fetch(page, Priority.DEMAND)
                if self.table.home(page) != home:
                    continue  # written back (and perhaps evicted) while we waited: those bytes are old
                if data is not None and self.table.mem(page) is None:
                    loc = await self._install_for_write(page, data, has_home=True, home_tier=home.tier, stored=home.mask)
                    if loc is not None:
                        return loc, False
                continue
            # never written: materialise, reserving room for its home now (ENOSPC to the writer)
            home_tier = self._reserve_home()
            try:
                loc = await self._install_for_write(page, full, has_home=False, home_tier=home_tier.id,
                                                    stored=self.full_mask if full is not None else 0)
            except BaseException:
                home_tier.reserved -= 1
                raise
            if loc is None:
                home_tier.reserved -= 1
                continue
            self.counters["pages_materialised"] += 1
            return loc, full is not None
        raise PageIOError(f"page {page}: could not obtain a memory slot for a write")

    async def _install_for_write(self, page: int, data: bytes | memoryview | None, *, has_home: bool, home_tier: int,
                                 stored: int) -> tuple[MemTier, int] | None:
        """Install `data` as the page's copy; None when it was not installed (no room, or the
        page became resident while we waited): the caller then looks again."""
        if self.table.mem(page) is not None:
            return None
        loc = self._install(page, data, has_home=has_home, home_tier=home_tier, stored=stored)
        if loc is None:
            # every memory slot holds a dirty copy: write the coldest back, then retry
            home = self.table.home(page)
            await self._make_room_by_writeback()
            if self.table.mem(page) is not None or self.table.home(page) != home:
                return None  # another writer got there first (and its copy may have gone home)
            loc = self._install(page, data, has_home=has_home, home_tier=home_tier, stored=stored)
        return loc

    async def _make_room_by_writeback(self) -> None:
        """Every memory slot holds a dirty copy: write the coldest of each full tier home."""
        todo = []
        for t in self.memory_tiers:
            mt = t.mem
            assert mt is not None
            cap = self._mem_capacity(t)
            if mt.resident < cap:
                continue
            count = max(1, mt.resident - int(self.cfg.low_watermark * cap))
            todo += [(mt, int(s)) for s in self._victims(mt, count, clean_only=False).tolist() if mt.dirty_gen[s]]
        await self._writeback(todo)
        self._evict_for_room()

    def _check_room_for(self, pages: range) -> None:
        """A write spanning pages fails with ENOSPC before it changes any of them."""
        new = 0
        for page in pages:
            loc = self.table.mem(page)
            if loc is not None:
                new += loc[0].home_tier[loc[1]] < 0
            elif self.table.home(page) is None:
                new += 1
        if not new:
            return
        room = 0
        for t in self.durable_tiers:
            if t.homes is None or not t.available():
                continue
            cap = t.capacity_pages()
            if cap is None:
                return
            room += max(0, cap - t.pages)
        if new > room:
            self.counters["enospc"] += 1
            raise NoSpace(f"every durable tier is full ({new} new pages, room for {room})")

    def _reserve_home(self) -> Tier:
        for t in self.durable_tiers:
            if t.homes is not None and t.available() and t.has_room():
                t.reserved += 1
                return t
        self.counters["enospc"] += 1
        if not any(t.available() for t in self.durable_tiers):
            raise TierUnavailable("no durable tier is available")
        raise NoSpace("every durable tier is full")

    async def _write_page(self, page: int, start: int, chunk: memoryview | None, *,
                          modify: Callable[[bytes], bytes] | None = None, length: int = 0) -> None:
        """Patch one page's memory copy: with `chunk`, or with `modify(current bytes)` of
        [start, start+length) — a read-modify-write with no await between read and write, so
        no other write to the page can slip in between (concept updates)."""
        if chunk is not None:
            length = len(chunk)
        full = chunk is not None and start == 0 and length == self.page_size
        for _ in range(3):
            (mt, slot), written = await self._writable_copy(page, chunk if full else None)
            arena = mt.arena
            if not full:
                # chunks only partly covered keep their other bytes: implicit ones get their
                # init first, and a corrupted one must not be laundered into a fresh checksum
                c = arena.chunk
                end = start + length
                if modify is not None:
                    keep = [(start, length)]
                else:
                    edges = {start - start % c, end - 1 - (end - 1) % c}
                    keep = [(e, c) for e in edges if e < start or e + c > end]
                for a, n in keep:
                    self._fill_implicit(page, mt, slot, a, n)
                if not all(arena.verify(slot, a, n) for a, n in keep):
                    self._bad_memory_copy(page, mt, slot)
                    continue
            if modify is not None:
                base = slot * self.page_size
                chunk = memoryview(modify(arena.view[base + start:base + start + length].tobytes()))
            if not written:
                assert chunk is not None
                arena.write(slot, start, chunk)
            gen = self._next_gen()
            self.table.mark_dirty(mt, slot, gen)
            if mt.dirty >= self._dirty_kick_pages and not self._wb_lock.locked():
                self._wb_kick.set()
            self._version[mt.index][slot] = gen
            self._touch(mt, slot)
            self.memory_tiers[mt.index].counters.writes += 1
            return
        raise PageIOError(f"page {page}: its memory copy keeps failing its checksum")

    async def add_to_elements(self, elements: np.ndarray, deltas: np.ndarray) -> list[int]:
        """values[elements] += deltas (elements unique): the read-modify-write of concept writes."""
        if self.read_only:
            raise ReadOnly("mounted read-only")
        flat = np.asarray(elements, dtype=np.uint64).reshape(-1)
        add = np.asarray(deltas, dtype=np.float32).reshape(-1)
        order = np.argsort(flat, kind="stable")
        flat, add = flat[order], add[order]
        pages = (flat // np.uint64(self.elems_per_page)).astype(np.int64)
        changed: list[int] = []
        bounds = np.flatnonzero(np.diff(pages)) + 1
        dtype = self.layout.dtype
        for idx in np.split(np.arange(flat.size), bounds):
            if idx.size == 0:
                continue
            page = int(pages[idx[0]])
            within = (flat[idx] - np.uint64(page * self.elems_per_page)).astype(np.int64)
            lo = int(within.min()) * self.itemsize
            hi = (int(within.max()) + 1) * self.itemsize
            rel = within - lo // self.itemsize
            delta = add[idx]

            def plus(current: bytes, rel: np.ndarray = rel, delta: np.ndarray = delta) -> bytes:
                values = np.frombuffer(current, dtype=dtype).copy()
                values[rel] = (values[rel].astype(np.float32) + delta).astype(dtype)
                return values.tobytes()

            await self._write_page(page, lo, None, modify=plus, length=hi - lo)
            changed.append(page)
        if changed and self._listeners:
            self._emit(AccessKind.WRITE, changed, [False] * len(changed))
        self.counters["writes"] += 1
        return changed

    # ================================================================== write-back
    async def sync(self) -> None:
        """Make every write so far durable (fsync, msync, umount)."""
        if self.read_only:
            return
        await self._writeback(None)
        await self.publish()

    async def publish(self) -> None:
        """Publish the page table as a new generation for readers (after homes are durable)."""
        if self.read_only or self.field_dir is None:
            return
        async with self._publish_lock:
            await self._publish_locked(self.field_dir)

    async def _publish_locked(self, field_dir: str) -> None:
        if not self._unpublished:
            return
        # never a number twice, even after a publish that failed once CURRENT named it: a
        # reader may have loaded that CURRENT, and its files must not be rewritten
        number = max(self.generation, self._publish_attempt) + 1
        self._publish_attempt = number
        self._unpublished = False

        names = {t.id: t.name for t in self.durable_tiers}

        if self._publisher is None:
            self._publisher = generations.Publisher(
                field_dir, max_chain=self.cfg.publish_max_chain, delta_share=self.cfg.publish_delta_share)
        publisher = self._publisher

        def work() -> bool:
            changed = self.table.take_unpublished()
            try:
                if changed is not None and not publisher.wants_full(changed.size):
                    # a delta: the rows of the pages committed since the last publish
                    published = changed.size
                    publisher.publish_delta(number, self.table.rows_of(changed), names)
                else:
                    rows = self.table.export_rows()
                    published = len(rows)
                    publisher.publish_full(number, rows, names)
                    del rows
            except BaseException:
                self.table.forget_unpublished()
                raise
            # a full publish builds every row as Python tuples and numpy copies the size of
            # the table, and the pages committed since the last trim left their write-backs'
            # and requests' temporaries: give that memory back (it left ~100 B per
            # materialised page in glibc's free lists otherwise; SPEC 8 memory per page).
            # Only after many rows: malloc_trim walks every malloc arena under its lock,
            # which other threads then wait for
            self._rows_since_trim += published
            if self._rows_since_trim >= TRIM_AFTER_PUBLISH_ROWS:
                self._rows_since_trim = 0
                _release_heap()
            return self._readers_active()

        try:
            readers = await self.io.run(Priority.BACKGROUND, work)
        except (OSError, sqlite3.Error) as exc:
            self._unpublished = True
            log.error("could not publish generation %d for readers: %s", number, exc)
            return
        self.generation = number
        self._last_publish = time.monotonic()
        self._retain_for_readers(readers)

    def _readers_active(self) -> bool:
        """Worker thread: do readers on other machines hold fresh leases on our generations?"""
        return self.field_dir is not None and generations.readers_active(self.field_dir, self.cfg.reader_lease_fresh_s)

    def _retain_for_readers(self, readers: bool) -> None:
        """Freed slots stay out of use while readers may still read the generation naming them."""
        for t in self.durable_tiers:
            if t.homes is not None:
                t.homes.retain_s = self.cfg.reader_retain_s if readers else 0.0

    # ------------------------------------------------------------------ readers
    async def refresh(self) -> int:
        """A reader loads the newest published generation; returns the generation in use."""
        if not self.read_only or self.field_dir is None:
            return self.generation
        field_dir = self.field_dir
        try:
            gen = await trio.to_thread.run_sync(generations.load_current, field_dir)
        except generations.GenerationError as exc:
            log.error("refresh: keeping generation %d: %s", self.generation, exc)
            return self.generation
        if gen is None or gen.number <= self.generation:
            await trio.to_thread.run_sync(generations.renew_lease, field_dir, self.generation)
            return self.generation
        old = self.table.generation_rows()
        changed = await trio.to_thread.run_sync(generations.changed_pages, old, gen.rows)
        self.table.use_generation(gen.rows)
        for page in changed.tolist():
            loc = self.table.mem(page)
            if loc is not None:
                self._drop_copy(page, *loc, counted=False)
        try:
            await trio.to_thread.run_sync(generations.renew_lease, field_dir, gen.number)
            if changed.size and self.on_pages_changed is not None:
                await self.on_pages_changed(changed.tolist())
        finally:
            # the generation served (`stats`, which `nffs refresh` waits for) once the kernel's
            # caches hold its bytes: set before, a reader's read right after `nffs refresh`
            # returned could still meet pages of the generation before (a CI run did)
            self.generation = gen.number
        log.info("now serving generation %d (%d pages changed)", gen.number, changed.size)
        return self.generation

    def request_refresh(self) -> None:
        self._refresh_kick.set()

    async def run_reader(self, refresh_interval: float, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """A read-only mount: refresh on an interval (0: only on request) and on request."""
        task_status.started()
        while True:
            with trio.move_on_after(refresh_interval if refresh_interval > 0 else math.inf):
                await self._refresh_kick.wait()
            self._refresh_kick = trio.Event()
            try:
                await self.refresh()
            except NffsError as exc:
                log.error("refresh failed: %s", exc)

    async def _writeback(self, only: list[tuple[MemTier, int]] | None) -> int:
        async with self._wb_lock:
            if only is None:
                items = [(mt, int(s)) for mt, slots in self.table.dirty_slots() for s in slots.tolist()]
            else:
                items = [(mt, s) for mt, s in only if mt.dirty_gen[s]]
            if not items:
                self._last_writeback = time.monotonic()
                return 0
            written = 0
            first_error: NffsError | None = None
            # batches of about writeback_batch_bytes of *stored* bytes (what is copied and
            # written), so 4 KiB writes to many big pages make one batch, one fdatasync and
            # one commit, not one per 16 MiB of page size
            limit = self.cfg.writeback_batch_bytes
            batches: list[list[tuple[MemTier, int]]] = [[]]
            size = 0
            for mt, s in items:
                n = mt.arena.stored_bytes(s)
                if batches[-1] and size + n > limit:
                    batches.append([])
                    size = 0
                batches[-1].append((mt, s))
                size += n
            for batch in batches:
                try:
                    written += await self._writeback_batch(batch)
                except NffsError as exc:
                    first_error = first_error or exc
            self._last_writeback = time.monotonic()
            self.counters["writebacks"] += written
            if first_error is not None:
                raise first_error
            return written

    async def _writeback_batch(self, items: list[tuple[MemTier, int]]) -> int:
        # plan: (mt, slot, page, gen, tier, new_slot, old_home)
        plan = []
        unavailable: list[Tier] = []
        # every root is checked against the directory we hold, once per batch
        present = {t.id for t in self.durable_tiers if t.homes is not None and t.root is not None and t.root.still_here(force=True)}
        for mt, slot in items:
            page = int(mt.slot_page[slot])
            if page < 0 or not mt.dirty_gen[slot]:
                continue
            tier = self.tier_by_id.get(int(mt.home_tier[slot]))
            if tier is None or tier.id not in present:
                if tier is not None:
                    unavailable.append(tier)
                else:
                    log.error("page %d: its home tier %d is not configured; cannot write it back", page, int(mt.home_tier[slot]))
                continue
            old = self.table.home(page) if mt.has_home[slot] else None
            plan.append((mt, slot, page, int(mt.dirty_gen[slot]), tier, tier.homes.alloc(), old))
        for mt, slot, *_ in plan:
            mt.pins[slot] += 1

        def work() -> tuple[list[tuple[int, Home]], list[tuple[int, BaseException]], bool]:
            # the stored chunks are written straight from the memory tier's mapping, and each
            # page is checked right after (before the fdatasync: what pwritev took is in the
            # page cache or on the device by then). A page that changed while it was written
            # (a write came in) is written again from a copy taken under the arena lock, in
            # this batch: a write-back, and so an fsync, always brings every page home as it
            # was at some instant after the write-back began (MemoryArena.finish_writeback)
            by_tier: dict[int, list[tuple[int, memoryview, int]]] = {}
            begun: list[tuple[MemTier, int, int, Tier, int, int, int]] = []
            rows: list[tuple[int, Home]] = []
            bad: list[tuple[int, BaseException]] = []
            tiers: dict[int, Tier] = {}
            for mt, slot, page, _gen, tier, new_slot, _old in plan:
                if int(mt.slot_page[slot]) != page:
                    continue  # dropped meanwhile (a corrupted copy): nothing of this page to write
                count, mask, view = mt.arena.begin_writeback(slot)
                by_tier.setdefault(tier.id, []).append((new_slot, view, mask))
                tiers[tier.id] = tier
                begun.append((mt, slot, page, tier, new_slot, count, mask))
            try:
                slabs = {tid: self._write_slots(tiers[tid], writes, aligned=True, sync=False) for tid, writes in by_tier.items()}
                by_tier.clear()
                again: dict[int, list[tuple[int, bytes, int]]] = {}
                for mt, slot, page, tier, new_slot, count, mask in begun:
                    try:
                        checksum = mt.arena.finish_writeback(slot, count)
                        if checksum is None and int(mt.slot_page[slot]) == page:
                            data, mask = mt.arena.snapshot(slot)
                            again.setdefault(tier.id, []).append((new_slot, data, mask))
                            checksum = stored_checksum(data, mask, self.chunk, self.n_chunks)
                    except ChecksumMismatch as exc:
                        bad.append((page, exc))
                        continue
                    if checksum is not None:
                        rows.append((page, Home(tier.id, new_slot, checksum, mask)))
                begun.clear()
                for tid, writes in again.items():
                    slabs[tid] |= self._write_slots(tiers[tid], writes, sync=False)
                again.clear()
                for tid, touched in slabs.items():
                    self._sync_slabs(tiers[tid], touched)
            except BaseException:
                for t in tiers.values():  # no tier keeps a writable descriptor after a failed batch
                    t.homes.close_writers()  # type: ignore[union-attr]
                raise
            if rows and not self.table.commit_homes(rows, abandoned=lambda: gave_up):
                return [], bad, False
            return rows, bad, self._readers_active()

        gave_up = False
        try:
            rows, bad, readers = await self.io.run(Priority.BACKGROUND, work)
        except BaseException as exc:
            gave_up = True
            for mt, slot, page, _gen, tier, new_slot, _old in plan:
                self._unpin(mt, slot)
                if not isinstance(exc, TierTimeout):
                    # an abandoned worker may still write (even commit) these slots: they stay
                    # allocated until the next mount, where unreferenced slots are free again
                    tier.homes.unalloc(new_slot)  # type: ignore[union-attr]
            if plan and isinstance(exc, (OSError, NffsError)):
                raise self._tier_error(plan[0][4], exc, plan[0][2]) from None
            raise
        self._retain_for_readers(readers)
        row_by_page = dict(rows)
        for mt, slot, page, gen, tier, new_slot, old in plan:
            self._unpin(mt, slot)
            homes = tier.homes
            assert homes is not None
            if page not in row_by_page:
                homes.unalloc(new_slot)
                continue
            homes.committed += 1
            tier.counters.writes += 1
            self._paged_since_trim += 1
            if old is not None:
                old_tier = self.tier_by_id.get(old.tier)
                if old_tier is not None and old_tier.homes is not None:
                    old_tier.homes.retire(old.slot)
                    old_tier.homes.committed -= 1
            else:
                tier.reserved -= 1
            self.table.remember(page, row_by_page[page])
            if int(mt.slot_page[slot]) == page:
                mt.has_home[slot] = True
                if mt.dirty_gen[slot] == gen:
                    self.table.mark_clean(mt, slot)
        for page, exc in bad:
            loc = self.table.mem(page)
            if loc is not None:
                try:
                    self._bad_memory_copy(page, *loc)
                except ChecksumMismatch:
                    pass
        self.counters["writeback_batches"] += 1
        if row_by_page:
            self._unpublished = True
        if bad:
            raise ChecksumMismatch(f"{len(bad)} dirty memory copies failed their checksum; their unsynced data is lost")
        if unavailable:
            names = ", ".join(sorted({t.name for t in unavailable}))
            raise TierUnavailable(f"tier(s) {names} unavailable: dirty pages kept in memory")
        return len(row_by_page)

    def _write_slots(self, tier: Tier, writes: list[tuple[int, bytes | memoryview, int]], *, aligned: bool = False,
                     sync: bool = True) -> set[int]:
        """Worker thread: pages (whole, with their stored-chunk masks) into free slots of a
        durable tier, only their stored chunks, then fsync (`sync=False`: the caller calls
        `_sync_slabs` with the slabs returned). `aligned`: the pages are views of a memory
        tier's mapping, fit for O_DIRECT."""
        homes = tier.homes
        assert homes is not None
        with self._tier_io(tier):
            whole = [(slot, data) for slot, data, mask in writes if mask == self.full_mask]
            direct = self.cfg.direct_write_bytes if aligned else 0
            slabs = homes.write_many(whole, self.cfg.coalesce_bytes, direct) if whole else set()
            for slot, data, mask in writes:
                if mask != self.full_mask:
                    slabs.add(homes.write_partial(slot, data, mask, self.chunk, self.n_chunks))
            if sync:
                homes.sync(slabs)
        return slabs

    def _sync_slabs(self, tier: Tier, slabs: set[int]) -> None:
        assert tier.homes is not None
        with self._tier_io(tier):
            tier.homes.sync(slabs)

    @contextlib.contextmanager
    def _tier_io(self, tier: Tier):
        """A failed write or fsync leaves no writable descriptor behind (and after EIO, none
        at all: some network file systems keep failing a handle once it saw an error)."""
        homes = tier.homes
        assert homes is not None
        try:
            yield
        except OSError as exc:
            homes.close_writers()
            if exc.errno == errno.EIO:
                homes.forget_all()
            raise

    # ================================================================== gathers
    async def gather_rows(self, entries: np.ndarray) -> np.ndarray:
        """Rows (entries.shape + (F,)) of global entry indices, as float32-compatible values.

        All pages a batch touches are brought into memory first (slow ones concurrently);
        then one worker-thread pass verifies the touched memory copies and takes the rows.
        """
        feats = self.layout.features
        ent = np.ascontiguousarray(entries)
        ent = ent.view(np.int64) if ent.dtype == np.uint64 else ent.astype(np.int64, copy=False)
        if self._direct_rows:
            return await self._gather_direct(ent)
        self._check_entries(ent)
        elements = ent[..., None] * feats + np.arange(feats, dtype=np.int64)
        values = await self._gather_elements(elements)
        return values

    def _check_entries(self, ent: np.ndarray) -> None:
        if ent.size and (int(ent.min()) < 0 or int(ent.max()) >= self.layout.total_entries):
            raise InvalidInput("entry index outside the parameter table")

    async def _ensure_pages(self, pages: np.ndarray, *, install_implicit: bool) -> list[bool]:
        """Bring pages into memory concurrently (demand class); returns which were slow."""
        slow = [False] * len(pages)
        todo = [(i, int(p)) for i, p in enumerate(pages.tolist()) if self.table.mem(int(p)) is None]
        errors: list[BaseException] = []

        async def one(i: int, page: int) -> None:
            try:
                data, was_slow = await self._fetch(page, Priority.DEMAND)
                slow[i] = was_slow
                if data is None and install_implicit and self.table.mem(page) is None and self.table.home(page) is None:
                    self._install(page, self.implicit_page(page), has_home=False, home_tier=-1, stored=0)
            except NffsError as exc:
                errors.append(exc)

        if todo:
            limit = trio.CapacityLimiter(self.cfg.demand_threads)

            async def bounded(i: int, page: int) -> None:
                async with limit:
                    await one(i, page)

            async with trio.open_nursery() as nursery:
                for i, page in todo:
                    nursery.start_soon(bounded, i, page)
        if errors:
            raise errors[0]
        return slow

    async def _gather_direct(self, ent: np.ndarray) -> np.ndarray:
        """Pages of the first memory tier sit at slot == page: the gather is one take."""
        started = time.monotonic()
        t = self.memory_tiers[0]
        mt = t.mem
        assert mt is not None
        feats, row_bytes, shift = self.layout.features, self._row_bytes, self._rows_page_shift

        if ent.size <= SMALL_GATHER_ENTRIES:
            return await self._gather_small(ent)
        n_levels = self.layout.n_levels
        by_level = ent.ndim >= 2 and ent.shape[0] == n_levels and ent.size > 4096
        pending = [l for l in range(n_levels) if not self._level_ready[l]] if by_level else []

        def touched_pages() -> tuple[np.ndarray, np.ndarray]:
            """(pages to have in memory and verify, pages whose entries were looked at exactly)."""
            if not by_level:
                self._check_entries(ent)
                exact = sorted_unique(ent.reshape(-1) >> shift)
                return exact, exact
            if not pending:
                # every level is complete in memory: any entry of the table reads valid bytes,
                # and the take below refuses entries past the table (no per-entry scan)
                return np.arange(self.n_pages), np.zeros(0, dtype=np.int64)
            mark = np.zeros(self.n_pages, dtype=bool)
            exact_mark = np.zeros(self.n_pages, dtype=bool)
            for l in range(n_levels):
                part = ent[l]
                lo_e, hi_e = int(part.min()), int(part.max())
                if lo_e < 0 or hi_e >= self.layout.total_entries:
                    raise InvalidInput("entry index outside the parameter table")
                info = self.layout.levels[l]
                inside = lo_e >= info.offset and hi_e < info.offset + info.entries
                if inside and l not in pending:  # a complete level: all its pages, verified below
                    lo, hi = self._level_pages[l]
                    mark[lo:hi + 1] = True
                else:
                    exact_mark[part.reshape(-1) >> shift] = True
            mark |= exact_mark
            return np.flatnonzero(mark), np.flatnonzero(exact_mark)

        pages, exact = await self.io.cpu(touched_pages) if ent.size > 4096 else touched_pages()
        for _ in range(3):
            missing = pages[mt.slot_page[pages] < 0]
            slow = await self._ensure_pages(missing, install_implicit=True)
            if self._listeners:
                slow_pages = {p for p, was_slow in zip(missing.tolist(), slow) if was_slow}
                self._emit(AccessKind.GATHER, exact.tolist(), [p in slow_pages for p in exact.tolist()], started=started)
            if (mt.slot_page[pages] >= 0).all():
                break
        else:
            raise PageIOError("pages needed by the batch could not be kept in memory")
        arena = mt.arena
        for p in pages[arena.valid[pages] != np.uint64(arena.full_mask)].tolist():
            self._fill_implicit(p, mt, p)
        if pending:
            self._refresh_levels_ready()

        check_lines = ent.size <= LINE_CHECK_ROWS

        def take() -> tuple[np.ndarray | None, list[int]]:
            if check_lines:
                # up to LINE_CHECK_ROWS rows: just the rows' lines, or their chunks (slot == page here)
                bad = arena.bad_slots_of_rows(ent.reshape(-1) * row_bytes, row_bytes)
            else:
                per_page = arena.chunks_per_page
                chunks = None
                if ent.size <= MID_GATHER_ROWS:
                    # just the chunks the rows are in, when fewer than those of the pages
                    # listed (which are every page of a complete level): every byte returned
                    # is still checked, and a frame of a hundred points no longer hashes the
                    # whole table (18 ms for 128 MiB, whatever the page size)
                    if by_level and not pending:  # (the only case `touched_pages` did not check)
                        self._check_entries(ent)  # the chunk ids must be the table's
                    chunks = arena.chunks_of(ent.reshape(-1) * row_bytes)
                    if chunks.size >= pages.size * per_page:
                        chunks = None
                if chunks is None:
                    chunks = (pages[:, None] * per_page + np.arange(per_page)).reshape(-1)
                bad = arena.bad_slots_of_chunks(chunks.tolist())
            if bad:
                return None, bad
            return self._take_rows(arena, ent, feats, row_bytes), []

        self._gathers_active += 1
        try:
            rows, bad = take() if check_lines else await self.io.cpu(take)
        finally:
            self._gathers_active -= 1
        if bad:
            self._drop_bad_copies(bad)
            return await self._gather_direct(ent)
        mt.heat[pages[:64]] += self._heat_step(min(64, pages.size))
        return rows  # type: ignore[return-value]

    def _take_rows(self, arena: MemoryArena, ent: np.ndarray, feats: int, row_bytes: int) -> np.ndarray:
        """Rows of a direct-mapped arena (slot == page): one take, a row as one word when it
        fits one; entries past the parameter table raise."""
        if self._row_table_arena is arena:
            table = self._row_table
        else:  # the view is made once: an arena keeps its mapping while the store is open
            table = arena.bytes[: self.layout.total_entries * row_bytes]
            word = _ROW_WORDS.get(row_bytes)
            table = table.view(word) if word is not None else table.view(self.layout.dtype).reshape(-1, feats)
            self._row_table, self._row_table_arena = table, arena
        if table.ndim == 1:
            return table.take(ent).view(self.layout.dtype).reshape(ent.shape + (feats,))
        return table.take(ent, axis=0)

    def gather_rows_now(self, entries: np.ndarray) -> np.ndarray | None:
        """:meth:`gather_rows` of a small batch (a single-point query: 128 rows on ~55 pages)
        answered at once, without a coroutine: a dozen numpy calls when the direct-mapped arena
        holds every page complete and the rows' lines verify (`MemoryArena.bad_slots_of_rows`).
        None: ask `gather_rows` (a page to fetch or complete, a copy found bad, not direct)."""
        if not self._direct_rows or entries.size > SMALL_GATHER_ENTRIES:
            return None
        ent = entries.view(np.int64) if entries.dtype == np.uint64 else entries.astype(np.int64, copy=False)
        return self._gather_small_now(ent)

    def _gather_small_now(self, ent: np.ndarray) -> np.ndarray | None:
        mt = self.memory_tiers[0].mem
        assert mt is not None
        feats, row_bytes, shift = self.layout.features, self._row_bytes, self._rows_page_shift
        flat = ent.reshape(-1)
        if flat.size == 0:
            return self._take_rows(mt.arena, ent, feats, row_bytes)
        if int(flat.view(np.uint64).max()) >= self.layout.total_entries:  # a negative one is huge as uint64
            raise InvalidInput("entry index outside the parameter table")
        arena = mt.arena
        pages = flat >> shift
        if not self._all_levels_ready and (
                mt.slot_page.take(pages).min() < 0 or (arena.valid.take(pages) != arena.full_mask).any()):
            return None
        bad = arena.bad_slots_of_rows(flat * row_bytes, row_bytes)
        if bad:
            self._drop_bad_copies(bad)
            return None
        rows = self._take_rows(arena, ent, feats, row_bytes)
        self._small_gathered = True
        self._gather_heat.append(pages)
        if len(self._gather_heat) >= GATHER_HEAT_PENDING:
            self._apply_deferred_heat()
        for listener in self._memory_gather_listeners:
            try:
                listener(pages)
            except Exception:  # a bug of the prefetcher must not fail the user's query
                log.exception("access listener failed")
        return rows

    async def _gather_small(self, ent: np.ndarray) -> np.ndarray:
        """:meth:`_gather_direct` for a few points: at once when it can (`gather_rows_now`),
        else the careful path."""
        rows = self._gather_small_now(ent)
        if rows is None:
            rows = await self._gather_small_fetching(ent)
        return rows

    async def _gather_small_fetching(self, ent: np.ndarray) -> np.ndarray:
        """The small gather when some page is not in memory or not complete there: fetch (demand
        class, all at once), fill implicit chunks, verify, take."""
        started = time.monotonic()
        mt = self.memory_tiers[0].mem
        assert mt is not None
        feats, row_bytes, shift = self.layout.features, self._row_bytes, self._rows_page_shift
        entries = ent.reshape(-1).tolist()
        pages = sorted({e >> shift for e in entries})
        resident = mt.slot_page.item
        for _ in range(3):
            missing = [p for p in pages if resident(p) < 0]
            if not missing:
                if self._listeners:
                    self._emit(AccessKind.GATHER, pages, [False] * len(pages), started=started)
                break
            slow = await self._ensure_pages(np.array(missing, dtype=np.int64), install_implicit=True)
            if self._listeners:
                slow_pages = {p for p, was_slow in zip(missing, slow) if was_slow}
                self._emit(AccessKind.GATHER, pages, [p in slow_pages for p in pages], started=started)
            if all(resident(p) >= 0 for p in pages):
                break
        else:
            raise PageIOError("pages needed by the lookup could not be kept in memory")
        arena = mt.arena
        valid, full = arena.valid.item, arena.full_mask
        for p in pages:
            if valid(p) != full:
                self._fill_implicit(p, mt, p)
        bad = arena.bad_slots_of_rows(ent.reshape(-1) * row_bytes, row_bytes)
        if bad:
            self._drop_bad_copies(bad)
            return await self._gather_small_fetching(ent)
        rows = self._take_rows(arena, ent, feats, row_bytes)
        self._gather_heat.append(np.array(pages[:64], dtype=np.int64))  # applied as the fast path's
        return rows

    async def _gather_elements(self, elements: np.ndarray) -> np.ndarray:
        """General gather: elements taken where the touched pages' memory copies are, by slot.

        Pages already in memory are pinned first (one array update per tier), so fetching
        the others cannot evict them, and their elements are taken straight from the arena:
        no per-page view and no copy of whole pages. Fetched pages are used from the bytes
        the fetch returned, so a memory tier smaller than the batch's working set costs each
        page one slow read, never two. Every chunk an element is taken from is verified
        first, as on every read (only those: a 64 KiB page holding one corner costs one chunk
        check, not the whole page). A gather counts as an access of its pages (heat), so the
        frames of a camera keep their working set in memory against prefetched pages.
        """
        started = time.monotonic()
        flat = elements.reshape(-1)
        epp = self.elems_per_page

        def touched() -> tuple[np.ndarray, np.ndarray]:
            # the pages in order and, per element, its page's position among them (one
            # sort: np.unique alone and np.searchsorted after it cost 5x as much here)
            return np.unique(flat // epp, return_inverse=True)

        # a big batch's page scan is ~20 ms of numpy: not on the trio thread
        ordered, inverse = await self.io.cpu(touched) if flat.size > INLINE_GATHER_ELEMENTS else touched()
        dtype = self.layout.dtype
        page_tier, page_slot = self.table.mem_many(ordered)
        pinned: list[tuple[MemTier, np.ndarray]] = []
        views: dict[int, np.ndarray] = {}  # fetched pages used from the fetch's bytes

        def pin(idx: np.ndarray) -> None:
            """Pin the memory copies of ordered[idx], their implicit chunks filled first."""
            tiers = page_tier[idx]
            for t in np.unique(tiers).tolist():
                mt = self.table.mem_tiers[t]
                sel = idx[tiers == t]
                slots = page_slot[sel]
                for i in np.flatnonzero(mt.arena.valid[slots] != np.uint64(mt.arena.full_mask)).tolist():
                    self._fill_implicit(int(ordered[sel[i]]), mt, int(slots[i]))
                mt.pins[slots] += 1
                mt.heat[slots] += self._heat_step(slots.size)
                pinned.append((mt, slots))

        try:
            pin(np.flatnonzero(page_tier >= 0))
            implicit = np.zeros(0, dtype=np.int64)
            missing: list[int] = []
            absent = ordered[page_tier < 0]
            if absent.size:
                # pages surely never written take their few elements from the init formula
                # below: no task, no page of init computed, nothing installed
                homed = self.table.maybe_homed_many(absent)
                implicit = absent[~homed]
                missing = absent[homed].tolist()
                self.table.load_homes(absent[homed])
            slow: dict[int, bool] = {}
            errors: list[BaseException] = []
            limit = trio.CapacityLimiter(self.cfg.demand_threads)

            async def fetch(page: int) -> None:
                async with limit:
                    try:
                        data, slow[page] = await self._fetch(page, Priority.DEMAND)
                    except NffsError as exc:
                        errors.append(exc)
                        return
                if data is not None:
                    views[page] = np.frombuffer(data, dtype=dtype)
                    loc = self.table.mem(page)
                    if loc is not None:  # installed: this gather's access counts, as a pin's does
                        self._touch(*loc)
                    return
                loc = self.table.mem(page)
                if loc is not None:
                    i = int(np.searchsorted(ordered, page))
                    page_tier[i], page_slot[i] = loc[0].index, loc[1]
                    pin(np.array([i]))
                elif self.table.home(page) is not None:
                    errors.append(PageIOError(f"page {page}: could not be read for a gather"))
                else:
                    views[page] = np.frombuffer(self.implicit_page(page), dtype=dtype)

            if missing:
                async with trio.open_nursery() as nursery:
                    for page in missing:
                        nursery.start_soon(fetch, page)
            if errors:
                raise errors[0]
            page_list = ordered.tolist()
            slows = [slow.get(p, False) for p in page_list] if slow else [False] * len(page_list)
            self._emit(AccessKind.GATHER, page_list, slows, started=started)
            tiers_used = sorted({mt.index for mt, _ in pinned})
            itemsize = self.itemsize

            def take(on_trio_thread: bool) -> tuple[np.ndarray | None, list[int]]:
                pages_of = ordered[inverse]
                within = flat - pages_of * epp
                tier_of = page_tier[inverse]
                out = np.empty(flat.shape, dtype=dtype)
                bad: list[int] = []
                everything = len(tiers_used) == 1 and bool((tier_of >= 0).all())
                for t in tiers_used:
                    mt = self.table.mem_tiers[t]
                    arena = mt.arena
                    sel = None if everything else np.flatnonzero(tier_of == t)
                    idx = (page_slot[inverse] * epp + within) if sel is None else page_slot[inverse[sel]] * epp + within[sel]
                    if on_trio_thread and arena.lines is not None:  # (line sums are the trio thread's)
                        bad_slots = arena.bad_slots_of_rows(idx * itemsize, itemsize)
                    else:
                        if arena.chunk == self.page_size:  # a chunk per page: the chunks are the pages' slots
                            chunks = page_slot[page_tier == t]
                        else:
                            chunks = sorted_unique((idx * itemsize) >> (arena.chunk.bit_length() - 1))
                        bad_slots = arena.bad_slots_of_chunks(chunks.tolist())
                    if bad_slots:
                        bad.extend(int(mt.slot_page[s]) for s in bad_slots)
                        continue
                    values = arena.bytes.view(dtype)[idx]
                    if sel is None:
                        out = values
                    else:
                        out[sel] = values
                if bad:
                    return None, bad
                if everything:
                    return out.reshape(elements.shape), []
                rest = tier_of < 0
                if implicit.size:
                    on_implicit = np.isin(pages_of, implicit)
                    cfg = self.layout.cfg
                    out[on_implicit] = implicit_values_at(cfg.seed, flat[on_implicit], cfg.init, cfg.init_scale, dtype)
                    rest &= ~on_implicit
                if views and rest.any():
                    known = np.array(sorted(views), dtype=np.int64)
                    parts = [views[p] for p in known.tolist()]
                    table = np.concatenate(parts) if len(parts) > 1 else parts[0]
                    p_rest = pages_of[rest]
                    out[rest] = table[np.searchsorted(known, p_rest) * epp + (flat[rest] - p_rest * epp)]
                return out.reshape(elements.shape), []

            # on the trio thread only when small in pages too (`take` checks one chunk sum per
            # page), or when every tier used checks the rows' lines instead
            lines = bool(tiers_used) and all(self.table.mem_tiers[t].arena.lines is not None for t in tiers_used)
            inline = (flat.size <= INLINE_GATHER_ELEMENTS and ordered.size <= INLINE_TAKE_PAGES) or (
                lines and flat.size <= LINE_CHECK_ROWS)
            values, bad = take(True) if inline else await self.io.cpu(take, False)
        finally:
            for mt, slots in pinned:
                self._unpin_many(mt, slots)
        if bad:
            self._drop_bad_copies(bad)
            return await self._gather_elements(elements)
        return values  # type: ignore[return-value]

    # ================================================================== background
    async def run_background(self, writeback_interval: float, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Write-back within the interval, watermarks, tier health; owned by the daemon's nursery."""
        task_status.started()
        tick = max(0.05, min(writeback_interval / 2, self.cfg.background_tick_s))
        reported: str | None = None
        while True:
            with trio.move_on_after(tick):
                await self._wb_kick.wait()
            kicked = self._wb_kick.is_set()
            self._wb_kick = trio.Event()
            # the deferred heat of reads and small gathers (memory copies' hotness decays with
            # accesses, `_heat_step`, not with time)
            self._apply_deferred_heat()
            try:
                await self._maintain_memory()
                await self._trim_heap_if_due()
                await self._learn_lines()
                due = time.monotonic() - self._last_writeback >= writeback_interval
                if (kicked or due) and any(t.dirty for t in self.memory_tiers):
                    await self._writeback(None)
                if self._unpublished and time.monotonic() - self._last_publish >= self.cfg.publish_interval_s:
                    await self.publish()
                await self._maintain_durable()
                reported = None
            except NffsError as exc:
                if str(exc) != reported:
                    log.error("background write-back failed, will retry: %s", exc)
                    reported = str(exc)

    async def _trim_heap_if_due(self) -> None:
        """After many pages loaded from or written to their homes, and when such work stops
        for a tick, give the heap their temporaries back: without it a mount that read 10^5
        pages kept ~100 B per page in glibc's free lists (scripts/bench_scale.py, "after
        reading all": 249-293 -> 141-228 B/page), and what a writer kept depended on whether
        a big publish happened to trim last. In a worker thread: malloc_trim holds the
        allocator's locks while it walks the heap."""
        paged = self._paged_since_trim
        if paged and (paged >= TRIM_AFTER_PAGES or paged == self._paged_at_last_tick):
            self._paged_since_trim = 0
            await self.io.run(Priority.BACKGROUND, _release_heap)
        self._paged_at_last_tick = self._paged_since_trim

    async def _learn_lines(self) -> None:
        """Give the direct arena's chunks line sums ahead of the small gathers that check them
        (a single-point query reads ~60 chunks; each it has no line sums for costs an xxh3 of
        the whole chunk). Only when every chunk of the arena fits the line-sum table (else
        passes would evict what gathers learned), only after a tick without writes (a copy
        in progress would undo the work), and in steps between which FUSE requests are served.
        Not while `params` is being read and no small gather came since the last tick: reads
        need no line sums, and the learning's steps on the trio thread cost them up to a
        fifth of their rate for the seconds a pass takes (bench_io.py cold reads right after
        a fill: 0.57-0.68x of minimal_fs while learning, 0.75-0.90x without).
        A pass that finds nothing to learn ends the work until a write changes a chunk."""
        if not self._direct:
            return
        gathered = self._small_gathered
        if not self._all_levels_ready and gathered:
            # (scans every level's pages: only while small gathers happen, which it speeds up)
            self._refresh_levels_ready()
        self._small_gathered = False
        self._apply_deferred_heat()  # (the fast path's reads are counted late)
        reads = self.counters["reads"]
        reading = reads != self._learn_seen_reads
        self._learn_seen_reads = reads
        if reading and not gathered:
            return
        mt = self.memory_tiers[0].mem
        assert mt is not None
        arena = mt.arena
        lines = arena.lines
        n_slots = min(arena.n_slots, self.n_pages)
        if lines is None or n_slots * arena.chunks_per_page * lines.lines_per_chunk > lines.mask + 1:
            return
        changes = lines.changes
        if changes != self._learn_seen_changes:
            self._learn_seen_changes = changes  # writes since the last tick: not yet
            return
        if changes == self._learn_done_at:
            return
        budget = self.cfg.learn_lines_slots_per_tick
        step = max(1, self.cfg.learn_lines_step_bytes // self.page_size)
        while budget > 0:
            n = min(step, budget, n_slots - self._learn_cursor)
            self._learn_in_pass += arena.learn_lines_of_slots(self._learn_cursor, n)
            budget -= n
            self._learn_cursor += n
            if self._learn_cursor >= n_slots:
                self._learn_cursor = 0
                if not self._learn_in_pass:
                    self._learn_done_at = lines.changes
                    return
                self._learn_in_pass = 0
            await trio.lowlevel.checkpoint()
        self._learn_seen_changes = lines.changes

    async def _maintain_memory(self) -> None:
        evictions = self.counters["evictions"]
        quiet = evictions == self._evictions_at_last_tick  # no eviction since the last tick
        self._evictions_at_last_tick = evictions
        for i, t in enumerate(self.memory_tiers):
            mt = t.mem
            assert mt is not None
            if quiet and mt.arena.unpunched():
                # the tier is not streaming: give the memory of its free slots back (in a
                # worker, with the slots out of the free list meanwhile)
                slots = mt.arena.take_for_trim(self.cfg.trim_slots_per_tick)
                try:
                    await self.io.cpu(mt.arena.punch, slots)
                finally:
                    mt.arena.return_trimmed(slots)
            cap = self._mem_capacity(t)
            if mt.resident <= self.cfg.high_watermark * cap:
                continue
            excess = mt.resident - int(self.cfg.low_watermark * cap)
            if i + 1 >= len(self.memory_tiers):
                dirty = self._victims(mt, excess, clean_only=False)
                dirty = [(mt, int(s)) for s in dirty.tolist() if mt.dirty_gen[s]]
                if dirty:
                    await self._writeback(dirty)
            self._shrink(i, excess)

    async def _maintain_durable(self) -> None:
        """Cold homes move down from a durable tier over its high watermark; hot ones move up."""
        for i, tier in enumerate(self.durable_tiers[:-1]):
            cap = tier.capacity_pages()
            if cap is None or tier.pages <= self.cfg.high_watermark * cap:
                continue
            count = tier.pages - int(self.cfg.low_watermark * cap)
            rows = self.table.homes_on(tier.id, max(64, count * 4))
            rows.sort(key=lambda r: self._home_heat.get(r[0], (0.0, 0.0))[0])
            dest = next((t for t in self.durable_tiers[i + 1:] if t.has_room(count)), None)
            if dest is not None:
                await self._move_homes(rows[:count], dest)
        if len(self.durable_tiers) > 1:
            hot = sorted(self._home_heat.items(), key=lambda kv: -kv[1][0])[:64]
            for page, (heat, _) in hot:
                if heat < self.cfg.promote_heat:
                    break
                home = self.table.home(page)
                if home is None:
                    continue
                cur = self.tier_by_id.get(home.tier)
                if cur is None or cur not in self.durable_tiers:
                    continue
                for faster in self.durable_tiers[: self.durable_tiers.index(cur)]:
                    cap = faster.capacity_pages()
                    if cap is None or faster.pages + 1 <= self.cfg.low_watermark * cap:
                        await self._move_homes([(page, home)], faster)
                        break

    async def move_home(self, page: int, dest: Tier) -> bool:
        """Move one page's home to another durable tier (migration; also used by tests and tools)."""
        home = self.table.home(page)
        return home is not None and await self._move_homes([(page, home)], dest) == 1

    async def _move_homes(self, rows: list[tuple[int, Home]], dest: Tier) -> int:
        """Copy homes to another durable tier: read, write a free slot, fsync, commit, free the old."""
        if not rows or dest.homes is None or not dest.available():
            return 0
        async with self._wb_lock:
            plan = []
            for page, home in rows:
                if self.table.home(page) != home or home.tier == dest.id:
                    continue
                src = self.tier_by_id.get(home.tier)
                if src is None or src.homes is None or not src.available():
                    continue
                plan.append((page, home, src, dest.homes.alloc()))
            if not plan:
                return 0
            epochs = [(src.homes, src.homes.begin_read()) for _, _, src, _ in plan]

            def work() -> tuple[list[tuple[int, Home]], bool]:
                writes, out = [], []
                for page, home, src, new_slot in plan:
                    data = src.homes.read(home.slot)
                    if stored_checksum(data, home.mask, self.chunk, self.n_chunks) != home.checksum:
                        continue
                    writes.append((new_slot, data, home.mask))
                    out.append((page, Home(dest.id, new_slot, home.checksum, home.mask)))
                self._write_slots(dest, writes)
                if out and not self.table.commit_homes(out, abandoned=lambda: gave_up):
                    return [], False
                return out, self._readers_active()

            gave_up = False
            try:
                done, readers = await self.io.run(Priority.BACKGROUND, work)
            except BaseException as exc:
                gave_up = True
                if not isinstance(exc, TierTimeout):
                    for _, _, _, new_slot in plan:
                        dest.homes.unalloc(new_slot)
                raise
            finally:
                for homes, e in epochs:
                    homes.end_read(e)
            self._retain_for_readers(readers)
            moved = {p for p, _ in done}
            for page, home, src, new_slot in plan:
                if page not in moved:
                    dest.homes.unalloc(new_slot)
                    continue
                src.homes.retire(home.slot)
                src.homes.committed -= 1
                dest.homes.committed += 1
                self.table.remember(page, Home(dest.id, new_slot, home.checksum, home.mask))
                loc = self.table.mem(page)
                if loc is not None:
                    loc[0].home_tier[loc[1]] = dest.id
                if self.tiers.index(dest) > self.tiers.index(src):
                    src.counters.demotions += 1
                else:
                    dest.counters.promotions += 1
            self.counters["migrations"] += len(moved)
            if moved:
                self._unpublished = True
            return len(moved)

    async def shutdown(self) -> None:
        """Final flush at unmount; memory copies go with the daemon."""
        if not self.read_only:
            await self.sync()

    # ================================================================== facts
    def add_listener(self, listener: AccessListener, on_memory_read: MemoryReadListener | None = None,
                     on_memory_gather: MemoryGatherListener | None = None) -> None:
        self._listeners.append(listener)
        if on_memory_read is None:
            ps = self.page_size

            def on_memory_read(page: int, offset: int, size: int, reader: int) -> None:
                n = (offset + size - 1) // ps - page + 1
                listener(AccessEvent(AccessKind.READ, list(range(page, page + n)), [False] * n, offset, size,
                                     time.monotonic(), reader=reader))
        if on_memory_gather is None:
            def on_memory_gather(pages: np.ndarray) -> None:
                distinct = sorted(set(pages.tolist()))
                listener(AccessEvent(AccessKind.GATHER, distinct, [False] * len(distinct), 0, 0, time.monotonic()))
        self._memory_read_listeners.append(on_memory_read)
        self._memory_gather_listeners.append(on_memory_gather)

    def log_memory_reads(self, log: list[int] | None, watched: Mapping[int, object] | None = None) -> None:
        self._read_log = log
        self._read_log_watched = watched if watched is not None else {}

    def logged_memory_reads(self) -> int:
        return self._logged_reads

    def materialised_pages(self) -> int:
        return sum(t.pages for t in self.durable_tiers)

    def free_bytes(self) -> int:
        """Room left for new homes on the durable tiers (capacity, else the file system's)."""
        import os

        free = 0
        for t in self.durable_tiers:
            if t.capacity is not None:
                free += max(0, t.capacity - t.pages * self.page_size)
            elif t.root is not None and t.root.fd >= 0:
                try:
                    st = os.fstatvfs(t.root.fd)
                    free += st.f_bavail * st.f_frsize
                except OSError:
                    pass
        return free

    def describe_tiers(self) -> list[dict]:
        """Each tier, fastest first, as field.json shows it (plus its fill)."""
        return [
            {"name": t.name, "path": t.path, "kind": t.spec.kind, "capacity": t.capacity, "numa": t.spec.numa,
             "latency_s": t.latency, "volatile": t.volatile, "used_bytes": t.pages * self.page_size}
            for t in self.tiers
        ]

    def stats(self) -> dict:
        self._apply_deferred_heat()  # the reads and hits of the fast path
        return {
            "generation": self.generation,
            "materialised_pages": self.materialised_pages(),
            "dirty_pages": sum(t.dirty for t in self.memory_tiers),
            **self.counters,
            "queues": self.io.queue_depths(),
            "tiers": [t.describe() for t in self.tiers],
        }

    def close(self) -> None:
        if self.read_only and self.field_dir is not None and self.generation:
            generations.drop_lease(self.field_dir)  # a reader that leaves pins nothing
        self._row_table, self._row_table_arena = np.zeros(0, dtype=np.uint8), None  # lets the arena unmap
        self.table.close()
        for t in self.tiers:
            t.close()


def _home_version(home: Home) -> int:
    """The version of a page's bytes as its home holds them: negative (memory copies count
    up from 1), and different for a different home or content (tier, slot, checksum)."""
    return -1 - (hash((home.tier, home.slot, home.checksum, home.mask)) & ((1 << 62) - 1))


class StorePort:
    """The prefetcher's view of the store (nffs/tiers/port.py): nothing else is exposed."""

    def __init__(self, store: PageStore) -> None:
        self._store = store
        self.page_size = store.page_size
        self.n_pages = store.n_pages

    def add_listener(self, listener: AccessListener, on_memory_read: MemoryReadListener | None = None,
                     on_memory_gather: MemoryGatherListener | None = None) -> None:
        self._store.add_listener(listener, on_memory_read, on_memory_gather)

    def is_cheap(self, page: int) -> bool:
        s = self._store
        return s.table.mem(page) is not None or s.table.home(page) is None

    def cheap_mask(self, pages: np.ndarray) -> np.ndarray:
        """:meth:`is_cheap` of many pages: one table lookup for all; the exact home lookup
        only for pages that are not in memory and may have a home."""
        t = self._store.table
        pages = np.asarray(pages, dtype=np.int64)
        cheap = t.mem_many(pages)[0] >= 0
        rest = np.flatnonzero(~cheap)
        if rest.size:
            maybe = t.maybe_homed_many(pages[rest])
            cheap[rest[~maybe]] = True
            t.load_homes(pages[rest[maybe]])
            for i in rest[maybe].tolist():
                cheap[i] = t.home(int(pages[i])) is None
        return cheap

    async def fetch(self, page: int, priority: Priority = Priority.PREFETCH) -> FetchResult:
        s = self._store
        if not 0 <= page < s.n_pages:
            return FetchResult(page, None, -1, False, False)
        joined = page in s._inflight
        home = s.table.home(page)
        try:
            data, slow = await s._fetch(page, priority)
        except NffsError:
            return FetchResult(page, None, -1, False, joined)
        if data is not None and self._home_left(page, home):
            # its home changed while it was read: those bytes may be the old home's, which
            # the version of the new one would pass for current
            return FetchResult(page, None, -1, slow, joined)
        return self._result(page, data, slow, joined)

    async def fetch_many(self, pages: list[int], priority: Priority = Priority.PREFETCH) -> list[FetchResult]:
        """:meth:`fetch` of several pages in one slot of the class and one worker call per
        home tier (consecutive slots in one read): a run of a sequential stream costs one
        I/O, not one per page. Pages the batch leaves out (in flight, failed) take the
        page-by-page path."""
        s = self._store
        valid = [p for p in pages if 0 <= p < s.n_pages]
        joined = {p for p in valid if p in s._inflight}
        skipped = {p for p in valid if p in s._inflight or s.table.mem(p) is not None or s.table.home(p) is None}
        versions: dict[int, int] = {}
        homes_read: dict[int, Home] = {}
        try:
            done = await s._fetch_batch(valid, priority, versions, homes_read)
        except NffsError:  # a tier that timed out or failed: once for the run, not once per page
            done, skipped = {}, set()
        # every result of the batch before any further await: their bytes are current now. A
        # page installed from the bytes just read is answered with them (its copy was made
        # from them in this very step: reading it back would copy and hash it once more)
        out: dict[int, FetchResult] = {p: self._batch_result(p, done[p], versions.get(p), homes_read.get(p))
                                       for p in pages if p in done}
        for p in pages:
            if p in out:
                continue
            if p in skipped:  # in flight (join it), in memory or implicit: the page-by-page path
                res = await self.fetch(p, priority)
                out[p] = FetchResult(p, res.data, res.version, res.from_slow_tier, res.joined or p in joined)
            else:  # the batch read it and it failed (I/O error, checksum): failed, not retried here
                out[p] = FetchResult(p, None, -1, False, p in joined)
        return [out[p] for p in pages]

    def _batch_result(self, page: int, data: bytes, version: int | None, home: Home | None) -> FetchResult:
        """The result of a page a run fetch read from `home` (and installed as `version`)."""
        if version is not None and self.page_version(page) == version:
            return FetchResult(page, data, version, True, False)  # its copy, made from these bytes
        if self._home_left(page, home):
            return FetchResult(page, None, -1, True, False)  # those bytes are gone from the field
        return self._result(page, data, True, False)

    def _home_left(self, page: int, home: Home | None) -> bool:
        """Not in memory, and its home is no longer `home`, the one read (written back since,
        or a reader's newer generation): bytes read from `home` are not the page's."""
        s = self._store
        return s.table.mem(page) is None and s.table.home(page) != home

    def _result(self, page: int, data: bytes | None, slow: bool, joined: bool) -> FetchResult:
        """What a fetch gives the prefetcher: the page's current bytes and version."""
        s = self._store
        loc = s.table.mem(page)
        if loc is not None:
            mt, slot = loc
            try:
                s._fill_implicit(page, mt, slot)
                data = mt.arena.read(slot, 0, s.page_size)
            except ChecksumMismatch:
                return FetchResult(page, None, -1, slow, joined)
            return FetchResult(page, data, int(s._version[mt.index][slot]), slow, joined)
        if data is None and s.table.home(page) is None:
            return FetchResult(page, s.implicit_page(page), 0, False, joined)
        # read from its home but not kept in memory (no room): still a read of the slow tier,
        # and its bytes are the home's (the version names that home)
        home = s.table.home(page)
        return FetchResult(page, data, -1 if home is None else _home_version(home), slow, joined)

    def page_version(self, page: int) -> int:
        """A memory copy's generation (> 0); 0 for a page never written; for a page only in
        its home, a negative number naming that home: a page written back (or, in a reader,
        refreshed to a newer generation) and evicted while a prefetch held its old bytes
        must not look unchanged (a constant -1 did: the reader's push of old bytes landed
        after a refresh)."""
        s = self._store
        loc = s.table.mem(page)
        if loc is not None:
            return int(s._version[loc[0].index][loc[1]])
        home = s.table.home(page)
        return 0 if home is None else _home_version(home)

    def lend_heat(self, page: int, amount: float) -> None:
        s = self._store
        s.lend_heat(page, amount)

    def demand_waiting(self) -> int:
        return self._store.io.demand_waiting

    def memory_capacity_pages(self) -> int:
        s = self._store
        return sum(s._mem_capacity(t) for t in s.memory_tiers)

    def slow_tier_reads(self) -> int:
        return sum(t.counters.reads for t in self._store.durable_tiers)

    def log_memory_reads(self, log: list[int] | None, watched: Mapping[int, object] | None = None) -> None:
        self._store.log_memory_reads(log, watched)

    def logged_memory_reads(self) -> int:
        return self._store.logged_memory_reads()
