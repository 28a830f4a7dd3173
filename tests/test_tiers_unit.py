"""Page store and tier specs without FUSE: parsing, placement, recovery, moves."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from nffs.encoding.init import implicit_values
from nffs.encoding.layout import FieldConfig
from nffs.tiers.fielddir import FieldError, init_field, open_field
from nffs.tiers.spec import TierSpecError, check_tier_set, parse_duration, parse_size, parse_tier_spec
from nffs.tiers.store import add_accesses


def test_sizes_and_durations() -> None:
    assert parse_size("4096") == 4096
    assert parse_size("64K") == 65536
    assert parse_size("2M") == 2 << 20
    assert parse_size("1.5G") == 3 << 29
    assert parse_size("1P") == 1 << 50
    for bad in ("", "12Q", "-1K", "K", "0"):
        with pytest.raises(TierSpecError):
            parse_size(bad)
    assert parse_duration("5ms") == pytest.approx(0.005)
    assert parse_duration("200us") == pytest.approx(0.0002)
    assert parse_duration("1s") == 1.0
    with pytest.raises(TierSpecError):
        parse_duration("soon")


def test_tier_spec_parsing() -> None:
    s = parse_tier_spec("fast=/dev/shm/x,kind=dram,capacity=2M")
    assert (s.name, s.path, s.kind, s.capacity, s.volatile) == ("fast", "/dev/shm/x", "dram", "2M", True)
    s = parse_tier_spec("c=/mnt/c,numa=1,latency=300ns")
    assert s.kind == "cxl" and s.numa == 1 and s.latency == pytest.approx(3e-7)
    s = parse_tier_spec("h=/srv/h,kind=hdd,capacity=50%")
    assert not s.volatile and s.capacity == "50%"
    assert parse_tier_spec(str(s)) == s  # round-trips through its text form
    with pytest.raises(TierSpecError):
        check_tier_set([parse_tier_spec("a=/a,kind=dram")])
    with pytest.raises(TierSpecError):
        check_tier_set([parse_tier_spec("a=/a,kind=nvme"), parse_tier_spec("a=/b,kind=hdd")])


def make_field(tmp_path: Path, memory: str = "64K") -> Path:
    field = tmp_path / "f"
    init_field(str(field), FieldConfig(levels=4, log2_table_size=12, page_size=4096, seed=3),
               [parse_tier_spec(f"d={tmp_path}/d,kind=dram,capacity={memory}"), parse_tier_spec(f"n={tmp_path}/n,kind=nvme")])
    return field


async def test_store_roundtrip_implicit_init_and_recovery(tmp_path: Path) -> None:
    field = make_field(tmp_path)
    opened = open_field(str(field))
    store, layout = opened.store, opened.layout
    expect = implicit_values(3, 0, layout.n_params, "uniform", 1e-4, np.float32).tobytes()
    assert await store.read(0, layout.params_bytes) == expect
    assert await store.read(5, 7) == expect[5:12]
    data = np.random.default_rng(0).integers(0, 256, layout.params_bytes, dtype=np.uint8).tobytes()
    await store.write(0, data[:50000])
    await store.sync()
    await store.write(50000, data[50000:])  # not synced: lost with the memory tier
    assert await store.read(0, layout.params_bytes) == data
    opened.close()
    shutil.rmtree(tmp_path / "d")
    opened = open_field(str(field))
    got = await opened.store.read(0, layout.params_bytes)
    assert got[:49152] == data[:49152]  # every page fully written before the sync survives
    opened.close()


async def test_gather_rows_equals_a_plain_take(tmp_path: Path) -> None:
    field = make_field(tmp_path, memory="1M")
    opened = open_field(str(field))
    store, layout = opened.store, opened.layout
    params = np.random.default_rng(1).uniform(-1, 1, layout.n_params).astype(np.float32)
    await store.write(0, params.tobytes())
    entries = np.random.default_rng(2).integers(0, layout.total_entries, size=(4, 8, 100)).astype(np.uint64)
    rows = await store.gather_rows(entries)
    assert np.array_equal(rows, params.reshape(-1, 2)[entries.astype(np.int64)])
    # a write after the table is resident shows in the next gather
    await store.write(int(entries[0, 0, 0]) * 8, np.array([7.0, 8.0], np.float32).tobytes())
    rows = await store.gather_rows(entries)
    assert rows[0, 0, 0].tolist() == [7.0, 8.0]
    opened.close()


async def test_gather_over_homed_resident_and_never_written_pages(tmp_path: Path) -> None:
    """The general gather (memory tier smaller than the field, not direct-mapped) over pages
    of every kind at once: homed but not in memory, dirty in memory, and never written
    (those take their elements from the init formula without a page of init). The oracle
    is the whole of params read back, and the init formula itself."""
    field = make_field(tmp_path, memory="16K")  # 4 slots of 4 KiB: not direct-mapped
    opened = open_field(str(field))
    store, layout = opened.store, opened.layout
    ps = layout.page_size
    n_pages = layout.params_bytes // ps
    rng = np.random.default_rng(4)
    homed = [1, 5, 9]
    for p in homed:
        await store.write(p * ps, rng.integers(0, 256, ps, dtype=np.uint8).tobytes())
    await store.sync()
    opened.close()
    opened = open_field(str(field))  # memory copies are not trusted across a restart: homed only
    store = opened.store
    try:
        await store.write(3 * ps + 64, np.array([1.5, -2.5], np.float32).tobytes())  # dirty, no home yet
        assert store.table.mem(3) is not None and store.table.home(3) is None
        # the prefetcher's cheap test, page by page and for many pages at once: in memory
        # (3) or never written (0, 2, 7, last) is cheap; homed and out of memory (1, 5, 9) is not
        port = store.port
        some = np.array([0, 1, 2, 3, 5, 7, 9, n_pages - 1], dtype=np.int64)
        assert port.cheap_mask(some).tolist() == [port.is_cheap(int(p)) for p in some.tolist()] == [
            True, False, True, True, False, True, False, True]
        everything = np.frombuffer(bytes(await store.read(0, layout.params_bytes)), dtype=np.float32)
        f = layout.features
        pages = [1, 3, 5, 9, 2, 7, n_pages - 1]  # homed, dirty, homed, homed, never written x3
        entries = np.array([p * ps // (4 * f) + k for p in pages for k in (0, 7, 100, 511)], dtype=np.int64)
        entries = entries[entries < layout.total_entries].reshape(1, 1, -1).astype(np.uint64)
        rows = await store.gather_rows(entries)
        want = everything.reshape(-1, f)[entries.astype(np.int64)]
        assert np.array_equal(rows, want)
        never = implicit_values(3, 2 * ps // 4, ps // 4, "uniform", 1e-4, np.float32)
        assert np.array_equal(rows[0, 0, 16:20].reshape(-1)[:2], never[:2])  # page 2, entry 0
    finally:
        opened.close()


async def test_move_home_and_lock(tmp_path: Path) -> None:
    field = tmp_path / "f"
    init_field(str(field), FieldConfig(levels=4, log2_table_size=12, page_size=4096),
               [parse_tier_spec(f"n={tmp_path}/n,kind=nvme"), parse_tier_spec(f"h={tmp_path}/h,kind=hdd")])
    opened = open_field(str(field))
    with pytest.raises(FieldError):
        open_field(str(field))  # one daemon per field
    store = opened.store
    await store.write(0, b"\x01" * 8192)
    await store.sync()
    hdd = store.durable_tiers[1]
    assert await store.move_home(0, hdd)
    await store.sync()
    assert store.table.home(0).tier == hdd.id and store.table.home(1).tier != hdd.id
    assert [p.name for p in (tmp_path / "h").glob("slab-*")] == ["slab-000000"]
    assert len(list((tmp_path / "n").glob("slab-*"))) == 1
    assert await store.read(0, 8192) == b"\x01" * 8192
    opened.close()


def test_cpu_work_runs_niced_and_the_thread_gets_its_priority_back() -> None:
    """Heavy worker jobs run a few nice levels lower (a FUSE request must not wait for a core
    behind a 1 Mi-point query), and the worker thread is restored afterwards when allowed."""
    import threading

    from nffs.workers import run_niced

    seen: list[int] = []

    def job() -> str:
        seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        return "done"

    result: list[object] = []

    def worker() -> None:
        tid = threading.get_native_id()
        before = os.getpriority(os.PRIO_PROCESS, tid)
        result.append(run_niced(5, job))
        result.append(os.getpriority(os.PRIO_PROCESS, tid) - before)
        result.append(before)

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert result[0] == "done"
    assert seen == [max(5, result[2])]  # type: ignore[call-overload]
    if os.geteuid() == 0:
        assert result[1] == 0  # restored (CAP_SYS_NICE)
    assert run_niced(0, lambda: 7) == 7


def test_a_niced_job_that_fails_runs_once() -> None:
    """An OSError raised by the job itself is the job's error: it is not taken for a failed
    priority change and the job is not run a second time."""
    from nffs.workers import run_niced

    calls: list[int] = []

    def failing() -> None:
        calls.append(1)
        raise OSError(5, "the job's own I/O error")

    import threading

    results: list[list[int]] = []

    def worker(nice: int) -> None:
        # already at that level (a reused worker thread): no priority change at all
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 5)
        calls.clear()
        try:
            run_niced(nice, failing)
        except OSError:
            results.append(list(calls))

    for nice in (0, 5, 19):
        t = threading.Thread(target=worker, args=(nice,))
        t.start()
        t.join()
    assert results == [[1], [1], [1]]


@pytest.mark.parametrize("n_slots, n_accesses", [(1000, 5000), (1 << 16, 100), (7, 0)])
def test_accesses_add_one_heat_per_access_repeats_included(n_slots: int, n_accesses: int) -> None:
    rng = np.random.default_rng(n_slots)
    heat = rng.random(n_slots, dtype=np.float32) * 4
    slots = rng.integers(0, n_slots, n_accesses)
    slots[: n_accesses // 2] = 3  # many repeats of one slot
    want = heat.astype(np.float64) + np.bincount(slots, minlength=n_slots)
    add_accesses(heat, slots)
    assert heat.dtype == np.float32
    assert np.allclose(heat, want, rtol=1e-6)


async def test_a_prefetch_joined_by_a_demand_stops_waiting_for_its_thread_turn() -> None:
    """Prefetch reads take turns in `prefetch_threads` worker threads, first come first
    served. One that a demand read joins while it waits for its turn goes at once (the
    demand must not queue behind speculative reads); the others keep their order."""
    import threading

    import trio

    from nffs.tiers.config import StoreConfig
    from nffs.tiers.port import Priority
    from nffs.tiers.scheduler import IOScheduler

    io = IOScheduler(StoreConfig(prefetch_threads=1))
    release_first = threading.Event()
    ran: list[str] = []
    joined = {"second": False, "third": False}

    def work(name: str, block: bool = False) -> str:
        ran.append(name)
        if block:
            release_first.wait(10)
        return name

    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: io.run(Priority.PREFETCH, work, "first", True))
        await trio.sleep(0.05)  # the first holds the only turn, blocked in its thread
        for name in ("second", "third"):
            nursery.start_soon(lambda n=name: io.run(Priority.PREFETCH, work, n, urgent=lambda n=n: joined[n]))
        await trio.sleep(0.05)
        assert ran == ["first"]  # both wait for the turn
        joined["third"] = True
        io.demand_joined()
        with trio.fail_after(5):
            while "third" not in ran:
                await trio.sleep(0.01)
        assert ran == ["first", "third"]  # the joined one went past the turn; the second still waits
        release_first.set()
    assert ran == ["first", "third", "second"]
