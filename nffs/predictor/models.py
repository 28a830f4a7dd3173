"""Online classifiers behind the prefetcher, all with one small interface.

``learn_one(x, y)``, ``predict_one(x)``, ``predict_proba_one(x)`` (river's names) and
``model_bytes()``. ``x`` is a feature dict from ``history.py`` whose keys ``c1``,
``c2``, ... are the last classes (nominal) and the rest numbers; ``y`` is a class label
(a string). Every call is timed: ``learn_us`` / ``predict_us`` are running means.

- :class:`HoeffdingPredictor` — river's ``HoeffdingTreeClassifier`` (or the adaptive
  variant), learning online; leaves predict their majority class with the class
  frequencies as probabilities.
- :class:`MarkovPredictor` — successor counts of the last one or two classes, bounded
  and decayed.
- :class:`NullPredictor` — learns nothing, predicts nothing (``--prefetch none``).
"""
from __future__ import annotations

import sys
import time
from collections import OrderedDict, deque

NOMINAL = ("c1", "c2", "c3", "c4")


class Predictor:
    """Common interface and timing; subclasses implement ``_learn`` and ``_proba``."""

    name = "base"
    ready = True  # False while a lazily built model is not there yet

    def __init__(self) -> None:
        self.learns = 0
        self.predicts = 0
        self._learn_s = 0.0
        self._predict_s = 0.0
        self._learn_max = 0.0
        self._predict_max = 0.0

    # -- interface -----------------------------------------------------------------
    def learn_one(self, x: dict, y: str) -> None:
        t = time.perf_counter()
        self._learn(x, y)
        dt = time.perf_counter() - t
        self._learn_s += dt
        self._learn_max = max(self._learn_max, dt)
        self.learns += 1

    def predict_proba_one(self, x: dict) -> dict[str, float]:
        t = time.perf_counter()
        out = self._proba(x)
        dt = time.perf_counter() - t
        self._predict_s += dt
        self._predict_max = max(self._predict_max, dt)
        self.predicts += 1
        return out

    def predict_one(self, x: dict) -> str | None:
        label, _ = self.best(x)
        return label

    def best(self, x: dict) -> tuple[str | None, float]:
        """The most probable class and its probability (None, 0.0 before any learning)."""
        proba = self.predict_proba_one(x)
        if not proba:
            return None, 0.0
        label = max(proba, key=proba.get)
        return label, float(proba[label])

    def model_bytes(self) -> int:
        return 0

    def stats(self) -> dict:
        return {
            "model": self.name,
            "ready": self.ready,
            "model_bytes": self.model_bytes(),
            "learns": self.learns,
            "predicts": self.predicts,
            "learn_us": round(1e6 * self._learn_s / self.learns, 2) if self.learns else 0.0,
            "predict_us": round(1e6 * self._predict_s / self.predicts, 2) if self.predicts else 0.0,
            "learn_max_us": round(1e6 * self._learn_max, 1),
            "predict_max_us": round(1e6 * self._predict_max, 1),
        }

    # -- to implement --------------------------------------------------------------
    def _learn(self, x: dict, y: str) -> None:
        raise NotImplementedError

    def _proba(self, x: dict) -> dict[str, float]:
        raise NotImplementedError


class NullPredictor(Predictor):
    name = "none"

    def _learn(self, x: dict, y: str) -> None:
        return None

    def _proba(self, x: dict) -> dict[str, float]:
        return {}


