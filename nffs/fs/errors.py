"""Only pyfuse3.FUSEError may leave a handler: everything else becomes an errno, logged once."""
from __future__ import annotations

import errno
import functools
import logging
from typing import Any, Awaitable, Callable, TypeVar

import pyfuse3

from ..errors import NffsError

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def fuse_handler(func: F) -> F:
    @functools.wraps(func)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return await func(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except NffsError as exc:
            if exc.errno in (errno.EIO, errno.ENOSPC):
                log.error("%s: %s", func.__name__, exc)
            else:
                log.debug("%s: %s", func.__name__, exc)
            raise pyfuse3.FUSEError(exc.errno) from None
        except OSError as exc:
            code = exc.errno or errno.EIO
            if code in (errno.EIO, errno.ENOSPC):
                log.error("%s: %s", func.__name__, exc)
            else:
                log.debug("%s: %s", func.__name__, exc)
            raise pyfuse3.FUSEError(code) from None
        except (ValueError, OverflowError) as exc:
            log.debug("%s: invalid input: %s", func.__name__, exc)
            raise pyfuse3.FUSEError(errno.EINVAL) from None
        except MemoryError:
            log.error("%s: out of memory", func.__name__)
            raise pyfuse3.FUSEError(errno.ENOMEM) from None
        except Exception:
            log.exception("%s: unexpected failure; answering EIO and serving on", func.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper  # type: ignore[return-value]
