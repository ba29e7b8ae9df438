"""Flashing a box: write an appliance image to its disk, verify it, personalise it.

``sdbox flash`` (sdbox/_cli/flash.py) is a thin layer over this module:

1. :func:`check_target` refuses what must never be written: a mounted disk (or
   one with a mounted partition, a swap or a device-mapper user), the disk the
   running system lives on, a partition instead of a whole disk, a read-only
   or too-small disk, the image file itself;
2. :func:`check_image` reads the image's GPT and its manifest, and refuses an
   image built for another generation;
3. :func:`write_and_verify` copies the image, flushes, drops the kernel's
   cached copy and reads everything back, comparing SHA-256 digests;
4. :func:`personalise` writes the generation profile, a fresh machine ID, the
   box's one-time enrolment token, the site profile (checked first by
   :func:`check_site`), the site's signed project catalogue (checked first by
   :func:`check_catalogue`) and a flash record into the config area, and reads
   them back.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import stat
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import sdbox.network.site as site_profile
from sdbox import __version__
from sdbox.bootimage import disk
from sdbox.bootimage.errors import BootImageError, UnsafeTarget, VerificationFailed
from sdbox.bootimage.generations import Generation
from sdbox.smartcard.catalogue import MAX_BYTES as MAX_CATALOGUE
from sdbox.smartcard.catalogue import CatalogueError, verify_catalogue

CHUNK = 4 * 1024 * 1024
_BLKFLSBUF = 0x1261  # linux/fs.h: flush the block device's buffer cache
MAX_TOKEN = 4096
Progress = Callable[[int], None]


@dataclass(frozen=True)
class Target:
    """What is about to be overwritten."""

    path: Path
    is_block_device: bool
    size: int | None  # None: a regular file, which grows
    model: str = ""

    def describe(self) -> str:
        """One line for the confirmation prompt and the report."""
        if not self.is_block_device:
            return f"{self.path} (an image file)"
        size = f"{(self.size or 0) / 2**30:.1f} GiB"
        return f"{self.path} ({self.model or 'disk'}, {size})"


@dataclass(frozen=True)
class ImageInfo:
    """The image about to be written."""

    path: Path
    size: int
    manifest: dict[str, object]
    published_sha256: str | None  # from IMAGE.sha256, when the build left one


@dataclass(frozen=True)
class Catalogue:
    """The site's signed project catalogue, checked, as it will be written."""

    data: bytes
    sequence: int
    projects: tuple[str, ...]

    def describe(self) -> str:
        """One line for the report."""
        return (
            f"project catalogue written (sequence {self.sequence}, "
            f"{len(self.projects)} project(s): {', '.join(self.projects)})"
        )


@dataclass
class FlashReport:
    """What was done; printed by the CLI."""

    target: Target
    image: ImageInfo
    generation: str
    sha256: str = ""
    written: int = 0
    verified: bool = False
    token_written: bool = False
    site_written: bool = False
    catalogue: Catalogue | None = None
    config_files: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def lines(self) -> list[str]:
        """The report, one fact a line (the token itself never appears)."""
        version = self.image.manifest.get("version", "?")
        return [
            f"device:       {self.target.describe()}",
            f"image:        {self.image.path.name} (sdbox {version}, {self.image.size / 2**20:.0f} MiB)",
            f"generation:   {self.generation}",
            f"written:      {self.written} bytes in {self.seconds:.1f} s",
            f"sha256:       {self.sha256}",
            f"verified:     {'yes, read back and identical' if self.verified else 'NO'}",
            "enrolment:    "
            + (
                "one-time token written" if self.token_written else "NO TOKEN: the box cannot enrol"
            ),
            "site:         "
            + ("profile written" if self.site_written else "none: the box has no tunnel to a centre"),
            "catalogue:    "
            + (
                self.catalogue.describe()
                if self.catalogue is not None
                else "none: the box refuses one-project cards"
            ),
            f"config area:  {', '.join(self.config_files)}",
        ]


# --- what must not be written ----------------------------------------------


