"""`nffs stat`: a readable summary without JSON; `--json` keeps the machine form."""
from __future__ import annotations

import json
import os

import pytest

from mounting import Mounts, nffs
from nffs.ui.status import render_status
from nffs.ui.view import DASH, extract, parse_histogram
from test_metrics import SAMPLE


def test_every_section_is_there_in_words() -> None:
    stats = {**SAMPLE, "field": {"dims": 3, "levels": 16, "features": 2, "log2_table_size": 19, "dtype": "float32"}}
    text = render_status(stats)
    assert "{" not in text and '"' not in text
    assert "D=3 L=16 F=2 T=2^19" in text
    assert "virtual 1.9 MiB" in text and "materialised 1.2 MiB" in text
    assert "dram" in text and "8.0 MiB" in text and "unbounded" in text and "/d" in text and "/n" in text
    assert "20 pages, 3 dirty, 300 reads" in text
    assert "predictor hoeffding" in text and "accuracy 90.0%" in text and "coverage 80.0%" in text
    assert "timeliness 94.4%" in text  # (useful - late) / useful when the daemon does not say
    assert "100 pages prefetched: 90 useful, 5 late, 4 wasted" in text
    assert "10 requests, 655,360 points" in text and "p50" in text and "p99" in text
    assert "1 io errors" in text


def test_missing_keys_print_as_dashes() -> None:
    for stats in ({}, {"mounted": True}, {"mounted": True, "store": {"tiers": [{"name": "t"}]}, "prefetch": {}}):
        text = render_status(stats)
        assert DASH in text
        assert "{" not in text


def test_histogram_quantiles() -> None:
    h = parse_histogram({"buckets": {"0.001": 50, "0.01": 99, "0.1": 100, "+Inf": 100}, "sum": 1.0, "count": 100})
    assert h.quantile(0.5) == pytest.approx(0.001)
    assert 0.001 < h.quantile(0.75) < 0.01
    assert 0.01 <= h.quantile(0.995) <= 0.1
    h2 = parse_histogram({"le": [0.001, 0.01], "counts": [1, 1, 0], "sum": 0.005})
    assert h2.count == 2 and h2.buckets[-1][1] == 2
    assert extract(SAMPLE).read_p99_s is not None


@pytest.mark.mount
def test_stat_of_a_mount_and_of_a_field_dir(mounts: Mounts) -> None:
    field = mounts.init("--log2-table-size", "14")
    mnt = mounts.mount(field, *mounts.tiers(field))
    with open(mnt / "params", "r+b") as f:
        f.write(os.urandom(300_000))
    text = nffs("stat", str(mnt)).stdout
    assert "{" not in text and "}" not in text and '"' not in text
    for words in ("D=3 L=16 F=2 T=2^14", "virtual", "materialised", "tiers", "dram", "nvme", "pages", "dirty", "reads",
                  "prefetch  predictor ", "accuracy", "coverage", "timeliness", "useful", "late", "wasted", "queries",
                  "errors"):
        assert words in text, f"{words!r} missing from:\n{text}"
    info = json.loads(nffs("stat", str(mnt), "--json").stdout)
    assert info["mounted"] is True and info["store"]["tiers"]
    rest = nffs("stat", str(field)).stdout
    assert "{" not in rest and "in use by a daemon" in rest and "D=3" in rest
    mounts.umount(mnt)
    rest = nffs("stat", str(field)).stdout
    assert "(not mounted)" in rest and "5 pages" in rest  # 300,000 bytes materialised 5 pages of 64 KiB
    assert json.loads(nffs("stat", str(field), "--json").stdout)["mounted"] is False
    hw = nffs("stat", str(field), "--hardware").stdout
    assert "numa node" in hw or "no NUMA information" in hw
