#!/usr/bin/env python3
"""SPEC 8 row "writes": copying into `params` and random writes to new pages, each with fsync.

Setup (temp dirs on one disk, removed at the end):
  * nffs: a field whose params hold every round's fresh regions (log2_table_size 24, 1.5 GiB
    of float32 params, for --quick; 26, 5.6 GiB, for the full run; 64 KiB pages), mounted
    with `nffs mount` and the default options (prefetch hoeffding, write-back every 5 s)
    over a dram tier on tmpfs (/dev/shm, capacity 25 % as the embedded default) and an
    nvme home tier in the temp dir on disk;
  * baseline: scripts/minimal_fs.py --backing FILE, a minimal pyfuse3 file system whose
    `data` file is ONE file in the same temp dir, written with pwrite and made durable
    with fsync; same mount options and file flags.

Measurements (each side in turn, the order flipped every round, best of --rounds):
  copy    --size bytes (default 1 GiB, --quick 256 MiB) written from offset 0 in 1 MiB
          pwrite calls, then fsync; throughput = bytes / (writes + fsync). Target >= 0.5x.
  random  --writes 4 KiB pwrite calls (default 4000, --quick 1000), each at a random
          4 KiB slot of a distinct page that was never written (nffs materialises a page
          per write; the baseline allocates blocks of its sparse file), then one fsync;
          rate = writes / (writes + fsync). Target >= 0.25x.
The writer and both daemons run on one CPU (bench_common.SameCpu: on a small VM the
scheduler's placement of a daemon decides a FUSE round trip's cost more than the daemon
does; `--placement free` leaves it to the scheduler). Every write() to a FUSE file that
answers getxattr costs two round trips: the kernel asks for security.capability first
(FUSE keeps SB_NOSEC off); minimal_fs has no getxattr (ENOSYS: the kernel stops asking),
nffs has (concepts' points are xattrs). The mount settles before the first round.
Each round uses fresh regions, so nothing is ever overwritten and the kernel page cache
plays no part (writes to FUSE files without writeback cache go straight to the daemon).

Usage: python scripts/bench_write.py [--quick] [--size BYTES] [--writes N] [--rounds N] [--placement same|free]
                                     [--json FILE]
"""
from __future__ import annotations

import argparse
import contextlib
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from nffs.encoding.layout import FieldConfig, FieldLayout  # noqa: E402
from bench_common import (  # noqa: E402
    MinimalMount, NffsMount, SameCpu, Workspace, human_rate, init_field, prefetch_args, print_machine, print_table, result_row, tier_args,
    verdict, write_json,
)

MIB = 1 << 20
KIB4 = 4096
PAGE = 65536
TARGETS = {"copy": 0.5, "random": 0.25}


def copy_into(path: str, offset: int, size: int, block: bytes) -> float:
    """pwrite `size` bytes from `offset` in len(block) chunks, then fsync; seconds."""
    fd = os.open(path, os.O_WRONLY)
    try:
        start = time.perf_counter()
        pos = 0
        view = memoryview(block)
        while pos < size:
            n = min(len(block), size - pos)
            os.pwrite(fd, view[:n], offset + pos)
            pos += n
        os.fsync(fd)
        return time.perf_counter() - start
    finally:
        os.close(fd)


