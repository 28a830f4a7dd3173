"""A memory tier's page copies: fixed-size slots in one file on tmpfs, mapped once.

A read is a bounds check, a checksum check and a copy out of the mapping: no open,
no close, no system call. Every slot carries one xxh3 per `chunk_bytes` of its page,
kept current by every write, so a copy that was changed behind our back (another
process writing the tier file, memory corruption, a bug) is detected on the next read
of that chunk and never returned (SPEC 7).

The arena knows bytes and their checksums only; which page lives in which slot and
whether it is dirty is the page table's business.

Concurrency: the trio thread reads and writes slots; worker threads write slots home
(write-back) and gather rows (inference). Every change of a slot's bytes happens under
`lock` and counts in `changes`; a write-back writes straight from the mapping and then
checks that the slot's count did not move while it wrote and hashed (`begin_writeback` /
`finish_writeback`), so what it commits is exactly what it wrote, without a copy.
Gathers read without the lock (a value written during a gather may be seen before or
after the write, as with any concurrent read).
"""
from __future__ import annotations

import errno
import logging
import mmap
import os
import threading

import numpy as np
import xxhash

from ..arrays import consecutive_runs, fill_keeping_gil, sorted_unique
from ..errors import ChecksumMismatch, NoSpace
from .tierroot import TierRoot

log = logging.getLogger(__name__)

ARENA_FILE = "arena"


def chunk_runs(mask: int, n_chunks: int) -> list[tuple[int, int]]:
    """Runs [first, last) of set bits of a chunk mask, in order: contiguous chunk ranges."""
    runs = []
    i = 0
    while i < n_chunks:
        if mask >> i & 1:
            j = i
            while j < n_chunks and mask >> j & 1:
                j += 1
            runs.append((i, j))
            i = j
        else:
            i += 1
    return runs
_h = xxhash.xxh3_64_intdigest

#: bytes per line sum (see `LineSums`): a row of the hash table (2 to 32 bytes, aligned)
#: always lies in one line
LINE_BYTES = 128
_LINE_SHIFT = LINE_BYTES.bit_length() - 1
#: `MemoryArena.bad_slots_of_rows` hashes each line once when given more rows than this
LINES_DEDUP_FROM = 512
#: ... and, when it finds this many chunks or fewer with unknown lines, learns every line of
#: them; beyond, only the lines it read (their sums are computed already: a scattered batch's
#: first look at ~a thousand chunks must not sum 32 lines of each on the FUSE thread)
LINES_LEARN_WHOLE_CHUNKS = 64
_LINE_HALVES = LINE_BYTES // 4  # the line hash works on 32-bit halves of the words


