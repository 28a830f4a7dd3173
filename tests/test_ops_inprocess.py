"""FieldOperations driven in-process (no FUSE, no kernel): the node classes, the error
contract and the bounds of issue 9, against a real field opened from a temp dir.

The two pyfuse3 calls that need a live session (`notify_store`, `readdir_reply`) are
replaced by recorders, which also lets these tests see exactly what the kernel cache
would have been told.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import stat
import threading
from dataclasses import dataclass, field as dc_field
from pathlib import Path
from typing import Any, AsyncIterator

import numpy as np
import pyfuse3
import pytest
import trio

from nffs import field as field_module
from nffs.concepts import ConceptCatalog
from nffs.encoding import hashgrid
from nffs.encoding.layout import FieldConfig
from nffs.errors import InvalidInput, NoSpace, PageIOError
from nffs.field import INLINE_POINTS, Field
from nffs.fs import inodes as ino
from nffs.fs.errors import store_errors
from nffs.fs.nodes.hints import MAX_HINT_LINE
from nffs.fs.ops import FieldOperations
from nffs.tiers.fielddir import init_field, open_field
from nffs.tiers.spec import parse_tier_spec

LEVELS, LOG2_T, DIMS, FEATS = 4, 10, 3, 2
WIDTH = LEVELS * FEATS
MAX_BATCH = 100


@dataclass
class Env:
    ops: FieldOperations
    field: Field
    catalog: ConceptCatalog
    notified: list[tuple[int, int, bytes]] = dc_field(default_factory=list)
    hinted: list[list[int]] = dc_field(default_factory=list)


def reply(token: list, name: bytes, attr: pyfuse3.EntryAttributes, next_id: int) -> bool:
    """A readdir token: a list with room for `token[0]` more entries after the count."""
    if token[0] <= 0:
        return False
    token[0] -= 1
    token.append((name, attr, next_id))
    return True


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    field_dir = tmp_path / "field"
    tiers = [parse_tier_spec(f"dram={tmp_path}/dram,kind=dram,capacity=8M"), parse_tier_spec(f"nvme={tmp_path}/nvme,kind=nvme")]
    init_field(str(field_dir), FieldConfig(dims=DIMS, levels=LEVELS, log2_table_size=LOG2_T, features=FEATS), tiers)
    opened = open_field(str(field_dir))
    catalog = ConceptCatalog.open(opened.field_dir)
    fld = Field(opened.layout, opened.store, opened.field_dir)
    e = Env(ops=None, field=fld, catalog=catalog)  # type: ignore[arg-type]
    e.ops = FieldOperations(fld, catalog, max_batch=MAX_BATCH, hint_sink=e.hinted.append,
                            notify_store=lambda inode, off, data: e.notified.append((inode, off, bytes(data))),
                            readdir_reply=reply)
    try:
        yield e
    finally:
        catalog.close()
        opened.close()


# ---------------------------------------------------------------------- helpers
async def resolve(ops: FieldOperations, path: str) -> int:
    inode = ino.ROOT
    for part in [p for p in path.split("/") if p]:
        inode = (await ops.lookup(inode, part.encode(), None)).st_ino
    return inode


async def open_path(ops: FieldOperations, path: str, flags: int = os.O_RDONLY) -> int:
    return (await ops.open(await resolve(ops, path), flags, None)).fh


async def read_all(ops: FieldOperations, path: str, size: int = 1 << 20) -> bytes:
    fh = await open_path(ops, path)
    try:
        return await ops.read(fh, 0, size)
    finally:
        await ops.release(fh)


async def listdir(ops: FieldOperations, path: str, per_call: int = 1000) -> tuple[list[bytes], int]:
    """Names, like the kernel: readdir again from the last offset until a call adds nothing."""
    fh = await ops.opendir(await resolve(ops, path), None)
    names: list[bytes] = []
    offset, calls = 0, 0
    while True:
        token: list[Any] = [per_call]
        await ops.readdir(fh, offset, token)
        calls += 1
        entries = token[1:]
        if not entries:
            return names, calls
        names += [name for name, _, _ in entries]
        offset = entries[-1][2]


async def errno_of(awaitable) -> int:
    with pytest.raises(pyfuse3.FUSEError) as err:
        await awaitable
    return err.value.errno


# ---------------------------------------------------------------------- nodes
async def test_namespace_attributes_and_documents(env: Env) -> None:
    ops = env.ops
    names, _ = await listdir(ops, "/")
    assert set(names) == {b"field.json", b"params", b"stats", b"metrics", b"query", b"hints", b"levels", b"concepts", b"at"}
    assert (await listdir(ops, "/levels"))[0] == [f"{i:02d}".encode() for i in range(LEVELS)]
    info = json.loads(await read_all(ops, "field.json"))
    assert info["levels"] == LEVELS and [t["kind"] for t in info["tiers"]] == ["dram", "nvme"]
    assert set(info["tiers"][0]) == {"name", "path", "kind", "capacity", "numa", "latency_s"}
    attr = await ops.getattr(await resolve(ops, "params"))
    assert attr.st_size == info["params_bytes"] and stat.S_ISREG(attr.st_mode)
    assert (await ops.getattr(ino.CONCEPTS_DIR)).st_mode & stat.S_IFDIR
    assert await errno_of(ops.lookup(ino.ROOT, b"decoder.npz", None)) == errno.ENOENT
    assert await errno_of(ops.lookup(ino.LEVELS_DIR, b"99", None)) == errno.ENOENT
    assert await errno_of(ops.getattr(ino.CONCEPT_BASE + 12345)) == errno.ENOENT
    assert await errno_of(ops.opendir(ino.PARAMS, None)) == errno.ENOTDIR
    assert await errno_of(ops.open(ino.FIELD_JSON, os.O_RDWR, None)) == errno.EACCES
    assert await errno_of(ops.open(ino.HINTS, os.O_RDWR, None)) == errno.EACCES
    stats = json.loads(await read_all(ops, "stats"))
    assert stats["concepts"] == 0 and stats["errors"] == {"unexpected": 0, "EACCES": 2, "ENOENT": 3, "ENOTDIR": 1}
    assert 'nffs_errors_total{kind="unexpected"} 0' in (await read_all(ops, "metrics")).decode()
    # file infos: only the parameter views and field.json go through the kernel page cache
    for path, keep in (("params", True), ("levels/00", True), ("field.json", True), ("query", False), ("stats", False)):
        info_fh = await ops.open(await resolve(ops, path), os.O_RDONLY, None)
        assert (info_fh.keep_cache, info_fh.direct_io) == (keep, not keep), path
        await ops.release(info_fh.fh)
    assert ops.handles == {}


async def test_writes_through_one_view_are_pushed_to_the_others(env: Env) -> None:
    ops, layout = env.ops, env.field.layout
    lo, hi = layout.level_byte_range(1)
    params = await open_path(ops, "params", os.O_RDWR)
    level1 = await open_path(ops, "levels/01", os.O_RDWR)
    data = np.arange(4, dtype="<f4").tobytes()
    assert await ops.write(params, lo + 8, data) == len(data)
    assert env.notified == [(ino.level_inode(1), 8, data)]  # level 0, 2, 3 were never opened
    env.notified.clear()
    assert await ops.write(level1, 0, data) == len(data)
    assert env.notified == [(ino.PARAMS, lo, data)]
    assert await ops.read(params, lo, 16) == data
    # fixed size: a write across the end is short, one at the end is EFBIG
    assert await ops.write(level1, hi - lo - 2, b"abcd") == 2
    assert await errno_of(ops.write(level1, hi - lo, b"ab")) == errno.EFBIG
    # the prefetcher's push reaches every opened view that holds the page
    env.notified.clear()
    page = lo // layout.page_size
    await ops.push_pages([(page, bytes(layout.page_size), None)])
    assert {n[0] for n in env.notified} >= {ino.PARAMS, ino.level_inode(1)}
    # several pages go in one call, in order; a marker's hole is left out
    env.notified.clear()
    ps = layout.page_size
    n = min(ps, layout.params_bytes - page * ps)
    await ops.push_pages([(page, b"\1" * ps, None), (page, b"\2" * ps, (0, 4096))])
    pushed = [(off, b) for inode, off, b in env.notified if inode == ino.PARAMS]
    assert pushed == [(page * ps, b"\1" * n), (page * ps + 4096, b"\2" * (n - 4096))]
    assert (await ops.getattr(ino.PARAMS)).st_blocks > 0  # materialised pages show in du


async def test_a_write_answered_while_a_push_waits_wins_over_the_push(env: Env) -> None:
    """The kernel's notify_store waits for the page lock that a write holds until the daemon
    answers it, and only then copies the push's buffer: the write's bytes must be in it, not
    the bytes fetched before the write (the stale-bytes race of a prefetch push)."""
    ops, ps = env.ops, min(env.field.layout.page_size, env.field.layout.params_bytes)
    params = await open_path(ops, "params", os.O_RDWR)
    page = 0
    waiting, lock_free = threading.Event(), threading.Event()
    landed: dict[tuple[int, int], bytes] = {}

    def notify(inode: int, off: int, data: memoryview) -> None:
        waiting.set()
        assert lock_free.wait(10)  # the page lock is the write's until it is answered
        landed[(inode, off)] = bytes(data)  # then the kernel copies the buffer

    ops.cache.notify_store = notify
    fetched = await ops.read(params, page * ps, ps)
    at, new = ps // 2, b"\7" * 16
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ops.push_pages, [(page, fetched, None)])
        assert await trio.to_thread.run_sync(waiting.wait, 10)
        assert await ops.write(params, page * ps + at, new) == len(new)
        lock_free.set()
    got = landed[(ino.PARAMS, page * ps)]
    assert got[at:at + len(new)] == new
    assert got[:at] == fetched[:at] and got[at + len(new):] == fetched[at + len(new):]
    # a push that landed is forgotten: a later write patches nothing
    landed.clear()
    assert await ops.write(params, page * ps, new) == len(new)
    assert landed == {}


async def test_a_write_of_a_page_a_push_reached_is_stored_again_after_it(env: Env) -> None:
    """A write of a page up to date in the kernel reaches the daemon after the kernel copied
    its bytes and unlocked the page: a push that landed in between put the old bytes back.
    The daemon stores the written bytes into the writer's view once more before it answers
    (only for pages a push may have raced), and answers anyway after a few milliseconds if
    that store waits for a page lock: the kernel's lock for this very write."""
    ops, cache = env.ops, env.ops.cache
    ps = min(env.field.layout.page_size, env.field.layout.params_bytes)
    params = await open_path(ops, "params", os.O_RDWR)
    at, new = ps // 2, b"\5" * 16
    async with trio.open_nursery() as nursery:
        await nursery.start(cache.run)
        assert await ops.write(params, at, b"\4" * 16) == 16
        assert not cache.pending_stores() and env.notified == []  # no push near: nothing to put right
        fetched = await ops.read(params, 0, ps)
        await ops.push_pages([(0, fetched, None)])
        env.notified.clear()
        assert await ops.write(params, at, new) == len(new)
        assert env.notified == [(ino.PARAMS, at, new)]  # (a hop: before the answer)
        # the page lock held for this very write: the store lands after the answer
        answered = threading.Event()
        plain_notify = cache.notify_store

        def notify_after_the_answer(inode: int, off: int, data: memoryview) -> None:
            assert answered.wait(10)
            plain_notify(inode, off, data)

        cache.notify_store = notify_after_the_answer
        env.notified.clear()
        with trio.fail_after(5):
            assert await ops.write(params, at, b"\6" * 16) == 16
        answered.set()
        with trio.fail_after(10):
            while cache.pending_stores():
                await trio.sleep(0.01)
        assert env.notified == [(ino.PARAMS, at, b"\6" * 16)]
        nursery.cancel_scope.cancel()


