"""`nffs bench` without running the benchmarks: the table, the rows it collects, the plots it draws."""
from __future__ import annotations

import pytest

from mounting import nffs
from nffs.ui.bench import collect_rows, render_table


def fake_results() -> dict:
    rows = [
        {"key": "hot", "row": "hot reads", "nffs": 4e5, "baseline": 3e5, "unit": "reads/s", "ratio": 1.3, "target": 0.8,
         "higher_is_better": True, "meets": True},
        {"key": "single_point", "row": "single point", "nffs": 2e-3, "baseline": 5e-5, "unit": "s", "ratio": 40.0,
         "target": 3.0, "higher_is_better": False, "meets": False},
        {"key": "isolation", "row": "isolation", "nffs": 3e-3, "baseline": 1e-3, "unit": "s", "ratio": 3e-3,
         "target": 5e-3, "higher_is_better": False, "meets": True, "absolute": True},
    ]
    return {
        "io": {"json": {"rows": rows[:1]}},
        "query": {"json": {"rows": rows[1:], "sweep": [
            {"batch": b, "query_points_per_s": 1e5 * (1 + i), "take_points_per_s": 3e5 * (1 + i)}
            for i, b in enumerate((1, 16, 256, 4096))]}},
        "prefetch": {"json": {"ratios": [{"workload": "seq", "predictor": "hoeffding", "p99_ms": 0.5, "p99_none_ms": 6.0,
                                          "p99_none_over_predictor": 12.0, "accuracy": 0.95, "coverage": 0.85,
                                          "target": ["p99x", 5]},
                                         {"workload": "random", "predictor": "hoeffding", "p99_ms": 6.1, "p99_none_ms": 6.0,
                                          "p99_none_over_predictor": 0.98, "accuracy": None, "coverage": 0.0,
                                          "target": ["noharm", 1.15]}]},
                     "latencies": [{"workload": "seq", "predictor": p, "lat_ms": [0.1 * k for k in range(1, 200)]}
                                   for p in ("hoeffding", "none")]},
        "occupancy": {"occupancy": {"workload": "test", "samples": [
            {"t": 0.1 * i, "tiers": {"dram": {"used_bytes": i * 65536, "pages": i, "dirty_pages": i // 2,
                                              "capacity": 16 << 20},
                                     "nvme": {"used_bytes": i * 32768, "pages": i // 2, "dirty_pages": 0, "capacity": None}}}
            for i in range(1, 50)]}},
    }


def test_table_has_every_row_with_target_and_verdict() -> None:
    rows = collect_rows(fake_results())
    keys = [r["key"] for r in rows]
    assert keys[:3] == ["hot", "single_point", "isolation"]
    assert "3.00 ms" in render_table(rows) and "<= 5.00 ms" in render_table(rows)
    assert "prefetch_seq_hoeffding_p99" in keys and "prefetch_seq_hoeffding_coverage" in keys
    assert not any(k.startswith("prefetch_random") for k in keys)  # do-no-harm rows are not p99 targets
    text = render_table(rows)
    assert "1.30x" in text and ">= 0.8x" in text and "meets" in text
    assert "40.00x" in text and "<= 3x" in text and "MISSES" in text
    assert "12.00x" in text and ">= 5x" in text  # the sequential reader's prefetch target
    assert "85.0%" in text and ">= 90%" in text
    assert "stopped at 60 s" in render_table(rows, [("prefetch: p99", "stopped at 60 s")])


def test_plots_have_titles_axes_and_legends(tmp_path, monkeypatch) -> None:
    pytest.importorskip("matplotlib", reason="the plot extra (scripts/setup.sh installs it)")
    import matplotlib.figure

    from nffs.ui.plots import write_plots

    seen = []
    real = matplotlib.figure.Figure.savefig

    def spy(self, path, *a, **k):
        for ax in self.axes:
            seen.append((str(path), ax.get_title(), ax.get_xlabel(), ax.get_ylabel(),
                         ax.get_legend() is not None and len(ax.get_legend().get_texts()) > 0))
        return real(self, path, *a, **k)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", spy)
    written = write_plots(fake_results(), str(tmp_path))
    assert sorted(p.rsplit("/", 1)[1] for p in written) == ["query_throughput.png", "read_latency_cdf.png",
                                                           "tier_occupancy.png"]
    for path in written:
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert seen and all(title and xlabel and ylabel and legend for _, title, xlabel, ylabel, legend in seen), seen


def test_unknown_benchmark_is_a_clear_error() -> None:
    res = nffs("bench", "--only", "nonsense", check=False)
    assert res.returncode == 1 and "unknown benchmark(s) nonsense" in res.stderr


def test_do_no_harm_rows() -> None:
    from nffs.ui.bench import _noharm_rows

    run = {"read_p99_s": 0.01, "reads_total_s": 1.0, "batch_p99_s": 0.5, "batches_total_s": 2.0,
           "predictor_active": "hoeffding"}
    slower = {**run, "read_p99_s": 0.02, "predictor_active": "none"}
    rows = _noharm_rows({"runs": {"hoeffding": slower, "none": run}})
    assert [r["meets"] for r in rows] == [False, True, True, True]
    assert "daemon reported predictor 'none'" in rows[0]["row"]
    text = render_table(rows)
    assert "2.00x" in text and "<= 1.15x" in text


def test_quick_budgets_fit_in_five_minutes() -> None:
    from nffs.ui.bench import QUICK_TOTAL_S, SUITES

    # every suite's budget is capped by what is left of the total (see run_bench)
    assert QUICK_TOTAL_S < 300
    assert all(s.quick_budget_s > 0 for s in SUITES.values())


def test_a_script_over_its_budget_is_stopped_cleanly(tmp_path, monkeypatch) -> None:
    """SIGINT after the budget; the script's finally blocks run (its mounts are undone)."""
    import io

    import nffs.ui.bench as bench

    script = tmp_path / "bench_sleepy.py"
    script.write_text("import sys, time\ntry:\n    print('working', flush=True)\n    time.sleep(60)\n"
                      "finally:\n    print('cleaned up', flush=True)\n")
    (tmp_path / "bench_common.py").write_text("")
    monkeypatch.setattr(bench, "scripts_dir", lambda: str(tmp_path))
    log = io.StringIO()
    res = bench._run_script("sleepy", bench.Suite("t", "bench_sleepy.py", [], []), True, str(tmp_path), None, log,
                            budget_s=1.0)
    assert res.get("timed_out") and "stopped after" in res["error"]
    assert "cleaned up" in log.getvalue()
