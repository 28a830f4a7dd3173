"""I/O classes for slow tiers: demand first, prefetch when demand leaves room, background last.

Each class has its own slots (a trio CapacityLimiter covering the emulated latency and
the worker-thread call), so a demand read never queues behind a prefetch or a
write-back: prefetches are fewer than the demand slots and do not start while more
than a few demand reads are waiting. No polling: waiting prefetches sleep on an event
that the last waiting demand read sets. A prefetch that a demand read joins goes at once:
past the waiting demands, and in a demand slot if the prefetch slots are all taken.
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
        #: prefetches' turns in a worker thread, first come first served (see StoreConfig)
        self._prefetch_threads = trio.CapacityLimiter(max(1, cfg.prefetch_threads))
        #: prefetches waiting for their turn: (cancel scope, urgent) — see `_thread_turn`
        self._turn_waiters: list[tuple[trio.CancelScope, Callable[[], bool] | None]] = []
        self.demand_waiting = 0
        self._room = trio.Event()
        self._room.set()
        #: set (and replaced) when a prefetch slot is given back or a demand joins a
        #: prefetch: prefetches waiting for a slot look again whether they have become urgent
        self._prefetch_wake = trio.Event()
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
            slots = await self._slot(priority, urgent)
            try:
                self.in_flight[priority] += 1
                try:
                    if latency:
                        await trio.sleep(latency)
                    with trio.move_on_after(self.cfg.durable_io_timeout_s) as scope:
                        # a thread stuck in the kernel cannot be interrupted: it is abandoned
                        # and its result ignored (callers must not depend on it having stopped)
                        turn = slots is self._slots[Priority.PREFETCH] and await self._thread_turn(urgent)
                        try:
                            return await trio.to_thread.run_sync(fn, *args, limiter=self._threads,
                                                                 abandon_on_cancel=True)
                        finally:
                            if turn:
                                self._prefetch_threads.release()
                    assert scope.cancelled_caught
                    raise TierTimeout(f"no answer within {self.cfg.durable_io_timeout_s:g} s")
                finally:
                    self.in_flight[priority] -= 1
            finally:
                slots.release()
                if slots is self._slots[Priority.PREFETCH]:
                    self._wake_prefetches()
        finally:
            if demand:
                self.demand_waiting -= 1
                if self.demand_waiting <= self.cfg.prefetch_yield_demand:
                    self._room.set()

    async def _slot(self, priority: Priority, urgent: Callable[[], bool] | None) -> trio.CapacityLimiter:
        """A slot of `priority`'s class (acquired; the caller releases it). A prefetch that a
        demand read joins while it waits for a prefetch slot takes a demand slot instead: the
        demand must not wait behind the prefetches queued before it (1 MiB pages read faster
        than the tier delivers: a late page waited 31 ms for its slot and read, a demand
        miss 9 ms)."""
        slots = self._slots[priority]
        if priority != Priority.PREFETCH or urgent is None:
            await slots.acquire()
            return slots
        while True:
            if urgent():
                demand = self._slots[Priority.DEMAND]
                await demand.acquire()
                return demand
            try:
                slots.acquire_nowait()
                return slots
            except trio.WouldBlock:
                await self._prefetch_wake.wait()

    async def _thread_turn(self, urgent: Callable[[], bool] | None) -> bool:
        """Wait for a prefetch's turn in a worker thread (`prefetch_threads`, first come
        first served); True when taken (the caller gives it back). A prefetch a demand read
        has joined needs no turn: it goes at once, and one that is joined while it waits
        stops waiting (:meth:`demand_joined`) — a demand must not queue behind speculative
        reads."""
        if urgent is not None and urgent():
            return False
        with trio.CancelScope() as scope:
            waiter = (scope, urgent)
            self._turn_waiters.append(waiter)
            try:
                await self._prefetch_threads.acquire()
                return True
            finally:
                self._turn_waiters.remove(waiter)
        return False  # joined by a demand meanwhile

    def _wake_prefetches(self) -> None:
        waiting, self._prefetch_wake = self._prefetch_wake, trio.Event()
        waiting.set()

    def demand_joined(self) -> None:
        """A demand read joined a prefetch in flight: the prefetches waiting for room look
        again whether they have become urgent (the others wait on a fresh event)."""
        if not self._room.is_set():
            waiting, self._room = self._room, trio.Event()
            waiting.set()
        self._wake_prefetches()
        for scope, urgent in self._turn_waiters:
            if urgent is not None and urgent():
                scope.cancel()

    async def cpu(self, fn: Callable[..., T], *args: Any) -> T:
        """CPU-heavy work (hashing, gathers) off the trio thread, outside the I/O classes, at
        nice level `cpu_nice`."""
        return await trio.to_thread.run_sync(run_niced, self.cfg.cpu_nice, fn, *args, limiter=self._threads)

    def queue_depths(self) -> dict[str, int]:
        return {
            "demand_waiting": self.demand_waiting,
            **{f"{p.name.lower()}_in_flight": n for p, n in self.in_flight.items()},
        }
