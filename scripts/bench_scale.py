#!/usr/bin/env python3
"""SPEC 8 row "scale": mount time and daemon memory vs materialised pages.

Targets: mount time O(1) in the field's virtual size; <= 200 B of daemon memory per
materialised page.

Setup (temp dirs, removed at the end): a field with 4 KiB pages and log2_table_size 30
(81 GiB of virtual params, 21 M pages), a dram tier on tmpfs (/dev/shm, capacity
--dram-capacity) and an nvme home tier on disk. Pages are materialised *through the
mount*: `params` is written in 1 MiB writes of random bytes over pages [0, N), then
fsynced (every page then has a durable home).

For each N (10^3, 10^4, 10^5; 10^6 with --full; --quick: 10^4 and 10^5), cumulatively on
the same field:
  * RSS of the daemon that wrote the pages, after the fsync ("writer");
  * `nffs mount` wall time of a fresh mount (median of --mounts cycles; the command
    returns once the mount is ready), and the new daemon's RSS once settled ("fresh");
  * the fresh daemon's RSS after reading all N pages once through `params` (1 MiB reads,
    cold kernel cache: each page is loaded from its home and promoted to the dram tier)
    ("after reading all").
RSS is RssAnon from /proc/<pid>/status (the memory tier's mapped arena is the tier's
storage, not daemon memory), the pid from the mount's `stats` file, always taken
once the daemon has settled: `nffs mount` returns before the prefetcher has loaded its
libraries (a worker thread does that), so every memory figure waits until `stats` says
the prefetcher is ready and RSS stops moving. The slope of RSS against N (least squares
over all N, including N=0) is the memory per page; the slope between the two largest N
is shown too, as some of the daemon's per-page tables are capped (--quick judges by
that one: its all-N slope is mostly the fixed cost of filling them).

Mount time vs virtual size: empty fields with log2_table_size 19 (53 MiB) and 45
(1.3 PiB), same page size, mounted --mounts times each.

Usage: python scripts/bench_scale.py [--quick] [--full] [--mounts N] [--prefetch default|none|markov|hoeffding] [--json FILE]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_common import (  # noqa: E402
    NffsMount, Workspace, drop_file_cache, init_field, median, prefetch_args, print_machine, print_table, result_row, rss_bytes, tier_args,
    verdict, write_json,
)

PAGE = 4096
MIB = 1 << 20
TARGET_BYTES_PER_PAGE = 200.0


def materialise(path: str, first_page: int, end_page: int) -> float:
    """Write random bytes over pages [first_page, end_page) in 1 MiB writes, fsync; seconds taken."""
    block = os.urandom(MIB)
    start = time.perf_counter()
    fd = os.open(path, os.O_WRONLY)
    try:
        off, end = first_page * PAGE, end_page * PAGE
        while off < end:
            n = min(MIB, end - off)
            os.pwrite(fd, block[:n], off)
            off += n
        os.fsync(fd)
    finally:
        os.close(fd)
    return time.perf_counter() - start


def read_range(path: str, end_page: int) -> float:
    drop_file_cache(path)
    start = time.perf_counter()
    fd = os.open(path, os.O_RDONLY)
    try:
        off, end = 0, end_page * PAGE
        while off < end:
            data = os.pread(fd, min(MIB, end - off), off)
            if not data:
                raise RuntimeError(f"short read at {off}")
            off += len(data)
    finally:
        os.close(fd)
    return time.perf_counter() - start


def slope(xs: list[float], ys: list[float]) -> float:
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else float("nan")


def mount_cycles(ws: Workspace, field: str, tiers: list[str], extra: list[str], n: int) -> tuple[list[float], NffsMount]:
    """Mount and unmount n-1 times, then mount once more and leave it mounted; all mount times."""
    times = []
    for i in range(n):
        m = NffsMount(ws, field, *tiers, *extra)
        times.append(m.mount_seconds)
        if i < n - 1:
            m.unmount()
    return times, m


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="N = 10^4 and 10^5 only, 2 mounts each; judged by the slope between them")
    p.add_argument("--full", action="store_true", help="also N = 10^6 (several minutes, ~4 GiB of home files on disk)")
    p.add_argument("--mounts", type=int, default=None, help="mount cycles per measurement (default 3, quick 2)")
    p.add_argument("--prefetch", default="default", choices=["default", "none", "markov", "hoeffding"],
                   help="prefetcher of the mounts (default: the mount's default)")
    p.add_argument("--dram-capacity", default="1G", help="capacity of the dram tier (default 1G)")
    p.add_argument("--log2-table-size", type=int, default=30)
    p.add_argument("--json", default=None, metavar="FILE", help="also write the results here")
    args = p.parse_args(argv)
    # quick: two points far enough apart that the capped tables (filled within the first
    # ~10^4 pages) do not pass for per-page growth; 10^3 and 10^4 gave slopes of noise
    counts = [10_000, 100_000] if args.quick else [1000, 10_000, 100_000]
    if args.full:
        counts.append(1_000_000)
    n_mounts = args.mounts or (2 if args.quick else 3)
    extra = prefetch_args(args.prefetch)

    print_machine()
    with Workspace() as ws:
        # -- mount time vs virtual size ------------------------------------------------------
        virtual = []
        for t in (19, 45):
            field = init_field(ws, f"empty{t}", "--page-size", "4K", "--log2-table-size", str(t))
            times, m = mount_cycles(ws, field, tier_args(ws, f"empty{t}"), extra, n_mounts)
            m.settle()
            st = m.stats()
            virtual.append((t, st["params_bytes"], median(times), rss_bytes(m.pid)))
            m.unmount()
        print("mount time vs virtual size (empty fields, 4 KiB pages):")
        print_table(["log2_table_size", "params", "pages", "nffs mount", "daemon RSS"],
                    [[t, f"{b / 2**30:,.2f} GiB", f"{b // PAGE:,}", f"{s * 1e3:.0f} ms", f"{r / MIB:.1f} MiB"] for t, b, s, r in virtual])
        ratio_virtual = virtual[1][2] / virtual[0][2]
        print(f"mount time T=2^45 / T=2^19 = {ratio_virtual:.2f}x for {virtual[1][1] / virtual[0][1]:,.0f}x the virtual size "
              f"({'O(1): ' + verdict(ratio_virtual, 1.5, higher_is_better=False) if ratio_virtual <= 1.5 else 'NOT O(1)'})")
        print(flush=True)

        # -- memory and mount time vs materialised pages -----------------------------------
        field = init_field(ws, "scale", "--page-size", "4K", "--log2-table-size", str(args.log2_table_size))
        tiers = tier_args(ws, "scale", dram_capacity=args.dram_capacity)
        m = NffsMount(ws, field, *tiers, *extra)
        ready_s = m.mount_seconds + m.settle()
        n_pages_virtual = m.stats()["params_bytes"] // PAGE
        rss0 = rss_bytes(m.pid)
        rows = [(0, rss0, m.mount_seconds, rss0, rss0, 0.0, 0.0)]
        print(f"N=0: mount {m.mount_seconds * 1e3:.0f} ms, prefetcher ready and RSS settled after {ready_s:.1f} s, RSS {rss0 / MIB:.1f} MiB")
        done = 0
        files_per_tier: list[tuple[int, int]] = []
        for n in counts:
            if m is None:
                m = NffsMount(ws, field, *tiers, *extra)
                m.settle()
            write_s = materialise(m.file("params"), done, n)
            done = n
            st = m.stats()["store"]
            if st["materialised_pages"] != n:
                raise RuntimeError(f"expected {n} materialised pages, the mount reports {st['materialised_pages']}")
            writer_rss = rss_bytes(m.pid)
            m.unmount()
            times, m = mount_cycles(ws, field, tiers, extra, n_mounts)
            m.settle()
            fresh_rss = rss_bytes(m.pid)
            read_s = read_range(m.file("params"), n)
            read_rss = rss_bytes(m.pid)
            rows.append((n, writer_rss, median(times), fresh_rss, read_rss, write_s, read_s))
            home_dir = tiers[3].split("=", 1)[1].split(",", 1)[0]  # --tier nvme=PATH,kind=nvme
            home_files = len(os.listdir(home_dir))
            files_per_tier.append((n, home_files))
            print(f"N={n:,}: materialised in {write_s:.1f} s, read back in {read_s:.1f} s, mount {median(times) * 1e3:.0f} ms, "
                  f"RSS writer {writer_rss / MIB:.1f} MiB / fresh {fresh_rss / MIB:.1f} MiB / after reading all {read_rss / MIB:.1f} MiB, "
                  f"{home_files} files in the home tier (target < 1,000)", flush=True)
            m.unmount()
            m = None

        print()
        print(f"field: 4 KiB pages, log2_table_size {args.log2_table_size} ({n_pages_virtual:,} virtual pages), "
              f"dram tier capacity {args.dram_capacity}, prefetch={args.prefetch}, {n_mounts} mounts per point (median)")
        print_table(["materialised pages", "nffs mount", "RSS writer", "RSS fresh mount", "RSS after reading all"],
                    [[f"{n:,}", f"{s * 1e3:.0f} ms", f"{w / MIB:.1f} MiB", f"{f / MIB:.1f} MiB", f"{r / MIB:.1f} MiB"]
                     for n, w, s, f, r, _, _ in rows])
        xs = [float(r[0]) for r in rows]
        slopes = {
            "writer (after writing and fsync)": slope(xs, [float(r[1]) for r in rows]),
            "fresh mount": slope(xs, [float(r[3]) for r in rows]),
            "fresh mount, after reading all pages": slope(xs, [float(r[4]) for r in rows]),
        }
        last_two = {
            "writer (after writing and fsync)": slope(xs[-2:], [float(r[1]) for r in rows[-2:]]),
            "fresh mount": slope(xs[-2:], [float(r[3]) for r in rows[-2:]]),
            "fresh mount, after reading all pages": slope(xs[-2:], [float(r[4]) for r in rows[-2:]]),
        }
        mount_slope = slope(xs, [r[2] for r in rows])
        print()
        print_table(["daemon memory per materialised page", "slope (all N)", f"slope {rows[-2][0]:,}..{rows[-1][0]:,}", "target", ""],
                    [[k, f"{v:.0f} B/page", f"{last_two[k]:.0f} B/page", f"<= {TARGET_BYTES_PER_PAGE:.0f} B",
                      verdict(last_two[k] if args.quick else v, TARGET_BYTES_PER_PAGE, higher_is_better=False)]
                     for k, v in slopes.items()])
        print(f"mount time vs materialised pages: {rows[0][2] * 1e3:.0f} ms at N=0, {rows[-1][2] * 1e3:.0f} ms at "
              f"N={rows[-1][0]:,} (least-squares slope {mount_slope * 1e5 * 1e3:+.0f} ms per 10^5 pages; "
              f"single mounts vary by a few hundred ms on a busy machine)")
        print(f"mount time vs virtual size: T=2^45 / T=2^19 = {ratio_virtual:.2f}x")
        most_files = max(f for _, f in files_per_tier)
        print(f"files in the home tier: {', '.join(f'{f} at N={n:,}' for n, f in files_per_tier)} (target < 1,000: "
              f"{verdict(most_files, 999, higher_is_better=False)})")
        # the verdict's slope: over all N, or (quick) between its two N, where the fixed
        # costs of the first pages are behind
        judged = last_two if args.quick else slopes
        worst = max(judged.values())
        write_json(args.json, "bench_scale", [
            result_row("scale_memory", "scale: daemon memory per materialised page (worst slope"
                       + (f", {counts[0]:,}..{counts[-1]:,} pages)" if args.quick else ")"), worst, None, "",
                       "B/page", worst, TARGET_BYTES_PER_PAGE, higher_is_better=False, slopes=slopes, last_two=last_two),
            result_row("scale_mount_virtual", "scale: mount time T=2^45 vs T=2^19 (O(1) in virtual size)", virtual[1][2],
                       virtual[0][2], "mount of T=2^19", "s", ratio_virtual, 1.5, higher_is_better=False),
        ], args=vars(args), points=[{"pages": n, "rss_writer": w, "mount_s": ms, "rss_fresh": f, "rss_read": r}
                                    for n, w, ms, f, r, _, _ in rows], files_per_tier=files_per_tier)
    return 0


if __name__ == "__main__":
    sys.exit(main())
