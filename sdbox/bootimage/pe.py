"""A PE image's build time, made reproducible.

objcopy (binutils 2.40, bookworm) writes the wall clock into the UKI's COFF
header (TimeDateStamp) and a checksum that covers it, and ignores
SOURCE_DATE_EPOCH for PE: two builds of the same sources gave UKIs four
bytes apart. The UKI is given the build's SOURCE_DATE_EPOCH instead and its
checksum recomputed (the PE/COFF algorithm: 16-bit one's-complement sum of
the file with the checksum field taken as zero, plus the file's length), so
that the same sources give the same unsigned UKI. Its signature still
differs between builds: sbsign's PKCS#7 carries the signing time.
"""

from __future__ import annotations

import struct
from array import array
from pathlib import Path

from sdbox.bootimage.errors import BootImageError

_PE_POINTER = 0x3C  # e_lfanew: where the PE signature is
_TIMESTAMP = 8  # from the PE signature: 4 signature bytes, then Machine, NumberOfSections
_CHECKSUM = 24 + 64  # from the PE signature: the COFF header (20) after the signature, then 64


def _offsets(data: bytes | bytearray) -> tuple[int, int]:
    if len(data) < 0x40 or data[:2] != b"MZ":
        raise BootImageError("not a PE image (no MZ header)")
    (pe,) = struct.unpack_from("<I", data, _PE_POINTER)
    if pe + _CHECKSUM + 4 > len(data) or data[pe : pe + 4] != b"PE\0\0":
        raise BootImageError("not a PE image (no PE signature where the MZ header points)")
    return pe + _TIMESTAMP, pe + _CHECKSUM


def checksum(data: bytes | bytearray) -> int:
    """The PE/COFF checksum of ``data`` (its own checksum field counted as zero)."""
    _, at = _offsets(data)
    copy = bytearray(data)
    copy[at : at + 4] = b"\0\0\0\0"
    if len(copy) % 2:
        copy.append(0)
    total = sum(array("H", bytes(copy)))  # little-endian words on x86-64 hosts
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return (total + len(data)) & 0xFFFFFFFF


def set_timestamp(path: Path, epoch: int) -> None:
    """Give the PE image at ``path`` the build time ``epoch`` and the checksum that goes with it."""
    data = bytearray(path.read_bytes())
    stamp, check = _offsets(data)
    struct.pack_into("<I", data, stamp, epoch & 0xFFFFFFFF)
    struct.pack_into("<I", data, check, checksum(data))
    path.write_bytes(bytes(data))
