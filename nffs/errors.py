"""The error contract shared by every layer (brief: "domain exceptions carry an errno").

Code below the FUSE layer raises an `NffsError` subclass when the *user* or the
*environment* is at fault (bad input, read-only mount, full tier, failed device).
The FUSE dispatcher turns exactly these into `pyfuse3.FUSEError(exc.errno)`.
Anything else that escapes a handler is a bug: it is logged with its traceback,
counted in `stats` (`errors.unexpected`) and answered with EIO, so a bug never
passes for a user error.
"""
from __future__ import annotations

import errno as _errno


class NffsError(Exception):
    """Base of the domain errors; `errno` is what the FUSE client sees."""

    errno: int = _errno.EIO

    def __init__(self, message: str = "", *, code: int | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.errno = code


class InvalidInput(NffsError):
    """Malformed request, point, path, flag or file content (EINVAL)."""

    errno = _errno.EINVAL


class NotFound(NffsError):
    errno = _errno.ENOENT


class NameTooLong(NffsError):
    errno = _errno.ENAMETOOLONG


class ReadOnly(NffsError):
    errno = _errno.EROFS


class NoSpace(NffsError):
    """Every durable tier is full (ENOSPC to the writer; nothing else changes)."""

    errno = _errno.ENOSPC


class PageIOError(NffsError):
    """A page could not be read or written: missing/replaced tier, device error, checksum
    mismatch. EIO for the pages concerned only; the rest of the field keeps working."""

    errno = _errno.EIO


class ChecksumMismatch(PageIOError):
    """Stored bytes do not match the checksum the page table committed."""


class TierUnavailable(PageIOError):
    """A tier root is missing, replaced, foreign-owned or not mounted."""


class TierTimeout(TierUnavailable):
    """A tier did not answer within the I/O time limit (a hung network file system)."""
