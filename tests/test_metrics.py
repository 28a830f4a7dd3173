"""The `metrics` file and the `--metrics-listen` HTTP endpoint: valid Prometheus text, conventional names."""
from __future__ import annotations

import json
import re
import socket
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mounting import Mounts, nffs
from nffs.fs.stats import render_metrics
from nffs.ui.metrics_http import ListenError, parse_listen

# A statistics snapshot with every section the renderers know (shape: docs/operations.md).
SAMPLE = json.loads("""
{"pid": 7337, "field_dir": "/f", "params_bytes": 1998848, "page_size": 65536, "concepts": 2,
 "store": {"materialised_pages": 20, "dirty_pages": 3, "reads": 488, "writes": 20, "implicit_page_reads": 168,
  "writebacks": 1, "evictions": 0, "checksum_failures": 0, "io_errors": 1, "enospc": 0,
  "read_latency_seconds": {"buckets": {"0.0001": 100, "0.001": 400, "0.01": 480, "+Inf": 488}, "sum": 0.4, "count": 488},
  "tiers": [{"name": "dram", "path": "/d", "kind": "dram", "volatile": true, "capacity": 8388608, "used_bytes": 1310720,
             "pages": 20, "dirty_pages": 3, "reads": 300, "writes": 20},
            {"name": "nvme", "path": "/n", "kind": "nvme", "volatile": false, "capacity": null, "used_bytes": 1310720,
             "pages": 20, "dirty_pages": 0, "reads": 20, "writes": 20}]},
 "mountpoint": "/m",
 "prefetch": {"predictor": "hoeffding", "ready": true, "issued": 100, "useful": 90, "late": 5, "wasted": 4, "pending": 6,
  "accuracy": 0.9, "coverage": 0.8, "queue": 2,
  "spaces": {"address": {"issued": 60, "useful": 55, "late": 3, "wasted": 2},
             "field": {"issued": 40, "useful": 35, "late": 2, "wasted": 2}},
  "model_bytes": 2600, "learn_us": 12.5, "predict_us": 3.0},
 "queries": {"requests": 10, "points": 655360, "errors": 1,
  "latency_seconds": {"buckets": {"0.001": 2, "0.01": 8, "0.1": 10, "+Inf": 10}, "sum": 0.05, "count": 10}}}
""")

UNIT_SUFFIXES = ("_bytes", "_seconds", "_ratio", "_pages", "_total", "_info", "_depth", "_ready", "_concepts")
LABEL_NAMES = {"tier", "kind", "predictor", "space", "queue", "version", "le"}


def check_conventions(text: str) -> dict[str, str]:
    """Parse with prometheus_client and check the naming rules; returns {family name: type}."""
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families, "no metrics"
    types = {}
    for name, fam in families.items():
        assert name.startswith("nffs_"), name
        assert re.fullmatch(r"[a-z_][a-z0-9_]*", name), name
        assert fam.documentation, f"{name} has no HELP"
        types[name] = fam.type
        for s in fam.samples:
            assert set(s.labels) <= LABEL_NAMES, (s.name, s.labels)
            if fam.type == "counter":
                assert s.name.endswith(("_total", "_created")), s.name
            elif fam.type == "histogram":
                assert s.name.endswith(("_bucket", "_sum", "_count")), s.name
                assert name.endswith("_seconds"), name
            else:
                assert not s.name.endswith("_total"), f"gauge {s.name} looks like a counter"
        if fam.type == "gauge":
            full = fam.samples[0].name
            assert full.endswith(UNIT_SUFFIXES) or full in ("nffs_pages", "nffs_concepts"), f"{full}: no unit suffix"
    # text 0.0.4: the TYPE line names a counter with its _total suffix, a histogram without suffixes
    for line in text.splitlines():
        if line.startswith("# TYPE") and line.endswith(" counter"):
            assert line.split()[2].endswith("_total"), line
    return types


