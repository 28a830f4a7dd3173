"""Field-space prediction: the motion of query batches as a similarity transform.

The hash spreads one point's corners over the whole table, so page deltas carry no
signal; the points do. A camera re-uses its fan of rays from frame to frame, so two
consecutive batches of the same size correspond point by point, and the motion between
them is the similarity transform ``B ≈ s R A + t`` that Umeyama's method (Kabsch /
Procrustes with scale) fits in closed form: translation (pan), rotation about any
centre (orbit: ``t`` absorbs the centre) and scaling about a point (zoom). When the
batch size changes, the fit falls back to centroids, spreads and principal axes.

The fitted motion is applied again (constant velocity) to extrapolate one or more
frames ahead; the encoding then says exactly which pages the predicted points touch.

How much to trust it is measured, not assumed: each new batch is compared with the
prediction made for it, and the prediction error ``e`` decides per level: level ``l``
is predictable when ``e * scale_l <= field_cell_fraction`` (the error is a small part
of a cell). Fixed ray fans moving smoothly predict every level; samples jittered along
the rays predict only the coarse levels, whose cells are much larger than the jitter;
random batches predict none, and nothing is issued. Coarse levels are a prefix of the
parameter layout, so a truncated layout hashes only them.

Pure computation (numpy, no trio): runs in the learning thread.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field

import numpy as np

from ..arrays import sorted_unique
from ..encoding import hashgrid
from ..encoding.layout import FieldLayout
from .config import PrefetchConfig


@dataclass
class FieldPlan:
    frames: list[np.ndarray] = field(default_factory=list)  # pages per frame ahead, coarse levels first
    #: per frame: hashed now (True), or the pages of a previous plan's prediction of that
    #: frame, whose points came out the same (False: the prefetcher may have applied them then)
    fresh: list[bool] = field(default_factory=list)
    first: int = 0  # the number of frames[0] (batches counted from 1), to tell frames apart
    levels: int = 0  # levels judged predictable
    error: float = 0.0  # measured prediction error of the last frame (field units)
    kind: str = ""  # "rigid" (point-to-point fit) or "moments" (fallback)
    touched: int = 0  # pages the next frame touches in its predictable levels (before the budget)
    #: pages kept in memory at once while a frame is read with the first 1, 2, ... frames of
    #: the plan ahead (FieldPredictor._held): a camera whose frames share most pages holds
    #: about one frame's worth, a fast one a frame's worth per frame ahead
    held: list[int] = field(default_factory=list)
    t_batch: float = 0.0  # when the batch it was made from arrived


def umeyama(a: np.ndarray, b: np.ndarray, with_scale: bool = True) -> tuple[float, np.ndarray, np.ndarray]:
    """Least-squares similarity (s, R, t) with ``b ≈ s * a @ R.T + t`` (Umeyama 1991)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    ma, mb = a.mean(axis=0), b.mean(axis=0)
    ac, bc = a - ma, b - mb
    n, d = a.shape
    cov = bc.T @ ac / n
    u, sig, vt = np.linalg.svd(cov)
    sign = np.ones(d)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[-1] = -1.0
    r = (u * sign) @ vt
    var_a = (ac * ac).sum() / n
    s = float((sig * sign).sum() / var_a) if with_scale and var_a > 0 else 1.0
    t = mb - s * (r @ ma)
    return s, r, t


