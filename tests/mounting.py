"""Helpers for real-mount tests: fields in temp dirs, mounts that always unmount, daemon logs checked.

Every daemon started by `Mounts.mount` appends to its field's `nffs.log` (the CLI
redirects the detached daemon's stderr there). The fixture remembers where each
field's log stood before the test's first mount and, at teardown, fails the test if
the daemon logged an ERROR/CRITICAL record or a traceback that the test did not
declare with `Mounts.allow_log` or `@pytest.mark.allow_daemon_log(pattern, ...)`:
a bug answered with EIO must not pass as a green test.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

NFFS = [sys.executable, "-m", "nffs.cli"]
LOG_NAME = "nffs.log"
#: the daemon's record format: "<date> <time> <pid> <logger> <LEVEL>: <message>"
_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ \d+ \S+ (?P<level>[A-Z]+): ")
_BAD_LEVELS = {"ERROR", "CRITICAL"}


def log_problems(text: str, allowed: list[re.Pattern[str]]) -> list[str]:
    """Records of a daemon log at ERROR/CRITICAL or holding a traceback, minus the allowed ones.

    A record is its first line plus the continuation lines after it (a traceback); text
    before the first record (a crash before logging was set up) is one record too.
    """
    records: list[list[str]] = []
    for line in text.splitlines():
        if _RECORD.match(line) or not records:
            records.append([line])
        else:
            records[-1].append(line)
    problems = []
    for record in records:
        head = _RECORD.match(record[0])
        bad_level = head is not None and head.group("level") in _BAD_LEVELS
        traceback = any(line.startswith("Traceback (most recent call last)") for line in record)
        if not (bad_level or traceback):
            continue
        body = "\n".join(record)
        if not any(p.search(body) for p in allowed):
            problems.append(body)
    return problems


def wait_until(predicate: Callable[[], object], timeout: float = 60.0, what: str | Callable[[], str] = "condition",
               interval: float = 0.05) -> None:
    """Poll `predicate` until it holds; an AssertionError naming `what` (or what it returns
    then: the last state seen) after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what() if callable(what) else what}")
        time.sleep(interval)


def nffs(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    res = subprocess.run([*NFFS, *args], capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        raise AssertionError(f"nffs {' '.join(args)} failed ({res.returncode}): {res.stderr}{res.stdout}")
    return res


def is_mounted(path: Path) -> bool:
    target = str(path.resolve())
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == target for line in f if len(line.split()) > 1)


def fuse_available() -> bool:
    return os.path.exists("/dev/fuse") and (os.geteuid() == 0 or shutil.which("fusermount3") is not None)


class Mounts:
    """Creates fields and mounts them; unmounts everything at teardown, even after failures."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.mounted: list[Path] = []
        self.shm_dirs: list[str] = []
        self.counter = 0
        #: field dir -> size of its daemon log before this test first mounted it
        self.logs: dict[Path, int] = {}
        self.allowed: list[re.Pattern[str]] = []

    def allow_log(self, *patterns: str) -> None:
        """Declare daemon log records (regexes, searched in the record) this test expects."""
        self.allowed.extend(re.compile(p) for p in patterns)

    def watch_log(self, field: Path) -> None:
        """Check `field`'s daemon log from here on (mount() does it; call it for daemons
        started another way)."""
        if field not in self.logs:
            try:
                self.logs[field] = (field / LOG_NAME).stat().st_size
            except FileNotFoundError:
                self.logs[field] = 0

    def log_problems(self) -> list[str]:
        problems = []
        for field, start in self.logs.items():
            try:
                with open(field / LOG_NAME, "rb") as f:
                    f.seek(start)
                    text = f.read().decode(errors="replace")
            except FileNotFoundError:
                continue
            problems += [f"{field / LOG_NAME}:\n{p}" for p in log_problems(text, self.allowed)]
        return problems

    def init(self, *args: str, name: str | None = None) -> Path:
        self.counter += 1
        field = self.tmp / (name or f"field{self.counter}")
        nffs("init", str(field), *args)
        return field

    def tiers(self, field: Path, memory: str = "8M") -> list[str]:
        """Tiers inside the test's temp dir (no litter in /dev/shm)."""
        return ["--tier", f"dram={field}-dram,kind=dram,capacity={memory}", "--tier", f"nvme={field}-nvme,kind=nvme"]

    def mount(self, field: Path, *args: str) -> Path:
        self.counter += 1
        mnt = self.tmp / f"mnt{self.counter}"
        mnt.mkdir()
        self.watch_log(field)
        nffs("mount", str(field), str(mnt), *args)
        self.mounted.append(mnt)
        assert is_mounted(mnt)
        return mnt

    def umount(self, mnt: Path) -> None:
        nffs("umount", str(mnt))
        assert not is_mounted(mnt)
        self.mounted.remove(mnt)

    def cleanup(self) -> None:
        for mnt in list(self.mounted):
            if is_mounted(mnt):
                res = subprocess.run([*NFFS, "umount", str(mnt)], capture_output=True, timeout=120)
                if res.returncode != 0 or is_mounted(mnt):
                    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
                    subprocess.run(["fusermount3", "-uz", str(mnt)], capture_output=True)
            self.mounted.remove(mnt)


