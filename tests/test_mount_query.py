"""Real mounts: concepts, at/, the query protocol and the decoder (issue 3 acceptance)."""
from __future__ import annotations

import errno
import io
import json
import mmap
import os
import re
import threading
from pathlib import Path

import numpy as np
import pytest

from nffs.encoding import hashgrid
from nffs.encoding.init import implicit_value_scalar
from nffs.encoding.layout import FieldConfig, FieldLayout

from mounting import Mounts


def write_random_params(mnt: Path, seed: int = 0) -> np.ndarray:
    size = (mnt / "params").stat().st_size
    data = np.random.default_rng(seed).uniform(-1, 1, size // 4).astype("<f4")
    with open(mnt / "params", "r+b") as f:
        f.write(data.tobytes())
    return data


def query(mnt: Path, points: np.ndarray, width: int, chunks: int = 1, fd: int | None = None) -> np.ndarray:
    own = fd is None
    if own:
        fd = os.open(mnt / "query", os.O_RDWR)
    try:
        raw = np.ascontiguousarray(points, dtype="<f4").tobytes()
        step = -(-len(raw) // chunks) if raw else 0
        for off in range(0, len(raw), max(step, 1)):
            os.pwrite(fd, raw[off:off + step], off)
        want = points.shape[0] * width * 4
        out = b""
        while len(out) < want:
            piece = os.pread(fd, min(65536, want - len(out)), len(out))
            if not piece:
                break
            out += piece
        return np.frombuffer(out, dtype="<f4").reshape(points.shape[0], width)
    finally:
        if own:
            os.close(fd)


SETTINGS = [
    ("--dims", "1", "--levels", "5", "--features", "1", "--log2-table-size", "6"),
    ("--dims", "2", "--levels", "6", "--features", "3", "--log2-table-size", "10", "--interpolation", "smoothstep"),
    ("--dims", "3", "--levels", "8", "--features", "2", "--log2-table-size", "12", "--per-level-scale", "1.3819"),
    ("--dims", "4", "--levels", "4", "--features", "4", "--log2-table-size", "9", "--base-resolution", "3", "--per-level-scale", "1.7"),
]


def config_from(args: tuple[str, ...]) -> FieldConfig:
    kw = {}
    for key, value in zip(args[::2], args[1::2]):
        name = key[2:].replace("-", "_")
        kw[name] = value if name == "interpolation" else (float(value) if name == "per_level_scale" else int(value))
    return FieldConfig(**kw)


@pytest.mark.parametrize("settings", SETTINGS, ids=["D1F1", "D2F3-smooth", "D3F2-b1.38", "D4F4"])
def test_query_matches_the_tiny_cuda_nn_encoding(small_field, settings) -> None:
    field, mnt = small_field(*settings)
    layout = FieldLayout(config_from(settings))
    assert any(lv.dense for lv in layout.levels) and any(not lv.dense for lv in layout.levels)
    data = write_random_params(mnt)
    rng = np.random.default_rng(1)
    points = rng.random((300, layout.dims), dtype=np.float32)
    points[0] = 0.0
    points[1] = 1.0
    got = query(mnt, points, layout.encoding_width, chunks=3)
    for i in (0, 1, 2, 150, 299):
        ref = hashgrid.encode_reference(layout, points[i], lambda e: float(data[e]))
        assert np.allclose(got[i], ref, atol=1e-5, rtol=0), i
    # at/ prints the same numbers
    name = ",".join(f"{v:.6f}" for v in points[150])
    line = (mnt / "at" / name).read_text()
    assert line.endswith("\n") and line.count("\n") == 1
    at_vals = np.array([float(v) for v in line.split()], dtype=np.float32)
    ref = hashgrid.encode_reference(layout, np.array([float(v) for v in name.split(",")], dtype=np.float32), lambda e: float(data[e]))
    assert np.allclose(at_vals, ref, atol=1e-5)


def test_wide_table_query_follows_the_uint64_rule(small_field) -> None:
    args = ("--dims", "2", "--levels", "20", "--log2-table-size", "40", "--init-scale", "1", "--seed", "9")
    field, mnt = small_field(*args)
    layout = FieldLayout(config_from(args[:6]).__class__(dims=2, levels=20, log2_table_size=40, init_scale=1.0, seed=9))
    assert layout.wide and not layout.levels[-1].dense
    points = np.random.default_rng(3).random((5, 2), dtype=np.float32)
    got = query(mnt, points, layout.encoding_width)
    for i in range(5):
        ref = hashgrid.encode_reference(layout, points[i], lambda e: float(np.float32(implicit_value_scalar(9, e, "uniform", 1.0))))
        assert np.allclose(got[i], ref, atol=1e-5), i


def test_query_protocol_chunks_handles_and_errors(small_field) -> None:
    field, mnt = small_field("--levels", "4", "--log2-table-size", "10", mount_args=("--prefetch", "none", "--max-batch", "100"))
    write_random_params(mnt)
    width = 8
    pts_a = np.random.default_rng(0).random((50, 3), dtype=np.float32)
    pts_b = np.random.default_rng(1).random((70, 3), dtype=np.float32)
    whole = query(mnt, pts_a, width)
    assert np.array_equal(query(mnt, pts_a, width, chunks=7), whole)
    # two handles interleaved stay independent
    fa, fb = os.open(mnt / "query", os.O_RDWR), os.open(mnt / "query", os.O_RDWR)
    try:
        os.pwrite(fa, pts_a.tobytes()[:300], 0)
        os.pwrite(fb, pts_b.tobytes(), 0)
        os.pwrite(fa, pts_a.tobytes()[300:], 300)
        ans_b = np.frombuffer(os.pread(fb, 70 * width * 4, 0), dtype="<f4").reshape(70, width)
        ans_a = np.frombuffer(os.pread(fa, 50 * width * 4, 0), dtype="<f4").reshape(50, width)
        assert np.array_equal(ans_a, whole)
        assert np.array_equal(ans_b, query(mnt, pts_b, width))
        # reading in pieces from any offset
        assert os.pread(fa, 16, 40) == whole.tobytes()[40:56]
        # errors: wrong length, NaN, inf, over --max-batch -> EINVAL on read; handle stays usable
        bad_requests = [pts_a.tobytes()[:10], np.array([[0.1, np.nan, 0.2]], "<f4").tobytes(),
                        np.array([[0.1, 0.2, np.inf]], "<f4").tobytes(), np.zeros((101, 3), "<f4").tobytes()]
        for bad in bad_requests:
            os.pwrite(fa, bad, 0)
            with pytest.raises(OSError) as err:
                os.pread(fa, 64, 0)
            assert err.value.errno == errno.EINVAL
            answer = query(mnt, pts_a, width, fd=fa)
            assert np.array_equal(answer, whole)
    finally:
        os.close(fa)
        os.close(fb)
    assert json.loads((mnt / "stats").read_text())["pid"] > 0


def test_concurrent_query_handles_from_threads(small_field) -> None:
    field, mnt = small_field("--levels", "6", "--log2-table-size", "12")
    write_random_params(mnt)
    pts = [np.random.default_rng(i).random((200, 3), dtype=np.float32) for i in range(6)]
    expected = [query(mnt, p, 12) for p in pts]
    errors: list[str] = []

    def worker(i: int) -> None:
        for _ in range(5):
            if not np.array_equal(query(mnt, pts[i], 12, chunks=2), expected[i]):
                errors.append(f"thread {i}")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_concepts_lifecycle_xattr_and_persistence(mounts: Mounts) -> None:
    field = mounts.init("--levels", "6", "--log2-table-size", "12")
    tiers = mounts.tiers(field)
    mnt = mounts.mount(field, *tiers, "--prefetch", "none")
    layout = FieldLayout(FieldConfig(levels=6, log2_table_size=12))
    data = write_random_params(mnt)
    concepts = mnt / "concepts"
    (concepts / "cat").touch()
    fd = os.open(concepts / "dog", os.O_CREAT | os.O_WRONLY, 0o644)
    os.close(fd)
    assert sorted(os.listdir(concepts)) == ["cat", "dog"]
    assert (concepts / "cat").stat().st_size == layout.encoding_width * 4
    # content is the encoding at the name's point
    point = hashgrid.point_from_name(b"cat", 3)
    ref = hashgrid.encode_reference(layout, point, lambda e: float(data[e]))
    got = np.frombuffer((concepts / "cat").read_bytes(), dtype="<f4")
    assert np.allclose(got, ref, atol=1e-5)
    # the point is visible as an xattr and can be pinned
    shown = os.getxattr(concepts / "cat", "user.nffs.point").decode()
    assert np.allclose([float(v) for v in shown.split()], point, atol=1e-6)
    os.setxattr(concepts / "dog", "user.nffs.point", b"0.1, 0.2 0.3")
    ref_dog = hashgrid.encode_reference(layout, np.array([0.1, 0.2, 0.3], np.float32), lambda e: float(data[e]))
    assert np.allclose(np.frombuffer((concepts / "dog").read_bytes(), "<f4"), ref_dog, atol=1e-5)
    with pytest.raises(OSError):
        os.setxattr(concepts / "dog", "user.nffs.point", b"0.1 0.2")  # wrong arity
    with pytest.raises(OSError):
        os.setxattr(concepts / "dog", "user.nffs.point", b"0.1 0.2 1.5")  # outside [0,1]
    # writing sets the field there; partial aligned writes keep the other components
    params_map_file = open(mnt / "params", "rb")
    params_map = mmap.mmap(params_map_file.fileno(), 0, prot=mmap.PROT_READ)
    before = bytes(params_map[:])
    target = np.linspace(-0.5, 0.5, layout.encoding_width, dtype="<f4")
    (concepts / "cat").write_bytes(target.tobytes())
    assert np.allclose(np.frombuffer((concepts / "cat").read_bytes(), "<f4"), target, atol=1e-5)
    with open(concepts / "cat", "r+b") as f:
        f.seek(8)
        f.write(np.array([3.0, 4.0], "<f4").tobytes())
    target[2:4] = [3.0, 4.0]
    assert np.allclose(np.frombuffer((concepts / "cat").read_bytes(), "<f4"), target, atol=1e-5)
    # the kernel's cached params pages were refreshed: the mapping sees the concept write
    changed = bytes(params_map[:])
    assert changed != before
    assert changed == (mnt / "params").read_bytes()
    params_map.close()
    params_map_file.close()
    # unaligned or out-of-range writes fail with EINVAL and change nothing
    fd = os.open(concepts / "cat", os.O_WRONLY)
    try:
        for off, payload in ((2, b"\0\0\0\0"), (0, b"\0\0\0"), (layout.encoding_width * 4, b"\0\0\0\0")):
            with pytest.raises(OSError) as err:
                os.pwrite(fd, payload, off)
            assert err.value.errno == errno.EINVAL
    finally:
        os.close(fd)
    assert np.allclose(np.frombuffer((concepts / "cat").read_bytes(), "<f4"), target, atol=1e-5)
    # names: too long, rename keeps content, unlink
    with pytest.raises(OSError) as err:
        (concepts / ("x" * 256)).touch()
    assert err.value.errno == errno.ENAMETOOLONG
    os.rename(concepts / "cat", concepts / "lion")
    assert sorted(os.listdir(concepts)) == ["dog", "lion"]
    assert np.allclose(np.frombuffer((concepts / "lion").read_bytes(), "<f4"), target, atol=1e-5)
    os.unlink(concepts / "dog")
    assert os.listdir(concepts) == ["lion"]
    mounts.umount(mnt)
    mnt2 = mounts.mount(field, *tiers, "--prefetch", "none")
    assert os.listdir(mnt2 / "concepts") == ["lion"]
    assert np.allclose(np.frombuffer((mnt2 / "concepts" / "lion").read_bytes(), "<f4"), target, atol=1e-5)


def npz_bytes(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def test_decoder_install_query_reject_and_remove(small_field) -> None:
    field, mnt = small_field("--levels", "4", "--log2-table-size", "10")
    write_random_params(mnt)
    rng = np.random.default_rng(5)
    W0, b0 = rng.normal(size=(8, 16)).astype("<f4"), rng.normal(size=16).astype("<f4")
    W1, b1 = rng.normal(size=(16, 3)).astype("<f4"), rng.normal(size=3).astype("<f4")
    pts = rng.random((40, 3), dtype=np.float32)
    enc = query(mnt, pts, 8)
    assert not (mnt / "decoder.npz").exists()
    (mnt / "decoder.npz").write_bytes(npz_bytes(W0=W0, b0=b0, W1=W1, b1=b1))
    assert "decoder.npz" in os.listdir(mnt)
    out = query(mnt, pts, 3)
    expect = np.maximum(enc @ W0 + b0, 0) @ W1 + b1
    assert np.allclose(out, expect, atol=1e-4)
    at_line = (mnt / "at" / "0.5,0.5,0.5").read_text().split()
    assert len(at_line) == 3
    # a bad decoder is refused with EINVAL and changes nothing
    for bad in (b"not an npz", npz_bytes(W0=np.zeros((7, 4), "<f4"), b0=np.zeros(4, "<f4")),
                npz_bytes(W0=np.array([object()] * 8, dtype=object).reshape(8, 1), b0=np.zeros(1, "<f4"))):
        with pytest.raises(OSError) as err:
            with open(mnt / "decoder.npz", "wb") as f:
                f.write(bad)
        assert err.value.errno == errno.EINVAL
        assert np.allclose(query(mnt, pts, 3), expect, atol=1e-4)
    os.unlink(mnt / "decoder.npz")
    assert np.array_equal(query(mnt, pts, 8), enc)


def test_hints_stats_and_metrics(small_field) -> None:
    field, mnt = small_field("--levels", "4", "--log2-table-size", "10")
    (mnt / "concepts" / "c").touch()
    with open(mnt / "hints", "w") as f:
        f.write("page 0\nrange 0 8192\npoint 0.1 0.2 0.3\nconcept c\n")
    with pytest.raises(OSError) as err:
        with open(mnt / "hints", "w") as f:
            f.write("teleport 1 2 3\n")
    assert err.value.errno == errno.EINVAL
    stats = json.loads((mnt / "stats").read_text())
    assert stats["store"]["tiers"][0]["name"] == "dram"
    metrics = (mnt / "metrics").read_text()
    assert "# TYPE nffs_store_reads_total counter" in metrics
    assert re.search(r'^nffs_tier_pages\{[^}]*tier="dram"[^}]*\} \d+$', metrics, re.M)


def test_issue9_unterminated_hint_line_is_bounded(small_field) -> None:
    """Issue 9: 100 MiB without a newline grew the daemon by 310 MB; now EINVAL past 4 KiB."""
    field, mnt = small_field("--levels", "4", "--log2-table-size", "10")
    fd = os.open(mnt / "hints", os.O_WRONLY)
    try:
        with pytest.raises(OSError) as err:
            os.write(fd, b"x" * (4 << 20))
        assert err.value.errno == errno.EINVAL
        assert os.write(fd, b"page 0\n") == 7  # the handle stays usable
    finally:
        os.close(fd)


def test_issue9_query_written_with_a_gap_fails_its_read(small_field) -> None:
    """Issue 9: a gap was zero-filled (up to 12 MiB allocated) and answered; now EINVAL on read."""
    field, mnt = small_field("--levels", "4", "--log2-table-size", "10", mount_args=("--prefetch", "none", "--max-batch", "100"))
    write_random_params(mnt)
    pts = np.random.default_rng(2).random((20, 3), dtype=np.float32)
    whole = query(mnt, pts, 8)
    fd = os.open(mnt / "query", os.O_RDWR)
    try:
        os.pwrite(fd, b"\0" * 12, 600)  # a gap from offset 0, inside --max-batch
        with pytest.raises(OSError) as err:
            os.pread(fd, 4096, 0)
        assert err.value.errno == errno.EINVAL
        os.pwrite(fd, pts.tobytes()[:120], 0)
        os.pwrite(fd, pts.tobytes()[180:], 180)  # a gap inside a request
        with pytest.raises(OSError) as err:
            os.pread(fd, 4096, 0)
        assert err.value.errno == errno.EINVAL
        assert np.array_equal(query(mnt, pts, 8, fd=fd), whole)  # the handle stays usable
    finally:
        os.close(fd)


def test_issue9_nan_in_another_level_does_not_block_concept_writes(small_field) -> None:
    """Issue 9: a concept write failed with EINVAL when an unrelated level held a NaN."""
    field, mnt = small_field("--levels", "4", "--log2-table-size", "10")
    write_random_params(mnt)
    lvl = mnt / "levels" / "03"
    lvl.write_bytes(np.full(lvl.stat().st_size // 4, np.nan, "<f4").tobytes())
    (mnt / "concepts" / "c").touch()
    with open(mnt / "concepts" / "c", "r+b") as f:
        f.write(np.array([0.5, -0.5], "<f4").tobytes())
    got = np.frombuffer((mnt / "concepts" / "c").read_bytes(), "<f4")
    assert np.allclose(got[:2], [0.5, -0.5], atol=1e-5) and np.isnan(got[-2:]).all()
    assert json.loads((mnt / "stats").read_text())["errors"]["unexpected"] == 0
