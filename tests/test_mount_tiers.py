"""Real mounts: capacities, spill, write-back, crash safety, checksums, tier failures (issue 4)."""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from mounting import Mounts, is_mounted, nffs

PAGE = 16384


def stats(mnt: Path) -> dict:
    return json.loads((mnt / "stats").read_text())


def tier_stats(mnt: Path) -> dict[str, dict]:
    return {t["name"]: t for t in stats(mnt)["store"]["tiers"]}


def homes(field: Path) -> dict[int, tuple[str, int]]:
    """page -> (tier name, slot) as committed in the field's page table."""
    import sqlite3

    conn = sqlite3.connect(f"file:{field}/meta.db?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT h.page, t.name, h.slot FROM homes h JOIN tiers t ON t.id = h.tier").fetchall()
    finally:
        conn.close()
    return {page: (name, slot) for page, name, slot in rows}


def slot_location(tier_dir: Path, slot: int, page_size: int) -> tuple[Path, int]:
    """The slab file and byte offset of a home slot (geometry from the tier's marker)."""
    per_slab = json.loads((tier_dir / ".nffs-tier").read_text())["slots_per_slab"]
    slab, index = divmod(slot, per_slab)
    return tier_dir / f"slab-{slab:06d}", index * page_size


def tier_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def test_capacities_spill_and_everything_lands_on_durable_tiers(mounts: Mounts, tmp_path: Path) -> None:
    field = mounts.init("--levels", "16", "--log2-table-size", "17", "--page-size", "16K")
    tiers = ["--tier", f"dram={tmp_path}/dram,kind=dram,capacity=2M", "--tier", f"nvme={tmp_path}/nvme,kind=nvme,capacity=6M",
             "--tier", f"hdd={tmp_path}/hdd,kind=hdd"]
    mnt = mounts.mount(field, *tiers, "--prefetch", "none")
    n = 14_000_000
    data = np.random.default_rng(0).integers(0, 256, n, dtype=np.uint8).tobytes()
    with open(mnt / "params", "r+b") as f:
        for off in range(0, n, 1 << 20):
            f.write(data[off:off + (1 << 20)])
        f.flush()
        os.fsync(f.fileno())
    ts = tier_stats(mnt)
    slack = 4 * PAGE
    assert ts["dram"]["used_bytes"] <= 2 * 2**20 + slack
    assert ts["nvme"]["used_bytes"] <= 6 * 2**20 + slack
    assert ts["hdd"]["pages"] > 0  # the overflow spilled down
    assert stats(mnt)["store"]["dirty_pages"] == 0
    materialised = stats(mnt)["store"]["materialised_pages"]
    assert materialised == -(-n // PAGE)
    with open(mnt / "params", "rb") as f:
        assert f.read(n) == data
    mounts.umount(mnt)
    # at rest every page has exactly one durable home, within the capacities, in a few files
    placed = homes(field)
    assert len(placed) == materialised
    on_nvme = [slot for name, slot in placed.values() if name == "nvme"]
    assert len(on_nvme) * PAGE <= 6 * 2**20 + slack
    assert len(set(placed.values())) == len(placed)  # no two pages share a slot
    assert len(tier_files(tmp_path / "nvme")) + len(tier_files(tmp_path / "hdd")) <= 4
    assert not tier_files(tmp_path / "dram")  # a clean unmount releases the memory tier
    assert nffs("fsck", str(field)).returncode == 0
    mnt = mounts.mount(field, *tiers, "--prefetch", "none")
    with open(mnt / "params", "rb") as f:
        assert f.read(n) == data


def test_fsynced_writes_survive_kill_9_and_losing_the_memory_tier(mounts: Mounts, tmp_path: Path) -> None:
    field = mounts.init("--levels", "8", "--log2-table-size", "14", "--page-size", "16K")
    dram = tmp_path / "dram"
    tiers = ["--tier", f"dram={dram},kind=dram,capacity=1M", "--tier", f"nvme={tmp_path}/nvme,kind=nvme"]
    mnt = mounts.mount(field, *tiers, "--prefetch", "none", "--writeback-interval", "3600")
    size = (mnt / "params").stat().st_size
    data = np.random.default_rng(1).integers(0, 256, size, dtype=np.uint8).tobytes()
    with open(mnt / "params", "r+b") as f:
        f.write(data)
        os.fsync(f.fileno())
    pid = stats(mnt)["pid"]
    os.kill(pid, signal.SIGKILL)
    for _ in range(100):
        try:
            os.kill(pid, 0)
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            if state == "Z":
                break
        except (ProcessLookupError, FileNotFoundError):
            break
        time.sleep(0.05)
    subprocess.run(["umount", "-l", str(mnt)], check=True)
    mounts.mounted.remove(mnt)
    shutil.rmtree(dram)
    res = nffs("fsck", str(field), check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    mnt2 = mounts.mount(field, *tiers, "--prefetch", "none")
    assert (mnt2 / "params").read_bytes() == data


@pytest.mark.allow_daemon_log(r"fails its checksum")
def test_corrupted_page_files_fail_fsck_and_read_as_eio(mounts: Mounts, tmp_path: Path) -> None:
    field = mounts.init("--levels", "8", "--log2-table-size", "14", "--page-size", "16K")
    tiers = ["--tier", f"dram={tmp_path}/dram,kind=dram,capacity=1M", "--tier", f"nvme={tmp_path}/nvme,kind=nvme"]
    mnt = mounts.mount(field, *tiers, "--prefetch", "none")
    size = (mnt / "params").stat().st_size
    data = np.random.default_rng(2).integers(0, 256, size, dtype=np.uint8).tobytes()
    (mnt / "params").write_bytes(data)
    mounts.umount(mnt)
    assert nffs("fsck", str(field)).returncode == 0
    placed = homes(field)
    bad_pages = [3, 10]
    for page in bad_pages:
        name, slot = placed[page]
        path, offset = slot_location(tmp_path / name, slot, PAGE)
        with open(path, "r+b") as f:
            f.seek(offset + 100)
            byte = f.read(1)
            f.seek(offset + 100)
            f.write(bytes([byte[0] ^ 0xFF]))
    res = nffs("fsck", str(field), check=False)
    assert res.returncode != 0
    assert "checksum" in res.stdout
    mnt = mounts.mount(field, *tiers, "--prefetch", "none")
    fd = os.open(mnt / "params", os.O_RDONLY)
    try:
        for page in bad_pages:
            with pytest.raises(OSError) as err:
                os.pread(fd, 4096, page * PAGE + 4096)
            assert err.value.errno == errno.EIO
        good = next(p for p in range(size // PAGE) if p not in bad_pages)
        assert os.pread(fd, PAGE, good * PAGE) == data[good * PAGE:(good + 1) * PAGE]
    finally:
        os.close(fd)
    assert stats(mnt)["store"]["checksum_failures"] >= 2
    mounts.umount(mnt)
    res = nffs("fsck", str(field), "--repair", check=False)
    assert "reset to the implicit init" in res.stdout
    assert nffs("fsck", str(field)).returncode == 0


@pytest.mark.allow_daemon_log(r"every durable tier is full")
def test_full_durable_tier_is_enospc_and_corrupts_nothing(mounts: Mounts, tmp_path: Path) -> None:
    field = mounts.init("--levels", "8", "--log2-table-size", "14", "--page-size", "16K")
    tiers = ["--tier", f"dram={tmp_path}/dram,kind=dram,capacity=64K", "--tier", f"nvme={tmp_path}/nvme,kind=nvme,capacity=256K"]
    mnt = mounts.mount(field, *tiers, "--prefetch", "none")
    fd = os.open(mnt / "params", os.O_RDWR)
    written = b""
    try:
        with pytest.raises(OSError) as err:
            for page in range(64):
                chunk = bytes([page % 251 + 1]) * PAGE
                os.pwrite(fd, chunk, page * PAGE)
                written += chunk
        assert err.value.errno == errno.ENOSPC
        assert os.pread(fd, len(written), 0) == written
        os.fsync(fd)
    finally:
        os.close(fd)
    assert len(written) >= 15 * PAGE
    mounts.umount(mnt)
    assert nffs("fsck", str(field)).returncode == 0


@pytest.mark.allow_daemon_log(r"its home tier is not available")
def test_vanished_tier_gives_eio_for_its_pages_only(mounts: Mounts, tmp_path: Path) -> None:
    field = mounts.init("--levels", "8", "--log2-table-size", "14", "--page-size", "16K")
    tiers = ["--tier", f"dram={tmp_path}/dram,kind=dram,capacity=64K", "--tier", f"nvme={tmp_path}/nvme,kind=nvme,capacity=128K",
             "--tier", f"hdd={tmp_path}/hdd,kind=hdd"]
    mnt = mounts.mount(field, *tiers, "--prefetch", "none")
    data = bytes(range(256)) * (40 * PAGE // 256)
    (mnt / "params").write_bytes(data) if False else None
    with open(mnt / "params", "r+b") as f:
        f.write(data)
    mounts.umount(mnt)
    lost = {page for page, (name, _) in homes(field).items() if name == "hdd"}
    assert lost
    shutil.rmtree(tmp_path / "hdd")
    mnt = mounts.mount(field, *tiers, "--prefetch", "none")
    fd = os.open(mnt / "params", os.O_RDONLY)
    try:
        for page in range(40):
            if page in lost:
                with pytest.raises(OSError) as err:
                    os.pread(fd, 100, page * PAGE)
                assert err.value.errno == errno.EIO
            else:
                assert os.pread(fd, PAGE, page * PAGE) == data[page * PAGE:(page + 1) * PAGE]
    finally:
        os.close(fd)
    assert stats(mnt)["pid"] > 0


def test_latency_tier_reads_are_counted_and_promoted(mounts: Mounts, tmp_path: Path) -> None:
    field = mounts.init("--levels", "8", "--log2-table-size", "14", "--page-size", "16K")
    base = ["--tier", f"dram={tmp_path}/dram,kind=dram,capacity=4M"]
    slow = ["--tier", f"nvme={tmp_path}/nvme,kind=nvme,latency=5ms"]
    mnt = mounts.mount(field, *base, *slow, "--prefetch", "none")
    size = (mnt / "params").stat().st_size
    data = np.random.default_rng(3).integers(0, 256, size, dtype=np.uint8).tobytes()
    (mnt / "params").write_bytes(data)
    mounts.umount(mnt)
    mnt = mounts.mount(field, *base, *slow, "--prefetch", "none")
    with open(mnt / "params", "rb") as f:
        assert f.read() == data
    ts = tier_stats(mnt)
    assert ts["nvme"]["latency_s"] == pytest.approx(0.005)
    assert ts["nvme"]["reads"] >= size // PAGE
    assert ts["dram"]["promotions"] >= size // PAGE


def test_tier_spec_errors_and_hardware_listing(tmp_path: Path) -> None:
    bad_specs = ["noequals", "x=", "x=/p,kind=tape", "x=/p,capacity=12Q", "x=/p,latency=fast", "x=/p,colour=red",
                 "x=/p,kind=nvme,numa=0", "x=/p,capacity=150%"]
    for spec in bad_specs:
        res = nffs("init", str(tmp_path / "f"), "--tier", spec, check=False)
        assert res.returncode != 0 and res.stderr.strip(), spec
    res = nffs("init", str(tmp_path / "f"), "--tier", f"m={tmp_path}/m,kind=dram", check=False)
    assert res.returncode != 0 and "durable" in res.stderr
    assert not (tmp_path / "f" / "field.json").exists()
    nffs("init", str(tmp_path / "g"))
    out = json.loads(nffs("stat", str(tmp_path / "g"), "--json", "--hardware").stdout)
    assert out["mounted"] is False
    nodes = out["hardware"]["numa_nodes"]
    if os.path.isdir("/sys/devices/system/node/node0"):
        assert nodes and nodes[0]["node"] == 0 and nodes[0]["memory_bytes"] > 0
    assert isinstance(out["hardware"]["cxl_candidates"], list)


def test_cxl_tier_bound_to_a_numa_node(mounts: Mounts, tmp_path: Path) -> None:
    assert os.path.isdir("/sys/devices/system/node/node0"), "Linux always has NUMA node 0"
    field = mounts.init("--levels", "4", "--log2-table-size", "12")
    cxl = tmp_path / "cxl"
    tiers = ["--tier", f"cxl={cxl},kind=cxl,numa=0,capacity=4M", "--tier", f"nvme={tmp_path}/nvme,kind=nvme"]
    mnt = mounts.mount(field, *tiers, "--prefetch", "none")
    size = (mnt / "params").stat().st_size
    data = np.random.default_rng(4).integers(0, 256, size, dtype=np.uint8).tobytes()
    (mnt / "params").write_bytes(data)
    ts = tier_stats(mnt)
    assert ts["cxl"]["kind"] == "cxl" and ts["cxl"]["numa"] == 0
    assert ts["cxl"]["numa_binding"] in ("tmpfs", "mbind")
    assert ts["cxl"]["pages"] > 0
    mounts.umount(mnt)
    assert not is_mounted(cxl)  # the bound tmpfs we mounted is gone with the daemon
    mnt = mounts.mount(field, *tiers, "--prefetch", "none")
    assert (mnt / "params").read_bytes() == data
    res = nffs("init", str(tmp_path / "nonode"), "--tier", f"c={tmp_path}/c,kind=cxl,numa=999", "--tier", f"n={tmp_path}/n2")
    res = nffs("mount", str(tmp_path / "nonode"), str(tmp_path), check=False)
    assert res.returncode != 0 and "NUMA node 999" in res.stderr


def test_a_mount_that_leaves_out_or_misnames_a_tier_holding_pages_is_refused_and_changes_nothing(
        mounts: Mounts, tmp_path: Path) -> None:
    """SPEC 7, bad tier specs: a mount whose --tier list leaves out the tier holding the
    pages (or gives its directory under another tier's name) used to mount with every page
    EIO and leave that tier set on record, so that `fsck --repair` then reset the intact
    data to the init. Now it is a clear error, and the field is as before."""
    field = mounts.init("--levels", "4", "--log2-table-size", "12", "--page-size", "4K")
    mnt = mounts.mount(field, "--prefetch", "none")  # the embedded default tiers
    nvme_dir = next(Path(t["path"]) for t in stats(mnt)["store"]["tiers"] if t["name"] == "nvme")
    with open(mnt / "params", "r+b") as f:
        f.seek(100)
        f.write(b"DATA")
    mounts.umount(mnt)
    copy = tmp_path / "copy-of-nvme"
    shutil.copytree(nvme_dir, copy)
    target = tmp_path / "refused"
    target.mkdir()
    attempts = {
        "left out (renamed)": (["--tier", f"home={nvme_dir},kind=nvme"], "'nvme'"),
        "left out (another dir)": (["--tier", f"other={tmp_path}/empty,kind=nvme"], "'nvme'"),
        "another tier's dir": (["--tier", f"nvme={nvme_dir},kind=nvme", "--tier", f"home={copy},kind=hdd"], "given here as tier 'home'"),
    }
    for what, (tiers, expected) in attempts.items():
        res = nffs("mount", str(field), str(target), *tiers, "--prefetch", "none", check=False)
        assert res.returncode != 0 and expected in res.stderr, (what, res.stderr)
        assert not is_mounted(target), what
    report = nffs("fsck", "--repair", str(field))
    assert "reset" not in report.stdout + report.stderr
    mnt = mounts.mount(field, "--prefetch", "none")
    with open(mnt / "params", "rb") as f:
        f.seek(100)
        assert f.read(4) == b"DATA"


def test_a_missing_durable_root_is_told_at_mount_and_shown_by_stat(mounts: Mounts, tmp_path: Path) -> None:
    """A configured tier whose directory is gone: the field mounts (the rest of it serves),
    its pages give EIO, and the user is told — by `nffs mount` on stderr, and by `nffs stat`."""
    field = mounts.init("--levels", "8", "--log2-table-size", "14", "--page-size", "16K")
    tiers = ["--tier", f"dram={tmp_path}/dram,kind=dram,capacity=1M", "--tier", f"nvme={tmp_path}/nvme,kind=nvme"]
    mnt = mounts.mount(field, *tiers, "--prefetch", "none")
    (mnt / "params").write_bytes(b"x" * PAGE * 2)
    mounts.umount(mnt)
    os.rename(tmp_path / "nvme", tmp_path / "away")
    target = tmp_path / "partial"
    target.mkdir()
    mounts.watch_log(field)
    mounts.allow_log("its home tier is not available")  # the read answered EIO, logged as an operator must see it
    res = nffs("mount", str(field), str(target), *tiers, "--prefetch", "none", check=False)
    if is_mounted(target):
        mounts.mounted.append(target)
    assert res.returncode == 0, res.stderr
    assert "tier nvme" in res.stderr and "EIO" in res.stderr and str(tmp_path / "nvme") in res.stderr
    assert not (tmp_path / "nvme").exists()  # never recreated
    assert "UNAVAILABLE" in nffs("stat", str(target)).stdout
    with pytest.raises(OSError) as err:
        with open(target / "params", "rb") as f:
            f.read(100)
    assert err.value.errno == errno.EIO


def test_tier_option_twice_capacity_below_a_page_and_bad_umount_timeouts_are_refused(mounts: Mounts, tmp_path: Path) -> None:
    res = nffs("init", str(tmp_path / "f"), "--tier", f"n={tmp_path}/n,kind=nvme,kind=hdd", check=False)
    assert res.returncode != 0 and "given twice" in res.stderr
    res = nffs("init", str(tmp_path / "f"), "--page-size", "4K", "--tier", f"n={tmp_path}/n,kind=nvme,capacity=1.5K", check=False)
    assert res.returncode != 0 and "less than one page" in res.stderr
    assert not (tmp_path / "f" / "field.json").exists()
    field = mounts.init("--levels", "4", "--log2-table-size", "12", "--page-size", "4K")
    target = tmp_path / "m"
    target.mkdir()
    res = nffs("mount", str(field), str(target), "--tier", f"n={tmp_path}/n2,kind=nvme,capacity=2K", check=False)
    assert res.returncode != 0 and "less than one page" in res.stderr and not is_mounted(target)
    mnt = mounts.mount(field, "--prefetch", "none")
    for bad in ("-1", "0", "nan", "inf"):
        res = nffs("umount", str(mnt), "--timeout", bad, check=False)
        assert res.returncode == 2 and "above 0" in res.stderr, bad
        assert is_mounted(mnt), bad  # refused before anything was done
