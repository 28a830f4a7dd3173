"""`nffs stat` as a person reads it: a few aligned sections, words instead of JSON.

Rendered from `nffs.ui.view.extract()`, so a key the daemon does not (yet) report
prints as a dash instead of failing.
"""
from __future__ import annotations

from typing import Any, Mapping

from .view import DASH, View, bar, count, extract, human_bytes, pct, plural, rate, seconds


def field_line(v: View) -> str:
    f = v.field
    t = DASH if f.log2_table_size is None else f"2^{int(f.log2_table_size)}"
    dtype = f" {f.dtype}" if f.dtype else ""
    return (f"field  D={count(f.dims)} L={count(f.levels)} F={count(f.features)} T={t}{dtype}  "
            f"virtual {human_bytes(f.params_bytes)} in {count(f.n_pages)} pages of {human_bytes(f.page_size)}, "
            f"materialised {human_bytes(f.materialised_bytes)} ({plural(f.materialised_pages, 'page')}, "
            f"{count(f.dirty_pages)} dirty)")


def tier_lines(v: View, ascii_only: bool = False) -> list[str]:
    if not v.mounted:
        return _resting_tier_lines(v, ascii_only)
    if not v.tiers:
        return ["tiers  " + DASH]
    name_w = max(len(t.name) for t in v.tiers)
    kind_w = max(len(t.kind or DASH) for t in v.tiers)
    lines = ["tiers"]
    for t in v.tiers:
        cap = "unbounded" if t.capacity is None else human_bytes(t.capacity)
        lines.append(
            f"  {t.name:<{name_w}} {t.kind or DASH:<{kind_w}} {bar(t.fill, 20, ascii_only)} "
            f"{human_bytes(t.used_bytes)} / {cap}  {plural(t.pages, 'page')}, {count(t.dirty_pages)} dirty, "
            f"{count(t.reads)} reads, hit rate {pct(t.hit_rate)}"
        )
        gone = "  UNAVAILABLE: its pages give EIO (see the field's nffs.log)" if t.available is False else ""
        lines.append(f"  {'':<{name_w}} {t.path or DASH}{gone}")
    return lines


def _resting_tier_lines(v: View, ascii_only: bool) -> list[str]:
    """Tiers of an unmounted field: what the metadata says lives where (no live counters)."""
    if not v.tiers:
        return ["tiers  " + DASH]
    name_w = max(len(t.name) for t in v.tiers)
    kind_w = max(len(t.kind or DASH) for t in v.tiers)
    lines = ["tiers (as of the last mount)"]
    for t in v.tiers:
        cap = "unbounded" if t.capacity is None else human_bytes(t.capacity)
        lines.append(f"  {t.name:<{name_w}} {t.kind or DASH:<{kind_w}} {bar(t.fill, 20, ascii_only)} "
                     f"{human_bytes(t.used_bytes)} / {cap}  {plural(t.pages, 'page')}  {t.path or DASH}")
    return lines


def prefetch_lines(v: View) -> list[str]:
    p = v.prefetch
    if p is None:
        return ["prefetch  " + DASH]
    state = "" if p.ready is None else (" (learning)" if not p.ready else " (ready)")
    lines = [
        f"prefetch  predictor {p.predictor or DASH}{state}: accuracy {pct(p.accuracy)}, coverage {pct(p.coverage)}, "
        f"timeliness {pct(p.timeliness)}",
        f"  {count(p.issued)} pages prefetched: {count(p.useful)} useful, {count(p.late)} late, "
        f"{count(p.wasted)} wasted, {count(p.pending)} pending; queue {count(p.queue)}",
    ]
    busy = [s for s in p.spaces if s.issued]
    if busy:
        lines.append("  by space: " + "; ".join(
            f"{s.name} {count(s.issued)} issued, {pct(s.accuracy)} accurate" for s in busy))
    if p.model_bytes is not None or p.learn_s is not None:
        lines.append(f"  model {human_bytes(p.model_bytes)}, learn {seconds(p.learn_s)}, predict {seconds(p.predict_s)} per call")
    return lines


def query_lines(v: View) -> list[str]:
    q = v.queries
    return [f"queries  {count(q.requests)} requests, {count(q.points)} points, {rate(q.points_per_s, 'points/s')}, "
            f"p50 {seconds(q.p50_s)}, p99 {seconds(q.p99_s)}, {count(q.errors)} failed"]


def read_lines(v: View) -> list[str]:
    c = v.store_counters
    implicit = c.get("implicit_reads", c.get("implicit_page_reads"))
    return [f"reads  {plural(c.get('reads'), 'page read')} by the store, {count(implicit)} of never-written pages; "
            f"p50 {seconds(v.read_p50_s)}, p99 {seconds(v.read_p99_s)}; {plural(c.get('writes'), 'page write')}, "
            f"{plural(c.get('writebacks'), 'write-back')}, {plural(c.get('evictions'), 'eviction')}"]


def error_lines(v: View) -> list[str]:
    if not v.errors:
        return ["errors  " + DASH]
    total = sum(v.errors.values())
    if total == 0:
        return ["errors  none"]
    return ["errors  " + ", ".join(f"{count(n)} {k.replace('_', ' ')}" for k, n in v.errors.items() if n)]


def render_status(stats: Mapping[str, Any], ascii_only: bool = False) -> str:
    """The whole `nffs stat` text for a mounted field or a field directory."""
    v = extract(stats)
    where = v.field.field_dir or DASH
    if v.mounted:
        pid = DASH if v.field.pid is None else str(int(v.field.pid))
        head = f"nffs {where} mounted at {v.field.mountpoint or DASH} (daemon pid {pid})"
    elif stats.get("in_use"):
        head = f"nffs {where} (in use by a daemon: `nffs stat MOUNTPOINT` shows live figures)"
    else:
        head = f"nffs {where} (not mounted)"
    lines = [head, field_line(v)]
    if v.field.concepts is not None:
        lines[-1] += f", {plural(v.field.concepts, 'concept')}"
    lines += tier_lines(v, ascii_only)
    if v.mounted:
        lines += read_lines(v)
        lines += prefetch_lines(v)
        lines += query_lines(v)
        lines += error_lines(v)
    return "\n".join(lines) + "\n"
