"""The `metrics` file: the `stats` dictionary in the Prometheus text exposition format.

The FUSE layer calls `render_metrics(stats)`; the rendering (names, types, labels, the
one place that reads the stats keys) lives in `nffs.ui.metrics` so that the file and
the HTTP endpoint (`--metrics-listen`) can never disagree.
"""
from __future__ import annotations

from typing import Any

from ..ui.metrics import render_metrics as _render


def render_metrics(stats: dict[str, Any]) -> str:
    """Prometheus text of one statistics snapshot; never raises on missing keys."""
    return _render(stats)
