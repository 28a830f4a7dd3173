#!/usr/bin/env python3
"""SPEC 8 prefetch benchmark: read latency and slow-tier reads, hoeffding vs markov vs none.

Every field's pages are materialised (written) first and homed on an ``nvme`` tier that
is then mounted with ``latency=5ms`` (every page read from it sleeps 5 ms) under a
small ``dram`` tier, so every first touch of a page is a slow-tier read unless the
prefetcher brought it up before. Each (workload, predictor) run is a fresh mount after
``echo 3 > /proc/sys/vm/drop_caches`` (root) — a new mount also starts with an empty
kernel page cache for the field — so ``none`` is not flattered by earlier runs.

Workloads (one reader, "think" time after each read = the work it does on the data):

- ``scan``   — sequential 4 KiB preads over the whole ``params`` (106 MiB, 1701 pages);
- ``stride`` — 4 KiB preads every 2 pages (128 KiB), then the same shifted by 1 page;
- ``camera`` — a camera path through ``query``: each frame is a batch of 256 points (an
  8x8x4 block of ray samples, 0.01 wide) whose centre moves smoothly along a curve
  (2e-5 per frame, a seventh of the finest cell) over a 16-level, b=1.5, 2^22-entry grid
  (340 MiB; the pages the path touches are materialised); latency = write request + read answer; the first frames are
  warm-up and not counted (no predictor has anything to extrapolate from yet);
- ``trace``  — the first reads of /work/shared/traces/cloudphysics-w106.csv.gz replayed
  on ``params`` (offset = lbn*512 mod params size; scripts/replay_trace.py).

Slow-tier reads come from the ``stats`` file's tier counters (reads of the durable
tier; ``demand`` = total minus the prefetcher's own) and, like coverage (definition in
docs/prefetch.md), are counted over the measured part of the run (for ``camera``: after
the warm-up frames); accuracy is the ``stats`` value for the whole mount.

    python scripts/bench_prefetch.py [--workloads scan,stride,camera,trace]
        [--predictors hoeffding,markov,none] [--latency 5ms] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import replay_trace  # noqa: E402

PAGE = 65536
CAMERA_STEP = 2e-5  # distance the camera moves per frame (the finest cell is 1.4e-4)


def nffs(*args: str) -> None:
    cmd = [os.path.join(os.path.dirname(sys.executable), "nffs")]
    if not os.access(cmd[0], os.X_OK):
        cmd = [sys.executable, "-m", "nffs.cli"]
    res = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=600)
    if res.returncode != 0:
        raise RuntimeError(f"nffs {' '.join(args)} failed: {res.stderr.strip()} {res.stdout.strip()}")


def drop_caches() -> None:
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError:
        print("warning: cannot drop the page cache (not root?)", file=sys.stderr)


def is_mounted(path: str) -> bool:
    target = os.path.realpath(path)
    with open("/proc/self/mounts") as f:
        return any(len(p) > 1 and p[1] == target for p in (line.split() for line in f))


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.disk = tempfile.mkdtemp(prefix="nffs-bench-prefetch-", dir=args.workdir)
        self.shm = tempfile.mkdtemp(prefix="nffs-bench-prefetch-", dir="/dev/shm")
        self.mnt = os.path.join(self.disk, "mnt")
        os.makedirs(self.mnt)

    def close(self) -> None:
        if is_mounted(self.mnt):
            subprocess.run(["umount", "-l", self.mnt], capture_output=True)
        if not self.args.keep:
            shutil.rmtree(self.disk, ignore_errors=True)
        shutil.rmtree(self.shm, ignore_errors=True)

    # -------------------------------------------------------------- fields
    def tiers(self, name: str, latency: str | None, dram: str) -> list[str]:
        nvme = f"nvme={self.disk}/{name}-nvme,kind=nvme" + (f",latency={latency}" if latency else "")
        return ["--tier", f"dram={self.shm}/{name}-dram,kind=dram,capacity={dram}", "--tier", nvme]

    def make_field(self, name: str, init_args: list[str], pages_to_write) -> str:
        field = os.path.join(self.disk, name)
        t0 = time.time()
        nffs("init", field, *init_args, *self.tiers(name, None, "1G"))
        nffs("mount", field, self.mnt, "--prefetch", "none", *self.tiers(name, None, "1G"))
        try:
            fd = os.open(os.path.join(self.mnt, "params"), os.O_WRONLY)
            size = os.fstat(fd).st_size
            rng = np.random.default_rng(1)
            pages = pages_to_write(size)
            for page in pages:
                off = int(page) * PAGE
                n = min(PAGE, size - off)
                os.pwrite(fd, rng.standard_normal(n // 4, dtype=np.float32).tobytes(), off)
            os.fsync(fd)
            os.close(fd)
        finally:
            nffs("umount", self.mnt)
        print(f"  field {name}: {len(pages)} pages written and homed on nvme in {time.time() - t0:.1f}s", flush=True)
        return field

    # -------------------------------------------------------------- runs
    def run(self, workload: str, field: str, name: str, kind: str, body) -> dict:
        drop_caches()
        nffs("mount", field, self.mnt, "--prefetch", kind, *self.tiers(name, self.args.latency, self.args.dram))
        try:
            # river is imported in the background after mounting: start once the trees exist
            deadline = time.monotonic() + 120
            while not self.stats().get("prefetch", {}).get("ready", True) and time.monotonic() < deadline:
                time.sleep(0.05)
            self.measured_from = before = self.stats()
            t0 = time.perf_counter()
            lat = body(self.mnt)
            wall = time.perf_counter() - t0
            before = self.measured_from  # a workload with a warm-up moves it to its end
            time.sleep(0.3)  # let the last prefetches settle before reading the counters
            after = self.stats()
            if os.environ.get("NFFS_BENCH_DUMP"):
                with open(os.environ["NFFS_BENCH_DUMP"], "a") as f:
                    f.write(json.dumps({"workload": workload, "predictor": kind, "stats": after, "lat_ms": (lat * 1e3).round(3).tolist()}) + "\n")
        finally:
            nffs("umount", self.mnt)
        return self.result(workload, kind, lat, wall, before, after)

    def stats(self) -> dict:
        with open(os.path.join(self.mnt, "stats")) as f:
            return json.load(f)

    @staticmethod
    def slow_reads(st: dict) -> int:
        return sum(t["reads"] for t in st["store"]["tiers"] if not t["volatile"])

    def result(self, workload: str, kind: str, lat: np.ndarray, wall: float, before: dict, after: dict) -> dict:
        """Latencies, and counters over the measured part of the run (after any warm-up)."""
        pf = after.get("prefetch", {})
        pf0 = before.get("prefetch", {})

        def delta(key: str) -> int:
            return int(pf.get(key) or 0) - int(pf0.get(key) or 0)

        slow = self.slow_reads(after) - self.slow_reads(before)
        demand = slow - delta("prefetch_slow_reads")
        issued, useful, late = delta("issued"), delta("useful"), delta("late")
        avoided = useful - late
        ms = lat * 1e3
        return {
            "workload": workload,
            "predictor": kind,
            "reads": int(ms.size),
            "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)),
            "max_ms": float(ms.max()),
            "mean_ms": float(ms.mean()),
            "wall_s": wall,
            "slow_tier_reads": slow,
            "demand_slow_reads": demand,
            "issued": issued,
            "useful": useful,
            "late": late,
            # the stats file's definitions (docs/prefetch.md): accuracy over the whole mount
            # (a page issued in the warm-up may be used after it), coverage over the
            # measured part
            "accuracy": pf.get("accuracy"),
            "coverage": round(avoided / (avoided + demand), 4) if pf.get("predictor", "none") != "none" and avoided + demand else None,
            "coverage_whole_mount": pf.get("coverage"),
            "model_bytes": pf.get("model_bytes"),
            "learn_us": pf.get("learn_us"),
            "predict_us": pf.get("predict_us"),
        }

    # -------------------------------------------------------------- workloads
    def scan(self, mnt: str) -> np.ndarray:
        fd = os.open(os.path.join(mnt, "params"), os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            offsets = np.arange(0, size - 4096 + 1, 4096, dtype=np.int64)
            return replay_trace.replay(fd, offsets, np.full(offsets.size, 4096, np.int64), self.args.think_us * 1e-6)
        finally:
            os.close(fd)

    def stride(self, mnt: str) -> np.ndarray:
        fd = os.open(os.path.join(mnt, "params"), os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            offsets = np.concatenate([np.arange(phase, size - 4096 + 1, 2 * PAGE, dtype=np.int64) for phase in (0, PAGE)])
            return replay_trace.replay(fd, offsets, np.full(offsets.size, 4096, np.int64), self.args.stride_think_us * 1e-6)
        finally:
            os.close(fd)

    def trace(self, mnt: str) -> np.ndarray:
        fd = os.open(os.path.join(mnt, "params"), os.O_RDONLY)
        try:
            offsets, sizes = replay_trace.load_reads(self.args.trace, os.fstat(fd).st_size, self.args.trace_limit)
            return replay_trace.replay(fd, offsets, sizes, self.args.trace_think_us * 1e-6)
        finally:
            os.close(fd)

    def camera_frames(self) -> list[np.ndarray]:
        g = np.linspace(-0.005, 0.005, 8)
        block = np.stack(np.meshgrid(g, g, g[:4], indexing="ij"), -1).reshape(-1, 3)
        frames = []
        for k in range(self.args.warmup + self.args.frames):
            th = 0.3 + k * CAMERA_STEP / 0.3
            centre = np.array([0.5 + 0.3 * np.cos(th), 0.5 + 0.3 * np.sin(th), 0.5 + 0.05 * np.sin(2 * th)])
            frames.append((block + centre).astype("<f4"))
        return frames

    def camera_pages(self, layout) -> list[int]:
        from nffs.encoding import hashgrid

        pages: set[int] = set()
        for pts in self.camera_frames():
            entries, _ = hashgrid.corner_entries(layout, pts)
            pages.update(hashgrid.touched_pages(layout, entries).tolist())
        return sorted(pages)

    def camera(self, mnt: str) -> np.ndarray:
        fd = os.open(os.path.join(mnt, "query"), os.O_RDWR)
        try:
            with open(os.path.join(mnt, "field.json")) as f:
                width = json.load(f)["encoding_width"]
            lat = []
            for k, pts in enumerate(self.camera_frames()):
                t0 = time.perf_counter()
                os.pwrite(fd, pts.tobytes(), 0)
                answer = os.pread(fd, pts.shape[0] * width * 4, 0)
                t1 = time.perf_counter()
                assert len(answer) == pts.shape[0] * width * 4
                if k >= self.args.warmup:
                    lat.append(t1 - t0)
                elif k == self.args.warmup - 1:
                    self.measured_from = self.stats()  # counters too start after the warm-up
                time.sleep(self.args.frame_ms * 1e-3)
            return np.asarray(lat)
        finally:
            os.close(fd)


CAMERA_INIT = ["--levels", "16", "--per-level-scale", "1.5", "--log2-table-size", "22", "--page-size", "64K"]
SCAN_INIT = ["--levels", "16", "--log2-table-size", "20", "--page-size", "64K"]


def table(results: list[dict]) -> str:
    head = (f"{'workload':8} {'predictor':10} {'reads':>6} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'slow rd':>7} "
            f"{'demand':>6} {'issued':>6} {'useful':>6} {'late':>5} {'acc':>6} {'cov':>6}")
    lines = [head, "-" * len(head)]
    for r in results:
        acc = "-" if r["accuracy"] is None else f"{r['accuracy']:.3f}"
        cov = "-" if r["coverage"] is None else f"{r['coverage']:.3f}"
        lines.append(
            f"{r['workload']:8} {r['predictor']:10} {r['reads']:6d} {r['p50_ms']:8.3f} {r['p99_ms']:8.3f} {r['max_ms']:8.2f} "
            f"{r['slow_tier_reads']:7d} {r['demand_slow_reads']:6d} {r['issued'] or 0:6d} {r['useful'] or 0:6d} {r['late'] or 0:5d} {acc:>6} {cov:>6}"
        )
    return "\n".join(lines)


def ratios(results: list[dict]) -> list[dict]:
    """none / predictor ratios of the medians over repeated runs (p99, demand slow reads)."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in results:
        groups.setdefault((r["workload"], r["predictor"]), []).append(r)

    def med(rs: list[dict], key: str) -> float | None:
        vals = [r[key] for r in rs if r[key] is not None]
        return float(np.median(vals)) if vals else None

    out = []
    for (workload, kind), rs in groups.items():
        base = groups.get((workload, "none"))
        if kind == "none" or base is None:
            continue
        p99, p99_base = med(rs, "p99_ms"), med(base, "p99_ms")
        out.append({
            "workload": workload,
            "predictor": kind,
            "runs": len(rs),
            "p99_ms": p99,
            "p99_none_ms": p99_base,
            "p99_none_over_predictor": p99_base / p99 if p99 else None,
            "demand_slow_reads_none_over_predictor": med(base, "demand_slow_reads") / max(1.0, med(rs, "demand_slow_reads")),
            "accuracy": med(rs, "accuracy"),
            "coverage": med(rs, "coverage"),
        })
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workloads", default="scan,stride,camera,trace")
    ap.add_argument("--predictors", default="hoeffding,markov,none")
    ap.add_argument("--latency", default="5ms", help="latency= of the slow (nvme) tier")
    ap.add_argument("--dram", default="16M", help="capacity of the dram tier during the runs")
    ap.add_argument("--think-us", type=float, default=250.0, help="scan: work after each 4 KiB read")
    ap.add_argument("--stride-think-us", type=float, default=2000.0, help="stride: work after each read")
    ap.add_argument("--frames", type=int, default=200, help="camera: measured frames")
    ap.add_argument("--warmup", type=int, default=10, help="camera: frames before measuring")
    ap.add_argument("--frame-ms", type=float, default=30.0, help="camera: work (rendering) after each frame")
    ap.add_argument("--trace", default=replay_trace.DEFAULT_TRACE)
    ap.add_argument("--trace-limit", type=int, default=10000, help="trace: reads replayed")
    ap.add_argument("--trace-think-us", type=float, default=2000.0, help="trace: work after each read")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each (workload, predictor); ratios use medians")
    ap.add_argument("--workdir", default=os.environ.get("NFFS_BENCH_DIR", "/tmp"))
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--keep", action="store_true", help="keep the fields (in --workdir)")
    args = ap.parse_args(argv)
    workloads = [w for w in args.workloads.split(",") if w]
    kinds = [k for k in args.predictors.split(",") if k]
    bench = Bench(args)
    results: list[dict] = []
    try:
        fields: dict[str, str] = {}
        if set(workloads) & {"scan", "stride", "trace"}:
            fields["scan"] = bench.make_field("scanfield", SCAN_INIT, lambda size: list(range(-(-size // PAGE))))
        if "camera" in workloads:
            from nffs.encoding.layout import FieldConfig, FieldLayout

            layout = FieldLayout(FieldConfig(levels=16, per_level_scale=1.5, log2_table_size=22, page_size=PAGE))
            fields["camera"] = bench.make_field("camerafield", CAMERA_INIT, lambda size: bench.camera_pages(layout))
        for workload in workloads:
            body = getattr(bench, workload)
            name = "camerafield" if workload == "camera" else "scanfield"
            field = fields["camera" if workload == "camera" else "scan"]
            for run in range(args.repeat):
                for kind in kinds:  # interleaved, so that machine noise spreads over all of them
                    r = bench.run(workload, field, name, kind, body)
                    r["run"] = run
                    results.append(r)
                    print(f"  {workload:7} {kind:10} p99 {r['p99_ms']:8.3f} ms  slow-tier reads {r['slow_tier_reads']:5d} "
                          f"(demand {r['demand_slow_reads']})  accuracy {r['accuracy']}  coverage {r['coverage']}", flush=True)
    finally:
        bench.close()
    print()
    print(table(results))
    print()
    for q in ratios(results):
        p99 = q["p99_none_over_predictor"]
        print(f"{q['workload']:8} {q['predictor']:10} p99 none/{q['predictor']} = {p99:6.1f}x "
              f"({q['p99_none_ms']:.3f} / {q['p99_ms']:.3f} ms)   "
              f"demand slow-tier reads none/{q['predictor']} = {q['demand_slow_reads_none_over_predictor']:6.1f}x   "
              f"accuracy {q['accuracy']}  coverage {q['coverage']}"
              + (f"   [medians of {q['runs']} runs]" if q["runs"] > 1 else ""))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results, "ratios": ratios(results)}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