def _sys_block(device: Path) -> Path:
    rdev = device.stat().st_rdev
    return Path(f"/sys/dev/block/{os.major(rdev)}:{os.minor(rdev)}").resolve()


def _dev_numbers(sys_dir: Path) -> set[str]:
    """MAJ:MIN of a block device, its partitions and what is stacked on them."""
    numbers = set()
    pending = [sys_dir]
    while pending:
        current = pending.pop()
        dev = current / "dev"
        if dev.exists():
            numbers.add(dev.read_text().strip())
        pending += [p for p in current.iterdir() if (p / "partition").exists()]
        holders = current / "holders"
        if holders.is_dir():
            pending += [h.resolve() for h in holders.iterdir()]
    return numbers


def _mounted_numbers() -> dict[str, str]:
    """MAJ:MIN -> mount point, for every mount and swap of this system."""
    mounted: dict[str, str] = {}
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        mounted.setdefault(fields[2], fields[4])
    for line in Path("/proc/swaps").read_text().splitlines()[1:]:
        name = line.split()[0]
        with contextlib.suppress(OSError):
            rdev = Path(name).stat().st_rdev
            mounted.setdefault(f"{os.major(rdev)}:{os.minor(rdev)}", "swap")
    return mounted


def _whole_disks_under(number: str) -> set[Path]:
    """The whole disks a block device (partition, dm, loop...) sits on."""
    start = Path(f"/sys/dev/block/{number}")
    if not start.exists():
        return set()
    disks = set()
    pending = [start.resolve()]
    while pending:
        current = pending.pop()
        slaves = current / "slaves"
        below = list(slaves.iterdir()) if slaves.is_dir() else []
        if below:
            pending += [s.resolve() for s in below]
        elif (current / "partition").exists():
            disks.add(current.parent)
        else:
            disks.add(current)
    return disks


def _system_disks() -> set[Path]:
    """The disks holding the running system (/, /usr, /boot, /var, /etc)."""
    wanted = {"/", "/usr", "/boot", "/boot/efi", "/efi", "/var", "/etc"}
    disks: set[Path] = set()
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[4] in wanted:
            disks |= _whole_disks_under(fields[2])
    return disks


def check_target(device: Path, image: Path, min_size: int | None = None) -> Target:
    """The target, if it may be written; :class:`UnsafeTarget` otherwise."""
    if not device.exists():
        raise UnsafeTarget(f"{device} does not exist")
    with contextlib.suppress(OSError):
        if image.exists() and device.samefile(image):
            raise UnsafeTarget(f"{device} is the image itself")
    mode = device.stat().st_mode
    if stat.S_ISREG(mode):
        return Target(device, is_block_device=False, size=None)
    if not stat.S_ISBLK(mode):
        raise UnsafeTarget(f"{device} is neither a disk nor an image file")
    sys_dir = _sys_block(device)
    if (sys_dir / "partition").exists():
        raise UnsafeTarget(f"{device} is a partition: flash the whole disk ({sys_dir.parent.name})")
    if sys_dir in _system_disks():
        raise UnsafeTarget(f"{device} holds the running system: refusing to overwrite it")
    mounted = _mounted_numbers()
    for number in sorted(_dev_numbers(sys_dir)):
        if number in mounted:
            raise UnsafeTarget(
                f"{device} is in use (device {number} is mounted on {mounted[number]}): "
                "unmount it first"
            )
    if (sys_dir / "ro").read_text().strip() == "1":
        raise UnsafeTarget(f"{device} is read-only")
    size = int((sys_dir / "size").read_text()) * 512
    model_file = sys_dir / "device" / "model"
    model = model_file.read_text().strip() if model_file.exists() else sys_dir.name
    if min_size is not None and size < min_size:
        raise UnsafeTarget(
            f"{device} has {size / 2**30:.1f} GiB; this generation's disks have at least "
            f"{min_size / 2**30:.1f} GiB: wrong disk?"
        )
    return Target(device, is_block_device=True, size=size, model=model)


