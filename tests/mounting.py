"""Helpers for real-mount tests: fields in temp dirs, mounts that always unmount."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

NFFS = [sys.executable, "-m", "nffs.cli"]


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


