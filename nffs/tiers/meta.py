"""Field-level metadata in meta.db (SQLite, WAL): identity, tier names and ids, settings.

Page metadata lives in the same database but is owned by the page table
(pagetable.py), which has its own connections; this module never touches it.
The database is private to the field's owner (mode 0600).
"""
from __future__ import annotations

import logging
import os
import sqlite3
import threading

log = logging.getLogger(__name__)

DB_NAME = "meta.db"
SCHEMA_VERSION = 2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tiers(id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL);
"""

class IncompatibleField(Exception):
    """A field written by an nffs with another metadata schema."""


class MetaDB:
    def __init__(self, field_dir: str, *, create: bool = False, read_only: bool = False, immutable: bool = False) -> None:
        self.path = os.path.join(field_dir, DB_NAME)
        self.read_only_db = read_only
        if not create and not os.path.exists(self.path):
            raise FileNotFoundError(f"{field_dir}: not an nffs field (no {DB_NAME})")
        # a reader mount: immutable, so no lock and no -wal/-shm files in the shared field dir
        uri = f"file:{self.path}?mode=ro" + ("&immutable=1" if immutable else "") if read_only else f"file:{self.path}"
        if create and not os.path.exists(self.path):
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
        self.conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        self.lock = threading.RLock()
        self._in_tx = False
        self.conn.execute("PRAGMA busy_timeout=10000")
        if not read_only:
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")
            self.conn.execute("PRAGMA cache_size=-256")  # a few small tables: no 2 MB page cache
            self.conn.executescript(_SCHEMA)
            version = self.get_meta("schema_version")
            if version is None:
                self.set_meta("schema_version", str(SCHEMA_VERSION))
                self.commit()
            elif int(version) != SCHEMA_VERSION:
                self.conn.close()
                raise IncompatibleField(
                    f"{field_dir}: metadata schema {version}, this nffs reads schema {SCHEMA_VERSION}; "
                    "copy the data out with the nffs that wrote it (cat params) and import it into a new field"
                )

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
