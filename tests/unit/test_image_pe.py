"""The UKI's PE build time and checksum: the same sources give the same bytes."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from sdbox.bootimage import pe
from sdbox.bootimage.errors import BootImageError

STUB = Path("/usr/lib/systemd/boot/efi/linuxx64.efi.stub")


@pytest.fixture
def assembled(tmp_path: Path) -> Path:
    """A UKI-like image as objcopy makes it (with the wall clock in its header)."""
    if not STUB.exists() or shutil.which("objcopy") is None:
        pytest.skip("systemd's EFI stub and objcopy are needed (make setup, image tier)")
    section = tmp_path / "osrel"
    section.write_text("ID=sdbox\n")
    out = tmp_path / "uki.efi"
    subprocess.run(
        ["objcopy", "--add-section", f".osrel={section}", "--change-section-vma",
         ".osrel=0x20000", str(STUB), str(out)],
        check=True, timeout=60,
    )  # fmt: skip
    return out


def test_the_checksum_is_the_one_objcopy_writes(assembled: Path) -> None:
    data = assembled.read_bytes()
    (offset,) = struct.unpack_from("<I", data, 0x3C)
    (written,) = struct.unpack_from("<I", data, offset + 88)
    assert pe.checksum(data) == written


def test_two_assemblies_at_different_times_become_the_same_bytes(
    assembled: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other.efi"
    data = bytearray(assembled.read_bytes())
    (offset,) = struct.unpack_from("<I", data, 0x3C)
    struct.pack_into("<I", data, offset + 8, 12345)  # another wall clock
    other.write_bytes(bytes(data))
    assert other.read_bytes() != assembled.read_bytes()
    for image in (assembled, other):
        pe.set_timestamp(image, 1_700_000_000)
    assert other.read_bytes() == assembled.read_bytes()
    patched = assembled.read_bytes()
    assert struct.unpack_from("<I", patched, offset + 8)[0] == 1_700_000_000
    assert struct.unpack_from("<I", patched, offset + 88)[0] == pe.checksum(patched)


def test_what_is_not_a_pe_image_is_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.efi"
    junk.write_bytes(b"MZ" + bytes(200))
    with pytest.raises(BootImageError, match="no PE signature"):
        pe.set_timestamp(junk, 0)
