#!/usr/bin/env python3
"""A throw-away MooseFS cluster on this machine, for tests and benchmarks of nffs.

One master and N chunkservers (default 2), each in its own network namespace, joined
by veth pairs to a bridge that lives in a switch namespace; the root namespace gets
one veth into the switch too, so ``mfsmount`` runs from the root namespace.  Extra
"client machines" are more namespaces on the same bridge, each with its own
``mfsmount`` (started with ``nsenter --net=``, so the mount lands in the root mount
namespace where the tests can see it -- ``ip netns exec`` would hide it in a private
mount namespace).  Addresses are in 10.231.X.0/24 (X picked per run, unused on this
machine); no packet leaves the machine.

Everything one run creates carries its run id: namespaces ``nmfs<ID>-<role>``,
interfaces ``nm<ID><role>``, the state directory ``/tmp/nffs-moosefs/<ID>/``
(configs, chunk data, logs, mount points, ``state.json``).  ``down`` tears one run
down, or every run whose owner process is gone (leftovers of killed test runs).

CLI::

    python scripts/moosefs.py up [--chunkservers N] [--clients N]   # prints the state as JSON
    python scripts/moosefs.py status [ID]
    python scripts/moosefs.py down [ID] [--all]
    python scripts/moosefs.py bench [--json FILE]                  # see docs/moosefs.md

Importable: ``Cluster(...).up()``, ``.mount()``, ``.add_client()``,
``.stop_chunkserver(i)``, ``.start_chunkserver(i)``, ``.netns_argv(ns)``, ``.down()``.
Runs as root (namespaces, mounts); installs the Debian packages when missing.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field as dc_field
from pathlib import Path
from typing import Iterator

ROOT = Path(os.environ.get("NFFS_MOOSEFS_ROOT", "/tmp/nffs-moosefs"))
PACKAGES = ("moosefs-master", "moosefs-chunkserver", "moosefs-client")
NS_PREFIX = "nmfs"
MASTER_PORT_CS = 9420
MASTER_PORT_CL = 9421
# mfsmount options: an outage is EIO within seconds (defaults block for minutes), no
# client-side data cache (a reader on another "machine" must see the writer's bytes),
# and low priority (the daemons would renice themselves to -19 otherwise).
DEFAULT_MOUNT_OPTS = ("mfstimeout=10", "mfsioretries=3", "mfscachemode=NO", "mfsnice=19")


def log(msg: str) -> None:
    if os.environ.get("NFFS_MOOSEFS_QUIET") != "1":
        print(f"moosefs: {msg}", file=sys.stderr, flush=True)


def run(*argv: str, check: bool = True, timeout: float = 60, quiet: bool = False) -> subprocess.CompletedProcess:
    res = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({res.returncode}): {res.stderr.strip()}")
    return res


# ---------------------------------------------------------------- installation

def installed() -> bool:
    return all(shutil.which(b) for b in ("mfsmaster", "mfschunkserver", "mfsmount"))


def ensure_installed() -> None:
    """apt-get install the three packages when a binary is missing (non-interactive)."""
    if installed():
        return
    if os.geteuid() != 0:
        raise RuntimeError("MooseFS is not installed and installing it needs root")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    log("installing " + " ".join(PACKAGES))
    # Cheap first try from the lists already present; update only when that fails.
    cmd = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES]
    if subprocess.run(cmd, env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=300)
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        if res.returncode != 0:
            raise RuntimeError(f"apt-get install {' '.join(PACKAGES)} failed: {res.stderr[-2000:]}")
    # The packages ship init scripts; make sure no packaged daemon is left running on
    # the default config (there is none in /etc/mfs on Debian, so nothing starts).
    if not installed():
        raise RuntimeError("MooseFS binaries still missing after apt-get install")


def empty_metadata() -> Path:
    for p in (Path("/var/lib/mfs/metadata.mfs.empty"),
              Path("/usr/share/doc/moosefs-master/examples/metadata.mfs.empty")):
        if p.exists():
            return p
    raise RuntimeError("metadata.mfs.empty not found (moosefs-master installed?)")


# ---------------------------------------------------------------- processes

def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def kill_wait(pid: int, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
    """Signal one pid and wait until it is gone (SIGKILL after the timeout)."""
    if not pid_alive(pid):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 5
        time.sleep(0.05)
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def mounts_under(prefix: Path) -> list[tuple[str, str]]:
    """(mountpoint, fstype) of every mount whose mount point lies under prefix, deepest first."""
    out = []
    pre = str(prefix.resolve() if prefix.exists() else prefix)
    with open("/proc/self/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3:
                mnt = parts[1].replace("\\040", " ")
                if mnt == pre or mnt.startswith(pre + "/"):
                    out.append((mnt, parts[2]))
    return sorted(out, key=lambda m: -len(m[0]))


def is_mounted(path: Path) -> bool:
    target = str(path.resolve())
    with open("/proc/self/mounts") as f:
        return any(len(l.split()) > 1 and l.split()[1] == target for l in f)


def pids_with_arg(needle: str) -> list[int]:
    """Pids whose command line mentions needle (a run-unique path): our own daemons."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid():
            try:
                if needle in d.joinpath("cmdline").read_bytes().decode(errors="replace"):
                    out.append(int(d.name))
            except OSError:
                pass
    return out