def mask_dtype(chunks_per_page: int) -> type[np.unsignedinteger]:
    """The smallest unsigned integer type with a bit for each chunk of a page."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if chunks_per_page <= np.iinfo(dtype).bits:
            return dtype
    return np.uint64


def chunk_sums(data: bytes | memoryview, chunk: int) -> np.ndarray:
    """The checksum of each `chunk` bytes of `data`, as `MemoryArena` keeps them (any thread:
    a worker that has just read a page hashes it, and its install takes them)."""
    view = memoryview(data)
    return np.array([_h(view[i:i + chunk]) for i in range(0, len(view), chunk)], dtype=np.uint64)


class LineSums:
    """Checksums of the 128-byte lines of recently verified chunks, for small gathers.

    Why: a single-point query reads 128 rows of a few bytes from ~60 different 4 KiB chunks.
    Verifying each chunk is one xxh3 of 4 KiB from cold memory and one Python call: ~60 µs,
    more than all the rest of the query. With line sums the rows are checked in a handful of
    vectorised numpy calls that read only the lines the rows are in.

    Trust is derived, never stored or persisted: a chunk's line sums are computed just before
    the chunk passes its xxh3 against the sum that every write keeps (`MemoryArena.sums`),
    and kept only if it does; every change of the chunk's bytes through the arena drops them. A line that fails
    its record sends the caller back to the chunk's xxh3, which alone declares a copy bad:
    a line sum can make a check cheaper, never make it pass or fail on its own.

    The line hash is linear over the line's thirty-two 32-bit halves, each widened to 64
    bits and times a random odd 64-bit multiplier (mod 2^64, chosen per process): a change
    of any one half (d != 0, |d| < 2^32) times an odd number is never 0 mod 2^64, so it
    always shows; changes of several escape it with a probability of about 2^-32. (Over
    whole 64-bit words, flipping bit 63 of two words cancelled out: m1*2^63 + m2*2^63 = 0
    mod 2^64.) Its purpose is finding corruption, as the chunk sums' is; the xxh3 chunk
    sums stay what homes and recovery compare.

    The table is direct-mapped by line id within a fixed memory budget (no bigger than the
    arena's lines), so its size does not grow with the field (SPEC 8 memory per page). A
    record is the line's sum XOR its line id, so one comparison
    tells both "this record is that line's" and "the line is intact"; a record of another
    line, or an emptied one, fails it (but for a 2^-64 chance) and the chunk is hashed
    whole. Used on the trio thread only, which is also the only thread that changes the bytes
    of slots in use (worker threads take snapshots and big gathers, which verify whole
    chunks and never look here). A worker does zero *free* slots when it gives their memory
    back (`punch`) without forgetting their lines: a free slot is read by nobody, and it
    comes back into use only through `install` (which forgets) or `install_empty` (nothing
    valid: every chunk is filled, and forgotten, before a gather reads it).
    """

    EMPTY = -1

    def __init__(self, n_lines: int, lines_per_chunk: int) -> None:
        self.mask = n_lines - 1  # n_lines: a power of two, a multiple of lines_per_chunk
        self.lines_per_chunk = lines_per_chunk
        self.line_shift = lines_per_chunk.bit_length() - 1
        #: per record: (sum of the line) XOR (its line id), as int64
        self.records = np.full(n_lines, self.EMPTY, dtype=np.int64)
        rng = np.random.default_rng()
        self.multipliers = rng.integers(0, 1 << 63, _LINE_HALVES, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
        #: calls of `forget` so far (the background's progress mark)
        self.changes = 0

    @staticmethod
    def lines_for(budget_bytes: int, lines_per_chunk: int) -> int:
        """The largest power of two of records within the budget (at least one chunk's)."""
        n = max(1, budget_bytes // 8)
        return max(lines_per_chunk, 1 << (n.bit_length() - 1))

    def record(self, line_ids: np.ndarray, sums: np.ndarray) -> np.ndarray:
        """The records of lines with these sums (uint64 as computed)."""
        return sums.view(np.int64) ^ line_ids

    def forget(self, first_chunk: int, last_chunk: int) -> None:
        """The bytes of chunks [first, last) change: their line sums no longer hold (the
        records they map to are emptied, whichever line they hold: cheaper than looking)."""
        self.changes += 1
        per = self.lines_per_chunk
        n = (last_chunk - first_chunk) * per
        records = self.records
        if n > self.mask:
            records[:] = self.EMPTY
            return
        j = (first_chunk * per) & self.mask
        end = j + n
        # trio thread: in pieces that keep the interpreter lock (`fill_keeping_gil`)
        fill_keeping_gil(records, j, min(end, self.mask + 1), self.EMPTY)
        if end > self.mask + 1:
            fill_keeping_gil(records, 0, end - self.mask - 1, self.EMPTY)

    def learn(self, line_ids: np.ndarray, sums: np.ndarray) -> None:
        self.records[line_ids & self.mask] = self.record(line_ids, sums)


class MemoryArena:
    def __init__(self, root: TierRoot | None, n_slots: int, page_size: int, chunk_bytes: int, numa_node: int | None = None) -> None:
        self.root = root
        self.n_slots = n_slots
        self.page_size = page_size
        # at most 64 chunks per page, so a page's chunk masks fit one 64-bit integer
        self.chunk = min(max(chunk_bytes, page_size // 64), page_size)
        self.chunks_per_page = page_size // self.chunk
        self.full_mask = (1 << self.chunks_per_page) - 1
        size = n_slots * page_size
        self.fd = -1
        #: whole-page installs populate their slot's mapping in one call (`install`) ...
        self._populate = root is not None
        #: ... unless it is populated already: installed before and not punched since. A
        #: slot reused from the free list needs no system call (most installs of prefetched
        #: pages, on the trio thread), and tmpfs cannot take its memory back
        self.populated = np.zeros(n_slots if root is not None else 0, dtype=bool)
        #: fresh slots below this were populated ahead of their install (`populate_fresh`)
        self._populated_to = 0
        if root is None:
            self._mm = mmap.mmap(-1, size)
        else:
            self.fd = root.open_file(ARENA_FILE, os.O_RDWR | os.O_CREAT | os.O_EXCL)
            os.ftruncate(self.fd, size)
            if numa_node is not None:
                from .numa import mbind_file

                if not mbind_file(self.fd, size, numa_node):
                    log.warning("could not bind the arena of %s to NUMA node %d", root.path, numa_node)
            self._mm = mmap.mmap(self.fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.view = memoryview(self._mm)
        self.bytes = np.frombuffer(self._mm, dtype=np.uint8)
        self.line_halves = self.bytes.view(np.uint32).reshape(-1, _LINE_HALVES)  # 128-byte lines, as 32-bit halves
        self.sums = np.zeros((n_slots, self.chunks_per_page), dtype=np.uint64)
        self.flat_sums = self.sums.reshape(-1)  # a view: chunk id = slot * chunks_per_page + i
        # The per-slot arrays below are daemon memory for every slot in use (SPEC 8: <= 200 B
        # per materialised page): the chunk masks take the smallest unsigned type that holds
        # a page's chunks (one byte for 4 KiB pages, which have one chunk), not 8 bytes each
        mask_type = mask_dtype(self.chunks_per_page)
        #: chunks whose bytes in the slot are meaningful (checksummed); the others are the
        #: implicit init, computed only when something reads them
        self.valid = np.zeros(n_slots, dtype=mask_type)
        #: chunks that belong to the stored page (written at some time): only these are
        #: written home; the rest of a home is the implicit init too
        self.stored = np.zeros(n_slots, dtype=mask_type)
        self.lock = threading.Lock()
        #: changes of each slot's bytes, counted under `lock` (see `finish_writeback`): only
        #: compared for equality across one write-back, so 32 bits (wrapping) are plenty
        self.changes = np.zeros(n_slots, dtype=np.uint32)
        self._free: list[int] = []
        #: free slots whose memory is still allocated (released, not punched yet): punching a
        #: hole costs ~30 µs on tmpfs, wasted when the slot is reused at once (streaming
        #: through a full tier), so it is left to `take_for_trim` when the tier is idle
        self._unpunched: set[int] = set()
        self._fresh = 0  # slots >= this were never handed out
        self.used = 0
        #: line sums for small gathers (`enable_line_sums`); None: every check hashes chunks
        self.lines: LineSums | None = None

    def enable_line_sums(self, budget_bytes: int) -> None:
        """Keep line sums of verified chunks within this many bytes (the first memory tier,
        direct-mapped or slotted, whose small gathers check rows: see `bad_slots_of_rows`)."""
        if budget_bytes <= 0 or self.chunk % LINE_BYTES:
            return
        per_chunk = self.chunk // LINE_BYTES
        # no more records than the arena has lines (a 16 MiB tier needs 1 MiB of them, not the
        # whole budget: np.full writes every record)
        arena_lines = 1 << max(0, (self.n_slots * self.page_size // LINE_BYTES - 1).bit_length())
        n = min(LineSums.lines_for(budget_bytes, per_chunk), max(arena_lines, per_chunk))
        self.lines = LineSums(n, per_chunk)

    # -- slots -------------------------------------------------------------------------
    def alloc(self) -> int | None:
        if self._free:
            self.used += 1
            slot = self._free.pop()
            self._unpunched.discard(slot)
            return slot
        if self._fresh < self.n_slots:
            slot = self._fresh
            self._fresh += 1
            self.used += 1
            return slot
        return None

    def allocates_fresh(self) -> bool:
        """The next allocation takes a slot never handed out (the free list is empty)."""
        return not self._free and self._fresh < self.n_slots

    def populate_fresh(self, count: int) -> None:
        """Populate the mapping of the next `count` slots never handed out (worker thread),
        in one call: a fetched page's install on the trio thread then finds its slot in
        memory (the populate there, a system call that lets go of the interpreter lock, was
        ~7 % of that thread's time while a cold field was read). Best effort: a failure
        leaves the install to populate (and report) as before."""
        if not self._populate:
            return
        first = max(self._fresh, self._populated_to)
        last = min(self.n_slots, self._fresh + count)
        if last > first and self._populate_range(first, last):
            self._populated_to = max(self._populated_to, last)

    def populate_slots(self, slots: list[int]) -> None:
        """Populate these slots' mapping (worker thread; a direct-mapped arena's slots are the
        pages a batch is about to install), a run of consecutive slots per call. Best effort,
        as `populate_fresh`."""
        if not self._populate or not slots:
            return
        todo = [s for s in sorted(slots) if 0 <= s < self.n_slots and not self.populated[s]]
        for i, j in consecutive_runs(todo):
            self._populate_range(todo[i], todo[j - 1] + 1)

    def _populate_range(self, first: int, last: int) -> bool:
        """madvise(MADV_POPULATE_WRITE) of slots [first, last), outside the lock: it only
        brings memory in (the bytes of a slot in use are not touched), and the trio thread's
        installs must not wait for it. A slot punched meanwhile is then marked populated
        without being so: its install faults its pages in, as before this existed."""
        try:
            self._mm.madvise(_MADV_POPULATE_WRITE, first * self.page_size, (last - first) * self.page_size)
        except (OSError, ValueError):
            return False
        with self.lock:
            self.populated[first:last] = True
        return True

    def alloc_at(self, slot: int) -> None:
        """Direct-mapped arenas: page p always lives in slot p."""
        self.used += 1

    def release(self, slot: int, *, direct: bool = False) -> None:
        """The slot's copy is gone. A direct-mapped slot's memory is given back at once (its
        page alone can come back to it); another slot goes to the free list with its memory
        still allocated (see `_unpunched`)."""
        self.used -= 1
        if direct:
            self.drop_contents(slot)
        else:
            self._free.append(slot)
            self._unpunched.add(slot)

    def unpunched(self) -> int:
        return len(self._unpunched)

    def take_for_trim(self, limit: int) -> list[int]:
        """Up to `limit` free slots whose memory is still allocated, taken out of the free
        list (so nothing allocates them while a worker punches them); hand them back with
        `return_trimmed`."""
        slots = []
        while self._unpunched and len(slots) < limit:
            slots.append(self._unpunched.pop())
        if slots:
            taken = set(slots)
            self._free = [s for s in self._free if s not in taken]
        return slots

    def punch(self, slots: list[int]) -> None:
        """Give the memory of these (taken, free) slots back to the system (worker thread)."""
        for slot in slots:
            self.drop_contents(slot)

    def return_trimmed(self, slots: list[int]) -> None:
        self._free.extend(slots)

    # -- bytes -------------------------------------------------------------------------
    def _base(self, slot: int) -> int:
        return slot * self.page_size

    def range_mask(self, offset: int, length: int) -> int:
        first, last = offset // self.chunk, (offset + length - 1) // self.chunk + 1
        return ((1 << (last - first)) - 1) << first

    def missing(self, slot: int, offset: int, length: int) -> int:
        """Chunks of [offset, offset+length) whose bytes are not in the slot yet (implicit)."""
        return self.range_mask(offset, length) & ~int(self.valid[slot])

    def install(self, slot: int, data: bytes | bytearray | memoryview | np.ndarray, *, stored: int,
                sums: np.ndarray | None = None) -> None:
        """A whole page into a slot, with fresh checksums; `stored` chunks belong to the page.

        `sums`: the chunks' checksums, computed already from these very bytes (immutable
        ones: a fetched page's, hashed by the worker that read it, `chunk_sums`), so that
        the thread installing the page does not hash it again.

        The slot is populated first with one madvise (MADV_POPULATE_WRITE): a slot that is
        not in memory yet (a fresh or trimmed one, every slot of a long copy) then costs one
        system call instead of a page fault per 4 KiB (a 256 MiB copy ~8 % faster). Not a
        pwrite into the tier file: that is as fast, but leaves the pages unmapped here, and
        the first read of each then faults (cold 4 KiB reads ~6 % slower)."""
        base = self._base(slot)
        mv = memoryview(data).cast("B")
        with self.lock:
            self.changes[slot] += 1
            if self._populate and not self.populated[slot]:
                try:
                    self._mm.madvise(_MADV_POPULATE_WRITE, base, self.page_size)
                except OSError as exc:
                    if exc.errno != errno.EINVAL:
                        # the tier's file system is out of memory: the copy would SIGBUS
                        raise NoSpace(f"memory tier: no memory for slot {slot}: {exc}") from None
                    self._populate = False  # before Linux 5.14: page faults, as before
                else:
                    self.populated[slot] = True
            self.view[base:base + self.page_size] = mv
            if sums is None or len(sums) != self.chunks_per_page:  # (hashed with another chunk size)
                self._rehash(slot, 0, self.chunks_per_page)
            else:
                self.sums[slot] = sums
                self._forget_lines(slot, 0, self.chunks_per_page)
            self.valid[slot] = self.full_mask
            self.stored[slot] = stored & self.full_mask

    def install_empty(self, slot: int) -> None:
        """A page that is all implicit init so far: nothing is copied or computed."""
        self.valid[slot] = 0
        self.stored[slot] = 0

    def fill(self, slot: int, first_chunk: int, data: bytes) -> None:
        """Implicit-init bytes for chunks that were not valid (they stay not stored)."""
        c = self.chunk
        n = len(data) // c
        base = self._base(slot) + first_chunk * c
        with self.lock:
            self.changes[slot] += 1
            self.view[base:base + n * c] = data
            self._rehash(slot, first_chunk, first_chunk + n)
            self.valid[slot] = int(self.valid[slot]) | (((1 << n) - 1) << first_chunk)

    def write(self, slot: int, offset: int, data: memoryview) -> None:
        """Patch a slot; chunks only partly covered must be valid already (the caller fills them)."""
        n = len(data)
        mask = self.range_mask(offset, n)
        at = slot * self.page_size + offset
        with self.lock:
            self.changes[slot] += 1
            self.view[at:at + n] = data
            self._rehash(slot, offset // self.chunk, (offset + n - 1) // self.chunk + 1)
            self.valid[slot] = self.valid.item(slot) | mask
            self.stored[slot] = self.stored.item(slot) | mask

    def _rehash(self, slot: int, first: int, last: int) -> None:
        c = self.chunk
        lo = slot * self.page_size + first * c
        if last - first == 1:
            # one chunk (a small write, a 4 KiB page): its sum directly, without a list and
            # an array of one (~5 us of a small write's handler on the FUSE thread)
            self.sums[slot, first] = _h(self.view[lo:lo + c])
        else:
            self.sums[slot, first:last] = chunk_sums(self.view[lo:lo + (last - first) * c], c)
        self._forget_lines(slot, first, last)

    def _forget_lines(self, slot: int, first: int, last: int) -> None:
        if self.lines is not None:
            per = self.chunks_per_page
            self.lines.forget(slot * per + first, slot * per + last)

    def verify(self, slot: int, offset: int = 0, length: int | None = None) -> bool:
        """Do the (valid) chunks of the range still match their checksums?"""
        if length is None:
            offset, length = 0, self.page_size
        if length <= 0:
            return True
        base = self._base(slot)
        c = self.chunk
        first, last = offset // c, (offset + length - 1) // c + 1
        view = self.view
        if last - first == 1:
            return _h(view[base + first * c:base + last * c]) == int(self.sums[slot, first])
        return [_h(view[base + i * c:base + (i + 1) * c]) for i in range(first, last)] == self.sums[slot, first:last].tolist()

    def checked_view(self, slot: int, offset: int, length: int) -> memoryview | None:
        """The common read in one call: the bytes, if every chunk they touch is valid and intact.

        None sends the caller to the careful path (fill implicit chunks, or a bad copy).
        """
        c = self.chunk
        base = slot * self.page_size
        first = offset // c
        view = self.view
        if (offset + length - 1) // c == first:  # one chunk (every 4 KiB read): no loop, no views of arrays
            lo = base + first * c
            if self.valid.item(slot) >> first & 1 and _h(view[lo:lo + c]) == self.sums.item(slot, first):
                return view[base + offset:base + offset + length]
            return None
        return self.checked_range(slot, offset, length)

    def checked_range(self, slot: int, offset: int, length: int) -> memoryview | None:
        """:meth:`checked_view` across consecutive slots (`offset` may pass the first page's
        end): the bytes, if every chunk they touch is valid and intact. One hash call per
        chunk and one lookup of the expected sums; the common multi-page read of a
        direct-mapped arena (a 128 KiB kernel read-ahead request)."""
        c = self.chunk
        lo = slot * self.page_size + offset
        hi = lo + length
        g0, g1 = lo // c, (hi - 1) // c + 1
        per = self.chunks_per_page
        valid = self.valid
        for s in range(g0 // per, (g1 - 1) // per + 1):
            a = max(g0 - s * per, 0)
            need = ((1 << (min(g1 - s * per, per) - a)) - 1) << a  # the chunks of slot s read
            if valid.item(s) & need != need:
                return None  # chunks still implicit: the careful path fills them
        view = self.view
        if [_h(view[g * c:(g + 1) * c]) for g in range(g0, g1)] != self.flat_sums[g0:g1].tolist():
            return None
        return view[lo:hi]

    def chunks_of(self, offsets: np.ndarray) -> np.ndarray:
        """The chunks (global ids, ascending, once each) holding these byte offsets of the
        arena: what a gather of rows at those offsets has to verify."""
        return sorted_unique(offsets >> (self.chunk.bit_length() - 1))

    def bad_slots_of_chunks(self, chunks: list[int]) -> list[int]:
        """Slots whose listed chunks (global ids: slot * chunks_per_page + i) fail their
        checksum; one hash call per chunk, no numpy round trip per chunk list."""
        if not chunks:
            return []
        per_page = self.chunks_per_page
        return sorted({cid // per_page for cid, ok in zip(chunks, self._chunks_intact(chunks)) if not ok})

    def _chunks_intact(self, chunks: list[int]) -> list[bool]:
        """Per listed chunk (global id), whether its bytes match its checksum."""
        c = self.chunk
        view = self.view
        want = self.flat_sums[chunks].tolist()  # one take, not an .item() per chunk
        return [_h(view[cid * c:(cid + 1) * c]) == w for cid, w in zip(chunks, want)]

    def bad_slots_of_rows(self, offsets: np.ndarray, row_bytes: int) -> list[int]:
        """:meth:`bad_slots_of_chunks` for the chunks holding rows at these byte offsets
        (int64, `row_bytes` each, aligned; duplicates allowed): when every row's line matches
        its record, in eight numpy calls; else the chunks of the lines that do not are hashed
        whole (and learned for next time: most often they were simply not known yet). Trio
        thread only (see `LineSums`)."""
        lines = self.lines
        if lines is None or LINE_BYTES % row_bytes:
            return self.bad_slots_of_chunks(self.chunks_of(offsets).tolist())
        line_ids = offsets >> _LINE_SHIFT
        if line_ids.size > LINES_DEDUP_FROM:
            # a frame of tens of points reads ~10^4 elements on a few thousand lines: hashing
            # each line once saves more than the sort costs
            line_ids = sorted_unique(line_ids)
        sums = self._line_sums(line_ids)
        got = lines.record(line_ids, sums)
        matches = lines.records.take(line_ids & lines.mask) == got
        if matches.all():
            return []
        # unknown lines (or a changed one): the chunks' own sums decide
        unknown = ~matches
        chunks = sorted_unique(line_ids[unknown] >> lines.line_shift).tolist()
        if len(chunks) <= LINES_LEARN_WHOLE_CHUNKS:
            # every line of a few chunks (other rows of them are often read next)...
            ids, sums = self._chunk_line_sums(chunks)  # before the chunks' own check: sums of
        else:  # ...of many (a batch's first look at its pages): the lines read, already summed
            ids, sums = line_ids[unknown], sums[unknown]
        bad = self.bad_slots_of_chunks(chunks)  # bytes changed in between are never kept
        if not bad:
            lines.learn(ids, sums)
        return bad

    def _line_sums(self, line_ids: np.ndarray) -> np.ndarray:
        """The hashes of these lines, as they are now (uint64)."""
        assert self.lines is not None
        return self.line_halves.take(line_ids, axis=0) @ self.lines.multipliers

    def _chunk_line_sums(self, chunks: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """(line ids, hashes) of every line of these chunks, as they are now."""
        assert self.lines is not None
        per = self.lines.lines_per_chunk
        ids = np.array(chunks, dtype=np.int64)
        line_ids = (ids[:, None] * per + np.arange(per, dtype=np.int64)).reshape(-1)
        return line_ids, self._line_sums(line_ids)

    def learn_lines_of_slots(self, first_slot: int, n_slots: int) -> int:
        """Verify the valid chunks of these slots that have no line sums yet and keep theirs
        (background, on the trio thread, in small steps): a later small gather of them
        checks lines. Returns the chunks learned; a chunk failing its xxh3 is left to the
        next read of it, which finds it and deals with the copy."""
        lines = self.lines
        if lines is None or n_slots <= 0:
            return 0
        per = self.chunks_per_page
        slots = np.arange(first_slot, min(first_slot + n_slots, self.n_slots), dtype=np.int64)
        valid = self.valid[slots]
        cids = (slots[:, None] * per + np.arange(per, dtype=np.int64)).reshape(-1)
        is_valid = ((valid[:, None] >> np.arange(per, dtype=np.uint64)) & np.uint64(1)).reshape(-1).astype(bool)
        cids = cids[is_valid]
        first = cids << lines.line_shift  # a chunk learned has its first line's record (the
        # records of a chunk's lines are written and emptied together)
        known = lines.records[first & lines.mask] == lines.record(first, self._line_sums(first))
        cids = cids[~known]
        if not cids.size:
            return 0
        chunks = cids.tolist()
        ids, sums = self._chunk_line_sums(chunks)  # first: then the xxh3 vouches for these bytes
        good = np.array(self._chunks_intact(chunks), dtype=bool)
        if good.any():
            keep = np.repeat(good, lines.lines_per_chunk)
            lines.learn(ids[keep], sums[keep])
        return int(good.sum())

    def verify_valid(self, slot: int) -> bool:
        if int(self.valid[slot]) == self.full_mask:
            return self.verify(slot)
        return self._check_valid_chunks(slot)[0]

    def _check_valid_chunks(self, slot: int, keep: int = -1) -> tuple[bool, int]:
        """Whether the slot's valid chunks match their sums (the set bits only: a page with
        one written chunk checks one), and the hash of chunk `keep` if it is one of them
        (else -1)."""
        valid = int(self.valid[slot])
        c = self.chunk
        base = self._base(slot)
        sums = self.sums[slot].tolist()
        view = self.view
        ok, kept = True, -1
        while valid:
            i = (valid & -valid).bit_length() - 1
            valid &= valid - 1
            h = _h(view[base + i * c:base + (i + 1) * c])
            if h != sums[i]:
                ok = False
            if i == keep:
                kept = h
        return ok, kept

    def read_into(self, slot: int, offset: int, out: memoryview) -> None:
        if not self.verify(slot, offset, len(out)):
            raise ChecksumMismatch(f"memory copy in slot {slot} fails its checksum")
        base = self._base(slot) + offset
        out[:] = self.view[base:base + len(out)]

    def read(self, slot: int, offset: int, length: int) -> bytes:
        if not self.verify(slot, offset, length):
            raise ChecksumMismatch(f"memory copy in slot {slot} fails its checksum")
        base = self._base(slot) + offset
        return self.view[base:base + length].tobytes()

    def begin_writeback(self, slot: int) -> tuple[int, int, memoryview]:
        """Write-back of a slot (worker thread), step one: (change count, stored mask, the
        page's bytes as a view of the mapping). Write the stored chunks of the view home,
        then ask `finish_writeback` whether they are what the page held: no copy of the
        page is made (a 256 MiB copy into params ~7 % faster than with one)."""
        with self.lock:
            return int(self.changes[slot]), int(self.stored[slot]), self.page_view(slot)

    def finish_writeback(self, slot: int, begun: int) -> int | None:
        """Step two, after the stored chunks were written: the page's stored checksum (xxh3
        of its stored chunks in order, `homes.stored_checksum`) of the bytes as they were
        written, or None when the slot changed since `begin_writeback` (the bytes written
        may be torn: the caller must not commit them, and writes the page again from a
        `snapshot`). ChecksumMismatch when the slot's valid chunks no longer match their
        sums (changed behind our back): nothing to commit.

        Why this is exact: every change of the slot's bytes counts in `changes` under the
        lock, and the count is read again under the lock after the write and the hashes;
        an unchanged count means no change happened in between, so the hashed bytes are the
        written ones. Each valid chunk is hashed once; a page storing one chunk (a 4 KiB
        write to a new page) takes that hash as its stored checksum too.
        """
        base = self._base(slot)
        c = self.chunk
        view = self.view
        stored = int(self.stored[slot])
        valid = int(self.valid[slot])
        if valid == self.full_mask:
            ok = self.verify(slot)
            checksum = _h(view[base:base + self.page_size]) if stored == self.full_mask else None
        else:
            one = stored.bit_length() - 1 if stored and not stored & (stored - 1) else -1
            ok, kept = self._check_valid_chunks(slot, one)
            checksum = kept if kept >= 0 else None
        if checksum is None:
            digest = xxhash.xxh3_64()
            for a, b in chunk_runs(stored, self.chunks_per_page):
                digest.update(view[base + a * c:base + b * c])
            checksum = digest.intdigest()
        with self.lock:
            if int(self.changes[slot]) != begun:
                return None
        if not ok:
            raise ChecksumMismatch(f"memory copy in slot {slot} fails its checksum")
        return checksum

    def snapshot(self, slot: int) -> tuple[bytes, int]:
        """A consistent, verified copy of the whole page and its stored mask, taken under the
        lock (write-back of a page that changed while it was written from the mapping: with
        the copy it goes home in the same write-back, however often it is written)."""
        base = self._base(slot)
        with self.lock:
            data = self.view[base:base + self.page_size].tobytes()
            stored = int(self.stored[slot])
            ok = self.verify_valid(slot)
        if not ok:
            raise ChecksumMismatch(f"memory copy in slot {slot} fails its checksum")
        return data, stored

    def stored_bytes(self, slot: int) -> int:
        """Bytes a write-back of the slot writes (its stored chunks)."""
        return int(self.stored[slot]).bit_count() * self.chunk

    def copy_from(self, slot: int, other: "MemoryArena", other_slot: int) -> None:
        """Move a copy between memory tiers with its masks."""
        base = self._base(slot)
        with self.lock:
            self.changes[slot] += 1
            self.view[base:base + self.page_size] = other.page_view(other_slot)
            self.sums[slot] = other.sums[other_slot]
            if self.lines is not None:
                per = self.chunks_per_page
                self.lines.forget(slot * per, (slot + 1) * per)
            self.valid[slot] = other.valid[other_slot]
            self.stored[slot] = other.stored[other_slot]

    def page_view(self, slot: int) -> memoryview:
        base = self._base(slot)
        return self.view[base:base + self.page_size]

    def drop_contents(self, slot: int) -> None:
        """Give a slot's memory back to the system (tmpfs: punch a hole)."""
        if self.fd >= 0:
            with self.lock:
                self.changes[slot] += 1
                self.populated[slot] = False
                _punch_hole(self.fd, self._base(slot), self.page_size)

    def close(self) -> None:
        self.sums = np.zeros((0, self.chunks_per_page), dtype=np.uint64)
        self.flat_sums = self.sums.reshape(-1)
        try:
            self.bytes = np.zeros(0, dtype=np.uint8)
            self.line_halves = np.zeros((0, _LINE_HALVES), dtype=np.uint32)
            self.view.release()
            self._mm.close()
        except (BufferError, ValueError):
            log.debug("arena mapping still referenced at close; left to the garbage collector")
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


_MADV_POPULATE_WRITE = 23  # Linux 5.14; not in Python's mmap module before 3.13
_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
_libc = None


def _punch_hole(fd: int, offset: int, length: int) -> None:
    global _libc
    import ctypes
    import ctypes.util

    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    _libc.fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, ctypes.c_long(offset), ctypes.c_long(length))
