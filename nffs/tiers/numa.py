"""Keeping a CXL tier's pages on one NUMA node (SPEC 3): a bound tmpfs, or mbind per page file."""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import mmap
import os
import subprocess

log = logging.getLogger(__name__)

NODE_ROOT = "/sys/devices/system/node"
MPOL_BIND = 2
MPOL_MF_MOVE = 1 << 1
SYS_MBIND = 237  # x86-64


def node_exists(node: int) -> bool:
    return os.path.isdir(os.path.join(NODE_ROOT, f"node{node}"))


def mount_info(path: str) -> tuple[str, str, str] | None:
    """(mount point, fs type, options) of the mount holding `path` (longest matching prefix)."""
    real = os.path.realpath(path)
    best = None
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) < 4:
                    continue
                mnt = parts[1].replace("\\040", " ")
                if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and (best is None or len(mnt) > len(best[0])):
                    best = (mnt, parts[2], parts[3])
    except OSError:
        return None
    return best


def bound_tmpfs(path: str, node: int) -> bool:
    info = mount_info(path)
    return info is not None and info[1] == "tmpfs" and f"mpol=bind:{node}" in info[2]


def mount_bound_tmpfs(path: str, node: int, size: int | None) -> bool:
    """As root, mount a tmpfs bound to the node on PATH; False when that is not possible."""
    if os.geteuid() != 0:
        return False
    opts = f"mpol=bind:{node},mode=0700" + (f",size={size}" if size else "")
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, f"nffs-cxl{node}", path], capture_output=True, text=True)
    if res.returncode != 0:
        log.warning("cannot mount a node-%d tmpfs on %s (%s); falling back to mbind", node, path, res.stderr.strip())
        return False
    return True


def unmount(path: str) -> None:
    subprocess.run(["umount", path], capture_output=True)


_libc = None


def mbind_file(fd: int, length: int, node: int) -> bool:
    """Set the shared memory policy of a tmpfs file so its pages are allocated on `node`."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    try:
        mm = mmap.mmap(fd, length, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    except (OSError, ValueError):
        return False
    try:
        buf = (ctypes.c_char * length).from_buffer(mm)
        addr = ctypes.addressof(buf)
        mask = (ctypes.c_ulong * 16)()
        mask[node // 64] = 1 << (node % 64)
        ret = _libc.syscall(SYS_MBIND, ctypes.c_void_p(addr), ctypes.c_ulong(length), MPOL_BIND, mask, ctypes.c_ulong(1024), MPOL_MF_MOVE)
        del buf
        return ret == 0
    finally:
        mm.close()
