"""The page table: the one owner of page metadata. "Where is page p, and in what state?"

A page is in one of these states:
- *implicit*: never written; its bytes are SPEC 2.3's init. No row, no copy.
- *home*: its durable copy is (tier, slot, xxh3) in the `homes` table of meta.db.
- plus, optionally, one *memory copy* in a memory tier's arena slot, which is either
  clean (equal to the home, or to the init for an implicit page cached for gathers) or
  dirty (newer than the home; a dirty copy of a page with no home is a page
  materialised since the last write-back).

Homes are durable metadata (SQLite, committed with the slab data already fsynced, see
homes.py). Memory copies are deliberately *not* recorded durably: they live exactly as
long as the daemon that made them, so after any crash the field shows the committed
homes and nothing else — unsynced writes may be lost, but nothing ever flips back and
forth (docs/design.md, "Crash protocol").

Threads: lookups and memory-copy bookkeeping happen on the trio thread (a reader
connection; WAL readers never wait for the writer). Commits of new homes run in a
worker thread on a separate writer connection with synchronous=FULL.
"""
from __future__ import annotations

import logging
import sqlite3
import threading
from bisect import bisect_left
from typing import Callable, NamedTuple

import numpy as np

from ..arrays import sorted_unique
from .arena import MemoryArena
from .slotindex import SlotIndex

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS homes(
    page INTEGER PRIMARY KEY,
    tier INTEGER NOT NULL,
    slot INTEGER NOT NULL,
    sum INTEGER NOT NULL,
    mask INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS homes_tier_slot ON homes(tier, slot);
"""

_SIGN = 1 << 63


#: a memory location is coded as (tier index << SLOT_BITS) | slot
SLOT_BITS = 40
SLOT_MASK = (1 << SLOT_BITS) - 1
#: pages per query of `PageTable.load_homes` (under SQLite's oldest bound of 999 variables)
HOME_QUERY_PAGES = 500
#: `PageTable.load_homes` tests this many pages or fewer one by one (numpy costs more)
FEW_PAGES = 8


def to_signed64(value: int) -> int:
    """SQLite integers are signed; xxh3 digests are not."""
    return value - (1 << 64) if value >= _SIGN else value


def to_unsigned64(value: int) -> int:
    return value + (1 << 64) if value < 0 else value


class Home(NamedTuple):
    """Where a page's durable version lives (a tuple: one is built per page written back)."""

    tier: int  # durable tier id (stable across mounts, from the tiers table)
    slot: int
    checksum: int  # xxh3 of the stored chunks, in order
    mask: int  # stored chunks (bit i = chunk i); the others are the implicit init


_NO_ROW = object()


def create_schema(db_path: str) -> None:
    """At `init`: the homes table exists from the start (read-only openers rely on it)."""
    conn = sqlite3.connect(db_path, isolation_level=None)
    try:
        conn.executescript(SCHEMA)
    finally:
        conn.close()


class MemTier:
    """Per-slot state of one memory tier's arena (what lives where, dirty, pins, heat)."""

    def __init__(self, index: int, arena: MemoryArena, direct: bool) -> None:
        self.index = index
        self.arena = arena
        self.direct = direct
        n = arena.n_slots
        self.slot_page = np.full(n, -1, dtype=np.int64)
        self.dirty_gen = np.zeros(n, dtype=np.int64)  # 0 = clean
        self.home_tier = np.full(n, -1, dtype=np.int32)  # durable tier id of the (reserved) home
        self.has_home = np.zeros(n, dtype=bool)
        self.pins = np.zeros(n, dtype=np.int32)
        #: decayed access count: each access adds `heat_unit`, which grows as accesses go by
        #: (PageStore._heat_step): an access a turnover of the tier ago counts half
        self.heat = np.zeros(n, dtype=np.float32)
        #: what one access adds to `heat` now (PageStore's access clock: it grows as the
        #: accesses go by, which decays every earlier one alike; the store keeps it current)
        self.heat_unit = 1.0
        self.dirty = 0
        self.resident = 0
        #: slots taken for copies still being made in a worker thread (not in the table yet),
        #: counted with `resident` when a slot is looked for: a plan's pages arriving together
        #: must not overfill the tier, and its eviction to the low watermark then drop pages
        #: fetched for a reader that has not come yet
        self.reserved = 0
        #: pages read by the store's fast path from this tier's memory: counted
        #: here, on an object that path touches anyway, and added to the tier's counters
        self.fast_hits = 0
        #: slots of the fast path's reads whose heat and counts are not applied yet: one
        #: list append per read instead of a numpy item update and three counters, applied
        #: in one `add_accesses` before anything ranks or reports them (PageStore's
        #: `_apply_deferred_heat`)
        self.pending_hits: list[int] = []


def _as_rows(found: list[tuple]) -> np.ndarray:
    """(page, tier, slot, sum, mask) tuples from the homes table as generations.ROW rows
    (sum and mask are stored as signed 64-bit integers)."""
    from .generations import ROW

    arr = np.array(found, dtype=np.int64)
    rows = np.empty(len(found), dtype=ROW)
    rows["page"], rows["tier"], rows["slot"] = arr[:, 0], arr[:, 1], arr[:, 2]
    rows["sum"], rows["mask"] = arr[:, 3].view(np.uint64), arr[:, 4].view(np.uint64)
    return rows


class PageTable:
    def __init__(self, db_path: str, n_pages: int, *, dense_limit: int, row_cache: int, read_only: bool,
                 immutable: bool = False) -> None:
        self.db_path = db_path
        self.read_only = read_only
        self.n_pages = n_pages
        #: a reader's homes: a published generation (generations.py) instead of the live database
        self._generation: np.ndarray | None = None
        if read_only:
            # a reader mount: immutable, no lock and no -wal/-shm files in a field dir we must not touch
            uri = f"file:{db_path}?mode=ro" + ("&immutable=1" if immutable else "")
            self._reader = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
            self._writer = None
        else:
            self._writer = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
            self._writer.execute("PRAGMA busy_timeout=10000")
            self._writer.execute("PRAGMA journal_mode=WAL")
            self._writer.execute("PRAGMA synchronous=FULL")
            # as the reader's below: SQLite's default 2 MB page cache is daemon memory that
            # the rows in it do not need (commits write, the row cache serves lookups)
            self._writer.execute("PRAGMA cache_size=-512")
            self._writer.executescript(SCHEMA)
            self._reader = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
        self._reader.execute("PRAGMA busy_timeout=10000")
        self._reader.execute("PRAGMA cache_size=-2048")
        self._write_lock = threading.Lock()
        #: which pages have a home at all: a sorted array loaded once (8 B per page) plus the
        #: pages committed since, so the common "never written" answer costs no SQL
        self._homed = np.zeros(0, dtype=np.int64)
        #: the same array as a memoryview: one page looked up with `bisect` on it costs a
        #: third of numpy's searchsorted of a Python int in the daemon (~2 against ~6 us with
        #: the FUSE round trips between calls: numpy's dispatch runs from cold caches)
        self._homed_view = memoryview(self._homed)
        self._homed_recent: set[int] = set()
        self._homed_loaded = False
        self._rows: dict[int, object] = {}
        self._row_limit = row_cache
        #: queries of the homes table made for `home` and `load_homes` (a test's and stats' view)
        self.home_queries = 0
        #: pages whose rows were committed since the last publish of a generation, as
        #: int64 arrays (8 B a page: Python objects per page would stay in the daemon's
        #: heap after the publish, SPEC 8 memory); None: too many, or not known, so the
        #: next publish is a full one. See `take_unpublished`
        self._unpublished: list[np.ndarray] | None = None
        self._unpublished_count = 0
        self._unpublished_limit = max(row_cache, 1 << 16)
        # memory index: page -> (mem tier index << SLOT_BITS) | slot, or -1
        self.dense = n_pages <= dense_limit
        self._dense_index = np.full(n_pages if self.dense else 0, -1, dtype=np.int64)
        self._sparse_index = SlotIndex()
        self.mem_tiers: list[MemTier] = []

    # -- homes ------------------------------------------------------------------------------
    def use_generation(self, rows: np.ndarray) -> None:
        """A reader switches to a published generation (rows sorted by page)."""
        self._generation = rows
        self._rows.clear()
        if self._homed_loaded:
            self._set_homed(rows["page"])

    def _generation_home(self, page: int) -> Home | None:
        rows = self._generation
        assert rows is not None
        i = int(np.searchsorted(rows["page"], page))
        if i < rows.size and int(rows["page"][i]) == page:
            r = rows[i]
            return Home(int(r["tier"]), int(r["slot"]), int(r["sum"]), int(r["mask"]))
        return None

    def generation_rows(self):
        """A reader's current rows (the generation in use, or the database it started from)."""
        return self._generation if self._generation is not None else self.export_rows()

    def export_rows(self):
        """Every home, sorted by page, as generations.ROW (worker thread; its own connection)."""
        from .generations import ROW

        conn = self._worker_connection()
        try:
            cur = conn.execute("SELECT page, tier, slot, sum, mask FROM homes ORDER BY page")
            parts = []
            while True:
                chunk = cur.fetchmany(1 << 16)
                if not chunk:
                    break
                parts.append(_as_rows(chunk))
        finally:
            conn.close()
        return np.concatenate(parts) if parts else np.zeros(0, dtype=ROW)

    def _worker_connection(self) -> sqlite3.Connection:
        """A connection of its own for a worker thread's read of many rows (publishing)."""
        conn = sqlite3.connect(self.db_path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout=10000")
        conn.execute("PRAGMA cache_size=-512")  # daemon memory, as the others' (SPEC 8)
        return conn

    def scan_homes(self) -> dict[int, np.ndarray]:
        """At mount, one pass over the homes table: the pages with a home (a reader on a
        generation takes them from the generation instead) and, per tier, the slots they use
        (free slots are the others). One scan with C-level conversion, instead of two with a
        Python generator each: mounting 10^6 materialised pages spent most of its 3.4 s here."""
        cur = self._reader.execute("SELECT page, tier, slot FROM homes ORDER BY page")
        parts = []
        while True:
            chunk = cur.fetchmany(1 << 16)
            if not chunk:
                break
            parts.append(np.array(chunk, dtype=np.int64))
        rows = np.concatenate(parts) if parts else np.zeros((0, 3), dtype=np.int64)
        self._set_homed(rows[:, 0] if self._generation is None else self._generation["page"])
        tiers = rows[:, 1]
        # the tier of each run of rows (np.unique would hash all of them: 0.2 s per 10^6 rows)
        present = sorted(set(tiers[np.r_[True, tiers[1:] != tiers[:-1]]].tolist())) if tiers.size else []
        return {int(t): np.ascontiguousarray(rows[tiers == t, 2]) for t in present}

    def _set_homed(self, pages: np.ndarray) -> None:
        """The sorted pages that have a home (the rows themselves stay in SQLite)."""
        self._homed = np.ascontiguousarray(pages, dtype=np.int64)
        self._homed_view = memoryview(self._homed)
        self._homed_recent.clear()
        self._homed_loaded = True

    def _maybe_homed(self, page: int) -> bool:
        if not self._homed_loaded or page in self._homed_recent:
            return True
        homed = self._homed_view
        i = bisect_left(homed, page)
        return i < len(homed) and homed[i] == page

    def maybe_homed_many(self, pages: np.ndarray) -> np.ndarray:
        """:meth:`_maybe_homed` of many pages at once: False only for pages surely without a
        home (never materialised durably), True for the others."""
        pages = np.asarray(pages, dtype=np.int64)
        if not self._homed_loaded:
            return np.ones(pages.shape, dtype=bool)
        homed = self._homed
        i = np.minimum(np.searchsorted(homed, pages), max(0, homed.size - 1))
        out = homed[i] == pages if homed.size else np.zeros(pages.shape, dtype=bool)
        if self._homed_recent:
            out |= np.isin(pages, np.fromiter(self._homed_recent, dtype=np.int64, count=len(self._homed_recent)))
        return out

    def home(self, page: int) -> Home | None:
        cached = self._rows.get(page, _NO_ROW)
        if cached is _NO_ROW and not self._maybe_homed(page):
            return None
        if cached is _NO_ROW and self._generation is not None:
            cached = self._generation_home(page)
            if len(self._rows) >= self._row_limit:
                self._rows.clear()
            self._rows[page] = cached
        if cached is _NO_ROW:
            self.home_queries += 1
            r = self._reader.execute("SELECT tier, slot, sum, mask FROM homes WHERE page=?", (page,)).fetchone()
            cached = None if r is None else Home(r[0], r[1], to_unsigned64(r[2]), to_unsigned64(r[3]))
            if len(self._rows) >= self._row_limit:
                self._rows.clear()
            self._rows[page] = cached
        return cached  # type: ignore[return-value]

    def load_homes(self, pages: "np.ndarray | list[int]") -> None:
        """Bring the rows of these pages into the row cache with one query per
        `HOME_QUERY_PAGES` pages, so that :meth:`home` of each then costs a dict lookup.

        A prefetch plan or a gather's misses name tens of pages never looked up before; one
        query each was a round trip into SQLite on the FUSE thread per page, tens of them per
        camera frame. Pages cached already, or surely without a home, are not asked for."""
        rows = self._rows
        listed = pages if isinstance(pages, list) else np.asarray(pages, dtype=np.int64).tolist()
        want = [p for p in listed if p not in rows]
        if not want:
            return
        if len(want) <= FEW_PAGES:
            # a read's page or two (every random read with the prefetcher on): the scalar
            # test, not numpy's, whose set of recently homed pages is rebuilt per call
            want = [p for p in want if self._maybe_homed(p)]
        else:
            arr = np.asarray(want, dtype=np.int64)
            want = arr[self.maybe_homed_many(arr)].tolist()
        if not want:
            return
        if len(rows) + len(want) > self._row_limit:
            rows.clear()
        if self._generation is not None:
            for p in want:
                rows[p] = self._generation_home(p)
            return
        found: dict[int, Home] = {}
        for i in range(0, len(want), HOME_QUERY_PAGES):
            part = want[i:i + HOME_QUERY_PAGES]
            marks = ",".join("?" * len(part))
            self.home_queries += 1
            for r in self._reader.execute(f"SELECT page, tier, slot, sum, mask FROM homes WHERE page IN ({marks})", part):
                found[r[0]] = Home(r[1], r[2], to_unsigned64(r[3]), to_unsigned64(r[4]))
        for p in want:
            rows[p] = found.get(p)

    def commit_homes(self, rows: list[tuple[int, Home]], abandoned: Callable[[], bool] | None = None) -> bool:
        """Record new homes durably (worker thread; the slab data must already be fsynced).

        `abandoned` is asked under the writer lock: a worker the trio side gave up on (a hung
        tier) must not commit later, over a newer version committed in the meantime.
        Returns False when it did not commit for that reason.
        """
        assert self._writer is not None
        with self._write_lock:
            if abandoned is not None and abandoned():
                return False
            self._writer.execute("BEGIN IMMEDIATE")
            try:
                self._writer.executemany(
                    "INSERT OR REPLACE INTO homes(page, tier, slot, sum, mask) VALUES (?, ?, ?, ?, ?)",
                    [(p, h.tier, h.slot, to_signed64(h.checksum), to_signed64(h.mask)) for p, h in rows],
                )
                self._writer.execute("COMMIT")
            except BaseException:
                self._writer.execute("ROLLBACK")
                raise
            self._note_unpublished(np.fromiter((p for p, _ in rows), dtype=np.int64, count=len(rows)))
        return True

    def _note_unpublished(self, pages: np.ndarray) -> None:
        """Under the writer lock, after a commit."""
        if self._unpublished is not None:
            self._unpublished.append(pages)
            self._unpublished_count += pages.size
            if self._unpublished_count > self._unpublished_limit:
                self._unpublished = None  # a full publish is cheaper than a delta this big

    def take_unpublished(self) -> np.ndarray | None:
        """The pages whose rows were committed since the last call, sorted and unique
        (worker thread, before a publish), or None when they are not known (the first
        publish of this writer, or too many): the publish must then be a full one. Pages
        committed from now on count for the next. A publish that fails must call
        `forget_unpublished`."""
        with self._write_lock:
            parts, self._unpublished = self._unpublished, []
            self._unpublished_count = 0
        if parts is None:
            return None
        return sorted_unique(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)

    def forget_unpublished(self) -> None:
        """A publish failed: what it took is not published, so the next one is full."""
        with self._write_lock:
            self._unpublished = None

    def rows_of(self, pages: np.ndarray):
        """generations.ROW rows of these sorted pages as committed now (worker thread; its own
        connection); a page without a home gets tier generations.NO_HOME."""
        from .generations import NO_HOME, ROW

        out = np.zeros(pages.size, dtype=ROW)
        out["page"] = pages
        out["tier"] = NO_HOME
        if not pages.size:
            return out
        conn = self._worker_connection()
        try:
            step = 500  # SQLite's default limit of bound parameters is 999 (older builds)
            for i in range(0, pages.size, step):
                part = pages[i:i + step].tolist()
                found = conn.execute(
                    f"SELECT page, tier, slot, sum, mask FROM homes WHERE page IN ({','.join('?' * len(part))})", part).fetchall()
                if not found:
                    continue
                # into numpy a step at a time: Python tuples for a whole delta would be
                # daemon memory that stays in the heap once freed
                rows = _as_rows(found)
                out[np.searchsorted(pages, rows["page"])] = rows
        finally:
            conn.close()
        return out

    def delete_homes(self, pages: list[int]) -> None:
        assert self._writer is not None
        with self._write_lock:
            self._writer.execute("BEGIN IMMEDIATE")
            self._writer.executemany("DELETE FROM homes WHERE page=?", [(p,) for p in pages])
            self._writer.execute("COMMIT")
            self._note_unpublished(np.asarray(pages, dtype=np.int64))
        for p in pages:
            self._rows[p] = None

    def remember(self, page: int, home: Home | None) -> None:
        """After a commit: the trio thread's view of the row (never stale: one writer)."""
        if len(self._rows) >= self._row_limit:
            self._rows.clear()
        self._rows[page] = home
        if home is not None and self._homed_loaded:
            self._homed_recent.add(page)
            if len(self._homed_recent) >= self._row_limit:
                self._set_homed(np.union1d(self._homed, np.fromiter(self._homed_recent, dtype=np.int64)))

    def count_by_tier(self) -> dict[int, int]:
        if self._generation is not None:
            tiers, counts = np.unique(self._generation["tier"], return_counts=True)
            return {int(t): int(c) for t, c in zip(tiers, counts)}
        return dict(self._reader.execute("SELECT tier, COUNT(*) FROM homes GROUP BY tier"))

    def iter_homes(self, tier_id: int | None = None):
        q = "SELECT page, tier, slot, sum, mask FROM homes" + (" WHERE tier=?" if tier_id is not None else "") + " ORDER BY page"
        for r in self._reader.execute(q, () if tier_id is None else (tier_id,)):
            yield r[0], Home(r[1], r[2], to_unsigned64(r[3]), to_unsigned64(r[4]))

    def homes_on(self, tier_id: int, limit: int) -> list[tuple[int, Home]]:
        cur = self._reader.execute("SELECT page, tier, slot, sum, mask FROM homes WHERE tier=? LIMIT ?", (tier_id, limit))
        return [(r[0], Home(r[1], r[2], to_unsigned64(r[3]), to_unsigned64(r[4]))) for r in cur]

    # -- memory copies ------------------------------------------------------------------------
    def add_mem_tier(self, arena: MemoryArena, direct: bool) -> MemTier:
        mt = MemTier(len(self.mem_tiers), arena, direct)
        self.mem_tiers.append(mt)
        return mt

    def mem(self, page: int) -> tuple[MemTier, int] | None:
        if self.dense:
            code = self._dense_index.item(page)  # .item: a Python int without a numpy scalar
        else:
            code = self._sparse_index.get(page)
        if code < 0:
            return None
        return self.mem_tiers[code >> SLOT_BITS], code & SLOT_MASK

    def mem_many(self, pages: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`mem` of many pages at once: (memory tier index, slot) per page; where the
        page has no memory copy the tier is -1 (and the slot meaningless). One array lookup
        for a dense table."""
        pages = np.asarray(pages, dtype=np.int64)
        if self.dense:
            codes = self._dense_index[pages]
        else:
            codes = self._sparse_index.get_many(pages)
        tiers = np.where(codes >= 0, codes >> SLOT_BITS, -1)
        return tiers, codes & SLOT_MASK

    def set_mem(self, page: int, mt: MemTier, slot: int, *, dirty_gen: int, home_tier: int, has_home: bool) -> None:
        code = (mt.index << SLOT_BITS) | slot
        if self.dense:
            self._dense_index[page] = code
        else:
            self._sparse_index.set(page, code)
        mt.slot_page[slot] = page
        mt.dirty_gen[slot] = dirty_gen
        if dirty_gen:
            mt.dirty += 1
        mt.home_tier[slot] = home_tier
        mt.has_home[slot] = has_home
        mt.heat[slot] = mt.heat_unit
        mt.resident += 1

    def clear_mem(self, page: int, mt: MemTier, slot: int) -> None:
        if self.dense:
            self._dense_index[page] = -1
        else:
            self._sparse_index.pop(page)
        if mt.dirty_gen[slot]:
            mt.dirty -= 1
        mt.slot_page[slot] = -1
        mt.dirty_gen[slot] = 0
        mt.home_tier[slot] = -1
        mt.has_home[slot] = False
        mt.resident -= 1

    def mark_dirty(self, mt: MemTier, slot: int, gen: int) -> None:
        if not mt.dirty_gen[slot]:
            mt.dirty += 1
        mt.dirty_gen[slot] = gen

    def mark_clean(self, mt: MemTier, slot: int) -> None:
        if mt.dirty_gen[slot]:
            mt.dirty -= 1
        mt.dirty_gen[slot] = 0

    def dirty_slots(self) -> list[tuple[MemTier, np.ndarray]]:
        return [(mt, np.flatnonzero(mt.dirty_gen)) for mt in self.mem_tiers if mt.dirty]

    def close(self) -> None:
        for conn in (self._reader, self._writer):
            if conn is not None:
                try:
                    conn.close()
                except sqlite3.Error:
                    pass
