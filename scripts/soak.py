#!/usr/bin/env python3
"""Soak: run the crash, CrashMonkey, model and concurrency suites' core loops for many rounds.

    sudo .venv/bin/python scripts/soak.py --rounds 500 [--seed N] [--keep]

Every round is one of (by schedule): a random crash round (random writes, kill -9 after them,
during write-back or during fsync, sometimes losing the dram tier; then recovery, model check,
clean umount, fsck, remount, flip check), one CrashMonkey workload (cycling through all of
them), one hypothesis state-machine example, or one concurrent round (6 processes). The code
is tests/crashkit.py and tests/test_model.py, shared with the test suites.

Prints rounds, operations, bytes verified, faults injected, losses, flips, fsck failures, hangs,
daemon crashes and errors; exits 1 if any of the last six is non-zero.
"""
from __future__ import annotations

import argparse
import errno
import os
import random
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from crashkit import (ByteModel, Loss, Rig, Tally, concurrency_round, crash_round, crashmonkey_workloads,  # noqa: E402
                      process_alive, run_crashmonkey, spec_init_bytes, verify)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=50)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--ops", type=int, default=8, help="max operations per crash round")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--stop-on-loss", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("soak: run as root (kill -9 of the daemon, drop_caches, mounts)", file=sys.stderr)
        return 2
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    work = Path(tempfile.mkdtemp(prefix="nffs-soak-"))
    tally = Tally()
    errors = 0
    workloads = crashmonkey_workloads()
    rng.shuffle(workloads)
    cm_next = 0
    rig: Rig | None = None
    model: ByteModel | None = None
    started = time.monotonic()
    print(f"soak: seed {seed}, {args.rounds} rounds, work dir {work}", flush=True)

    def fresh_rig() -> tuple[Rig, ByteModel]:
        nonlocal rig
        if rig is not None:
            rig.cleanup()
        r = Rig(work / f"rig{tally.rounds}-{time.monotonic_ns()}")
        r.mount()
        m = ByteModel(spec_init_bytes(r.cfg, r.size))
        verify(r, m, tally, "fresh field")
        rig = r
        return r, m

    for i in range(args.rounds):
        kind = "crash"
        if i % 50 == 49:
            kind = "model"
        elif i % 25 == 24:
            kind = "concurrency"
        elif i % 10 == 9:
            kind = "crashmonkey"
        before = (tally.losses, tally.flips, tally.fsck_failures, tally.hangs, tally.daemon_crashes)
        try:
            if kind == "crashmonkey":
                w = workloads[cm_next % len(workloads)]
                cm_next += 1
                run_crashmonkey(work / f"cm{i}", w, tally)
            elif kind == "model":
                from hypothesis import HealthCheck, settings
                from hypothesis.stateful import run_state_machine_as_test
                from test_model import FieldMachine

                run_state_machine_as_test(FieldMachine, settings=settings(
                    max_examples=1, stateful_step_count=30, deadline=None, database=None,
                    suppress_health_check=list(HealthCheck)))
                tally.rounds += 1
                tally.operations += 30
            else:
                if rig is None or model is None:
                    rig, model = fresh_rig()
                if kind == "concurrency":
                    concurrency_round(rig, model, tally, procs=6, rounds=30, seed=rng.randrange(1 << 30))
                else:
                    crash_round(rig, model, rng, tally, args.ops)
        except Loss as exc:
            after = (tally.losses, tally.flips, tally.fsck_failures, tally.hangs, tally.daemon_crashes)
            if after == before:
                if "hang" in str(exc):
                    tally.hangs += 1
                else:
                    tally.losses += 1
            tally.problem(kind, str(exc).splitlines()[0][:400])
            print(f"round {i} ({kind}): {exc}", flush=True)
            if rig is not None:
                rig.cleanup()
            rig = model = None  # the field's state is unknown now: start a new one
        except (OSError, AssertionError) as exc:
            dead = rig is not None and rig.pid is not None and not process_alive(rig.pid)
            if dead or (isinstance(exc, OSError) and exc.errno in (errno.ENOTCONN, errno.ECONNABORTED)):
                tally.daemon_crashes += 1
            else:
                errors += 1
            tally.problem(kind, f"{type(exc).__name__}: {exc}"[:400])
            print(f"round {i} ({kind}): unexpected {type(exc).__name__}: {exc}", flush=True)
            traceback.print_exc()
            if rig is not None:
                rig.cleanup()
            rig = model = None
        if (i + 1) % 10 == 0:
            print(f"[{i + 1}/{args.rounds} {time.monotonic() - started:.0f}s] {tally.summary()} errors={errors}", flush=True)
        if args.stop_on_loss and not tally.ok():
            break
    if rig is not None:
        try:
            rig.umount()
            res = rig.fsck()
            if res.returncode != 0:
                tally.fsck_failures += 1
                tally.problem("final", res.stdout.strip().splitlines()[-1] if res.stdout.strip() else "fsck failed")
        except Exception as exc:  # noqa: BLE001 - reported below
            errors += 1
            tally.problem("final", str(exc)[:400])
        rig.cleanup()
    print()
    print(f"seed:            {seed}")
    print(f"rounds:          {tally.rounds}")
    print(f"operations:      {tally.operations}")
    print(f"bytes verified:  {tally.bytes_verified}")
    print(f"faults injected: {tally.faults_injected}")
    print(f"losses:          {tally.losses}")
    print(f"flips:           {tally.flips}")
    print(f"fsck failures:   {tally.fsck_failures}")
    print(f"hangs:           {tally.hangs}")
    print(f"daemon crashes:  {tally.daemon_crashes}")
    print(f"errors:          {errors}")
    print(f"time:            {time.monotonic() - started:.0f} s")
    for p in tally.problems[:20]:
        print(f"  - {p}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if tally.ok() and errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
