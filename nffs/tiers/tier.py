"""One tier at run time: its spec, its root directory, its storage (arena or slabs), counters."""
from __future__ import annotations

import logging
from dataclasses import dataclass

from .arena import MemoryArena
from .homes import SlabHomes
from .pagetable import MemTier
from .spec import TierSpec
from .tierroot import TierRoot

log = logging.getLogger(__name__)


@dataclass
class TierCounters:
    reads: int = 0  # page reads served by this tier (memory: reads of copies; durable: slot reads)
    hits: int = 0  # memory tiers: demand reads answered without a slow tier
    writes: int = 0  # pages written (memory: writes into copies; durable: slots written)
    promotions: int = 0
    demotions: int = 0
    checksum_failures: int = 0
    io_errors: int = 0


class Tier:
    def __init__(self, spec: TierSpec, tier_id: int, root: TierRoot | None, capacity: int | None, page_size: int) -> None:
        self.spec = spec
        self.id = tier_id
        self.name = spec.name
        self.volatile = spec.volatile
        self.latency = spec.latency
        self.root = root
        self.capacity = capacity
        self.page_size = page_size
        self.counters = TierCounters()
        self.arena: MemoryArena | None = None
        self.mem: MemTier | None = None
        self.homes: SlabHomes | None = None
        self.reserved = 0  # durable: pages materialised since the last write-back, homed here
        self.numa_binding: str | None = None
        self.mounted_tmpfs = False
        self.broken: str | None = None  # why a durable tier could not be opened (its pages give EIO)

    @property
    def path(self) -> str:
        if self.root is not None:
            return self.root.path
        return self.spec.path or "(in-process memory)"

    @property
    def pages(self) -> int:
        if self.mem is not None:
            return self.mem.resident
        if self.homes is not None:
            return self.homes.committed + self.reserved
        return 0

    @property
    def dirty(self) -> int:
        return self.mem.dirty if self.mem is not None else 0

    def capacity_pages(self) -> int | None:
        if self.mem is not None:
            # a direct-mapped arena has one slot per page of the field, fewer than the capacity
            cap = self.mem.arena.n_slots
            return cap if self.capacity is None else max(1, self.capacity // self.page_size)
        return None if self.capacity is None else max(1, self.capacity // self.page_size)

    def has_room(self, extra: int = 1) -> bool:
        cap = self.capacity_pages()
        return cap is None or self.pages + extra <= cap

    def available(self) -> bool:
        if self.broken is not None:
            return False
        return self.root is None or self.root.still_here()

    def describe(self) -> dict:
        c = self.counters
        fast = self.mem.fast_hits if self.mem is not None else 0
        cap = self.capacity_pages()
        return {
            "name": self.name,
            "path": self.path,
            "kind": self.spec.kind,
            "volatile": self.volatile,
            "available": self.available(),
            "capacity": None if cap is None else cap * self.page_size,
            "used_bytes": self.pages * self.page_size,
            "pages": self.pages,
            "dirty_pages": self.dirty,
            "numa": self.spec.numa,
            "numa_binding": self.numa_binding,
            "latency_s": self.latency,
            "reads": c.reads + fast,
            "hits": c.hits + fast,
            "writes": c.writes,
            "promotions": c.promotions,
            "demotions": c.demotions,
            "checksum_failures": c.checksum_failures,
            "io_errors": c.io_errors,
        }

    def close(self) -> None:
        if self.arena is not None:
            self.arena.close()
        if self.homes is not None:
            self.homes.close()
        if self.root is not None and not self.volatile:
            self.root.close()  # memory roots are removed (and closed) by the field's close
