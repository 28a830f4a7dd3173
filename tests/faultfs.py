"""A small fault-injecting pass-through file system (pyfuse3 + trio), used as an nffs tier.

    python tests/faultfs.py SOURCE_DIR MOUNTPOINT CONTROL_FILE

Mirrors SOURCE_DIR at MOUNTPOINT. Before every operation it reads CONTROL_FILE (if present):
whitespace-separated words among `read`, `write`, `fsync`, `create`, `meta` (lookup/getattr/
readdir); each listed class of operation fails with EIO while listed. `ready` is written to
stdout once mounted. Stops on SIGTERM (unmounts).
"""
from __future__ import annotations

import errno
import os
import signal
import stat as stat_m
import sys

import pyfuse3
import trio


class FaultFS(pyfuse3.Operations):
    enable_writeback_cache = False

    def __init__(self, source: str, control: str) -> None:
        super().__init__()
        self.control = control
        self.paths: dict[int, str] = {pyfuse3.ROOT_INODE: source}
        self.inodes: dict[str, int] = {source: pyfuse3.ROOT_INODE}
        self.next_ino = pyfuse3.ROOT_INODE + 1
        self.faults_hit = 0

    # -- faults
    def _check(self, kind: str) -> None:
        try:
            with open(self.control) as f:
                words = f.read().split()
        except OSError:
            return
        if kind in words:
            self.faults_hit += 1
            raise pyfuse3.FUSEError(errno.EIO)

    # -- inode bookkeeping (path based; good enough for a test tier)
    def _path(self, ino: int) -> str:
        try:
            return self.paths[ino]
        except KeyError:
            raise pyfuse3.FUSEError(errno.ENOENT) from None

    def _ino(self, path: str) -> int:
        ino = self.inodes.get(path)
        if ino is None:
            ino = self.next_ino
            self.next_ino += 1
            self.inodes[path] = ino
            self.paths[ino] = path
        return ino

    def _attr(self, path: str) -> pyfuse3.EntryAttributes:
        try:
            st = os.lstat(path)
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno) from None
        a = pyfuse3.EntryAttributes()
        a.st_ino = self._ino(path)
        for name in ("st_mode", "st_nlink", "st_uid", "st_gid", "st_rdev", "st_size", "st_blksize", "st_blocks"):
            setattr(a, name, getattr(st, name))
        a.st_atime_ns, a.st_mtime_ns, a.st_ctime_ns = st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns
        a.generation = 0
        a.entry_timeout = 0
        a.attr_timeout = 0
        return a

    def _os(self, fn, *args):
        try:
            return fn(*args)
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None

    # -- metadata
    async def lookup(self, parent_inode, name, ctx=None):
        self._check("meta")
        return self._attr(os.path.join(self._path(parent_inode), os.fsdecode(name)))

    async def getattr(self, inode, ctx=None):
        self._check("meta")
        return self._attr(self._path(inode))

    async def setattr(self, inode, attr, fields, fh, ctx):
        path = self._path(inode)
        if fields.update_size:
            self._check("write")
            self._os(os.truncate, path, attr.st_size)
        if fields.update_mode:
            self._os(os.chmod, path, stat_m.S_IMODE(attr.st_mode))
        if fields.update_uid or fields.update_gid:
            self._os(os.chown, path, attr.st_uid if fields.update_uid else -1, attr.st_gid if fields.update_gid else -1)
        if fields.update_atime or fields.update_mtime:
            st = os.lstat(path)
            self._os(os.utime, path, None, (attr.st_atime_ns if fields.update_atime else st.st_atime_ns,
                                             attr.st_mtime_ns if fields.update_mtime else st.st_mtime_ns))
        return self._attr(path)

    async def readlink(self, inode, ctx):
        return os.fsencode(self._os(os.readlink, self._path(inode)))

    async def opendir(self, inode, ctx):
        self._check("meta")
        return inode

    async def readdir(self, fh, start_id, token):
        path = self._path(fh)
        entries = sorted(self._os(os.listdir, path))
        for i, name in enumerate(entries[start_id:], start_id):
            try:
                attr = self._attr(os.path.join(path, name))
            except pyfuse3.FUSEError:
                continue
            if not pyfuse3.readdir_reply(token, os.fsencode(name), attr, i + 1):
                break

    async def releasedir(self, fh):
        pass

    async def fsyncdir(self, fh, datasync):
        self._check("fsync")
        fd = self._os(os.open, self._path(fh), os.O_RDONLY | os.O_DIRECTORY)
        try:
            self._os(os.fsync, fd)
        finally:
            os.close(fd)

    async def mkdir(self, parent_inode, name, mode, ctx):
        self._check("create")
        path = os.path.join(self._path(parent_inode), os.fsdecode(name))
        self._os(os.mkdir, path, mode)
        return self._attr(path)

    async def rmdir(self, parent_inode, name, ctx):
        self._check("write")
        self._os(os.rmdir, os.path.join(self._path(parent_inode), os.fsdecode(name)))

    async def unlink(self, parent_inode, name, ctx):
        self._check("write")
        path = os.path.join(self._path(parent_inode), os.fsdecode(name))
        self._os(os.unlink, path)
        ino = self.inodes.pop(path, None)
        if ino is not None:
            self.paths.pop(ino, None)

    async def rename(self, old_parent, old_name, new_parent, new_name, flags, ctx):
        self._check("write")
        old = os.path.join(self._path(old_parent), os.fsdecode(old_name))
        new = os.path.join(self._path(new_parent), os.fsdecode(new_name))
        self._os(os.rename, old, new)
        ino = self.inodes.pop(old, None)
        gone = self.inodes.pop(new, None)
        if gone is not None:
            self.paths.pop(gone, None)
        if ino is not None:
            self.inodes[new] = ino
            self.paths[ino] = new

    async def symlink(self, parent_inode, name, target, ctx):
        self._check("create")
        path = os.path.join(self._path(parent_inode), os.fsdecode(name))
        self._os(os.symlink, os.fsdecode(target), path)
        return self._attr(path)

    async def statfs(self, ctx):
        st = os.statvfs(self.paths[pyfuse3.ROOT_INODE])
        s = pyfuse3.StatvfsData()
        for name in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files", "f_ffree", "f_favail", "f_namemax"):
            setattr(s, name, getattr(st, name))
        return s

    # -- files
    async def open(self, inode, flags, ctx):
        self._check("meta")
        fd = self._os(os.open, self._path(inode), flags & ~os.O_CREAT)
        return pyfuse3.FileInfo(fh=fd, direct_io=True)

    async def create(self, parent_inode, name, mode, flags, ctx):
        self._check("create")
        path = os.path.join(self._path(parent_inode), os.fsdecode(name))
        fd = self._os(os.open, path, flags | os.O_CREAT, mode)
        return pyfuse3.FileInfo(fh=fd, direct_io=True), self._attr(path)

    async def read(self, fh, off, size):
        self._check("read")
        return self._os(os.pread, fh, size, off)

    async def write(self, fh, off, buf):
        self._check("write")
        return self._os(os.pwrite, fh, buf, off)

    async def flush(self, fh):
        pass

    async def fsync(self, fh, datasync):
        self._check("fsync")
        self._os(os.fsync, fh)

    async def release(self, fh):
        os.close(fh)


def main() -> None:
    source, mountpoint, control = (os.path.abspath(a) for a in sys.argv[1:4])
    fs = FaultFS(source, control)
    options = set(pyfuse3.default_options)
    options.add("fsname=faultfs")
    options.discard("default_permissions")
    pyfuse3.init(fs, mountpoint, options)

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pyfuse3.main)

            def stop(*_):
                nursery.cancel_scope.cancel()

            signal.signal(signal.SIGTERM, stop)
            print("ready", flush=True)

    try:
        trio.run(run)
    finally:
        pyfuse3.close(unmount=True)


if __name__ == "__main__":
    main()
