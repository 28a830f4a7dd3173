#!/usr/bin/env python3
"""SPEC 8 rows "hot reads", "cold reads" and "sequential": reads of a mounted field's `params`.

Setup (all in temp dirs, removed at the end):
  * a default field (D=3 L=16 F=2 T=2^19, 64 KiB pages), mounted with `nffs mount` (background
    mode, `--prefetch none` unless --prefetch says otherwise) over a dram tier on tmpfs
    (/dev/shm) and an nvme home tier on disk; the whole of `params` is written with random
    bytes and fsynced, so every page is materialised and has a copy in the dram tier;
  * scripts/minimal_fs.py serving the same number of random bytes from memory (the baseline
    of the cold and sequential rows), same mount options and file flags as `params`;
  * a tmpfs file of the same size (the baseline of the hot row).

Each round measures, alternating which side goes first:
  hot        4 KiB random pread over the whole file, everything already in the kernel page
             cache (the file is read once before; the daemon's read counter must not move)
  cold       4 KiB pread at distinct random 4 KiB offsets after posix_fadvise(DONTNEED) on
             the file, POSIX_FADV_RANDOM on the reader (no read-ahead): every read reaches
             the daemon, which the daemons' read counters confirm (nffs: stats store.reads,
             minimal_fs: its stats file)
  sequential the whole file in 1 MiB reads after DONTNEED (normal read-ahead)

Ratios are computed per round (nffs / baseline) and the median over rounds is reported.

Usage: python scripts/bench_io.py [--quick] [--rounds N] [--reads N] [--prefetch none|markov|hoeffding]
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_common import (  # noqa: E402
    MinimalMount, NffsMount, Workspace, drop_file_cache, human_rate, init_field, median, print_machine, print_table,
    tier_args, verdict,
)

KIB4 = 4096
MIB = 1 << 20
TARGETS = {"hot": 0.8, "cold": 0.7, "sequential": 0.7}


def fill(path: str, size: int, chunk: int = MIB) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        block = os.urandom(chunk)
        for off in range(0, size, chunk):
            n = min(chunk, size - off)
            os.pwrite(fd, block[:n], off)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_all(path: str, chunk: int = MIB) -> int:
    fd = os.open(path, os.O_RDONLY)
    try:
        total = 0
        off = 0
        while True:
            data = os.pread(fd, chunk, off)
            if not data:
                return total
            total += len(data)
            off += len(data)
    finally:
        os.close(fd)


def random_reads(path: str, offsets: list[int], *, advise_random: bool) -> float:
    """Seconds for one 4 KiB pread at each offset, in order, on one descriptor."""
    fd = os.open(path, os.O_RDONLY)
    try:
        if advise_random:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        pread = os.pread
        start = time.perf_counter()
        for off in offsets:
            pread(fd, KIB4, off)
        return time.perf_counter() - start
    finally:
        os.close(fd)


def sequential_read(path: str, size: int) -> float:
    start = time.perf_counter()
    got = read_all(path)
    elapsed = time.perf_counter() - start
    if got != size:
        raise RuntimeError(f"{path}: read {got} bytes, expected {size}")
    return elapsed


class Side:
    """One file under test plus a way to count the reads that reached its daemon (None: tmpfs)."""

    def __init__(self, name: str, path: str, mount=None) -> None:
        self.name = name
        self.path = path
        self.mount = mount

    def daemon_reads(self) -> int:
        return self.mount.store_reads() if self.mount is not None else 0


def hot_pass(side: Side, size: int, n: int, rng: random.Random) -> float:
    read_all(side.path)  # into the page cache
    offsets = [rng.randrange(size // KIB4) * KIB4 for _ in range(n)]
    before = side.daemon_reads()
    elapsed = random_reads(side.path, offsets, advise_random=False)
    reached = side.daemon_reads() - before
    if reached:
        raise RuntimeError(f"hot pass on {side.name}: {reached} reads reached the daemon (page cache not warm)")
    return n / elapsed


def cold_pass(side: Side, size: int, n: int, rng: random.Random, strict: bool = True) -> tuple[float, float]:
    """(reads/s, fraction of the reads that reached the daemon)."""
    offsets = [b * KIB4 for b in rng.sample(range(size // KIB4), n)]
    drop_file_cache(side.path)
    before = side.daemon_reads()
    elapsed = random_reads(side.path, offsets, advise_random=True)
    reached = side.daemon_reads() - before
    if strict and reached != n:
        raise RuntimeError(f"cold pass on {side.name}: {reached} of {n} reads reached the daemon")
    return n / elapsed, reached / n


def sequential_pass(side: Side, size: int) -> float:
    drop_file_cache(side.path)
    before = side.daemon_reads()
    elapsed = sequential_read(side.path, size)
    if side.daemon_reads() - before < size // (4 * MIB):
        raise RuntimeError(f"sequential pass on {side.name}: the daemon saw too few reads; was the cache dropped?")
    return size / elapsed


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer rounds and reads (about 30 s)")
    p.add_argument("--rounds", type=int, default=None, help="rounds (default 7, quick 3)")
    p.add_argument("--reads", type=int, default=None, help="random reads per pass (default 4000, quick 1500)")
    p.add_argument("--prefetch", default="none", choices=["none", "markov", "hoeffding"],
                   help="prefetcher of the measured mount (default none: the serving path alone)")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    rounds = args.rounds or (3 if args.quick else 7)
    n_reads = args.reads or (1500 if args.quick else 4000)
    rng = random.Random(args.seed)

    print_machine()
    with Workspace() as ws:
        field = init_field(ws, "field")
        nm = NffsMount(ws, field, *tier_args(ws, "field"), "--prefetch", args.prefetch)
        params = nm.file("params")
        size = os.path.getsize(params)
        n_reads = min(n_reads, size // KIB4)
        t = time.perf_counter()
        fill(params, size)
        write_s = time.perf_counter() - t
        st = nm.stats()["store"]
        dram = next(t for t in st["tiers"] if t["name"] == "dram")
        n_pages = -(-size // nm.stats()["page_size"])
        print(f"nffs: params {size / MIB:.1f} MiB, page {nm.stats()['page_size'] // 1024} KiB, {st['materialised_pages']} of "
              f"{n_pages} pages materialised, {dram['pages']} in the dram tier ({dram['path']}); "
              f"written in {write_s:.2f} s; mounted in {nm.mount_seconds:.2f} s; prefetch={args.prefetch}")
        if dram["pages"] != n_pages:
            raise RuntimeError("not every page has a copy in the dram tier")

        mm = MinimalMount(ws, size, blksize=min(nm.stats()["page_size"], 1 << 17))
        tmpfs_file = os.path.join(ws.shm, "baseline.bin")
        fill(tmpfs_file, size)

        nffs_side = Side("nffs params", params, nm)
        minimal_side = Side("minimal_fs data", mm.file(), mm)
        tmpfs_side = Side("tmpfs file", tmpfs_file)

        results: dict[str, list[tuple[float, float]]] = {"hot": [], "cold": [], "sequential": []}
        reached_fraction: list[float] = []
        for r in range(rounds):
            flip = r % 2 == 1

            def pair(fn, a: Side, b: Side):
                if flip:
                    vb = fn(b)
                    va = fn(a)
                else:
                    va = fn(a)
                    vb = fn(b)
                return va, vb

            results["hot"].append(pair(lambda s: hot_pass(s, size, n_reads, rng), nffs_side, tmpfs_side))
            strict = args.prefetch == "none"
            cold = pair(lambda s: cold_pass(s, size, n_reads, rng, strict=strict or s is minimal_side), nffs_side, minimal_side)
            results["cold"].append((cold[0][0], cold[1][0]))
            reached_fraction.append(cold[0][1])
            results["sequential"].append(pair(lambda s: sequential_pass(s, size), nffs_side, minimal_side))
            h, c, s = results["hot"][-1], results["cold"][-1], results["sequential"][-1]
            print(f"round {r + 1}/{rounds}: hot {h[0] / h[1]:.2f}x  cold {c[0] / c[1]:.2f}x  sequential {s[0] / s[1]:.2f}x",
                  flush=True)

        rows = []
        spec = {
            "hot": ("hot reads: 4 KiB random pread, page-cached", "tmpfs file", "reads/s"),
            "cold": ("cold reads: 4 KiB random pread from the dram tier", "minimal_fs", "reads/s"),
            "sequential": ("sequential: 1 MiB reads, cold cache", "minimal_fs", "B/s"),
        }
        summary = {}
        for key, (label, base_name, unit) in spec.items():
            pairs = results[key]
            ratio = median(a / b for a, b in pairs)
            summary[key] = ratio
            rows.append([label, human_rate(median(a for a, _ in pairs), unit), f"{base_name} {human_rate(median(b for _, b in pairs), unit)}",
                         f"{ratio:.2f}x", f">= {TARGETS[key]}x", verdict(ratio, TARGETS[key])])
        print()
        print(f"medians over {rounds} rounds, {n_reads} random reads per pass, file {size / MIB:.1f} MiB")
        print_table(["SPEC 8 row", "nffs", "baseline", "ratio", "target", ""], rows)
        if args.prefetch != "none":
            print(f"cold passes: median {100 * median(reached_fraction):.1f}% of the reads reached the daemon "
                  f"(the rest were served from pages the prefetcher pushed)")
        st = nm.stats()["store"]
        print(f"nffs store counters: reads={st['reads']} implicit_page_reads={st['implicit_page_reads']} "
              f"checksum_failures={st['checksum_failures']} io_errors={st['io_errors']}")
        mm.unmount()
        nm.unmount()
    return 0


if __name__ == "__main__":
    sys.exit(main())