def test_sample_renders_and_parses() -> None:
    text = render_metrics(SAMPLE)
    types = check_conventions(text)
    assert types["nffs_tier_reads"] == "counter"
    assert types["nffs_read_latency_seconds"] == "histogram"
    assert types["nffs_query_latency_seconds"] == "histogram"
    assert 'nffs_tier_used_bytes{tier="dram",kind="dram"} 1310720' in text
    assert 'nffs_prefetch_issued_total{predictor="hoeffding",space="field"} 40' in text
    assert 'nffs_query_latency_seconds_bucket{le="0.01"} 8' in text
    assert 'nffs_query_latency_seconds_bucket{le="+Inf"} 10' in text
    assert "nffs_prefetch_accuracy_ratio" in text
    # an unbounded tier has no capacity sample (rather than a fake number)
    assert 'nffs_tier_capacity_bytes{tier="nvme"' not in text


def test_missing_keys_never_break_the_scrape() -> None:
    for stats in ({}, {"store": None}, {"store": {"tiers": [{"name": "x", "reads": "many"}]}}, {"prefetch": 3},
                  {"queries": {"latency_seconds": {"buckets": "bad"}}}, {"errors": {"eio": 2}}):
        check_conventions(render_metrics(stats))


def test_label_values_are_escaped() -> None:
    text = render_metrics({"store": {"tiers": [{"name": 'we"ird\\\nname', "reads": 1}]}})
    (fam,) = [f for f in text_string_to_metric_families(text) if f.name == "nffs_tier_reads"]
    assert fam.samples[0].labels["tier"] == 'we"ird\\\nname'


def test_listen_addresses() -> None:
    assert parse_listen("9100") == ("127.0.0.1", 9100)
    assert parse_listen("0.0.0.0:9100") == ("0.0.0.0", 9100)
    assert parse_listen(":9100") == ("0.0.0.0", 9100)
    assert parse_listen("[::1]:9100") == ("::1", 9100)
    for bad in ("x", "1:2:3", "127.0.0.1:99999", "[::1]9100"):
        with pytest.raises(ListenError):
            parse_listen(bad)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> tuple[int, str, str]:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.status, r.headers.get("Content-Type", ""), r.read().decode()


@pytest.mark.mount
def test_metrics_file_and_http_endpoint(mounts: Mounts) -> None:
    field = mounts.init("--log2-table-size", "14")
    port = _free_port()
    mnt = mounts.mount(field, *mounts.tiers(field), "--metrics-listen", str(port))
    with open(mnt / "params", "r+b") as f:
        f.write(b"\x01" * 200_000)
        f.flush()
    file_text = (mnt / "metrics").read_text()
    types = check_conventions(file_text)
    assert types["nffs_tier_pages"] == "gauge"
    assert "nffs_prefetch_info{predictor=" in file_text

    status, ctype, http_text = _get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200 and ctype.startswith("text/plain") and "version=0.0.4" in ctype
    assert check_conventions(http_text) == types
    # the endpoint serves a snapshot refreshed every second: the written pages show up
    deadline = time.monotonic() + 10
    while "nffs_materialised_pages 4" not in http_text and time.monotonic() < deadline:
        time.sleep(0.3)
        http_text = _get(f"http://127.0.0.1:{port}/metrics")[2]
    assert "nffs_materialised_pages 4" in http_text
    with pytest.raises(urllib.error.HTTPError):
        _get(f"http://127.0.0.1:{port}/nope")
    # loopback only when just a port is given
    try:
        addrs = {a[4][0] for a in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)}
    except OSError:  # no resolvable host name: nothing but loopback to try
        addrs = set()
    addrs -= {"127.0.0.1", "127.0.1.1"}
    for addr in addrs:
        with pytest.raises(OSError):
            socket.create_connection((addr, port), timeout=2).close()


@pytest.mark.mount
def test_port_in_use_fails_the_mount_clearly(mounts: Mounts, tmp_path: Path) -> None:
    field = mounts.init("--log2-table-size", "14")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        mnt = tmp_path / "busy-mnt"
        mnt.mkdir()
        res = nffs("mount", str(field), str(mnt), *mounts.tiers(field), "--metrics-listen", str(port), check=False)
    assert res.returncode != 0
    assert f"cannot listen for metrics on {port}" in res.stderr
    assert not any(str(mnt) in line for line in open("/proc/self/mounts"))
