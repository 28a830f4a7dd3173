"""PNG plots of `nffs bench` results (matplotlib, the optional `plot` extra).

Three figures, each with a title, labelled axes (units) and a legend:
  read_latency_cdf.png     read latency CDFs per predictor, one panel per prefetch workload
  tier_occupancy.png       bytes in each tier over time while a workload overfills the dram tier
  query_throughput.png     query points/s against batch size, beside numpy's gather of the same corners
"""
from __future__ import annotations

import os
from typing import Any


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed (ssh, CI)
    import matplotlib.pyplot as plt

    return plt


def latency_cdf(latencies: list[dict[str, Any]], path: str) -> str | None:
    import numpy as np

    by_workload: dict[str, dict[str, list[float]]] = {}
    for entry in latencies:
        if entry.get("lat_ms"):
            by_workload.setdefault(str(entry["workload"]), {}).setdefault(str(entry["predictor"]), []).extend(entry["lat_ms"])
    if not by_workload:
        return None
    plt = _plt()
    n = len(by_workload)
    fig, axes = plt.subplots(1, n, figsize=(5.5 * n, 4.2), squeeze=False)
    for ax, (workload, preds) in zip(axes[0], sorted(by_workload.items())):
        for pred, values in sorted(preds.items()):
            v = np.sort(np.asarray(values, dtype=float))
            v = np.maximum(v, 1e-3)
            y = np.arange(1, len(v) + 1) / len(v)
            p99 = float(np.percentile(v, 99))
            ax.step(v, y, where="post", label=f"{pred} (p99 {p99:.2f} ms, n={len(v)})")
        ax.set_xscale("log")
        ax.set_xlabel("query request latency, write + read (ms, log scale)" if workload == "camera"
                      else "read latency (ms, log scale)")
        ax.set_ylabel("fraction of requests at or below" if workload == "camera" else "fraction of reads at or below")
        ax.set_title(f"{workload}: read latency CDF per predictor")
        ax.axhline(0.99, color="grey", lw=0.6, ls=":")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(title="predictor", loc="lower right", fontsize=8)
    fig.suptitle("Read latency over a latency=5ms slow tier: default predictor vs none")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def occupancy(occ: dict[str, Any], path: str) -> str | None:
    samples = occ.get("samples") or []
    if not samples:
        return None
    plt = _plt()
    names: list[str] = []
    for s in samples:
        for name in s["tiers"]:
            if name not in names:
                names.append(name)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    mib = float(1 << 20)
    for name in names:
        t = [s["t"] for s in samples if name in s["tiers"]]
        used = [(s["tiers"][name].get("used_bytes") or 0) / mib for s in samples if name in s["tiers"]]
        line, = ax.plot(t, used, label=f"{name}: used")
        caps = {s["tiers"][name].get("capacity") for s in samples if name in s["tiers"]} - {None}
        if caps:
            ax.axhline(max(caps) / mib, color=line.get_color(), ls="--", lw=0.9, label=f"{name}: capacity")
        dirty = [(s["tiers"][name].get("dirty_pages") or 0) for s in samples if name in s["tiers"]]
        if any(dirty):
            page = None
            for s in samples:
                tier = s["tiers"].get(name, {})
                if tier.get("pages"):
                    page = (tier.get("used_bytes") or 0) / tier["pages"]
                    break
            if page:
                ax.plot(t, [d * page / mib for d in dirty], ls=":", color=line.get_color(), label=f"{name}: dirty")
    ax.set_xlabel("time since mount (s)")
    ax.set_ylabel("bytes in tier (MiB)")
    ax.set_title("Tier occupancy during a workload")
    ax.text(0.01, 0.98, occ.get("workload", ""), transform=ax.transAxes, va="top", fontsize=7, wrap=True)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="center right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def query_throughput(sweep: list[dict[str, Any]], path: str) -> str | None:
    if not sweep:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    xs = [s["batch"] for s in sweep]
    ax.plot(xs, [s["query_points_per_s"] for s in sweep], marker="o", label="nffs query file (write + read)")
    ax.plot(xs, [s["take_points_per_s"] for s in sweep], marker="s", ls="--", label="numpy take of the same corners (in memory)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("points per request (batch size, log scale)")
    ax.set_ylabel("points per second (log scale)")
    ax.set_title("Query throughput vs batch size")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_plots(results: dict[str, dict[str, Any]], plot_dir: str) -> list[str]:
    os.makedirs(plot_dir, exist_ok=True)
    written = []
    pf = results.get("prefetch", {})
    if pf.get("latencies"):
        written.append(latency_cdf(pf["latencies"], os.path.join(plot_dir, "read_latency_cdf.png")))
    occ = results.get("occupancy", {}).get("occupancy")
    if occ:
        written.append(occupancy(occ, os.path.join(plot_dir, "tier_occupancy.png")))
    q = results.get("query", {}).get("json") or {}
    if q.get("sweep"):
        written.append(query_throughput(q["sweep"], os.path.join(plot_dir, "query_throughput.png")))
    return [p for p in written if p]
