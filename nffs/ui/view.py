"""The one place that knows the keys of the daemon's `stats` JSON.

The storage core is being redesigned and its statistics move with it. Every renderer
(`nffs stat`, `nffs top`, the `metrics` file, the HTTP endpoint) therefore reads the
dictionary only through `extract()`, which tolerates any missing or mistyped key: an
absent number becomes None (printed as a dash, left out of the metrics). The keys it
looks for are listed in docs/operations.md ("Statistics keys").
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

DASH = "—"


# ---------------------------------------------------------------------- safe lookups
def get(obj: Any, *path: str, default: Any = None) -> Any:
    """obj[path[0]][path[1]]... or `default` when any step is missing or not a mapping."""
    for key in path:
        if not isinstance(obj, Mapping) or key not in obj:
            return default
        obj = obj[key]
    return obj


def num(value: Any) -> float | None:
    """A finite number, or None (booleans, strings and NaN are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def first_num(obj: Any, *paths: tuple[str, ...] | str) -> float | None:
    """The first of several candidate keys that holds a number (old and new names alike)."""
    for path in paths:
        keys = (path,) if isinstance(path, str) else path
        value = num(get(obj, *keys))
        if value is not None:
            return value
    return None


def ratio(part: float | None, whole: float | None) -> float | None:
    if part is None or whole is None or whole <= 0:
        return None
    return part / whole


# ---------------------------------------------------------------------- histograms
@dataclass
class Histogram:
    """Cumulative buckets (upper bound in seconds -> observations at or below it), sum, count."""

    buckets: list[tuple[float, float]]  # ascending by bound, the last one +Inf
    sum: float
    count: float

    def quantile(self, q: float) -> float | None:
        """Estimate a quantile by linear interpolation inside its bucket (as PromQL does)."""
        if not self.count or not self.buckets:
            return None
        rank = q * self.count
        prev_bound, prev_count = 0.0, 0.0
        for bound, cum in self.buckets:
            if cum >= rank:
                if math.isinf(bound):
                    return prev_bound if prev_bound > 0 else None
                if cum == prev_count:
                    return bound
                return prev_bound + (bound - prev_bound) * (rank - prev_count) / (cum - prev_count)
            prev_bound, prev_count = bound, cum
        return prev_bound

    def minus(self, older: "Histogram | None") -> "Histogram":
        """Observations made since `older` (for a live view of the last interval)."""
        if older is None or [b for b, _ in older.buckets] != [b for b, _ in self.buckets]:
            return self
        return Histogram([(b, c - o) for (b, c), (_, o) in zip(self.buckets, older.buckets)],
                         self.sum - older.sum, self.count - older.count)


def parse_histogram(obj: Any) -> Histogram | None:
    """Accept the histogram shapes a daemon may report.

    * {"buckets": {"0.001": 5, ..., "+Inf": 9}, "sum": s, "count": n}  (cumulative, Prometheus style)
    * {"buckets": [[0.001, 5], ..., ["+Inf", 9]], "sum": s, "count": n}
    * {"le": [0.001, ...], "counts": [per-bucket counts, one more for +Inf], "sum": s}  (not cumulative)
    """
    if not isinstance(obj, Mapping):
        return None
    pairs: list[tuple[float, float]] = []
    raw = obj.get("buckets")
    try:
        if isinstance(raw, Mapping):
            pairs = [(float(k), float(v)) for k, v in raw.items()]
        elif isinstance(raw, list):
            pairs = [(float(k), float(v)) for k, v in raw]
        elif isinstance(obj.get("le"), list) and isinstance(obj.get("counts"), list):
            bounds = [float(b) for b in obj["le"]]
            counts = [float(c) for c in obj["counts"]]
            if len(counts) == len(bounds):
                bounds.append(math.inf)
                counts.append(0.0)
            cum = 0.0
            for b, c in zip(bounds + [math.inf], counts):
                cum += c
                pairs.append((b, cum))
        else:
            return None
    except (TypeError, ValueError):
        return None
    pairs.sort()
    if not pairs:
        return None
    if not math.isinf(pairs[-1][0]):
        total = num(obj.get("count"))
        pairs.append((math.inf, total if total is not None else pairs[-1][1]))
    count = num(obj.get("count"))
    total = num(obj.get("sum"))
    return Histogram(pairs, float(total or 0.0), float(count if count is not None else pairs[-1][1]))


# ---------------------------------------------------------------------- the view
@dataclass
class FieldInfo:
    dims: float | None = None
    levels: float | None = None
    features: float | None = None
    log2_table_size: float | None = None
    dtype: str | None = None
    page_size: float | None = None
    params_bytes: float | None = None
    n_pages: float | None = None
    materialised_pages: float | None = None
    dirty_pages: float | None = None
    concepts: float | None = None
    field_dir: str | None = None
    mountpoint: str | None = None
    pid: float | None = None

    @property
    def materialised_bytes(self) -> float | None:
        if self.materialised_pages is None or self.page_size is None:
            return None
        return self.materialised_pages * self.page_size


@dataclass
class TierInfo:
    name: str
    kind: str | None = None
    path: str | None = None
    volatile: bool | None = None
    capacity: float | None = None
    used_bytes: float | None = None
    pages: float | None = None
    dirty_pages: float | None = None
    reads: float | None = None
    writes: float | None = None
    hits: float | None = None
    hit_rate: float | None = None  # share of all page reads this tier served (`hit_rate` if reported)
    read_share: float | None = None  # share of all page reads the store served from this tier
    promotions: float | None = None
    demotions: float | None = None
    checksum_failures: float | None = None
    io_errors: float | None = None
    latency_s: float | None = None
    read_latency: Histogram | None = None
    #: False: the tier's root could not be used (missing, replaced, failing): its pages give EIO
    available: bool | None = None

    @property
    def fill(self) -> float | None:
        return ratio(self.used_bytes, self.capacity)


@dataclass
class SpaceInfo:
    name: str
    issued: float | None = None
    useful: float | None = None
    late: float | None = None
    wasted: float | None = None
    accuracy: float | None = None


@dataclass
class PrefetchInfo:
    predictor: str | None = None
    ready: bool | None = None
    issued: float | None = None
    useful: float | None = None
    late: float | None = None
    wasted: float | None = None
    pending: float | None = None
    accuracy: float | None = None
    coverage: float | None = None
    timeliness: float | None = None
    queue: float | None = None
    model_bytes: float | None = None
    learn_s: float | None = None
    predict_s: float | None = None
    spaces: list[SpaceInfo] = field(default_factory=list)


@dataclass
class QueryInfo:
    requests: float | None = None
    points: float | None = None
    errors: float | None = None
    latency: Histogram | None = None
    p50_s: float | None = None
    p99_s: float | None = None

    @property
    def points_per_s(self) -> float | None:
        """Points per second of serving time (points / summed request latency)."""
        if self.latency is None or self.points is None or self.latency.sum <= 0:
            return None
        return self.points / self.latency.sum


@dataclass
class View:
    field: FieldInfo
    tiers: list[TierInfo]
    prefetch: PrefetchInfo | None
    queries: QueryInfo
    read_latency: Histogram | None
    read_p50_s: float | None
    read_p99_s: float | None
    store_counters: dict[str, float]
    errors: dict[str, float]
    queues: dict[str, float]
    mounted: bool


STORE_COUNTERS = ("reads", "writes", "implicit_reads", "implicit_page_reads", "pages_materialised", "writebacks",
                  "writeback_batches", "write_through", "evictions", "migrations", "late_joins", "checksum_failures",
                  "io_errors", "enospc")
ERROR_KEYS = ("checksum_failures", "io_errors", "enospc", "internal_errors", "eio")


def extract(stats: Mapping[str, Any] | None) -> View:
    """Read every key the renderers use, tolerating any of them being absent."""
    stats = stats if isinstance(stats, Mapping) else {}
    store = get(stats, "store", default={})
    settings = get(stats, "field", default=None)
    if not isinstance(settings, Mapping):
        settings = get(stats, "settings", default={})
    fi = FieldInfo(
        dims=first_num(settings, "dims"),
        levels=first_num(settings, "levels"),
        features=first_num(settings, "features"),
        log2_table_size=first_num(settings, "log2_table_size"),
        dtype=settings.get("dtype") if isinstance(settings.get("dtype"), str) else None,
        page_size=first_num(settings, "page_size") or first_num(stats, "page_size"),
        params_bytes=first_num(settings, "params_bytes") or first_num(stats, "params_bytes"),
        n_pages=first_num(settings, "n_pages") or first_num(stats, "n_pages"),
        materialised_pages=first_num(store, "materialised_pages") if store else first_num(stats, "materialised_pages"),
        dirty_pages=first_num(store, "dirty_pages") if store else first_num(stats, "dirty_pages"),
        concepts=first_num(stats, "concepts"),
        field_dir=_str(stats.get("field_dir")),
        mountpoint=_str(stats.get("mountpoint")),
        pid=first_num(stats, "pid"),
    )
    if fi.n_pages is None and fi.params_bytes is not None and fi.page_size:
        fi.n_pages = -(-fi.params_bytes // fi.page_size)

    raw_tiers = get(store, "tiers", default=None)
    if not isinstance(raw_tiers, list):
        raw_tiers = get(stats, "tiers", default=[])
    tiers = [_tier(t) for t in raw_tiers if isinstance(t, Mapping)]
    total_reads = sum(t.reads for t in tiers if t.reads is not None)
    for t in tiers:
        # hit rate of a tier: the share of all page reads it served (a hit at this level of the hierarchy)
        t.read_share = ratio(t.reads, total_reads) if t.reads is not None else None
        if t.hit_rate is None:
            t.hit_rate = ratio(t.hits if t.hits is not None else t.reads, total_reads)

    read_latency = parse_histogram(get(store, "read_latency_seconds")) or parse_histogram(get(stats, "read_latency_seconds"))
    counters = {k: v for k in STORE_COUNTERS if (v := num(get(store, k))) is not None}

    errors: dict[str, float] = {}
    raw_errors = stats.get("errors")
    if isinstance(raw_errors, Mapping):
        errors = {str(k): n for k, raw in raw_errors.items() if (n := num(raw)) is not None}
    elif num(raw_errors) is not None:
        errors = {"total": num(raw_errors)}
    else:
        errors = {k: v for k in ERROR_KEYS if (v := num(get(store, k))) is not None}

    queues: dict[str, float] = {}
    for raw_queues in (stats.get("queues"), get(store, "queues")):
        if isinstance(raw_queues, Mapping):
            queues.update({str(k): n for k, raw in raw_queues.items() if (n := num(raw)) is not None})
    for key, name in (("demand_waiting", "demand"), ("writeback_queue", "writeback")):
        value = num(get(store, key))
        if value is not None:
            queues.setdefault(name, value)
    prefetch = _prefetch(stats.get("prefetch"))
    if prefetch is not None and prefetch.queue is not None:
        queues.setdefault("prefetch", prefetch.queue)

    return View(
        field=fi,
        tiers=tiers,
        prefetch=prefetch,
        queries=_queries(stats.get("queries") if isinstance(stats.get("queries"), Mapping) else get(stats, "query")),
        read_latency=read_latency,
        read_p50_s=first_num(store, "read_p50_s") if read_latency is None else read_latency.quantile(0.5),
        read_p99_s=first_num(store, "read_p99_s") if read_latency is None else read_latency.quantile(0.99),
        store_counters=counters,
        errors=errors,
        queues=queues,
        mounted=bool(stats.get("mounted", "pid" in stats)),
    )


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _tier(t: Mapping[str, Any]) -> TierInfo:
    return TierInfo(
        name=str(t.get("name", "?")),
        kind=_str(t.get("kind")),
        path=_str(t.get("path")),
        volatile=t.get("volatile") if isinstance(t.get("volatile"), bool) else None,
        available=t.get("available") if isinstance(t.get("available"), bool) else None,
        capacity=first_num(t, "capacity", "capacity_bytes"),
        used_bytes=first_num(t, "used_bytes"),
        pages=first_num(t, "pages", "memory_pages", "home_pages"),
        dirty_pages=first_num(t, "dirty_pages"),
        reads=first_num(t, "reads"),
        writes=first_num(t, "writes"),
        hits=first_num(t, "hits"),
        hit_rate=first_num(t, "hit_rate"),
        promotions=first_num(t, "promotions"),
        demotions=first_num(t, "demotions"),
        checksum_failures=first_num(t, "checksum_failures"),
        io_errors=first_num(t, "io_errors"),
        latency_s=first_num(t, "latency_s"),
        read_latency=parse_histogram(t.get("read_latency_seconds")),
    )


def _prefetch(p: Any) -> PrefetchInfo | None:
    if not isinstance(p, Mapping):
        return None
    info = PrefetchInfo(
        predictor=_str(p.get("predictor")),
        ready=p.get("ready") if isinstance(p.get("ready"), bool) else None,
        issued=first_num(p, "issued"),
        useful=first_num(p, "useful"),
        late=first_num(p, "late"),
        wasted=first_num(p, "wasted"),
        pending=first_num(p, "pending"),
        accuracy=first_num(p, "accuracy"),
        coverage=first_num(p, "coverage"),
        timeliness=first_num(p, "timeliness"),
        queue=first_num(p, "queue", "queue_depth"),
        model_bytes=first_num(p, "model_bytes"),
        learn_s=_us(first_num(p, "learn_us")),
        predict_s=_us(first_num(p, "predict_us")),
    )
    if info.accuracy is None:
        info.accuracy = ratio(info.useful, info.issued)
    if info.timeliness is None and info.useful and info.late is not None:
        info.timeliness = max(0.0, info.useful - info.late) / info.useful
    spaces = p.get("spaces")
    if isinstance(spaces, Mapping):
        for name, s in spaces.items():
            if isinstance(s, Mapping):
                sp = SpaceInfo(str(name), first_num(s, "issued"), first_num(s, "useful"), first_num(s, "late"),
                               first_num(s, "wasted"), first_num(s, "accuracy"))
                if sp.accuracy is None:
                    sp.accuracy = ratio(sp.useful, sp.issued)
                info.spaces.append(sp)
    return info


def _us(value: float | None) -> float | None:
    return None if value is None else value * 1e-6


def _queries(q: Any) -> QueryInfo:
    if not isinstance(q, Mapping):
        return QueryInfo()
    latency = parse_histogram(q.get("latency_seconds")) or parse_histogram(q.get("latency"))
    info = QueryInfo(requests=first_num(q, "requests"), points=first_num(q, "points"),
                     errors=first_num(q, "errors"), latency=latency,
                     p50_s=first_num(q, "p50_s"), p99_s=first_num(q, "p99_s"))
    if latency is not None:
        info.p50_s = latency.quantile(0.5)
        info.p99_s = latency.quantile(0.99)
    return info


# ---------------------------------------------------------------------- formatting
def human_bytes(n: float | None) -> str:
    if n is None:
        return DASH
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if abs(value) < 1024 or unit == "EiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} EiB"


def count(n: float | None) -> str:
    if n is None:
        return DASH
    if float(n).is_integer():
        return f"{int(n):,}"
    return f"{n:,.1f}"


def plural(n: float | None, word: str) -> str:
    """'1 page', '3 pages', '— pages'."""
    return f"{count(n)} {word}" + ("" if n == 1 else "s")


def pct(x: float | None) -> str:
    return DASH if x is None else f"{100 * x:.1f}%"


def seconds(s: float | None) -> str:
    if s is None:
        return DASH
    if s < 1e-3:
        return f"{s * 1e6:.0f} µs"
    if s < 1:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.2f} s"


def rate(x: float | None, unit: str = "/s") -> str:
    if x is None:
        return DASH
    for scale, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.2f} {prefix}{unit}"
    return f"{x:.1f} {unit}"


def bar(fraction: float | None, width: int = 20, ascii_only: bool = False) -> str:
    """A fill bar: [#####.....] in ASCII, block characters otherwise; unknown is blank."""
    full, empty = ("#", ".") if ascii_only else ("█", "░")
    if fraction is None:
        return "[" + " " * width + "]"
    f = min(1.0, max(0.0, fraction))
    n = int(round(f * width))
    return "[" + full * n + empty * (width - n) + "]"