class HoeffdingPredictor(Predictor):
    """A streaming Hoeffding tree (river) over the history features.

    ``grace_period`` and ``tau`` are set for fast adaptation: access patterns are nearly
    deterministic, and several history slots (c1..c4) usually explain the next class
    equally well, so the Hoeffding bound alone would refuse to choose between them for
    thousands of samples; ``tau = 1`` breaks such ties at the first grace period.
    ``max_depth`` and ``max_size`` (MiB) bound the tree (river deactivates leaves beyond
    the size). Model size is river's own estimate,
    refreshed at most every ``size_refresh_s`` seconds (it walks the tree).
    """

    def __init__(
        self,
        *,
        adaptive: bool = False,
        grace_period: int = 16,
        delta: float = 1e-4,
        tau: float = 1.0,
        max_depth: int = 8,
        max_size_mib: float = 8.0,
        nominal: tuple[str, ...] = NOMINAL,
        seed: int = 0,
        size_refresh_s: float = 1.0,
        lazy: bool = False,
    ) -> None:
        super().__init__()
        self.adaptive = adaptive
        self._params = dict(
            grace_period=grace_period,
            delta=delta,
            tau=tau,
            max_depth=max_depth,
            leaf_prediction="mc",
            nominal_attributes=list(nominal),
            max_size=max_size_mib,
            memory_estimate_period=20000,
        )
        self._seed = seed
        self.name = "HoeffdingAdaptiveTreeClassifier" if adaptive else "HoeffdingTreeClassifier"
        self.model = None
        #: samples seen before the model exists (lazy: river takes seconds to import)
        self._early: deque = deque(maxlen=512)
        self._size = 0
        self._size_at = -1e9
        self._size_refresh_s = size_refresh_s
        if not lazy:
            self.install(self.build())

    def build(self):
        """A new river tree (imports river; may run in a worker thread)."""
        from river import tree

        if self.adaptive:
            return tree.HoeffdingAdaptiveTreeClassifier(**self._params, seed=self._seed)
        return tree.HoeffdingTreeClassifier(**self._params)

    def install(self, model) -> None:
        """Start using ``model`` and teach it the samples seen while it was being built."""
        self.model = model
        while self._early:
            x, y = self._early.popleft()
            model.learn_one(x, y)

    @property
    def ready(self) -> bool:
        return self.model is not None

    def _learn(self, x: dict, y: str) -> None:
        if self.model is None:
            self._early.append((x, y))
            return
        self.model.learn_one(x, y)

    def _proba(self, x: dict) -> dict[str, float]:
        if self.model is None or not self.learns:
            return {}
        return self.model.predict_proba_one(x)

    def model_bytes(self) -> int:
        if self.model is None:
            return 0
        now = time.monotonic()
        if now - self._size_at >= self._size_refresh_s:
            try:
                self._size = int(self.model._raw_memory_usage)
            except Exception:  # river internals changed: fall back to a shallow size
                self._size = sys.getsizeof(self.model)
            self._size_at = now
        return self._size

    def stats(self) -> dict:
        out = super().stats()
        out["nodes"] = int(getattr(self.model, "n_nodes", 0) or 0)
        out["height"] = int(getattr(self.model, "height", 0) or 0)
        return out


class MarkovPredictor(Predictor):
    """Successor counts: P(next class | last two classes), backing off to the last one.

    Contexts live in an LRU of at most ``max_contexts`` entries, each holding at most
    ``max_successors`` classes; a context's counts are halved once they sum past
    ``halve_at`` so that it follows a changing pattern. A context needs ``min_support``
    observations before it speaks, and its probabilities are ``count / (total + 1)``,
    so that sparse contexts (noise) are not mistaken for certainties.
    """

    name = "markov"

    def __init__(self, *, max_contexts: int = 4096, max_successors: int = 8, halve_at: int = 256, min_support: float = 3.0) -> None:
        super().__init__()
        self.min_support = min_support
        self.max_contexts = max_contexts
        self.max_successors = max_successors
        self.halve_at = halve_at
        self._table: OrderedDict[tuple, dict[str, float]] = OrderedDict()

    @staticmethod
    def _contexts(x: dict) -> tuple[tuple, tuple]:
        c1, c2 = x.get("c1"), x.get("c2")
        return (2, c1, c2), (1, c1)

    def _bump(self, ctx: tuple, y: str) -> None:
        counts = self._table.get(ctx)
        if counts is None:
            counts = self._table[ctx] = {}
            if len(self._table) > self.max_contexts:
                self._table.popitem(last=False)
        else:
            self._table.move_to_end(ctx)
        counts[y] = counts.get(y, 0.0) + 1.0
        if len(counts) > self.max_successors:
            del counts[min(counts, key=counts.get)]
        if sum(counts.values()) > self.halve_at:
            for k in list(counts):
                counts[k] *= 0.5

    def _learn(self, x: dict, y: str) -> None:
        for ctx in self._contexts(x):
            self._bump(ctx, y)

    def _proba(self, x: dict) -> dict[str, float]:
        # a context seen fewer than `min_support` times backs off to the shorter one; the
        # probabilities keep one count of room for "something never seen here"
        for ctx in self._contexts(x):
            counts = self._table.get(ctx)
            if counts:
                total = sum(counts.values())
                if total >= self.min_support:
                    return {k: v / (total + 1.0) for k, v in counts.items()}
        return {}

    def model_bytes(self) -> int:
        # keys (small tuples) + per-context dict + one (str, float) pair per successor
        per_context = 64 + 232
        per_successor = 8 + 24 + 16
        return sum(per_context + per_successor * len(c) for c in self._table.values())


def make_model(kind: str, *, lazy: bool = False) -> Predictor:
    """The predictor for ``--prefetch KIND``: hoeffding, hoeffding-adaptive, markov or none.

    ``lazy``: a Hoeffding tree is built later (``build()`` in a thread, then ``install()``),
    so that importing river does not delay the mount.
    """
    if kind == "hoeffding":
        return HoeffdingPredictor(lazy=lazy)
    if kind in ("hoeffding-adaptive", "adaptive"):
        return HoeffdingPredictor(adaptive=True, lazy=lazy)
    if kind == "markov":
        return MarkovPredictor()
    if kind == "none":
        return NullPredictor()
    raise ValueError(f"unknown predictor {kind!r} (hoeffding, markov, none)")