# ---------------------------------------------------------------- the cluster

@dataclass
class Node:
    role: str           # "m", "c0", "c1", "r1", ...
    ns: str             # network namespace name
    addr: str           # IPv4 address in the run's /24
    pid: int | None = None


@dataclass
class Cluster:
    chunkservers: int = 2
    run_id: str = dc_field(default_factory=lambda: secrets.token_hex(3))
    owner: int | None = None      # pid whose death makes this run a leftover; None = CLI-owned
    mount_opts: tuple[str, ...] = DEFAULT_MOUNT_OPTS
    subnet: int | None = None
    nodes: dict[str, Node] = dc_field(default_factory=dict)
    mfs_mounts: dict[str, dict] = dc_field(default_factory=dict)   # name -> {path, client}
    stopped: set[str] = dc_field(default_factory=set)

    # ---- names and paths
    @property
    def base(self) -> Path:
        return ROOT / self.run_id

    @property
    def switch_ns(self) -> str:
        return f"{NS_PREFIX}{self.run_id}-sw"

    def ns_name(self, role: str) -> str:
        return f"{NS_PREFIX}{self.run_id}-{role}"

    def ifname(self, role: str, side: str) -> str:
        return f"nm{self.run_id}{role}{side}"[:15]

    def addr(self, host: int) -> str:
        return f"10.231.{self.subnet}.{host}"

    @property
    def master_addr(self) -> str:
        return self.addr(2)

    @property
    def root_addr(self) -> str:
        return self.addr(1)

    @staticmethod
    def netns_argv(ns: str) -> list[str]:
        """Prefix that runs a command in namespace ns but in *this* mount namespace."""
        return ["nsenter", f"--net=/run/netns/{ns}", "--"]

    # ---- state
    def save(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        state = {
            "run_id": self.run_id, "owner": self.owner, "subnet": self.subnet, "chunkservers": self.chunkservers,
            "mount_opts": list(self.mount_opts), "master": self.master_addr if self.subnet is not None else None,
            "nodes": {k: vars(v) for k, v in self.nodes.items()}, "mounts": self.mfs_mounts,
            "stopped": sorted(self.stopped), "base": str(self.base),
        }
        tmp = self.base / "state.json.tmp"
        tmp.write_text(json.dumps(state, indent=1))
        tmp.replace(self.base / "state.json")

    @classmethod
    def load(cls, run_id: str) -> "Cluster":
        st = json.loads((ROOT / run_id / "state.json").read_text())
        c = cls(chunkservers=st["chunkservers"], run_id=run_id, owner=st["owner"],
                mount_opts=tuple(st["mount_opts"]), subnet=st["subnet"])
        c.nodes = {k: Node(**v) for k, v in st["nodes"].items()}
        c.mfs_mounts = st["mounts"]
        c.stopped = set(st["stopped"])
        return c

    # ---- network
    def _pick_subnet(self) -> int:
        used = set()
        for line in run("ip", "-o", "-4", "addr", "show").stdout.splitlines():
            for tok in line.split():
                if tok.startswith("10.231."):
                    used.add(int(tok.split(".")[2]))
        for line in run("ip", "-4", "route", "show").stdout.splitlines():
            if line.startswith("10.231."):
                used.add(int(line.split(".")[2]))
        for d in ROOT.glob("*/state.json"):
            with contextlib.suppress(Exception):
                used.add(json.loads(d.read_text())["subnet"])
        free = [x for x in range(1, 255) if x not in used]
        if not free:
            raise RuntimeError("no free 10.231.X.0/24 subnet")
        return free[secrets.randbelow(len(free))]

    def _add_node(self, role: str, host: int) -> Node:
        ns = self.ns_name(role)
        run("ip", "netns", "add", ns)
        a, b = self.ifname(role, "a"), self.ifname(role, "b")
        run("ip", "link", "add", a, "type", "veth", "peer", "name", b)
        run("ip", "link", "set", "dev", a, "netns", ns)
        run("ip", "link", "set", "dev", b, "netns", self.switch_ns)
        run("ip", "-n", self.switch_ns, "link", "set", "dev", b, "master", "br0", "up")
        run("ip", "-n", ns, "addr", "add", f"{self.addr(host)}/24", "dev", a)
        run("ip", "-n", ns, "link", "set", "dev", a, "up")
        run("ip", "-n", ns, "link", "set", "dev", "lo", "up")
        node = Node(role=role, ns=ns, addr=self.addr(host))
        self.nodes[role] = node
        self.save()
        return node

    def _network_up(self) -> None:
        self.subnet = self._pick_subnet()
        self.save()
        run("ip", "netns", "add", self.switch_ns)
        run("ip", "-n", self.switch_ns, "link", "add", "br0", "type", "bridge")
        run("ip", "-n", self.switch_ns, "link", "set", "dev", "br0", "up")
        run("ip", "-n", self.switch_ns, "link", "set", "dev", "lo", "up")
        # the root namespace's own leg, for mfsmount in the root namespace
        h, b = self.ifname("h", "a"), self.ifname("h", "b")
        run("ip", "link", "add", h, "type", "veth", "peer", "name", b)
        run("ip", "link", "set", "dev", b, "netns", self.switch_ns)
        run("ip", "-n", self.switch_ns, "link", "set", "dev", b, "master", "br0", "up")
        run("ip", "addr", "add", f"{self.root_addr}/24", "dev", h)
        run("ip", "link", "set", "dev", h, "up")
        self._add_node("m", 2)
        for i in range(self.chunkservers):
            self._add_node(f"c{i}", 10 + i)

    # ---- configs
    def _write_configs(self) -> None:
        b = self.base
        (b / "master").mkdir(parents=True, exist_ok=True)
        shutil.copy(empty_metadata(), b / "master" / "metadata.mfs")
        (b / "mfsexports.cfg").write_text(f"{self.addr(0)}/24 / rw,alldirs,maproot=0:0\n")
        (b / "mfstopology.cfg").write_text("")
        (b / "mfsmaster.cfg").write_text("\n".join([
            "WORKING_USER = root", "WORKING_GROUP = root", "NICE_LEVEL = 19", "LOCK_MEMORY = 0",
            f"SYSLOG_IDENT = mfsmaster-{self.run_id}",
            f"DATA_PATH = {b / 'master'}", f"EXPORTS_FILENAME = {b / 'mfsexports.cfg'}",
            f"TOPOLOGY_FILENAME = {b / 'mfstopology.cfg'}",
            f"MATOML_LISTEN_HOST = {self.master_addr}", f"MATOCS_LISTEN_HOST = {self.master_addr}",
            f"MATOCL_LISTEN_HOST = {self.master_addr}",
            "REPLICATIONS_DELAY_INIT = 0", "MATOCS_TIMEOUT = 5", "BACK_LOGS = 5", "",
        ]))
        for i in range(self.chunkservers):
            d = b / f"cs{i}"
            (d / "chunks").mkdir(parents=True, exist_ok=True)
            (d / "mfshdd.cfg").write_text(f"{d / 'chunks'}\n")
            (d / "mfschunkserver.cfg").write_text("\n".join([
                "WORKING_USER = root", "WORKING_GROUP = root", "NICE_LEVEL = 19", "LOCK_MEMORY = 0",
                f"SYSLOG_IDENT = mfschunkserver-{self.run_id}-{i}",
                f"DATA_PATH = {d}", f"HDD_CONF_FILENAME = {d / 'mfshdd.cfg'}",
                "HDD_LEAVE_SPACE_DEFAULT = 64MiB", "HDD_TEST_SPEED = 0",
                f"MASTER_HOST = {self.master_addr}", f"MASTER_PORT = {MASTER_PORT_CS}",
                f"BIND_HOST = {self.addr(10 + i)}", f"CSSERV_LISTEN_HOST = {self.addr(10 + i)}",
                "MASTER_RECONNECTION_DELAY = 1", "WORKERS_MAX = 32", "WORKERS_MAX_IDLE = 4", "",
            ]))

    # ---- daemons
    def _spawn(self, role: str, argv: list[str], logname: str) -> int:
        node = self.nodes[role]
        logf = open(self.base / logname, "ab")
        proc = subprocess.Popen([*self.netns_argv(node.ns), *argv], stdin=subprocess.DEVNULL, stdout=logf,
                                stderr=subprocess.STDOUT, start_new_session=True)
        logf.close()
        node.pid = proc.pid      # nsenter execs the daemon: same pid
        self.save()
        return proc.pid

    def _wait_tcp(self, host: str, port: int, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection((host, port), timeout=0.5):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{host}:{port} not listening after {timeout}s; logs in {self.base}")
                time.sleep(0.05)

    def registered_chunkservers(self) -> int:
        """Chunkservers with an established connection to the master right now."""
        res = run(*self.netns_argv(self.nodes["m"].ns), "ss", "-Htn", "state", "established",
                  f"( sport = :{MASTER_PORT_CS} )", check=False)
        return len([l for l in res.stdout.splitlines() if l.strip()])

    def wait_chunkservers(self, n: int | None = None, timeout: float = 30) -> None:
        n = self.chunkservers - len(self.stopped) if n is None else n
        deadline = time.monotonic() + timeout
        while self.registered_chunkservers() < n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {self.registered_chunkservers()} of {n} chunkservers registered")
            time.sleep(0.1)
        # registration is done one packet after the connection; give the master a moment
        time.sleep(0.5)

    def start_master(self) -> None:
        self._spawn("m", ["mfsmaster", "-f", "-a", "-c", str(self.base / "mfsmaster.cfg"), "start"], "master.log")
        self._wait_tcp(self.master_addr, MASTER_PORT_CL)

    def start_chunkserver(self, i: int, wait: bool = True) -> None:
        role = f"c{i}"
        if pid_alive(self.nodes[role].pid):
            return
        self._spawn(role, ["mfschunkserver", "-f", "-c", str(self.base / f"cs{i}" / "mfschunkserver.cfg"), "start"],
                    f"cs{i}.log")
        self.stopped.discard(role)
        self.save()
        if wait:
            self.wait_chunkservers()

    def stop_chunkserver(self, i: int, sig: int = signal.SIGTERM) -> None:
        role = f"c{i}"
        pid = self.nodes[role].pid
        if pid:
            kill_wait(pid, sig, timeout=15)
        self.nodes[role].pid = None
        self.stopped.add(role)
        self.save()

    def stop_all_chunkservers(self, sig: int = signal.SIGTERM) -> None:
        for i in range(self.chunkservers):
            self.stop_chunkserver(i, sig)

    def start_all_chunkservers(self) -> None:
        for i in range(self.chunkservers):
            self.start_chunkserver(i, wait=False)
        self.wait_chunkservers()

    # ---- clients
    def add_client(self, name: str = "r1") -> Node:
        """Another 'machine': a namespace on the bridge (addresses .20 and up)."""
        if name in self.nodes:
            return self.nodes[name]
        host = 20 + len([r for r in self.nodes if r.startswith("r")])
        return self._add_node(name, host)

    def mount(self, name: str = "root", client: str | None = None, subfolder: str = "/",
              opts: tuple[str, ...] | None = None) -> Path:
        """mfsmount the cluster at <base>/mnt-<name>; from client's namespace if given.

        The mount is made in the root mount namespace either way (nsenter --net only)."""
        mnt = self.base / f"mnt-{name}"
        mnt.mkdir(parents=True, exist_ok=True)
        if is_mounted(mnt):
            return mnt
        if any(mnt.iterdir()):
            # Something wrote into the bare mount point while MooseFS was away (a bug of the
            # program under test, which the tests check for).  Keep it aside for inspection
            # and mount on a clean directory at the same path.
            aside = mnt.with_name(f"{mnt.name}.written-while-unmounted.{int(time.time() * 1000)}")
            mnt.rename(aside)
            mnt.mkdir()
            log(f"{mnt} was not empty while unmounted; its contents moved to {aside}")
        prefix = self.netns_argv(self.nodes[client].ns) if client else []
        o = ",".join(opts if opts is not None else self.mount_opts)
        run(*prefix, "mfsmount", str(mnt), "-H", self.master_addr, "-S", subfolder, "-o", o, timeout=60)
        deadline = time.monotonic() + 20
        while not is_mounted(mnt):
            if time.monotonic() > deadline:
                raise RuntimeError(f"mfsmount at {mnt} did not appear")
            time.sleep(0.05)
        self.mfs_mounts[name] = {"path": str(mnt), "client": client, "subfolder": subfolder}
        self.save()
        # statfs shows the registered chunkservers' space a moment after the session starts
        while not self.stopped and os.statvfs(mnt).f_blocks == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        return mnt

    def mfsmount_pids(self, name: str) -> list[int]:
        mnt = self.mfs_mounts[name]["path"]
        return [p for p in pids_with_arg(mnt) if "mfsmount" in Path(f"/proc/{p}/cmdline").read_bytes().decode(errors="replace")]

    def kill_mount(self, name: str = "root") -> None:
        """The mount gone, as after a client crash: SIGKILL mfsmount, then detach the dead mount.

        Open descriptors on it fail from then on (ENOTCONN); the mount point is a bare directory."""
        info = self.mfs_mounts[name]
        for pid in self.mfsmount_pids(name):
            kill_wait(pid, signal.SIGKILL)
        run("umount", "-l", info["path"], check=False)
        del self.mfs_mounts[name]
        self.save()

    def umount(self, name: str = "root", lazy: bool = False) -> None:
        """Unmount one mfsmount and wait until its daemon is gone."""
        info = self.mfs_mounts.get(name)
        if not info:
            return
        mnt = Path(info["path"])
        pids = self.mfsmount_pids(name)
        if is_mounted(mnt):
            res = run("umount", *(["-l"] if lazy else []), str(mnt), check=False)
            if res.returncode != 0 and not lazy:
                run("umount", "-l", str(mnt), check=False)
        for pid in pids:
            kill_wait(pid, signal.SIGTERM, timeout=10)
        del self.mfs_mounts[name]
        self.save()

    # ---- whole cluster
    def up(self, clients: int = 0) -> "Cluster":
        if os.geteuid() != 0:
            raise RuntimeError("the MooseFS harness needs root (network namespaces, mounts)")
        ensure_installed()
        t0 = time.monotonic()
        ROOT.mkdir(parents=True, exist_ok=True)
        os.chmod(ROOT, 0o700)
        self.base.mkdir(parents=True)
        self.save()            # owner recorded first: a concurrent `down` leaves a live run alone
        try:
            self._network_up()
            self._write_configs()
            self.start_master()
            for i in range(self.chunkservers):
                self.start_chunkserver(i, wait=False)
            self.wait_chunkservers()
            for k in range(clients):
                self.add_client(f"r{k + 1}")
        except BaseException:
            self.down()
            raise
        log(f"cluster {self.run_id} up in {time.monotonic() - t0:.1f}s: master {self.master_addr}, "
            f"{self.chunkservers} chunkservers, state {self.base}")
        return self

    def heal(self) -> None:
        """Back to a healthy cluster: every chunkserver running and registered."""
        for i in range(self.chunkservers):
            self.start_chunkserver(i, wait=False)
        self.wait_chunkservers()

    def down(self) -> None:
        """Tear everything of this run down: mounts, processes, namespaces, veths, files."""
        teardown_run(self.run_id)


def _ns_pids(ns: str) -> list[int]:
    res = run("ip", "netns", "pids", ns, check=False)
    return [int(p) for p in res.stdout.split() if p.isdigit()]


def teardown_run(run_id: str) -> None:
    base = ROOT / run_id
    # 1. every mount under the run's directory (nffs mounts placed there, then mfsmounts)
    for mnt, fstype in mounts_under(base):
        res = run("umount", mnt, check=False)
        if res.returncode != 0:
            run("umount", "-l", mnt, check=False)
    # 2. every process of the run: by namespace and by the run's unique path
    namespaces = [n.split()[0] for n in run("ip", "netns", "list", check=False).stdout.splitlines()
                  if n.startswith(f"{NS_PREFIX}{run_id}-")]
    pids = set(pids_with_arg(str(base) + "/"))
    for ns in namespaces:
        pids.update(_ns_pids(ns))
    pids.discard(os.getpid())
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
        for p in pids:
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(p, os.WNOHANG)
        time.sleep(0.05)
    for pid in pids:
        if pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    for p in pids:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(p, os.WNOHANG)
    # 3. namespaces (deleting one deletes its veth ends, and so their peers), root leg
    for ns in namespaces:
        run("ip", "netns", "del", ns, check=False)
    link = f"nm{run_id}ha"
    if Path(f"/sys/class/net/{link}").exists():
        run("ip", "link", "del", link, check=False)
    # 4. files (only when nothing is mounted below any more)
    if base.exists() and not mounts_under(base):
        shutil.rmtree(base, ignore_errors=True)


def run_ids() -> list[str]:
    ids = set()
    if ROOT.exists():
        ids.update(p.name for p in ROOT.iterdir() if p.is_dir())
    for line in run("ip", "netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        if name.startswith(NS_PREFIX) and "-" in name:
            ids.add(name[len(NS_PREFIX):].split("-")[0])
    for d in Path("/sys/class/net").glob("nm*ha"):
        ids.add(d.name[2:-2])
    return sorted(ids)


def run_owner(run_id: str) -> int | None:
    try:
        return json.loads((ROOT / run_id / "state.json").read_text()).get("owner")
    except (OSError, ValueError):
        return None


def cleanup_leftovers(everything: bool = False) -> list[str]:
    """Tear down runs whose owner process is gone (and CLI-owned runs too if everything)."""
    done = []
    for rid in run_ids():
        owner = run_owner(rid)
        if everything or (owner is not None and not pid_alive(owner)) or not (ROOT / rid / "state.json").exists():
            teardown_run(rid)
            done.append(rid)
    return done


@contextlib.contextmanager
def cluster(chunkservers: int = 2, clients: int = 0) -> Iterator[Cluster]:
    c = Cluster(chunkservers=chunkservers, owner=os.getpid())
    c.up(clients=clients)
    try:
        yield c
    finally:
        c.down()


# ---------------------------------------------------------------- benchmark

def _nffs_cmd() -> list[str]:
    script = Path(sys.executable).parent / "nffs"
    return [str(script)] if os.access(script, os.X_OK) else [sys.executable, "-m", "nffs.cli"]


def _nffs(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    res = subprocess.run([*_nffs_cmd(), *args], capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0:
        raise RuntimeError(f"nffs {' '.join(args)} failed: {res.stderr.strip()} {res.stdout.strip()}")
    return res


def _fadvise_dontneed(paths: list[Path]) -> None:
    for p in paths:
        with contextlib.suppress(OSError):
            fd = os.open(p, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def _read_pass(path: Path, kind: str, n_random: int, seed: int) -> dict:
    """4 KiB random or 1 MiB sequential preads of the whole file; per-read latencies."""
    import random
    size = path.stat().st_size
    fd = os.open(path, os.O_RDONLY)
    lat: list[float] = []
    try:
        if kind == "seq1m":
            offs = list(range(0, size, 1 << 20))
            n = 1 << 20
        else:
            rng = random.Random(seed)
            offs = [rng.randrange(0, size // 4096) * 4096 for _ in range(n_random)]
            n = 4096
        t0 = time.perf_counter()
        total = 0
        for off in offs:
            t = time.perf_counter()
            total += len(os.pread(fd, n, off))
            lat.append(time.perf_counter() - t)
        wall = time.perf_counter() - t0
    finally:
        os.close(fd)
    return {"reads": len(offs), "bytes": total, "seconds": wall, "MiB_s": total / wall / 2**20,
            "p50_ms": _pct(lat, 0.5) * 1e3, "p99_ms": _pct(lat, 0.99) * 1e3}


def _wait_ready(mnt: Path, timeout: float = 60.0) -> None:
    """Until the mount's prefetcher has its learned model (river loads in the background
    after a mount; reads at that moment share the CPU with the import)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pf = json.loads((mnt / "stats").read_text()).get("prefetch") or {}
        if pf.get("ready", True):
            return
        time.sleep(0.05)


def bench(args: argparse.Namespace) -> int:
    """Reads of `params` with the field's only durable tier on MooseFS, under a local DRAM tier.

    For each workload (1 MiB sequential, 4 KiB random) and predictor (default, none): a
    fresh nffs mount (empty DRAM tier, empty kernel cache for `params`) after the home
    files and the chunkservers' chunk files are evicted from the page cache (fadvise
    DONTNEED, no global drop), so every first touch of a page is a network round trip
    (nffs -> mfsmount -> chunkserver).  Baseline: the same reads of a plain file of the
    same size on the same MooseFS mount.
    """
    import shutil as _sh
    if args.prefetch_workloads:
        with cluster(chunkservers=2) as c:
            mnt = c.mount("root")
            cmd = [sys.executable, str(Path(__file__).resolve().parent / "bench_prefetch.py"),
                   "--workloads", args.prefetch_workloads, "--predictors", args.predictors, "--latency", "",
                   "--workdir", str(mnt)] + (["--json", args.json] if args.json else [])
            log("bench: " + " ".join(cmd))
            return subprocess.run(cmd).returncode
    size = _parse_size(args.size)
    results: list[dict] = []
    with cluster(chunkservers=2) as c:
        mnt = c.mount("root")
        work = c.base / "bench"
        work.mkdir()
        shm = Path(f"/dev/shm/nffs-moosefs-bench-{c.run_id}")
        field = work / "field"
        try:
            # 16 levels of 2^19 x 2 float32 entries: ~60 MiB of params; fewer levels for smaller sizes
            levels = max(1, min(16, size // (4 << 20)))
            _nffs("init", str(field), "--levels", str(levels), "--log2-table-size", "19", "--page-size", "64K")
            tiers = ["--tier", f"dram={shm},kind=dram,capacity=1G", "--tier", f"far={mnt}/far,kind=hdd"]
            m = work / "m"
            m.mkdir()
            _nffs("mount", str(field), str(m), *tiers, "--prefetch", "none")
            psize = (m / "params").stat().st_size
            blob = os.urandom(psize)
            with open(m / "params", "r+b") as f:
                for off in range(0, psize, 1 << 20):
                    f.write(blob[off:off + (1 << 20)])
                f.flush()
                os.fsync(f.fileno())
            _nffs("umount", str(m))
            plain = mnt / "plain.bin"
            with open(plain, "wb") as f:
                f.write(blob)
                f.flush()
                os.fsync(f.fileno())
            del blob
            chunk_files = [p for i in range(c.chunkservers) for p in (c.base / f"cs{i}" / "chunks").rglob("*.mfs")]
            homes = [p for p in (mnt / "far").rglob("*") if p.is_file()]
            log(f"bench: params {psize / 2**20:.1f} MiB in {len(homes)} home files on MooseFS")
            for rnd in range(args.rounds):
                for kind in ("seq1m", "rand4k"):
                    _fadvise_dontneed([*chunk_files, plain])
                    r = _read_pass(plain, kind, args.reads, seed=rnd)
                    results.append({"round": rnd, "workload": kind, "config": "plain MooseFS file", **r})
                    for pred in ("hoeffding", "none"):
                        _fadvise_dontneed([*chunk_files, *homes])
                        _nffs("mount", str(field), str(m), *tiers, "--prefetch", pred)
                        try:
                            _wait_ready(m)  # steady state, as the prefetch suite measures it
                            _fadvise_dontneed([m / "params"])
                            r = _read_pass(m / "params", kind, args.reads, seed=rnd)
                            st = json.loads((m / "stats").read_text())
                            far = next(t for t in st["store"]["tiers"] if t["name"] == "far")
                            r["far_reads"] = far.get("reads")
                        finally:
                            _nffs("umount", str(m))
                        label = "nffs default (hoeffding)" if pred == "hoeffding" else "nffs --prefetch none"
                        results.append({"round": rnd, "workload": kind, "config": label, **r})
                        log(f"bench: {kind} {label}: {r['MiB_s']:.1f} MiB/s p99 {r['p99_ms']:.2f} ms")
        finally:
            for mp, _ in mounts_under(work):
                run("umount", "-l", mp, check=False)
            _sh.rmtree(shm, ignore_errors=True)
    print(_bench_table(results, psize, args))
    if args.json:
        Path(args.json).write_text(json.dumps({"params_bytes": psize, "results": results}, indent=1))
    return 0


def _bench_table(results: list[dict], psize: int, args: argparse.Namespace) -> str:
    rows = ["| workload | configuration | MiB/s | p50 ms | p99 ms | reads | far-tier page reads |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    by: dict[tuple[str, str], list[dict]] = {}
    for r in results:
        by.setdefault((r["workload"], r["config"]), []).append(r)
    for (w, cfg), rs in by.items():
        med = sorted(rs, key=lambda r: r["seconds"])[len(rs) // 2]
        name = {"seq1m": "1 MiB sequential", "rand4k": f"4 KiB random ({args.reads} reads)"}[w]
        rows.append(f"| {name} | {cfg} | {med['MiB_s']:.1f} | {med['p50_ms']:.3f} | {med['p99_ms']:.2f} | "
                    f"{med['reads']} | {med.get('far_reads', '-')} |")
    return f"params: {psize / 2**20:.1f} MiB, medians of {args.rounds} round(s)\n" + "\n".join(rows)


def _parse_size(text: str) -> int:
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    t = text.strip().upper().rstrip("B").rstrip("I")
    return int(float(t[:-1]) * mult[t[-1]]) if t[-1] in mult else int(t)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="moosefs.py", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    pu = sub.add_parser("up", help="start a cluster (kept until `down`), mount it at <base>/mnt-root")
    pu.add_argument("--chunkservers", type=int, default=2)
    pu.add_argument("--clients", type=int, default=0, help="extra client namespaces r1.. with their own mfsmount")
    pu.add_argument("--no-mount", action="store_true")
    ps = sub.add_parser("status", help="show runs, their processes and mounts")
    ps.add_argument("run_id", nargs="?")
    pd = sub.add_parser("down", help="tear down a run; without ID: every leftover and CLI-started run")
    pd.add_argument("run_id", nargs="?")
    pd.add_argument("--all", action="store_true", help="also runs whose owner (a test session) is still alive")
    sub.add_parser("install", help="apt-get install the MooseFS packages when a binary is missing (root)")
    pb = sub.add_parser("bench", help="4 KiB random / 1 MiB sequential reads with the slow tier on MooseFS")
    pb.add_argument("--json", help="write the results here")
    pb.add_argument("--size", default="64M", help="bytes of params written and read back")
    pb.add_argument("--reads", type=int, default=2000, help="random 4 KiB reads per pass")
    pb.add_argument("--rounds", type=int, default=1)
    pb.add_argument("--prefetch-workloads", default="",
                    help="instead: run scripts/bench_prefetch.py with these workloads (e.g. scan,stride) and its "
                         "slow tier (and field directory) on MooseFS, no emulated latency")
    pb.add_argument("--predictors", default="hoeffding,none", help="with --prefetch-workloads")
    a = ap.parse_args(argv)
    if a.cmd == "install":
        ensure_installed()
        return 0
    if a.cmd == "up":
        c = Cluster(chunkservers=a.chunkservers).up(clients=a.clients)
        if not a.no_mount:
            c.mount("root")
            for k in range(a.clients):
                c.mount(f"r{k + 1}", client=f"r{k + 1}")
        print(json.dumps(json.loads((c.base / "state.json").read_text()), indent=1))
        return 0
    if a.cmd == "status":
        ids = [a.run_id] if a.run_id else run_ids()
        for rid in ids:
            try:
                st = json.loads((ROOT / rid / "state.json").read_text())
            except (OSError, ValueError):
                print(f"{rid}: leftover without state")
                continue
            owner = st.get("owner")
            print(f"{rid}: master {st['master']} owner {owner or 'cli'}"
                  f"{'' if owner is None or pid_alive(owner) else ' (dead: leftover)'} base {st['base']}")
            for role, n in st["nodes"].items():
                print(f"  {role:4} {n['ns']:22} {n['addr']:15} pid {n['pid']} "
                      f"{'running' if pid_alive(n['pid']) else '-'}")
            for name, m in st["mounts"].items():
                print(f"  mount {name}: {m['path']} {'mounted' if is_mounted(Path(m['path'])) else 'GONE'}"
                      f"{' from ' + m['client'] if m['client'] else ''}")
        if not ids:
            print("no runs")
        return 0
    if a.cmd == "down":
        if a.run_id:
            teardown_run(a.run_id)
            print(f"down: {a.run_id}")
        else:
            done = cleanup_leftovers(everything=True) if a.all else [
                rid for rid in run_ids() if run_owner(rid) is None or not pid_alive(run_owner(rid))]
            if not a.all:
                for rid in done:
                    teardown_run(rid)
            print("down: " + (" ".join(done) or "nothing to do"))
        return 0
    if a.cmd == "bench":
        return bench(a)
    return 2


if __name__ == "__main__":
    sys.exit(main())
