"""Published generations of the page table: how readers on other machines see a field.

One writer, many readers (docs/sharing.md). SQLite's WAL needs shared memory and does
not work across machines, so readers never open the writer's live database. Instead,
at every sync point, after the homes are durable, the writer publishes the page table
as immutable files and then points `FIELD/gen/CURRENT` at them (temporary name, fsync,
rename, fsync of the directory: a reader sees the old or the new generation, never a
mix). Readers load CURRENT at mount and on refresh.

A generation is a full snapshot `<b>.pt` (a *base*) plus a chain of deltas `<n>.pd`,
each holding the rows changed since the generation before it (a row whose tier is
`NO_HOME`: the page has no home any more). Why: a full snapshot costs 36 bytes per
materialised page, and every `fsync` publishes; with deltas an `fsync` after a few
writes costs what they changed, not what the field holds (`Publisher`). A new base is
written when the chain's rows pass `delta_share` of the base's, or the chain
`max_chain` files, so a reader never applies more than a bounded chain.

A slot a published generation names is not reused while readers may still use that
generation: readers leave a lease file in `FIELD/gen/readers/`, and while a lease is
fresh the writer keeps freed slots out of use for `retain_s` seconds (homes.py).

File format (little-endian): magic `NFFSGEN1` (base) or `NFFSDLT1` (delta), u64
generation, u64 rows, u64 xxh3 of the rows, then the rows (`ROW` below, sorted by page).
CURRENT is JSON `{"generation": n, "file": "<b>.pt", "rows": r, "checksum": c,
"deltas": [{"file": "<k>.pd", "generation": k, "rows": r, "checksum": c}, ...],
"tiers": {id: name}}` (no "deltas": the base alone).
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
DELTA_MAGIC = b"NFFSDLT1"
#: the tier of a delta row whose page has no home any more
NO_HOME = -1
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


def _write_rows(directory: str, name: str, magic: bytes, number: int, rows: np.ndarray) -> dict:
    body = np.ascontiguousarray(rows, dtype=ROW).tobytes()
    checksum = xxhash.xxh3_64_intdigest(body)
    _write_atomically(directory, name, [_HEADER.pack(magic, number, len(rows), checksum), body])
    return {"file": name, "generation": number, "rows": len(rows), "checksum": checksum}


def _files_named(meta: dict) -> set[str]:
    files = {str(meta.get("file", ""))}
    files.update(str(d.get("file", "")) for d in meta.get("deltas", []) if isinstance(d, dict))
    return files


def _read_current(directory: str) -> dict:
    with open(os.path.join(directory, CURRENT)) as f:
        meta = json.load(f)
    if not isinstance(meta, dict):
        raise ValueError("not a JSON object")
    return meta


class Publisher:
    """The writer's side of generations (worker thread, one publish at a time).

    `publish_full` writes a base; `publish_delta` the rows changed since the last
    publish, when `wants_full` says a delta is worth it. Each publish then replaces
    CURRENT and deletes the files that neither it nor the CURRENT before it names
    (readers that loaded the previous one a moment ago may still be opening its files).
    """

    def __init__(self, field_dir: str, *, max_chain: int = 32, delta_share: float = 0.25) -> None:
        self.directory = os.path.join(field_dir, GEN_DIR)
        self.max_chain = max_chain
        self.delta_share = delta_share
        self._base: dict | None = None  # written by this writer: a delta needs its own base
        self._deltas: list[dict] = []
        self._delta_rows = 0
        try:
            self._previous = _files_named(_read_current(self.directory))
        except (OSError, ValueError):
            self._previous = set()

    def wants_full(self, changed: int) -> bool:
        """Is a base due, rather than a delta of `changed` rows?"""
        if self._base is None or len(self._deltas) >= self.max_chain:
            return True
        return self._delta_rows + changed > self.delta_share * self._base["rows"]

    def publish_full(self, number: int, rows: np.ndarray, tier_names: dict[int, str] | None = None) -> None:
        """Generation `number` as a base of every row (sorted by page)."""
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        base = _write_rows(self.directory, f"{number}.pt", MAGIC, number, rows)
        self._commit(number, base, [], tier_names, 0)

    def publish_delta(self, number: int, rows: np.ndarray, tier_names: dict[int, str] | None = None) -> None:
        """Generation `number` as the last one plus `rows` (sorted by page; tier NO_HOME: no home)."""
        assert self._base is not None
        delta = _write_rows(self.directory, f"{number}.pd", DELTA_MAGIC, number, rows)
        self._commit(number, self._base, self._deltas + [delta], tier_names, self._delta_rows + len(rows))

    def _commit(self, number: int, base: dict, deltas: list[dict], tier_names: dict[int, str] | None,
                delta_rows: int) -> None:
        _fsync_dir(self.directory)
        meta = {"generation": number, "file": base["file"], "rows": base["rows"], "checksum": base["checksum"],
                "tiers": {str(k): v for k, v in (tier_names or {}).items()}}
        if deltas:
            meta["deltas"] = deltas
        _write_atomically(self.directory, CURRENT, [json.dumps(meta).encode()])
        # CURRENT names these files now (whatever fails below): the chain goes on from them,
        # and the files the CURRENT before named stay for readers that just loaded it
        named = _files_named(meta)
        keep = named | self._previous
        self._previous = named
        self._base, self._deltas, self._delta_rows = base, deltas, delta_rows
        _fsync_dir(self.directory)
        for old in os.listdir(self.directory):
            stem, dot, ext = old.rpartition(".")
            if dot and ext in ("pt", "pd") and stem.isdigit() and old not in keep:
                try:
                    os.unlink(os.path.join(self.directory, old))
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


def _load_rows(directory: str, entry: object, magic: bytes, generation: object | None) -> np.ndarray:
    """The rows of one file CURRENT names, verified against its header and CURRENT's entry."""
    if not isinstance(entry, dict):
        raise GenerationError(f"{directory}/{CURRENT}: malformed")
    name = str(entry.get("file"))
    ext = ".pt" if magic == MAGIC else ".pd"
    if "/" in name or not name.endswith(ext):
        raise GenerationError(f"{directory}/{CURRENT} names {name!r}")
    try:
        with open(os.path.join(directory, name), "rb") as f:
            head = f.read(_HEADER.size)
            got_magic, number, n_rows, checksum = _HEADER.unpack(head)
            body = f.read(n_rows * ROW.itemsize + 1)
    except (OSError, struct.error) as exc:
        raise GenerationError(f"{directory}: generation unreadable: {exc}") from None
    if got_magic != magic or (generation is not None and number != generation) or len(body) != n_rows * ROW.itemsize:
        raise GenerationError(f"{directory}/{name}: not a complete generation file")
    if xxhash.xxh3_64_intdigest(body) != checksum or checksum != entry.get("checksum"):
        raise GenerationError(f"{directory}/{name}: checksum mismatch")
    return np.frombuffer(body, dtype=ROW)


