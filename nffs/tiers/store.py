"""The page store: the flat parameter byte space cut into pages spread over tiers.

Invariants (SPEC 3, 7):
- a page is materialised on its first write; before that its bytes are the implicit init;
- every materialised page has one durable *home* (file name carries its xxh3) and at most
  one copy on a memory tier, possibly dirty;
- a home file is written via temp name + fsync + rename, recorded (metadata fsynced) and
  only then is the previous file deleted, so a crash always leaves one complete copy.

All methods run on the trio thread; blocking work on durable tiers goes to worker threads.
"""
from __future__ import annotations

import errno
import logging
import math
import os
import time
from collections import OrderedDict
from contextlib import asynccontextmanager
from typing import AsyncIterator, Callable, Iterable

import numpy as np
import trio
import xxhash

from ..encoding.init import implicit_values
from ..encoding.layout import FieldLayout
from .meta import MetaDB, PageRow
from .tier import Tier, fsync_dir, read_whole_file, unlink_quietly, write_file_durably

log = logging.getLogger(__name__)

HIGH_WATERMARK = 0.90
LOW_WATERMARK = 0.80
HEAT_HALF_LIFE_S = 30.0
#: decayed access count above which a page's home moves up to a faster durable tier
PROMOTE_HEAT = 4.0
WRITEBACK_WORKERS = 64
DENSE_PAGE_INDEX_LIMIT = 1 << 26
#: fields up to this size keep an in-process table for gathers (a cache: never the only copy)
DEFAULT_RESIDENT_BYTES = int(os.environ.get("NFFS_RESIDENT_BYTES", 1 << 30))


def checksum(data: bytes | bytearray | memoryview) -> int:
    return xxhash.xxh3_64_intdigest(data)


