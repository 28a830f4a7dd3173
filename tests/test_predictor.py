"""Unit tests of the prefetch predictors: histories, models, address and field space.

Address-space tests drive the predictor with a simulated kernel page cache: a read of a
pushed page never reaches the predictor (exactly what happens under a real mount), a
read of a page fetched but not pushed (a tripwire) does, but costs no slow-tier read.
"""
from __future__ import annotations

import random

import numpy as np
import pytest

from nffs.encoding import hashgrid
from nffs.encoding.layout import FieldConfig, FieldLayout
from nffs.predictor.address import AddressPredictor
from nffs.predictor.fieldspace import FieldPredictor
from nffs.predictor.history import OTHER, DeltaVocabulary, MotionHistory, StreamHistory, label_delta
from nffs.predictor.models import HoeffdingPredictor, MarkovPredictor, NullPredictor, make_model
from nffs.predictor.prefetch import INFLIGHT, READY, Entry, Ledger

KINDS = ["hoeffding", "markov"]


# ----------------------------------------------------------------------------- histories
def test_vocabulary_admits_repeated_deltas_and_stays_bounded() -> None:
    v = DeltaVocabulary(size=4, admit=2, candidates=8)
    assert v.observe(5) == OTHER  # first sighting
    assert v.observe(5) == "+5"
    assert v.label(5) == "+5" and label_delta("+5") == 5
    for d in range(100, 10_000, 7):  # a random stream: singletons never become classes
        assert v.observe(d) == OTHER
    assert len(v) == 1
    assert len(v._counts) <= 8
    for d in (1, 1, 2, 2, 3, 3, 4, 4):
        v.observe(d)
    assert len(v) == 4  # full: further deltas are OTHER
    assert v.observe(9) == OTHER and v.observe(9) == OTHER


def test_stream_history_features_are_bounded() -> None:
    h = StreamHistory(depth=8)
    for i in range(1000):
        h.push(1, "+1", i)
    x = h.features()
    assert x["c1"] == x["c4"] == "+1"
    assert x["same"] == 1.0 and x["fwd"] == 1.0 and x["run"] == 32.0
    assert len(h.labels) == 8
    h.push(-3, "-3", 990)
    x = h.features()
    assert (x["c1"], x["c2"], x["run"]) == ("-3", "+1", 1.0)
    assert StreamHistory.key(x) != StreamHistory.key(StreamHistory().features())


def test_motion_history_labels_rigid_moves() -> None:
    m = MotionHistory(3)
    block = np.random.default_rng(0).random((50, 3)) * 0.01
    labels = []
    for k in range(8):
        centre = np.array([0.2 + 0.01 * k + 0.001 * k * k, 0.5, 0.5])
        labels.append(m.observe(block + centre)[0])
    assert labels[0] is None
    assert labels[-1] == "acc"  # constant acceleration explains the move exactly
    assert np.allclose(m.displacement("acc", 1), [0.01 + 0.001 * (2 * 8 - 1), 0, 0])
    rng = np.random.default_rng(1)
    for _ in range(3):
        label, _ = m.observe(rng.random((50, 3)))
    assert label == OTHER  # a fresh random batch is not a shift of the previous one


# ----------------------------------------------------------------------------- models
def _label_stream(pattern: list[str], n: int):
    h = StreamHistory()
    for i in range(n):
        y = pattern[i % len(pattern)]
        yield h.features(), y
        h.push(label_delta(y) or 0, y, i)


@pytest.mark.parametrize("kind", KINDS)
def test_models_learn_a_scan_and_a_replayed_pattern(kind: str) -> None:
    for pattern in (["+1"], ["+3", "-2", "+7", "-6", "+18", "+5"]):
        model = make_model(kind)
        correct = total = 0
        for i, (x, y) in enumerate(_label_stream(pattern, 600)):
            if i >= 200:
                total += 1
                correct += model.predict_one(x) == y
            model.learn_one(x, y)
        assert correct / total >= 0.95, (kind, pattern, correct / total)
        s = model.stats()
        assert s["learns"] == 600 and s["predicts"] == 400
        assert s["learn_us"] > 0 and s["predict_us"] > 0
        assert 0 < model.model_bytes() < 16 << 20


