"""Field metadata in SQLite (WAL): page table, tier names, concepts, field identity.

Commits are cheap (WAL, synchronous=NORMAL: a write() to the log, no fsync), so the
trio thread may commit; durability points call `sync()` from a worker thread, which
fsyncs the WAL file.  Survives kill -9 at all times; survives power loss after sync().
"""
from __future__ import annotations

import logging
import os
import sqlite3
import threading
from dataclasses import dataclass
from typing import Iterator

log = logging.getLogger(__name__)

DB_NAME = "meta.db"
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tiers(id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL);
CREATE TABLE IF NOT EXISTS pages(
    page INTEGER PRIMARY KEY,
    home INTEGER NOT NULL,
    home_sum INTEGER,
    mem INTEGER,
    dirty INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS pages_mem ON pages(mem) WHERE mem IS NOT NULL;
CREATE INDEX IF NOT EXISTS pages_home ON pages(home);
CREATE TABLE IF NOT EXISTS concepts(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name BLOB UNIQUE NOT NULL,
    point TEXT
);
"""

_SIGN = 1 << 63
_MISSING = object()
ROW_CACHE_LIMIT = 1 << 16


def to_signed64(value: int) -> int:
    """SQLite integers are signed; xxh3 digests are not."""
    return value - (1 << 64) if value >= _SIGN else value


def to_unsigned64(value: int) -> int:
    return value + (1 << 64) if value < 0 else value


@dataclass
class PageRow:
    page: int
    home: int
    home_sum: int | None  # unsigned; None while the only copy is a dirty memory copy
    mem: int | None
    dirty: bool


class MetaDB:
    def __init__(self, field_dir: str, *, create: bool = False, read_only: bool = False) -> None:
        self.path = os.path.join(field_dir, DB_NAME)
        if not create and not os.path.exists(self.path):
            raise FileNotFoundError(f"{field_dir}: not an nffs field (no {DB_NAME})")
        uri = f"file:{self.path}?mode=ro" if read_only else f"file:{self.path}"
        self.conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        self.lock = threading.RLock()
        self._in_tx = False
        # Write-through cache of page rows (None = not materialised): every row change goes
        # through put_page/delete_page, so it is never stale. Bounded; cleared when full.
        self._rows: dict[int, tuple | None] = {}
        self.conn.execute("PRAGMA busy_timeout=10000")
        if not read_only:
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")
            self.conn.executescript(_SCHEMA)
            if self.get_meta("schema_version") is None:
                self.set_meta("schema_version", str(SCHEMA_VERSION))
                self.commit()

    # -- transactions ---------------------------------------------------------------
    def _begin(self) -> None:
        if not self._in_tx:
            self.conn.execute("BEGIN")
            self._in_tx = True

    def commit(self) -> None:
        with self.lock:
            if self._in_tx:
                self.conn.execute("COMMIT")
                self._in_tx = False

    def sync(self) -> None:
        """Commit and fsync the log: everything recorded so far survives power loss."""
        self.commit()
        with self.lock:
            for suffix in ("-wal", ""):
                try:
                    fd = os.open(self.path + suffix, os.O_RDONLY)
                except FileNotFoundError:
                    continue
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)

    def close(self) -> None:
        with self.lock:
            self.commit()
            try:
                self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error:
                pass
            self.conn.close()

    # -- meta and tiers -------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else row[0]

    def set_meta(self, key: str, value: str) -> None:
        with self.lock:
            self._begin()
            self.conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    def tier_id(self, name: str) -> int:
        """Stable small id for a tier name (ids survive tier reordering between mounts)."""
        with self.lock:
            row = self.conn.execute("SELECT id FROM tiers WHERE name=?", (name,)).fetchone()
            if row:
                return row[0]
            self._begin()
            cur = self.conn.execute("INSERT INTO tiers(name) VALUES (?)", (name,))
            return int(cur.lastrowid)

    def tier_names(self) -> dict[int, str]:
        return dict(self.conn.execute("SELECT id, name FROM tiers"))

    # -- pages ----------------------------------------------------------------------
    @staticmethod
    def _row(r: tuple) -> PageRow:
        return PageRow(r[0], r[1], None if r[2] is None else to_unsigned64(r[2]), r[3], bool(r[4]))

    def get_page(self, page: int) -> PageRow | None:
        cached = self._rows.get(page, _MISSING)
        if cached is _MISSING:
            r = self.conn.execute("SELECT page, home, home_sum, mem, dirty FROM pages WHERE page=?", (page,)).fetchone()
            row = None if r is None else self._row(r)
            self._remember(page, row)
            return row
        return None if cached is None else PageRow(page, *cached)

    def _remember(self, page: int, row: PageRow | None) -> None:
        if len(self._rows) >= ROW_CACHE_LIMIT:
            self._rows.clear()
        self._rows[page] = None if row is None else (row.home, row.home_sum, row.mem, row.dirty)

    def put_page(self, row: PageRow) -> None:
        self._remember(row.page, row)
        with self.lock:
            self._begin()
            self.conn.execute(
                "INSERT OR REPLACE INTO pages(page, home, home_sum, mem, dirty) VALUES (?, ?, ?, ?, ?)",
                (row.page, row.home, None if row.home_sum is None else to_signed64(row.home_sum), row.mem, int(row.dirty)),
            )

    def delete_page(self, page: int) -> None:
        self._remember(page, None)
        with self.lock:
            self._begin()
            self.conn.execute("DELETE FROM pages WHERE page=?", (page,))

    def iter_pages(self) -> Iterator[PageRow]:
        cur = self.conn.execute("SELECT page, home, home_sum, mem, dirty FROM pages ORDER BY page")
        for r in cur:
            yield self._row(r)

    def count_by_home(self) -> dict[int, int]:
        """Pages per home tier, written back or not: each counts against its home's capacity."""
        return dict(self.conn.execute("SELECT home, COUNT(*) FROM pages GROUP BY home"))

    def count_by_mem(self) -> dict[int, int]:
        return dict(self.conn.execute("SELECT mem, COUNT(*) FROM pages WHERE mem IS NOT NULL GROUP BY mem"))

    def homes_on(self, tier: int, limit: int) -> list[PageRow]:
        cur = self.conn.execute(
            "SELECT page, home, home_sum, mem, dirty FROM pages WHERE home=? AND home_sum IS NOT NULL LIMIT ?", (tier, limit)
        )
        return [self._row(r) for r in cur]

    # -- concepts -------------------------------------------------------------------
    def concept_list(self) -> list[tuple[int, bytes, str | None]]:
        return [(r[0], bytes(r[1]), r[2]) for r in self.conn.execute("SELECT id, name, point FROM concepts ORDER BY id")]

    def concept_by_name(self, name: bytes) -> tuple[int, str | None] | None:
        r = self.conn.execute("SELECT id, point FROM concepts WHERE name=?", (name,)).fetchone()
        return None if r is None else (r[0], r[1])

    def concept_by_id(self, cid: int) -> tuple[bytes, str | None] | None:
        r = self.conn.execute("SELECT name, point FROM concepts WHERE id=?", (cid,)).fetchone()
        return None if r is None else (bytes(r[0]), r[1])

    def concept_create(self, name: bytes) -> int:
        with self.lock:
            self._begin()
            cur = self.conn.execute("INSERT INTO concepts(name) VALUES (?)", (name,))
            return int(cur.lastrowid)

    def concept_set_point(self, cid: int, point: str | None) -> None:
        with self.lock:
            self._begin()
            self.conn.execute("UPDATE concepts SET point=? WHERE id=?", (point, cid))

    def concept_rename(self, cid: int, new_name: bytes) -> None:
        with self.lock:
            self._begin()
            self.conn.execute("DELETE FROM concepts WHERE name=? AND id<>?", (new_name, cid))
            self.conn.execute("UPDATE concepts SET name=? WHERE id=?", (new_name, cid))

    def concept_delete(self, cid: int) -> None:
        with self.lock:
            self._begin()
            self.conn.execute("DELETE FROM concepts WHERE id=?", (cid,))
