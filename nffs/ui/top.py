"""`nffs top MOUNTPOINT`: a live view of a mount, refreshed every second; `q` or Ctrl-C quits.

Plain ANSI escape codes and termios (no curses, no extra package), so it works in any
terminal over ssh, in tmux and in screen. Rates (reads/s, points/s, prefetches/s) and
latency percentiles are computed over the last interval from two `stats` snapshots;
the snapshot itself is read through the mount like any other file. When stdout is
not a terminal, frames are printed one after the other without escape codes.
"""
from __future__ import annotations

import logging
import os
import select
import sys
import time
from dataclasses import dataclass

from .source import MountUnavailable, read_stats
from .view import DASH, View, bar, count, extract, human_bytes, pct, plural, rate, seconds

log = logging.getLogger(__name__)

CLEAR = "\x1b[H\x1b[2J"
ALT_ON, ALT_OFF = "\x1b[?1049h", "\x1b[?1049l"
HIDE, SHOW = "\x1b[?25l", "\x1b[?25h"
BOLD, RESET = "\x1b[1m", "\x1b[0m"


@dataclass
class Sample:
    at: float
    view: View


def _delta(new: float | None, old: float | None, dt: float) -> float | None:
    if new is None or old is None or dt <= 0:
        return None
    return max(0.0, new - old) / dt


def render_frame(mountpoint: str, cur: Sample, prev: Sample | None, width: int = 100, ascii_only: bool = False,
                 color: bool = False) -> str:
    """One screen of the live view (pure: easy to test, no terminal needed)."""
    v = cur.view
    dt = cur.at - prev.at if prev is not None else 0.0
    pv = prev.view if prev is not None else None
    b = (BOLD, RESET) if color else ("", "")
    f = v.field
    clock = time.strftime("%H:%M:%S", time.localtime(cur.at))
    pid = DASH if f.pid is None else str(int(f.pid))
    refresh = f"   every {dt:.1f}s" if dt else ""
    lines = [f"{b[0]}nffs top{b[1]} — {mountpoint}  (daemon pid {pid})  {clock}{refresh}   q quits"]
    t = DASH if f.log2_table_size is None else f"2^{int(f.log2_table_size)}"
    lines.append(f"field D={count(f.dims)} L={count(f.levels)} F={count(f.features)} T={t}  virtual "
                 f"{human_bytes(f.params_bytes)}  materialised {human_bytes(f.materialised_bytes)} "
                 f"({plural(f.materialised_pages, 'page')}, {count(f.dirty_pages)} dirty)")
    lines.append("")

    # tiers
    name_w = max([4] + [len(x.name) for x in v.tiers])
    header = f"{'TIER':<{name_w}} {'KIND':<5} {'FILL':<24} {'USED / CAPACITY':<22} {'PAGES':>9} {'DIRTY':>7} {'READS/s':>9} {'HIT':>7}"
    lines.append(b[0] + header + b[1])
    old_tiers = {x.name: x for x in pv.tiers} if pv else {}
    total_rate = 0.0
    rates: dict[str, float | None] = {}
    hit_rates: dict[str, float | None] = {}
    for x in v.tiers:
        r = _delta(x.reads, old_tiers[x.name].reads if x.name in old_tiers else None, dt)
        rates[x.name] = r
        total_rate += r or 0.0
        old = old_tiers.get(x.name)
        hit_rates[x.name] = _delta(x.hits if x.hits is not None else x.reads,
                                   (old.hits if old.hits is not None else old.reads) if old else None, dt)
    for x in v.tiers:
        cap = "unbounded" if x.capacity is None else human_bytes(x.capacity)
        fill = f"{bar(x.fill, 16, ascii_only)} {pct(x.fill):>6}" if x.capacity else f"{bar(None, 16)} {DASH:>6}"
        r = rates[x.name]
        h = hit_rates[x.name]
        if h is not None and total_rate > 0:
            hit = pct(h / total_rate)  # share of the interval's page reads this tier served
        else:
            hit = pct(x.hit_rate)
        used = f"{human_bytes(x.used_bytes)} / {cap}"
        lines.append(f"{x.name:<{name_w}} {(x.kind or DASH):<5} {fill:<24} {used:<22} {count(x.pages):>9} "
                     f"{count(x.dirty_pages):>7} {rate(r, ''):>9} {hit:>7}")
    if not v.tiers:
        lines.append(DASH)
    lines.append("")

    # reads
    sc, osc = v.store_counters, (pv.store_counters if pv else {})
    lat = v.read_latency.minus(pv.read_latency if pv else None) if v.read_latency is not None else None
    p50 = lat.quantile(0.5) if lat is not None and lat.count else v.read_p50_s
    p99 = lat.quantile(0.99) if lat is not None and lat.count else v.read_p99_s
    lines.append(f"reads     {rate(_delta(sc.get('reads'), osc.get('reads'), dt), 'pages/s')}   "
                 f"p50 {seconds(p50)}  p99 {seconds(p99)}   writes {rate(_delta(sc.get('writes'), osc.get('writes'), dt), 'pages/s')}"
                 f"   write-backs {rate(_delta(sc.get('writebacks'), osc.get('writebacks'), dt), '/s')}")

    # prefetch
    p = v.prefetch
    if p is None:
        lines.append(f"prefetch  {DASH}")
    else:
        op = pv.prefetch if pv else None
        issued = _delta(p.issued, op.issued if op else None, dt)
        useful = _delta(p.useful, op.useful if op else None, dt)
        lines.append(f"prefetch  {p.predictor or DASH}{' (learning)' if p.ready is False else ''}   accuracy {pct(p.accuracy)}"
                     f"  coverage {pct(p.coverage)}  timeliness {pct(p.timeliness)}")
        lines.append(f"          issued {rate(issued, '/s')}  useful {rate(useful, '/s')}   total {count(p.issued)} issued, "
                     f"{count(p.useful)} useful, {count(p.late)} late, {count(p.wasted)} wasted")
    queues = "  ".join(f"{k} {count(n)}" for k, n in v.queues.items()) or DASH
    lines.append(f"queues    {queues}")

    # queries
    q, oq = v.queries, (pv.queries if pv else None)
    qlat = q.latency.minus(oq.latency if oq else None) if q.latency is not None else None
    lines.append(f"queries   {rate(_delta(q.requests, oq.requests if oq else None, dt), 'req/s')}  "
                 f"{rate(_delta(q.points, oq.points if oq else None, dt), 'points/s')}   "
                 f"p50 {seconds(qlat.quantile(0.5) if qlat is not None and qlat.count else q.p50_s)}  "
                 f"p99 {seconds(qlat.quantile(0.99) if qlat is not None and qlat.count else q.p99_s)}   "
                 f"total {count(q.requests)} requests, {count(q.points)} points")
    errs = {k: n for k, n in v.errors.items() if n}
    lines.append("errors    " + (", ".join(f"{count(n)} {k.replace('_', ' ')}" for k, n in errs.items()) if errs else
                                 ("none" if v.errors else DASH)))
    return "\n".join(line[:width] for line in lines) + "\n"


