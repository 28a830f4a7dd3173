"""I/O classes for slow tiers: demand first, prefetch when demand leaves room, background last.

Each class has its own slots (a trio CapacityLimiter covering the emulated latency and
the worker-thread call), so a demand read never queues behind a prefetch or a
write-back: prefetches are fewer than the demand slots and do not start while more
than a few demand reads are waiting. No polling: waiting prefetches sleep on an event
that the last waiting demand read sets.
"""
from __future__ import annotations

from typing import Any, Callable, TypeVar

import trio

from ..errors import TierTimeout
from ..workers import run_niced
from .config import StoreConfig
from .port import Priority

T = TypeVar("T")


class IOScheduler:
    def __init__(self, cfg: StoreConfig) -> None:
        self.cfg = cfg
        self._slots = {
            Priority.DEMAND: trio.CapacityLimiter(cfg.demand_threads),
            Priority.PREFETCH: trio.CapacityLimiter(cfg.prefetch_slots),
            Priority.BACKGROUND: trio.CapacityLimiter(cfg.background_threads),
        }
        self._threads = trio.CapacityLimiter(cfg.demand_threads + cfg.prefetch_slots + cfg.background_threads)
        self.demand_waiting = 0
        self._room = trio.Event()
        self._room.set()
        self.in_flight = {p: 0 for p in Priority}

    async def run(self, priority: Priority, fn: Callable[..., T], *args: Any, latency: float = 0.0,
                  urgent: Callable[[], bool] | None = None) -> T:
        """`fn(*args)` in a worker thread in `priority`'s class, after the tier's `latency`.

        A prefetch waits while demand reads wait, unless `urgent()` says a demand read has
        joined it meanwhile (see :meth:`demand_joined`): a demand must not wait behind the
        other demands for a prefetch that holds its page."""
        if priority == Priority.PREFETCH:
            while self.demand_waiting > self.cfg.prefetch_yield_demand and not (urgent is not None and urgent()):
                await self._room.wait()
        demand = priority == Priority.DEMAND
        if demand:
            self.demand_waiting += 1
            if self.demand_waiting > self.cfg.prefetch_yield_demand and self._room.is_set():
                self._room = trio.Event()
        try:
            async with self._slots[priority]:
                self.in_flight[priority] += 1
                try:
                    if latency:
                        await trio.sleep(latency)
                    with trio.move_on_after(self.cfg.durable_io_timeout_s) as scope:
                        # a thread stuck in the kernel cannot be interrupted: it is abandoned
                        # and its result ignored (callers must not depend on it having stopped)
                        return await trio.to_thread.run_sync(fn, *args, limiter=self._threads, abandon_on_cancel=True)
                    assert scope.cancelled_caught
                    raise TierTimeout(f"no answer within {self.cfg.durable_io_timeout_s:g} s")
                finally:
                    self.in_flight[priority] -= 1
        finally:
            if demand:
                self.demand_waiting -= 1
                if self.demand_waiting <= self.cfg.prefetch_yield_demand:
                    self._room.set()

    def demand_joined(self) -> None:
        """A demand read joined a prefetch in flight: the prefetches waiting for room look
        again whether they have become urgent (the others wait on a fresh event)."""
        if not self._room.is_set():
            waiting, self._room = self._room, trio.Event()
            waiting.set()

    async def cpu(self, fn: Callable[..., T], *args: Any) -> T:
        """CPU-heavy work (hashing, gathers) off the trio thread, outside the I/O classes, at
        nice level `cpu_nice`."""
        return await trio.to_thread.run_sync(run_niced, self.cfg.cpu_nice, fn, *args, limiter=self._threads)

    def queue_depths(self) -> dict[str, int]:
        return {
            "demand_waiting": self.demand_waiting,
            **{f"{p.name.lower()}_in_flight": n for p, n in self.in_flight.items()},
        }
