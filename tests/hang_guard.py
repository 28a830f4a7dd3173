"""A test that hangs fails, with the stacks that show why, instead of eating CI's time.

A real-mount test waits on the kernel, which waits on a daemon: a deadlock in the daemon
(or a MooseFS client retrying for minutes) would block the test for ever, and CI would
stop at its own time limit with no word on where. Each test gets `TEST_DEADLINE_S`. Past
it, a watchdog thread:

1. writes the test process's stacks, and asks the test's nffs daemons for their own
   (`kill -USR2`, written to its field's nffs.log) and prints their tails;
2. aborts the FUSE connections of the test's nffs mounts (under its `tmp_path`), so that the blocked system calls return
   ENOTCONN and the test fails the ordinary way (its fixtures unmount and clean up);
3. if the test is still running `GRACE_S` later, ends the run (exit status 3).

A test that outlived its deadline fails even if the abort let it pass.
"""
from __future__ import annotations

import contextlib
import faulthandler
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

#: seconds a single test may take (the slowest take about a minute on a 2-vCPU machine)
TEST_DEADLINE_S = float(os.environ.get("NFFS_TEST_DEADLINE", "300"))
#: seconds after the abort before the run is ended
GRACE_S = 90.0
#: lines of each daemon log printed after its stack dump
LOG_TAIL_LINES = 120
FUSECTL = Path("/sys/fs/fuse/connections")


def _test_roots(item: pytest.Item) -> list[str]:
    """Where this test's fields and mounts live: its `tmp_path` (every mount helper, the
    MooseFS ones too, mounts there), else the run's temporary directory. Another test's,
    another run's or a developer's own mounts are left alone."""
    tmp = getattr(item, "funcargs", {}).get("tmp_path")
    if tmp is None:
        factory = getattr(item.config, "_tmp_path_factory", None)
        if factory is None:
            return []
        tmp = factory.getbasetemp()
    return [str(tmp).rstrip("/") + "/"]


def _under(path: str, roots: list[str]) -> bool:
    return any(path.startswith(r) for r in roots)


def _daemons(roots: list[str]) -> list[tuple[int, Path]]:
    """(pid, field dir) of the running nffs mount daemons (`nffs.cli ... mount FIELD MNT
    --foreground`) whose mount point lies under `roots`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        words = [a.decode(errors="replace") for a in argv]
        if "nffs.cli" in words and "--foreground" in words and "mount" in words:
            i = words.index("mount")
            if i + 2 < len(words) and _under(words[i + 2], roots):
                found.append((int(entry.name), Path(words[i + 1])))
    return found


def _nffs_connections(roots: list[str]) -> list[tuple[str, str]]:
    """(mount point, fusectl connection number) of the fuse.nffs mounts under `roots`."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            head, _, tail = line.partition(" - ")
            fields, fstype = head.split(), tail.split()[:1]
            if fstype == ["fuse.nffs"] and _under(fields[4], roots):
                out.append((fields[4], fields[2].split(":")[1]))
    return out


def _abort_nffs_connections(say, roots: list[str]) -> None:
    if not FUSECTL.is_dir() or not any(FUSECTL.iterdir()):
        subprocess.run(["mount", "-t", "fusectl", "none", str(FUSECTL)], capture_output=True)
    for mnt, conn in _nffs_connections(roots):
        try:
            (FUSECTL / conn / "abort").write_text("1")
            say(f"hang guard: aborted the FUSE connection of {mnt}")
        except OSError as exc:
            say(f"hang guard: cannot abort the FUSE connection of {mnt}: {exc}")


def _report(item: pytest.Item, done: threading.Event) -> None:
    err = sys.stderr
    say = lambda text: print(text, file=err, flush=True)  # noqa: E731
    say(f"\n\nhang guard: {item.nodeid} still running after {TEST_DEADLINE_S:.0f} s; stacks of the test process:")
    faulthandler.dump_traceback(file=err, all_threads=True)
    if done.is_set():  # it ended meanwhile: the next test's mounts are not ours to touch
        return
    roots = _test_roots(item)
    daemons = _daemons(roots)
    for pid, _ in daemons:
        try:
            os.kill(pid, signal.SIGUSR2)
        except OSError:
            pass
    time.sleep(1.0)
    for pid, field in daemons:
        log = field / "nffs.log"
        try:
            tail = log.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
        except OSError as exc:
            tail = [f"(cannot read {log}: {exc})"]
        say(f"\nhang guard: daemon {pid} of {field}, last lines of its log:\n" + "\n".join(tail))
    if not done.is_set():
        _abort_nffs_connections(say, roots)


#: tests that outlived their deadline (failed at their report)
_overdue: set[str] = set()


def _watch(item: pytest.Item, done: threading.Event) -> None:
    nodeid = item.nodeid
    if done.wait(TEST_DEADLINE_S):
        return
    _overdue.add(nodeid)
    capman = item.config.pluginmanager.getplugin("capturemanager")

    def terminal():  # the main thread is stuck: print to the real terminal
        return capman.global_and_fixture_disabled() if capman is not None else contextlib.nullcontext()

    with terminal():
        _report(item, done)
    if done.wait(GRACE_S):
        return
    with terminal():
        print(f"hang guard: {nodeid} did not end {GRACE_S:.0f} s after the abort; stacks, then exit 3",
              file=sys.stderr, flush=True)
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
    os._exit(3)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    done = threading.Event()
    threading.Thread(target=_watch, args=(item, done), name="hang-guard", daemon=True).start()
    try:
        yield
    finally:
        done.set()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    # the phase (setup, call or teardown) that ended after the deadline fails (if it did not already)
    if item.nodeid in _overdue:
        _overdue.discard(item.nodeid)
        if not report.passed:
            return
        report.outcome = "failed"
        report.longrepr = f"{item.nodeid} outlived its deadline of {TEST_DEADLINE_S:.0f} s in {report.when} (hang guard; stacks above)"