def apply_deltas(base: np.ndarray, deltas: list[np.ndarray]) -> np.ndarray:
    """`base` with every delta applied in order (the last row of a page wins; NO_HOME drops it)."""
    if not deltas:
        return base
    changes = np.concatenate(deltas)
    # the last change of each page: unique over the reversed list keeps the first it meets
    _, last = np.unique(changes["page"][::-1], return_index=True)
    changes = changes[::-1][last]  # sorted by page
    kept = base[~np.isin(base["page"], changes["page"], assume_unique=True)]
    merged = np.concatenate([kept, changes[changes["tier"] != NO_HOME]])
    return merged[np.argsort(merged["page"], kind="stable")]


def load_current(field_dir: str) -> Generation | None:
    """The newest published generation (its base and deltas applied), verified; None when
    the field never published one."""
    directory = os.path.join(field_dir, GEN_DIR)
    try:
        meta = _read_current(directory)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise GenerationError(f"{directory}/{CURRENT}: {exc}") from None
    entries = meta.get("deltas", [])
    if not isinstance(entries, list):
        raise GenerationError(f"{directory}/{CURRENT}: malformed")
    base = _load_rows(directory, meta, MAGIC, None if entries else meta.get("generation"))
    deltas = [_load_rows(directory, e, DELTA_MAGIC, e.get("generation") if isinstance(e, dict) else None) for e in entries]
    if entries and entries[-1].get("generation") != meta.get("generation"):
        raise GenerationError(f"{directory}/{CURRENT}: its last delta is not its generation")
    try:
        number = int(meta["generation"])
    except (KeyError, TypeError, ValueError):
        raise GenerationError(f"{directory}/{CURRENT}: malformed") from None
    return Generation(number, apply_deltas(base, deltas), time.monotonic())


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
