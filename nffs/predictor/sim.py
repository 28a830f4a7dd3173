"""A FUSE-free simulator: a fake page store behind the typed port, a fake kernel page cache,
and the workload generators shared by the unit tests and ``scripts/prefetch_suite.py --sim``.

`FakePort` implements :class:`nffs.tiers.port.PrefetchPort`: a dict of page versions, a
memory tier (LRU of ``memory_pages``), a slow tier of ``latency`` seconds per page read
(concurrent reads overlap), demand reads that never queue behind prefetches, joins of a
demand read with a prefetch in flight, and a slow-read counter. `SimKernel` plays the
kernel: a read whose pages are all cached (pushed or read before) never reaches the
"daemon"; otherwise the port sees a READ event with the request's offset and size
(4 KiB-aligned, as the kernel asks FUSE).
"""
from __future__ import annotations

import math
import time
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import trio

from ..tiers.port import AccessEvent, AccessKind, FetchResult, Priority

KPAGE = 4096


class FakePort:
    def __init__(self, n_pages: int, page_size: int, *, latency: float = 0.005, memory_pages: int = 1 << 30,
                 prefetch_slots: int = 8) -> None:
        self.page_size = page_size
        self.n_pages = n_pages
        self.latency = latency
        self.memory_pages = memory_pages
        self.memory: OrderedDict[int, None] = OrderedDict()
        self.versions: dict[int, int] = {}
        self.listeners = []
        self.memory_read_listeners = []
        self.memory_gather_listeners = []
        self.read_log: list[int] | None = None  # as the store's `log_memory_reads`
        self.read_log_watched: dict = {}
        self.logged_reads = 0
        self.inflight: dict[int, trio.Event] = {}
        self.slow_reads = 0
        self.demand_slow_reads = 0
        self.prefetch_slow_reads = 0
        self.prefetch_calls = 0  # fetch / fetch_many calls: slots of the PREFETCH class taken
        self._waiting = 0
        self._slots = trio.CapacityLimiter(prefetch_slots)
        self.heat: dict[int, float] = {}

    # -- content: a page's bytes are a function of (page, version) ------------------------
    def content(self, page: int) -> bytes:
        v = self.versions.get(page, 0)
        return bytes([(page * 7 + v * 13) % 251]) * self.page_size

    def write(self, page: int) -> None:
        self.versions[page] = self.versions.get(page, 0) + 1
        self._emit(AccessEvent(AccessKind.WRITE, np.array([page]), np.zeros(1, bool), page * self.page_size, 1, time.monotonic()))

    # -- the port -------------------------------------------------------------------------
    def add_listener(self, listener, on_memory_read=None, on_memory_gather=None) -> None:
        """As the store does: reads served from memory go to `on_memory_read` (here: the
        one-page ones; the simulated kernel's misses may span pages that are not contiguous).
        Simulated gathers are all events (`demand`): `on_memory_gather` is only kept (tests
        call it)."""
        self.listeners.append(listener)
        self.memory_gather_listeners.append(on_memory_gather)
        self.memory_read_listeners.append(on_memory_read or (
            lambda page, offset, size, reader: listener(AccessEvent(AccessKind.READ, [page], [False], offset, size,
                                                                    time.monotonic(), reader=reader))))

    def log_memory_reads(self, log, watched=None) -> None:
        self.read_log = log
        self.read_log_watched = watched if watched is not None else {}

    def logged_memory_reads(self) -> int:
        return self.logged_reads

    def memory_capacity_pages(self) -> int:
        return self.memory_pages

    def _emit(self, ev: AccessEvent) -> None:
        for listener in self.listeners:
            listener(ev)

    def is_cheap(self, page: int) -> bool:
        return int(page) in self.memory

    def cheap_mask(self, pages: np.ndarray) -> np.ndarray:
        return np.array([int(p) in self.memory for p in np.asarray(pages).tolist()], dtype=bool)

    def _admit(self, page: int) -> None:
        self.memory[page] = None
        self.memory.move_to_end(page)
        while len(self.memory) > self.memory_pages:
            self.memory.popitem(last=False)

    async def _load(self, page: int, demand: bool) -> bool:
        """Bring a page to memory; True if it came from the slow tier (not joined)."""
        if page in self.memory:
            self.memory.move_to_end(page)
            return False
        ev = self.inflight.get(page)
        if ev is not None:
            await ev.wait()
            return False
        ev = self.inflight[page] = trio.Event()
        try:
            await trio.sleep(self.latency)
            self.slow_reads += 1
            if demand:
                self.demand_slow_reads += 1
            else:
                self.prefetch_slow_reads += 1
            self._admit(page)
        finally:
            del self.inflight[page]
            ev.set()
        return True

    async def fetch(self, page: int, priority: Priority = Priority.PREFETCH) -> FetchResult:
        page = int(page)
        joined = page in self.inflight
        version = self.versions.get(page, 0)
        self.prefetch_calls += 1
        async with self._slots:
            slow = await self._load(page, demand=False)
        return FetchResult(page, self.content(page), version, slow, joined)

    async def fetch_many(self, pages: list[int], priority: Priority = Priority.PREFETCH) -> list[FetchResult]:
        """A run of pages in one slot: one latency for all (one read per home tier)."""
        out: list = [None] * len(pages)
        self.prefetch_calls += 1

        async def one(i: int, page: int) -> None:
            joined = page in self.inflight
            version = self.versions.get(page, 0)
            slow = await self._load(page, demand=False)
            out[i] = FetchResult(page, self.content(page), version, slow, joined)

        async with self._slots:
            async with trio.open_nursery() as nursery:
                for i, page in enumerate(pages):
                    nursery.start_soon(one, i, int(page))
        return out

    def page_version(self, page: int) -> int:
        return self.versions.get(int(page), 0)

    def lend_heat(self, page: int, amount: float) -> None:
        self.heat[page] = self.heat.get(page, 0.0) + amount

    def demand_waiting(self) -> int:
        return self._waiting

    def slow_tier_reads(self) -> int:
        return self.slow_reads

    # -- demand (what the daemon would do) ------------------------------------------------
    async def demand(self, pages: list[int], kind: AccessKind, offset: int = 0, size: int = 0, reader: int = 0) -> None:
        slow = [int(p) not in self.memory for p in pages]
        t0 = time.monotonic()
        announced = kind is AccessKind.READ and any(slow)
        if announced:  # as the store does: a read that will wait is told as it starts
            self._emit(AccessEvent(AccessKind.MISS, np.asarray(pages, dtype=np.int64), np.array(slow, dtype=bool),
                                   offset, size, t0, reader=reader))
        self._waiting += 1
        try:
            async with trio.open_nursery() as n:
                for p in pages:
                    n.start_soon(self._load, int(p), True)
        finally:
            self._waiting -= 1
        if kind is AccessKind.READ and len(pages) == 1 and not slow[0]:
            if self.read_log is not None and int(pages[0]) not in self.read_log_watched:
                self.read_log.append(int(pages[0]))
                self.logged_reads += 1
                return
            for on_memory_read in self.memory_read_listeners:
                on_memory_read(int(pages[0]), offset, size, reader)
            return
        self._emit(AccessEvent(kind, np.asarray(pages, dtype=np.int64), np.array(slow, dtype=bool), offset, size, t0,
                               time.monotonic(), announced, reader))


