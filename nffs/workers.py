"""Helpers for work that runs in worker threads (shared by the field and the storage core)."""
from __future__ import annotations

import os
import threading
from typing import Any, Callable, TypeVar

T = TypeVar("T")


def run_niced(nice: int, fn: Callable[..., T], *args: Any) -> T:
    """Run `fn` in the calling (worker) thread at nice level `nice` or lower priority (Linux:
    a thread is a task with its own nice value), then restore the thread's level: long
    numpy work must not keep the FUSE thread waiting for a core. Without CAP_SYS_NICE the
    restore fails and the worker thread stays at `nice` (never lower: the level is absolute,
    so reuse of the thread does not push it further down), which suits a worker."""
    if nice <= 0:
        return fn(*args)
    tid = threading.get_native_id()
    try:
        before = os.getpriority(os.PRIO_PROCESS, tid)
        lowered = before < nice
        if lowered:
            os.setpriority(os.PRIO_PROCESS, tid, nice)
    except (OSError, AttributeError):
        lowered = False
    if not lowered:
        return fn(*args)
    try:
        return fn(*args)
    finally:
        try:
            os.setpriority(os.PRIO_PROCESS, tid, before)
        except OSError:
            pass
