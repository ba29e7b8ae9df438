"""The appliance disk: its GPT, and the config area ``sdbox flash`` writes.

The image is a GPT disk (layout in docs/image.md). Its config area is a small
FAT partition named ``sdbox-config``: the image build puts ``image.json``
there, ``sdbox flash`` adds the box's generation profile, its machine ID and
its one-time enrolment token, and first boot consumes the token (the
initramfs reads the machine ID at every boot). FAT is written with
mtools at the partition's byte offset, so neither the image build nor
flashing needs to mount anything.
"""

from __future__ import annotations

import json
import struct
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from sdbox.bootimage import tools
from sdbox.bootimage.errors import BootImageError

SECTOR = 512
CONFIG_PARTITION = "sdbox-config"
IMAGE_MANIFEST = "image.json"
GENERATION_FILE = "generation.toml"
TOKEN_FILE = "enrolment-token"  # noqa: S105  (a file name, not a secret)
FLASH_RECORD = "flash.json"
# The site profile (sdbox.network.site): the centre's gateways and networks.
SITE_FILE = "site.toml"
# The site's signed project catalogue (sdbox.smartcard.catalogue): where the
# earlier one-project cards' projects are; sdbox-site copies it to /run at boot.
CATALOGUE_FILE = "project-catalogue.json"
# The box's systemd machine ID (machine-id(5)): the root is read-only, so the
# initramfs binds this over its empty /etc/machine-id (scripts/local-bottom/
# sdbox-machine-id); without it systemd makes a new one at every boot.
MACHINE_ID_FILE = "machine-id"
_GPT_SIGNATURE = b"EFI PART"


@dataclass(frozen=True)
class Partition:
    """One GPT entry."""

    number: int
    name: str
    type_guid: uuid.UUID
    part_guid: uuid.UUID
    first_lba: int
    last_lba: int

    @property
    def offset(self) -> int:
        """Byte offset on the disk."""
        return self.first_lba * SECTOR

    @property
    def size(self) -> int:
        """Size in bytes."""
        return (self.last_lba - self.first_lba + 1) * SECTOR


def read_gpt(stream: BinaryIO) -> list[Partition]:
    """The partitions of the GPT disk in ``stream`` (primary header, CRCs checked)."""
    stream.seek(SECTOR)
    header = stream.read(92)
    if len(header) < 92 or header[:8] != _GPT_SIGNATURE:
        raise BootImageError("not a GPT disk image (no 'EFI PART' header at LBA 1)")
    header_size = struct.unpack_from("<I", header, 12)[0]
    stream.seek(SECTOR)
    raw_header = bytearray(stream.read(header_size))
    crc = struct.unpack_from("<I", raw_header, 16)[0]
    raw_header[16:20] = b"\0\0\0\0"
    if zlib.crc32(bytes(raw_header)) != crc:
        raise BootImageError("the GPT header is corrupt (CRC mismatch)")
    entries_lba, count, entry_size, entries_crc = struct.unpack_from("<QIII", header, 72)
    stream.seek(entries_lba * SECTOR)
    table = stream.read(count * entry_size)
    if zlib.crc32(table) != entries_crc:
        raise BootImageError("the GPT partition table is corrupt (CRC mismatch)")
    partitions = []
    for index in range(count):
        entry = table[index * entry_size : (index + 1) * entry_size]
        type_guid = uuid.UUID(bytes_le=entry[:16])
        if type_guid.int == 0:
            continue
        first, last = struct.unpack_from("<QQ", entry, 32)
        name = entry[56:128].decode("utf-16-le").rstrip("\0")
        partitions.append(
            Partition(index + 1, name, type_guid, uuid.UUID(bytes_le=entry[16:32]), first, last)
        )
    return partitions


def find_partition(partitions: list[Partition], name: str) -> Partition:
    """The partition called ``name``."""
    for partition in partitions:
        if partition.name == name:
            return partition
    names = ", ".join(p.name for p in partitions) or "none"
    raise BootImageError(f"the image has no partition named {name!r} (it has: {names})")


