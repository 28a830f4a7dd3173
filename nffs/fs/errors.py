"""The FUSE layer's side of the error contract (nffs/errors.py).

Only `pyfuse3.FUSEError` may leave a handler. `fuse_handler` wraps every dispatcher
method:

- `pyfuse3.FUSEError` passes through unchanged;
- an `NffsError` (bad input, read-only, full or failing tier) becomes
  `FUSEError(exc.errno)`; it is logged at ERROR only for EIO and ENOSPC, which an
  operator must see, and at DEBUG otherwise (a user's typo is not a daemon problem);
- anything else is a bug: logged once with its traceback, counted in
  `ErrorCounters.unexpected` (reported in `stats` as ``errors.unexpected``) and
  answered with EIO, so a bug never passes for a user error and never kills the loop.

The page store of this branch still raises `OSError` carrying an errno; the one
place that turns those into domain errors is `domain_error` / `store_errors`, so
that when the store raises `NffsError` subclasses itself only this module changes.
"""
from __future__ import annotations

import errno
import functools
import logging
from collections import Counter
from typing import Any, Awaitable, Callable, TypeVar

import pyfuse3

from ..errors import InvalidInput, NffsError, NoSpace, PageIOError, ReadOnly

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])

#: domain errors an operator must see in the log
LOUD_ERRNOS = frozenset({errno.EIO, errno.ENOSPC})


class ErrorCounters:
    """Answers given with an error, by errno name, plus the bugs (`unexpected`)."""

    def __init__(self) -> None:
        self.unexpected = 0
        self.by_errno: Counter[str] = Counter()

    def count(self, code: int) -> None:
        self.by_errno[errno.errorcode.get(code, str(code))] += 1

    def as_dict(self) -> dict[str, int]:
        return {"unexpected": self.unexpected, **dict(sorted(self.by_errno.items()))}


class HasErrorCounters:
    """What `fuse_handler` needs of the object whose methods it wraps."""

    errors: ErrorCounters


def fuse_handler(func: F) -> F:
    """Apply the error contract to one pyfuse3 handler (a method of an object with `.errors`)."""

    @functools.wraps(func)
    async def wrapper(self: HasErrorCounters, *args: Any) -> Any:  # pyfuse3 passes arguments by position
        try:
            return await func(self, *args)
        except pyfuse3.FUSEError:
            raise
        except Exception as exc:
            raise fuse_error_for(self.errors, func.__name__, exc) from None

    return wrapper  # type: ignore[return-value]


def fuse_error_for(errors: ErrorCounters, handler: str, exc: Exception) -> pyfuse3.FUSEError:
    """The contract's answer to `exc` (not a FUSEError) raised in `handler`: counted and
    logged as the module docstring says. Called by `fuse_handler`, and inline by the one
    handler that cannot spare its extra coroutine (`FieldOperations.read`)."""
    if isinstance(exc, NffsError):
        errors.count(exc.errno)
        if exc.errno in LOUD_ERRNOS:
            log.error("%s: %s", handler, exc)
        else:
            log.debug("%s: %s (%s)", handler, exc, errno.errorcode.get(exc.errno, exc.errno))
        return pyfuse3.FUSEError(exc.errno)
    errors.unexpected += 1
    errors.count(errno.EIO)
    log.error("%s: unexpected failure; answering EIO and serving on", handler, exc_info=exc)
    return pyfuse3.FUSEError(errno.EIO)


_BY_ERRNO: dict[int, type[NffsError]] = {
    errno.EIO: PageIOError,
    errno.ENOSPC: NoSpace,
    errno.EDQUOT: NoSpace,
    errno.EROFS: ReadOnly,
    errno.EINVAL: InvalidInput,
}


def domain_error(exc: OSError) -> NffsError:
    """The domain error for an `OSError` raised by the page store or the field directory."""
    code = exc.errno or errno.EIO
    cls = _BY_ERRNO.get(code)
    if cls is not None:
        return cls(str(exc))
    # Any other errno from a tier (EACCES on a replaced root, ENXIO, ...) is a failing
    # device for the pages concerned: EIO to the reader.
    return PageIOError(str(exc))


class _StoreErrors:
    """`store_errors()`: a plain context manager, not a generator's (entered on every read
    and write of a byte view: the generator's setup and teardown cost ~1.5 us of a small
    write's round trip). It keeps no state, so one instance serves every `with`."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> bool:
        if exc is None or isinstance(exc, NffsError) or not isinstance(exc, OSError):
            return False
        raise domain_error(exc) from exc


_STORE_ERRORS = _StoreErrors()


def store_errors() -> _StoreErrors:
    """Around calls into the store or the field directory: OSError -> domain error."""
    return _STORE_ERRORS
