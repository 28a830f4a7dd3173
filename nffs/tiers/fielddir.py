"""A field directory on disk: field.json (settings), meta.db (SQLite WAL), the default nvme tier."""
from __future__ import annotations

import fcntl
import json
import logging
import os
import uuid
from dataclasses import dataclass

from ..encoding.layout import FieldConfig, FieldLayout
from .meta import MetaDB
from .spec import TierSpec, check_tier_set, default_tiers
from .store import PageStore
from .tier import Tier

log = logging.getLogger(__name__)

FIELD_JSON = "field.json"
LOCK_NAME = "lock"


class FieldError(Exception):
    """A field directory that cannot be created or opened; the message is for the user."""


def init_field(field_dir: str, cfg: FieldConfig, tiers: list[TierSpec] | None) -> None:
    cfg.validate()
    FieldLayout(cfg)  # proves the layout can be computed
    if tiers:
        check_tier_set(tiers)
    if os.path.exists(os.path.join(field_dir, FIELD_JSON)):
        raise FieldError(f"{field_dir} already holds a field")
    if os.path.exists(field_dir) and not os.path.isdir(field_dir):
        raise FieldError(f"{field_dir} exists and is not a directory")
    os.makedirs(field_dir, exist_ok=True)
    meta = MetaDB(field_dir, create=True)
    try:
        meta.set_meta("field_id", uuid.uuid4().hex)
        if tiers:
            meta.set_meta("tiers", json.dumps([t.to_dict() for t in tiers]))
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


def persisted_tiers(meta: MetaDB, field_dir: str) -> list[TierSpec]:
    raw = meta.get_meta("tiers")
    if raw:
        return [TierSpec.from_dict(d) for d in json.loads(raw)]
    return default_tiers(field_dir, meta.get_meta("field_id") or "unknown")


def tiers_for_check(meta: MetaDB, field_dir: str) -> list[TierSpec]:
    """The tiers of the last mount (a mount may override the persisted ones), for fsck and stat."""
    raw = meta.get_meta("last_tiers")
    if raw:
        return [TierSpec.from_dict(d) for d in json.loads(raw)]
    return persisted_tiers(meta, field_dir)


@dataclass
class OpenField:
    field_dir: str
    layout: FieldLayout
    meta: MetaDB
    store: PageStore
    tiers: list[Tier]
    lock_fd: int | None

    def close(self) -> None:
        self.store.close()
        self.meta.close()
        if self.lock_fd is not None:
            os.close(self.lock_fd)
            self.lock_fd = None


def open_field(field_dir: str, tier_overrides: list[TierSpec] | None = None, *, read_only: bool = False, lock: bool = True) -> OpenField:
    """Open for serving: one process at a time (flock), tiers created, crash leftovers reconciled."""
    field_dir = os.path.abspath(field_dir)
    cfg = load_config(field_dir)
    layout = FieldLayout(cfg)
    lock_fd = None
    if lock:
        lock_fd = os.open(os.path.join(field_dir, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock_fd)
            raise FieldError(f"{field_dir} is in use by another nffs process (mounted elsewhere?)") from None
    try:
        meta = MetaDB(field_dir)
        specs = tier_overrides or persisted_tiers(meta, field_dir)
        check_tier_set(specs)
        tiers = []
        for spec in specs:
            tier = Tier(spec, meta.tier_id(spec.name), cfg.page_size)
            try:
                tier.open()
            except OSError as exc:
                raise FieldError(f"tier {spec.name}: cannot use {spec.path}: {exc}") from None
            tiers.append(tier)
        if not read_only:
            meta.set_meta("last_tiers", json.dumps([s.to_dict() for s in specs]))
        meta.commit()
        store = PageStore(layout, meta, tiers, read_only=read_only)
        store.recover()
    except BaseException:
        if lock_fd is not None:
            os.close(lock_fd)
        raise
    return OpenField(field_dir, layout, meta, store, tiers, lock_fd)