def check_image(image: Path, generation: Generation) -> ImageInfo:
    """The image's size and manifest, if it was built for ``generation``."""
    size = image.stat().st_size
    with image.open("rb") as stream:
        partitions = disk.read_gpt(stream)
    config = disk.find_partition(partitions, disk.CONFIG_PARTITION)
    manifest = disk.ConfigArea(image, config).manifest()
    built_for = manifest.get("generation")
    if built_for != generation.name:
        raise BootImageError(
            f"{image.name} was built for generation {built_for!r}, not {generation.name!r}: "
            f"build it with `make image GENERATION={generation.name}`"
        )
    published = None
    sidecar = image.with_name(image.name + ".sha256")
    if sidecar.exists():
        published = sidecar.read_text().split()[0]
    return ImageInfo(image, size, manifest, published)


def check_token(token: bytes) -> bytes:
    """The token, stripped of one trailing newline, if it looks like one."""
    token = token.removesuffix(b"\n")
    if not token:
        raise BootImageError("the enrolment token is empty")
    if len(token) > MAX_TOKEN:
        raise BootImageError(f"the enrolment token is longer than {MAX_TOKEN} bytes: wrong file?")
    if not all(0x21 <= b <= 0x7E for b in token):
        raise BootImageError("the enrolment token must be printable ASCII without spaces")
    return token


def check_site(path: Path) -> bytes:
    """The site profile's bytes, if it validates (:class:`ConfigError` naming the key otherwise)."""
    # the bytes validated are the bytes written: one read
    data = site_profile.read_bytes(path)
    site_profile.load_bytes(data, str(path))
    return data


def check_catalogue(path: Path) -> Catalogue:
    """The site's project catalogue, if it is one and its signature verifies.

    Flashing checks what it can without the box's trust: the file parses and
    its content is what its signer signed (an altered or truncated file is
    refused before anything is written). Whether the signer is the centre's
    directory signer (chain to the image's roots, purpose, revocation) is
    checked on the box at every use, with the box's own anchors, CRLs and clock.
    """
    try:
        with path.open("rb") as stream:
            data = stream.read(MAX_CATALOGUE + 1)
    except FileNotFoundError as exc:
        raise BootImageError(f"{path}: the project catalogue does not exist") from exc
    except OSError as exc:
        raise BootImageError(f"{path}: the project catalogue cannot be read: {exc.strerror}") from exc
    try:
        # the signer's trust is the box's to judge (above): accept any signer here
        catalogue = verify_catalogue(data, lambda _signer, _intermediates: None)
    except CatalogueError as exc:
        raise BootImageError(f"{path}: {exc.message}") from exc
    return Catalogue(data, catalogue.sequence, tuple(p.id for p in catalogue.projects))


# --- writing -----------------------------------------------------------------


@contextlib.contextmanager
def _open_target(target: Target, size: int) -> Iterator[int]:
    if target.is_block_device:
        # O_EXCL on a block device: the kernel refuses if anything holds it
        # (a mount, a dm mapping), even one that appeared after the checks
        try:
            fd = os.open(target.path, os.O_RDWR | os.O_EXCL | os.O_CLOEXEC)
        except OSError as exc:
            raise UnsafeTarget(f"{target.path} is busy ({exc.strerror}): unmount it first") from exc
        if target.size is not None and size > target.size:
            os.close(fd)
            raise UnsafeTarget(
                f"the image ({size} bytes) does not fit {target.path} ({target.size} bytes)"
            )
    else:
        fd = os.open(target.path, os.O_RDWR | os.O_CLOEXEC)
        os.ftruncate(fd, size)
    try:
        yield fd
    finally:
        os.close(fd)


def _drop_cache(fd: int, is_block_device: bool) -> None:
    """Make the read-back come from the disk, not from what we just wrote."""
    os.fsync(fd)
    if is_block_device:
        with contextlib.suppress(OSError):
            fcntl.ioctl(fd, _BLKFLSBUF)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


