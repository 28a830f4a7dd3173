"""ConceptCatalog (nffs/concepts.py): the concepts/ namespace in its own SQLite file."""
from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

import pytest

from nffs.concepts import CATALOG_NAME, ConceptCatalog
from nffs.errors import ReadOnly


def test_create_find_rename_delete_and_count(tmp_path: Path) -> None:
    cat = ConceptCatalog.open(str(tmp_path))
    try:
        a = cat.create(b"a")
        b = cat.create(b"b")
        assert cat.create(b"a") == a  # creating an existing name is a no-op
        assert cat.count == 2
        assert cat.by_name(b"a") == a and cat.by_id(b.id) == b and cat.by_name(b"zz") is None
        assert cat.set_point(a.id, "0.1 0.2 0.3") and cat.by_id(a.id).point == "0.1 0.2 0.3"
        assert not cat.set_point(999, "0 0 0")
        # rename replacing an existing name: the replaced concept is gone, the count follows
        assert cat.rename(a.id, b"b") == b.id
        assert cat.count == 1 and cat.by_id(b.id) is None and cat.by_name(b"b").id == a.id
        assert cat.rename(a.id, b"b") is None  # onto itself
        # rename pinning a point in the same transaction
        cat.rename(a.id, b"c", point="0.5 0.5 0.5")
        assert cat.by_name(b"c").point == "0.5 0.5 0.5"
        assert cat.delete(a.id) and not cat.delete(a.id)
        assert cat.count == 0
        # ids are never reused: a kernel-cached inode cannot come back as another concept
        assert cat.create(b"d").id > b.id
    finally:
        cat.close()


def test_pages_after_an_id_persistence_and_private_file(tmp_path: Path) -> None:
    cat = ConceptCatalog.open(str(tmp_path))
    ids = [cat.create(f"n{i}".encode()).id for i in range(50)]
    cat.delete(ids[10])
    page = cat.page_after(ids[5], 10)
    assert [c.id for c in page] == ids[6:10] + ids[11:17]
    assert cat.page_after(ids[-1], 10) == []
    assert [c.id for c in cat.iter_all(batch=7)] == ids[:10] + ids[11:]
    cat.close()
    path = tmp_path / CATALOG_NAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for suffix in ("-wal", "-shm"):
        if os.path.exists(str(path) + suffix):
            assert stat.S_IMODE(os.stat(str(path) + suffix).st_mode) == 0o600
    again = ConceptCatalog.open(str(tmp_path))
    try:
        assert again.count == 49 and again.by_name(b"n49").id == ids[-1]
        probe = sqlite3.connect(path)  # WAL is a property of the file: any connection sees it
        try:
            assert probe.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        finally:
            probe.close()
    finally:
        again.close()


def test_read_only_catalog_changes_nothing(tmp_path: Path) -> None:
    empty = ConceptCatalog.open(str(tmp_path), read_only=True)
    assert empty.count == 0 and not (tmp_path / CATALOG_NAME).exists()  # never created by a read-only mount
    empty.close()
    rw = ConceptCatalog.open(str(tmp_path))
    rw.create(b"x")
    rw.close()
    ro = ConceptCatalog.open(str(tmp_path), read_only=True)
    try:
        assert ro.count == 1 and ro.by_name(b"x") is not None
        with pytest.raises(ReadOnly):
            ro.create(b"y")
        with pytest.raises(ReadOnly):
            ro.delete(1)
    finally:
        ro.close()