@pytest.mark.parametrize("kind", KINDS)
def test_models_are_not_confident_about_noise(kind: str) -> None:
    model = make_model(kind)
    rng = random.Random(3)
    classes = [f"{d:+d}" for d in range(1, 17)] + [OTHER]
    h = StreamHistory()
    confident = 0
    for i in range(1500):
        x = h.features()
        label, p = model.best(x)
        if i >= 500 and label is not None and p >= 0.5:
            confident += 1
        y = rng.choice(classes)
        model.learn_one(x, y)
        h.push(label_delta(y) or 0, y, i)
    assert confident / 1000 < 0.1


def test_markov_table_is_bounded_and_null_predicts_nothing() -> None:
    m = MarkovPredictor(max_contexts=64, max_successors=4)
    rng = random.Random(0)
    for _ in range(5000):
        m.learn_one({"c1": str(rng.randrange(1000)), "c2": str(rng.randrange(1000))}, str(rng.randrange(1000)))
    assert len(m._table) <= 64
    assert all(len(c) <= 4 for c in m._table.values())
    n = NullPredictor()
    n.learn_one({"c1": "+1"}, "+1")
    assert n.predict_one({"c1": "+1"}) is None and n.model_bytes() == 0


def test_lazy_hoeffding_keeps_early_samples() -> None:
    model = HoeffdingPredictor(lazy=True)
    assert not model.ready and model.predict_proba_one({"c1": "+1"}) == {}
    for x, y in _label_stream(["+1"], 50):
        model.learn_one(x, y)
    model.install(model.build())
    assert model.ready
    assert model.predict_one(StreamHistory().features() | {"c1": "+1", "c2": "+1", "c3": "+1", "c4": "+1"}) == "+1"


# ----------------------------------------------------------------------------- address space
def simulate(kind: str, reads: list[int], n_pages: int, dt: float = 0.002) -> dict:
    """Feed page reads through a simulated kernel cache; fetches complete at once."""
    ap = AddressPredictor(make_model(kind), n_pages, 65536)
    cache: set[int] = set()
    fetched: set[int] = set()
    used: set[int] = set()
    slow = trip = 0
    t = 0.0
    for q in reads:
        t += dt
        if q in cache:
            used.add(q)
            continue
        if q in fetched:
            used.add(q)
            trip += 1
        else:
            slow += 1
        plan = ap.observe(q, q, t)
        if plan is None:
            continue
        for page, push, _ in plan.window:
            fetched.add(page)
            if push:
                cache.add(page)
    return {
        "reads": len(reads),
        "slow": slow,  # reads that paid the slow tier
        "daemon": slow + trip,  # reads that reached the daemon at all
        "fetched": len(fetched),
        "accuracy": len(used & fetched) / len(fetched) if fetched else None,
    }


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "name, reads",
    [
        ("sequential", list(range(3000))),
        ("strided", list(range(0, 21000, 7))),
        ("backwards", list(range(3000, 0, -1))),
        ("two passes", list(range(0, 3000, 2)) + list(range(1, 3000, 2))),
        ("interleaved", [p for i in range(1500) for p in (i, 50_000 + i)]),
        ("replayed pattern", [25 * k + d for k in range(500) for d in (0, 3, 1, 8, 2, 20)]),
    ],
)
def test_address_patterns_are_prefetched_accurately(kind: str, name: str, reads: list[int]) -> None:
    r = simulate(kind, reads, max(reads) + 1)  # the file ends where the pattern does
    assert r["accuracy"] is not None and r["accuracy"] >= 0.95, r
    assert r["slow"] <= 0.02 * r["reads"] + 10, r  # only the warm-up pays the slow tier
    assert r["daemon"] <= 0.2 * r["reads"], r  # the thinned stream still drives it


@pytest.mark.parametrize("kind", KINDS)
def test_random_reads_do_not_spam(kind: str) -> None:
    rng = random.Random(7)
    r = simulate(kind, [rng.randrange(100_000) for _ in range(3000)], 100_000)
    assert r["fetched"] <= 30, r


