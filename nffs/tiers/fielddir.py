"""A field directory on disk: field.json (settings), meta.db (SQLite), the default nvme tier.

Opening a field for serving is where tier roots are checked and opened (tierroot.py),
arenas are created, and the page table is loaded — the whole of "recovery", because
the crash protocol leaves nothing else to repair (docs/design.md).
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import uuid
from dataclasses import dataclass, field

from ..encoding.layout import FieldConfig, FieldLayout
from .arena import MemoryArena
from .config import DEFAULT, StoreConfig
from .homes import SlabHomes, chunk_size
from .meta import IncompatibleField, MetaDB
from .pagetable import PageTable, create_schema
from .spec import TierSpec, TierSpecError, check_tier_paths, check_tier_set, default_tiers
from .store import PageStore
from .tier import Tier
from .tierroot import TierRoot, TierRootError, remove_stale_private

log = logging.getLogger(__name__)

FIELD_JSON = "field.json"
LOCK_NAME = "lock"
PRIVATE_PREFIX = "nffs-"


class FieldError(Exception):
    """A field directory that cannot be created or opened; the message is for the user."""


def slots_per_slab(cfg: StoreConfig, page_size: int) -> int:
    return max(cfg.min_slots_per_slab, cfg.slab_bytes // page_size)


def _prepare_durable_root(spec: TierSpec, field_id: str, tier_id: int, pages_there: int, page_size: int, cfg: StoreConfig,
                          *, create: bool, write: bool) -> tuple[TierRoot, int]:
    """Open (or, for a tier without pages, create) a durable root; returns it and its slab geometry."""
    if os.path.lexists(spec.path):
        root = TierRoot.open_existing(spec.path, cfg.root_check_interval_s)
    elif pages_there:
        raise TierRootError(f"{spec.path} is missing but holds {pages_there} pages of this field; "
                            "refusing to recreate it (restore or remount the directory)")
    elif create:
        root = TierRoot.create(spec.path, cfg.root_check_interval_s)
    else:
        raise TierRootError(f"{spec.path} does not exist")
    try:
        marker = root.read_marker()
        if marker is None:
            if pages_there:
                raise TierRootError(f"{spec.path} is not the tier directory this field wrote "
                                    f"({pages_there} pages are recorded there): replaced or not mounted?")
            sps = slots_per_slab(cfg, page_size)
            if write:
                root.write_marker_data({"field_id": field_id, "tier": spec.name, "slots_per_slab": sps})
            return root, sps
        if marker.get("field_id") != field_id:
            raise TierRootError(f"{spec.path} belongs to another field ({marker.get('field_id')})")
        if marker.get("tier") not in (None, spec.name):
            # its homes are recorded under the other tier's name: served under this one they
            # would all be EIO, and an fsck would take them for lost
            raise TierRootError(f"{spec.path} is the directory of this field's tier {marker.get('tier')!r}, "
                                f"given here as tier {spec.name!r}")
        sps = int(marker.get("slots_per_slab") or slots_per_slab(cfg, page_size))
        return root, sps
    except BaseException:
        root.close()
        raise


def init_field(field_dir: str, cfg: FieldConfig, tiers: list[TierSpec] | None, store_cfg: StoreConfig = DEFAULT) -> None:
    """Create a field; bad settings or tiers create nothing."""
    cfg.validate()
    FieldLayout(cfg)  # proves the layout can be computed
    if tiers:
        check_tier_set(tiers)
        check_tier_paths(tiers)
        _check_capacities(tiers, cfg.page_size)
    if os.path.exists(os.path.join(field_dir, FIELD_JSON)):
        raise FieldError(f"{field_dir} already holds a field")
    if os.path.lexists(field_dir) and not os.path.isdir(field_dir):
        raise FieldError(f"{field_dir} exists and is not a directory")
    specs = tiers or default_tiers(field_dir)
    check_tier_paths(specs)
    created_dir = not os.path.exists(field_dir)
    created: list[str] = []
    try:
        os.makedirs(field_dir, mode=0o700, exist_ok=True)
        meta = MetaDB(field_dir, create=True)
        try:
            field_id = uuid.uuid4().hex
            meta.set_meta("field_id", field_id)
            if tiers:
                meta.set_meta("tiers", json.dumps([t.to_dict() for t in tiers]))
            meta.commit()
            create_schema(meta.path)
            for spec in specs:
                if spec.volatile:
                    continue
                existed = os.path.lexists(spec.path)
                root, _ = _prepare_durable_root(spec, field_id, meta.tier_id(spec.name), 0, cfg.page_size, store_cfg,
                                                create=True, write=True)
                root.close()
                if not existed:
                    created.append(spec.path)
            meta.sync()
        finally:
            meta.close()
        tmp = os.path.join(field_dir, FIELD_JSON + ".tmp")
        with open(tmp, "w") as f:
            json.dump(cfg.to_dict(), f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, os.path.join(field_dir, FIELD_JSON))
    except TierRootError as exc:
        _undo_init(field_dir, created_dir, created)
        raise FieldError(str(exc)) from None
    except BaseException:
        _undo_init(field_dir, created_dir, created)
        raise


def _undo_init(field_dir: str, created_dir: bool, created: list[str]) -> None:
    for path in created:
        shutil.rmtree(path, ignore_errors=True)
    if created_dir:
        shutil.rmtree(field_dir, ignore_errors=True)
    else:
        for name in ("meta.db", "meta.db-wal", "meta.db-shm", FIELD_JSON + ".tmp"):
            try:
                os.unlink(os.path.join(field_dir, name))
            except FileNotFoundError:
                pass


def load_config(field_dir: str) -> FieldConfig:
    path = os.path.join(field_dir, FIELD_JSON)
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise FieldError(f"{field_dir}: not an nffs field (no {FIELD_JSON}); create one with `nffs init`") from None
    except (OSError, ValueError) as exc:
        raise FieldError(f"{path}: unreadable: {exc}") from None
    try:
        return FieldConfig.from_dict(data)
    except (TypeError, ValueError) as exc:
        raise FieldError(f"{path}: {exc}") from None


def _check_capacities(specs: list[TierSpec], page_size: int) -> None:
    """A fixed capacity must hold a page at least (a percentage depends on the file system)."""
    for spec in specs:
        if spec.capacity is not None and not spec.capacity.endswith("%") and spec.capacity_bytes() < page_size:
            raise FieldError(f"tier {spec.name}: capacity {spec.capacity} is less than one page ({page_size} bytes)")


def persisted_tiers(meta: MetaDB, field_dir: str) -> list[TierSpec]:
    raw = meta.get_meta("tiers")
    if raw:
        return [TierSpec.from_dict(d) for d in json.loads(raw)]
    return default_tiers(field_dir)


def tiers_for_check(meta: MetaDB, field_dir: str) -> list[TierSpec]:
    """The tiers of the last mount (a mount may override the persisted ones), for fsck and
    stat, plus any tier of `init` that mount did not name (a field written before mounts
    had to name every tier holding pages may have such a mount on record)."""
    persisted = persisted_tiers(meta, field_dir)
    raw = meta.get_meta("last_tiers")
    if not raw:
        return persisted
    last = [TierSpec.from_dict(d) for d in json.loads(raw)]
    named = {s.name for s in last}
    return last + [s for s in persisted if s.name not in named and not s.volatile]


def open_meta(field_dir: str, *, read_only: bool = False, immutable: bool = False) -> MetaDB:
    try:
        return MetaDB(field_dir, read_only=read_only, immutable=immutable)
    except IncompatibleField as exc:
        raise FieldError(str(exc)) from None
    except FileNotFoundError as exc:
        raise FieldError(str(exc)) from None


def remove_stale_memory_dirs(meta: MetaDB) -> None:
    """Private memory-tier directories of a daemon that did not exit cleanly (crash, kill -9)."""
    raw = meta.get_meta("memory_dirs")
    for path in json.loads(raw) if raw else []:
        remove_stale_private(path, PRIVATE_PREFIX)


@dataclass
class OpenField:
    field_dir: str
    layout: FieldLayout
    meta: MetaDB
    store: PageStore
    tiers: list[Tier]
    lock_fd: int | None
    field_id: str = ""
    memory_roots: list[TierRoot] = field(default_factory=list)

    def close(self) -> None:
        """After the final flush: memory tiers go away with the daemon (nothing left in RAM)."""
        self.store.close()
        for root in self.memory_roots:
            root.remove_private()
        for t in self.tiers:
            if t.mounted_tmpfs and t.spec.path:
                from .numa import unmount

                unmount(t.spec.path)
        if self.memory_roots and not self.meta.read_only_db:
            self.meta.set_meta("memory_dirs", "[]")
        self.meta.close()
        if self.lock_fd is not None:
            os.close(self.lock_fd)
            self.lock_fd = None


def lock_field(field_dir: str) -> int:
    fd = os.open(os.path.join(field_dir, LOCK_NAME), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise FieldError(f"{field_dir} is in use by another nffs process (mounted elsewhere?)") from None
    return fd


def _memory_tier(spec: TierSpec, tier_id: int, field_id: str, layout: FieldLayout, cfg: StoreConfig, table: PageTable) -> tuple[Tier, TierRoot]:
    parent = spec.path
    if not os.path.lexists(parent):
        TierRoot.create(parent, cfg.root_check_interval_s).close()
    numa_node = None
    mounted = False
    if spec.kind == "cxl" and spec.numa is not None:
        from . import numa

        if not numa.node_exists(spec.numa):
            raise TierRootError(f"NUMA node {spec.numa} does not exist (see `nffs stat --hardware`)")
        if not numa.bound_tmpfs(parent, spec.numa):
            size = None
            if spec.capacity is not None and not spec.capacity.endswith("%"):
                size = spec.capacity_bytes()
            mounted = numa.mount_bound_tmpfs(parent, spec.numa, size)
            if not mounted:
                numa_node = spec.numa
    root = TierRoot.create_private(parent, f"{PRIVATE_PREFIX}{field_id[:8]}-", cfg.root_check_interval_s)
    try:
        capacity = spec.capacity_bytes()
        if capacity is None:
            st = os.statvfs(parent)
            capacity = max(layout.page_size, st.f_blocks * st.f_frsize // 4)
        cap_pages = max(1, capacity // layout.page_size)
        direct = cap_pages >= layout.n_pages and layout.n_pages <= cfg.dense_index_pages
        n_slots = layout.n_pages if direct else cap_pages
        arena = MemoryArena(root, n_slots, layout.page_size, chunk_size(layout.page_size), numa_node)
    except BaseException:
        root.remove_private()
        raise
    tier = Tier(spec, tier_id, root, capacity, layout.page_size)
    tier.arena = arena
    tier.mem = table.add_mem_tier(arena, direct)
    tier.mounted_tmpfs = mounted
    tier.numa_binding = "tmpfs" if mounted or (spec.numa is not None and numa_node is None and spec.kind == "cxl") else (
        "mbind" if numa_node is not None else None)
    return tier, root


def _durable_tier(spec: TierSpec, tid: int, field_id: str, pages_there: int, page_size: int, cfg: StoreConfig, read_only: bool) -> Tier:
    """A durable tier; one that holds pages but cannot be opened safely is kept as *broken*:
    EIO for its pages, the rest of the field serves on, and nothing is recreated."""
    try:
        root, sps = _prepare_durable_root(spec, field_id, tid, pages_there, page_size, cfg, create=not read_only, write=not read_only)
    except TierRootError as exc:
        if not pages_there:
            raise
        log.warning("tier %s: %s -- its %d pages give EIO until it is back and the field is remounted", spec.name, exc, pages_there)
        tier = Tier(spec, tid, None, None, page_size)
        tier.broken = str(exc)
        return tier
    tier = Tier(spec, tid, root, spec.capacity_bytes(), page_size)
    tier.homes = SlabHomes(root, page_size, sps)
    return tier


def _anonymous_tier(layout: FieldLayout, cfg: StoreConfig, table: PageTable) -> Tier:
    """No memory tier configured: writes still need a staging copy; keep a small one in-process."""
    spec = TierSpec(name="process", path="", kind="dram")
    cap_pages = max(1, cfg.anonymous_arena_bytes // layout.page_size)
    direct = cap_pages >= layout.n_pages and layout.n_pages <= cfg.dense_index_pages
    n_slots = layout.n_pages if direct else cap_pages
    arena = MemoryArena(None, n_slots, layout.page_size, chunk_size(layout.page_size))
    tier = Tier(spec, -1, None, n_slots * layout.page_size, layout.page_size)
    tier.arena = arena
    tier.mem = table.add_mem_tier(arena, direct)
    return tier


def open_field(field_dir: str, tier_overrides: list[TierSpec] | None = None, *, read_only: bool = False, lock: bool = True,
               store_cfg: StoreConfig = DEFAULT) -> OpenField:
    """Open for serving: one process at a time (flock), tier roots checked, page table loaded."""
    field_dir = os.path.abspath(field_dir)
    cfg = load_config(field_dir)
    layout = FieldLayout(cfg)
    # a reader takes no lock: the writer (perhaps on another machine) holds it
    lock_fd = lock_field(field_dir) if lock and not read_only else None
    opened: list[Tier] = []
    roots: list[TierRoot] = []
    meta = None
    table = None
    try:
        meta = open_meta(field_dir, read_only=read_only, immutable=read_only)
        field_id = meta.get_meta("field_id") or "unknown"
        if not read_only:
            remove_stale_memory_dirs(meta)
        specs = tier_overrides or persisted_tiers(meta, field_dir)
        try:
            check_tier_set(specs)
            check_tier_paths(specs)
        except TierSpecError as exc:
            raise FieldError(str(exc)) from None
        table = PageTable(meta.path, layout.n_pages, dense_limit=store_cfg.dense_index_pages,
                          row_cache=store_cfg.row_cache_entries, read_only=read_only, immutable=read_only)
        pages_by_tier = table.count_by_tier()
        known = {name: i for i, name in meta.tier_names().items()}
        if read_only:  # the writer's newest generation names its tiers (its live database may not yet)
            from .generations import current_tier_names

            known.update({name: i for i, name in current_tier_names(field_dir).items()})
        _check_capacities(specs, cfg.page_size)
        configured = {known[s.name] for s in specs if s.name in known}
        left_out = {tid: n for tid, n in pages_by_tier.items() if n and tid not in configured}
        if left_out:
            # bad input (SPEC 7): served without them, these pages would all be EIO, and the
            # tiers of record (fsck's) would lose them; a tier that is configured but whose
            # directory vanished is another matter: EIO for its pages, the rest serves on
            names = {i: name for name, i in known.items()}
            raise FieldError("this mount's tiers leave out "
                             + ", ".join(f"tier {names.get(t, t)!r} ({n} pages)" for t, n in sorted(left_out.items()))
                             + " of this field: give every tier that holds pages, by its name, with --tier NAME=PATH"
                             + " (the field's tiers: `nffs stat FIELD_DIR`)")
        for n, spec in enumerate(specs):
            # a reader never writes metadata: a tier name the field does not know holds no pages
            tid = meta.tier_id(spec.name) if not read_only else known.get(spec.name, -1000 - n)
            try:
                if spec.volatile:
                    tier, root = _memory_tier(spec, tid, field_id, layout, store_cfg, table)
                    roots.append(root)
                else:
                    tier = _durable_tier(spec, tid, field_id, pages_by_tier.get(tid, 0), cfg.page_size, store_cfg, read_only)
            except (TierRootError, TierSpecError) as exc:
                raise FieldError(f"tier {spec.name}: {exc}") from None
            except OSError as exc:
                raise FieldError(f"tier {spec.name}: cannot use {spec.path}: {exc.strerror or exc}") from None
            opened.append(tier)
        tiers = list(opened)
        if not any(t.mem is not None for t in tiers):
            tiers.insert(0, _anonymous_tier(layout, store_cfg, table))
        if not read_only:
            meta.set_meta("last_tiers", json.dumps([s.to_dict() for s in specs]))
            meta.set_meta("memory_dirs", json.dumps([r.path for r in roots]))
            meta.sync()
        store = PageStore(layout, table, tiers, store_cfg, read_only=read_only, field_dir=field_dir)
        store.recover()
    except BaseException:
        for t in opened:
            t.close()
        for r in roots:
            r.remove_private()
        if table is not None:
            table.close()
        if meta is not None:
            meta.close()
        if lock_fd is not None:
            os.close(lock_fd)
        raise
    return OpenField(field_dir, layout, meta, store, tiers, lock_fd, field_id, roots)
