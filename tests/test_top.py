"""`nffs top` in a real terminal (tmux): shows the tiers, its numbers move under load, `q` quits."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import time

import pytest

from mounting import Mounts
from nffs.ui.top import Sample, render_frame
from nffs.ui.view import extract
from test_metrics import SAMPLE


def test_frame_rates_come_from_two_samples() -> None:
    later = {**SAMPLE, "store": {**SAMPLE["store"], "reads": 988,
                                 "tiers": [{**SAMPLE["store"]["tiers"][0], "reads": 800}, SAMPLE["store"]["tiers"][1]]}}
    frame = render_frame("/m", Sample(12.0, extract(later)), Sample(10.0, extract(SAMPLE)), width=200)
    assert "250.0 pages/s" in frame  # (988 - 488) / 2 s
    assert re.search(r"^dram .* 250\.0 +100\.0%$", frame, re.M), frame
    assert "accuracy 90.0%" in frame and "coverage 80.0%" in frame
    assert "queues    prefetch 2" in frame


class Tmux:
    """A private tmux server (its own socket) running one command in a wide pane."""

    def __init__(self, command: list[str]) -> None:
        self.socket = f"nffs-test-{os.getpid()}-{time.monotonic_ns()}"
        self.run("new-session", "-d", "-s", "top", "-x", "160", "-y", "40", " ".join(command))

    def run(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True, timeout=30)

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", "top").stdout

    def alive(self) -> bool:
        return self.run("has-session", "-t", "top").returncode == 0

    def wait_for(self, pattern: str, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        text = ""
        while time.monotonic() < deadline:
            text = self.screen()
            if re.search(pattern, text, re.M):
                return text
            time.sleep(0.2)
        raise AssertionError(f"{pattern!r} never appeared; screen:\n{text}")

    def close(self) -> None:
        self.run("kill-server")


def reads_per_s(screen: str) -> float:
    m = re.search(r"^reads +([0-9.]+) (k?)pages/s", screen, re.M)
    assert m, screen
    return float(m.group(1)) * (1000 if m.group(2) == "k" else 1)


@pytest.mark.mount
def test_top_in_tmux_moves_under_load_and_quits_on_q(mounts: Mounts) -> None:
    assert shutil.which("tmux"), "tmux is not installed (scripts/setup.sh installs it)"
    field = mounts.init("--log2-table-size", "14")
    mnt = mounts.mount(field, *mounts.tiers(field), "--prefetch", "none")
    params = mnt / "params"
    with open(params, "r+b") as f:
        f.write(os.urandom(os.path.getsize(params)))
        f.flush()
        os.fsync(f.fileno())
    tmux = Tmux([sys.executable, "-m", "nffs.cli", "top", str(mnt)])
    stop = threading.Event()
    try:
        idle = tmux.wait_for(r"^reads +[0-9.]+ k?pages/s")
        assert re.search(r"^TIER +KIND +FILL", idle, re.M) and re.search(r"^dram +dram", idle, re.M), idle
        assert "nvme" in idle
        time.sleep(2.2)
        idle = tmux.screen()
        quiet = reads_per_s(idle)

        def load() -> None:  # cold reads of the whole file, again and again: every read reaches the daemon
            fd = os.open(params, os.O_RDONLY)
            try:
                while not stop.is_set():
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                    off = 0
                    while not stop.is_set() and os.pread(fd, 4096, off):
                        off += 65536
                        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)

        worker = threading.Thread(target=load, daemon=True)
        worker.start()
        busy, deadline = idle, time.monotonic() + 20
        while reads_per_s(busy) <= quiet and time.monotonic() < deadline:
            time.sleep(0.5)
            busy = tmux.screen()
        assert reads_per_s(busy) > quiet, f"idle:\n{idle}\nunder load:\n{busy}"
        dram_idle = re.search(r"^dram .*$", idle, re.M).group(0)
        dram_busy = re.search(r"^dram .*$", busy, re.M).group(0)
        assert dram_idle != dram_busy, "the dram tier's reads/s did not change"
        stop.set()
        worker.join()
        tmux.run("send-keys", "-t", "top", "q")
        deadline = time.monotonic() + 10
        while tmux.alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not tmux.alive(), "nffs top did not quit on q"
    finally:
        stop.set()
        tmux.close()


@pytest.mark.mount
def test_top_quits_on_ctrl_c_and_once_prints_a_frame(mounts: Mounts) -> None:
    field = mounts.init("--log2-table-size", "14")
    mnt = mounts.mount(field, *mounts.tiers(field), "--prefetch", "none")
    tmux = Tmux([sys.executable, "-m", "nffs.cli", "top", str(mnt)])
    try:
        tmux.wait_for(r"^TIER")
        tmux.run("send-keys", "-t", "top", "C-c")
        deadline = time.monotonic() + 10
        while tmux.alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not tmux.alive(), "nffs top did not quit on Ctrl-C"
    finally:
        tmux.close()
    res = subprocess.run([sys.executable, "-m", "nffs.cli", "top", str(mnt), "--once", "--interval", "0.2"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "\x1b" not in res.stdout and "TIER" in res.stdout and "dram" in res.stdout
