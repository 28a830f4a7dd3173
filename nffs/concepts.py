"""The concept catalog (SPEC 2.4): names, ids and pinned points of `concepts/*`.

Why its own SQLite file (`FIELD_DIR/concepts.db`) rather than the page metadata:
concepts are namespace state of the FUSE layer, not page state, and their access
pattern differs (directory listings of 10^5+ names, renames, xattrs). Keeping them
apart lets the page store evolve without a schema shared across layers.

One owner: the daemon's trio thread (sqlite3 connections are not shared across
threads). Every mutation is its own short transaction in WAL mode with
``synchronous=NORMAL``: a commit is a WAL append, survives a daemon crash, and costs
no fsync. The number of concepts is kept in memory so `stats` and `statfs` are O(1).

Ids come from ``AUTOINCREMENT`` and are never reused: a concept's inode is derived
from its id, and a recycled id would let the kernel mistake a new concept for a
deleted one it still has cached. Ids are also the directory offset tokens of
`readdir`, which is why listing a page of entries is "the next N ids after X".
"""
from __future__ import annotations

import logging
import os
import sqlite3
from dataclasses import dataclass
from typing import Iterator

from .errors import ReadOnly

log = logging.getLogger(__name__)

CATALOG_NAME = "concepts.db"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS concepts(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name BLOB NOT NULL UNIQUE,
    point TEXT
);
"""


@dataclass(frozen=True)
class Concept:
    """One catalog entry; `point` is the pinned point text, or None (point from the name)."""

    id: int
    name: bytes
    point: str | None


class ConceptCatalog:
    """Create / find / rename / delete concepts and page through them by id."""

    def __init__(self, conn: sqlite3.Connection, *, read_only: bool = False) -> None:
        self._conn = conn
        self.read_only = read_only
        (self._count,) = conn.execute("SELECT COUNT(*) FROM concepts").fetchone()

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, field_dir: str, *, read_only: bool = False) -> "ConceptCatalog":
        """Open (or create, mode 0600) FIELD_DIR/concepts.db.

        A read-only mount never creates or changes the file: a missing catalog is
        served as an empty in-memory one.
        """
        path = os.path.join(field_dir, CATALOG_NAME)
        if read_only:
            if not os.path.exists(path):  # no concept was ever made: an empty catalog, in memory
                return cls.in_memory(read_only=True)
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
            return cls(conn, read_only=True)
        # Create the file ourselves so that it is private from its first byte.
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.fchmod(fd, 0o600)
        finally:
            os.close(fd)
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(_SCHEMA)
        for suffix in ("-wal", "-shm"):
            try:
                os.chmod(path + suffix, 0o600)
            except FileNotFoundError:
                pass
        return cls(conn)

    @classmethod
    def in_memory(cls, *, read_only: bool = False) -> "ConceptCatalog":
        """An empty catalog that lives as long as the object (tests, read-only mounts)."""
        conn = sqlite3.connect(":memory:", isolation_level=None)
        conn.executescript(_SCHEMA)
        return cls(conn, read_only=read_only)

    def close(self) -> None:
        self._conn.close()

    # ------------------------------------------------------------------ queries
    @property
    def count(self) -> int:
        """Number of concepts, O(1)."""
        return self._count

    def by_name(self, name: bytes) -> Concept | None:
        row = self._conn.execute("SELECT id, name, point FROM concepts WHERE name=?", (bytes(name),)).fetchone()
        return None if row is None else Concept(row[0], bytes(row[1]), row[2])

    def by_id(self, cid: int) -> Concept | None:
        row = self._conn.execute("SELECT id, name, point FROM concepts WHERE id=?", (cid,)).fetchone()
        return None if row is None else Concept(row[0], bytes(row[1]), row[2])

    def page_after(self, after_id: int, limit: int) -> list[Concept]:
        """Up to `limit` concepts with id > after_id, in id order: one readdir batch."""
        rows = self._conn.execute(
            "SELECT id, name, point FROM concepts WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit)
        ).fetchall()
        return [Concept(r[0], bytes(r[1]), r[2]) for r in rows]

    def iter_all(self, batch: int = 1024) -> Iterator[Concept]:
        """Every concept in id order, fetched in batches (never the whole table at once)."""
        after = 0
        while True:
            page = self.page_after(after, batch)
            if not page:
                return
            yield from page
            after = page[-1].id

    # ------------------------------------------------------------------ changes
    def create(self, name: bytes) -> Concept:
        """The concept called `name`, created if needed (creating an existing name is a no-op)."""
        self._check_writable()
        existing = self.by_name(name)
        if existing is not None:
            return existing
        cur = self._conn.execute("INSERT INTO concepts(name) VALUES (?)", (bytes(name),))
        self._count += 1
        return Concept(int(cur.lastrowid), bytes(name), None)

    def rename(self, cid: int, new_name: bytes, *, point: str | None = None) -> int | None:
        """Give concept `cid` the name `new_name`, replacing a concept of that name.

        `point`, if given, is pinned in the same transaction (a name-derived concept keeps
        its content across a rename). Returns the id of the replaced concept, or None.
        """
        self._check_writable()
        replaced = self.by_name(new_name)
        if replaced is not None and replaced.id == cid:
            return None
        with self._transaction():
            if replaced is not None:
                self._conn.execute("DELETE FROM concepts WHERE id=?", (replaced.id,))
            if point is not None:
                self._conn.execute("UPDATE concepts SET point=? WHERE id=?", (point, cid))
            self._conn.execute("UPDATE concepts SET name=? WHERE id=?", (bytes(new_name), cid))
        if replaced is not None:
            self._count -= 1
            return replaced.id
        return None

    def delete(self, cid: int) -> bool:
        self._check_writable()
        cur = self._conn.execute("DELETE FROM concepts WHERE id=?", (cid,))
        if cur.rowcount:
            self._count -= 1
            return True
        return False

    def set_point(self, cid: int, point: str | None) -> bool:
        """Pin (or with None, unpin) a concept's point; False if there is no such concept."""
        self._check_writable()
        cur = self._conn.execute("UPDATE concepts SET point=? WHERE id=?", (point, cid))
        return bool(cur.rowcount)

    # ------------------------------------------------------------------ helpers
    def _check_writable(self) -> None:
        if self.read_only:
            raise ReadOnly("the concept catalog is open read-only")

    class _Txn:
        def __init__(self, conn: sqlite3.Connection) -> None:
            self.conn = conn

        def __enter__(self) -> None:
            self.conn.execute("BEGIN IMMEDIATE")

        def __exit__(self, exc_type, exc, tb) -> None:
            self.conn.execute("COMMIT" if exc_type is None else "ROLLBACK")

    def _transaction(self) -> "ConceptCatalog._Txn":
        return ConceptCatalog._Txn(self._conn)