def random_writes(path: str, offsets: list[int], payload: bytes) -> float:
    fd = os.open(path, os.O_WRONLY)
    try:
        start = time.perf_counter()
        for off in offsets:
            os.pwrite(fd, payload, off)
        os.fsync(fd)
        return time.perf_counter() - start
    finally:
        os.close(fd)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="256 MiB copy, 1000 random writes, 1 round (about 1 minute)")
    p.add_argument("--size", type=int, default=None, help="bytes copied per round (default 1 GiB, quick 256 MiB)")
    p.add_argument("--writes", type=int, default=None, help="random 4 KiB writes per round (default 4000, quick 1000)")
    p.add_argument("--rounds", type=int, default=None, help="rounds, best one counts (default 2, quick 1)")
    p.add_argument("--prefetch", default="default", choices=["default", "none", "markov", "hoeffding"],
                   help="prefetcher of the measured mount (default: the mount's default, as SPEC 8 targets are for the default options)")
    p.add_argument("--placement", choices=["same", "free"], default="same",
                   help="the writer and both daemons on one CPU (default; see bench_common.SameCpu), or where the scheduler puts them")
    p.add_argument("--log2-table-size", type=int, default=None,
                   help="the field's table size (default: the smallest from 24 up whose params hold every round's regions)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", default=None, metavar="FILE", help="also write the results here")
    args = p.parse_args(argv)
    size = args.size or ((256 if args.quick else 1024) * MIB)
    n_writes = args.writes or (1000 if args.quick else 4000)
    rounds = args.rounds or (1 if args.quick else 2)
    rng = random.Random(args.seed)
    block = os.urandom(MIB)
    payload = os.urandom(KIB4)

    print_machine()
    need = rounds * (size + n_writes * 4 * PAGE)  # each round writes fresh regions
    log2 = args.log2_table_size or next(
        (n for n in range(24, 31) if FieldLayout(FieldConfig(log2_table_size=n)).params_bytes >= need), 30)
    with Workspace() as ws:
        field = init_field(ws, "field", "--log2-table-size", str(log2))
        nm = NffsMount(ws, field, *tier_args(ws, "field", dram_capacity="25%"), *prefetch_args(args.prefetch))
        params = nm.file("params")
        nm.settle()
        params_size = os.path.getsize(params)
        if need > params_size:
            raise SystemExit(f"bench_write: params is {params_size} bytes; {rounds} round(s) need {need}: "
                             f"raise --log2-table-size or lower --size/--writes/--rounds")
        mm = MinimalMount(ws, params_size, backing=ws.path("baseline-data.bin"))
        data = mm.file()

        def placed():
            return SameCpu(nm.pid, mm.pid) if args.placement == "same" else contextlib.nullcontext()
        print(f"nffs: params {params_size / MIB:.0f} MiB, 64 KiB pages, prefetch={args.prefetch}, home tier on "
              f"{ws.disk}; baseline: minimal_fs writing one file in the same directory", flush=True)

        copy_rates: list[tuple[float, float]] = []
        rand_rates: list[tuple[float, float]] = []
        region = 0
        for r in range(rounds):
            sides = [("nffs", params), ("minimal_fs", data)]
            if r % 2:
                sides.reverse()
            times: dict[str, float] = {}
            for name, path in sides:
                with placed():
                    times[name] = copy_into(path, region, size, block)
                print(f"round {r + 1}/{rounds}: copy {size / MIB:.0f} MiB + fsync into {name}: {times[name]:.2f} s "
                      f"({size / times[name] / MIB:.0f} MiB/s)", flush=True)
            copy_rates.append((size / times["nffs"], size / times["minimal_fs"]))
            region += size
            pages = rng.sample(range(region // PAGE, (region // PAGE) + n_writes * 4), n_writes)
            offsets = [pg * PAGE + rng.randrange(PAGE // KIB4) * KIB4 for pg in pages]
            region += n_writes * 4 * PAGE
            for name, path in sides:
                with placed():
                    times[name] = random_writes(path, offsets, payload)
                print(f"round {r + 1}/{rounds}: {n_writes} random 4 KiB writes to new pages + fsync into {name}: "
                      f"{times[name]:.2f} s ({n_writes / times[name]:,.0f} writes/s)", flush=True)
            rand_rates.append((n_writes / times["nffs"], n_writes / times["minimal_fs"]))

        best_copy = max(copy_rates, key=lambda ab: ab[0] / ab[1])
        best_rand = max(rand_rates, key=lambda ab: ab[0] / ab[1])
        r_copy = best_copy[0] / best_copy[1]
        r_rand = best_rand[0] / best_rand[1]
        rows = [
            result_row("write_copy", f"writes: {size // MIB} MiB copy into params (1 MiB writes) + fsync", best_copy[0],
                       best_copy[1], "minimal_fs, one file + fsync", "B/s", r_copy, TARGETS["copy"]),
            result_row("write_random", "writes: random 4 KiB writes to new pages + fsync", best_rand[0], best_rand[1],
                       "minimal_fs, one file + fsync", "writes/s", r_rand, TARGETS["random"]),
        ]
        print()
        print(f"best of {rounds} round(s)")
        print_table(["SPEC 8 row", "nffs", "baseline", "ratio", "target", ""], [
            [rows[0]["row"], human_rate(best_copy[0], "B/s"), human_rate(best_copy[1], "B/s"), f"{r_copy:.2f}x",
             f">= {TARGETS['copy']}x", verdict(r_copy, TARGETS["copy"])],
            [rows[1]["row"], human_rate(best_rand[0], "writes/s"), human_rate(best_rand[1], "writes/s"), f"{r_rand:.2f}x",
             f">= {TARGETS['random']}x", verdict(r_rand, TARGETS["random"])],
        ])
        st = nm.stats()["store"]
        print(f"placement: {args.placement}")
        print(f"nffs store: {st.get('materialised_pages')} materialised pages, {st.get('dirty_pages')} dirty, "
              f"enospc={st.get('enospc')} io_errors={st.get('io_errors')}")
        write_json(args.json, "bench_write", rows, args=vars(args))
        mm.unmount()
        nm.unmount()
    return 0


if __name__ == "__main__":
    sys.exit(main())
