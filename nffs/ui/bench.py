"""`nffs bench`: the SPEC 8 measurements and their baselines in one run, one table, optional plots.

Each measurement is one of the repository's benchmark scripts (scripts/bench_*.py), run
as a child process with `--json FILE`, so a script can still be run, read and tuned
on its own and `nffs bench` adds no second implementation of any figure. The scripts
mount what they need in temp dirs and clean up; this module only schedules them, shows
progress, collects their result rows (`key, row, nffs, baseline, ratio, target,
higher_is_better, meets`) into one table, and draws the plots.

Two measurements are made here: tier occupancy over time, sampled from `stats` every
0.1 s while a small workload fills a dram tier past its capacity (data for a plot,
not a SPEC 8 row), and "do no harm" (SPEC 8: the default predictor against `none` on
unpredictable workloads — uniformly random 4 KiB reads and random query batches over a
`latency=5ms` home tier — p99 and total time within 1.15x).
"""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from .progress import Progress, is_tty

log = logging.getLogger(__name__)


class BenchError(Exception):
    """The benchmarks cannot run (scripts missing, bad --only name, matplotlib missing for --plot)."""


@dataclass
class Suite:
    title: str
    script: str | None  # scripts/<name>; None: measured in this module
    quick: list[str]
    full: list[str]
    quick_budget_s: float = 60.0  # with --quick, a script still running after this is stopped (SIGINT)
    env: dict[str, str] = field(default_factory=dict)


QUICK_TOTAL_S = 270.0  # `nffs bench --quick` must finish in under 5 minutes (plots and cleanup after it)
STOP_GRACE_S = 60.0  # after SIGINT, time for a script to unmount and clean up


#: the prefetch row: scripts/prefetch_suite.py (docs/prefetch.md), a sequential reader and an
#: orbiting camera over a 5 ms tier with --quick; its quick subset of every kind otherwise
PREFETCH_QUICK = ["--workloads", "seq,cam-orbit", "--predictors", "none,hoeffding", "--page-sizes", "64K",
                  "--field-page-sizes", "4K", "--reads", "800", "--frames", "24", "--warmup", "8", "--no-floor"]
PREFETCH_FULL = ["--quick", "--predictors", "none,markov,hoeffding"]
SUITES: dict[str, Suite] = {
    "io": Suite("hot, cold and sequential reads", "bench_io.py", ["--quick", "--rounds", "2"], [], 60),
    "writes": Suite("copy + fsync, random writes to new pages + fsync", "bench_write.py", ["--quick"], [], 45),
    "query": Suite("inference, vectorisation, single point, isolation, batch sizes", "bench_query.py",
                   ["--quick", "--rounds", "2", "--sweep"], ["--sweep"], 90),
    "prefetch": Suite("p99 and slow-tier reads, default predictor vs none", "prefetch_suite.py", PREFETCH_QUICK,
                      PREFETCH_FULL, 80),
    "scale": Suite("mount time and daemon memory vs pages", "bench_scale.py", ["--quick", "--mounts", "1"], [], 50),
    "noharm": Suite("do no harm: random reads and random batches, default predictor vs none", None, [], [], 60),
    "occupancy": Suite("tier occupancy over time (for the plot)", None, [], [], 25),
}

NOT_MEASURED: list[str] = []
NOHARM_TARGET = 1.15


def scripts_dir() -> str:
    """scripts/ of the checkout this package runs from (an editable install, as scripts/setup.sh makes)."""
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    path = os.path.join(here, "scripts")
    if not os.path.isfile(os.path.join(path, "bench_common.py")):
        raise BenchError(f"the benchmark scripts are not next to this installation (looked in {path}); "
                         "run nffs from a checkout installed with scripts/setup.sh")
    return path


