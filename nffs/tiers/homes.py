"""A durable tier's page homes: slots in a few large slab files, written copy-on-write.

Why slabs (docs/design.md has the measured comparison): a petabyte field cannot have a
file per page, and a page home must be replaced atomically. A new version of a page is
written to a *free* slot, the slab is fsynced, and only then does the page table commit
the new (tier, slot, checksum); the old slot becomes free after that commit. A crash at
any point leaves the committed slot intact, and slots written but never committed are
simply free again at the next mount (free = not referenced by the page table), so a
crash leaves nothing behind to clean up.

Allocation runs on the trio thread; reads, writes and fsyncs run in worker threads.
A slot freed while a home read that started earlier may still be reading it waits in
limbo until that read has finished (read epochs), so a read never sees a reused slot.
"""
from __future__ import annotations

import logging
import os
import threading
import errno
import heapq
import time
from collections import Counter, deque

import numpy as np
import xxhash

from ..arrays import consecutive_runs, sorted_unique
from ..errors import PageIOError
from .arena import chunk_runs as mask_runs
from .tierroot import TierRoot

log = logging.getLogger(__name__)

#: buffers one pwritev may take (Linux: 1024); more is EINVAL
IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024


def chunk_size(page_size: int) -> int:
    """Bytes per chunk: the unit of checksums in memory and of what a home stores.

    At most 64 chunks per page, so a page's chunk mask is one 64-bit integer; a fixed
    function of the page size, because homes record masks in these units.
    """
    return min(page_size, max(4096, page_size // 64))


def stored_checksum(data: bytes | memoryview, mask: int, chunk: int, n_chunks: int) -> int:
    """xxh3 of the stored chunks of a page, in order (of the whole page when all are stored)."""
    if mask == (1 << n_chunks) - 1:
        return xxhash.xxh3_64_intdigest(data)
    h = xxhash.xxh3_64()
    view = memoryview(data)
    for a, b in mask_runs(mask, n_chunks):
        h.update(view[a * chunk:b * chunk])
    return h.intdigest()


def slab_name(index: int) -> str:
    return f"slab-{index:06d}"


def parse_slab_name(name: str) -> int | None:
    if name.startswith("slab-") and len(name) == 11 and name[5:].isdigit():
        return int(name[5:])
    return None


class SlabHomes:
    def __init__(self, root: TierRoot, page_size: int, slots_per_slab: int) -> None:
        self.root = root
        self.page_size = page_size
        self.slots_per_slab = slots_per_slab
        self._fds: dict[int, int] = {}  # read-only, kept
        self._wfds: dict[int, int] = {}  # writable, for the write-back in progress
        self._dfds: dict[int, int] = {}  # writable with O_DIRECT, likewise (big runs)
        #: False once the tier's file system refused O_DIRECT: big runs are written through
        #: the page cache like the rest
        self.direct_ok = hasattr(os, "O_DIRECT")
        self._fd_lock = threading.Lock()
        self._free: list[int] = []  # a min-heap: the lowest free slot is handed out first
        self._fresh = 0
        self._limbo: deque[tuple[int, float, int]] = deque()  # (epoch at release, time, slot), oldest first
        #: seconds a freed slot stays out of use while readers on other machines may still
        #: read the generation that named it (set by the store when reader leases are fresh)
        self.retain_s = 0.0
        self._epoch = 0
        self._readers: Counter[int] = Counter()
        self.committed = 0  # slots referenced by the page table

    # -- allocation (trio thread) -----------------------------------------------------------
    def load_used(self, used: np.ndarray) -> None:
        """Free slots are those the page table does not reference (after any crash too)."""
        used = sorted_unique(used.astype(np.int64))
        self.committed = int(used.size)
        self._fresh = int(used[-1]) + 1 if used.size else 0
        holes = np.setdiff1d(np.arange(self._fresh, dtype=np.int64), used, assume_unique=True)
        self._free = holes.tolist()  # sorted ascending: already a heap

    def alloc(self) -> int:
        if self._limbo:
            self._release_limbo()
        if self._free:
            return heapq.heappop(self._free)
        slot = self._fresh
        self._fresh += 1
        return slot

    def unalloc(self, slot: int) -> None:
        """A slot allocated for a write that was never committed: free at once."""
        heapq.heappush(self._free, slot)

    def retire(self, slot: int) -> None:
        """A slot the page table no longer references (after a durable commit)."""
        self._limbo.append((self._epoch, time.monotonic(), slot))
        self._epoch += 1
        self._release_limbo()

    def begin_read(self) -> int:
        e = self._epoch
        self._readers[e] += 1
        return e

    def end_read(self, epoch: int) -> None:
        self._readers[epoch] -= 1
        if self._readers[epoch] <= 0:
            del self._readers[epoch]
        self._release_limbo()

    def _release_limbo(self) -> None:
        if not self._limbo:
            return
        oldest = min(self._readers) if self._readers else self._epoch + 1
        deadline = time.monotonic() - self.retain_s
        while self._limbo and self._limbo[0][0] < oldest and self._limbo[0][1] <= deadline:
            heapq.heappush(self._free, self._limbo.popleft()[2])

    @property
    def allocated_slots(self) -> int:
        return self._fresh - len(self._free) - len(self._limbo)

    # -- I/O (worker threads) -----------------------------------------------------------------
    def _fd(self, slab: int, create: bool, direct: bool = False) -> tuple[int, bool]:
        """A descriptor of a slab: read-only ones are kept open; writable ones live for one
        write-back (`sync` closes them), so a tier that is remounted read-only or unmounted
        between write-backs finds no file of ours open for writing. `direct`: a writable
        one with O_DIRECT (OSError EINVAL where the file system has none)."""
        fds = self._dfds if direct else self._wfds if create else self._fds
        with self._fd_lock:
            fd = fds.get(slab)
            if fd is not None:
                return fd, False
            flags = (os.O_WRONLY | os.O_CREAT) if create else os.O_RDONLY
            if direct:
                flags |= os.O_DIRECT
            existed = True
            if create:
                try:
                    self.root.lstat(slab_name(slab))
                except FileNotFoundError:
                    existed = False
            try:
                fd = self.root.open_file(slab_name(slab), flags)
            except FileNotFoundError:
                raise PageIOError(f"{self.root.path}: {slab_name(slab)} is missing") from None
            # Slots are read whole and one at a time, and what we read lands in a memory tier:
            # no read-ahead, and no second copy in the kernel's page cache (which would also
            # answer for a tier that is in fact unreachable).
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
            if not create:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            fds[slab] = fd
            return fd, not existed

    def read(self, slot: int) -> bytes:
        return self._read_run(slot, 1)

    def _read_run(self, first: int, count: int, *, drop: bool = True) -> bytes:
        """`count` consecutive slots of one slab, in one pread (and out of the kernel's page
        cache after it, unless the caller drops a whole span at the end: `drop`)."""
        slab, index = divmod(first, self.slots_per_slab)
        length = count * self.page_size
        fd, _ = self._fd(slab, create=False)
        try:
            data = os.pread(fd, length, index * self.page_size)
        except OSError as exc:
            # some network file systems keep failing a handle once it saw an error: the next
            # read opens the slab afresh
            if exc.errno == errno.EIO:
                self._forget(slab, fd)
            raise
        if drop:
            os.posix_fadvise(fd, index * self.page_size, length, os.POSIX_FADV_DONTNEED)
        if len(data) != length:
            # chunks a home does not store may lie past the end of the slab file; whatever
            # is missing there is checked by the page's checksum, not by the length
            data += bytes(length - len(data))
        return data

    def read_many(self, slots: list[int], max_bytes: int = 1 << 20) -> dict[int, bytes | OSError]:
        """Several slots, runs of consecutive slots of one slab in one pread of up to
        `max_bytes` (a cold multi-page read); per slot its page or the error of its run."""
        out: dict[int, bytes | OSError] = {}
        ordered = sorted(set(slots))
        per_run = max(1, max_bytes // self.page_size)
        spans: dict[int, tuple[int, int]] = {}  # per slab, the slots read: dropped from the cache at the end
        try:
            for i, j in consecutive_runs(ordered, per_run, self.slots_per_slab):
                run = ordered[i:j]
                try:
                    # one system call a run: every call gives the GIL back and waits to take it again,
                    # which under a camera's load cost more than the read itself
                    data = self._read_run(run[0], len(run), drop=False)
                    slab = run[0] // self.slots_per_slab
                    lo, hi = spans.get(slab, (run[0], run[-1]))
                    spans[slab] = (min(lo, run[0]), max(hi, run[-1]))
                except OSError as exc:
                    for slot in run:
                        out[slot] = exc
                    continue
                if len(run) == 1:
                    out[run[0]] = data
                    continue
                view = memoryview(data)
                for k, slot in enumerate(run):
                    out[slot] = bytes(view[k * self.page_size:(k + 1) * self.page_size])
        finally:  # also when a run fails (a slab missing): nothing read stays cached
            for slab, (lo, hi) in spans.items():
                fd = self._fds.get(slab)
                if fd is not None:
                    base = (lo % self.slots_per_slab) * self.page_size
                    try:
                        os.posix_fadvise(fd, base, (hi - lo + 1) * self.page_size, os.POSIX_FADV_DONTNEED)
                    except OSError:  # advice only: a handle closed meanwhile (an I/O error) keeps nothing cached
                        pass
        return out

    def write_partial(self, slot: int, page: bytes | memoryview, mask: int, chunk: int, n_chunks: int) -> int:
        """Write only the stored chunks (`mask`) of a page, given whole, into its slot;
        returns the slab touched."""
        slab, index = divmod(slot, self.slots_per_slab)
        fd, created = self._fd(slab, create=True)
        if created:
            self.root.fsync()
        view = memoryview(page)
        base = index * self.page_size
        for a, b in mask_runs(mask, n_chunks):
            length = (b - a) * chunk
            n = os.pwrite(fd, view[a * chunk:b * chunk], base + a * chunk)
            if n != length:
                raise OSError(28, f"short write to {slab_name(slab)}")
        return slab

    def write_many(self, items: list[tuple[int, bytes | memoryview]], coalesce_bytes: int, direct_bytes: int = 0) -> set[int]:
        """Write (slot, page) pairs, consecutive slots in one pwritev; returns the slabs touched.

        Runs of at least `direct_bytes` (0: none) go with O_DIRECT, straight from the
        buffers to the device, when the pages are page-aligned memory (views of a memory
        tier's mapping): no copy into the page cache, nothing to drop from it after the
        fsync, and the worker waits for the disk instead of using the CPU the FUSE
        requests need (a 256 MiB copy into params ~10 % faster). Smaller runs (a 4 KiB
        write's page) go through the page cache, where one fsync makes many of them
        durable at once instead of each waiting for the device.
        """
        touched: set[int] = set()
        items = sorted(items)
        # a run stops before it reaches `coalesce_bytes` or IOV_MAX buffers (one page at least)
        max_len = max(1, min(-(-coalesce_bytes // self.page_size), IOV_MAX))
        for i, j in consecutive_runs([slot for slot, _ in items], max_len, self.slots_per_slab):
            slab, index = divmod(items[i][0], self.slots_per_slab)
            bufs = [page for _, page in items[i:j]]
            expected = len(bufs) * self.page_size
            written = self._write_run(slab, bufs, index * self.page_size, direct_bytes and expected >= direct_bytes)
            if written != expected:
                raise OSError(28, f"short write to {slab_name(slab)} ({written} of {expected} bytes)")
            touched.add(slab)
        return touched

    def _write_run(self, slab: int, bufs: list, offset: int, direct: bool) -> int:
        created_by_direct = False
        if direct and self.direct_ok:
            try:
                fd, created = self._fd(slab, create=True, direct=True)
            except OSError as exc:
                if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
                    raise
                # Linux creates the file before it refuses O_DIRECT: its directory entry is
                # made durable below, although the file exists by then
                created_by_direct = True
                self._refuse_direct(exc)
            else:
                if created:
                    self.root.fsync()  # the slab's directory entry must be durable before the commit
                try:
                    return os.pwritev(fd, bufs, offset)
                except OSError as exc:
                    if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
                        raise
                    self._refuse_direct(exc)
        fd, created = self._fd(slab, create=True)
        if created or created_by_direct:
            self.root.fsync()
        return os.pwritev(fd, bufs, offset)

    def _refuse_direct(self, exc: OSError) -> None:
        """No O_DIRECT here (or not for this alignment): the page cache from now on."""
        log.info("%s: O_DIRECT writes refused (%s); writing through the page cache", self.root.path, exc)
        self.direct_ok = False

    def sync(self, slabs: set[int]) -> None:
        """Make the written slots durable, then let go of the writable descriptors."""
        try:
            for slab in slabs:
                fd = self._wfds.get(slab)
                if fd is None:
                    os.fdatasync(self._dfds[slab])  # written with O_DIRECT only: no cached copy to drop
                    continue
                os.fdatasync(fd)  # the whole file, O_DIRECT writes included
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # the copies are in a memory tier
        finally:
            self.close_writers()

    def close_writers(self) -> None:
        with self._fd_lock:
            for fd in [*self._wfds.values(), *self._dfds.values()]:
                try:
                    os.close(fd)
                except OSError:
                    pass
            self._wfds.clear()
            self._dfds.clear()

    def _forget(self, slab: int, fd: int) -> None:
        with self._fd_lock:
            if self._fds.get(slab) == fd:
                del self._fds[slab]
                try:
                    os.close(fd)
                except OSError:
                    pass

    def forget_all(self) -> None:
        """After a failed write-back: the next one opens every slab afresh."""
        self.close()

    def close(self) -> None:
        self.close_writers()
        with self._fd_lock:
            for fd in self._fds.values():
                try:
                    os.close(fd)
                except OSError:
                    pass
            self._fds.clear()
