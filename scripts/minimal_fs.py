#!/usr/bin/env python3
"""A minimal pyfuse3 + trio file system: one file served from bytes in memory.

The baseline of the SPEC 8 "cold reads" and "sequential" rows: everything a FUSE
daemon written in Python must pay (kernel round trip, pyfuse3 dispatch, trio, one
copy of the answer) and nothing else. Its mount options and file flags match what
nffs uses for `params`: pyfuse3.default_options plus fsname/subtype, no writeback
cache, a page-cached file opened with keep_cache (not direct_io).

With --backing FILE it is also the baseline of the SPEC 8 "writes" row: `data` is then
read-write and lives in that ONE file on disk (created sparse with --size bytes);
writes go to it with pwrite, fsync/flush-on-fsync with os.fsync — what any
pass-through FUSE file system must pay to write durably, and nothing else.

Namespace:
    data   the bytes, size --size: random, read-only (os.urandom), or read-write in --backing
    stats  JSON {"pid", "reads", "read_bytes", "writes", "write_bytes", "fsyncs"}: requests that reached this daemon

Usage: python scripts/minimal_fs.py MOUNTPOINT [--size BYTES] [--blksize BYTES] [--backing FILE]
Runs in the foreground until unmounted (umount MOUNTPOINT) or SIGTERM/SIGINT; prints
"ready" on stdout once the mount answers.
"""
from __future__ import annotations

import argparse
import errno
import json
import os
import signal
import stat
import sys
import time

import pyfuse3
import trio

DATA_INODE = pyfuse3.ROOT_INODE + 1
STATS_INODE = pyfuse3.ROOT_INODE + 2
NAMES = {b"data": DATA_INODE, b"stats": STATS_INODE}


class MinimalFS(pyfuse3.Operations):
    enable_writeback_cache = False

    def __init__(self, data: bytes, blksize: int, backing: str | None = None, size: int | None = None) -> None:
        super().__init__()
        self.data = data
        self.blksize = blksize
        self.backing_fd: int | None = None
        self.size = len(data)
        if backing is not None:
            self.backing_fd = os.open(backing, os.O_RDWR | os.O_CREAT, 0o600)
            os.ftruncate(self.backing_fd, size or 0)
            self.size = size or 0
        self.reads = 0
        self.read_bytes = 0
        self.writes = 0
        self.write_bytes = 0
        self.fsyncs = 0
        self.snapshots: dict[int, bytes] = {}
        self.next_fh = 1000  # stats handles; the data file's handle is DATA_INODE
        self.now_ns = time.time_ns()

    def _attr(self, inode: int) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = inode
        a.entry_timeout = a.attr_timeout = 3600.0 if inode != STATS_INODE else 0.0
        if inode == pyfuse3.ROOT_INODE:
            a.st_mode, a.st_nlink, a.st_size = stat.S_IFDIR | 0o755, 2, 0
        elif inode == DATA_INODE:
            mode = 0o644 if self.backing_fd is not None else 0o444
            a.st_mode, a.st_nlink, a.st_size = stat.S_IFREG | mode, 1, self.size
        elif inode == STATS_INODE:
            a.st_mode, a.st_nlink, a.st_size = stat.S_IFREG | 0o444, 1, 0
        else:
            raise pyfuse3.FUSEError(errno.ENOENT)
        a.st_uid, a.st_gid = os.geteuid(), os.getegid()
        a.st_blksize = self.blksize
        a.st_blocks = (a.st_size + 511) // 512
        a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = self.now_ns
        return a

    async def getattr(self, inode, ctx=None):
        return self._attr(inode)

    async def lookup(self, parent, name, ctx=None):
        if parent != pyfuse3.ROOT_INODE or name not in NAMES:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attr(NAMES[name])

    async def opendir(self, inode, ctx):
        if inode != pyfuse3.ROOT_INODE:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return inode

    async def readdir(self, fh, start_id, token):
        entries = list(NAMES.items())
        for index in range(start_id, len(entries)):
            name, inode = entries[index]
            if not pyfuse3.readdir_reply(token, name, self._attr(inode), index + 1):
                break

    async def releasedir(self, fh):
        return None

    async def setattr(self, inode, attr, fields, fh, ctx):
        if inode != DATA_INODE or self.backing_fd is None or fields.update_size:
            raise pyfuse3.FUSEError(errno.EPERM)
        return self._attr(inode)

    async def open(self, inode, flags, ctx):
        if flags & os.O_ACCMODE != os.O_RDONLY and not (inode == DATA_INODE and self.backing_fd is not None):
            raise pyfuse3.FUSEError(errno.EACCES)
        if inode == DATA_INODE:
            return pyfuse3.FileInfo(fh=DATA_INODE, keep_cache=True, direct_io=False)
        if inode == STATS_INODE:
            fh = self.next_fh = self.next_fh + 1
            self.snapshots[fh] = json.dumps({"pid": os.getpid(), "reads": self.reads, "read_bytes": self.read_bytes,
                                             "writes": self.writes, "write_bytes": self.write_bytes,
                                             "fsyncs": self.fsyncs}).encode()
            return pyfuse3.FileInfo(fh=fh, direct_io=True, keep_cache=False)
        raise pyfuse3.FUSEError(errno.EACCES)

    async def read(self, fh, off, size):
        if fh == DATA_INODE:
            self.reads += 1
            if self.backing_fd is not None:
                out = os.pread(self.backing_fd, max(0, min(size, self.size - off)), off)
            else:
                out = self.data[off:off + size]
            self.read_bytes += len(out)
            return out
        return self.snapshots[fh][off:off + size]

    async def write(self, fh, off, buf):
        if fh != DATA_INODE or self.backing_fd is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        if off + len(buf) > self.size:
            raise pyfuse3.FUSEError(errno.EFBIG)
        self.writes += 1
        n = os.pwrite(self.backing_fd, buf, off)
        self.write_bytes += n
        return n

    async def fsync(self, fh, datasync):
        if fh == DATA_INODE and self.backing_fd is not None:
            self.fsyncs += 1
            os.fsync(self.backing_fd)

    async def flush(self, fh):
        return None

    async def release(self, fh):
        self.snapshots.pop(fh, None)


async def _serve() -> None:
    async def on_signal() -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                pyfuse3.terminate()
                return

    async with trio.open_nursery() as nursery:
        nursery.start_soon(on_signal)
        print("ready", flush=True)
        await pyfuse3.main()
        nursery.cancel_scope.cancel()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mountpoint")
    p.add_argument("--size", type=int, default=64 << 20, help="bytes in the data file (default 64 MiB)")
    p.add_argument("--blksize", type=int, default=65536, help="st_blksize reported for data (nffs: min(page size, 128 KiB))")
    p.add_argument("--backing", default=None, help="serve `data` read-write from this one file on disk (write baseline)")
    args = p.parse_args()
    if args.backing:
        fs = MinimalFS(b"", args.blksize, backing=args.backing, size=args.size)
    else:
        fs = MinimalFS(os.urandom(args.size), args.blksize)
    options = set(pyfuse3.default_options)
    options.update({"fsname=minimal_fs", "subtype=minimal_fs"})
    pyfuse3.init(fs, args.mountpoint, options)
    unmount = True
    try:
        trio.run(_serve)
        unmount = os.path.ismount(args.mountpoint)
    finally:
        pyfuse3.close(unmount=unmount)
    return 0


if __name__ == "__main__":
    sys.exit(main())