class SimKernel:
    """The kernel page cache in front of the fake daemon (nffs-page granularity, LRU; a
    marker page pushed with a hole is cached but for the hole's 4 KiB pages)."""

    def __init__(self, port: FakePort, capacity_pages: int = 1 << 30) -> None:
        self.port = port
        self.cached: OrderedDict[int, int] = OrderedDict()  # page -> version held
        self.holes: dict[int, tuple[int, int]] = {}  # cached page -> (start, end) bytes not held
        self.capacity = capacity_pages
        self.daemon_reads = 0
        self.stale = 0

    def _add(self, page: int, version: int) -> None:
        self.cached[page] = version
        self.cached.move_to_end(page)
        while len(self.cached) > self.capacity:
            old, _ = self.cached.popitem(last=False)
            self.holes.pop(old, None)

    async def push_pages(self, pages: list[tuple[int, bytes, tuple[int, int] | None]]) -> None:
        for page, data, hole in pages:
            await self.push(page, data, hole)

    async def push(self, page: int, data: bytes, hole: tuple[int, int] | None = None) -> None:
        # data encodes the version it was read at; find it back for the staleness check
        version = next((v for v in range(0, 1 + self.port.versions.get(page, 0))
                        if bytes([(page * 7 + v * 13) % 251]) == data[:1]), -1)
        had_page = page in self.cached and page not in self.holes
        self._add(page, version)
        if hole is None or had_page:  # a hole in a page the kernel holds whole stays filled
            self.holes.pop(page, None)
        else:
            self.holes[page] = hole

    def invalidate(self, page: int) -> None:
        self.cached.pop(page, None)
        self.holes.pop(page, None)

    async def read(self, offset: int, size: int) -> float:
        """One pread; returns its latency in seconds."""
        t0 = time.perf_counter()
        ps = self.port.page_size
        lo = offset // KPAGE * KPAGE
        hi = -(-(offset + size) // KPAGE) * KPAGE
        pages = list(range(lo // ps, (hi - 1) // ps + 1))
        missing = []
        parts = []  # the bytes the kernel asks the daemon for: uncached pages, holes read
        for p in pages:
            base = p * ps
            if p not in self.cached:
                missing.append(p)
                parts.append((max(lo, base), min(hi, base + ps)))
                continue
            hole = self.holes.get(p)
            if hole is not None and lo < base + hole[1] and hi > base + hole[0]:
                missing.append(p)
                parts.append((max(lo, base + hole[0]), min(hi, base + hole[1])))
                if base + hole[0] <= lo and hi <= base + hole[1]:
                    continue  # the hole alone: no pushed byte read
            if self.cached[p] != self.port.versions.get(p, 0):
                self.stale += 1
            self.cached.move_to_end(p)
        if missing:
            self.daemon_reads += 1
            a = min(x for x, _ in parts)
            b = max(y for _, y in parts)
            await self.port.demand(missing, AccessKind.READ, a, b - a)
            for p in missing:
                if self.holes.pop(p, None) is not None:
                    self.cached.move_to_end(p)  # the hole filled; the rest is what was pushed
                else:
                    self._add(p, self.port.versions.get(p, 0))
        return time.perf_counter() - t0


# ---------------------------------------------------------------------------- workloads
def address_offsets(kind: str, rng: np.random.Generator, size: int, n: int, *, read: int = 4096,
                    stride: int | None = None, readers: int = 2) -> list[int]:
    """Byte offsets of one reader (or interleaved readers) of a file of ``size`` bytes."""
    if kind == "seq":
        return [i * read for i in range(min(n, size // read))]
    if kind == "back":
        top = size // read - 1
        return [(top - i) * read for i in range(min(n, size // read))]
    if kind == "stride":
        stride = stride or read * 3
        start = int(rng.integers(0, max(1, size // 8))) // KPAGE * KPAGE
        return [start + i * stride for i in range(n) if start + i * stride + read <= size]
    if kind == "alternating":  # two strides in turn: no majority delta, a clear successor rule
        a, b = (stride or 3 * read), 5 * read + 4096
        out, off = [], 0
        for i in range(n):
            if off + read > size:
                break
            out.append(off)
            off += a if i % 2 else b
        return out
    if kind == "interleaved":
        span = size // readers
        per = n // readers
        starts = [r * span for r in range(readers)]
        out = []
        for i in range(per):
            for r in range(readers):
                o = starts[r] + i * read
                if o + read <= size:
                    out.append(o)
        return out
    if kind == "random":
        return (rng.integers(0, size // read, n) * read).tolist()
    if kind.startswith("trace:"):  # trace:PATH — a block trace's reads (scripts/replay_trace.py mapping)
        import csv
        import gzip
        import io

        path = kind.split(":", 1)[1]
        out = []
        with (gzip.open if path.endswith(".gz") else open)(path, "rb") as raw:
            for row in csv.DictReader(io.TextIOWrapper(raw, encoding="ascii")):
                if row["op"].strip() != "28":
                    continue
                out.append((int(row["lbn"]) * 512) % max(1, size - read) // 4096 * 4096)
                if len(out) >= n:
                    break
        return out
    if kind == "zipf":
        ranks = rng.zipf(1.2, n) % (size // read)
        perm = rng.permutation(size // read)
        return (perm[ranks] * read).tolist()
    raise ValueError(kind)


@dataclass
class Camera:
    """A fan of rays with samples along them, moved by a similarity per frame."""

    motion: str  # translate | orbit | zoom
    rays: int = 64
    samples: int = 4
    jitter: bool = False
    speed: float = 1.0  # motion per frame, in units of the finest... (see frames())
    seed: int = 0

    def frames(self, n: int, dims: int = 3) -> list[np.ndarray]:
        rng = np.random.default_rng(self.seed)
        side = int(math.sqrt(self.rays))
        u, v = np.meshgrid(np.linspace(-0.3, 0.3, side), np.linspace(-0.3, 0.3, side))
        dirs = np.stack([u.ravel(), v.ravel(), np.ones(side * side)], axis=1)
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        near, far = 0.05, 0.35
        t_base = near + (far - near) * (np.arange(self.samples) + 0.5) / self.samples
        centre = np.array([0.5, 0.5, 0.5])
        out = []
        for k in range(n):
            # ``speed`` is in units of about a tenth of the finest cell of a 2^11-resolution level
            if self.motion == "translate":
                origin = np.array([0.2, 0.2, 0.1]) + k * self.speed * 5e-5 * np.array([1.0, 0.6, 0.3])
                rot = np.eye(3)
                scale = 1.0
            elif self.motion == "orbit":
                a = k * self.speed * 1.5e-4
                rot = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
                origin = centre + rot @ np.array([-0.3, 0.0, -0.1])
                scale = 1.0
            else:  # zoom about the centre
                rot = np.eye(3)
                scale = (1.0 - 1.5e-4 * self.speed) ** k
                origin = centre + scale * np.array([-0.25, -0.25, -0.3])
            t = np.broadcast_to(t_base, (side * side, self.samples)).copy()
            if self.jitter:
                t += rng.uniform(-0.5, 0.5, t.shape) * (far - near) / self.samples
            local = dirs[:, None, :] * t[..., None]  # (R, S, 3) in camera frame
            pts = origin + scale * (local.reshape(-1, 3) @ rot.T)
            if dims != 3:
                pts = np.concatenate([pts, np.full((pts.shape[0], max(0, dims - 3)), 0.5)], axis=1)[:, :dims]
            out.append(np.clip(pts, 0.0, 1.0).astype(np.float32))
        return out


# ---------------------------------------------------------------------------- runners
def _layout(page_size: int, log2_table_size: int = 17, levels: int = 16):
    from ..encoding.layout import FieldConfig, FieldLayout

    return FieldLayout(FieldConfig(log2_table_size=log2_table_size, levels=levels, page_size=page_size))


def _summary(lat: list[float], port: FakePort, pf, elapsed: float) -> dict:
    a = np.asarray(lat) if lat else np.zeros(1)
    out = {"p50_ms": round(1e3 * float(np.percentile(a, 50)), 3), "p99_ms": round(1e3 * float(np.percentile(a, 99)), 3),
           "total_s": round(elapsed, 3), "slow_reads": port.slow_reads, "demand_slow_reads": port.demand_slow_reads,
           "prefetch_calls": port.prefetch_calls}
    if pf is not None:
        st = pf.stats()
        out.update({k: st.get(k) for k in ("issued", "useful", "late", "wasted", "pending", "accuracy", "coverage",
                                           "timeliness")})
        out["stats"] = st
    return out


async def run_address(kind: str, predictor: str, *, page_size: int = 65536, n: int = 2000, read: int = 4096,
                      stride: int | None = None, think_s: float = 0.0002, latency: float = 0.005, seed: int = 0,
                      config=None, readers: int = 2, log2_table_size: int = 17) -> dict:
    """One address-space workload through the real Prefetcher over a FakePort; latencies per read.
    (``log2_table_size`` 20 gives a 128 MiB file: runs stop mid-file, as real readers do.)"""
    from .prefetch import Prefetcher

    layout = _layout(page_size, log2_table_size)
    size = layout.params_bytes
    port = FakePort(layout.n_pages, page_size, latency=latency)
    kern = SimKernel(port)
    rng = np.random.default_rng(seed)
    offsets = address_offsets(kind, rng, size, n, read=read, stride=stride, readers=readers)
    pf = None if predictor == "none" else Prefetcher(port, layout, kind=predictor, push=kern.push_pages, config=config)
    lat: list[float] = []
    async with trio.open_nursery() as nursery:
        if pf is not None:
            await nursery.start(pf.run)
        t0 = time.perf_counter()
        for off in offsets:
            lat.append(await kern.read(off, read))
            if think_s:
                await trio.sleep(think_s)
        elapsed = time.perf_counter() - t0
        await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    out = _summary(lat, port, pf, elapsed)
    out["stale"] = kern.stale
    return out


async def run_field(camera: Camera | None, predictor: str, *, frames: int = 40, page_size: int = 4096,
                    log2_table_size: int = 22,
                    think_s: float = 0.01, latency: float = 0.005, warmup: int = 8, config=None,
                    random_batches: int = 0, seed: int = 0, memory_pages: int = 1 << 30) -> dict:
    """Frames of query points: gather their pages (the daemon's GATHER) with the prefetcher watching."""
    from ..encoding import hashgrid
    from .prefetch import Prefetcher

    layout = _layout(page_size, log2_table_size)
    port = FakePort(layout.n_pages, page_size, latency=latency, memory_pages=memory_pages)
    pf = None if predictor == "none" else Prefetcher(port, layout, kind=predictor, push=None, config=config)
    if camera is not None:
        batches = camera.frames(frames)
    else:
        rng = np.random.default_rng(seed)
        batches = [rng.random((random_batches or 1024, 3), dtype=np.float32) for _ in range(frames)]
    lat: list[float] = []
    async with trio.open_nursery() as nursery:
        if pf is not None:
            await nursery.start(pf.run)
        t0 = time.perf_counter()
        for i, pts in enumerate(batches):
            t1 = time.perf_counter()
            if pf is not None:
                pf.on_points(pts)
            entries, _ = hashgrid.corner_entries(layout, pts)
            pages = hashgrid.touched_pages(layout, entries).astype(np.int64).tolist()
            await port.demand(pages, AccessKind.GATHER)
            if i >= warmup:
                lat.append(time.perf_counter() - t1)
            if think_s:
                await trio.sleep(think_s)
        elapsed = time.perf_counter() - t0
        await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    return _summary(lat, port, pf, elapsed)
