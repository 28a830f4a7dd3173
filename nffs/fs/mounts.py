"""Reading the mount table without touching the mount point (stat on a dead FUSE mount hangs)."""
from __future__ import annotations

import os


def _unescape(field: str) -> str:
    return field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def mount_entry(path: str) -> tuple[str, str] | None:
    """(fsname, fstype) of the mount at `path`, or None."""
    target = os.path.abspath(path)
    try:
        with open("/proc/self/mounts") as f:
            lines = f.readlines()
    except OSError:
        return None
    found = None
    for line in lines:
        parts = line.split()
        if len(parts) >= 3 and _unescape(parts[1]) == target:
            found = (_unescape(parts[0]), parts[2])
    return found


def is_mounted(path: str) -> bool:
    return mount_entry(path) is not None


def is_nffs_mount(path: str) -> bool:
    entry = mount_entry(path)
    return entry is not None and entry[1] == "fuse.nffs"
