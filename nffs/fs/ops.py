"""pyfuse3 Operations for the mounted field (SPEC 4): paths and handles -> Field / PageStore calls."""
from __future__ import annotations

import errno
import json
import logging
import os
import stat
import time
from dataclasses import dataclass, field as dc_field
from typing import Any, Callable

import numpy as np
import pyfuse3
import trio

from ..encoding import hashgrid
from ..field import Field
from ..tiers.store import PageStore
from . import inodes as ino
from .errors import fuse_handler
from .stats import render_metrics

log = logging.getLogger(__name__)

NAME_MAX = 255
POINT_XATTR = b"user.nffs.point"
STATIC_TIMEOUT = 3600.0
DYNAMIC_TIMEOUT = 1.0


@dataclass
class Handle:
    inode: int
    writable: bool = False
    request: bytearray = dc_field(default_factory=bytearray)  # query: request being written
    answer: bytes | None = None  # query: answer of the last request
    request_error: int | None = None
    snapshot: bytes | None = None  # stats/metrics/at/field.json content frozen at open
    buffer: bytearray | None = None  # decoder.npz being written
    dirty: bool = False
    hint_tail: bytes = b""


class FieldOperations(pyfuse3.Operations):
    supports_dot_lookup = True
    enable_writeback_cache = False

    def __init__(
        self,
        field: Field,
        *,
        max_batch: int = 1 << 20,
        read_only: bool = False,
        stats_extra: Callable[[], dict[str, Any]] | None = None,
        hint_sink: Callable[[list[int]], None] | None = None,
    ) -> None:
        super().__init__()
        self.field = field
        self.store: PageStore = field.store
        self.layout = field.layout
        self.meta = field.store.meta
        self.max_batch = max_batch
        self.read_only = read_only
        self.stats_extra = stats_extra
        self.hint_sink = hint_sink
        self.uid = os.geteuid()
        self.gid = os.getegid()
        self.mount_time_ns = time.time_ns()
        self.handles: dict[int, Handle] = {}
        self._next_fh = 1
        self._at_points: dict[int, tuple[np.ndarray, int]] = {}  # inode -> (point, lookups)
        self._at_by_name: dict[bytes, int] = {}
        self._at_serial = 0
        self._opened_views: set[int] = set()  # params/levels inodes the kernel may cache
        self.level_ranges = [self.layout.level_byte_range(l) for l in range(self.layout.n_levels)]
        self.field_json = (json.dumps(self._describe(), indent=2) + "\n").encode()

    def _describe(self) -> dict[str, Any]:
        d = self.layout.describe()
        d["per_level"] = d.pop("levels_info")
        d["tiers"] = self.store.describe_tiers()
        return d

    # ------------------------------------------------------------------ attributes
    def _attr(self, inode: int, mode: int, size: int = 0, timeout: float = STATIC_TIMEOUT) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = inode
        a.generation = 0
        a.entry_timeout = timeout
        a.attr_timeout = timeout
        a.st_mode = mode
        a.st_nlink = 2 if stat.S_ISDIR(mode) else 1
        a.st_uid = self.uid
        a.st_gid = self.gid
        a.st_rdev = 0
        a.st_size = size
        a.st_blksize = min(self.layout.page_size, 1 << 17)
        a.st_blocks = (size + 511) // 512
        a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = self.mount_time_ns
        return a

    def _rw(self) -> int:
        return 0o444 if self.read_only else 0o644

    def _concept_size(self) -> int:
        return self.layout.encoding_width * 4

    def _materialised_bytes(self) -> int:
        return sum(t.pages for t in self.store.durable_tiers) * self.layout.page_size

    def _getattr(self, inode: int) -> pyfuse3.EntryAttributes:
        DIR = stat.S_IFDIR
        REG = stat.S_IFREG
        if inode == ino.ROOT:
            return self._attr(inode, DIR | 0o755)
        if inode in (ino.LEVELS_DIR, ino.AT_DIR):
            return self._attr(inode, DIR | 0o555)
        if inode == ino.CONCEPTS_DIR:
            return self._attr(inode, DIR | (0o555 if self.read_only else 0o755), timeout=DYNAMIC_TIMEOUT)
        if inode == ino.FIELD_JSON:
            return self._attr(inode, REG | 0o444, len(self.field_json))
        if inode == ino.PARAMS:
            a = self._attr(inode, REG | self._rw(), self.layout.params_bytes)
            a.st_blocks = self._materialised_bytes() // 512
            return a
        if ino.is_level(inode):
            level = inode - ino.LEVEL_BASE
            if level >= self.layout.n_levels:
                raise pyfuse3.FUSEError(errno.ENOENT)
            start, end = self.level_ranges[level]
            return self._attr(inode, REG | self._rw(), end - start)
        if inode in (ino.STATS, ino.METRICS):
            return self._attr(inode, REG | 0o444, 0, timeout=0)
        if inode == ino.QUERY:
            return self._attr(inode, REG | 0o666, 0, timeout=DYNAMIC_TIMEOUT)
        if inode == ino.HINTS:
            return self._attr(inode, REG | 0o222, 0, timeout=DYNAMIC_TIMEOUT)
        if inode == ino.DECODER:
            pending = [h.buffer for h in self.handles.values() if h.inode == ino.DECODER and h.buffer is not None]
            if self.field.decoder_bytes is None and not pending:
                raise pyfuse3.FUSEError(errno.ENOENT)
            size = len(pending[-1]) if pending else len(self.field.decoder_bytes or b"")
            return self._attr(inode, REG | self._rw(), size, timeout=0)
        if ino.is_concept(inode):
            if self.meta.concept_by_id(inode - ino.CONCEPT_BASE) is None:
                raise pyfuse3.FUSEError(errno.ENOENT)
            return self._attr(inode, REG | self._rw(), self._concept_size(), timeout=DYNAMIC_TIMEOUT)
        if ino.is_at(inode):
            if inode not in self._at_points:
                raise pyfuse3.FUSEError(errno.ENOENT)
            return self._attr(inode, REG | 0o444, 0, timeout=0)
        raise pyfuse3.FUSEError(errno.ENOENT)

    @fuse_handler
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext = None) -> pyfuse3.EntryAttributes:
        return self._getattr(inode)

    @fuse_handler
    async def setattr(self, inode, attr, fields, fh, ctx):
        # params, levels and concepts have a fixed size: truncation (O_TRUNC, `>`) is accepted
        # and ignored, so that tools that rewrite files whole keep working.
        if fields.update_size and inode == ino.DECODER and fh in self.handles:
            h = self.handles[fh]
            if h.buffer is not None:
                del h.buffer[attr.st_size:]
                h.dirty = True
        return self._getattr(inode)

    # ------------------------------------------------------------------ lookup
    def _parse_at_name(self, name: bytes) -> np.ndarray:
        try:
            text = name.decode("ascii")
        except UnicodeDecodeError:
            raise pyfuse3.FUSEError(errno.EINVAL) from None
        try:
            return hashgrid.parse_point(text, self.layout.dims)
        except ValueError:
            raise pyfuse3.FUSEError(errno.EINVAL) from None

    @fuse_handler
    async def lookup(self, parent: int, name: bytes, ctx=None) -> pyfuse3.EntryAttributes:
        if name == b".":
            return self._getattr(parent)
        if name == b"..":
            return self._getattr(ino.ROOT)
        if parent == ino.ROOT:
            inode = ino.ROOT_FILES.get(name) or ino.ROOT_DIRS.get(name)
            if inode is None:
                raise pyfuse3.FUSEError(errno.ENOENT)
            return self._getattr(inode)
        if parent == ino.LEVELS_DIR:
            if len(name) == 2 and name.isdigit() and int(name) < self.layout.n_levels:
                return self._getattr(ino.level_inode(int(name)))
            raise pyfuse3.FUSEError(errno.ENOENT)
        if parent == ino.CONCEPTS_DIR:
            if len(name) > NAME_MAX:
                raise pyfuse3.FUSEError(errno.ENAMETOOLONG)
            found = self.meta.concept_by_name(name)
            if found is None:
                raise pyfuse3.FUSEError(errno.ENOENT)
            return self._getattr(ino.CONCEPT_BASE + found[0])
        if parent == ino.AT_DIR:
            if len(name) > NAME_MAX:
                raise pyfuse3.FUSEError(errno.ENAMETOOLONG)
            point = self._parse_at_name(name)
            inode = self._at_by_name.get(name)
            if inode is None:
                self._at_serial += 1
                inode = ino.AT_BASE + self._at_serial
                self._at_by_name[name] = inode
                self._at_points[inode] = (point, 0)
            pt, count = self._at_points[inode]
            self._at_points[inode] = (pt, count + 1)
            return self._getattr(inode)
        raise pyfuse3.FUSEError(errno.ENOENT)

    async def forget(self, inode_list) -> None:
        for inode, nlookup in inode_list:
            entry = self._at_points.get(inode)
            if entry is None:
                continue
            point, count = entry
            if count - nlookup <= 0:
                del self._at_points[inode]
                for name, i in list(self._at_by_name.items()):
                    if i == inode:
                        del self._at_by_name[name]
                        break
            else:
                self._at_points[inode] = (point, count - nlookup)

    # ------------------------------------------------------------------ directories
    @fuse_handler
    async def opendir(self, inode: int, ctx) -> int:
        if inode not in (ino.ROOT, ino.LEVELS_DIR, ino.CONCEPTS_DIR, ino.AT_DIR):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return inode

    def _dir_entries(self, inode: int) -> list[tuple[bytes, int]]:
        if inode == ino.ROOT:
            names = [(n, i) for n, i in ino.ROOT_FILES.items() if i != ino.DECODER or self.field.decoder_bytes is not None]
            return names + list(ino.ROOT_DIRS.items())
        if inode == ino.LEVELS_DIR:
            return [(f"{l:02d}".encode(), ino.level_inode(l)) for l in range(self.layout.n_levels)]
        if inode == ino.CONCEPTS_DIR:
            return [(name, ino.CONCEPT_BASE + cid) for cid, name, _ in self.meta.concept_list()]
        return []

    @fuse_handler
    async def readdir(self, fh: int, start_id: int, token) -> None:
        entries = self._dir_entries(fh)
        for index in range(start_id, len(entries)):
            name, inode = entries[index]
            if not pyfuse3.readdir_reply(token, name, self._getattr(inode), index + 1):
                break

    async def releasedir(self, fh: int) -> None:
        return None

    # ------------------------------------------------------------------ open / release
    def _new_handle(self, h: Handle) -> int:
        fh = self._next_fh
        self._next_fh += 1
        self.handles[fh] = h
        return fh

    @fuse_handler
    async def open(self, inode: int, flags: int, ctx) -> pyfuse3.FileInfo:
        self._getattr(inode)  # ENOENT for vanished concepts etc.
        accmode = flags & os.O_ACCMODE
        writable = accmode in (os.O_WRONLY, os.O_RDWR)
        if writable and self.read_only and inode not in (ino.QUERY, ino.HINTS):
            raise pyfuse3.FUSEError(errno.EROFS)
        if writable and inode in (ino.FIELD_JSON, ino.STATS, ino.METRICS) or (writable and ino.is_at(inode)):
            raise pyfuse3.FUSEError(errno.EACCES)
        if inode == ino.HINTS and accmode != os.O_WRONLY:
            raise pyfuse3.FUSEError(errno.EACCES)
        h = Handle(inode, writable)
        if inode == ino.PARAMS or ino.is_level(inode):
            self._opened_views.add(inode)
            return pyfuse3.FileInfo(fh=self._new_handle(h), keep_cache=True, direct_io=False)
        if inode == ino.FIELD_JSON:
            return pyfuse3.FileInfo(fh=self._new_handle(h), keep_cache=True)
        if inode == ino.STATS:
            h.snapshot = (json.dumps(self.stats(), indent=2) + "\n").encode()
        elif inode == ino.METRICS:
            h.snapshot = render_metrics(self.stats()).encode()
        elif ino.is_at(inode):
            point = self._at_points[inode][0]
            out = (await self.field.infer(point.reshape(1, -1)))[0]
            h.snapshot = (" ".join(f"{v:.9g}" for v in out.tolist()) + "\n").encode()
        elif inode == ino.DECODER:
            current = self.field.decoder_bytes or b""
            h.buffer = bytearray() if flags & os.O_TRUNC else bytearray(current)
            h.dirty = bool(flags & os.O_TRUNC)
        return pyfuse3.FileInfo(fh=self._new_handle(h), direct_io=True, keep_cache=False)

    @fuse_handler
    async def create(self, parent: int, name: bytes, mode: int, flags: int, ctx):
        if self.read_only:
            raise pyfuse3.FUSEError(errno.EROFS)
        if parent == ino.ROOT and name == b"decoder.npz":
            h = Handle(ino.DECODER, True, buffer=bytearray(), dirty=True)
            fh = self._new_handle(h)
            attr = self._attr(ino.DECODER, stat.S_IFREG | 0o644, 0, timeout=0)
            return pyfuse3.FileInfo(fh=fh, direct_io=True, keep_cache=False), attr
        if parent != ino.CONCEPTS_DIR:
            raise pyfuse3.FUSEError(errno.EACCES if parent == ino.ROOT else errno.EPERM)
        cid = self._create_concept(name)
        fh = self._new_handle(Handle(ino.CONCEPT_BASE + cid, True))
        return pyfuse3.FileInfo(fh=fh, direct_io=True, keep_cache=False), self._getattr(ino.CONCEPT_BASE + cid)

    @fuse_handler
    async def mknod(self, parent: int, name: bytes, mode: int, rdev: int, ctx):
        if self.read_only:
            raise pyfuse3.FUSEError(errno.EROFS)
        if parent != ino.CONCEPTS_DIR or not stat.S_ISREG(mode):
            raise pyfuse3.FUSEError(errno.EPERM)
        return self._getattr(ino.CONCEPT_BASE + self._create_concept(name))

    @fuse_handler
    async def mkdir(self, parent_inode, name, mode, ctx):
        raise pyfuse3.FUSEError(errno.EROFS if self.read_only else errno.EPERM)

    def _create_concept(self, name: bytes) -> int:
        if len(name) > NAME_MAX:
            raise pyfuse3.FUSEError(errno.ENAMETOOLONG)
        if not name or b"/" in name or b"\0" in name or name in (b".", b".."):
            raise pyfuse3.FUSEError(errno.EINVAL)
        existing = self.meta.concept_by_name(name)
        if existing is not None:
            return existing[0]
        cid = self.meta.concept_create(name)
        self.meta.commit()
        return cid

    @fuse_handler
    async def flush(self, fh: int) -> None:
        h = self.handles.get(fh)
        if h is not None and h.inode == ino.DECODER and h.dirty:
            await self._install_decoder(h)
        if h is not None and h.inode == ino.HINTS and h.hint_tail:
            tail, h.hint_tail = h.hint_tail, b""
            self._apply_hints(tail + b"\n")

    async def _install_decoder(self, h: Handle) -> None:
        data = bytes(h.buffer or b"")
        h.dirty = False
        try:
            await trio.to_thread.run_sync(self.field.install_decoder, data)
        except ValueError as exc:
            log.warning("rejected decoder.npz: %s", exc)
            raise pyfuse3.FUSEError(errno.EINVAL) from None

    async def release(self, fh: int) -> None:
        h = self.handles.pop(fh, None)
        if h is None:
            return
        if h.inode == ino.DECODER and h.dirty:
            try:
                await self._install_decoder(h)
            except pyfuse3.FUSEError:
                pass
            except Exception:
                log.exception("installing decoder on release")

    @fuse_handler
    async def fsync(self, fh: int, datasync: bool) -> None:
        if not self.read_only:
            await self.store.sync()

    # ------------------------------------------------------------------ read
    @fuse_handler
    async def read(self, fh: int, off: int, size: int) -> bytes:
        h = self.handles.get(fh)
        if h is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        inode = h.inode
        if inode == ino.PARAMS:
            return await self.store.read(off, size, zero_copy=True)
        if ino.is_level(inode):
            start, end = self.level_ranges[inode - ino.LEVEL_BASE]
            if off >= end - start:
                return b""
            return await self.store.read(start + off, min(size, end - start - off), zero_copy=True)
        if inode == ino.FIELD_JSON:
            return self.field_json[off:off + size]
        if h.snapshot is not None:
            return h.snapshot[off:off + size]
        if inode == ino.QUERY:
            return await self._query_read(h, off, size)
        if ino.is_concept(inode):
            point = self._concept_point(inode)
            enc = (await self.field.encode(point.reshape(1, -1)))[0]
            return enc.astype("<f4").tobytes()[off:off + size]
        if inode == ino.DECODER:
            return bytes((h.buffer or b"")[off:off + size])
        if inode == ino.HINTS:
            raise pyfuse3.FUSEError(errno.EBADF)
        raise pyfuse3.FUSEError(errno.EINVAL)

    # ------------------------------------------------------------------ write
    @fuse_handler
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        h = self.handles.get(fh)
        if h is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        inode = h.inode
        if self.read_only and inode not in (ino.QUERY, ino.HINTS):
            raise pyfuse3.FUSEError(errno.EROFS)
        if inode == ino.PARAMS:
            if off >= self.layout.params_bytes:
                raise pyfuse3.FUSEError(errno.EFBIG)
            buf = buf[: self.layout.params_bytes - off]
            await self.store.write(off, buf)
            await self._notify_aliases(off, buf, source=ino.PARAMS)
            return len(buf)
        if ino.is_level(inode):
            start, end = self.level_ranges[inode - ino.LEVEL_BASE]
            if off >= end - start:
                raise pyfuse3.FUSEError(errno.EFBIG)
            buf = buf[: end - start - off]
            await self.store.write(start + off, buf)
            await self._notify_aliases(start + off, buf, source=inode)
            return len(buf)
        if inode == ino.QUERY:
            return self._query_write(h, off, buf)
        if ino.is_concept(inode):
            changed = await self.field.write_at(self._concept_point(inode), off, bytes(buf))
            # the changed pages are current in every cached view before write() returns
            await self._refresh_pages(changed)
            return len(buf)
        if inode == ino.DECODER:
            assert h.buffer is not None
            if off > len(h.buffer):
                h.buffer.extend(bytes(off - len(h.buffer)))
            h.buffer[off:off + len(buf)] = buf
            h.dirty = True
            return len(buf)
        if inode == ino.HINTS:
            data = h.hint_tail + bytes(buf)
            lines, _, tail = data.rpartition(b"\n")
            h.hint_tail = tail
            if lines:
                self._apply_hints(lines + b"\n")
            return len(buf)
        raise pyfuse3.FUSEError(errno.EACCES)

    # ------------------------------------------------------------------ kernel cache coherence
    def _alias_targets(self, offset: int, length: int, source: int) -> list[tuple[int, int, int, int]]:
        """(inode, file offset, slice start, slice end) of every other view of params bytes."""
        out = []
        end = offset + length
        if source != ino.PARAMS and ino.PARAMS in self._opened_views:
            out.append((ino.PARAMS, offset, 0, length))
        for level, (lo, hi) in enumerate(self.level_ranges):
            inode = ino.level_inode(level)
            if inode == source or inode not in self._opened_views or hi <= offset or lo >= end:
                continue
            a, b = max(lo, offset), min(hi, end)
            out.append((inode, a - lo, a - offset, b - offset))
        return out

    async def _notify_aliases(self, offset: int, data: bytes | memoryview, source: int) -> None:
        targets = self._alias_targets(offset, len(data), source)
        if not targets:
            return
        view = memoryview(data)

        def push() -> None:
            for inode, file_off, a, b in targets:
                try:
                    pyfuse3.notify_store(inode, file_off, view[a:b])
                except OSError as exc:
                    if exc.errno != errno.ENOENT:
                        log.debug("notify_store(%d): %s", inode, exc)

        await trio.to_thread.run_sync(push)

    async def push_page(self, page: int, data: bytes) -> None:
        """Put a page's current bytes into the kernel page cache of params and every level view.

        The prefetcher's last step: the next read of these bytes never reaches the daemon.
        """
        lo, hi = self.layout.page_byte_range(page)
        await self._notify_aliases(lo, memoryview(data)[: hi - lo], source=-1)

    async def _refresh_pages(self, pages: list[int]) -> None:
        """Pages changed behind the kernel's back (concept writes): push their new bytes."""
        for page in pages:
            lo, hi = self.layout.page_byte_range(page)
            await self._notify_aliases(lo, await self.store.read(lo, hi - lo), source=-1)

    # ------------------------------------------------------------------ query
    def _query_write(self, h: Handle, off: int, buf: bytes) -> int:
        if off == 0 or h.answer is not None:
            # a write after an answer, or at offset 0, starts a new request
            h.request = bytearray()
            h.answer = None
            h.request_error = None
        limit = self.max_batch * self.layout.dims * 4
        if off + len(buf) > limit:
            h.request_error = errno.EINVAL
            h.request = bytearray()
            return len(buf)
        if h.request_error is None:
            if off > len(h.request):
                h.request.extend(bytes(off - len(h.request)))
            h.request[off:off + len(buf)] = buf
        return len(buf)

    async def _query_read(self, h: Handle, off: int, size: int) -> bytes:
        if h.answer is None:
            error = h.request_error
            request = bytes(h.request)
            h.request = bytearray()
            row = self.layout.dims * 4
            if error is None and len(request) % row:
                error = errno.EINVAL
            points = None
            if error is None:
                points = np.frombuffer(request, dtype="<f4").reshape(-1, self.layout.dims)
                if points.shape[0] > self.max_batch or not np.all(np.isfinite(points)):
                    error = errno.EINVAL
            if error is not None:
                h.request_error = None
                h.answer = None
                raise pyfuse3.FUSEError(error)
            out = await self.field.infer(points)
            h.answer = np.ascontiguousarray(out, dtype="<f4").tobytes()
        return h.answer[off:off + size]

    # ------------------------------------------------------------------ concepts
    def _concept_point(self, inode: int) -> np.ndarray:
        found = self.meta.concept_by_id(inode - ino.CONCEPT_BASE)
        if found is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        name, point_text = found
        if point_text:
            return hashgrid.parse_point(point_text, self.layout.dims)
        return hashgrid.point_from_name(name, self.layout.dims)

    @fuse_handler
    async def unlink(self, parent: int, name: bytes, ctx) -> None:
        if self.read_only:
            raise pyfuse3.FUSEError(errno.EROFS)
        if parent == ino.ROOT and name == b"decoder.npz":
            if self.field.decoder_bytes is None:
                raise pyfuse3.FUSEError(errno.ENOENT)
            await trio.to_thread.run_sync(self.field.remove_decoder)
            return
        if parent != ino.CONCEPTS_DIR:
            raise pyfuse3.FUSEError(errno.EPERM if parent in (ino.ROOT, ino.LEVELS_DIR) else errno.ENOENT)
        found = self.meta.concept_by_name(name)
        if found is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        self.meta.concept_delete(found[0])
        self.meta.commit()

    @fuse_handler
    async def rmdir(self, parent, name, ctx) -> None:
        raise pyfuse3.FUSEError(errno.EROFS if self.read_only else errno.EPERM)

    @fuse_handler
    async def rename(self, parent_old, name_old, parent_new, name_new, flags, ctx) -> None:
        if self.read_only:
            raise pyfuse3.FUSEError(errno.EROFS)
        if parent_old != ino.CONCEPTS_DIR or parent_new != ino.CONCEPTS_DIR:
            raise pyfuse3.FUSEError(errno.EXDEV if ino.CONCEPTS_DIR in (parent_old, parent_new) else errno.EPERM)
        if flags & pyfuse3.RENAME_EXCHANGE:
            raise pyfuse3.FUSEError(errno.EINVAL)
        if len(name_new) > NAME_MAX:
            raise pyfuse3.FUSEError(errno.ENAMETOOLONG)
        if not name_new or b"/" in name_new or b"\0" in name_new:
            raise pyfuse3.FUSEError(errno.EINVAL)
        src = self.meta.concept_by_name(name_old)
        if src is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        dst = self.meta.concept_by_name(name_new)
        if dst is not None and flags & pyfuse3.RENAME_NOREPLACE:
            raise pyfuse3.FUSEError(errno.EEXIST)
        if dst is not None and dst[0] == src[0]:
            return
        # A concept's point follows its name unless pinned: renaming a name-derived concept
        # keeps its point (and so its content) by pinning the old point.
        if src[1] is None:
            old_point = hashgrid.point_from_name(name_old, self.layout.dims)
            self.meta.concept_set_point(src[0], " ".join(f"{v:.9g}" for v in old_point.tolist()))
        self.meta.concept_rename(src[0], name_new)
        self.meta.commit()

    # ------------------------------------------------------------------ xattrs
    @fuse_handler
    async def getxattr(self, inode: int, name: bytes, ctx) -> bytes:
        if not ino.is_concept(inode) or name != POINT_XATTR:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        found = self.meta.concept_by_id(inode - ino.CONCEPT_BASE)
        if found is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        if found[1]:
            return found[1].encode()
        point = hashgrid.point_from_name(found[0], self.layout.dims)
        return " ".join(f"{v:.9g}" for v in point.tolist()).encode()

    @fuse_handler
    async def listxattr(self, inode: int, ctx) -> list[bytes]:
        return [POINT_XATTR] if ino.is_concept(inode) else []

    @fuse_handler
    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx) -> None:
        if self.read_only:
            raise pyfuse3.FUSEError(errno.EROFS)
        if not ino.is_concept(inode):
            raise pyfuse3.FUSEError(errno.ENOTSUP)
        if name != POINT_XATTR:
            raise pyfuse3.FUSEError(errno.ENOTSUP)
        try:
            point = hashgrid.parse_point(value.decode("ascii").strip().strip("\0"), self.layout.dims)
        except (UnicodeDecodeError, ValueError):
            raise pyfuse3.FUSEError(errno.EINVAL) from None
        self.meta.concept_set_point(inode - ino.CONCEPT_BASE, " ".join(f"{v:.9g}" for v in point.tolist()))
        self.meta.commit()

    @fuse_handler
    async def removexattr(self, inode: int, name: bytes, ctx) -> None:
        if not ino.is_concept(inode) or name != POINT_XATTR:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        self.meta.concept_set_point(inode - ino.CONCEPT_BASE, None)
        self.meta.commit()

    # ------------------------------------------------------------------ hints, stats, statfs
    def _apply_hints(self, data: bytes) -> None:
        pages: list[int] = []
        bad = 0
        for raw in data.decode("utf-8", "replace").splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            try:
                pages.extend(self._hint_pages(line))
            except (ValueError, IndexError):
                bad += 1
        if bad:
            log.info("ignored %d malformed hint line(s)", bad)
            raise pyfuse3.FUSEError(errno.EINVAL)
        if pages and self.hint_sink is not None:
            self.hint_sink(pages)

    def _hint_pages(self, line: str) -> list[int]:
        word, _, rest = line.partition(" ")
        ps = self.layout.page_size
        if word == "page":
            page = int(rest)
            if not 0 <= page < self.layout.n_pages:
                raise ValueError("page out of range")
            return [page]
        if word == "range":
            off_s, len_s = rest.split()
            off, length = int(off_s), int(len_s)
            if off < 0 or length <= 0 or off >= self.layout.params_bytes:
                raise ValueError("range out of params")
            end = min(off + length, self.layout.params_bytes)
            first, last = off // ps, (end - 1) // ps
            return list(range(first, min(last, first + 4096) + 1))
        if word == "point":
            point = hashgrid.parse_point(rest, self.layout.dims)
            return self._pages_of_points(point.reshape(1, -1))
        if word == "concept":
            found = self.meta.concept_by_name(rest.encode())
            if found is None:
                raise ValueError("no such concept")
            return self._pages_of_points(self._concept_point(ino.CONCEPT_BASE + found[0]).reshape(1, -1))
        raise ValueError(f"unknown hint {word!r}")

    def _pages_of_points(self, points: np.ndarray) -> list[int]:
        entries, _ = hashgrid.corner_entries(self.layout, points)
        return hashgrid.touched_pages(self.layout, entries).tolist()

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "pid": os.getpid(),
            "field_dir": self.field.field_dir,
            "params_bytes": self.layout.params_bytes,
            "page_size": self.layout.page_size,
            "open_handles": len(self.handles),
            "decoder": None if self.field.decoder is None else {"out_width": self.field.decoder.out_width},
            "concepts": len(self.meta.concept_list()),
            "store": self.store.stats(),
        }
        if self.stats_extra is not None:
            out.update(self.stats_extra())
        return out

    @fuse_handler
    async def statfs(self, ctx) -> pyfuse3.StatvfsData:
        s = pyfuse3.StatvfsData()
        bsize = self.layout.page_size
        s.f_bsize = bsize
        s.f_frsize = bsize
        s.f_blocks = -(-self.layout.params_bytes // bsize)
        free = self.store.free_bytes()
        s.f_bfree = s.f_bavail = min(s.f_blocks, free // bsize)
        s.f_files = 16 + self.layout.n_levels + len(self.meta.concept_list())
        s.f_ffree = s.f_favail = 1 << 20
        s.f_namemax = NAME_MAX
        return s