async def test_concepts_lifecycle_xattrs_and_cache_refresh(env: Env) -> None:
    ops = env.ops
    fi, attr = await ops.create(ino.CONCEPTS_DIR, b"cat", 0o644, os.O_RDWR | os.O_CREAT, None)
    assert attr.st_size == WIDTH * 4 and attr.st_ino >= ino.CONCEPT_BASE
    await ops.open(ino.PARAMS, os.O_RDONLY, None)  # a cached view exists: concept writes must refresh it
    target = np.linspace(-0.5, 0.5, WIDTH, dtype="<f4")
    assert await ops.write(fi.fh, 0, target.tobytes()) == WIDTH * 4
    assert np.allclose(np.frombuffer(await ops.read(fi.fh, 0, WIDTH * 4), "<f4"), target, atol=1e-5)
    assert env.notified and all(n[0] == ino.PARAMS for n in env.notified)
    for off, payload in ((2, b"\0" * 4), (0, b"\0" * 3), (WIDTH * 4, b"\0" * 4), (0, np.array([np.nan], "<f4").tobytes())):
        assert await errno_of(ops.write(fi.fh, off, payload)) == errno.EINVAL
    # xattr: shown, pinned, refused, unpinned
    point = hashgrid.point_from_name(b"cat", DIMS)
    shown = (await ops.getxattr(attr.st_ino, b"user.nffs.point", None)).decode()
    assert np.allclose([float(v) for v in shown.split()], point, atol=1e-6)
    for bad in (b"0.1 0.2", b"0.1 0.2 1.5", b"\xff", b"nan 0 0"):
        assert await errno_of(ops.setxattr(attr.st_ino, b"user.nffs.point", bad, None)) == errno.EINVAL
    assert await errno_of(ops.setxattr(attr.st_ino, b"user.other", b"1", None)) == errno.ENOTSUP
    assert await errno_of(ops.getxattr(ino.PARAMS, b"user.nffs.point", None)) == pyfuse3.ENOATTR
    # the kernel's own probe before every write (security.capability) and ACL lookups: no
    # such attribute, on any node, and not counted among the errors users made
    errors_before = ops.stats()["errors"]
    for inode in (ino.PARAMS, attr.st_ino, ino.ROOT):
        for name in (b"security.capability", b"system.posix_acl_access"):
            assert await errno_of(ops.getxattr(inode, name, None)) == pyfuse3.ENOATTR
    assert ops.stats()["errors"] == errors_before
    await ops.setxattr(attr.st_ino, b"user.nffs.point", b"0.25,0.5,0.75", None)
    assert env.catalog.by_name(b"cat").point == "0.25 0.5 0.75"
    await ops.removexattr(attr.st_ino, b"user.nffs.point", None)
    assert env.catalog.by_name(b"cat").point is None
    # names
    assert await errno_of(ops.create(ino.CONCEPTS_DIR, b"x" * 256, 0o644, os.O_RDWR, None)) == errno.ENAMETOOLONG
    assert await errno_of(ops.mknod(ino.CONCEPTS_DIR, b"..", stat.S_IFREG | 0o644, 0, None)) == errno.EINVAL
    assert await errno_of(ops.create(ino.LEVELS_DIR, b"x", 0o644, os.O_RDWR, None)) == errno.EPERM
    # rename keeps content (the name-derived point is pinned), replaces, refuses across dirs
    await ops.mknod(ino.CONCEPTS_DIR, b"dog", stat.S_IFREG | 0o644, 0, None)
    await ops.rename(ino.CONCEPTS_DIR, b"cat", ino.CONCEPTS_DIR, b"dog", 0, None)
    assert (await listdir(ops, "concepts"))[0] == [b"dog"]
    assert np.allclose(np.frombuffer(await read_all(ops, "concepts/dog"), "<f4"), target, atol=1e-5)
    assert await errno_of(ops.rename(ino.CONCEPTS_DIR, b"dog", ino.ROOT, b"dog", 0, None)) == errno.EXDEV
    assert await errno_of(ops.rename(ino.ROOT, b"params", ino.ROOT, b"p2", 0, None)) == errno.EPERM
    await ops.unlink(ino.CONCEPTS_DIR, b"dog", None)
    assert await errno_of(ops.read(fi.fh, 0, 4)) == errno.ENOENT  # the open handle's concept is gone
    assert await errno_of(ops.unlink(ino.CONCEPTS_DIR, b"dog", None)) == errno.ENOENT
    assert env.catalog.count == 0


