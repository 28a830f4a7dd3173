"""The hash-grid encoding against tiny-cuda-nn's rules (SPEC 2.1-2.4).

The vectorised encoder is checked against `encode_reference`, a scalar
transcription of the CUDA kernel, over many layouts and awkward points.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from nffs.encoding.hashgrid import (
    _fma_round_to_f32,
    _fmaf,
    array_gather,
    concept_update,
    corner_entries,
    encode,
    encode_reference,
    entry_elements,
    parse_point,
    point_from_name,
    touched_pages,
)
from nffs.encoding.init import implicit_value_scalar, implicit_values
from nffs.encoding.layout import HASH_PRIMES, FieldConfig, FieldLayout


def make_layout(**settings_: object) -> FieldLayout:
    return FieldLayout(FieldConfig(**settings_))  # type: ignore[arg-type]


def random_params(layout: FieldLayout, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1.0, 1.0, layout.n_params).astype(np.float32)


def awkward_points(layout: FieldLayout, rng: np.random.Generator, n_random: int) -> np.ndarray:
    """Random points plus the corners of the cube and points a hair away from cell boundaries."""
    dims = layout.dims
    pts = [rng.random((n_random, dims), dtype=np.float32), np.zeros((1, dims), np.float32), np.ones((1, dims), np.float32)]
    for lv in layout.levels[:: max(1, layout.n_levels // 3)]:
        scale = np.float32(lv.scale)
        k = rng.integers(1, max(2, int(scale)), size=dims)
        boundary = ((k - 0.5) / scale).astype(np.float32).clip(0, 1)  # pos == k exactly, give or take rounding
        for direction in (-np.inf, np.inf):
            pts.append(np.nextafter(boundary, np.float32(direction)).astype(np.float32)[None])
        pts.append(boundary[None])
    return np.concatenate(pts).clip(0, 1).astype(np.float32)


def assert_matches_reference(layout: FieldLayout, points: np.ndarray, params: np.ndarray, atol: float = 1e-5) -> None:
    got = encode(layout, points, array_gather(params, layout.features))
    assert got.shape == (len(points), layout.encoding_width) and got.dtype == np.float32
    want = np.array([encode_reference(layout, p, params.item) for p in points], dtype=np.float64)
    np.testing.assert_allclose(got, want, rtol=0, atol=atol)


# --- layout facts -----------------------------------------------------------------------------


def test_tcnn_parameter_count() -> None:
    layout = make_layout(dims=3, levels=20, base_resolution=32, per_level_scale=1.5, log2_table_size=16, features=2)
    assert layout.n_params == 2_555_904


def test_default_layout_levels() -> None:
    layout = make_layout()
    assert [lv.resolution for lv in layout.levels] == [16 * 2**l for l in range(16)]
    assert [lv.dense for lv in layout.levels[:4]] == [True, True, True, False]
    assert [lv.entries for lv in layout.levels[:4]] == [16**3, 32**3, 64**3, 2**19]
    assert all(lv.entries % 8 == 0 and lv.entries <= 2**19 for lv in layout.levels)
    offsets = np.cumsum([0] + [lv.entries for lv in layout.levels])
    assert [lv.offset for lv in layout.levels] == list(offsets[:-1])
    assert layout.encoding_width == 32


def test_entries_rounded_up_to_eight() -> None:
    layout = make_layout(dims=2, levels=2, base_resolution=3, per_level_scale=1.5, log2_table_size=10)
    # scale 2 -> res 3 -> 9 entries -> 16; scale 3.5 -> res 5 -> 25 -> 32; both dense
    assert [(lv.resolution, lv.entries, lv.dense) for lv in layout.levels] == [(3, 16, True), (5, 32, True)]


# --- vectorised encoding == scalar oracle -----------------------------------------------------

CASES = [
    dict(dims=1, levels=6, features=1, log2_table_size=4),
    dict(dims=1, levels=5, features=3, per_level_scale=1.3819, interpolation="smoothstep", log2_table_size=5),
    dict(dims=2, levels=6, features=2, log2_table_size=10),
    dict(dims=2, levels=5, features=4, per_level_scale=1.3819, base_resolution=5, interpolation="smoothstep", log2_table_size=8),
    dict(dims=3, levels=8, features=2, log2_table_size=14),
    dict(dims=3, levels=6, features=1, per_level_scale=1.3819, interpolation="smoothstep", log2_table_size=12),
    dict(dims=3, levels=4, features=3, base_resolution=2, per_level_scale=3.0, log2_table_size=9),
    dict(dims=4, levels=4, features=2, base_resolution=4, log2_table_size=12),
    dict(dims=4, levels=3, features=4, base_resolution=5, per_level_scale=1.3819, interpolation="smoothstep", log2_table_size=10),
    dict(dims=3, levels=16, features=2, log2_table_size=19),  # the defaults
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
def test_encode_matches_reference(case: dict) -> None:
    layout = make_layout(**case)
    assert any(lv.dense for lv in layout.levels)
    assert not all(lv.dense for lv in layout.levels), "each case should mix dense and hashed levels"
    rng = np.random.default_rng(len(str(case)))
    points = awkward_points(layout, rng, n_random=12 if layout.n_levels * 2**layout.dims > 100 else 25)
    assert_matches_reference(layout, points, random_params(layout))


def test_encode_matches_reference_seven_dims() -> None:
    layout = make_layout(dims=7, levels=2, features=1, base_resolution=2, per_level_scale=1.7, log2_table_size=8)
    rng = np.random.default_rng(7)
    points = np.concatenate([rng.random((3, 7), dtype=np.float32), np.ones((1, 7), np.float32)])
    assert_matches_reference(layout, points, random_params(layout))


@settings(max_examples=40, deadline=None)
@given(arrays(np.float32, (3, 3), elements=st.floats(0, 1, width=32)))
def test_encode_matches_reference_hypothesis(points: np.ndarray) -> None:
    layout = make_layout(dims=3, levels=5, features=2, per_level_scale=1.3819, log2_table_size=10)
    assert_matches_reference(layout, points, random_params(layout, seed=3))


def test_points_outside_unit_cube_wrap_like_cuda() -> None:
    # Not reachable through parse_point, but `query` only rejects NaN/inf: both paths must agree.
    layout = make_layout(dims=2, levels=4, features=2, log2_table_size=8)
    points = np.array([[-0.3, 1.7], [2.5e6, -4e7], [-1e-20, 1.0000001]], dtype=np.float32)
    assert_matches_reference(layout, points, random_params(layout))


def _double_rounding_case() -> tuple[FieldLayout, int, np.float32]:
    """A level and a point x where scale*x lands a hair above a float32 midpoint above 0.5:
    rounding the float64 sum lands on the midpoint, then on the even float32 below it, while
    the single rounding of fmaf gives the float32 above. Looked for next to the midpoints
    0.5 + (2k+1) 2^-25 over several scales: a level's float32 scale comes from numpy's exp2
    and log2, whose last bit has moved between numpy releases, and about one scale in 60
    has such an x next to its first midpoints."""
    half = np.float32(0.5)
    for b in np.linspace(1.26, 2.0, 300):
        layout = make_layout(dims=1, levels=8, features=1, per_level_scale=float(b), log2_table_size=12)
        for level in range(1, 8):
            scale = np.float32(layout.levels[level].scale)
            for k in range(2):
                target = (2 * k + 1) * 2.0 ** -25
                x = np.float32(target / float(scale))
                while float(scale) * float(x) <= target:  # (float32 x float32 is exact in float64)
                    x = np.nextafter(x, np.float32(1))
                if np.float32(float(scale) * float(x) + 0.5) != _fmaf(scale, x, half):
                    return layout, level, x
    raise AssertionError("no double-rounding case found")


def test_fused_multiply_add_single_rounding() -> None:
    layout, level, x = _double_rounding_case()
    scale = np.float32(layout.levels[level].scale)
    naive = np.float32(float(scale) * float(x) + 0.5)
    single = _fmaf(scale, x, np.float32(0.5))
    assert single == np.nextafter(naive, np.float32(1))  # the naive way is one float32 below
    _, weights = corner_entries(layout, np.array([[x]], dtype=np.float32))
    assert weights[level, 1, 0] == single  # frac (pos < 1): the single rounding, not the naive one
    # and the vectorised rounding agrees with fmaf on tiny products, where it matters
    rng = np.random.default_rng(1)
    xs = (rng.random(300) * 2.0 ** rng.integers(-40, -6, 300)).astype(np.float32)
    vec = _fma_round_to_f32(float(scale) * xs.astype(np.float64), 0.5)
    assert vec.dtype == np.float32
    assert vec.tolist() == [_fmaf(scale, x, np.float32(0.5)) for x in xs]


def test_documented_tcnn_stride_overflow_divergence() -> None:
    # Level 12 of the default layout has resolution 65536: tiny-cuda-nn's uint32 stride
    # wraps to 0 there and it uses a linear index; SPEC 2.1 (and nffs) hashes.
    layout = make_layout(levels=13)
    assert layout.levels[12].resolution == 65536 and not layout.levels[12].dense
    params = random_params(layout)
    point = np.array([0.3, 0.6, 0.9], dtype=np.float32)
    ours = encode(layout, point[None], array_gather(params, 2))[0]
    spec = encode_reference(layout, point, params.item)
    cuda = encode_reference(layout, point, params.item, tcnn_stride_overflow=True)
    np.testing.assert_allclose(ours, spec, atol=1e-5)
    np.testing.assert_allclose(ours[:24], cuda[:24], atol=1e-5)
    assert not np.allclose(ours[24:], cuda[24:], atol=1e-5)


def test_hashed_index_is_the_coherent_prime_hash() -> None:
    layout = make_layout(dims=3, levels=6, log2_table_size=12)
    point = np.array([[0.123, 0.456, 0.789]], dtype=np.float32)
    entries, weights = corner_entries(layout, point)
    assert entries.shape == weights.shape == (6, 8, 1) and entries.dtype == np.uint64
    for lv in layout.levels:
        cell = [math.floor(np.float32(float(np.float32(lv.scale)) * float(x) + 0.5)) for x in point[0]]
        for c in range(8):
            corner = [cell[d] + ((c >> d) & 1) for d in range(3)]
            if lv.dense:
                index = sum(corner[d] * lv.resolution**d for d in range(3)) % 2**32 % lv.entries
            else:
                h = 0
                for d in range(3):
                    h ^= corner[d] * HASH_PRIMES[d] % 2**32
                index = h % lv.entries
            assert int(entries[lv.index, c, 0]) == lv.offset + index
        np.testing.assert_allclose(weights[lv.index, :, 0].sum(), 1.0, atol=1e-6)


def test_wide_layout_uses_64_bit_arithmetic() -> None:
    layout = make_layout(dims=2, levels=20, features=2, log2_table_size=40)
    assert layout.wide
    assert layout.levels[16].dense and layout.levels[16].entries == (16 * 2**16) ** 2  # 2**40, beyond uint32
    assert not layout.levels[17].dense and layout.levels[17].entries == 2**40

    def gather(entries: np.ndarray) -> np.ndarray:
        return np.sin(entry_elements(layout, entries).astype(np.float64) * 0.7071).astype(np.float32)

    rng = np.random.default_rng(40)
    points = np.concatenate([rng.random((6, 2), dtype=np.float32), np.array([[0, 1], [1, 1]], np.float32)])
    got = encode(layout, points, gather)
    want = [encode_reference(layout, p, lambda e: math.sin(e * 0.7071)) for p in points]
    np.testing.assert_allclose(got, want, atol=1e-5)
    # A hashed wide level really hashes in 64 bits: the products exceed 2**32.
    entries, _ = corner_entries(layout, points[:1])
    lv = layout.levels[19]
    cell = [math.floor(np.float32(float(np.float32(lv.scale)) * float(x) + 0.5)) for x in points[0]]
    h = (cell[0] * HASH_PRIMES[0]) ^ (cell[1] * HASH_PRIMES[1])
    assert int(entries[19, 0, 0]) == lv.offset + h % 2**64 % 2**40
    assert h >= 2**32


def test_wide_layout_three_dims_with_implicit_values() -> None:
    layout = make_layout(log2_table_size=40, init_scale=1.0, seed=9)
    assert layout.levels[9].dense and not layout.levels[10].dense

    def gather(entries: np.ndarray) -> np.ndarray:
        elements = entry_elements(layout, entries)
        flat = [implicit_value_scalar(9, int(e), "uniform", 1.0) for e in elements.reshape(-1)]
        return np.array(flat, dtype=np.float32).reshape(elements.shape)

    points = np.random.default_rng(5).random((2, 3), dtype=np.float32)
    got = encode(layout, points, gather)
    want = [encode_reference(layout, p, lambda e: implicit_value_scalar(9, e, "uniform", 1.0)) for p in points]
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_encode_input_checks_and_empty_batch() -> None:
    layout = make_layout(dims=2, levels=3, log2_table_size=8)
    gather = array_gather(random_params(layout), layout.features)
    assert encode(layout, np.empty((0, 2), np.float32), gather).shape == (0, 6)
    with pytest.raises(ValueError, match="shape"):
        encode(layout, np.zeros((4, 3), np.float32), gather)
    with pytest.raises(ValueError, match="finite"):
        encode(layout, np.array([[0.5, np.nan]], np.float32), gather)
    with pytest.raises(ValueError, match="finite"):
        encode(layout, np.array([[np.inf, 0.5]], np.float32), gather)


def test_gather_called_once_and_precomputed_corners() -> None:
    layout = make_layout(dims=3, levels=4, log2_table_size=10)
    params = random_params(layout)
    inner = array_gather(params, layout.features)
    calls: list[tuple[int, ...]] = []

    def gather(entries: np.ndarray) -> np.ndarray:
        calls.append(entries.shape)
        assert entries.dtype == np.uint64
        return inner(entries)

    points = np.random.default_rng(0).random((100, 3), dtype=np.float32)
    first = encode(layout, points, gather)
    corners = corner_entries(layout, points)
    second = encode(layout, points, gather, corners=corners)
    assert calls == [(4, 8, 100), (4, 8, 100)]
    np.testing.assert_array_equal(first, second)


def test_float16_params_and_element_gather_agree() -> None:
    layout = make_layout(dims=2, levels=4, features=2, dtype="float16", log2_table_size=8)
    params = random_params(layout).astype(np.float16)
    points = np.random.default_rng(2).random((50, 2), dtype=np.float32)
    via_rows = encode(layout, points, array_gather(params, 2))

    def element_gather(entries: np.ndarray) -> np.ndarray:
        return params[entry_elements(layout, entries)].astype(np.float32)

    np.testing.assert_array_equal(via_rows, encode(layout, points, element_gather))
    want = [encode_reference(layout, p, lambda e: float(params[e])) for p in points[:5]]
    np.testing.assert_allclose(via_rows[:5], want, atol=1e-5)


@pytest.mark.parametrize("features", [1, 2, 3, 4, 8])
def test_interpolation_lanes_for_every_feature_count(features: int) -> None:
    layout = make_layout(dims=2, levels=3, features=features, log2_table_size=8)
    params = random_params(layout)
    points = np.random.default_rng(features).random((30, 2), dtype=np.float32)
    got = encode(layout, points, array_gather(params, features))
    entries, weights = corner_entries(layout, points)
    rows = params.reshape(-1, features)[entries.astype(np.int64)].astype(np.float64)  # (L, C, N, F)
    want = np.einsum("lcn,lcnf->nlf", weights.astype(np.float64), rows).reshape(30, -1)
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_touched_pages_cover_every_row_byte() -> None:
    for features in (2, 3):
        layout = make_layout(dims=3, levels=5, features=features, log2_table_size=12, page_size=4096)
        entries, _ = corner_entries(layout, np.random.default_rng(0).random((40, 3), dtype=np.float32))
        elements = entry_elements(layout, entries).reshape(-1)
        want = np.unique(elements * np.uint64(layout.itemsize) // np.uint64(layout.page_size))
        got = touched_pages(layout, entries)
        np.testing.assert_array_equal(got, want)
        assert got.dtype == np.uint64
    # a petabyte layout takes the sorting path instead of a page bitmap
    layout = make_layout(log2_table_size=45)
    assert layout.n_pages > 2**26
    entries, _ = corner_entries(layout, np.random.default_rng(1).random((30, 3), dtype=np.float32))
    want = np.unique(entry_elements(layout, entries).reshape(-1) * np.uint64(4) // np.uint64(65536))
    np.testing.assert_array_equal(touched_pages(layout, entries), want)


# --- implicit init ----------------------------------------------------------------------------


@pytest.mark.parametrize("start", [0, 1000, 2**32 - 3, 2**40 + 12345, 2**47 - 5])
@pytest.mark.parametrize("seed", [0, 1, 2**64 - 1])
def test_implicit_values_match_scalar_formula(start: int, seed: int) -> None:
    vec = implicit_values(seed, start, 5, "uniform", 1e-4, np.float32)
    for i, value in enumerate(vec):
        assert value == np.float32(implicit_value_scalar(seed, start + i, "uniform", 1e-4))
    assert np.abs(vec).max() <= 1e-4
    half = implicit_values(seed, start, 5, "uniform", 0.5, np.float16)
    assert half.dtype == np.float16
    assert list(half) == [np.float16(implicit_value_scalar(seed, start + i, "uniform", 0.5)) for i in range(5)]
    assert not implicit_values(seed, start, 5, "zeros", 0.5, np.float32).any()


# --- concepts ---------------------------------------------------------------------------------


def apply_update(layout: FieldLayout, params: np.ndarray, point: np.ndarray, target: np.ndarray) -> np.ndarray:
    gather = array_gather(params, layout.features)
    current = encode(layout, point[None], gather)[0]
    elements, deltas = concept_update(layout, point, current, target)
    assert elements.dtype == np.uint64 and deltas.dtype == np.float32 and elements.shape == deltas.shape
    assert np.all(np.diff(elements.astype(np.int64)) > 0), "elements sorted and unique"
    params[elements.astype(np.int64)] += deltas
    return encode(layout, point[None], gather)[0]


def test_concept_update_sets_the_encoding() -> None:
    layout = make_layout(dims=3, levels=8, features=2, log2_table_size=14)
    params = random_params(layout)
    rng = np.random.default_rng(3)
    for _ in range(5):
        point = rng.random(3, dtype=np.float32)
        target = rng.uniform(-1, 1, layout.encoding_width).astype(np.float32)
        np.testing.assert_allclose(apply_update(layout, params, point, target), target, atol=1e-5)


def test_concept_update_is_the_spec_formula_without_collisions() -> None:
    layout = make_layout(dims=2, levels=3, features=2, log2_table_size=12)
    params = random_params(layout)
    point = np.array([0.31, 0.77], dtype=np.float32)
    current = encode(layout, point[None], array_gather(params, 2))[0]
    target = current + np.arange(6, dtype=np.float32) * 0.1
    elements, deltas = concept_update(layout, point, current, target)
    entries, weights = corner_entries(layout, point[None])
    expected: dict[int, float] = {}
    for level in range(3):
        w = weights[level, :, 0].astype(np.float64)
        assert len(set(entries[level, :, 0].tolist())) == 4
        for c in range(4):
            for f in range(2):
                d = w[c] * (target[level * 2 + f] - current[level * 2 + f]) / np.dot(w, w)
                if d != 0:
                    expected[int(entries[level, c, 0]) * 2 + f] = d
    assert sorted(expected) == elements.tolist()
    np.testing.assert_allclose(deltas, [expected[e] for e in elements.tolist()], rtol=1e-6, atol=1e-9)


def test_partial_update_keeps_other_components() -> None:
    layout = make_layout(dims=3, levels=6, features=2, log2_table_size=12)
    params = random_params(layout)
    point = np.array([0.2, 0.4, 0.6], dtype=np.float32)
    current = encode(layout, point[None], array_gather(params, 2))[0]
    target = current.copy()
    target[5:7] = [0.25, -0.5]  # level 2 feature 1 and level 3 feature 0
    after = apply_update(layout, params, point, target)
    np.testing.assert_allclose(after, target, atol=1e-5)
    np.testing.assert_array_equal(np.delete(after, [4, 5, 6, 7]), np.delete(current, [4, 5, 6, 7]))
    # only levels 2 and 3 were touched
    elements, _ = concept_update(layout, point, current, np.where(np.arange(12) == 5, 1.0, current))
    lv = layout.levels[2]
    assert elements.min() >= lv.offset * 2 and elements.max() < (lv.offset + lv.entries) * 2
    assert concept_update(layout, point, current, current)[0].size == 0


def test_concept_update_with_colliding_corners_still_reads_back() -> None:
    layout = make_layout(dims=3, levels=3, features=1, base_resolution=8, log2_table_size=4)
    params = random_params(layout)
    rng = np.random.default_rng(4)
    collided = 0
    for _ in range(20):
        point = rng.random(3, dtype=np.float32)
        entries, _ = corner_entries(layout, point[None])
        collided += any(len(set(entries[l, :, 0].tolist())) < 8 for l in range(3))
        target = rng.uniform(-1, 1, 3).astype(np.float32)
        np.testing.assert_allclose(apply_update(layout, params, point, target), target, atol=1e-5)
    assert collided, "the table is tiny: some corners must share entries"


# --- points -----------------------------------------------------------------------------------


def test_point_from_name() -> None:
    for name in (b"cat", b"", "caf\xe9".encode(), b"x" * 1000):
        point = point_from_name(name, 5)
        assert point.dtype == np.float32 and point.shape == (5,)
        assert np.all((point >= 0) & (point < 1))
        expected = [(xxhash.xxh3_64_intdigest(name, seed=d) >> 40) / 2**24 for d in range(5)]
        assert point.tolist() == expected  # 24-bit values are exact in float32
        np.testing.assert_array_equal(point, point_from_name(name, 5))
    np.testing.assert_array_equal(point_from_name("café", 3), point_from_name("café".encode(), 3))
    assert not np.array_equal(point_from_name(b"cat", 3), point_from_name(b"dog", 3))


@pytest.mark.parametrize(
    "text, dims, expected",
    [
        ("0.1 0.2 0.3", 3, [0.1, 0.2, 0.3]),
        ("0.1,0.2,0.3", 3, [0.1, 0.2, 0.3]),
        ("  0.1 , 0.2,\t0.3\n", 3, [0.1, 0.2, 0.3]),
        (b"1 0 .5", 3, [1.0, 0.0, 0.5]),
        ("1e-3,1E0", 2, [0.001, 1.0]),
        ("+0.25", 1, [0.25]),
        ("-0", 1, [0.0]),
    ],
)
def test_parse_point_accepts(text: str, dims: int, expected: list[float]) -> None:
    point = parse_point(text, dims)
    assert point.dtype == np.float32
    np.testing.assert_array_equal(point, np.array(expected, dtype=np.float32))


@pytest.mark.parametrize(
    "text, dims, message",
    [
        ("0.1 0.2", 3, "needs 3 numbers"),
        ("0.1 0.2 0.3 0.4", 3, "needs 3 numbers"),
        ("", 2, "got none"),
        ("   ", 1, "got none"),
        ("nan 0.5", 2, "not a decimal"),
        ("inf", 1, "not a decimal"),
        ("-0.1 0.5", 2, "outside"),
        ("0.5 1.0001", 2, "outside"),
        ("1e309", 1, "outside"),
        ("abc 0.5", 2, "not a decimal"),
        ("0x1p-3", 1, "not a decimal"),
        ("1_0", 1, "not a decimal"),
        ("0.1,,0.2", 3, "empty"),
        ("0.1,0.2,", 3, "empty"),
        (b"\xff", 1, "ASCII"),
    ],
)
def test_parse_point_rejects(text: str, dims: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_point(text, dims)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=1, max_size=7), st.sampled_from([" ", ",", ", "]))
def test_parse_point_round_trips(values: list[float], separator: str) -> None:
    point = parse_point(separator.join(repr(v) for v in values), len(values))
    np.testing.assert_array_equal(point, np.array(values, dtype=np.float32))


def test_implicit_values_at_scattered_indices_match_the_contiguous_form() -> None:
    """A gather over never-written pages computes just its elements: the same values as the
    page-at-a-time form and the scalar SPEC formula."""
    from nffs.encoding.init import implicit_values_at

    rng = np.random.default_rng(3)
    idx = rng.integers(0, 1 << 40, 500)
    for init, scale, dtype in (("uniform", 1e-4, np.float32), ("uniform", 0.5, np.float16), ("zeros", 1.0, np.float32)):
        got = implicit_values_at(11, idx, init, scale, dtype)
        want = np.array([implicit_values(11, int(i), 1, init, scale, dtype)[0] for i in idx], dtype=dtype)
        assert got.dtype == np.dtype(dtype) and np.array_equal(got, want)
        assert [np.float32(v) for v in got[:5].astype(np.float32)] == [
            np.float32(np.dtype(dtype).type(implicit_value_scalar(11, int(i), init, scale))) for i in idx[:5]]
