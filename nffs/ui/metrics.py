"""The daemon's statistics in the Prometheus text exposition format (version 0.0.4).

Names follow the Prometheus and node_exporter conventions: an `nffs_` prefix, base
units in the name (`_bytes`, `_seconds`), `_total` on counters, `_ratio` on
fractions in [0, 1], histograms as `_bucket{le=...}` / `_sum` / `_count`, and labels
(`tier`, `kind`, `predictor`, `space`, `kind` of error) instead of one name per
instance. A family is written only when the daemon reports at least one of its
samples, so a key the storage core drops or renames makes a metric disappear rather
than the scrape fail. The key lookups themselves live in `nffs.ui.view`.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

from .. import __version__ as _version
from .view import Histogram, View, extract

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n")


def _fmt(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


class Exposition:
    """Collects families in order; each family's samples stay contiguous as the format requires."""

    def __init__(self) -> None:
        self._families: dict[str, tuple[str, str, list[str]]] = {}

    def add(self, name: str, mtype: str, help_text: str, value: float | None, /, **labels: str | None) -> None:
        if value is None:
            return
        fam = self._family(name, mtype, help_text)
        fam.append(self._sample(name, labels, value))

    def histogram(self, name: str, help_text: str, hist: Histogram | None, /, **labels: str | None) -> None:
        if hist is None:
            return
        fam = self._family(name, "histogram", help_text)
        for bound, cum in hist.buckets:
            fam.append(self._sample(f"{name}_bucket", {**labels, "le": _fmt(bound)}, cum))
        fam.append(self._sample(f"{name}_sum", labels, hist.sum))
        fam.append(self._sample(f"{name}_count", labels, hist.count))

    def _family(self, name: str, mtype: str, help_text: str) -> list[str]:
        if name not in self._families:
            self._families[name] = (mtype, help_text, [])
        return self._families[name][2]

    @staticmethod
    def _sample(name: str, labels: Mapping[str, str | None], value: float) -> str:
        pairs = [f'{k}="{_escape_label(str(v))}"' for k, v in labels.items() if v is not None]
        label_text = "{" + ",".join(pairs) + "}" if pairs else ""
        return f"{name}{label_text} {_fmt(value)}"

    def names(self) -> list[str]:
        return list(self._families)

    def text(self) -> str:
        lines: list[str] = []
        for name, (mtype, help_text, samples) in self._families.items():
            if not samples:
                continue
            # a counter family is named without its _total suffix in HELP/TYPE (OpenMetrics
            # parsers, prometheus_client's among them, accept both spellings)
            lines.append(f"# HELP {name} {_escape_help(help_text)}")
            lines.append(f"# TYPE {name} {mtype}")
            lines.extend(samples)
        return "\n".join(lines) + "\n"


