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
