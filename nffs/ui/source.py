"""Reading a mount's `stats` and `field.json` without letting a wedged mount hang the caller."""
from __future__ import annotations

import json
import os
import threading
from typing import Any


class MountUnavailable(RuntimeError):
    """The mount does not answer (or is not an nffs mount)."""


def _read_json(path: str, timeout: float) -> Any:
    result: dict[str, Any] = {}

    def work() -> None:
        try:
            with open(path, "rb") as f:
                result["data"] = json.loads(f.read())
        except (OSError, ValueError) as exc:
            result["error"] = exc

    t = threading.Thread(target=work, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise MountUnavailable(f"{path}: no answer within {timeout:g}s")
    if "error" in result:
        raise MountUnavailable(f"{path}: {result['error']}")
    return result["data"]


def read_stats(mountpoint: str, timeout: float = 10.0, with_field: bool = True) -> dict[str, Any]:
    """The mount's statistics; `field` filled from field.json when the daemon leaves it out."""
    stats = _read_json(os.path.join(mountpoint, "stats"), timeout)
    if not isinstance(stats, dict):
        raise MountUnavailable(f"{mountpoint}/stats is not a JSON object")
    stats.setdefault("mounted", True)
    if with_field and not isinstance(stats.get("field"), dict):
        try:
            info = _read_json(os.path.join(mountpoint, "field.json"), timeout)
        except MountUnavailable:
            info = None
        if isinstance(info, dict):
            stats["field"] = {k: v for k, v in info.items() if not isinstance(v, (list, dict))}
    return stats


def read_field_json(mountpoint: str, timeout: float = 10.0) -> dict[str, Any]:
    data = _read_json(os.path.join(mountpoint, "field.json"), timeout)
    if not isinstance(data, dict):
        raise MountUnavailable(f"{mountpoint}/field.json is not a JSON object")
    return data