# ---------------------------------------------------------------------- running the scripts
def _run_script(suite_name: str, suite: Suite, quick: bool, workdir: str, bar: Progress | None,
                log_file, budget_s: float | None = None) -> dict[str, Any]:
    script = os.path.join(scripts_dir(), suite.script or "")
    if not os.path.isfile(script):
        return {"skipped": f"{suite.script} not present"}
    out_json = os.path.join(workdir, f"{suite_name}.json")
    cmd = [sys.executable, script, *(suite.quick if quick else suite.full), "--json", out_json]
    env = {**os.environ, **suite.env, "PYTHONUNBUFFERED": "1"}
    if suite_name == "prefetch":
        env["NFFS_BENCH_DUMP"] = os.path.join(workdir, "prefetch-latencies.jsonl")
    start = time.monotonic()
    log_file.write(f"\n=== {suite_name}: {' '.join(cmd)}\n")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            stdin=subprocess.DEVNULL)
    assert proc.stdout is not None
    stopped = threading.Event()
    watchdog = None
    if budget_s is not None:
        # SIGINT, not SIGTERM: the scripts unmount and clean up in their finally blocks
        watchdog = threading.Timer(budget_s, lambda: (stopped.set(), proc.send_signal(signal.SIGINT)))
        watchdog.daemon = True
        watchdog.start()
    try:
        for line in proc.stdout:
            log_file.write(line)
            text = line.rstrip()
            if bar is not None and bar.enabled:
                if text:
                    bar.note = f"{suite_name}: {text[:90]}"
                    bar.draw()
            else:
                print(f"  {suite_name} | {text}", flush=True)
        try:
            code = proc.wait(STOP_GRACE_S if stopped.is_set() else None)
        except subprocess.TimeoutExpired:
            proc.terminate()  # our own child, still cleaning up after its grace period
            code = proc.wait()
    finally:
        if watchdog is not None:
            watchdog.cancel()
    result: dict[str, Any] = {"seconds": round(time.monotonic() - start, 1), "returncode": code, "command": cmd}
    if stopped.is_set():
        result["error"] = f"{suite.script} stopped after the --quick budget of {budget_s:.0f} s"
        result["timed_out"] = True
    elif code != 0:
        result["error"] = f"{suite.script} exited with status {code} (see the log)"
    try:
        with open(out_json) as f:
            result["json"] = json.load(f)
    except (OSError, ValueError):
        if code == 0:
            result["error"] = f"{suite.script} wrote no results"
    if suite_name == "prefetch":
        result["latencies"] = _read_latency_dump(env["NFFS_BENCH_DUMP"])
    return result


def _read_latency_dump(path: str) -> list[dict[str, Any]]:
    out = []
    try:
        with open(path) as f:
            for line in f:
                try:
                    d = json.loads(line)
                except ValueError:
                    continue
                out.append({"workload": d.get("workload"), "predictor": d.get("predictor"), "lat_ms": d.get("lat_ms", [])})
    except OSError:
        pass
    return out


# ---------------------------------------------------------------------- occupancy workload
def _occupancy(quick: bool, bar: Progress | None) -> dict[str, Any]:
    """Fill a 16 MiB dram tier with 3x its size of writes, then read it all back; sample the tiers."""
    sys.path.insert(0, scripts_dir())
    import bench_common as bc  # noqa: PLC0415 (the scripts directory is only known at run time)

    samples: list[dict[str, Any]] = []
    stop = threading.Event()
    mib = 1 << 20
    total = (48 if quick else 96) * mib
    with bc.Workspace() as ws:
        field_dir = bc.init_field(ws, "occ", "--log2-table-size", "20")
        m = bc.NffsMount(ws, field_dir, *bc.tier_args(ws, "occ", dram_capacity="16M"), "--writeback-interval", "1")
        t0 = time.monotonic()

        def sample() -> None:
            while not stop.is_set():
                try:
                    st = m.stats()
                except (OSError, ValueError):
                    break
                tiers = st.get("store", {}).get("tiers", [])
                samples.append({"t": round(time.monotonic() - t0, 3),
                                "tiers": {t["name"]: {"used_bytes": t.get("used_bytes"), "pages": t.get("pages"),
                                                      "dirty_pages": t.get("dirty_pages"), "capacity": t.get("capacity")}
                                          for t in tiers}})
                stop.wait(0.1)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        block = os.urandom(mib)
        params = m.file("params")
        fd = os.open(params, os.O_RDWR)
        try:
            size = min(total, os.path.getsize(params))
            for off in range(0, size, mib):
                os.pwrite(fd, block, off)
                if bar is not None:
                    bar.note = f"occupancy: wrote {off // mib + 1} of {size // mib} MiB"
                    bar.draw()
                time.sleep(0.02)
            os.fsync(fd)
            time.sleep(1.5)
            bc.drop_file_cache(params)
            for off in range(0, size, mib):
                os.pread(fd, mib, off)
                time.sleep(0.01)
            time.sleep(1.0)
        finally:
            os.close(fd)
            stop.set()
            sampler.join(5)
        m.unmount()
    return {"samples": samples, "workload": f"write {total // mib} MiB in 1 MiB writes, fsync, read it all back; "
                                            "dram tier 16 MiB, write-back every 1 s"}