def build(v: View) -> Exposition:
    """Every metric nffs exports, from the extracted view."""
    e = Exposition()
    f = v.field
    e.add("nffs_build_info", "gauge", "Version of the nffs daemon (always 1).", 1, version=_version)
    e.add("nffs_params_bytes", "gauge", "Virtual size of the params file (the whole parameter table).", f.params_bytes)
    e.add("nffs_page_size_bytes", "gauge", "Bytes per page.", f.page_size)
    e.add("nffs_pages", "gauge", "Pages of the virtual parameter table.", f.n_pages)
    e.add("nffs_materialised_pages", "gauge", "Pages that were written at least once (they have a home).",
          f.materialised_pages)
    e.add("nffs_materialised_bytes", "gauge", "Bytes of materialised pages.", f.materialised_bytes)
    e.add("nffs_dirty_pages", "gauge", "Pages written in memory and not yet durable at home.", f.dirty_pages)
    e.add("nffs_concepts", "gauge", "Named concepts.", f.concepts)

    for t in v.tiers:
        kw = {"tier": t.name, "kind": t.kind}
        e.add("nffs_tier_capacity_bytes", "gauge", "Capacity of the tier (absent when unbounded).", t.capacity, **kw)
        e.add("nffs_tier_used_bytes", "gauge", "Bytes of pages stored in the tier.", t.used_bytes, **kw)
        e.add("nffs_tier_pages", "gauge", "Pages stored in the tier.", t.pages, **kw)
        e.add("nffs_tier_dirty_pages", "gauge", "Dirty pages held by the tier.", t.dirty_pages, **kw)
        e.add("nffs_tier_added_latency_seconds", "gauge", "Configured latency= added to every page read from the tier.",
              t.latency_s, **kw)
        e.add("nffs_tier_reads_total", "counter", "Page reads served from the tier.", t.reads, **kw)
        e.add("nffs_tier_writes_total", "counter", "Page writes to the tier.", t.writes, **kw)
        e.add("nffs_tier_hits_total", "counter", "Page reads served by the tier.", t.hits, **kw)
        e.add("nffs_tier_hit_ratio", "gauge", "Share of all page reads served by the tier.", t.hit_rate, **kw)
        e.add("nffs_tier_promotions_total", "counter", "Pages moved up into the tier.", t.promotions, **kw)
        e.add("nffs_tier_demotions_total", "counter", "Pages moved down out of the tier.", t.demotions, **kw)
        e.add("nffs_tier_checksum_failures_total", "counter", "Pages of the tier that failed their checksum.",
              t.checksum_failures, **kw)
        e.add("nffs_tier_io_errors_total", "counter", "I/O errors of the tier.", t.io_errors, **kw)
        e.histogram("nffs_tier_read_latency_seconds", "Page read latency of the tier.", t.read_latency, **kw)

    store_help = {
        "reads": "Page reads by the store (any tier, or the implicit init).",
        "writes": "Page writes into the store.",
        "implicit_reads": "Reads of never-written pages (computed from the seed).",
        "implicit_page_reads": "Reads of never-written pages (computed from the seed).",
        "writeback_batches": "Batches of dirty pages written home.",
        "migrations": "Pages moved between tiers.",
        "late_joins": "Reads that joined a fetch already in flight.",
        "pages_materialised": "Pages materialised by a first write.",
        "writebacks": "Dirty pages written home.",
        "write_through": "Writes that went straight home.",
        "evictions": "Pages evicted from a memory tier.",
        "checksum_failures": "Pages that failed their checksum.",
        "io_errors": "I/O errors of any tier.",
        "enospc": "Writes refused because the durable tiers were full.",
    }
    for key, value in v.store_counters.items():
        e.add(f"nffs_store_{key}_total", "counter", store_help.get(key, key.replace("_", " ")), value)
    e.histogram("nffs_read_latency_seconds", "Latency of page reads served by the daemon.", v.read_latency)

    p = v.prefetch
    if p is not None:
        pred = p.predictor or "unknown"
        e.add("nffs_prefetch_info", "gauge", "The active predictor (always 1).", 1, predictor=pred)
        e.add("nffs_prefetch_ready", "gauge", "1 once the predictor's models are loaded.",
              None if p.ready is None else int(p.ready), predictor=pred)
        for s in p.spaces:
            kw = {"predictor": pred, "space": s.name}
            e.add("nffs_prefetch_issued_total", "counter", "Pages prefetched.", s.issued, **kw)
            e.add("nffs_prefetch_useful_total", "counter", "Prefetched pages demanded while resident.", s.useful, **kw)
            e.add("nffs_prefetch_late_total", "counter", "Prefetched pages demanded while still in flight.", s.late, **kw)
            e.add("nffs_prefetch_wasted_total", "counter", "Prefetched pages never delivered or evicted unused.",
                  s.wasted, **kw)
        if not p.spaces:
            kw = {"predictor": pred}
            e.add("nffs_prefetch_issued_total", "counter", "Pages prefetched.", p.issued, **kw)
            e.add("nffs_prefetch_useful_total", "counter", "Prefetched pages demanded while resident.", p.useful, **kw)
            e.add("nffs_prefetch_late_total", "counter", "Prefetched pages demanded while still in flight.", p.late, **kw)
            e.add("nffs_prefetch_wasted_total", "counter", "Prefetched pages never delivered or evicted unused.",
                  p.wasted, **kw)
        e.add("nffs_prefetch_accuracy_ratio", "gauge", "Useful / issued prefetches.", p.accuracy, predictor=pred)
        e.add("nffs_prefetch_coverage_ratio", "gauge", "Slow misses avoided / slow misses without prefetch.",
              p.coverage, predictor=pred)
        e.add("nffs_prefetch_timeliness_ratio", "gauge", "Share of useful prefetches that arrived before their demand.",
              p.timeliness, predictor=pred)
        e.add("nffs_prefetch_pending_pages", "gauge", "Prefetched pages not yet used or wasted.", p.pending, predictor=pred)
        e.add("nffs_prefetch_model_bytes", "gauge", "Memory of the predictor's models.", p.model_bytes, predictor=pred)
        e.add("nffs_prefetch_learn_seconds", "gauge", "Mean time of one model update.", p.learn_s, predictor=pred)
        e.add("nffs_prefetch_predict_seconds", "gauge", "Mean time of one prediction.", p.predict_s, predictor=pred)

    for name, depth in v.queues.items():
        e.add("nffs_queue_depth", "gauge", "Requests waiting in a daemon queue.", depth, queue=name)

    q = v.queries
    e.add("nffs_query_requests_total", "counter", "Requests answered on query handles.", q.requests)
    e.add("nffs_query_points_total", "counter", "Points answered on query handles.", q.points)
    e.add("nffs_query_errors_total", "counter", "Query requests that failed (EINVAL).", q.errors)
    e.histogram("nffs_query_latency_seconds", "Latency of query requests (write to answer).", q.latency)

    for kind, n in v.errors.items():
        e.add("nffs_errors_total", "counter", "Errors by kind.", n, kind=kind)
    return e


def render_metrics(stats: Mapping[str, Any]) -> str:
    """The Prometheus text for a `stats` dictionary (the `metrics` file, the HTTP endpoint)."""
    return build(extract(stats)).text()