async def test_concepts_readdir_pages_by_id_and_stats_never_scan(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    ops, catalog = env.ops, env.catalog
    names = [f"c{i:05d}".encode() for i in range(1500)]
    for name in names:
        catalog.create(name)
    calls: list[tuple[int, int]] = []
    real_page_after = catalog.page_after

    def counting(after: int, limit: int):
        calls.append((after, limit))
        return real_page_after(after, limit)

    monkeypatch.setattr(catalog, "page_after", counting)
    listed, readdir_calls = await listdir(ops, "concepts", per_call=100)
    assert listed == names and readdir_calls == 16
    # each readdir call resumes at the id it was given and reads only what it returns
    assert len(calls) <= 2 * readdir_calls
    assert calls[0] == (0, calls[0][1]) and sorted({a for a, _ in calls}) == [a for a, _ in sorted(set(calls))]
    # a concept deleted between two calls does not derail the listing
    fh = await ops.opendir(ino.CONCEPTS_DIR, None)
    token: list[Any] = [10]
    await ops.readdir(fh, 0, token)
    catalog.delete(catalog.by_name(names[10]).id)
    token2: list[Any] = [5]
    await ops.readdir(fh, token[-1][2], token2)
    assert [n for n, _, _ in token2[1:]] == names[11:16]

    # stats and statfs are O(1) in the number of concepts: they never touch the table
    def boom(*args: Any, **kwargs: Any):
        raise AssertionError("stats/statfs scanned the concept table")

    for method in ("page_after", "by_name", "by_id", "iter_all"):
        monkeypatch.setattr(catalog, method, boom)
    assert ops.stats()["concepts"] == 1499
    assert (await ops.statfs(None)).f_files == 16 + LEVELS + 1499


async def test_at_points_resolve_and_are_forgotten(env: Env) -> None:
    ops = env.ops
    attr = await ops.lookup(ino.AT_DIR, b"0.5,0.5,0.5", None)
    again = await ops.lookup(ino.AT_DIR, b"0.5,0.5,0.5", None)
    assert attr.st_ino == again.st_ino and ino.is_at(attr.st_ino)
    fh = (await ops.open(attr.st_ino, os.O_RDONLY, None)).fh
    values = [float(v) for v in (await ops.read(fh, 0, 4096)).split()]
    expect = (await env.field.infer(np.array([[0.5, 0.5, 0.5]], np.float32)))[0]
    assert np.allclose(values, expect)
    await ops.release(fh)
    for bad in (b"0.5,0.5", b"a,b,c", b"0.5,0.5,2", b"\xff"):
        assert await errno_of(ops.lookup(ino.AT_DIR, bad, None)) == errno.EINVAL
    assert await errno_of(ops.open(attr.st_ino, os.O_WRONLY, None)) == errno.EACCES
    await ops.forget([(attr.st_ino, 2)])
    assert await errno_of(ops.getattr(attr.st_ino, None)) == errno.ENOENT
    assert ops.at_dir.known == 0


async def test_decoder_create_install_reject_remove(env: Env) -> None:
    import io

    ops = env.ops
    rng = np.random.default_rng(3)
    buf = io.BytesIO()
    np.savez(buf, W0=rng.normal(size=(WIDTH, 3)).astype("<f4"), b0=np.zeros(3, "<f4"))
    fi, attr = await ops.create(ino.ROOT, b"decoder.npz", 0o644, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, None)
    assert attr.st_size == 0
    assert await ops.write(fi.fh, 0, buf.getvalue()) == len(buf.getvalue())
    await ops.flush(fi.fh)
    await ops.release(fi.fh)
    assert env.field.decoder is not None and env.field.decoder.out_width == 3
    assert b"decoder.npz" in (await listdir(ops, "/"))[0]
    fh = (await ops.open(ino.DECODER, os.O_WRONLY | os.O_TRUNC, None)).fh
    await ops.write(fh, 0, b"not an npz")
    assert await errno_of(ops.flush(fh)) == errno.EINVAL
    await ops.release(fh)
    assert env.field.decoder.out_width == 3  # the bad file changed nothing
    # written front to back only: a gap is refused without allocating it
    fh = (await ops.open(ino.DECODER, os.O_WRONLY | os.O_TRUNC, None)).fh
    assert await errno_of(ops.write(fh, 256 << 20, b"PK")) == errno.EINVAL
    assert len(ops.handles[fh].buffer) == 0
    await ops.release(fh)
    assert env.field.decoder.out_width == 3
    await ops.unlink(ino.ROOT, b"decoder.npz", None)
    assert env.field.decoder is None
    assert await errno_of(ops.unlink(ino.ROOT, b"decoder.npz", None)) == errno.ENOENT
    assert await errno_of(ops.unlink(ino.ROOT, b"params", None)) == errno.EPERM


# ---------------------------------------------------------------------- error contract
async def test_unexpected_exception_is_eio_counted_and_logged(env: Env, monkeypatch: pytest.MonkeyPatch,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    ops = env.ops

    async def broken(points: np.ndarray, *, observe: bool = True) -> np.ndarray:
        raise RuntimeError("injected bug")

    monkeypatch.setattr(env.field, "encode", broken)
    await ops.mknod(ino.CONCEPTS_DIR, b"c", stat.S_IFREG | 0o644, 0, None)
    fh = await open_path(ops, "concepts/c")
    with caplog.at_level(logging.ERROR, logger="nffs.fs.errors"):
        assert await errno_of(ops.read(fh, 0, 4)) == errno.EIO
    assert ops.errors.unexpected == 1
    assert ops.stats()["errors"]["unexpected"] == 1
    records = [r for r in caplog.records if r.name == "nffs.fs.errors" and r.levelno == logging.ERROR]
    assert len(records) == 1 and records[0].exc_info is not None
    assert "injected bug" in caplog.text and "Traceback" in caplog.text
    # the daemon serves on: other requests still work
    assert json.loads(await read_all(ops, "stats"))["errors"]["unexpected"] == 1


async def test_domain_errors_keep_their_errno_and_are_not_bugs(env: Env, monkeypatch: pytest.MonkeyPatch,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    ops = env.ops
    fh = await open_path(ops, "params")

    async def failing_read(offset: int, size: int, **_: object) -> bytes:
        raise PageIOError("page 0: its home tier is not available")  # the store raises domain errors

    monkeypatch.setattr(env.field.store, "read", failing_read)
    with caplog.at_level(logging.DEBUG, logger="nffs.fs.errors"):
        assert await errno_of(ops.read(fh, 0, 16)) == errno.EIO
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 and errors[0].exc_info is None  # EIO is logged, without a traceback

        async def invalid(offset: int, size: int, **_: object) -> bytes:
            raise InvalidInput("bad")

        monkeypatch.setattr(env.field.store, "read", invalid)
        caplog.clear()
        assert await errno_of(ops.read(fh, 0, 16)) == errno.EINVAL
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]  # a user's mistake is not logged loudly

        async def page_error(offset: int, size: int, **_: object) -> bytes:
            raise PageIOError("checksum mismatch")

        monkeypatch.setattr(env.field.store, "read", page_error)
        assert await errno_of(ops.read(fh, 0, 16)) == errno.EIO
    assert ops.errors.unexpected == 0
    assert ops.stats()["errors"] == {"unexpected": 0, "EIO": 2, "EINVAL": 1}


def test_store_errors_turn_os_errors_into_domain_errors_and_let_the_rest_through() -> None:
    # an OSError from the store or the field directory becomes the domain error of its errno
    with pytest.raises(NoSpace) as full:
        with store_errors():
            raise OSError(errno.ENOSPC, "tier full")
    assert full.value.errno == errno.ENOSPC and isinstance(full.value.__cause__, OSError)
    with pytest.raises(PageIOError) as gone:
        with store_errors():
            raise PermissionError(errno.EACCES, "root replaced")  # a failing device: EIO
    assert gone.value.errno == errno.EIO
    # domain errors and bugs pass unchanged (a bug must not pass for a user error)
    with pytest.raises(InvalidInput):
        with store_errors():
            raise InvalidInput("bad")
    with pytest.raises(ZeroDivisionError):
        with store_errors():
            raise ZeroDivisionError
    with store_errors():  # nothing raised: nothing happens, and the manager can be reused
        pass


# ---------------------------------------------------------------------- issue 9 bounds
async def test_hint_lines_are_bounded(env: Env) -> None:
    ops = env.ops
    fh = await open_path(ops, "hints", os.O_WRONLY)
    handle = ops.handles[fh]
    # a line may arrive in pieces
    assert await ops.write(fh, 0, b"pa") == 2
    assert await ops.write(fh, 2, b"ge 0\npage 0\n") == 12
    assert env.hinted == [[0, 0]]
    # a writer that never sends a newline is refused once the line passes the bound
    chunk = b"x" * (128 << 10)
    assert await errno_of(ops.write(fh, 0, chunk)) == errno.EINVAL
    assert handle.tail == b""  # the buffer was dropped, not kept
    for i in range(8):  # 1 MiB more of it: nothing accumulates
        assert await errno_of(ops.write(fh, 0, b"y" * (MAX_HINT_LINE + 1))) == errno.EINVAL
        assert len(handle.tail) == 0
    assert await ops.write(fh, 0, b"a" * MAX_HINT_LINE) == MAX_HINT_LINE  # exactly the bound is fine
    assert await errno_of(ops.write(fh, 0, b"b")) == errno.EINVAL
    # an over-long line inside one write is refused too, and the handle stays usable
    assert await errno_of(ops.write(fh, 0, b"page 0 " + b" " * MAX_HINT_LINE + b"\n")) == errno.EINVAL
    assert await ops.write(fh, 0, b"range 0 8192\n") == 13
    assert env.hinted[-1] == [0]
    for bad in (b"teleport 1\n", b"page x\n", b"page -1\n", b"page 1\n", b"range 1\n", b"point 0.1 0.2\n", b"concept nope\n"):
        assert await errno_of(ops.write(fh, 0, bad)) == errno.EINVAL, bad
    await ops.write(fh, 0, b"point 0.1 0.2 0.3")
    await ops.flush(fh)  # the unterminated last line counts on close
    assert env.hinted[-1]
    await ops.release(fh)


async def test_query_gaps_and_oversized_requests_allocate_nothing(env: Env) -> None:
    ops = env.ops
    fh = await open_path(ops, "query", os.O_RDWR)
    handle = ops.handles[fh]
    pts = np.random.default_rng(0).random((10, DIMS), dtype=np.float32).astype("<f4")
    expect = np.asarray(await env.field.infer(pts), dtype="<f4").tobytes()
    # a write at an offset beyond the current end is refused without allocating the gap
    assert await ops.write(fh, 12 << 20, b"\0" * 12) == 12
    assert len(handle.request) == 0
    assert await errno_of(ops.read(fh, 0, 4096)) == errno.EINVAL
    assert await ops.write(fh, 0, pts.tobytes()) == pts.nbytes  # the handle stays usable
    assert await ops.read(fh, 0, 1 << 20) == expect
    # a gap inside a request: refused, and the rest of that request is swallowed
    await ops.write(fh, 0, pts.tobytes()[:24])
    await ops.write(fh, 48, pts.tobytes()[48:])
    assert len(handle.request) == 0
    assert await errno_of(ops.read(fh, 0, 4096)) == errno.EINVAL
    # a request is bounded at max_batch * D * 4 bytes
    limit = MAX_BATCH * DIMS * 4
    await ops.write(fh, 0, b"\0" * limit)
    assert len(handle.request) == limit
    await ops.write(fh, limit, b"\0" * 12)
    assert len(handle.request) == 0
    assert await errno_of(ops.read(fh, 0, 4096)) == errno.EINVAL
    # in pieces at increasing offsets is the protocol
    for start in range(0, pts.nbytes, 36):
        await ops.write(fh, start, pts.tobytes()[start:start + 36])
    assert await ops.read(fh, 0, 1 << 20) == expect
    for bad in (pts.tobytes()[:10], np.array([[0.1, np.nan, 0.2]], "<f4").tobytes()):
        await ops.write(fh, 0, bad)
        assert await errno_of(ops.read(fh, 0, 64)) == errno.EINVAL
    assert ops.errors.unexpected == 0


async def test_concept_write_ignores_nan_in_an_unrelated_level(env: Env) -> None:
    ops, layout = env.ops, env.field.layout
    lo, hi = layout.level_byte_range(LEVELS - 1)
    params = await open_path(ops, "params", os.O_RDWR)
    await ops.write(params, lo, np.full((hi - lo) // 4, np.nan, "<f4").tobytes())
    fi, _ = await ops.create(ino.CONCEPTS_DIR, b"c", 0o644, os.O_RDWR | os.O_CREAT, None)
    values = np.array([0.25, -0.75], "<f4")  # level 0's features only
    assert await ops.write(fi.fh, 0, values.tobytes()) == 8
    got = np.frombuffer(await ops.read(fi.fh, 0, WIDTH * 4), "<f4")
    assert np.allclose(got[:2], values, atol=1e-5)
    assert np.isnan(got[-FEATS:]).all()  # the NaN level is untouched
    # writing a component whose current value is NaN cannot be done additively: EINVAL
    assert await errno_of(ops.write(fi.fh, (WIDTH - FEATS) * 4, values.tobytes())) == errno.EINVAL


# ---------------------------------------------------------------------- Field off the trio thread
async def test_big_batches_leave_the_trio_thread_small_ones_stay(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    hops: list[str] = []
    real = trio.to_thread.run_sync

    async def counting(fn, *args, **kwargs):
        inner = args[1] if getattr(fn, "__name__", "") == "run_niced" else fn  # run_niced(nice, fn, ...)
        hops.append(getattr(inner, "__name__", "?"))
        return await real(fn, *args, **kwargs)

    monkeypatch.setattr(field_module.trio.to_thread, "run_sync", counting)
    rng = np.random.default_rng(1)
    pts = rng.random((INLINE_POINTS * 3, DIMS), dtype=np.float32)
    small = [await env.field.infer(pts[i:i + INLINE_POINTS]) for i in range(0, len(pts), INLINE_POINTS)]
    assert [h for h in hops if h in ("corner_entries", "_finish")] == []  # the store's gather may hop
    hops.clear()
    big = await env.field.infer(pts)
    field_hops = [h for h in hops if h in ("corner_entries", "_finish")]
    assert field_hops == ["corner_entries", "_finish"]  # the store's gather may hop too
    assert np.array_equal(np.concatenate(small), big)
    hops.clear()
    await env.field.encode(pts[:1])
    assert hops == []


async def test_a_batch_split_over_cores_answers_in_order_and_is_observed_once(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """A big batch is cut into parts computed at once (one per core, SPEC 8 inference): the
    answer must equal the same points answered one small batch at a time, in order, and the
    field-space prefetcher must see the batch once, whole (its motion model pairs batches)."""
    monkeypatch.setattr(field_module, "PARALLEL_MIN_POINTS", 256)
    monkeypatch.setattr(field_module, "INFER_WORKERS", 3)
    monkeypatch.setattr(field_module, "INFER_CHUNK", 200)  # parts of 200 points: the last one short
    seen: list[int] = []
    env.field.point_listeners.append(lambda pts: seen.append(len(pts)))
    rng = np.random.default_rng(5)
    pts = rng.random((1000, DIMS), dtype=np.float32)
    big = await env.field.infer(pts)
    assert seen == [1000]
    small = [await env.field.infer(pts[i:i + 50]) for i in range(0, len(pts), 50)]
    assert np.array_equal(np.concatenate(small), big)


async def test_concurrent_reads_of_one_query_handle_share_one_answer(env: Env) -> None:
    ops = env.ops
    fh = await open_path(ops, "query", os.O_RDWR)
    pts = np.random.default_rng(5).random((MAX_BATCH, DIMS), dtype=np.float32).astype("<f4")
    expect = np.asarray(await env.field.infer(pts), dtype="<f4").tobytes()
    await ops.write(fh, 0, pts.tobytes())
    half = len(expect) // 2
    got: dict[int, bytes] = {}

    async def read(off: int, size: int) -> None:
        got[off] = await ops.read(fh, off, size)

    async with trio.open_nursery() as nursery:  # like a big pread the kernel split in two
        nursery.start_soon(read, 0, half)
        nursery.start_soon(read, half, len(expect) - half)
    assert got[0] + got[half] == expect


async def test_reads_waiting_on_a_failed_query_answer_neither_crash_nor_compute_twice(env: Env) -> None:
    """Three reads of one handle, the first one's computation failing: trio hands the lock to
    the next waiter when it is released, and the reads behind it must take their turn in
    order (no WouldBlock, no lock left held), each answering the request as it then is."""
    ops = env.ops
    fh = await open_path(ops, "query", os.O_RDWR)
    await ops.write(fh, 0, np.zeros((1, DIMS), dtype="<f4").tobytes())
    calls = 0
    infer = env.field.infer

    async def slow_failing_infer(points):  # the first computation waits, then fails
        nonlocal calls
        calls += 1
        if calls == 1:
            await trio.sleep(0.05)
            raise PageIOError("the tier went away")
        return await infer(points)

    env.field.infer = slow_failing_infer
    results: list[object] = []

    async def read() -> None:
        try:
            results.append(await ops.read(fh, 0, 64))
        except pyfuse3.FUSEError as exc:
            results.append(exc.errno)

    try:
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(read)
                await trio.sleep(0.01)  # in order: the later two wait on the first
    finally:
        env.field.infer = infer
    assert results[0] == errno.EIO  # the failed computation
    assert results[1:] == [b"", b""]  # the request was taken by it: an empty answer, computed once
    assert calls == 2 and not ops.handle(fh).computing.locked()
