"""Bounded access histories and the features the predictors learn from (SPEC 5).

Everything here is O(1) per access: fixed-size ring buffers (``collections.deque`` with
``maxlen``), small bounded dictionaries, and numpy work bounded by a point cap.

Two histories:

- :class:`StreamHistory` — address space. One per access *stream* (see
  ``address.py``): the last few page deltas of the stream, as delta *classes*
  (:class:`DeltaVocabulary`), plus stride-consistency features.
- :class:`MotionHistory` — field space. The last few query batches: their centroids,
  a capped prefix of their points, and which motion model (still, constant velocity,
  constant acceleration) explains each batch-to-batch move.
"""
from __future__ import annotations

from collections import deque
import numpy as np

#: label of every delta outside the vocabulary (and of unexplained field-space moves)
OTHER = "other"
#: feature value of a history slot that has not been filled yet
EMPTY = "-"


def delta_label(delta: int) -> str:
    return f"{delta:+d}"


def label_delta(label: str) -> int | None:
    """The page delta a class stands for, or None for OTHER / EMPTY."""
    if label in (OTHER, EMPTY):
        return None
    try:
        return int(label)
    except ValueError:
        return None


class DeltaVocabulary:
    """A bounded set of page-delta classes: the deltas seen at least ``admit`` times.

    At most ``size`` classes; every other delta is :data:`OTHER`. Candidate deltas are
    counted in a dictionary of at most ``candidates`` entries that sheds its singletons
    when full, so a random access stream costs O(1) memory and amortised O(1) time.
    When the vocabulary is full, a class not seen for ``stale_after`` observations makes
    room for a newly frequent delta (labels are the deltas themselves, so a class never
    changes meaning, it only stops being produced).
    """

    def __init__(self, size: int = 16, admit: int = 2, candidates: int = 64, stale_after: int = 20000) -> None:
        self.size = size
        self.admit = admit
        self.candidates = candidates
        self.stale_after = stale_after
        self._classes: dict[int, int] = {}  # delta -> observation tick when last seen
        self._counts: dict[int, int] = {}
        self._tick = 0

    def __contains__(self, delta: int) -> bool:
        return delta in self._classes

    def __len__(self) -> int:
        return len(self._classes)

    def classes(self) -> list[int]:
        return sorted(self._classes)

    def label(self, delta: int) -> str:
        """Class label of a delta without counting it."""
        return delta_label(delta) if delta in self._classes else OTHER

    def observe(self, delta: int) -> str:
        """Count one occurrence of ``delta`` and return its class label."""
        self._tick += 1
        if delta in self._classes:
            self._classes[delta] = self._tick
            return delta_label(delta)
        count = self._counts.get(delta, 0) + 1
        if count >= self.admit and self._make_room():
            self._counts.pop(delta, None)
            self._classes[delta] = self._tick
            return delta_label(delta)
        self._counts[delta] = count
        if len(self._counts) > self.candidates:
            self._counts = {d: c for d, c in self._counts.items() if c > 1}
            if len(self._counts) > self.candidates // 2:
                keep = sorted(self._counts.items(), key=lambda kv: kv[1], reverse=True)[: self.candidates // 2]
                self._counts = dict(keep)
        return OTHER

    def _make_room(self) -> bool:
        if len(self._classes) < self.size:
            return True
        stale, seen = min(self._classes.items(), key=lambda kv: kv[1])
        if self._tick - seen < self.stale_after:
            return False
        del self._classes[stale]
        return True


class StreamHistory:
    """The recent deltas of one address-space stream, and its features.

    ``depth`` delta classes are kept (the features use the last four); ``last_page`` is
    the last page the stream reached, ``ext`` the extent (pages) of its last read.
    """

    __slots__ = ("labels", "deltas", "last_page", "ext", "run", "events")

    K = 4  # delta classes used as features

    def __init__(self, depth: int = 8) -> None:
        self.labels: deque[str] = deque(maxlen=depth)
        self.deltas: deque[int] = deque(maxlen=depth)
        self.last_page = -1
        self.ext = 1
        self.run = 0  # how many times in a row the last class repeated
        self.events = 0

    def copy(self) -> "StreamHistory":
        h = StreamHistory(self.labels.maxlen or 8)
        h.labels.extend(self.labels)
        h.deltas.extend(self.deltas)
        h.last_page, h.ext, h.run, h.events = self.last_page, self.ext, self.run, self.events
        return h

    def start(self, first: int, last: int) -> None:
        self.last_page = last
        self.ext = max(1, last - first + 1)
        self.events += 1

    def push(self, delta: int, label: str, last_page: int, ext: int | None = None) -> None:
        if self.labels and self.labels[-1] == label:
            self.run += 1
        else:
            self.run = 1
        self.labels.append(label)
        self.deltas.append(delta)
        self.last_page = last_page
        if ext is not None:
            self.ext = max(1, ext)
        self.events += 1

    def features(self) -> dict:
        labels = self.labels
        n = len(labels)
        x: dict = {}
        for k in range(self.K):
            x[f"c{k + 1}"] = labels[n - 1 - k] if k < n else EMPTY
        if n:
            last = labels[-1]
            x["same"] = sum(1 for lb in labels if lb == last) / n
            x["fwd"] = sum(1 for d in self.deltas if d > 0) / n
        else:
            x["same"] = 0.0
            x["fwd"] = 0.0
        x["run"] = float(min(self.run, 32))
        x["ext"] = float(min(self.ext, 64))
        return x

    @staticmethod
    def key(x: dict) -> tuple:
        """Hashable form of a feature dict (memoises predictions during a roll-out)."""
        return (x["c1"], x["c2"], x["c3"], x["c4"], x["same"], x["fwd"], x["run"], x["ext"])


# ----------------------------------------------------------------------------- field space

#: motion classes of field space, in the order they are tried
MOTIONS = ("still", "vel", "acc")


class MotionHistory:
    """The last three query batches and the motion that links them.

    A batch is kept as its centroid (float64) and a prefix of at most ``keep`` of its
    points (enough to check that one batch is a rigid shift of the previous one).
    After each batch, :meth:`observe` labels the move from the previous batch with the
    motion model that predicted it (``still`` d=0, ``vel`` d=v, ``acc`` d=2v-v') when the
    batch is a rigid shift within ``tol`` and that model's error is within ``tol``;
    otherwise :data:`OTHER`.
    """

    def __init__(self, dims: int, keep: int = 256, tol: float = 1e-2) -> None:
        self.dims = dims
        self.keep = keep
        self.tol = tol
        self.batches: deque[tuple[np.ndarray, np.ndarray, int]] = deque(maxlen=3)  # (centroid, prefix, n)
        self.labels: deque[str] = deque(maxlen=4)
        self.last_errors: dict[str, float] = {m: 1.0 for m in MOTIONS}
        self.last_rigid = 1.0
        self.count = 0

    def candidates(self) -> dict[str, np.ndarray]:
        """Displacement each motion model predicts for the next batch."""
        if not self.batches:
            return {}
        zero = np.zeros(self.dims)
        out = {"still": zero}
        if len(self.batches) >= 2:
            v = self.batches[-1][0] - self.batches[-2][0]
            out["vel"] = v
            if len(self.batches) >= 3:
                v_prev = self.batches[-2][0] - self.batches[-3][0]
                out["acc"] = 2 * v - v_prev
        return out

    def displacement(self, label: str, k: int) -> np.ndarray | None:
        """Displacement of the batch ``k`` steps ahead under a motion model (None if unknown)."""
        if label == "still" and self.batches:
            return np.zeros(self.dims)
        if label == "vel" and len(self.batches) >= 2:
            return k * (self.batches[-1][0] - self.batches[-2][0])
        if label == "acc" and len(self.batches) >= 3:
            v = self.batches[-1][0] - self.batches[-2][0]
            a = v - (self.batches[-2][0] - self.batches[-3][0])
            return k * v + (k * (k + 1) / 2) * a
        return None

    def observe(self, points: np.ndarray) -> tuple[str | None, float]:
        """Record a batch; returns (label of the move that led to it, its error) or (None, 0)."""
        pts = np.asarray(points, dtype=np.float64)
        n = pts.shape[0]
        centroid = pts.mean(axis=0) if n else np.zeros(self.dims)
        prefix = pts[: self.keep].copy()
        label: str | None = None
        error = 0.0
        if self.batches:
            prev_c, prev_prefix, prev_n = self.batches[-1]
            cands = self.candidates()
            actual = centroid - prev_c
            m = min(len(prefix), len(prev_prefix))
            if prev_n == n and m:
                resid = prefix[:m] - prev_prefix[:m] - actual
                rigid = float(np.sqrt(np.mean(resid * resid)))
            else:
                rigid = float("inf")
            self.last_rigid = rigid
            errors = {k: float(np.linalg.norm(actual - d)) for k, d in cands.items()}
            for k in MOTIONS:
                self.last_errors[k] = errors.get(k, 1.0)
            best = min(errors, key=errors.get)
            error = errors[best] + (rigid if np.isfinite(rigid) else 0.0)
            if np.isfinite(rigid) and rigid <= self.tol and errors[best] <= self.tol:
                label = best
            else:
                label = OTHER
            self.labels.append(label)
        self.batches.append((centroid, prefix, n))
        self.count += 1
        return label, error

    def features(self) -> dict:
        labels = self.labels
        n = len(labels)
        x: dict = {
            "c1": labels[-1] if n >= 1 else EMPTY,
            "c2": labels[-2] if n >= 2 else EMPTY,
        }
        cands = self.candidates()
        v = cands.get("vel")
        speed = float(np.linalg.norm(v)) if v is not None else 0.0
        x["speed"] = float(np.log10(speed + 1e-12))
        acc = cands.get("acc")
        x["turn"] = float(np.linalg.norm(acc - v) / (speed + 1e-12)) if acc is not None and v is not None else 0.0
        x["rigid"] = float(np.log10(min(self.last_rigid, 1.0) + 1e-12))
        for k in MOTIONS:
            x[f"e_{k}"] = float(np.log10(min(self.last_errors[k], 1.0) + 1e-12))
        return x

