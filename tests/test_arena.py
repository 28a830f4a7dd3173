"""The memory arena's checks of small gathers (line sums), against a model of its bytes.

A small gather (a single-point query) checks the 128-byte lines its rows are in against
line sums learned from verified chunks, instead of hashing each chunk whole. What users
rely on: a row whose bytes changed behind the arena's back is never taken as good, a
legitimate write never looks like corruption, and a line sum alone never declares a copy
bad (the chunk's own checksum decides).
"""
from __future__ import annotations

import contextlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nffs.errors import ChecksumMismatch
from nffs.tiers.arena import LINE_BYTES, MemoryArena, mask_dtype

PAGE = 16384
CHUNK = 4096
SLOTS = 4
ROW = 8


def make_arena(budget: int) -> MemoryArena:
    arena = MemoryArena(None, SLOTS, PAGE, CHUNK)
    rng = np.random.default_rng(1)
    for slot in range(SLOTS):
        arena.install(slot, rng.integers(0, 256, PAGE, dtype=np.uint8).tobytes(), stored=arena.full_mask)
    arena.enable_line_sums(budget)
    return arena


rows = st.lists(st.integers(0, SLOTS * PAGE // ROW - 1), min_size=1, max_size=40)
ops = st.lists(st.one_of(
    st.tuples(st.just("check"), rows),
    st.tuples(st.just("write"), st.integers(0, SLOTS * PAGE // ROW - 1), st.integers(0, 255)),
    st.tuples(st.just("corrupt"), st.integers(0, SLOTS * PAGE - 1), st.integers(1, 255)),
    st.tuples(st.just("repair"),),
), min_size=1, max_size=30)


@settings(max_examples=150, deadline=None)
@given(program=ops, budget=st.sampled_from([CHUNK // LINE_BYTES * 8, 4096, 1 << 20]))
def test_row_checks_find_every_changed_row_and_never_blame_a_write(program, budget: int) -> None:
    """Small budgets make chunks share records (direct-mapped table): results must not change."""
    arena = make_arena(budget)
    corrupted: dict[int, int] = {}  # byte offset -> its good value (changed behind the arena's back)
    try:
        for op in program:
            if op[0] == "write":  # a legitimate write of one row, through the arena
                entry, value = op[1], op[2]
                slot, off = divmod(entry * ROW, PAGE)
                if any(slot * PAGE + (off // CHUNK) * CHUNK <= b < slot * PAGE + (off // CHUNK + 1) * CHUNK
                       for b in corrupted):
                    continue  # the store never patches a chunk that fails its checksum
                arena.write(slot, off, memoryview(bytes([value]) * ROW))
            elif op[0] == "corrupt":
                at, xor = op[1], op[2]
                corrupted.setdefault(at, int(arena.bytes[at]))
                arena.bytes[at] ^= xor
                if int(arena.bytes[at]) == corrupted[at]:
                    del corrupted[at]
            elif op[0] == "repair":
                for at, good in corrupted.items():
                    arena.bytes[at] = good
                corrupted.clear()
            else:
                offsets = np.array(op[1], dtype=np.int64) * ROW
                bad = set(arena.bad_slots_of_rows(offsets, ROW))
                read_lines = {int(o) // LINE_BYTES for o in offsets}
                read_chunks = {int(o) // CHUNK for o in offsets}
                must = {at // PAGE for at in corrupted if at // LINE_BYTES in read_lines}
                may = {at // PAGE for at in corrupted if at // CHUNK in read_chunks}
                assert must <= bad, "a row whose line changed behind the arena's back passed"
                assert bad <= may, "a copy was blamed without a changed byte in the chunks read"
    finally:
        arena.close()


def test_line_records_survive_aliasing() -> None:
    arena = make_arena(CHUNK // LINE_BYTES * 8)  # one chunk's records: every chunk shares them
    try:
        every_chunk = np.arange(SLOTS * PAGE // CHUNK, dtype=np.int64) * CHUNK
        assert arena.bad_slots_of_rows(every_chunk, ROW) == []
        assert arena.bad_slots_of_rows(every_chunk[::-1].copy(), ROW) == []
        arena.bytes[PAGE + 5] ^= 1  # slot 1, first row's line
        assert arena.bad_slots_of_rows(every_chunk, ROW) == [1]
        arena.bytes[PAGE + 5] ^= 1
    finally:
        arena.close()


def test_a_write_makes_the_old_line_sums_worthless() -> None:
    """Written bytes put back to their old value behind the arena's back are a corruption:
    the line's record of the old bytes must be gone with the write."""
    arena = make_arena(1 << 20)
    try:
        row = np.array([PAGE + 64], dtype=np.int64)
        assert arena.bad_slots_of_rows(row, ROW) == []  # learned
        old = arena.bytes[PAGE + 64:PAGE + 64 + ROW].copy()
        old_line = arena.bytes[PAGE:PAGE + LINE_BYTES].copy()
        arena.write(1, 64, memoryview(b"new rows"))
        arena.bytes[PAGE + 64:PAGE + 64 + ROW] = old
        assert arena.bad_slots_of_rows(row, ROW) == [1]
        arena.write(1, 64, memoryview(old.tobytes()))  # the same through the arena: fine
        assert arena.bad_slots_of_rows(row, ROW) == []
        assert arena.learn_lines_of_slots(1, 1) == PAGE // CHUNK - 1  # all but the chunk checked above
        arena.install(1, arena.bytes[PAGE:2 * PAGE].tobytes(), stored=arena.full_mask)  # a new copy: learned anew
        assert arena.learn_lines_of_slots(1, 1) == PAGE // CHUNK
        other = MemoryArena(None, 1, PAGE, CHUNK)  # a copy moved in from another tier...
        try:
            other.install(0, bytes(PAGE), stored=other.full_mask)
            arena.copy_from(1, other, 0)
        finally:
            other.close()
        arena.bytes[PAGE:PAGE + LINE_BYTES] = old_line  # ...and the old line put back behind its back
        assert arena.bad_slots_of_rows(row, ROW) == [1]
    finally:
        arena.close()


@pytest.mark.parametrize("flips", [
    [(7, 0x80), (15, 0x80)],  # the sign bits of two words: cancelled out in a 64-bit linear hash
    [(3, 0x80), (11, 0x80), (19, 0x80), (27, 0x80)],  # top bits of four halves
    [(0, 0xFF), (64, 0x01)],
])
def test_any_change_of_a_learned_line_is_found(flips) -> None:
    arena = make_arena(1 << 20)
    try:
        row = np.array([PAGE], dtype=np.int64)
        assert arena.bad_slots_of_rows(row, ROW) == []  # learned
        for at, xor in flips:
            arena.bytes[PAGE + at] ^= xor
        assert arena.bad_slots_of_rows(row, ROW) == [1]
    finally:
        arena.close()


def test_background_learning_covers_valid_intact_chunks_only() -> None:
    arena = make_arena(1 << 20)
    try:
        arena.install_empty(3)  # all implicit init: nothing there to learn
        arena.bytes[PAGE] ^= 0xFF  # slot 1's first chunk fails its checksum: never learned
        assert arena.learn_lines_of_slots(0, SLOTS) == 3 * PAGE // CHUNK - 1
        assert arena.learn_lines_of_slots(0, SLOTS) == 0
        assert arena.bad_slots_of_rows(np.array([PAGE], dtype=np.int64), ROW) == [1]
        arena.bytes[PAGE] ^= 0xFF
        arena.bytes[2 * PAGE + 9] ^= 0x10  # changed after its line was learned: found
        assert arena.bad_slots_of_rows(np.array([2 * PAGE + 8], dtype=np.int64), ROW) == [2]
        assert arena.bad_slots_of_rows(np.array([2 * PAGE + LINE_BYTES], dtype=np.int64), ROW) == []  # other lines pass
    finally:
        arena.close()


@settings(max_examples=100, deadline=None)
@given(writes=st.lists(st.tuples(st.integers(0, PAGE - 1), st.integers(1, 3 * CHUNK), st.integers(0, 255)), max_size=6),
       corrupt=st.one_of(st.none(), st.integers(0, PAGE - 1)), change=st.booleans())
def test_writeback_checksum_is_the_stored_checksum_of_what_was_written(writes, corrupt, change) -> None:
    """A write-back commits `finish_writeback`'s checksum for the bytes it wrote from the
    mapping: it must equal the home's checksum of those bytes (what reads and fsck check),
    refuse a slot changed behind the arena's back, and refuse one changed by a write."""
    from nffs.tiers.homes import stored_checksum

    arena = MemoryArena(None, 1, PAGE, CHUNK)
    arena.install_empty(0)
    for off, n, value in writes:
        n = min(n, PAGE - off)
        first, last = off // CHUNK, (off + n - 1) // CHUNK
        for c in {first, last}:  # the store fills partly covered chunks first (implicit init)
            if not arena.valid[0] >> np.uint64(c) & np.uint64(1):
                arena.fill(0, c, bytes(CHUNK))
        arena.write(0, off, memoryview(bytes([value]) * n))
    begun, mask, view = arena.begin_writeback(0)
    written = bytes(view)
    if corrupt is not None:
        arena.bytes[corrupt] ^= 0x5A
    if change:
        arena.write(0, 0, memoryview(b"x"))
        assert arena.finish_writeback(0, begun) is None
    elif corrupt is not None and arena.valid[0] >> np.uint64(corrupt // CHUNK) & np.uint64(1):
        with pytest.raises(ChecksumMismatch):
            arena.finish_writeback(0, begun)
    else:
        assert arena.finish_writeback(0, begun) == stored_checksum(written, mask, CHUNK, PAGE // CHUNK)


def test_every_change_of_a_slots_bytes_stops_its_writeback_commit(tmp_path) -> None:
    """install, fill, write, a move between tiers and punching the slot's memory all change
    its bytes: a write-back begun before any of them must not commit what it wrote."""
    from nffs.tiers.tierroot import TierRoot

    root = TierRoot.create(str(tmp_path / "mem"))  # a tier file: drop_contents punches a hole in it
    arena = MemoryArena(root, 2, PAGE, CHUNK)
    other = MemoryArena(None, 1, PAGE, CHUNK)
    other.install(0, bytes(range(256)) * (PAGE // 256), stored=other.full_mask)
    changes = {
        "install": lambda: arena.install(0, bytes(PAGE), stored=arena.full_mask),
        "fill": lambda: (arena.install_empty(0), arena.fill(0, 1, bytes(CHUNK))),
        "write": lambda: arena.write(0, 10, memoryview(b"x")),
        "copy_from": lambda: arena.copy_from(0, other, 0),
        "drop_contents": lambda: arena.drop_contents(0),
    }
    for name, change in changes.items():
        arena.install(0, b"\x07" * PAGE, stored=arena.full_mask)
        begun, _, _ = arena.begin_writeback(0)
        change()
        assert arena.finish_writeback(0, begun) is None, f"{name} went unnoticed by a write-back"
    arena.install(0, b"\x07" * PAGE, stored=arena.full_mask)
    begun, _, _ = arena.begin_writeback(0)
    assert arena.finish_writeback(0, begun) is not None  # and nothing else stops it
    arena.close()
    root.close()


class CountingMap:
    """An arena's mapping that counts its madvise calls (the system calls populating slots)."""

    def __init__(self, mm) -> None:
        self.mm, self.calls = mm, 0

    def madvise(self, *args):
        self.calls += 1
        return self.mm.madvise(*args)

    def __getattr__(self, name):
        return getattr(self.mm, name)


@contextlib.contextmanager
def counting_madvise(tmp_path, n_slots: int):
    """(arena, counting map): an arena of `n_slots` on a tier directory, its madvise calls counted."""
    from nffs.tiers.tierroot import TierRoot

    root = TierRoot.create(str(tmp_path / "mem"))
    arena = MemoryArena(root, n_slots, PAGE, CHUNK)
    counting = arena._mm = CountingMap(arena._mm)
    try:
        yield arena, counting
    finally:
        arena._mm = counting.mm
        arena.close()
        root.close()


def test_a_slot_is_populated_once_until_its_memory_is_given_back(tmp_path) -> None:
    """A whole-page install populates its slot with one madvise — once: a slot reused from
    the free list still has its memory (a prefetched 4 KiB page's install paid ~5 µs of
    system call for nothing), and only punching the slot's memory makes the next install
    populate it again. The bytes are right either way."""
    with counting_madvise(tmp_path, 2) as (arena, counting):
        slot = arena.alloc()
        arena.install(slot, b"\x01" * PAGE, stored=arena.full_mask)
        arena.release(slot)
        assert arena.alloc() == slot  # the free list hands it out again, memory and all
        arena.install(slot, b"\x02" * PAGE, stored=arena.full_mask)
        assert counting.calls == 1 and arena.read(slot, 0, PAGE) == b"\x02" * PAGE
        supported = bool(arena.populated[slot])  # False on kernels without MADV_POPULATE_WRITE
        arena.drop_contents(slot)
        assert not arena.populated[slot]
        arena.install(slot, b"\x03" * PAGE, stored=arena.full_mask)
        assert counting.calls == (2 if supported else 1) and arena.read(slot, 0, PAGE) == b"\x03" * PAGE


def test_slots_populated_ahead_by_a_worker_cost_their_installs_no_system_call(tmp_path) -> None:
    """The worker that reads a batch populates the slots its installs will take (fresh
    slots, or a direct-mapped arena's own slots), a run of consecutive slots per call: the
    installs on the FUSE thread then make no system call (there each cost ~110 us for a
    64 KiB page), and the bytes are right."""
    with counting_madvise(tmp_path, 8) as (arena, counting):
        assert arena.allocates_fresh()
        arena.populate_fresh(3)
        assert counting.calls == 1
        supported = bool(arena.populated[0])  # False on kernels without MADV_POPULATE_WRITE
        assert list(arena.populated) == [supported] * 3 + [False] * 5
        for i in range(3):
            slot = arena.alloc()
            arena.install(slot, bytes([i + 1]) * PAGE, stored=arena.full_mask)
        assert [arena.read(s, 0, PAGE) for s in range(3)] == [bytes([i + 1]) * PAGE for i in range(3)]
        if not supported:  # each install tried once and stopped trying: page faults, as before
            assert counting.calls == 2 and not arena.populated.any()
            return
        assert counting.calls == 1
        arena.populate_fresh(2)  # slots 3 and 4
        arena.populate_slots([7, 6, 1])  # 6-7 in one call; 1 is populated already
        assert counting.calls == 3 and list(arena.populated) == [True] * 5 + [False] + [True] * 2
        arena.alloc_at(7)
        arena.install(7, b"\x09" * PAGE, stored=arena.full_mask)
        assert counting.calls == 3 and arena.read(7, 0, PAGE) == b"\x09" * PAGE


@pytest.mark.parametrize("page_size", [4096, 65536, 1 << 20, 1 << 22])
def test_chunk_masks_take_one_bit_per_chunk_in_the_smallest_type(page_size: int) -> None:
    """Every slot in use costs its per-slot arrays in daemon memory (SPEC 8: <= 200 B per
    materialised page): a 4 KiB page's chunk masks take a byte each, not eight, and the
    masks of a page with 64 chunks still hold every chunk."""
    arena = MemoryArena(None, 4, page_size, 4096)
    n = arena.chunks_per_page
    assert arena.valid.dtype == arena.stored.dtype == mask_dtype(n)
    assert arena.valid.itemsize * 8 >= n and (arena.valid.itemsize == 1 or arena.valid.itemsize * 4 < n)
    page = np.arange(page_size, dtype=np.uint8).tobytes()
    arena.install(1, page, stored=arena.full_mask)
    assert int(arena.valid[1]) == int(arena.stored[1]) == arena.full_mask == (1 << n) - 1
    assert arena.verify(1)
    last = (n - 1) * arena.chunk  # the top chunk's bit survives the narrow type
    arena.write(2, last, memoryview(b"\x01" * arena.chunk))
    assert int(arena.valid[2]) == int(arena.stored[2]) == 1 << (n - 1)
    assert arena.verify(2, last, arena.chunk)
