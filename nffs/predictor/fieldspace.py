"""Field-space prediction: which pages the next ``query`` / ``at/`` / concept batch gathers.

The hash spreads one point's corners over a whole level, so page deltas carry no
signal here. Instead the predictor learns how the *points* move. After every batch,
``history.MotionHistory`` labels the move from the previous batch with the motion
model that explains it — ``still`` (d = 0), ``vel`` (constant velocity, d = v) or
``acc`` (constant acceleration, d = 2v - v') — when the batch is a rigid shift of the
previous one, else ``other``. The model (Hoeffding tree or Markov) learns that label
from the features of the history before the move (last labels, speed, turn, rigidity,
each candidate's last error), and predicts the next one.

The prediction is the last batch shifted by the predicted displacement, for each of
the next ``k`` batches (``k`` covers ``horizon_s`` seconds at the observed batch rate,
at most ``max_steps``: a burst of new pages — the path crossing a coarse cell — is then
fetched several batches ahead). Each batch computes steps 1, 2 and ``k`` only: the steps
in between were the far end of the previous plans. Their corner entries (``hashgrid.corner_entries``) name
exactly the pages those batches would gather (``hashgrid.touched_pages``). Only the
levels whose cells are much larger than the error this motion class has been making
(``err_factor`` × its running error × k) are prefetched: a fine level is worth fetching
only if the prediction lands in the same cells. Work is capped: at most ``max_points``
points over all the steps (an even subsample of the batch beyond that) and
``max_pages`` pages, nearest step first and coarse levels first within a step.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..encoding import hashgrid
from ..encoding.layout import FieldLayout
from .history import MOTIONS, OTHER, MotionHistory
from .models import Predictor


@dataclass
class FieldPlan:
    #: the predicted next batches, nearest first: (points (n, D) float32, levels to fetch)
    steps: list[tuple[np.ndarray, np.ndarray]]
    label: str
    conf: float


class FieldPredictor:
    def __init__(
        self,
        model: Predictor,
        layout: FieldLayout,
        *,
        max_points: int = 16384,
        max_pages: int = 256,
        max_steps: int = 8,
        horizon_s: float = 0.25,
        min_conf: float = 0.5,
        err_factor: float = 8.0,
        tol: float = 1e-2,
    ) -> None:
        self.model = model
        self.layout = layout
        self.max_points = max_points
        self.max_pages = max_pages
        self.max_steps = max_steps
        self.horizon_s = horizon_s
        self.min_conf = min_conf
        self.err_factor = err_factor
        self.motion = MotionHistory(layout.dims, tol=tol)
        self.cell = 1.0 / np.maximum(layout.level_scales.astype(np.float64), 1e-12)
        self.err = {m: 0.0 for m in MOTIONS}
        self.pending_x: dict | None = None
        self.predicted: str | None = None
        self.interval = 0.0  # seconds between batches, EWMA
        self._t_last = 0.0
        self.counters = {"batches": 0, "predictions": 0, "correct": 0, "steps": 0}

    def observe(self, points: np.ndarray, now: float = 0.0) -> FieldPlan | None:
        """Learn from a batch that is being gathered now; plan the next ones."""
        self.counters["batches"] += 1
        if self._t_last and now > self._t_last:
            dt = now - self._t_last
            self.interval = dt if self.interval == 0.0 else 0.8 * self.interval + 0.2 * dt
        self._t_last = now
        label, error = self.motion.observe(points)
        if label is not None:
            if self.pending_x is not None:
                self.model.learn_one(self.pending_x, label)
            if self.predicted is not None and self.predicted == label:
                self.counters["correct"] += 1
            if label != OTHER:
                self.err[label] = error if self.err[label] == 0.0 else 0.7 * self.err[label] + 0.3 * error
        x = self.motion.features()
        self.pending_x = x
        label, p = self.model.best(x)
        self.predicted = label
        if label is None or label == OTHER or p < self.min_conf or points.shape[0] == 0:
            return None
        if self.motion.displacement(label, 1) is None:
            return None
        self.counters["predictions"] += 1
        k_max = self.max_steps
        if self.interval > 0.0:
            k_max = max(1, min(self.max_steps, math.ceil(self.horizon_s / self.interval)))
        pts = np.asarray(points, dtype=np.float64)
        per_step = max(1, self.max_points // k_max)
        if pts.shape[0] > per_step:
            pts = pts[:: -(-pts.shape[0] // per_step)]
        steps = []
        # The batches in between were the far end of earlier plans: only the nearest ones
        # (to correct them) and the new far end are computed each time.
        for k in sorted({1, 2, k_max} if k_max > 2 else set(range(1, k_max + 1))):
            levels = np.flatnonzero(self.cell > self.err_factor * self.err[label] * k)
            if levels.size == 0:
                break
            d = self.motion.displacement(label, k)
            steps.append((np.clip(pts + d, 0.0, 1.0).astype(np.float32), levels))
        if not steps:
            return None
        self.counters["steps"] = len(steps)
        return FieldPlan(steps, label, p)

    def pages(self, plan: FieldPlan) -> tuple[np.ndarray, int]:
        """Pages the planned batches touch, nearest batch first (uint64, unique), and how
        many of them the very next batch touches (they come first); pure numpy.

        Not capped: the caller drops the pages that are already cheap (most of them: the
        next batches overlap the last one) before taking at most ``max_pages``.
        """
        parts = []
        for points, levels in plan.steps:
            entries, _ = hashgrid.corner_entries(self.layout, points)
            if levels.size < entries.shape[0]:
                entries = entries[levels]
            parts.append(hashgrid.touched_pages(self.layout, np.ascontiguousarray(entries)))
        if len(parts) == 1:
            return parts[0], len(parts[0])
        allp = np.concatenate(parts)
        _, first = np.unique(allp, return_index=True)
        return allp[np.sort(first)], len(parts[0])

    def stats(self) -> dict:
        return {
            **self.counters,
            "interval_ms": round(self.interval * 1e3, 3),
            "motion_error": {k: float(f"{v:.3g}") for k, v in self.err.items()},
        }
