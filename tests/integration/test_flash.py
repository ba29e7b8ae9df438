"""`sdbox flash` on image files and loop devices, as an R&D engineer runs it."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from sdbox.bootimage import disk
from sdbox.bootimage.errors import UnsafeTarget
from sdbox.bootimage.flash import check_target

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
GENERATIONS = ROOT / "bootimage" / "generations"
TOKEN = b"enrol-7Q2x9LmN4vB8kP3sR6tW1yZ5aC0dE"
ESP = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
LINUX = "0fc63daf-8483-4772-8e79-3d69d8477de4"


def make_image(path: Path, generation: str = "qemu-q35") -> Path:
    """A small sdbox-shaped disk: ESP, config area with a manifest, a root with data."""
    specs = [
        disk.PartitionSpec("esp", ESP, 4 * 2**20),
        disk.PartitionSpec(disk.CONFIG_PARTITION, LINUX, 4 * 2**20),
        disk.PartitionSpec("root-a", LINUX, 4 * 2**20),
    ]
    parts = disk.create_gpt(path, specs, "5db0c0f1-0000-4000-8000-000000000001")
    area = disk.ConfigArea(path, disk.find_partition(parts, disk.CONFIG_PARTITION))
    area.format()
    manifest = json.dumps({"generation": generation, "version": "0.1.0"}).encode()
    area.write(disk.IMAGE_MANIFEST, manifest, path.parent)
    root = disk.find_partition(parts, "root-a")
    with path.open("r+b") as stream:
        stream.seek(root.offset)
        stream.write(hashlib.sha256(b"root").digest() * (root.size // 32))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    path.with_name(path.name + ".sha256").write_text(f"{digest}  {path.name}\n")
    return path


def run_flash(*args: str | Path, stdin: bytes = b"") -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"), "LC_ALL": "C.UTF-8"}
    return subprocess.run(
        [sys.executable, "-m", "sdbox", "flash", *map(str, args),
         "--generations-dir", str(GENERATIONS)],
        input=stdin.decode(), capture_output=True, text=True, timeout=120, env=env,
        check=False, cwd=ROOT,
    )  # fmt: skip


def config_area(target: Path) -> disk.ConfigArea:
    with target.open("rb") as stream:
        parts = disk.read_gpt(stream)
    return disk.ConfigArea(target, disk.find_partition(parts, disk.CONFIG_PARTITION))


def outside_config(path: Path, size: int) -> bytes:
    """The disk's bytes except the config area (which flashing personalises)."""
    with path.open("rb") as stream:
        config = disk.find_partition(disk.read_gpt(stream), disk.CONFIG_PARTITION)
        stream.seek(0)
        data = stream.read(size)
    return data[: config.offset] + data[config.offset + config.size :]


