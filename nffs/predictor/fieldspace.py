"""Field-space prediction: which pages the next ``query`` / ``at/`` / concept batch gathers.

The hash spreads one point's corners over a whole level, so page deltas carry no
signal here. Instead the predictor learns how the *points* move. After every batch,
``history.MotionHistory`` labels the move from the previous batch with the motion
model that explains it — ``still`` (d = 0), ``vel`` (constant velocity, d = v) or
``acc`` (constant acceleration, d = 2v - v') — when the batch is a rigid shift of the
previous one, else ``other``. The model (Hoeffding tree or Markov) learns that label
from the features of the history before the move (last labels, speed, turn, rigidity,
each candidate's last error), and predicts the next one.

The prediction is the last batch shifted by the predicted displacement. Its corner
entries (``hashgrid.corner_entries``) name exactly the pages the next batch would
gather (``hashgrid.touched_pages``). Only the levels whose cells are much larger than
the error this motion class has been making (``err_factor`` times its running error)
are prefetched: a fine level is worth fetching only if the prediction lands in the same
cells. Work is capped: at most ``max_points`` points (an even subsample beyond that)
and ``max_pages`` pages, coarse levels first.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..encoding import hashgrid
from ..encoding.layout import FieldLayout
from .history import MOTIONS, OTHER, MotionHistory
from .models import Predictor


@dataclass
class FieldPlan:
    points: np.ndarray  # (n, D) float32, the predicted next batch (possibly subsampled)
    levels: np.ndarray  # levels worth prefetching
    label: str
    conf: float


class FieldPredictor:
    def __init__(
        self,
        model: Predictor,
        layout: FieldLayout,
        *,
        max_points: int = 8192,
        max_pages: int = 1024,
        min_conf: float = 0.5,
        err_factor: float = 8.0,
        tol: float = 1e-2,
    ) -> None:
        self.model = model
        self.layout = layout
        self.max_points = max_points
        self.max_pages = max_pages
        self.min_conf = min_conf
        self.err_factor = err_factor
        self.motion = MotionHistory(layout.dims, tol=tol)
        self.cell = 1.0 / np.maximum(layout.level_scales.astype(np.float64), 1e-12)
        self.err = {m: 0.0 for m in MOTIONS}
        self.pending_x: dict | None = None
        self.predicted: str | None = None
        self.counters = {"batches": 0, "predictions": 0, "correct": 0, "levels": 0}

    def observe(self, points: np.ndarray) -> FieldPlan | None:
        """Learn from a batch that is being gathered now; plan the next one."""
        self.counters["batches"] += 1
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
        cands = self.motion.candidates()
        if label not in cands or p < self.min_conf or points.shape[0] == 0:
            return None
        self.counters["predictions"] += 1
        levels = np.flatnonzero(self.cell > self.err_factor * self.err[label])
        if levels.size == 0:
            return None
        self.counters["levels"] = int(levels.size)
        pts = np.asarray(points, dtype=np.float64)
        if pts.shape[0] > self.max_points:
            pts = pts[:: -(-pts.shape[0] // self.max_points)]
        predicted = np.clip(pts + cands[label], 0.0, 1.0).astype(np.float32)
        return FieldPlan(predicted, levels, label, p)

    def pages(self, plan: FieldPlan) -> np.ndarray:
        """Pages (uint64, sorted, capped) the planned batch touches; pure numpy, thread-safe."""
        entries, _ = hashgrid.corner_entries(self.layout, plan.points)
        if plan.levels.size < entries.shape[0]:
            entries = entries[plan.levels]
        pages = hashgrid.touched_pages(self.layout, np.ascontiguousarray(entries))
        return pages[: self.max_pages]

    def stats(self) -> dict:
        return {
            **self.counters,
            "motion_error": {k: float(f"{v:.3g}") for k, v in self.err.items()},
        }
