"""pytest fixtures for a real MooseFS cluster (scripts/moosefs.py), imported by tests/test_moosefs.py.

- ``mfs_cluster`` (module scope): master + 2 chunkservers + one client namespace ``r1``,
  mounted at ``<base>/mnt-root`` from the root namespace.  Leftovers of earlier, killed
  runs are torn down first; this run is torn down at the end, whatever happened.
- ``mfs``: per test, a healthy cluster (chunkservers restarted, the root mount back if a
  test took it away) and a fresh directory on the mount; healed again afterwards.
- ``mfs_mounts``: the ordinary ``mounts`` helper, ordered so that nffs mounts are
  unmounted *before* the cluster is healed or torn down.
"""
from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from mounting import Mounts

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import moosefs  # noqa: E402

CLIENT = "r1"


@pytest.fixture(scope="module")
def mfs_cluster() -> Iterator[moosefs.Cluster]:
    assert os.geteuid() == 0, "the MooseFS tests start real servers in network namespaces: run them as root"
    moosefs.cleanup_leftovers()
    c = moosefs.Cluster(chunkservers=2, owner=os.getpid())
    try:
        c.up(clients=1)
        c.mount("root")
        yield c
    finally:
        c.down()


@dataclass
class Mfs:
    cluster: moosefs.Cluster
    dir: Path            # this test's directory, seen through the root namespace's mfsmount
    name: str

    @property
    def mnt(self) -> Path:
        return self.cluster.base / "mnt-root"

    def client_dir(self, client: str = CLIENT) -> Path:
        """The same directory through the client namespace's own mfsmount."""
        return self.cluster.mount(client, client=client) / self.name


def _heal(c: moosefs.Cluster) -> None:
    c.heal()
    if not moosefs.is_mounted(c.base / "mnt-root"):
        c.mfs_mounts.pop("root", None)
        c.mount("root")


@pytest.fixture
def mfs(mfs_cluster: moosefs.Cluster, request: pytest.FixtureRequest) -> Iterator[Mfs]:
    _heal(mfs_cluster)
    name = request.node.name.replace("[", "-").replace("]", "")[:60]
    d = mfs_cluster.base / "mnt-root" / name
    d.mkdir()
    try:
        yield Mfs(mfs_cluster, d, name)
    finally:
        _heal(mfs_cluster)
        for client in [n for n, m in list(mfs_cluster.mfs_mounts.items()) if m["client"]]:
            mfs_cluster.umount(client)
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def mfs_mounts(mfs: Mfs, tmp_path: Path) -> Iterator[Mounts]:
    m = Mounts(tmp_path)
    try:
        yield m
    finally:
        # a test that failed mid-outage: bring the cluster back first, or the daemons'
        # last write-back would wait on MooseFS (writes without chunkservers block)
        _heal(mfs.cluster)
        m.cleanup()
