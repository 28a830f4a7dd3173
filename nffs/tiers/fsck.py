"""Consistency check of an unmounted field (SPEC 7): every home against its checksum.

What can be wrong after the crash protocol of docs/design.md: nothing, unless the
storage itself lost or changed bytes. fsck reads every committed home, checks its
xxh3, checks that no two pages share a slot, and reports files in a tier directory
that nffs did not write. `--repair` resets pages without an intact copy to the
implicit init (the data is reported lost) and removes foreign regular files.
Free slab space is not a leftover: it is reused by the next write-back.
"""
from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass, field
from typing import Callable

from .fielddir import FieldError, _prepare_durable_root, load_config, open_meta, tiers_for_check
from .config import DEFAULT
from .homes import SlabHomes, chunk_size, parse_slab_name, stored_checksum
from .pagetable import PageTable
from .tierroot import MARKER, TierRootError

log = logging.getLogger(__name__)


@dataclass
class FsckReport:
    pages_checked: int = 0
    problems: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    unrepaired: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        """True when nothing was wrong, or when --repair fixed everything without losing data."""
        return not self.unrepaired and (not self.problems or bool(self.repaired))


def fsck(field_dir: str, repair: bool = False, progress: Callable[[int, int], None] | None = None) -> FsckReport:
    """Check (and with `repair`, fix) an unmounted field. The caller holds the field's lock."""
    cfg = load_config(field_dir)
    meta = open_meta(field_dir)
    report = FsckReport()
    table = PageTable(meta.path, 0, dense_limit=0, row_cache=1, read_only=False)
    homes: dict[int, SlabHomes] = {}
    try:
        chunk = chunk_size(cfg.page_size)
        n_chunks = cfg.page_size // chunk
        names = meta.tier_names()
        by_name = {n: i for i, n in names.items()}
        field_id = meta.get_meta("field_id") or "unknown"
        counts = table.count_by_tier()
        of_record = tiers_for_check(meta, field_dir)
        for spec in of_record:
            if spec.volatile:
                continue
            tid = by_name.get(spec.name)
            if tid is None or (not counts.get(tid) and not os.path.lexists(spec.path)):
                continue  # (a tier that holds nothing and was never created is no problem)
            try:
                root, sps = _prepare_durable_root(spec, field_id, tid, counts.get(tid, 0), cfg.page_size, DEFAULT,
                                                  create=False, write=False)
            except TierRootError as exc:
                report.problems.append(f"tier {spec.name}: {exc}")
                report.unrepaired.append(f"tier {spec.name}")
                continue
            homes[tid] = SlabHomes(root, cfg.page_size, sps)
        total = sum(counts.values())
        configured = {by_name.get(s.name) for s in of_record}
        unchecked: dict[int, int] = {}
        lost: list[int] = []
        seen: dict[tuple[int, int], int] = {}
        done = 0
        for page, home in table.iter_homes():
            done += 1
            report.pages_checked += 1
            if progress is not None and done % 4096 == 0:
                progress(done, total)
            store = homes.get(home.tier)
            if store is None:
                if home.tier not in configured:
                    # not lost: its tier is not among those fsck knows where to find; never
                    # reset (its data may be intact there), only reported
                    unchecked[home.tier] = unchecked.get(home.tier, 0) + 1
                continue
            key = (home.tier, home.slot)
            if key in seen:
                report.problems.append(f"page {page}: shares slot {home.slot} of tier {names.get(home.tier)} with page {seen[key]}")
                lost.append(page)
                continue
            seen[key] = page
            try:
                data = store.read(home.slot)
            except OSError as exc:
                report.problems.append(f"page {page}: cannot read its home: {exc}")
                lost.append(page)
                continue
            except Exception as exc:  # PageIOError for short/missing slabs
                report.problems.append(f"page {page}: {exc}")
                lost.append(page)
                continue
            if stored_checksum(data, home.mask, chunk, n_chunks) != home.checksum:
                report.problems.append(f"page {page}: home copy on tier {names.get(home.tier)} fails its checksum")
                lost.append(page)
        if progress is not None:
            progress(done, total)
        for tid, n in sorted(unchecked.items()):
            what = f"{n} pages on tier {names.get(tid, tid)!r}"
            report.problems.append(f"{what}: the tier is not among the field's tiers of record; not checked")
            report.unrepaired.append(f"{what}: mount once with that tier named (--tier {names.get(tid, tid)}=PATH), then check again")
        if lost:
            if repair:
                table.delete_homes(lost)
                for page in lost:
                    report.unrepaired.append(f"page {page}: no intact copy; reset to the implicit init (data lost)")
            else:
                report.unrepaired.extend(f"page {p}" for p in lost)
        for tid, store in homes.items():
            for name in store.root.listdir():
                if name == MARKER or parse_slab_name(name) is not None:
                    continue
                try:
                    st = store.root.lstat(name)
                except FileNotFoundError:
                    continue
                path = os.path.join(store.root.path, name)
                report.problems.append(f"foreign file {path} in tier {names.get(tid)}")
                if repair and not stat.S_ISDIR(st.st_mode):
                    store.root.unlink(name)
                    report.repaired.append(f"removed {path}")
                elif repair:
                    report.unrepaired.append(f"{path}: a directory nffs did not create; remove it by hand")
                else:
                    report.unrepaired.append(path)
        raw = meta.get_meta("memory_dirs")
        if raw and raw != "[]":
            report.notes.append(f"memory tiers of a daemon that did not exit cleanly remain ({raw}); the next mount removes them")
    finally:
        for store in homes.values():
            store.close()
            store.root.close()
        table.close()
        meta.close()
    return report


__all__ = ["FsckReport", "fsck", "FieldError"]