def apply(s: float, r: np.ndarray, t: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return s * (np.asarray(pts, dtype=np.float64) @ r.T) + t


def _moments(p: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
    c = p.mean(axis=0)
    q = p - c
    spread = float(np.sqrt((q * q).sum(axis=1).mean()))
    if p.shape[0] > p.shape[1]:
        _, _, vt = np.linalg.svd(q[: min(len(q), 4096)], full_matrices=False)
    else:
        vt = np.eye(p.shape[1])
    return c, spread, vt


class FieldPredictor:
    def __init__(self, cfg: PrefetchConfig, layout: FieldLayout, seed: int = 0) -> None:
        self.cfg = cfg
        self.layout = layout
        self.scales = np.array([lv.scale for lv in layout.levels], dtype=np.float64)
        self._prefix: dict[int, FieldLayout] = {}
        self._rng = np.random.default_rng(seed)
        self.prev: np.ndarray | None = None
        self.motion: tuple[float, np.ndarray, np.ndarray] | None = None
        self.expected: np.ndarray | None = None  # prediction for the next batch (same N)
        self.expected_moments: tuple | None = None
        self.counters = {"batches": 0, "fits": 0, "plans": 0, "levels_sum": 0, "skipped_small": 0, "frames_reused": 0}
        self.last_error = float("inf")
        self.predict_s = 0.0
        self.predicts = 0
        #: how long a plan takes to land (the prefetcher measures it, on the trio thread)
        self.reaction_s = 0.0
        #: time between batches (exponential average), and the last batch's arrival
        self.period_s = 0.0
        self._last_t = 0.0
        self.frames_ahead = cfg.field_frames_ahead
        #: frames predicted so far, by number (batches counted from 1): the predicted points,
        #: levels, pages and pages touched. A steady camera predicts frame j again at every
        #: batch until it comes; when the points come out (nearly) the same, so do the pages:
        #: reused, not hashed again. A plan then hashes two frames, whatever its depth: the
        #: next one (always afresh: the most urgent, and the one that corrects a drift) and
        #: its new horizon
        self._frame_no = 0
        self._predicted: dict[int, tuple[np.ndarray, int, np.ndarray, int]] = {}
        self._finest_scale = float(self.scales.max()) if self.scales.size else 1.0

    def _frames_ahead(self) -> int:
        """Frames to predict: enough that a plan made now lands before the frame it is for
        starts — its reaction time in frames, plus one — within the configured bounds."""
        cfg = self.cfg
        if self.period_s <= 0 or self.reaction_s <= 0:
            return cfg.field_frames_ahead
        need = 1 + math.ceil(self.reaction_s / self.period_s)
        return max(cfg.field_frames_ahead, min(cfg.field_frames_ahead_max, need))

    def _layout_prefix(self, k: int) -> FieldLayout:
        if k >= self.layout.n_levels:
            return self.layout
        lay = self._prefix.get(k)
        if lay is None:
            lay = FieldLayout(dataclasses.replace(self.layout.cfg, levels=k))
            self._prefix[k] = lay
        return lay

    def predictable_levels(self, error: float) -> int:
        """Levels (a prefix) whose cells are large against the prediction error."""
        ok = error * self.scales <= self.cfg.field_cell_fraction
        return int(np.argmin(ok)) if not ok.all() else int(ok.size)

    def _sample(self, pts: np.ndarray) -> np.ndarray:
        n = pts.shape[0]
        if n <= self.cfg.field_max_points:
            return pts
        idx = np.sort(self._rng.choice(n, self.cfg.field_max_points, replace=False))
        return pts[idx]

    def observe(self, points: np.ndarray, now: float | None = None) -> FieldPlan | None:
        """A batch that arrived at `now` (monotonic): the plan for the next frames, or None."""
        t0 = time.perf_counter()
        if now is not None:
            if self._last_t and now > self._last_t:
                gap = now - self._last_t
                if self.period_s and gap >= self.period_s:
                    # slower frames move it up slowly, a pause (or a one-off stall) counting as a
                    # few periods at most...
                    self.period_s = 0.75 * self.period_s + 0.25 * min(gap, self.cfg.field_pause_periods * self.period_s)
                else:
                    # ...a faster frame at once: a camera speeds up as its pages arrive ahead of
                    # it (each gap holds the frame's own wait), and a lead sized for its slow
                    # first frames left the next ten frames waiting on their pages
                    self.period_s = gap
            self._last_t = now
        try:
            plan = self._observe(points)
            if plan is not None and now is not None:
                plan.t_batch = now
            return plan
        finally:
            self.predict_s += time.perf_counter() - t0
            self.predicts += 1

    def _observe(self, points: np.ndarray) -> FieldPlan | None:
        cfg = self.cfg
        pts = np.asarray(points, dtype=np.float64).reshape(-1, self.layout.dims)
        self.counters["batches"] += 1
        if pts.shape[0] < cfg.field_min_points:
            self.counters["skipped_small"] += 1
            return None
        self._frame_no += 1
        now_no = self._frame_no
        # 1. how good was the prediction made for this batch?
        error = float("inf")
        if self.expected is not None and self.expected.shape == pts.shape:
            error = float(np.sqrt(((pts - self.expected) ** 2).sum(axis=1).mean()))
        elif self.expected_moments is not None:
            c, spread, _ = _moments(pts)
            ec, espread = self.expected_moments
            error = float(np.linalg.norm(c - ec) + abs(spread - espread))
        self.last_error = error
        # 2. fit the motion from the previous batch
        prev = self.prev
        self.prev = pts
        kind = ""
        if prev is not None and prev.shape == pts.shape:
            self.motion = umeyama(prev, pts)
            kind = "rigid"
        elif prev is not None:
            ca, sa, va = _moments(prev)
            cb, sb, vb = _moments(pts)
            # rotation taking a's principal axes to b's, each axis sign chosen to turn least
            signs = np.sign((va * vb).sum(axis=1))
            signs[signs == 0] = 1.0
            r = (vb * signs[:, None]).T @ va
            s = sb / sa if sa > 0 else 1.0
            self.motion = (s, r, cb - s * (r @ ca))
            kind = "moments"
        else:
            self.motion = None
        self.expected = self.expected_moments = None
        if self.motion is None:
            return None
        self.counters["fits"] += 1
        s, r, t = self.motion
        # 3. extrapolate; remember the next-frame prediction to measure it
        frames: list[np.ndarray] = []
        fresh: list[bool] = []
        cur = pts
        plan = FieldPlan(error=error, kind=kind)
        self.frames_ahead = self._frames_ahead()
        before = self._predicted
        self._predicted = {}
        same = cfg.field_reuse_cells / self._finest_scale  # "the same points", in field units
        for f in range(1, self.frames_ahead + 1):
            cur = apply(s, r, t, cur)
            if f == 1:
                if kind == "rigid":
                    self.expected = cur
                else:
                    c, spread, _ = _moments(cur)
                    self.expected_moments = (c, spread)
            k = self.predictable_levels(error * f)
            if f == 1:
                plan.levels = k
            if k == 0 or not np.isfinite(error):
                break
            old = before.get(now_no + f) if f > 1 else None  # the next frame: always hashed afresh
            if old is not None and old[1] == k and old[0].shape == cur.shape and float(np.abs(old[0] - cur).max()) <= same:
                # compared with the points that were hashed, not the latest prediction: drift
                # does not add up over the plans that reuse them
                self._predicted[now_no + f] = old
                pages, touched = old[2], old[3]
                fresh.append(False)
                self.counters["frames_reused"] += 1
            else:
                pages, touched = self._pages_of(cur, k)
                fresh.append(True)
                self._predicted[now_no + f] = (cur, k, pages, touched)
            if f == 1:
                plan.touched = touched
            frames.append(pages)
        if not frames:
            return None
        plan.held = self._held(frames, plan.touched)
        self.counters["plans"] += 1
        self.counters["levels_sum"] += plan.levels
        plan.frames = frames
        plan.fresh = fresh
        plan.first = now_no + 1
        return plan

    @staticmethod
    def _held(frames: list[np.ndarray], touched: int) -> list[int]:
        """Pages held at once by reading one frame with the first 1, 2, ... of ``frames``
        planned ahead (sorted page arrays, the first one ``touched`` pages in all): each
        frame adds its pages that the one before it lacks, and the frame being read those it
        has and the next one lacks — about as many as come new between two frames ahead
        (unknown with a single frame: not counted)."""
        news = []
        for before, after in zip(frames, frames[1:]):
            if before.size and after.size:
                at = np.searchsorted(before, after).clip(max=before.size - 1)
                news.append(int(np.count_nonzero(before[at] != after)))
            else:
                news.append(int(after.size))
        step_new = news[0] if news else 0
        held = [touched + step_new]
        for new in news:
            held.append(held[-1] + new)
        return held

    def _pages_of(self, pts: np.ndarray, k: int) -> tuple[np.ndarray, int]:
        """Pages the points touch in levels < k, coarse levels first, at most the page budget;
        and how many they touch in all."""
        lay = self._layout_prefix(k)
        sample = self._sample(np.clip(pts, 0.0, 1.0).astype(np.float32))
        # a camera's frame is tens of points: the all-levels path costs a fifth of the level
        # loop here (it falls back to the loop for big samples itself)
        entries, _ = hashgrid.corner_entries_small(lay, sample)
        budget = self.cfg.field_page_budget
        row = self.layout.features * self.layout.itemsize
        shift = np.uint64(self.layout.page_size.bit_length() - 1)
        # levels are a prefix of the layout, coarse first: entries (L, C, N) flattened in that
        # order put coarse pages first
        flat = ((entries.reshape(-1) * np.uint64(row)) >> shift).astype(np.int64)
        uniq = sorted_unique(flat)
        # ascending: level offsets ascend, so coarse levels come first — over the budget,
        # its first pages are the coarse levels' (and some of the level it cuts), as they
        # are if the prefetcher's own budget cuts the frame. (A first-occurrence order, by
        # np.unique's stable argsort, cost two thirds of a 144-point batch's prediction.)
        return uniq[:budget], int(uniq.size)

    def point_pages(self, points: np.ndarray) -> np.ndarray:
        """Every page the points touch (all levels): hints."""
        entries, _ = hashgrid.corner_entries(self.layout, np.asarray(points, dtype=np.float32).reshape(-1, self.layout.dims))
        return hashgrid.touched_pages(self.layout, entries).astype(np.int64)

    def stats(self) -> dict:
        b = self.counters
        return {
            **b,
            "mean_levels": round(b["levels_sum"] / b["plans"], 2) if b["plans"] else 0.0,
            "last_error": None if not np.isfinite(self.last_error) else round(self.last_error, 6),
            "predict_us": round(1e6 * self.predict_s / self.predicts, 2) if self.predicts else 0.0,
            "frames_ahead": self.frames_ahead,
            "reaction_ms": round(1e3 * self.reaction_s, 2),
            "period_ms": round(1e3 * self.period_s, 2),
        }