def _columns(out) -> int:
    """Terminal width; a pty without a size (script(1), some CI runners) reports 0."""
    try:
        cols = os.get_terminal_size(out.fileno()).columns
    except (OSError, ValueError):
        cols = 0
    return cols if cols >= 20 else 120


def _sample(mountpoint: str) -> Sample:
    return Sample(time.time(), extract(read_stats(mountpoint, timeout=5.0)))


def run_top(mountpoint: str, interval: float = 1.0, once: bool = False, ascii_only: bool = False) -> int:
    """The live loop; returns the exit status."""
    from ..fs.mounts import is_nffs_mount

    if not is_nffs_mount(mountpoint):
        print(f"nffs top: {mountpoint} is not an nffs mount", file=sys.stderr)
        return 1
    try:
        prev = _sample(mountpoint)
    except MountUnavailable as exc:
        print(f"nffs top: {exc}", file=sys.stderr)
        return 1
    out = sys.stdout
    tty = out.isatty() and sys.stdin.isatty() and not once
    if not ascii_only and "utf" not in (out.encoding or "").lower():
        ascii_only = True
    if once:
        time.sleep(interval)
        width = _columns(out) if out.isatty() else 200
        out.write(render_frame(mountpoint, _sample(mountpoint), prev, width=width, ascii_only=ascii_only))
        return 0
    if not tty:
        return _plain_loop(mountpoint, prev, interval, ascii_only)
    return _tty_loop(mountpoint, prev, interval, ascii_only)


def _plain_loop(mountpoint: str, prev: Sample, interval: float, ascii_only: bool) -> int:
    try:
        while True:
            time.sleep(interval)
            cur = _sample(mountpoint)
            sys.stdout.write(render_frame(mountpoint, cur, prev, width=200, ascii_only=ascii_only) + "\n")
            sys.stdout.flush()
            prev = cur
    except KeyboardInterrupt:
        return 0
    except MountUnavailable as exc:
        print(f"nffs top: {exc}", file=sys.stderr)
        return 1


def _tty_loop(mountpoint: str, prev: Sample, interval: float, ascii_only: bool) -> int:
    import termios
    import tty

    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    out = sys.stdout
    status = 0
    try:
        tty.setcbreak(fd)  # keys arrive one by one; Ctrl-C still raises KeyboardInterrupt
        out.write(ALT_ON + HIDE)
        cur = prev
        next_at = time.monotonic()
        while True:
            if time.monotonic() >= next_at:
                try:
                    cur = _sample(mountpoint)
                except MountUnavailable as exc:
                    status = 1
                    message = f"nffs top: {exc}"
                    break
                frame = render_frame(mountpoint, cur, prev if cur is not prev else None, width=_columns(out),
                                     ascii_only=ascii_only, color=True)
                out.write(CLEAR + frame)
                out.flush()
                prev = cur
                next_at = time.monotonic() + interval
            ready, _, _ = select.select([fd], [], [], max(0.0, next_at - time.monotonic()))
            if ready:
                key = os.read(fd, 32)
                if b"q" in key or b"Q" in key or b"\x03" in key:
                    break
                if b" " in key:  # refresh now
                    next_at = time.monotonic()
    except KeyboardInterrupt:
        pass
    finally:
        out.write(SHOW + ALT_OFF)
        out.flush()
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
    if status:
        print(message, file=sys.stderr)
    return status
