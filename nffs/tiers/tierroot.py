"""Tier directories that cannot be hijacked (SPEC 7; issue: planted links, recreated roots).

A tier root is opened once as a directory descriptor after checking that it is a real
directory (not a link) owned by the daemon's user; it is made mode 0700. Every file
below it is reached relative to that descriptor with O_NOFOLLOW, so nothing another
user plants in or above the tree can redirect the daemon. The root's identity (device,
inode) is re-checked against its path before I/O: a root that vanished or was
replaced (a network file system unmounted under us, a directory renamed away) makes
the tier unavailable — EIO for its pages — and is never recreated or followed.

Durable roots carry a marker file naming the field, so a bare or foreign directory at
the same path is recognised as "replaced".
"""
from __future__ import annotations

import errno
import json
import logging
import os
import secrets
import stat
import time

from ..errors import TierUnavailable

log = logging.getLogger(__name__)

MARKER = ".nffs-tier"
O_PRIVATE = os.O_NOFOLLOW | os.O_CLOEXEC


class TierRootError(Exception):
    """A tier root that cannot be used safely; the message is for the user."""


def _check_dir(path: str, st: os.stat_result) -> None:
    if stat.S_ISLNK(st.st_mode):
        raise TierRootError(f"{path} is a symbolic link; tier roots must be real directories")
    if not stat.S_ISDIR(st.st_mode):
        raise TierRootError(f"{path} exists and is not a directory")
    if st.st_uid != os.geteuid():
        raise TierRootError(f"{path} is owned by uid {st.st_uid}, not by this user ({os.geteuid()})")


class TierRoot:
    """One tier directory held open; the only way the store touches a tier's files."""

    def __init__(self, path: str, fd: int, check_interval: float = 1.0) -> None:
        self.path = path
        self.fd = fd
        st = os.fstat(fd)
        self.identity = (st.st_dev, st.st_ino)
        self._check_interval = check_interval
        self._checked_at = time.monotonic()
        self._available = True

    # -- opening -----------------------------------------------------------------------
    @classmethod
    def open_existing(cls, path: str, check_interval: float = 1.0) -> "TierRoot":
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            raise TierRootError(f"{path} does not exist") from None
        except OSError as exc:
            raise TierRootError(f"{path}: {exc.strerror}") from None
        _check_dir(path, st)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | O_PRIVATE)
        except OSError as exc:
            raise TierRootError(f"{path}: {exc.strerror}") from None
        fst = os.fstat(fd)
        if (fst.st_dev, fst.st_ino) != (st.st_dev, st.st_ino):
            os.close(fd)
            raise TierRootError(f"{path} changed while it was being opened")
        if stat.S_IMODE(fst.st_mode) & 0o077:
            os.fchmod(fd, 0o700)
        return cls(path, fd, check_interval)

    @classmethod
    def create(cls, path: str, check_interval: float = 1.0) -> "TierRoot":
        """Create the directory (parents as needed) or open it if it is already ours."""
        parent = os.path.dirname(path.rstrip("/")) or "/"
        if not os.path.isdir(parent):
            try:
                os.makedirs(parent, mode=0o700, exist_ok=True)
            except OSError as exc:
                raise TierRootError(f"cannot create {parent}: {exc.strerror}") from None
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
        except OSError as exc:
            raise TierRootError(f"cannot create {path}: {exc.strerror}") from None
        return cls.open_existing(path, check_interval)

    @classmethod
    def create_private(cls, parent: str, prefix: str, check_interval: float = 1.0) -> "TierRoot":
        """A fresh directory with an unguessable name, created exclusively (never reused)."""
        pst = None
        try:
            pst = os.stat(parent)
        except OSError as exc:
            raise TierRootError(f"{parent}: {exc.strerror}") from None
        if not stat.S_ISDIR(pst.st_mode):
            raise TierRootError(f"{parent} is not a directory")
        for _ in range(8):
            path = os.path.join(parent, f"{prefix}{secrets.token_hex(12)}")
            try:
                os.mkdir(path, 0o700)
            except FileExistsError:
                continue
            except OSError as exc:
                raise TierRootError(f"cannot create a directory in {parent}: {exc.strerror}") from None
            return cls.open_existing(path, check_interval)
        raise TierRootError(f"cannot create a private directory in {parent}")

    # -- identity ----------------------------------------------------------------------
    def write_marker_data(self, marker: dict) -> None:
        data = json.dumps(marker).encode()
        tmp = f"{MARKER}.tmp"
        fd = self.open_file(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, MARKER, src_dir_fd=self.fd, dst_dir_fd=self.fd)
        os.fsync(self.fd)

    def read_marker(self) -> dict | None:
        try:
            fd = self.open_file(MARKER, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            raw = os.read(fd, 4096)
        finally:
            os.close(fd)
        try:
            data = json.loads(raw)
        except ValueError:
            return None
        return data if isinstance(data, dict) else None

    def still_here(self, force: bool = False) -> bool:
        """Does the path still name the directory we hold? (cached for `check_interval`)."""
        now = time.monotonic()
        if not force and now - self._checked_at < self._check_interval:
            return self._available
        self._checked_at = now
        try:
            st = os.lstat(self.path)
            ok = stat.S_ISDIR(st.st_mode) and (st.st_dev, st.st_ino) == self.identity
        except OSError:
            ok = False
        if ok != self._available:
            if ok:
                log.warning("tier root %s is back", self.path)
            else:
                log.error("tier root %s vanished or was replaced: its pages give EIO until it returns", self.path)
        self._available = ok
        return ok

    def require(self, force: bool = False) -> None:
        if not self.still_here(force):
            raise TierUnavailable(f"tier root {self.path} is missing or replaced")

    # -- files below the root (never following links) ------------------------------------
    def open_file(self, name: str, flags: int, mode: int = 0o600) -> int:
        if "/" in name:
            raise ValueError(f"tier file names are flat: {name!r}")
        return os.open(name, flags | O_PRIVATE, mode, dir_fd=self.fd)

    def unlink(self, name: str) -> bool:
        try:
            os.unlink(name, dir_fd=self.fd)
            return True
        except FileNotFoundError:
            return False

    def listdir(self) -> list[str]:
        return os.listdir(self.fd)

    def lstat(self, name: str) -> os.stat_result:
        return os.stat(name, dir_fd=self.fd, follow_symlinks=False)

    def fsync(self) -> None:
        os.fsync(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def remove_private(self) -> None:
        """Remove a private directory we created (its files first, never following links)."""
        if self.fd < 0:
            return
        try:
            for name in self.listdir():
                try:
                    st = self.lstat(name)
                except FileNotFoundError:
                    continue
                if not stat.S_ISDIR(st.st_mode):
                    self.unlink(name)
            if self.still_here(force=True):
                os.rmdir(self.path)
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENOTEMPTY):
                log.warning("could not remove %s: %s", self.path, exc)
        finally:
            self.close()


def remove_stale_private(path: str, prefix: str) -> None:
    """Remove a private memory-tier directory a crashed daemon left behind.

    Only a real directory owned by us, with the expected name prefix, is touched; its
    regular files are unlinked through a descriptor (links are unlinked, not followed).
    """
    if not os.path.basename(path).startswith(prefix):
        return
    try:
        root = TierRoot.open_existing(path)
    except TierRootError:
        return
    root.remove_private()