@pytest.fixture
def image(tmp_path: Path) -> Path:
    return make_image(tmp_path / "sdbox-qemu-q35.raw")


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_bytes(TOKEN + b"\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def loop_device(tmp_path: Path) -> Iterator[Path]:
    """A loop device over a sparse file as large as a qemu-q35 box's disk."""
    backing = tmp_path / "disk.img"
    with backing.open("wb") as stream:
        stream.truncate(3 * 2**30)
    device = subprocess.run(
        ["losetup", "--find", "--show", "--partscan", str(backing)],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout.strip()  # fmt: skip
    try:
        yield Path(device)
    finally:
        subprocess.run(["losetup", "--detach", device], timeout=30, check=False)


def test_flash_to_an_image_file_writes_verifies_and_personalises(
    image: Path, token_file: Path, tmp_path: Path
) -> None:
    target = tmp_path / "box.raw"
    target.write_bytes(b"old contents")
    done = run_flash(image, target, "--generation", "qemu-q35", "--yes",
                     "--enrolment-token-file", token_file)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "verified:     yes" in done.stdout
    assert "one-time token written" in done.stdout
    assert TOKEN.decode() not in done.stdout + done.stderr
    size = image.stat().st_size
    assert outside_config(target, size) == outside_config(image, size)
    area = config_area(target)
    assert area.read(disk.TOKEN_FILE) == TOKEN
    assert area.read(disk.GENERATION_FILE) == (GENERATIONS / "qemu-q35.toml").read_bytes()
    record = json.loads(area.read(disk.FLASH_RECORD))
    assert record["sha256"] == hashlib.sha256(image.read_bytes()).hexdigest()
    assert area.read(disk.IMAGE_MANIFEST)  # the build's manifest is kept


def test_every_flashed_box_gets_its_own_machine_id(image: Path, tmp_path: Path) -> None:
    # two boxes from one image: the initramfs binds each one's ID over the read-only
    # root's empty /etc/machine-id, so their journals and D-Bus IDs never coincide
    ids = []
    for box in ("box-1.raw", "box-2.raw"):
        target = tmp_path / box
        target.write_bytes(b"")  # an image file is flashed only where one exists
        done = run_flash(image, target, "--generation", "qemu-q35", "--yes")
        assert done.returncode == 0, done.stderr
        ids.append(config_area(target).read(disk.MACHINE_ID_FILE).decode())
    for machine_id in ids:
        assert re.fullmatch(r"[0-9a-f]{32}\n", machine_id), machine_id
        assert uuid.UUID(machine_id.strip()).version == 4
    assert ids[0] != ids[1]


def test_flash_to_a_loop_device_with_the_token_on_stdin(image: Path, loop_device: Path) -> None:
    done = run_flash(image, loop_device, "--generation", "qemu-q35", "--yes",
                     "--enrolment-token-file", "-", stdin=TOKEN)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "verified:     yes" in done.stdout
    size = image.stat().st_size
    assert outside_config(loop_device, size) == outside_config(image, size)
    assert config_area(loop_device).read(disk.TOKEN_FILE) == TOKEN


def test_refuses_a_device_with_a_mounted_filesystem(
    image: Path, loop_device: Path, tmp_path: Path
) -> None:
    subprocess.run(["mkfs.ext4", "-q", "-F", str(loop_device)], timeout=120, check=True)
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    subprocess.run(["mount", str(loop_device), str(mountpoint)], timeout=60, check=True)
    try:
        (mountpoint / "precious").write_text("data")
        done = run_flash(image, loop_device, "--generation", "qemu-q35", "--yes")
        assert done.returncode != 0
        assert "is mounted on" in done.stderr
        assert (mountpoint / "precious").read_text() == "data"
    finally:
        subprocess.run(["umount", str(mountpoint)], timeout=60, check=True)
    # the filesystem was not touched
    subprocess.run(["e2fsck", "-n", "-f", str(loop_device)], timeout=120, check=True,
                   capture_output=True)  # fmt: skip


def test_refuses_a_partition_instead_of_the_disk(image: Path, loop_device: Path) -> None:
    run_flash(image, loop_device, "--generation", "qemu-q35", "--yes")
    subprocess.run(["partx", "--update", str(loop_device)], timeout=30, check=False)
    partition = Path(f"{loop_device}p1")
    if not partition.exists():
        pytest.fail(f"{partition} did not appear after partx: loop partitions unavailable")
    done = run_flash(image, partition, "--generation", "qemu-q35", "--yes")
    assert done.returncode != 0
    assert "is a partition: flash the whole disk" in done.stderr


def test_refuses_the_running_systems_disk(image: Path) -> None:
    # through the library's check only: a bug here must not be able to write
    root_dev = os.stat("/").st_dev
    number = f"{os.major(root_dev)}:{os.minor(root_dev)}"
    sys_dir = Path(f"/sys/dev/block/{number}").resolve()
    if not sys_dir.exists():
        pytest.skip("/ is not on a block device here (overlay or tmpfs root)")
    disk_dir = sys_dir.parent if (sys_dir / "partition").exists() else sys_dir
    device = Path("/dev") / disk_dir.name
    with pytest.raises(UnsafeTarget, match="running system"):
        check_target(device, image)


def test_without_yes_it_asks_and_no_leaves_the_target_alone(
    image: Path, token_file: Path, tmp_path: Path
) -> None:
    target = tmp_path / "box.raw"
    target.write_bytes(b"old contents")
    done = run_flash(image, target, "--generation", "qemu-q35",
                     "--enrolment-token-file", token_file, stdin=b"n\n")  # fmt: skip
    assert done.returncode != 0
    assert "Everything on it will be lost" in done.stderr
    assert target.read_bytes() == b"old contents"


def test_refuses_an_image_built_for_another_generation(image: Path, tmp_path: Path) -> None:
    target = tmp_path / "box.raw"
    target.write_bytes(b"")
    done = run_flash(image, target, "--generation", "nuc-g1", "--yes")
    assert done.returncode != 0
    assert "built for generation 'qemu-q35', not 'nuc-g1'" in done.stderr
    assert target.read_bytes() == b""


def test_an_image_that_differs_from_its_published_hash_is_reported(
    image: Path, tmp_path: Path
) -> None:
    with image.open("r+b") as stream:
        stream.seek(-4096, os.SEEK_END)
        stream.write(b"\x01")
    target = tmp_path / "box.raw"
    target.write_bytes(b"")
    done = run_flash(image, target, "--generation", "qemu-q35", "--yes")
    assert done.returncode != 0
    assert "is not the image the build published" in done.stderr


def test_unknown_generation_names_the_known_ones(image: Path, tmp_path: Path) -> None:
    done = run_flash(image, tmp_path / "x.raw", "--generation", "nuc-g9", "--yes")
    assert done.returncode == 7
    assert "no such generation (known: nuc-g1, qemu-q35)" in done.stderr


SITE = """
[[gateways]]
address = "198.51.100.1"
identity = "gw1.centre.example"

[[networks]]
cidr = "10.20.0.0/16"
purpose = "bubbles"
"""


def test_the_site_profile_is_written_into_the_config_area(image: Path, tmp_path: Path) -> None:
    site = tmp_path / "site.toml"
    site.write_text(SITE)
    target = tmp_path / "box.raw"
    target.write_bytes(b"")
    done = run_flash(image, target, "--generation", "qemu-q35", "--yes", "--site", site)
    assert done.returncode == 0, done.stderr
    assert "site:         profile written" in done.stdout
    assert config_area(target).read(disk.SITE_FILE) == SITE.encode()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (SITE.replace("10.20.0.0/16", "10.20.0.0/33"), r"\[networks\[1\]\] cidr: '10.20.0.0/33' is not a network"),
        (SITE.replace('"198.51.100.1"', '"10.20.0.1"'), r"\[gateways\[1\]\] address: 10.20.0.1 is inside the tunnel network"),
        (SITE.split("[[networks]]", maxsplit=1)[0], r"networks is required"),
    ],
)  # fmt: skip
def test_a_bad_site_profile_is_refused_before_anything_is_written(
    image: Path, tmp_path: Path, text: str, message: str
) -> None:
    site = tmp_path / "site.toml"
    site.write_text(text)
    target = tmp_path / "box.raw"
    target.write_bytes(b"old contents")
    done = run_flash(image, target, "--generation", "qemu-q35", "--yes", "--site", site)
    assert done.returncode == 7, done.stderr
    assert re.search(rf"site.toml: .*{message}", done.stderr), done.stderr
    assert target.read_bytes() == b"old contents"
    assert "About to overwrite" not in done.stderr


def test_a_missing_site_profile_is_refused_before_anything_is_written(
    image: Path, tmp_path: Path
) -> None:
    target = tmp_path / "box.raw"
    target.write_bytes(b"old contents")
    done = run_flash(image, target, "--generation", "qemu-q35", "--yes",
                     "--site", tmp_path / "nowhere.toml")  # fmt: skip
    assert done.returncode == 7
    assert "nowhere.toml: the site profile does not exist" in done.stderr
    assert target.read_bytes() == b"old contents"
