"""Unit checks of the two safety nets around real mounts: where a mount may go, and the
daemon-log check of the real-mount fixture."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from nffs.errors import InvalidInput
from nffs.fs.daemon import UnsafeMountPoint, check_mount_location

from mounting import log_problems


def test_mount_point_overlapping_the_fields_storage_is_refused(tmp_path: Path) -> None:
    field, dram, nvme, outer = (tmp_path / n for n in ("field", "dram", "nvme", "outer"))
    for d in (field / "pages", dram, nvme / "0", outer / "tier", tmp_path / "elsewhere"):
        d.mkdir(parents=True)
    os.symlink(field, tmp_path / "link")
    places = [("the field directory", str(field)), ("tier dram", str(dram)), ("tier nvme", str(nvme)),
              ("tier inner", str(outer / "tier"))]
    for bad in (field, field / "pages", dram, nvme / "0", tmp_path / "link", outer, tmp_path):
        with pytest.raises(UnsafeMountPoint) as err:
            check_mount_location(str(bad), places)
        assert "cannot mount on" in str(err.value)
        assert isinstance(err.value, InvalidInput) and isinstance(err.value, ValueError)
    check_mount_location(str(tmp_path / "elsewhere"), places)
    check_mount_location(str(tmp_path / "field-sibling"), places)  # a shared prefix is not "inside"


def test_daemon_log_check_flags_errors_and_tracebacks_unless_allowed() -> None:
    import re

    log = "\n".join([
        "2026-11-26 00:53:49,870 13010 nffs.fs.ops INFO: fine",
        "2026-11-26 00:53:49,871 13010 nffs.fs.errors ERROR: read: unexpected failure; answering EIO",
        "Traceback (most recent call last):",
        '  File "x.py", line 1, in f',
        "RuntimeError: boom",
        "2026-11-26 00:53:49,872 13010 nffs.tiers.store ERROR: checksum mismatch on page 3",
        "2026-11-26 00:53:49,873 13010 nffs.fs.errors WARNING: rejected decoder.npz",
    ])
    problems = log_problems(log, [])
    assert len(problems) == 2 and "RuntimeError: boom" in problems[0]
    assert log_problems(log, [re.compile("checksum mismatch")]) == problems[:1]
    assert log_problems("Traceback (most recent call last):\nSystemExit", []) != []
    assert log_problems(log.splitlines()[0], []) == []
