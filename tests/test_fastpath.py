"""The small-batch fast path (issue 7 item 6, SPEC 8 "single point") and the query statistics.

`corner_entries_small` must give bit-for-bit the results of `corner_entries` (the
level loop, itself checked against the scalar tiny-cuda-nn oracle in
test_encoding.py) for every layout and every finite point: random layouts of
D = 1..7, narrow and wide tables, dense and hashed levels, linear and smoothstep,
and points at 0, 1, on and a hair off cell boundaries, tiny, negative and huge.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import AsyncIterator

import numpy as np
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nffs.concepts import ConceptCatalog
from nffs.encoding import hashgrid
from nffs.encoding.hashgrid import array_gather, corner_entries, corner_entries_small, interpolate
from nffs.encoding.layout import FieldConfig, FieldLayout
from nffs.errors import InvalidInput
from nffs.field import Field
from nffs.fs import inodes as ino
from nffs.fs.latency import BOUNDS_S, MEMORY_READ_SAMPLE, LatencyHistogram, QueryStats
from nffs.fs.ops import FieldOperations
from nffs.tiers.fielddir import init_field, open_field
from nffs.tiers.spec import parse_tier_spec
from nffs.ui.view import extract, parse_histogram


def _assert_same(layout: FieldLayout, points: np.ndarray) -> None:
    want_e, want_w = corner_entries(layout, points)
    got_e, got_w = corner_entries_small(layout, points)
    assert got_e.dtype == want_e.dtype == np.uint64 and got_w.dtype == want_w.dtype == np.float32
    assert got_e.shape == want_e.shape and got_w.shape == want_w.shape
    assert np.array_equal(got_e, want_e)
    assert np.array_equal(got_w.view(np.uint32), want_w.view(np.uint32))  # bits, not values: -0.0 != 0.0


@st.composite
def layouts(draw: st.DrawFn) -> FieldLayout:
    dims = draw(st.integers(1, 7))
    # keep L * 2^D moderate so a case stays fast
    levels = draw(st.integers(1, max(1, min(24, 512 >> dims))))
    log2_t = draw(st.sampled_from([4, 5, 8, 12, 19, 24, 31, 32, 40, 48]))
    cfg = FieldConfig(
        dims=dims,
        levels=levels,
        features=draw(st.sampled_from([1, 2, 3, 4, 8, 64])),
        log2_table_size=log2_t,
        base_resolution=draw(st.integers(2, 64)),
        per_level_scale=draw(st.floats(1.01, 4.0)),
        interpolation=draw(st.sampled_from(["linear", "smoothstep"])),
        dtype=draw(st.sampled_from(["float32", "float16"])),
    )
    return FieldLayout(cfg)


@st.composite
def point_batches(draw: st.DrawFn, layout: FieldLayout) -> np.ndarray:
    n = draw(st.sampled_from([1, 1, 2, 3, 7, 64]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    pts = rng.random((n, layout.dims), dtype=np.float32)
    special = draw(st.sampled_from(["plain", "edges", "boundaries", "tiny", "wild"]))
    if special == "edges":
        pts[rng.random(pts.shape) < 0.4] = 0.0
        pts[rng.random(pts.shape) < 0.4] = 1.0
    elif special == "boundaries":
        # pos == k exactly (give or take rounding), and one float32 ulp either side
        lv = layout.levels[draw(st.integers(0, layout.n_levels - 1))]
        scale = np.float32(lv.scale)
        k = rng.integers(0, max(2, int(scale) + 2), size=pts.shape)
        b = ((k - 0.5) / scale).astype(np.float32)
        b = np.nextafter(b, rng.choice([-np.inf, 0.0, np.inf], size=pts.shape).astype(np.float32))
        pts = np.where(rng.random(pts.shape) < 0.7, b, pts).astype(np.float32)
    elif special == "tiny":
        tiny = np.array([1e-45, 1e-38, 1e-20, 2.0**-10, 2.0**-7, -1e-30, -0.0], dtype=np.float32)
        pts = np.where(rng.random(pts.shape) < 0.5, rng.choice(tiny, size=pts.shape), pts).astype(np.float32)
    elif special == "wild":
        wild = np.array([-1.0, -0.25, 1.5, 17.0, 1e6, -3e7, 2.0**40, 1e20, -1e30], dtype=np.float32)
        pts = np.where(rng.random(pts.shape) < 0.5, rng.choice(wild, size=pts.shape), pts).astype(np.float32)
    return pts


@st.composite
def cases(draw: st.DrawFn) -> tuple[FieldLayout, np.ndarray]:
    layout = draw(layouts())
    return layout, draw(point_batches(layout))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_small_path_is_bit_identical_to_the_level_loop(case: tuple[FieldLayout, np.ndarray]) -> None:
    layout, points = case
    with np.errstate(all="ignore"):  # huge coordinates overflow float32 positions in both paths alike
        _assert_same(layout, points)


@pytest.mark.parametrize("cfg", [
    FieldConfig(),
    FieldConfig(dims=2, levels=8, log2_table_size=14, interpolation="smoothstep"),
    FieldConfig(dims=7, levels=4, log2_table_size=40, base_resolution=3, per_level_scale=1.3),
    FieldConfig(dims=1, levels=64, log2_table_size=48, base_resolution=2, per_level_scale=1.5),
    FieldConfig(dims=3, levels=20, log2_table_size=24, base_resolution=5, per_level_scale=1.7),  # not pow2 dense sizes
    FieldConfig(dims=4, levels=6, log2_table_size=4),  # every level hashed
])
@pytest.mark.parametrize("n", [1, 2, 64, 256, 257])
def test_small_path_fixed_layouts(cfg: FieldConfig, n: int) -> None:
    layout = FieldLayout(cfg)
    rng = np.random.default_rng(n)
    pts = rng.random((n, layout.dims), dtype=np.float32)
    pts[0] = 0.0
    if n > 1:
        pts[1] = 1.0
    _assert_same(layout, pts)


def test_small_path_encodes_like_the_reference_pipeline() -> None:
    """Corners -> gather -> interpolate with the small path equals encode() for float32 and float16 params."""
    for dtype in ("float32", "float16"):
        layout = FieldLayout(FieldConfig(dims=3, levels=6, features=3, log2_table_size=12, dtype=dtype))
        params = np.random.default_rng(0).uniform(-1, 1, layout.n_params).astype(layout.dtype)
        gather = array_gather(params, layout.features)
        pts = np.random.default_rng(1).random((5, 3), dtype=np.float32)
        for chunk in (pts[:1], pts):
            e, w = corner_entries_small(layout, chunk)
            got = interpolate(layout, w, gather(e))
            assert np.array_equal(got, hashgrid.encode(layout, chunk, gather))


def test_small_path_rejects_what_the_level_loop_rejects() -> None:
    layout = FieldLayout(FieldConfig())
    for bad in (np.array([[np.nan, 0, 0]], np.float32), np.array([[np.inf, 0, 0]], np.float32), np.zeros((1, 2), np.float32)):
        with pytest.raises(ValueError):
            corner_entries_small(layout, bad)
    e, w = corner_entries_small(layout, np.zeros((0, 3), np.float32))
    assert e.shape == w.shape == (16, 8, 0)


def test_small_path_is_fast_for_one_point() -> None:
    """One point of the default field: far below the level loop (CPU time, best of several runs)."""
    import time

    layout = FieldLayout(FieldConfig())
    pt = np.random.default_rng(0).random((1, 3), dtype=np.float32)

    def cost(fn, n=200) -> float:
        best = float("inf")
        for _ in range(5):
            t = time.process_time()
            for _ in range(n):
                fn(layout, pt)
            best = min(best, (time.process_time() - t) / n)
        return best

    assert cost(corner_entries_small) * 4 < cost(corner_entries)


# ---------------------------------------------------------------------- through the Field and the query node
DIMS, LEVELS, FEATS = 3, 6, 2


@pytest.fixture
async def ops(tmp_path: Path) -> AsyncIterator[FieldOperations]:
    field_dir = tmp_path / "field"
    tiers = [parse_tier_spec(f"dram={tmp_path}/dram,kind=dram,capacity=8M"), parse_tier_spec(f"nvme={tmp_path}/nvme,kind=nvme")]
    init_field(str(field_dir), FieldConfig(dims=DIMS, levels=LEVELS, log2_table_size=12, features=FEATS), tiers)
    opened = open_field(str(field_dir))
    catalog = ConceptCatalog.open(opened.field_dir)
    fld = Field(opened.layout, opened.store, opened.field_dir)
    o = FieldOperations(fld, catalog, max_batch=1000, notify_store=lambda *a: None, readdir_reply=lambda *a: True)
    try:
        yield o
    finally:
        catalog.close()
        opened.close()


async def _open(ops: FieldOperations, name: bytes, flags: int) -> int:
    attr = await ops.lookup(ino.ROOT, name)
    return (await ops.open(attr.st_ino, flags, None)).fh


async def _query(ops: FieldOperations, fh: int, pts: np.ndarray) -> np.ndarray:
    await ops.write(fh, 0, pts.astype("<f4").tobytes())
    width = LEVELS * FEATS
    raw = await ops.read(fh, 0, len(pts) * width * 4)
    assert isinstance(raw, bytes)
    return np.frombuffer(raw, dtype="<f4").reshape(len(pts), width)


async def test_field_small_batches_equal_the_threaded_path(ops: FieldOperations) -> None:
    fld = ops.field
    raw = np.random.default_rng(3).uniform(-1, 1, fld.layout.n_params).astype("<f4").tobytes()
    await fld.store.write(0, raw)
    params = np.frombuffer(raw, dtype="<f4")
    pts = np.random.default_rng(4).random((200, DIMS), dtype=np.float32)
    pts[0] = 0.0
    pts[1] = 1.0
    big = await fld.infer(pts)  # > INLINE_POINTS: the level loop in a worker thread
    for n in (1, 2, 64):
        for i in range(0, 64, n):
            assert np.array_equal(await fld.infer(pts[i:i + n]), big[i:i + n])
    want = hashgrid.encode(fld.layout, pts[:1], array_gather(params, FEATS))
    assert np.array_equal(big[:1], want)


async def test_query_stats_count_requests_points_errors_and_latency(ops: FieldOperations) -> None:
    fh = await _open(ops, b"query", os.O_RDWR)
    rng = np.random.default_rng(0)
    for n in (1, 1, 5, 100):
        pts = rng.random((n, DIMS), dtype=np.float32)
        got = await _query(ops, fh, pts)
        assert np.array_equal(got, await ops.field.infer(pts))
    await ops.write(fh, 0, b"\x00" * 5)  # not a multiple of D*4
    with pytest.raises(Exception):
        await ops.read(fh, 0, 4096)
    await ops.write(fh, 0, np.array([[np.nan, 0, 0]], "<f4").tobytes())
    with pytest.raises(Exception):
        await ops.read(fh, 0, 4096)
    got = await _query(ops, fh, rng.random((1, DIMS), dtype=np.float32))  # the handle stays usable
    q = ops.stats()["queries"]
    assert (q["requests"], q["points"], q["errors"]) == (7, 108, 2)
    hist = q["latency_seconds"]
    assert hist["count"] == 5 == sum(hist["counts"]) and hist["sum"] > 0
    assert hist["le"] == list(BOUNDS_S) and len(hist["counts"]) == len(BOUNDS_S) + 1
    # the status tools read it as documented (docs/operations.md)
    view = extract(ops.stats())
    assert view.queries.requests == 7 and view.queries.points == 108 and view.queries.errors == 2
    assert view.queries.p50_s is not None and view.queries.p99_s is not None


async def test_sampled_latency_of_memory_reads_still_counts_every_read(ops: FieldOperations) -> None:
    """Reads served from memory take the synchronous path (`read_now`) and are timed one in
    MEMORY_READ_SAMPLE; the histogram still counts each read exactly once, with latencies,
    by the time `stats` shows it. A zero-size read at the end of the file is empty."""
    fh = await _open(ops, b"params", os.O_RDWR)
    data = os.urandom(8 * 4096)
    assert await ops.write(fh, 0, data) == len(data)  # in memory from now on
    before = ops.stats()["read_latency_seconds"]["count"]
    n = 3 * MEMORY_READ_SAMPLE + 5
    for i in range(n):
        off = (i * 4096 + 100) % (len(data) - 200)
        assert bytes(await ops.read(fh, off, 200)) == data[off:off + 200]
    assert ops.ctx.read_latency.untimed > 0  # the untimed fast path served some of them
    hist = ops.stats()["read_latency_seconds"]
    assert hist["count"] - before == n and sum(hist["counts"]) == hist["count"] and hist["sum"] > 0
    assert ops.stats()["read_latency_seconds"]["count"] == hist["count"]  # counted once
    size = (await ops.getattr(ino.PARAMS, None)).st_size
    assert bytes(await ops.read(fh, size, 0)) == b""


async def test_read_latency_histogram_counts_params_reads(ops: FieldOperations) -> None:
    fh = await _open(ops, b"params", os.O_RDONLY)
    for off in range(0, 16 * 4096, 4096):
        assert len(await ops.read(fh, off, 4096)) == 4096
    hist = ops.stats()["read_latency_seconds"]
    assert hist["count"] == 16 == sum(hist["counts"])
    parsed = parse_histogram(hist)
    assert parsed is not None and parsed.count == 16 and parsed.quantile(0.99) is not None
    metrics = (await _read_doc(ops, b"metrics")).decode()
    assert "nffs_read_latency_seconds_count 16" in metrics
    assert "nffs_query_latency_seconds_bucket" in metrics


async def _read_doc(ops: FieldOperations, name: bytes) -> bytes:
    fh = await _open(ops, name, os.O_RDONLY)
    out = b""
    while True:
        part = await ops.read(fh, len(out), 1 << 16)
        if not part:
            return out
        out += part


def test_histogram_buckets_are_log_spaced_and_inclusive() -> None:
    assert list(BOUNDS_S) == sorted(BOUNDS_S) and BOUNDS_S[0] == 1e-6 and BOUNDS_S[-1] == 10.0
    ratios = [b / a for a, b in zip(BOUNDS_S, BOUNDS_S[1:])]
    assert all(2.0 <= r <= 2.5 + 1e-9 for r in ratios)
    h = LatencyHistogram()
    for ns in (0, 1000, 1001, 2_000_000, 10**12):
        h.observe(ns)
    d = h.as_dict()
    assert d["counts"][0] == 2  # 0 and exactly 1 µs are <= 1e-6
    assert d["counts"][1] == 1  # 1.001 µs
    assert d["counts"][BOUNDS_S.index(2e-3)] == 1
    assert d["counts"][-1] == 1  # +Inf
    assert d["count"] == 5 and d["sum"] == pytest.approx((1000 + 1001 + 2_000_000 + 10**12) / 1e9)
    s = QueryStats()
    s.answered(3, 5000)
    s.failed()
    assert s.as_dict()["requests"] == 2 and s.as_dict()["errors"] == 1 and s.as_dict()["points"] == 3


async def test_big_answers_are_never_copied_whole(ops: FieldOperations, monkeypatch: pytest.MonkeyPatch) -> None:
    """A big request is parsed in a worker thread and its answer kept as the array: no tobytes() of it all."""
    from nffs.fs.nodes import query as query_module

    hops: list[str] = []
    real = trio.to_thread.run_sync

    async def counting(fn, *args, **kwargs):
        hops.append(getattr(fn, "__name__", "?"))
        return await real(fn, *args, **kwargs)

    monkeypatch.setattr(query_module.trio.to_thread, "run_sync", counting)
    fh = await _open(ops, b"query", os.O_RDWR)
    monkeypatch.setattr(query_module, "PARSE_INLINE_POINTS", 100)  # below --max-batch of this fixture
    n = 500  # past what is parsed on the trio thread
    pts = np.random.default_rng(9).random((n, DIMS), dtype=np.float32)
    await ops.write(fh, 0, pts.tobytes())
    first = await ops.read(fh, 0, 4096)
    assert "parse" in hops
    handle = ops.handles[fh]
    assert isinstance(handle.answer, memoryview) and handle.answer.nbytes == n * LEVELS * FEATS * 4
    rest = await ops.read(fh, 4096, 1 << 20)
    want = np.asarray(await ops.field.infer(pts), dtype="<f4").tobytes()
    assert first + rest == want
    with pytest.raises(InvalidInput):
        ops.query.parse(b"\x00" * 5)