# ---------------------------------------------------------------------- do no harm
def _do_no_harm(quick: bool, bar: Progress | None) -> dict[str, Any]:
    """Random 4 KiB reads and random query batches, `hoeffding` (the default) vs `none`.

    The field (log2_table_size 18, 64 KiB pages, every page written) is homed on an nvme
    tier with latency=5ms under an empty 16 MiB dram tier; each predictor gets two fresh
    mounts, in the order hoeffding, none, none, hoeffding (a new mount starts with an empty
    kernel cache and, the dram tier being private to the mount, no memory copies). Reads
    hit pages in a uniformly random order; batches are uniformly random points. Rows: p99
    over both runs' samples and total time per run, of the predictor over `none`; the
    prefetches it issued are in the JSON (`prefetches_issued`).
    """
    import numpy as np

    sys.path.insert(0, scripts_dir())
    import bench_common as bc  # noqa: PLC0415

    n_reads = 300 if quick else 1500
    n_batches = 4 if quick else 30
    batch_points = 2048 if quick else 4096
    rng = np.random.default_rng(3)
    out: dict[str, Any] = {"reads": n_reads, "batches": n_batches, "runs": {}}
    with bc.Workspace() as ws:
        field_dir = bc.init_field(ws, "noharm", "--log2-table-size", "18")
        dram = os.path.join(ws.shm, "noharm-dram")
        fast = ["--tier", f"dram={dram},kind=dram,capacity=16M", "--tier", f"nvme={ws.path('noharm-nvme')},kind=nvme"]
        slow = ["--tier", f"dram={dram},kind=dram,capacity=16M",
                "--tier", f"nvme={ws.path('noharm-nvme')},kind=nvme,latency=5ms"]
        m = bc.NffsMount(ws, field_dir, *fast, "--prefetch", "none")
        size = os.path.getsize(m.file("params"))
        fd = os.open(m.file("params"), os.O_WRONLY)
        try:
            block = os.urandom(1 << 20)
            for off in range(0, size, 1 << 20):
                os.pwrite(fd, block[: min(1 << 20, size - off)], off)
            os.fsync(fd)
        finally:
            os.close(fd)
        info = json.loads(open(m.file("field.json")).read())
        m.unmount()
        offsets = (rng.integers(0, size // 4096, n_reads) * 4096).tolist()
        batches = [rng.random((batch_points, int(info["dims"])), dtype=np.float32) for _ in range(n_batches)]
        width = int(info.get("encoding_width") or info["levels"] * info["features"])
        # each predictor twice, in the order A B B A: the slow tier is a real disk under its
        # emulated latency, and a single run per predictor, always in the same order, put
        # drift between runs into the ratio (p99 1.23x once, 0.94x and 1.15x in the next two
        # runs, with no prefetch issued at all)
        lat_reads: dict[str, list[float]] = {"hoeffding": [], "none": []}
        lat_q: dict[str, list[float]] = {"hoeffding": [], "none": []}
        totals: dict[str, list[float]] = {"hoeffding": [0.0, 0.0], "none": [0.0, 0.0]}
        issued: dict[str, Any] = {}
        order = ("hoeffding", "none", "none", "hoeffding")
        for pred in order:
            if bar is not None:
                bar.note = f"noharm: {pred}"
                bar.draw()
            m = bc.NffsMount(ws, field_dir, *slow, "--prefetch", pred)
            m.settle(timeout=30)
            t0 = time.perf_counter()
            rfd = os.open(m.file("params"), os.O_RDONLY)
            try:
                os.posix_fadvise(rfd, 0, 0, os.POSIX_FADV_RANDOM)
                for off in offsets:
                    t = time.perf_counter()
                    os.pread(rfd, 4096, off)
                    lat_reads[pred].append(time.perf_counter() - t)
            finally:
                os.close(rfd)
            totals[pred][0] += time.perf_counter() - t0
            t0 = time.perf_counter()
            qfd = os.open(m.file("query"), os.O_RDWR)
            try:
                for pts in batches:
                    t = time.perf_counter()
                    os.pwrite(qfd, pts.tobytes(), 0)
                    want, got = len(pts) * width * 4, 0
                    while got < want:
                        chunk = os.pread(qfd, want - got, got)
                        if not chunk:
                            break
                        got += len(chunk)
                    lat_q[pred].append(time.perf_counter() - t)
            finally:
                os.close(qfd)
            totals[pred][1] += time.perf_counter() - t0
            pf = m.stats().get("prefetch") or {}
            if pred != "none":
                issued[pred] = issued.get(pred, 0) + int(pf.get("issued") or 0)
            out["runs"][pred] = {"predictor_active": pf.get("predictor")}
            m.unmount()
        for pred, run in out["runs"].items():
            passes = order.count(pred)  # totals are per pass (the mean of its runs)
            run.update({"read_p99_s": float(np.percentile(lat_reads[pred], 99)),
                        "reads_total_s": totals[pred][0] / passes,
                        "batch_p99_s": float(np.percentile(lat_q[pred], 99)),
                        "batches_total_s": totals[pred][1] / passes,
                        "prefetches_issued": issued.get(pred), "passes": passes})
    return out


def _noharm_rows(res: dict[str, Any]) -> list[dict[str, Any]]:
    runs = res.get("runs", {})
    p, n = runs.get("hoeffding"), runs.get("none")
    if not p or not n:
        return []
    rows = []
    active = p.get("predictor_active")
    note = "" if active == "hoeffding" else f" (daemon reported predictor {active!r})"
    for key, label in (("read_p99_s", "random 4 KiB reads: p99"), ("reads_total_s", "random 4 KiB reads: total time"),
                       ("batch_p99_s", "random query batches: p99"),
                       ("batches_total_s", "random query batches: total time")):
        ratio = p[key] / n[key] if n[key] else None
        rows.append({"key": f"noharm_{key}", "row": f"do no harm, {label} hoeffding / none{note}", "nffs": p[key],
                     "baseline": n[key], "baseline_name": "--prefetch none", "unit": "s", "ratio": ratio,
                     "target": NOHARM_TARGET, "higher_is_better": False,
                     "meets": None if ratio is None else ratio <= NOHARM_TARGET})
    return rows


# ---------------------------------------------------------------------- the table
def collect_rows(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for name, res in results.items():
        if isinstance(res.get("noharm"), dict):
            rows.extend(_noharm_rows(res["noharm"]))
        data = res.get("json")
        if not isinstance(data, dict):
            continue
        if name == "prefetch":
            rows.extend(_prefetch_rows(data))
        else:
            rows.extend(r for r in data.get("rows", []) if isinstance(r, dict))
    return rows


def _prefetch_rows(data: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for q in data.get("ratios", []):
        wl, pred = q.get("workload"), q.get("predictor")
        kind, target = q.get("target") or ("report", 0)
        if kind != "p99x":
            continue  # do-no-harm and report-only workloads (the suite's own targets): no p99 row
        ratio = q.get("p99_none_over_predictor")
        rows.append({"key": f"prefetch_{wl}_{pred}_p99", "row": f"prefetch {wl}: p99 none / {pred}",
                     "nffs": q.get("p99_ms"), "baseline": q.get("p99_none_ms"), "unit": "ms p99", "ratio": ratio,
                     "target": target, "higher_is_better": True,
                     "meets": None if ratio is None else ratio >= target})
        for what in ("accuracy", "coverage"):
            v = q.get(what)
            rows.append({"key": f"prefetch_{wl}_{pred}_{what}", "row": f"prefetch {wl}: {what} of {pred}", "nffs": v,
                         "baseline": None, "unit": "", "ratio": v, "target": 0.9, "higher_is_better": True,
                         "meets": None if v is None else v >= 0.9})
    return rows


def _num(v: Any, unit: str) -> str:
    if not isinstance(v, (int, float)):
        return "—"
    if unit in ("B/s",):
        from .view import human_bytes

        return human_bytes(v) + "/s"
    if unit == "s":
        if v < 1e-3:
            return f"{v * 1e6:.0f} µs"
        return f"{v * 1e3:.2f} ms" if v < 1 else f"{v:.2f} s"
    if unit == "B/page":
        return f"{v:.0f} B/page"
    if unit == "":
        return f"{100 * v:.1f}%"
    if abs(v) >= 1e6:
        return f"{v / 1e6:.2f} M{unit}"
    if abs(v) >= 1e3:
        return f"{v / 1e3:.2f} k{unit}"
    return f"{v:.3g} {unit}"


def render_table(rows: list[dict[str, Any]], notes: list[tuple[str, str]] | None = None) -> str:
    header = ["SPEC 8 row", "nffs", "baseline", "ratio", "target", "verdict"]
    body = []
    for r in rows:
        ratio = r.get("ratio")
        unit = r.get("unit", "")
        if unit == "" and isinstance(ratio, (int, float)):
            ratio_text = f"{100 * ratio:.1f}%"
            target_text = f">= {100 * r['target']:.0f}%"
        else:
            ratio_text = f"{ratio:.2f}x" if isinstance(ratio, (int, float)) else "—"
            op = ">=" if r.get("higher_is_better", True) else "<="
            target_text = f"{op} {r['target']:g}x" if isinstance(r.get("target"), (int, float)) else "—"
        if unit == "B/page":
            ratio_text = f"{ratio:.0f} B" if isinstance(ratio, (int, float)) else "—"
            target_text = f"<= {r['target']:.0f} B"
        elif r.get("absolute"):  # a limit on the figure itself (e.g. a p99 in seconds), not a ratio
            ratio_text = _num(ratio, unit)
            op = ">=" if r.get("higher_is_better", True) else "<="
            target_text = f"{op} {_num(r.get('target'), unit)}"
        verdict = {True: "meets", False: "MISSES", None: "—"}[r.get("meets")]
        body.append([r.get("row", r.get("key", "?")), _num(r.get("nffs"), unit), _num(r.get("baseline"), unit),
                     ratio_text, target_text, verdict])
    for text in NOT_MEASURED:
        body.append([text, "—", "—", "—", "—", "not measured"])
    for text, verdict in notes or []:
        body.append([text, "—", "—", "—", "—", verdict])
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(b, widths)) for b in body]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------- main
def run_bench(quick: bool = False, json_path: str | None = None, plot_dir: str | None = None,
              only: list[str] | None = None) -> int:
    names = only or list(SUITES)
    unknown = [n for n in names if n not in SUITES]
    if unknown:
        raise BenchError(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(SUITES)}")
    if plot_dir:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise BenchError("--plot needs matplotlib: pip install 'nffs[plot]' (scripts/setup.sh installs it)") from None
    scripts_dir()
    if os.geteuid() != 0:
        log.warning("nffs bench runs best as root (the prefetch benchmark drops the page cache)")
    started = time.monotonic()
    results: dict[str, dict[str, Any]] = {}
    workdir = tempfile.mkdtemp(prefix="nffs-bench-run-")
    log_path = os.path.join(workdir, "bench.log")
    tty = is_tty()
    print(f"nffs bench{' --quick' if quick else ''}: {len(names)} benchmarks ({', '.join(names)}); "
          f"full output in {log_path}", flush=True)
    deadline = started + QUICK_TOTAL_S
    with open(log_path, "w") as log_file:
        for i, name in enumerate(names, 1):
            suite = SUITES[name]
            budget = None
            if quick:
                # each suite its own budget, and never so much that the ones after it have no time left
                later = sum(min(SUITES[n].quick_budget_s, 20.0) for n in names[i:])
                budget = max(10.0, min(suite.quick_budget_s, deadline - time.monotonic() - later))
            if not tty:
                print(f"[{i}/{len(names)}] {name}: {suite.title}", flush=True)
            with Progress(f"[{i}/{len(names)}] {name}", total=None, enabled=tty) as bar:
                bar.note = suite.title
                try:
                    if name == "noharm":
                        res = {"json": None, "noharm": _do_no_harm(quick, bar)}
                    elif suite.script is None:
                        res = {"json": None, "occupancy": _occupancy(quick, bar)}
                    else:
                        res = _run_script(name, suite, quick, workdir, bar, log_file, budget)
                except BenchError:
                    raise
                except Exception as exc:  # one failing benchmark must not lose the others' figures
                    log.exception("benchmark %s failed", name)
                    res = {"error": f"{type(exc).__name__}: {exc}"}
                bar.note = f"done in {res.get('seconds', round(time.monotonic() - bar.start, 1))}s" + (
                    f" — {res['error']}" if "error" in res else "")
            results[name] = res
            log_file.flush()
    rows = collect_rows(results)
    elapsed = time.monotonic() - started
    print()
    print(f"SPEC 8 ratios, one run on this machine ({elapsed:.0f} s{', quick sizes' if quick else ''}):")
    notes = [(f"{n}: {SUITES[n].title}", f"stopped at {r['seconds']:.0f} s") for n, r in results.items()
             if r.get("timed_out")]
    sys.stdout.write(render_table(rows, notes))
    failed = {n: r["error"] for n, r in results.items() if "error" in r and not r.get("timed_out")}
    for n, r in results.items():
        if r.get("timed_out"):
            print(f"benchmark {n}: {r['error']} (no figures; run scripts/{SUITES[n].script} on its own)")
    for n, err in failed.items():
        print(f"benchmark {n} failed: {err}")
    doc: dict[str, Any] = {"quick": quick, "seconds": round(elapsed, 1), "rows": rows, "log": log_path,
                           "suites": {n: {k: v for k, v in r.items() if k != "latencies"} for n, r in results.items()}}
    if plot_dir:
        from .plots import write_plots

        written = write_plots(results, plot_dir)
        doc["plots"] = written
        for path in written:
            print(f"plot: {path}")
    if json_path:
        with open(json_path, "w") as f:
            json.dump(doc, f, indent=2, default=str)
        print(f"results: {json_path}")
    return 1 if failed else 0
