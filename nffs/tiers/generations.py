"""Published generations of the page table: how readers on other machines see a field.

One writer, many readers (docs/sharing.md). SQLite's WAL needs shared memory and does
not work across machines, so readers never open the writer's live database. Instead,
at every sync point, after the homes are durable, the writer publishes the whole
page table as an immutable file `FIELD/gen/<n>.pt` and then points `FIELD/gen/CURRENT`
at it (temporary name, fsync, rename, fsync of the directory: a reader sees the old or
the new generation, never a mix). Readers load CURRENT at mount and on refresh.

A slot a published generation names is not reused while readers may still use that
generation: readers leave a lease file in `FIELD/gen/readers/`, and while a lease is
fresh the writer keeps freed slots out of use for `retain_s` seconds (homes.py).

File format (little-endian): magic `NFFSGEN1`, u64 generation, u64 rows, u64 xxh3 of
the rows, then the rows (`ROW` below, sorted by page). CURRENT is JSON
`{"generation": n, "file": "<n>.pt", "rows": r, "checksum": c}`.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import struct
import time
from dataclasses import dataclass

import numpy as np
import xxhash

log = logging.getLogger(__name__)

GEN_DIR = "gen"
CURRENT = "CURRENT"
READERS = "readers"
MAGIC = b"NFFSGEN1"
ROW = np.dtype([("page", "<i8"), ("tier", "<i4"), ("slot", "<i8"), ("sum", "<u8"), ("mask", "<u8")])
_HEADER = struct.Struct("<8sQQQ")


class GenerationError(Exception):
    """A published generation that cannot be used (missing, truncated, checksum)."""


@dataclass(frozen=True)
class Generation:
    number: int
    rows: np.ndarray  # ROW, sorted by page
    loaded_at: float


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomically(directory: str, name: str, parts: list[bytes]) -> None:
    tmp = os.path.join(directory, f".{name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        for part in parts:
            view = memoryview(part)
            while view:
                view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, os.path.join(directory, name))


def current_number(field_dir: str) -> int:
    try:
        with open(os.path.join(field_dir, GEN_DIR, CURRENT)) as f:
            return int(json.load(f)["generation"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def publish(field_dir: str, number: int, rows: np.ndarray, tier_names: dict[int, str] | None = None) -> None:
    """Write generation `number` and make it CURRENT (worker thread; homes already durable).

    CURRENT also names the tiers by id: a reader resolves the writer's tier ids by name
    from it, never from the writer's live database."""
    directory = os.path.join(field_dir, GEN_DIR)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    body = np.ascontiguousarray(rows, dtype=ROW).tobytes()
    checksum = xxhash.xxh3_64_intdigest(body)
    name = f"{number}.pt"
    _write_atomically(directory, name, [_HEADER.pack(MAGIC, number, len(rows), checksum), body])
    _fsync_dir(directory)
    current = json.dumps({"generation": number, "file": name, "rows": len(rows), "checksum": checksum,
                          "tiers": {str(k): v for k, v in (tier_names or {}).items()}}).encode()
    _write_atomically(directory, CURRENT, [current])
    _fsync_dir(directory)
    # readers that loaded the previous generation a moment ago may still be opening it
    for old in os.listdir(directory):
        if old.endswith(".pt") and old[:-3].isdigit() and int(old[:-3]) < number - 1:
            try:
                os.unlink(os.path.join(directory, old))
            except FileNotFoundError:
                pass


def current_tier_names(field_dir: str) -> dict[int, str]:
    """The tier ids the newest generation refers to, by name (empty without a generation)."""
    try:
        with open(os.path.join(field_dir, GEN_DIR, CURRENT)) as f:
            tiers = json.load(f).get("tiers", {})
        return {int(k): str(v) for k, v in tiers.items()}
    except (OSError, ValueError, AttributeError):
        return {}


def load_current(field_dir: str) -> Generation | None:
    """The newest published generation, verified; None when the field never published one."""
    directory = os.path.join(field_dir, GEN_DIR)
    try:
        with open(os.path.join(directory, CURRENT)) as f:
            meta = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise GenerationError(f"{directory}/{CURRENT}: {exc}") from None
    try:
        name = str(meta["file"])
        if "/" in name or not name.endswith(".pt"):
            raise GenerationError(f"{directory}/{CURRENT} names {name!r}")
        with open(os.path.join(directory, name), "rb") as f:
            head = f.read(_HEADER.size)
            magic, number, n_rows, checksum = _HEADER.unpack(head)
            body = f.read(n_rows * ROW.itemsize + 1)
    except (OSError, KeyError, struct.error) as exc:
        raise GenerationError(f"{directory}: generation unreadable: {exc}") from None
    if magic != MAGIC or number != meta.get("generation") or len(body) != n_rows * ROW.itemsize:
        raise GenerationError(f"{directory}/{name}: not a complete generation file")
    if xxhash.xxh3_64_intdigest(body) != checksum or checksum != meta.get("checksum"):
        raise GenerationError(f"{directory}/{name}: checksum mismatch")
    rows = np.frombuffer(body, dtype=ROW)
    return Generation(int(number), rows, time.monotonic())


def lease_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def renew_lease(field_dir: str, generation: int) -> bool:
    """A reader's lease: the writer keeps slots of recent generations while it is fresh."""
    directory = os.path.join(field_dir, GEN_DIR, READERS)
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        _write_atomically(directory, lease_name(), [json.dumps({"generation": generation, "time": time.time()}).encode()])
        return True
    except OSError:
        return False  # a read-only export: pins nothing; a stale read retries after a refresh


def drop_lease(field_dir: str) -> None:
    try:
        os.unlink(os.path.join(field_dir, GEN_DIR, READERS, lease_name()))
    except OSError:
        pass


def readers_active(field_dir: str, fresh_s: float) -> bool:
    directory = os.path.join(field_dir, GEN_DIR, READERS)
    try:
        names = os.listdir(directory)
    except OSError:
        return False
    now = time.time()
    for name in names:
        try:
            if now - os.stat(os.path.join(directory, name)).st_mtime < fresh_s:
                return True
        except OSError:
            continue
    return False


def changed_pages(old: np.ndarray, new: np.ndarray) -> np.ndarray:
    """Pages whose home differs between two generations (added, removed or moved)."""
    pages = np.union1d(old["page"], new["page"])
    if pages.size == 0:
        return pages
    oi = np.searchsorted(old["page"], pages).clip(0, max(0, old.size - 1))
    ni = np.searchsorted(new["page"], pages).clip(0, max(0, new.size - 1))
    in_old = (old.size > 0) & (old["page"][oi] == pages) if old.size else np.zeros(pages.size, dtype=bool)
    in_new = (new.size > 0) & (new["page"][ni] == pages) if new.size else np.zeros(pages.size, dtype=bool)
    same = in_old & in_new
    for field in ("tier", "slot", "sum", "mask"):
        if old.size and new.size:
            same &= old[field][oi] == new[field][ni]
    return pages[~same]