def write_and_verify(
    image: ImageInfo,
    target: Target,
    on_write: Progress | None = None,
    on_verify: Progress | None = None,
) -> tuple[str, int]:
    """Copy, flush, read back; (sha256, bytes) or :class:`VerificationFailed`."""
    digest = hashlib.sha256()
    written = 0
    with _open_target(target, image.size) as fd, image.path.open("rb") as source:
        while chunk := source.read(CHUNK):
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view) :]
            digest.update(chunk)
            written += len(chunk)
            if on_write:
                on_write(len(chunk))
        if written != image.size:
            raise BootImageError(f"{image.path} changed while it was written")
        _drop_cache(fd, target.is_block_device)
        os.lseek(fd, 0, os.SEEK_SET)
        readback = hashlib.sha256()
        left = written
        while left:
            chunk = os.read(fd, min(CHUNK, left))
            if not chunk:
                break
            readback.update(chunk)
            left -= len(chunk)
            if on_verify:
                on_verify(len(chunk))
    sha256 = digest.hexdigest()
    if left or readback.hexdigest() != sha256:
        raise VerificationFailed(
            f"{target.path}: what was read back differs from the image (sha256 "
            f"{readback.hexdigest()[:16]}… instead of {sha256[:16]}…): the disk may be failing"
        )
    if image.published_sha256 and image.published_sha256 != sha256:
        raise VerificationFailed(
            f"{image.path.name} is not the image the build published (its .sha256 says "
            f"{image.published_sha256[:16]}…, the file is {sha256[:16]}…): the box was written "
            "with a damaged or altered image; do not ship it"
        )
    return sha256, written


def personalise(
    target: Target,
    generation: Generation,
    token: bytes | None,
    image: ImageInfo,
    sha256: str,
    site: bytes | None = None,
    catalogue: bytes | None = None,
) -> list[str]:
    """Write profile, machine ID, token, site, catalogue and flash record into the config area;
    read them back."""
    with target.path.open("rb") as stream:
        partitions = disk.read_gpt(stream)
    area = disk.ConfigArea(target.path, disk.find_partition(partitions, disk.CONFIG_PARTITION))
    record = {
        "generation": generation.name,
        "image": image.path.name,
        "image_version": image.manifest.get("version"),
        "sha256": sha256,
        "flashed_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "flashed_by": f"sdbox {__version__}",
    }
    files = {
        disk.GENERATION_FILE: generation.source.read_bytes(),
        disk.FLASH_RECORD: (json.dumps(record, indent=2) + "\n").encode(),
        # a fresh one at every flash, as systemd would make it (a random v4 UUID)
        disk.MACHINE_ID_FILE: (uuid.uuid4().hex + "\n").encode(),
    }
    if token is not None:
        files[disk.TOKEN_FILE] = token
    if site is not None:
        files[disk.SITE_FILE] = site
    if catalogue is not None:
        files[disk.CATALOGUE_FILE] = catalogue
    with tempfile.TemporaryDirectory(prefix="sdbox-flash-") as scratch:
        for name, data in files.items():
            area.write(name, data, Path(scratch))
    for name, data in files.items():
        if area.read(name) != data:
            raise VerificationFailed(f"{target.path}: {name} in the config area reads back wrong")
    with target.path.open("rb+") as stream:
        os.fsync(stream.fileno())
    return area.names()


def flash(
    image: ImageInfo,
    target: Target,
    generation: Generation,
    token: bytes | None,
    on_write: Progress | None = None,
    on_verify: Progress | None = None,
    site: bytes | None = None,
    catalogue: Catalogue | None = None,
) -> FlashReport:
    """Write, verify and personalise; the report of what was done."""
    report = FlashReport(target, image, generation.name)
    start = time.monotonic()
    report.sha256, report.written = write_and_verify(image, target, on_write, on_verify)
    report.verified = True
    report.config_files = personalise(
        target, generation, token, image, report.sha256, site,
        catalogue.data if catalogue is not None else None,
    )  # fmt: skip
    report.token_written = token is not None
    report.site_written = site is not None
    report.catalogue = catalogue
    report.seconds = time.monotonic() - start
    return report
