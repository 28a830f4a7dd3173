"""`hints` (SPEC 5): prefetch hints, one per line.

    point X Y Z       the pages of that point's corners
    concept NAME      the pages of that concept's corners
    page P            one page
    range OFF LEN     the pages of a byte range of params (at most 4096 pages)

A line may arrive in pieces over several writes, so an unterminated tail is kept per
handle, but never more than `MAX_HINT_LINE` bytes of it: a writer that never sends a
newline gets EINVAL and its buffer is dropped (before this bound, 100 MiB without a
newline grew the daemon by 310 MB).
"""
from __future__ import annotations

import errno
import logging
import os
import stat

import numpy as np
import pyfuse3

from ...encoding import hashgrid
from ...errors import InvalidInput
from .. import inodes as ino
from .concepts import concept_point
from .base import DYNAMIC_TIMEOUT, Handle, MountContext, Node, fs_error, make_attr

log = logging.getLogger(__name__)

MAX_HINT_LINE = 4096
MAX_RANGE_PAGES = 4096


class HintsHandle(Handle):
    __slots__ = ("tail",)

    def __init__(self, node: Node, flags: int) -> None:
        super().__init__(node, flags)
        self.tail = b""


class HintsNode(Node):
    writable = True
    writable_read_only = True

    def __init__(self, ctx: MountContext) -> None:
        super().__init__(ctx, ino.HINTS)

    def getattr(self) -> pyfuse3.EntryAttributes:
        return make_attr(self.ctx, self.inode, stat.S_IFREG | 0o222, 0, timeout=DYNAMIC_TIMEOUT)

    async def open(self, flags: int) -> Handle:
        self.check_open(flags)
        if flags & os.O_ACCMODE != os.O_WRONLY:
            raise fs_error(errno.EACCES, "hints is write-only")
        return HintsHandle(self, flags)

    async def read(self, handle: Handle, off: int, size: int) -> bytes:
        raise fs_error(errno.EBADF, "hints is write-only")

    async def write(self, handle: Handle, off: int, buf: bytes) -> int:
        assert isinstance(handle, HintsHandle)
        data = handle.tail + bytes(buf)
        lines, newline, tail = data.rpartition(b"\n")
        if len(tail) > MAX_HINT_LINE:
            handle.tail = b""
            raise InvalidInput(f"hint line longer than {MAX_HINT_LINE} bytes")
        handle.tail = tail
        if newline:
            self.apply(lines)
        return len(buf)

    async def flush(self, handle: Handle) -> None:
        assert isinstance(handle, HintsHandle)
        if handle.tail:
            tail, handle.tail = handle.tail, b""
            self.apply(tail)

    def apply(self, data: bytes) -> None:
        """Parse every line, then hand all pages over; any malformed line: EINVAL, nothing applied."""
        pages: list[int] = []
        bad: list[str] = []
        for raw in data.split(b"\n"):
            if len(raw) > MAX_HINT_LINE:
                bad.append(f"line longer than {MAX_HINT_LINE} bytes")
                continue
            line = raw.decode("utf-8", "surrogateescape").strip()
            if not line or line.startswith("#"):
                continue
            try:
                pages.extend(self.pages_of(line))
            except InvalidInput as exc:
                bad.append(str(exc))
        if bad:
            log.info("ignored %d malformed hint line(s), first: %s", len(bad), bad[0])
            raise InvalidInput(f"{len(bad)} malformed hint line(s): {bad[0]}")
        if pages and self.ctx.hint_sink is not None:
            self.ctx.hint_sink(pages)

    def pages_of(self, line: str) -> list[int]:
        word, _, rest = line.partition(" ")
        layout = self.ctx.layout
        if word == "page":
            page = _int(rest, "page")
            if not 0 <= page < layout.n_pages:
                raise InvalidInput(f"page {page} out of range")
            return [page]
        if word == "range":
            parts = rest.split()
            if len(parts) != 2:
                raise InvalidInput("range needs OFFSET LENGTH")
            off, length = _int(parts[0], "offset"), _int(parts[1], "length")
            if off < 0 or length <= 0 or off >= layout.params_bytes:
                raise InvalidInput("range outside params")
            end = min(off + length, layout.params_bytes)
            first, last = off // layout.page_size, (end - 1) // layout.page_size
            return list(range(first, min(last, first + MAX_RANGE_PAGES - 1) + 1))
        if word == "point":
            try:
                point = hashgrid.parse_point(rest, layout.dims)
            except ValueError as exc:
                raise InvalidInput(f"bad point: {exc}") from None
            return self.pages_of_points(point.reshape(1, -1))
        if word == "concept":
            found = self.ctx.catalog.by_name(rest.encode("utf-8", "surrogateescape"))
            if found is None:
                raise InvalidInput(f"no concept {rest!r}")
            return self.pages_of_points(concept_point(found, layout.dims).reshape(1, -1))
        raise InvalidInput(f"unknown hint {word!r}")

    def pages_of_points(self, points: np.ndarray) -> list[int]:
        entries, _ = hashgrid.corner_entries(self.ctx.layout, points)
        return hashgrid.touched_pages(self.ctx.layout, entries).tolist()


def _int(text: str, what: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise InvalidInput(f"{what} is not an integer: {text!r}") from None