class ConfigArea:
    """The FAT config partition of an image file or a disk, through mtools."""

    def __init__(self, disk: Path, partition: Partition) -> None:
        self.disk = disk
        self.partition = partition
        # mtools addresses a filesystem inside a disk as FILE@@OFFSET
        self._image = f"{disk}@@{partition.offset}"
        # no ~/.mtoolsrc, no drive-letter checks on a non-floppy geometry
        self._env = {"MTOOLS_SKIP_CHECK": "1", "MTOOLSRC": "/dev/null", "HOME": "/nonexistent"}

    def format(self, label: str = "SDBOXCFG", volume_id: str = "5db0c0f1") -> None:
        """Make an empty FAT filesystem (image build only)."""
        sectors = self.partition.size // SECTOR
        tools.run(
            ["mformat", "-i", self._image, "-T", str(sectors), "-h", "64", "-s", "32",
             "-v", label, "-N", volume_id, "::"],
            what="formatting the config area", timeout=60, env=self._env,
        )  # fmt: skip

    def write(self, name: str, data: bytes, scratch: Path) -> None:
        """Write file ``name`` (replacing it); ``scratch`` is a private directory."""
        source = scratch / name
        source.write_bytes(data)
        source.chmod(0o600)
        try:
            tools.run(
                ["mcopy", "-o", "-i", self._image, source, f"::/{name}"],
                what=f"writing {name} to the config area", timeout=60, env=self._env,
            )  # fmt: skip
        finally:
            # the token must not outlive the write in a file of ours
            source.write_bytes(b"\0" * len(data))
            source.unlink()

    def read(self, name: str) -> bytes:
        """The content of file ``name``."""
        out = tools.run(
            ["mtype", "-i", self._image, f"::/{name}"],
            what=f"reading {name} from the config area", timeout=60, env=self._env,
        )  # fmt: skip
        return out.encode()

    def names(self) -> list[str]:
        """File names in the config area's root directory."""
        out = tools.run(
            ["mdir", "-b", "-i", self._image, "::/"],
            what="listing the config area", timeout=60, env=self._env,
        )  # fmt: skip
        return sorted(line.rsplit("/", 1)[-1] for line in out.splitlines() if line.strip())

    def manifest(self) -> dict[str, Any]:
        """The image build's ``image.json``."""
        try:
            data: dict[str, Any] = json.loads(self.read(IMAGE_MANIFEST))
        except (BootImageError, ValueError) as exc:
            raise BootImageError(
                f"the image's config area has no readable {IMAGE_MANIFEST}: not an sdbox image?"
            ) from exc
        return data


@dataclass(frozen=True)
class PartitionSpec:
    """A partition to create: name, GPT type, size, and optionally its GUID."""

    name: str
    type_guid: str
    size: int
    part_guid: str | None = None


ALIGN = 1024 * 1024


def layout(specs: list[PartitionSpec]) -> tuple[list[int], int]:
    """Offsets of each partition (1 MiB aligned) and the disk size they need."""
    offsets = []
    position = ALIGN
    for spec in specs:
        offsets.append(position)
        position += -(-spec.size // ALIGN) * ALIGN
    return offsets, position + ALIGN


def create_gpt(path: Path, specs: list[PartitionSpec], disk_guid: str) -> list[Partition]:
    """A sparse disk image at ``path`` with an empty GPT of ``specs``."""
    offsets, size = layout(specs)
    with path.open("wb") as stream:
        stream.truncate(size)
    lines = ["label: gpt", f"label-id: {disk_guid}", "unit: sectors", "first-lba: 2048", ""]
    for spec, offset in zip(specs, offsets, strict=True):
        line = f'start={offset // SECTOR}, size={spec.size // SECTOR}, type={spec.type_guid}, name="{spec.name}"'
        if spec.part_guid:
            line += f", uuid={spec.part_guid}"
        lines.append(line)
    tools.run(
        ["sfdisk", "--no-reread", "--no-tell-kernel", "--quiet", path],
        what="partitioning the image", timeout=60, input=("\n".join(lines) + "\n").encode(),
    )  # fmt: skip
    with path.open("rb") as stream:
        return read_gpt(stream)


def write_at(path: Path, offset: int, source: Path, limit: int) -> None:
    """Copy file ``source`` into ``path`` at ``offset`` (at most ``limit`` bytes), keeping holes."""
    size = source.stat().st_size
    if size > limit:
        raise BootImageError(f"{source.name} ({size} bytes) does not fit its partition ({limit})")
    with source.open("rb") as src, path.open("r+b") as dst:
        dst.seek(offset)
        while chunk := src.read(4 * 1024 * 1024):
            if chunk.count(0) == len(chunk):
                dst.seek(len(chunk), 1)  # leave a hole: the image stays sparse
            else:
                dst.write(chunk)