def test_windows_stay_inside_params_and_keep_tripwires() -> None:
    ap = AddressPredictor(make_model("markov"), 200, 65536)
    t = 0.0
    windows = []
    for q in range(150):
        t += 0.001
        plan = ap.observe(q, q, t)
        if plan and plan.window:
            windows.append(plan.window)
    pages = [p for w in windows for p, _, _ in w]
    assert pages and max(pages) < 200 and min(pages) >= 0
    assert any(not push for w in windows for _, push, _ in w)  # tripwires exist
    assert all(0.0 < c <= 1.0 for w in windows for _, _, c in w)


# ----------------------------------------------------------------------------- field space
def _camera(n_frames: int, rng_points: bool = False):
    g = np.linspace(-0.005, 0.005, 6)
    block = np.stack(np.meshgrid(g, g, g[:3], indexing="ij"), -1).reshape(-1, 3)
    rng = np.random.default_rng(0)
    for k in range(n_frames):
        if rng_points:
            yield rng.random((block.shape[0], 3)).astype(np.float32)
            continue
        th = 0.3 + k * 2e-5 / 0.3
        centre = np.array([0.5 + 0.3 * np.cos(th), 0.5 + 0.3 * np.sin(th), 0.5 + 0.05 * np.sin(2 * th)])
        yield (block + centre).astype(np.float32)


@pytest.mark.parametrize("kind", KINDS)
def test_field_space_predicts_the_pages_of_a_camera_path(kind: str) -> None:
    layout = FieldLayout(FieldConfig(levels=12, per_level_scale=1.5, log2_table_size=18, page_size=4096))
    fp = FieldPredictor(make_model(kind), layout)
    seen: set[int] = set()
    fetched: set[int] = set()
    early: set[int] = set()  # fetched before the last 10 frames (whose future is not run)
    new_total = missed = 0
    for k, pts in enumerate(_camera(90)):
        entries, _ = hashgrid.corner_entries(layout, pts)
        pages = set(hashgrid.touched_pages(layout, entries).tolist())
        new = pages - seen
        if k >= 10:
            new_total += len(new)
            missed += len(new - fetched)
        seen |= pages
        plan = fp.observe(pts, now=0.03 * k)
        if plan is not None:
            candidates = [p for p in fp.pages(plan)[0].tolist() if p not in seen and p not in fetched]
            fetched.update(candidates[: fp.max_pages])
            if k < 80:
                early.update(candidates[: fp.max_pages])
    assert new_total > 50
    assert missed <= 0.05 * new_total, (missed, new_total)
    assert len(early & seen) / len(early) >= 0.9
    assert fp.stats()["predictions"] >= 80


@pytest.mark.parametrize("kind", KINDS)
def test_field_space_does_not_guess_random_batches(kind: str) -> None:
    layout = FieldLayout(FieldConfig(levels=8, log2_table_size=16, page_size=4096))
    fp = FieldPredictor(make_model(kind), layout)
    plans = [fp.observe(pts, now=0.01 * k) for k, pts in enumerate(_camera(60, rng_points=True))]
    assert sum(p is not None for p in plans) <= 3


# ----------------------------------------------------------------------------- ledger
def test_ledger_counts_useful_late_inferred_and_wasted() -> None:
    released = []
    led = Ledger(ttl_s=10.0, release=lambda page, e: released.append(page))
    for page in range(6):
        led.add(page, Entry("address", page != 5, 1.0, t=0.0, stream=1))
    for page in range(5):
        led.started(page, led.get(page))
    for page in (0, 1, 2):
        led.get(page).state = READY
    led.get(2).pushed = True
    led.used(0)  # read by the daemon after it was fetched
    led.used(3)  # asked for while in flight
    led.used(2, inferred=True)  # skipped over by a reader of the pushed window
    led.used(1, inferred=True)  # not pushed: cannot have been read from the kernel cache
    led.used(5)  # still queued: the demand read came first
    c = led.counts["address"]
    assert (c["issued"], c["useful"], c["late"], c["inferred"], c["cancelled"]) == (5, 3, 1, 1, 1)
    assert led.get(4).state == INFLIGHT
    led.get(4).state = READY
    led.expire(now=100.0, still_cheap=lambda page: True)
    assert c["wasted"] == 2 and not led.entries  # pages 1 and 4 were never used
    assert sorted(released) == [0, 1, 2, 3, 4]
