"""Shared fixtures: real mounts in temp dirs that always unmount."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import pytest

from mounting import Mounts, fuse_available


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "allow_daemon_log(*patterns): daemon log records (regexes) a real-mount test expects")


#: Real-mount tests in files this fixture's owner does not edit that provoke errors on
#: purpose, with the log records they expect. Their owners may move these into
#: `@pytest.mark.allow_daemon_log(...)` on the tests themselves; then drop them here.
EXPECTED_DAEMON_ERRORS: dict[str, tuple[str, ...]] = {
    "test_mount_tiers.py::test_corrupted_page_files_fail_fsck_and_read_as_eio": (r"ERROR: (read: \[Errno 5\] .*)?checksum mismatch",),
    "test_mount_tiers.py::test_full_durable_tier_is_enospc_and_corrupts_nothing": (r"ERROR: write: \[Errno 28\] every durable tier is full",),
    "test_mount_tiers.py::test_vanished_tier_gives_eio_for_its_pages_only": (
        r"ERROR: page \d+: cannot read .*No such file or directory", r"ERROR: read: \[Errno 5\] page \d+: .*No such file or directory"),
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        key = f"{item.path.name}::{item.name}"
        if key in EXPECTED_DAEMON_ERRORS:
            item.add_marker(pytest.mark.allow_daemon_log(*EXPECTED_DAEMON_ERRORS[key]))


@pytest.fixture
def mounts(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Mounts]:
    # No skip: a machine without FUSE cannot vouch for a file system, so this fails loudly.
    assert fuse_available(), "real-mount tests need /dev/fuse (and fusermount3 when not root)"
    m = Mounts(tmp_path)
    for marker in request.node.iter_markers("allow_daemon_log"):
        m.allow_log(*marker.args)
    try:
        yield m
    finally:
        m.cleanup()
    # After every daemon has exited: its whole log is written.
    problems = m.log_problems()
    if problems:
        pytest.fail("the daemon logged unexpected errors:\n" + "\n---\n".join(problems), pytrace=False)


@pytest.fixture
def small_field(mounts: Mounts) -> Callable[..., tuple[Path, Path]]:
    """Factory: a small field with tiers in the temp dir, mounted."""

    def make(*init_args: str, mount_args: tuple[str, ...] = ("--prefetch", "none")) -> tuple[Path, Path]:
        field = mounts.init(*init_args)
        mnt = mounts.mount(field, *mounts.tiers(field), *mount_args)
        return field, mnt

    return make
