"""Rendering of the `stats` JSON as Prometheus text exposition (the `metrics` file)."""
from __future__ import annotations

import re
from typing import Any

_BAD = re.compile(r"[^a-zA-Z0-9_]")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render_metrics(stats: dict[str, Any]) -> str:
    """Numbers become gauges named nffs_<path>; lists of named objects become labels."""
    families: dict[str, list[str]] = {}

    def emit(name: str, labels: dict[str, str], value: float) -> None:
        metric = "nffs_" + _BAD.sub("_", name)
        label_text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
        sample = f"{metric}{{{label_text}}} {value}" if label_text else f"{metric} {value}"
        families.setdefault(metric, []).append(sample)

    def walk(prefix: str, obj: Any, labels: dict[str, str]) -> None:
        if isinstance(obj, bool):
            emit(prefix, labels, 1 if obj else 0)
        elif isinstance(obj, (int, float)):
            emit(prefix, labels, obj)
        elif isinstance(obj, dict):
            for key, value in obj.items():
                walk(f"{prefix}_{key}" if prefix else str(key), value, labels)
        elif isinstance(obj, list):
            for item in obj:
                if isinstance(item, dict) and "name" in item:
                    label_key = prefix.rsplit("_", 1)[-1].rstrip("s") or "item"
                    walk(prefix, {k: v for k, v in item.items() if k != "name"}, {**labels, _BAD.sub("_", label_key): str(item["name"])})

    walk("", stats, {})
    lines: list[str] = []
    for metric, samples in families.items():  # a family's samples must be contiguous
        lines.append(f"# TYPE {metric} gauge")
        lines.extend(samples)
    return "\n".join(lines) + "\n"
