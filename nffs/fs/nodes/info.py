"""Read-only documents: `field.json` (static for the mount), `stats` and `metrics` (live).

`stats` and `metrics` are computed when opened and served from that snapshot, so a
reader that splits its reads still gets one consistent document.
"""
from __future__ import annotations

import json
import stat
from typing import Any

import pyfuse3

from .. import inodes as ino
from ..stats import render_metrics
from .base import Handle, MountContext, Node, SnapshotHandle, make_attr

#: what field.json shows of each tier (stable for the life of the mount)
TIER_KEYS = ("name", "path", "kind", "capacity", "numa", "latency_s")


def describe_field(ctx: MountContext) -> dict[str, Any]:
    d = ctx.layout.describe()
    d["per_level"] = d.pop("levels_info")
    d["tiers"] = [{k: t.get(k) for k in TIER_KEYS} for t in ctx.store.describe_tiers()]
    return d


class FieldJsonNode(Node):
    """`field.json`: the settings and derived layout; cached by the kernel (never changes)."""

    keep_cache = True
    direct_io = False

    def __init__(self, ctx: MountContext) -> None:
        super().__init__(ctx, ino.FIELD_JSON)
        self.content = (json.dumps(describe_field(ctx), indent=2) + "\n").encode()

    def getattr(self) -> pyfuse3.EntryAttributes:
        return make_attr(self.ctx, self.inode, stat.S_IFREG | 0o444, len(self.content))

    async def read(self, handle: Handle, off: int, size: int) -> bytes:
        return self.content[off:off + size]


class SnapshotNode(Node):
    """A document rendered at open; size 0 and no caching, like /proc files."""

    def getattr(self) -> pyfuse3.EntryAttributes:
        return make_attr(self.ctx, self.inode, stat.S_IFREG | 0o444, 0, timeout=0)

    def render(self) -> bytes:
        raise NotImplementedError

    async def open(self, flags: int) -> Handle:
        self.check_open(flags)
        return SnapshotHandle(self, flags, self.render())

    async def read(self, handle: Handle, off: int, size: int) -> bytes:
        assert isinstance(handle, SnapshotHandle)
        return handle.content[off:off + size]


class StatsNode(SnapshotNode):
    def __init__(self, ctx: MountContext) -> None:
        super().__init__(ctx, ino.STATS)

    def render(self) -> bytes:
        return (json.dumps(self.ctx.stats(), indent=2) + "\n").encode()


class MetricsNode(SnapshotNode):
    def __init__(self, ctx: MountContext) -> None:
        super().__init__(ctx, ino.METRICS)

    def render(self) -> bytes:
        return render_metrics(self.ctx.stats()).encode()
