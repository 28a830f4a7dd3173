"""Shared fixtures: real mounts in temp dirs that always unmount."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import pytest

from mounting import Mounts, fuse_available

pytest_plugins = ["hang_guard"]   # a hung test fails with stacks instead of stalling the run


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "allow_daemon_log(*patterns): daemon log records (regexes) a real-mount test expects")


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
