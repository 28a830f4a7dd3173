"""One tier directory at run time: where page files live, capacity, counters.

Memory tiers (dram, cxl) are RAM-backed directories (tmpfs); their page files are
read and written directly on the trio thread, which costs a memory copy and never
waits on a device.  Durable tiers are only touched from worker threads.
"""
from __future__ import annotations

import logging
import os
from collections import OrderedDict
from dataclasses import dataclass, field

from .spec import TierSpec

log = logging.getLogger(__name__)

#: consecutive pages share a directory: 4096 files per directory keeps lookups fast on any
#: POSIX file system, and a small field uses a single directory (no 4 KiB blocks per empty dir).
PAGES_PER_DIR_SHIFT = 12


@dataclass
class TierCounters:
    reads: int = 0
    writes: int = 0
    promotions: int = 0
    demotions: int = 0
    checksum_failures: int = 0
    io_errors: int = 0


class Tier:
    def __init__(self, spec: TierSpec, tier_id: int, page_size: int) -> None:
        self.spec = spec
        self.id = tier_id
        self.name = spec.name
        self.root = spec.path
        self.volatile = spec.volatile
        self.latency = spec.latency
        self.page_size = page_size
        self.counters = TierCounters()
        self.pages = 0  # page files counted against capacity
        self.dirty = 0
        self.capacity: int | None = None
        self._fds: OrderedDict[int, int] = OrderedDict()
        self.mounted_tmpfs = False  # we mounted a NUMA-bound tmpfs on root (unmounted on close)
        self.mbind_node: int | None = None
        self._fd_limit = fd_cache_size()

    def open(self) -> None:
        """Create the directory layout and resolve the capacity (a percentage needs the path)."""
        os.makedirs(self.root, exist_ok=True)
        if self.spec.kind == "cxl" and self.spec.numa is not None:
            self._bind_to_node(self.spec.numa)
        self.capacity = self.spec.capacity_bytes()

    def _bind_to_node(self, node: int) -> None:
        """Pages of a cxl tier live on its NUMA node: a bound tmpfs if we can mount one, else mbind."""
        from . import numa

        if not numa.node_exists(node):
            raise OSError(2, f"NUMA node {node} does not exist (see `nffs stat --hardware`)")
        if numa.bound_tmpfs(self.root, node):
            return
        size = None
        if self.spec.capacity is not None and not self.spec.capacity.endswith("%"):
            size = self.spec.capacity_bytes()
        info = numa.mount_info(self.root)
        already_tmpfs_here = info is not None and info[0] == os.path.realpath(self.root) and info[1] == "tmpfs"
        if not already_tmpfs_here and numa.mount_bound_tmpfs(self.root, node, size):
            self.mounted_tmpfs = True
            log.info("tier %s: mounted a tmpfs bound to NUMA node %d on %s", self.name, node, self.root)
            return
        self.mbind_node = node
        log.info("tier %s: binding page files to NUMA node %d with mbind", self.name, node)

    @property
    def used_bytes(self) -> int:
        return self.pages * self.page_size

    def capacity_pages(self) -> int | None:
        return None if self.capacity is None else max(1, self.capacity // self.page_size)

    def has_room(self, extra_pages: int = 1) -> bool:
        cap = self.capacity_pages()
        return cap is None or self.pages + extra_pages <= cap

    def fill(self) -> float:
        cap = self.capacity_pages()
        return 0.0 if cap is None else self.pages / cap

    # -- file names -------------------------------------------------------------------
    def _dir(self, page: int) -> str:
        return os.path.join(self.root, f"{page >> PAGES_PER_DIR_SHIFT:x}")

    def mem_path(self, page: int) -> str:
        return os.path.join(self._dir(page), f"{page:x}")

    def home_path(self, page: int, checksum: int) -> str:
        """Home files carry their checksum in the name: recording a new checksum is an atomic switch."""
        return os.path.join(self._dir(page), f"{page:x}-{checksum:016x}")

    def page_dir(self, page: int) -> str:
        return self._dir(page)

    # -- memory-tier I/O (trio thread) ---------------------------------------------------
    def _fd(self, page: int, create: bool = False) -> int:
        fd = self._fds.get(page)
        if fd is not None:
            self._fds.move_to_end(page)
            return fd
        flags = os.O_RDWR | (os.O_CREAT if create else 0)
        try:
            fd = os.open(self.mem_path(page), flags, 0o600)
        except FileNotFoundError:
            if not create:
                raise
            os.makedirs(self._dir(page), exist_ok=True)
            fd = os.open(self.mem_path(page), flags, 0o600)
        self._fds[page] = fd
        if len(self._fds) > self._fd_limit:
            _, old = self._fds.popitem(last=False)
            os.close(old)
        return fd

    def mem_read(self, page: int, offset: int, length: int) -> bytes:
        self.counters.reads += 1
        return os.pread(self._fd(page), length, offset)

    def mem_read_into(self, page: int, offset: int, out: memoryview) -> None:
        self.counters.reads += 1
        n = os.preadv(self._fd(page), [out], offset)
        if n < len(out):
            raise OSError(5, f"short page file for page {page} in tier {self.name}")

    def mem_write(self, page: int, offset: int, data: bytes | memoryview) -> None:
        self.counters.writes += 1
        fd = self._fd(page, create=True)
        written = os.pwrite(fd, data, offset)
        if written != len(data):
            raise OSError(28, "short write to memory tier")

    def mem_create(self, page: int, data: bytes | memoryview) -> None:
        fd = self._fd(page, create=True)
        os.ftruncate(fd, 0)
        if self.mbind_node is not None:
            from .numa import mbind_file

            os.ftruncate(fd, len(data))
            if not mbind_file(fd, len(data), self.mbind_node):
                log.debug("mbind failed for page %d on tier %s", page, self.name)
        self.mem_write(page, 0, data)

    def mem_delete(self, page: int) -> None:
        fd = self._fds.pop(page, None)
        if fd is not None:
            os.close(fd)
        try:
            os.unlink(self.mem_path(page))
        except FileNotFoundError:
            pass

    def mem_exists(self, page: int) -> bool:
        return os.path.exists(self.mem_path(page))

    def close(self) -> None:
        for fd in self._fds.values():
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds.clear()

    def release_mount(self) -> None:
        """Unmount the NUMA-bound tmpfs we mounted, once it holds no pages."""
        if self.mounted_tmpfs and not any(files for _, _, files in os.walk(self.root)):
            from .numa import unmount

            unmount(self.root)
            self.mounted_tmpfs = False

    def describe(self) -> dict:
        c = self.counters
        return {
            "name": self.name,
            "path": self.root,
            "kind": self.spec.kind,
            "volatile": self.volatile,
            "capacity": self.capacity,
            "used_bytes": self.used_bytes,
            "pages": self.pages,
            "dirty_pages": self.dirty,
            "numa": self.spec.numa,
            "numa_binding": "tmpfs" if self.mounted_tmpfs else ("mbind" if self.mbind_node is not None else None),
            "latency_s": self.latency,
            "reads": c.reads,
            "writes": c.writes,
            "promotions": c.promotions,
            "demotions": c.demotions,
            "checksum_failures": c.checksum_failures,
            "io_errors": c.io_errors,
        }


def fd_cache_size() -> int:
    """Open page files kept per memory tier: half the (raised) descriptor limit, at most 64 Ki.

    Re-opening a page file for every read costs more than the read itself.
    """
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = 1 << 20 if hard == resource.RLIM_INFINITY else hard
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return max(64, min(1 << 16, soft // 4))


# -- durable-tier I/O (worker threads only) --------------------------------------------

def write_file_durably(path: str, data: bytes | memoryview) -> bool:
    """Write via a temporary name, fsync, rename: the name only ever points at a complete file.

    Returns True when the page directory had to be created (its parent then needs an fsync too).
    """
    tmp = f"{path}.tmp{os.getpid()}"
    created = False
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    except FileNotFoundError:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        created = True
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)
    return created


def read_whole_file(path: str) -> bytes:
    with open(path, "rb", buffering=0) as f:
        return f.read()


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
