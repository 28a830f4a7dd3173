"""Consistency check of a field directory: metadata against page files and checksums (SPEC 7)."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import xxhash

from .meta import MetaDB
from .tier import Tier, unlink_quietly, write_file_durably

log = logging.getLogger(__name__)


@dataclass
class FsckReport:
    pages_checked: int = 0
    problems: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    unrepaired: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        """True when nothing was wrong, or when --repair fixed everything without losing data."""
        return not self.unrepaired and (not self.problems or bool(self.repaired))


def _page_files(tier: Tier) -> dict[str, str]:
    """name -> full path of every file in the tier's fan-out directories."""
    out: dict[str, str] = {}
    try:
        subdirs = os.listdir(tier.root)
    except FileNotFoundError:
        return out
    for sub in subdirs:
        path = os.path.join(tier.root, sub)
        if not os.path.isdir(path):
            out[sub] = path
            continue
        for name in os.listdir(path):
            out[os.path.join(sub, name)] = os.path.join(path, name)
    return out


def _sum(path: str) -> int | None:
    try:
        with open(path, "rb") as f:
            return xxhash.xxh3_64_intdigest(f.read())
    except OSError:
        return None


def fsck(meta: MetaDB, tiers: list[Tier], page_size: int, repair: bool = False) -> FsckReport:
    report = FsckReport()
    by_id = {t.id: t for t in tiers}
    files = {t.id: _page_files(t) for t in tiers}
    referenced: dict[int, set[str]] = {t.id: set() for t in tiers}

    def rel(t: Tier, path: str) -> str:
        return os.path.relpath(path, t.root)

    def problem(msg: str) -> None:
        report.problems.append(msg)

    for row in list(meta.iter_pages()):
        report.pages_checked += 1
        home = by_id.get(row.home)
        mem = by_id.get(row.mem) if row.mem is not None else None
        mem_ok = False
        if row.mem is not None:
            if mem is None or rel(mem, mem.mem_path(row.page)) not in files[mem.id]:
                if mem is not None and not mem.volatile:
                    problem(f"page {row.page}: memory copy missing in tier {mem.name}")
                # a volatile copy that vanished (reboot, wiped tmpfs) is expected; fixed up below
                mem_ok = False
            else:
                referenced[mem.id].add(rel(mem, mem.mem_path(row.page)))
                size = os.path.getsize(mem.mem_path(row.page))
                mem_ok = size == page_size
                if not mem_ok:
                    problem(f"page {row.page}: memory copy in {mem.name} has {size} bytes")
        home_ok = False
        if home is None:
            problem(f"page {row.page}: home tier id {row.home} is not configured")
        elif row.home_sum is not None:
            path = home.home_path(row.page, row.home_sum)
            referenced[home.id].add(rel(home, path))
            if rel(home, path) not in files[home.id]:
                problem(f"page {row.page}: home copy {path} missing")
            elif _sum(path) != row.home_sum:
                problem(f"page {row.page}: home copy {path} fails its checksum")
            else:
                home_ok = True
        if row.home_sum is None and not mem_ok:
            problem(f"page {row.page}: never written back and its memory copy is gone (unsynced data lost)")
        if home_ok or (row.home_sum is None and mem_ok):
            if row.mem is not None and not mem_ok:
                # stale pointer to a vanished volatile copy: drop it, the home is complete
                if repair:
                    row.mem, row.dirty = None, False
                    meta.put_page(row)
            continue
        # the page has a problem: try to repair from a complete memory copy
        if not repair:
            report.unrepaired.append(f"page {row.page}")
            continue
        if mem_ok and home is not None:
            data = open(mem.mem_path(row.page), "rb").read()  # type: ignore[union-attr]
            digest = xxhash.xxh3_64_intdigest(data)
            if row.home_sum is None or digest == row.home_sum or row.dirty:
                path = home.home_path(row.page, digest)
                write_file_durably(path, data)
                referenced[home.id].add(rel(home, path))
                row.home_sum, row.dirty = digest, False
                meta.put_page(row)
                report.repaired.append(f"page {row.page}: home rewritten from the memory copy")
                continue
        meta.delete_page(row.page)
        if home is not None and row.home_sum is not None:
            bad = home.home_path(row.page, row.home_sum)
            referenced[home.id].discard(rel(home, bad))
            unlink_quietly(bad)
        if mem is not None:
            referenced[mem.id].discard(rel(mem, mem.mem_path(row.page)))
            unlink_quietly(mem.mem_path(row.page))
        report.unrepaired.append(f"page {row.page}: no intact copy; reset to the implicit init (data lost)")

    for t in tiers:
        for name, path in files[t.id].items():
            if name in referenced[t.id]:
                continue
            problem(f"orphan file {path}")
            if repair:
                unlink_quietly(path)
                report.repaired.append(f"removed orphan {path}")
            else:
                report.unrepaired.append(path)
    if repair:
        meta.sync()
    return report