class PageIOError(OSError):
    """A page could not be read (missing tier, I/O error, checksum mismatch): EIO for the reader."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.EIO, message)


def _read_verified(path: str, expected: int, page_size: int) -> bytes:
    data = read_whole_file(path)
    if len(data) != page_size:
        raise PageIOError(f"{path}: {len(data)} bytes, expected {page_size}")
    if checksum(data) != expected:
        raise ChecksumMismatch(path)
    return data


class ChecksumMismatch(PageIOError):
    def __init__(self, path: str) -> None:
        super().__init__(f"{path}: checksum mismatch")
        self.path = path


class PageStore:
    def __init__(
        self,
        layout: FieldLayout,
        meta: MetaDB,
        tiers: list[Tier],
        *,
        read_only: bool = False,
        io_threads: int = 16,
        cache_bytes: int = 256 << 20,
        resident_bytes: int = DEFAULT_RESIDENT_BYTES,
    ) -> None:
        self.layout = layout
        self.meta = meta
        self.tiers = tiers
        self.read_only = read_only
        self.page_size = layout.page_size
        self.itemsize = layout.itemsize
        self.elems_per_page = self.page_size // self.itemsize
        self.memory_tiers = [t for t in tiers if t.volatile]
        self.durable_tiers = [t for t in tiers if not t.volatile]
        self.tier_by_id = {t.id: t for t in tiers}
        self.dirty: dict[int, int] = {}  # page -> generation of its latest write
        self.resident: dict[int, set[int]] = {t.id: set() for t in self.memory_tiers}
        self._gen = 0
        self._epoch = 0  # bumped by every write; guards caches filled across an await
        self._locks: dict[int, trio.Lock] = {}
        self._io_limiter = trio.CapacityLimiter(io_threads)
        self._writeback_lock = trio.Lock()
        self._arrays: OrderedDict[int, np.ndarray] = OrderedDict()
        self._arrays_bytes = 0
        self._cache_budget = cache_bytes
        # In-process copy of the parameter table for vectorised gathers, filled page by page
        # on demand and updated by every write (only for fields that fit the budget).
        self._resident: np.ndarray | None = None
        self._resident_valid: np.ndarray | None = None
        if 0 < layout.params_bytes <= resident_bytes:
            self._resident = np.zeros(layout.n_pages * self.page_size, dtype=np.uint8)
            self._resident_valid = np.zeros(layout.n_pages, dtype=bool)
        self._level_pages = [
            (lo // self.page_size, (hi - 1) // self.page_size) for lo, hi in (layout.level_byte_range(l) for l in range(layout.n_levels))
        ]
        self._level_ready = [False] * layout.n_levels
        self._heat: dict[int, tuple[float, float]] = {}
        self._heat_limit = 1 << 16
        self._pending_unlinks: list[str] = []
        self._pending_dirs: set[str] = set()
        self.demand_waiting = 0
        self.access_listeners: list[Callable[[Iterable[int]], None]] = []
        self.counters = {
            "reads": 0,
            "writes": 0,
            "implicit_page_reads": 0,
            "pages_materialised": 0,
            "writebacks": 0,
            "write_through": 0,
            "evictions": 0,
            "checksum_failures": 0,
            "io_errors": 0,
            "enospc": 0,
        }

    # ------------------------------------------------------------------ start-up
    def recover(self) -> None:
        """Reconcile metadata with what survived in memory tiers (after a crash, or a reboot)."""
        known = set(self.tier_by_id)
        home_counts = self.meta.count_by_home()
        lost = reverted = 0
        mem_rows = self.meta.conn.execute("SELECT page, home, home_sum, mem, dirty FROM pages WHERE mem IS NOT NULL").fetchall()
        for r in mem_rows:
            row = self.meta._row(r)
            tier = self.tier_by_id.get(row.mem) if row.mem in known else None
            if tier is not None and tier.volatile and tier.mem_exists(row.page):
                self.resident[tier.id].add(row.page)
                tier.pages += 1
                if row.dirty:
                    self._gen += 1
                    self.dirty[row.page] = self._gen
                    tier.dirty += 1
                continue
            if row.home_sum is None:
                # never written back and its only copy is gone: it was never fsynced, so it
                # reverts to the implicit init, exactly as if the write had not happened.
                self.meta.delete_page(row.page)
                home_counts[row.home] = home_counts.get(row.home, 1) - 1
                lost += 1
            else:
                row.mem, row.dirty = None, False
                self.meta.put_page(row)
                reverted += 1
        for t in self.durable_tiers:
            t.pages = home_counts.get(t.id, 0)
        # Memory-tier files the metadata does not know are leftovers of a crash.
        for t in self.memory_tiers:
            live = self.resident[t.id]
            for sub in os.listdir(t.root):
                subdir = os.path.join(t.root, sub)
                if not os.path.isdir(subdir):
                    continue
                for name in os.listdir(subdir):
                    try:
                        page = int(name, 16)
                    except ValueError:
                        page = -1
                    if page not in live:
                        unlink_quietly(os.path.join(subdir, name))
        self.meta.commit()
        if lost or reverted:
            log.warning("recovery: %d unsynced pages lost with a volatile tier, %d reverted to their home copy", lost, reverted)

    # ------------------------------------------------------------------ helpers
    def lookup(self, page: int) -> PageRow | None:
        return self.meta.get_page(page)

    def _touch(self, page: int, boost: float = 1.0) -> None:
        now = time.monotonic()
        heat, last = self._heat.get(page, (0.0, now))
        heat = heat * math.exp2(-(now - last) / HEAT_HALF_LIFE_S) + boost
        self._heat[page] = (heat, now)
        if len(self._heat) > self._heat_limit:
            # Forget the coldest half: only relative order among recent pages matters.
            items = sorted(self._heat.items(), key=lambda kv: kv[1][0])
            for p, _ in items[: len(items) // 2]:
                del self._heat[p]

    def heat(self, page: int) -> float:
        entry = self._heat.get(page)
        if entry is None:
            return 0.0
        heat, last = entry
        return heat * math.exp2(-(time.monotonic() - last) / HEAT_HALF_LIFE_S)

    def raise_heat(self, page: int, amount: float) -> None:
        """The prefetcher's confidence raises hotness, so predicted pages are not evicted first."""
        self._touch(page, amount)

    @asynccontextmanager
    async def _locked(self, page: int) -> AsyncIterator[None]:
        lock = self._locks.get(page)
        if lock is None:
            lock = self._locks[page] = trio.Lock()
        async with lock:
            yield
        if not lock.locked() and lock.statistics().tasks_waiting == 0:
            self._locks.pop(page, None)

    def _cache_put(self, page: int, arr: np.ndarray) -> None:
        if page in self._arrays:
            return
        self._arrays[page] = arr
        self._arrays_bytes += arr.nbytes
        while self._arrays_bytes > self._cache_budget and self._arrays:
            _, old = self._arrays.popitem(last=False)
            self._arrays_bytes -= old.nbytes

    def _cache_drop(self, page: int) -> None:
        arr = self._arrays.pop(page, None)
        if arr is not None:
            self._arrays_bytes -= arr.nbytes

    def implicit_page(self, page: int) -> np.ndarray:
        """The never-written content of a page (zero padded past the end of params)."""
        start = page * self.elems_per_page
        count = max(0, min(self.elems_per_page, self.layout.n_params - start))
        cfg = self.layout.cfg
        values = implicit_values(cfg.seed, start, count, cfg.init, cfg.init_scale, self.layout.dtype)
        if count < self.elems_per_page:
            values = np.concatenate([values, np.zeros(self.elems_per_page - count, dtype=self.layout.dtype)])
        return values

    def _check_range(self, offset: int, size: int) -> None:
        if offset < 0 or size < 0 or offset + size > self.layout.params_bytes:
            raise OSError(errno.EINVAL, "range outside params")

    # ------------------------------------------------------------------ reading
    async def load_home(self, row: PageRow) -> bytes:
        tier = self.tier_by_id.get(row.home)
        if tier is None or row.home_sum is None:
            self.counters["io_errors"] += 1
            raise PageIOError(f"page {row.page}: its home tier is not mounted")
        path = tier.home_path(row.page, row.home_sum)
        self.demand_waiting += 1
        try:
            async with self._io_limiter:
                if tier.latency:
                    await trio.sleep(tier.latency)
                data = await trio.to_thread.run_sync(_read_verified, path, row.home_sum, self.page_size)
        except ChecksumMismatch as exc:
            tier.counters.checksum_failures += 1
            self.counters["checksum_failures"] += 1
            log.error("checksum mismatch on page %d in tier %s (%s): returning EIO", row.page, tier.name, exc.path)
            raise
        except PageIOError:
            tier.counters.io_errors += 1
            self.counters["io_errors"] += 1
            raise
        except OSError as exc:
            tier.counters.io_errors += 1
            self.counters["io_errors"] += 1
            log.error("page %d: cannot read %s: %s", row.page, path, exc)
            raise PageIOError(f"page {row.page}: {exc}") from exc
        finally:
            self.demand_waiting -= 1
        tier.counters.reads += 1
        return data

    async def page_bytes(self, page: int, *, promote: bool = True) -> bytes:
        """The whole current content of a page, from wherever it lives."""
        row = self.lookup(page)
        if row is None:
            self.counters["implicit_page_reads"] += 1
            cached = self._arrays.get(page)
            return (cached if cached is not None else self.implicit_page(page)).tobytes()
        if row.mem is not None:
            tier = self.tier_by_id.get(row.mem)
            if tier is not None:
                return tier.mem_read(page, 0, self.page_size)
        data = await self.load_home(row)
        if promote:
            self._promote_clean(page, data)
        return data

    def _promote_clean(self, page: int, data: bytes) -> None:
        """Keep a clean copy on the fastest memory tier with room (re-checked: we may have awaited)."""
        row = self.lookup(page)
        if row is None or row.mem is not None or row.dirty:
            return
        tier = self._memory_tier_with_room(exclude=page)
        if tier is None:
            return
        tier.mem_create(page, data)
        tier.pages += 1
        tier.counters.promotions += 1
        self.resident[tier.id].add(page)
        row.mem = tier.id
        self.meta.put_page(row)

    async def read(self, offset: int, size: int) -> bytes | bytearray:
        """Bytes [offset, offset+size) clipped to params; any buffer type pyfuse3 accepts.

        A read spanning pages is assembled in one preallocated buffer: memory-tier parts are
        read straight into it, so the data is copied once, as in the simplest file system.
        """
        size = max(0, min(size, self.layout.params_bytes - offset))
        if size == 0:
            return b""
        self.counters["reads"] += 1
        first = offset // self.page_size
        last = (offset + size - 1) // self.page_size
        if first == last:
            data = await self._read_part(first, offset - first * self.page_size, size)
        else:
            data = bytearray(size)
            view = memoryview(data)
            pos = offset
            end = offset + size
            while pos < end:
                page = pos // self.page_size
                start = pos - page * self.page_size
                length = min(self.page_size - start, end - pos)
                out = view[pos - offset:pos - offset + length]
                if not self._read_mem_into(page, start, out):
                    out[:] = await self._read_part(page, start, length)
                pos += length
        for listener in self.access_listeners:
            listener(list(range(first, last + 1)))
        return data

    def _read_mem_into(self, page: int, start: int, out: memoryview) -> bool:
        """Fast path: copy a memory-tier page range straight into `out`; False if not in memory."""
        row = self.lookup(page)
        if row is None or row.mem is None:
            return False
        tier = self.tier_by_id.get(row.mem)
        if tier is None:
            return False
        self._touch(page)
        tier.mem_read_into(page, start, out)
        return True

    async def _read_part(self, page: int, start: int, length: int) -> bytes:
        self._touch(page)
        row = self.lookup(page)
        if row is None:
            self.counters["implicit_page_reads"] += 1
            cached = self._arrays.get(page)
            if cached is not None:
                return cached.view(np.uint8)[start:start + length].tobytes()
            first = start // self.itemsize
            last = -(-(start + length) // self.itemsize)
            base = page * self.elems_per_page
            count = max(0, min(last, self.layout.n_params - base) - first)
            cfg = self.layout.cfg
            values = implicit_values(cfg.seed, base + first, count, cfg.init, cfg.init_scale, self.layout.dtype)
            raw = values.tobytes()
            skip = start - first * self.itemsize
            chunk = raw[skip:skip + length]
            return chunk + bytes(length - len(chunk))
        if row.mem is not None:
            tier = self.tier_by_id.get(row.mem)
            if tier is not None:
                return tier.mem_read(page, start, length)
        data = await self.load_home(row)
        self._promote_clean(page, data)
        return data[start:start + length]

    async def page_arrays(self, pages: np.ndarray) -> list[np.ndarray]:
        """Whole pages as typed arrays, fetching slow ones concurrently."""
        out: list[np.ndarray | None] = [None] * len(pages)
        slow: list[tuple[int, int, PageRow]] = []
        for i, page in enumerate(pages.tolist()):
            cached = self._arrays.get(page)
            if cached is not None:
                out[i] = cached
                continue
            row = self.lookup(page)
            if row is None:
                arr = self.implicit_page(page)
            elif row.mem is not None and row.mem in self.tier_by_id:
                arr = np.frombuffer(self.tier_by_id[row.mem].mem_read(page, 0, self.page_size), dtype=self.layout.dtype)
            else:
                slow.append((i, page, row))
                continue
            self._cache_put(page, arr)
            out[i] = arr
        if slow:
            epoch = self._epoch
            failures: list[BaseException] = []

            async def fetch(i: int, page: int, row: PageRow) -> None:
                try:
                    data = await self.load_home(row)
                except OSError as exc:
                    failures.append(exc)
                    return
                out[i] = np.frombuffer(data, dtype=self.layout.dtype)
                self._promote_clean(page, data)

            async with trio.open_nursery() as nursery:
                for i, page, row in slow:
                    nursery.start_soon(fetch, i, page, row)
            if failures:
                raise failures[0]
            if epoch == self._epoch:
                for i, page, _ in slow:
                    self._cache_put(page, out[i])
        for page in pages.tolist():
            self._touch(page)
        return out  # type: ignore[return-value]

    async def gather(self, elements: np.ndarray) -> np.ndarray:
        """float32 values of flat element indices (any shape), asking for all pages at once."""
        flat = np.ascontiguousarray(elements, dtype=np.uint64).reshape(-1)
        if flat.size == 0:
            return np.zeros(elements.shape, dtype=np.float32)
        epp = np.uint64(self.elems_per_page)
        pages = flat // epp
        if self.layout.n_pages <= DENSE_PAGE_INDEX_LIMIT:
            mark = np.zeros(self.layout.n_pages, dtype=bool)
            mark[pages] = True
            unique = np.flatnonzero(mark).astype(np.uint64)
            slot = np.zeros(self.layout.n_pages, dtype=np.int64)
            slot[unique] = np.arange(unique.size)
            inverse = slot[pages]
        else:
            ordered = np.sort(pages)  # np.unique is far slower than sort + searchsorted here
            keep = np.empty(ordered.size, dtype=bool)
            keep[0] = True
            np.not_equal(ordered[1:], ordered[:-1], out=keep[1:])
            unique = ordered[keep]
            inverse = np.searchsorted(unique, pages)
        arrays = await self.page_arrays(unique)
        for listener in self.access_listeners:
            listener(unique.tolist())
        within = (flat - pages * epp).astype(np.int64)
        if len(arrays) == 1:
            values = arrays[0][within]
        else:
            table = np.concatenate(arrays)
            values = table[inverse * self.elems_per_page + within]
        return values.astype(np.float32, copy=False).reshape(elements.shape)

    def is_fast(self, page: int) -> bool:
        """True when reading the page costs no slow-tier I/O (memory copy or never written)."""
        row = self.lookup(page)
        return row is None or (row.mem is not None and row.mem in self.tier_by_id)

    async def gather_rows(self, entries: np.ndarray) -> np.ndarray:
        """Rows (entries.shape + (F,)) of global entry indices; entries is (L, C, N) level-major.

        Slice l normally holds level l's entries (corner_entries' output); any other
        layout is still answered correctly, just without the per-level shortcut.

        With the resident table the steady state is one numpy take: a level whose pages
        are all resident needs no per-row page bookkeeping at all.
        """
        feats = self.layout.features
        if self._resident is None:
            elements = entries.astype(np.uint64)[..., None] * np.uint64(feats) + np.arange(feats, dtype=np.uint64)
            return await self.gather(elements)
        row_bytes = feats * self.itemsize
        missing: list[np.ndarray] = []
        n_pages = self.layout.n_pages
        for level in range(entries.shape[0]):
            ent = entries[level].reshape(-1)
            if level < self.layout.n_levels and ent.size:
                info = self.layout.levels[level]
                in_level = int(ent.min()) >= info.offset and int(ent.max()) < info.offset + info.entries
            else:
                in_level = False
            if in_level and self._level_ready[level]:
                continue
            if in_level:
                lo, hi = self._level_pages[level]
                if self._resident_valid[lo:hi + 1].all():
                    self._level_ready[level] = True
                    continue
            ent = ent.astype(np.uint64)
            if ent.size and int(ent.max()) >= self.layout.total_entries:
                raise ValueError("entry index outside the parameter table")
            first = (ent * np.uint64(row_bytes) // np.uint64(self.page_size)).astype(np.int64)
            last = ((ent * np.uint64(row_bytes) + np.uint64(row_bytes - 1)) // np.uint64(self.page_size)).astype(np.int64)
            mark = np.zeros(n_pages, dtype=bool)
            mark[first] = True
            mark[last] = True
            need = np.flatnonzero(mark & ~self._resident_valid)
            if need.size:
                missing.append(need)
        if missing:
            await self._load_resident(np.unique(np.concatenate(missing)).astype(np.uint64))
        table = self._resident[: self.layout.params_bytes]
        idx = entries.view(np.int64) if entries.dtype == np.uint64 else entries.astype(np.int64)
        word = {2: np.uint16, 4: np.uint32, 8: np.uint64}.get(row_bytes)
        if word is not None:
            rows = np.take(table.view(word), idx).view(self.layout.dtype).reshape(entries.shape + (feats,))
        else:
            rows = np.take(table.view(self.layout.dtype).reshape(-1, feats), idx, axis=0)
        return rows

    async def _load_resident(self, pages: np.ndarray) -> None:
        epoch = self._epoch
        arrays = await self.page_arrays(pages)
        if epoch != self._epoch:
            # a write raced the load: re-read the pages that changed under us
            arrays = await self.page_arrays(pages)
        for listener in self.access_listeners:
            listener(pages.tolist())
        for page, arr in zip(pages.tolist(), arrays):
            start = page * self.page_size
            self._resident[start:start + self.page_size] = arr.view(np.uint8)
            self._resident_valid[page] = True

    def _resident_update(self, page: int, start: int, chunk: bytes | memoryview) -> None:
        if self._resident_valid is not None and self._resident_valid[page]:
            base = page * self.page_size + start
            self._resident[base:base + len(chunk)] = np.frombuffer(chunk, dtype=np.uint8)

    # ------------------------------------------------------------------ writing
    def _memory_tier_with_room(self, exclude: int | None = None) -> Tier | None:
        for tier in self.memory_tiers:
            if tier.has_room():
                return tier
        # Full: drop a batch of the coldest clean copies (their homes are complete), down to
        # the low watermark, so the next writes find room without another scan.
        for tier in self.memory_tiers:
            cap = tier.capacity_pages() or 0
            self._evict_clean(tier, int(LOW_WATERMARK * cap), exclude)
            if tier.has_room():
                return tier
        return None

    def _evict_clean(self, tier: Tier, target_pages: int, exclude: int | None = None) -> int:
        excess = tier.pages - target_pages
        if excess <= 0:
            return 0
        candidates = [p for p in self.resident[tier.id] if p != exclude and p not in self.dirty and p not in self._locks]
        victims = sorted(candidates, key=self.heat)[:excess]
        for page in victims:
            self._drop_mem_copy(tier, page)
        return len(victims)

    async def _memory_tier_for_write(self, exclude: int) -> Tier | None:
        """A memory tier with room for a new dirty page; writes back a batch of cold pages if needed."""
        tier = self._memory_tier_with_room(exclude)
        if tier is None and self.memory_tiers:
            first = self.memory_tiers[0]
            cap = first.capacity_pages() or 0
            dirty = [p for p in self.resident[first.id] if p in self.dirty and p != exclude and p not in self._locks]
            batch = sorted(dirty, key=self.heat)[: max(1, cap - int(LOW_WATERMARK * cap))]
            if batch:
                await self.writeback(batch)
            tier = self._memory_tier_with_room(exclude)
        return tier

    def _drop_mem_copy(self, tier: Tier, page: int) -> None:
        row = self.lookup(page)
        if row is not None and row.mem == tier.id and not row.dirty:
            row.mem = None
            self.meta.put_page(row)
        tier.mem_delete(page)
        tier.pages -= 1
        tier.counters.demotions += 1
        self.resident[tier.id].discard(page)
        self.counters["evictions"] += 1

    def _choose_home(self) -> Tier:
        for tier in self.durable_tiers:
            if tier.has_room():
                return tier
        self.counters["enospc"] += 1
        raise OSError(errno.ENOSPC, "every durable tier is full")

    def _mark_dirty(self, page: int, row: PageRow, tier: Tier) -> None:
        self._gen += 1
        if page not in self.dirty:
            tier.dirty += 1
        self.dirty[page] = self._gen
        if not row.dirty:
            row.dirty = True
            self.meta.put_page(row)

    async def write(self, offset: int, data: bytes | memoryview) -> None:
        if self.read_only:
            raise OSError(errno.EROFS, "mounted read-only")
        view = memoryview(data).cast("B")
        self._check_range(offset, len(view))
        self.counters["writes"] += 1
        pos = 0
        while pos < len(view):
            page = (offset + pos) // self.page_size
            start = offset + pos - page * self.page_size
            length = min(self.page_size - start, len(view) - pos)
            async with self._locked(page):
                await self._write_page(page, start, view[pos:pos + length])
            pos += length

    async def _write_page(self, page: int, start: int, chunk: memoryview) -> None:
        self._epoch += 1
        self._cache_drop(page)
        self._touch(page)
        row = self.lookup(page)
        if row is not None and row.mem is not None and row.mem in self.tier_by_id:
            tier = self.tier_by_id[row.mem]
            tier.mem_write(page, start, chunk)
            self._mark_dirty(page, row, tier)
            self._resident_update(page, start, chunk)
            return
        if start == 0 and len(chunk) == self.page_size:
            base = bytearray(self.page_size)  # a whole-page overwrite needs no old content
        elif row is None:
            base = bytearray(self.implicit_page(page).tobytes())
        else:
            base = bytearray(await self.load_home(row))
            self._epoch += 1
            self._cache_drop(page)
        base[start:start + len(chunk)] = chunk
        await self._store_full_page(page, row, base)
        self._resident_update(page, 0, base)

    async def _store_full_page(self, page: int, row: PageRow | None, content: bytearray | bytes) -> None:
        """Store a whole new page version: as a dirty memory copy, or straight home when memory is full."""
        if row is None:
            home = self._choose_home()
            home.pages += 1
            row = PageRow(page, home.id, None, None, False)
            self.counters["pages_materialised"] += 1
        mem = await self._memory_tier_for_write(exclude=page)
        if mem is not None:
            mem.mem_create(page, content)
            mem.pages += 1
            self.resident[mem.id].add(page)
            row.mem = mem.id
            self._mark_dirty(page, row, mem)
            self.meta.put_page(row)
            return
        home = self.tier_by_id.get(row.home)
        if home is None:
            raise PageIOError(f"page {page}: its home tier is not mounted")
        self.counters["write_through"] += 1
        await self._write_home(page, row, home, bytes(content))

    async def _write_home(self, page: int, row: PageRow, home: Tier, content: bytes) -> None:
        """New home version: durable file first, then the record; the old file goes after the next sync."""
        digest = checksum(content)
        path = home.home_path(page, digest)
        try:
            async with self._io_limiter:
                created = await trio.to_thread.run_sync(write_file_durably, path, content)
        except OSError as exc:
            home.counters.io_errors += 1
            if exc.errno == errno.ENOSPC:
                self.counters["enospc"] += 1
            raise
        home.counters.writes += 1
        self._pending_dirs.add(home.page_dir(page))
        if created:
            self._pending_dirs.add(home.root)
        if row.home_sum is not None and (row.home_sum != digest or row.home != home.id):
            old_tier = self.tier_by_id.get(row.home)
            if old_tier is not None:
                self._pending_unlinks.append(old_tier.home_path(page, row.home_sum))
        row.home = home.id
        row.home_sum = digest
        self.meta.put_page(row)

    async def add_to_elements(self, elements: np.ndarray, deltas: np.ndarray) -> list[int]:
        """values[elements] += deltas (elements unique): the read-modify-write behind concept writes."""
        flat = np.asarray(elements, dtype=np.uint64).reshape(-1)
        add = np.asarray(deltas, dtype=np.float32).reshape(-1)
        order = np.argsort(flat, kind="stable")
        flat, add = flat[order], add[order]
        pages = flat // np.uint64(self.elems_per_page)
        changed: list[int] = []
        bounds = np.flatnonzero(np.diff(pages)) + 1
        for idx in np.split(np.arange(flat.size), bounds):
            if idx.size == 0:
                continue
            page = int(pages[idx[0]])
            within = (flat[idx] - np.uint64(page * self.elems_per_page)).astype(np.int64)
            async with self._locked(page):
                current = np.frombuffer(await self.page_bytes(page, promote=False), dtype=self.layout.dtype).copy()
                current[within] = (current[within].astype(np.float32) + add[idx]).astype(self.layout.dtype)
                lo = int(within.min()) * self.itemsize
                hi = (int(within.max()) + 1) * self.itemsize
                await self._write_page(page, lo, memoryview(current.view(np.uint8)[lo:hi]))
            changed.append(page)
        return changed

    # ------------------------------------------------------------------ write-back
    async def writeback(self, pages: Iterable[int] | None = None) -> int:
        """Write dirty memory copies home (durable file, then record), many pages at once."""
        async with self._writeback_lock:
            todo = sorted(self.dirty) if pages is None else [p for p in pages if p in self.dirty]
            written = 0
            failures: list[OSError] = []

            async def one(page: int) -> None:
                nonlocal written
                try:
                    written += await self._writeback_page(page)
                except OSError as exc:
                    failures.append(exc)

            # A fixed pool of workers over one iterator: concurrency without a task per page.
            pages_iter = iter(todo)

            async def worker() -> None:
                for page in pages_iter:
                    await one(page)

            async with trio.open_nursery() as nursery:
                for _ in range(min(WRITEBACK_WORKERS, len(todo))):
                    nursery.start_soon(worker)
            self.counters["writebacks"] += written
            if failures:
                raise failures[0]
            return written

    async def _writeback_page(self, page: int) -> int:
        async with self._locked(page):
            gen = self.dirty.get(page)
            row = self.lookup(page)
            if gen is None or row is None or row.mem is None or row.mem not in self.tier_by_id:
                return 0
            mem = self.tier_by_id[row.mem]
            content = mem.mem_read(page, 0, self.page_size)
            home = self.tier_by_id.get(row.home)
            if home is None:
                log.error("page %d: home tier %d not mounted; cannot write back", page, row.home)
                return 0
            await self._write_home(page, row, home, content)
            if self.dirty.get(page) == gen:
                del self.dirty[page]
                mem.dirty -= 1
                row.dirty = False
                self.meta.put_page(row)
            return 1

    async def sync(self) -> None:
        """Make every write so far durable: write back, fsync directories and metadata, then clean up."""
        if self.read_only:
            return
        await self.writeback()
        dirs, self._pending_dirs = self._pending_dirs, set()
        unlinks, self._pending_unlinks = self._pending_unlinks, []

        def durable() -> None:
            for d in dirs:
                fsync_dir(d)
            self.meta.sync()
            for path in unlinks:
                unlink_quietly(path)

        await trio.to_thread.run_sync(durable)

    async def rebalance(self) -> None:
        """Keep memory tiers under the high watermark: write back and drop the coldest copies."""
        for tier in self.memory_tiers:
            cap = tier.capacity_pages()
            if cap is None or tier.pages <= HIGH_WATERMARK * cap:
                continue
            target = int(LOW_WATERMARK * cap)
            victims = sorted(self.resident[tier.id], key=self.heat)[: tier.pages - target]
            dirty_victims = [p for p in victims if p in self.dirty]
            if dirty_victims:
                await self.writeback(dirty_victims)
            self._evict_clean(tier, target)
        await self._rebalance_durable()

    async def _rebalance_durable(self) -> None:
        """Cold homes move down from a durable tier over its high watermark; hot ones move up.

        Moves are batched: each is copy -> fsync -> rename -> record, and the old files are
        deleted by the single sync() at the end, after the records are durable.
        """
        moved = 0
        for i, tier in enumerate(self.durable_tiers[:-1]):
            cap = tier.capacity_pages()
            if cap is None or tier.pages <= HIGH_WATERMARK * cap:
                continue
            target = int(LOW_WATERMARK * cap)
            rows = self.meta.homes_on(tier.id, max(64, (tier.pages - target) * 4))
            rows.sort(key=lambda r: self.heat(r.page))
            for row in rows[: tier.pages - target]:
                dest = next((t for t in self.durable_tiers[i + 1:] if t.has_room()), None)
                if dest is None:
                    break
                moved += await self.move_home(row.page, dest)
        # Hot pages whose home is on a slower durable tier move up while there is room
        # below the low watermark of a faster one.
        if len(self.durable_tiers) > 1:
            hot = sorted(self._heat, key=self.heat, reverse=True)[:64]
            for page in hot:
                if self.heat(page) < PROMOTE_HEAT:
                    break
                row = self.lookup(page)
                if row is None or row.home_sum is None:
                    continue
                current = self.tier_by_id.get(row.home)
                if current is None or current not in self.durable_tiers:
                    continue
                for faster in self.durable_tiers[: self.durable_tiers.index(current)]:
                    cap = faster.capacity_pages()
                    if cap is None or faster.pages + 1 <= LOW_WATERMARK * cap:
                        moved += await self.move_home(page, faster)
                        break
        if moved:
            await self.sync()

    async def move_home(self, page: int, dest: Tier) -> bool:
        """Copy the home to another durable tier and record it; the old file goes at the next sync()."""
        while self.demand_waiting > 0:  # migration backs off while demand reads wait on tiers
            await trio.sleep(0.002)
        async with self._locked(page):
            row = self.lookup(page)
            if row is None or row.home_sum is None or row.home == dest.id:
                return False
            src = self.tier_by_id.get(row.home)
            if src is None:
                return False
            data = await self.load_home(row)
            await self._write_home(page, row, dest, data)
            src.pages -= 1
            dest.pages += 1
            if self.tiers.index(dest) > self.tiers.index(src):
                src.counters.demotions += 1
            else:
                dest.counters.promotions += 1
        return True

    # ------------------------------------------------------------------ background
    async def run_background(self, writeback_interval: float, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Write-back within the interval and watermark maintenance; owned by the daemon's nursery."""
        task_status.started()
        tick = max(0.05, min(writeback_interval, 1.0))
        last_writeback = time.monotonic()
        while True:
            await trio.sleep(tick)
            try:
                await self.rebalance()
                if self.dirty and time.monotonic() - last_writeback >= writeback_interval * 0.5:
                    await self.sync()
                    last_writeback = time.monotonic()
                elif not self.dirty:
                    self.meta.commit()
                    last_writeback = time.monotonic()
            except OSError as exc:
                log.error("background write-back failed, will retry: %s", exc)

    def release_memory(self) -> None:
        """After a final sync: drop every clean memory copy, so an unmounted field holds no RAM."""
        for tier in self.memory_tiers:
            for page in list(self.resident[tier.id]):
                if page not in self.dirty:
                    self._drop_mem_copy(tier, page)
        self.meta.commit()

    def materialised_pages(self) -> int:
        """Pages with a home (every materialised page has exactly one). Shim for the FUSE layer."""
        return sum(t.pages for t in self.durable_tiers)

    def describe_tiers(self) -> list[dict]:
        """Each tier, fastest first, as field.json shows it (plus its fill, for statfs).

        Shim for the FUSE layer, which must not reach into tier objects.
        """
        return [
            {"name": t.name, "path": t.root, "kind": t.spec.kind, "capacity": t.capacity, "numa": t.spec.numa,
             "latency_s": t.latency, "volatile": t.volatile, "used_bytes": t.used_bytes}
            for t in self.tiers
        ]

    def stats(self) -> dict:
        return {
            "materialised_pages": sum(t.pages for t in self.durable_tiers),  # every page has one home
            "dirty_pages": len(self.dirty),
            "page_cache_bytes": self._arrays_bytes,
            **self.counters,
            "tiers": [t.describe() for t in self.tiers],
        }

    def close(self) -> None:
        for t in self.tiers:
            t.close()
