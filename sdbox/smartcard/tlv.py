"""BER-TLV as used by PIV (ISO/IEC 7816-4 5.2, SP 800-73-4 part 1 appendix).

Tags are kept as integers of their encoded bytes (``0x5FC102``, ``0x7F61``).
Lengths use the definite form up to three length bytes (``83 xx xx xx``);
the indefinite form never appears on a PIV card and is refused. Parsing is
strict: every error names the byte offset where the structure broke.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from sdbox.smartcard.errors import TlvError

_MAX_TAG_BYTES = 3
_MAX_LENGTH_BYTES = 3


@dataclass(frozen=True)
class Tlv:
    """One BER-TLV element."""

    tag: int
    value: bytes

    def encode(self) -> bytes:
        """The element's encoding (tag, definite length, value)."""
        return encode_tag(self.tag) + encode_length(len(self.value)) + self.value


def encode_tag(tag: int) -> bytes:
    """The bytes of ``tag`` (1 to 3)."""
    if tag < 0:
        raise ValueError("negative tag")
    length = max(1, (tag.bit_length() + 7) // 8)
    if length > _MAX_TAG_BYTES:
        raise ValueError(f"tag {tag:X} longer than {_MAX_TAG_BYTES} bytes")
    raw = tag.to_bytes(length, "big")
    # The first byte announces more bytes (low five bits all set) exactly when
    # there are more; every byte but the last has bit 8 set.
    multi = raw[0] & 0x1F == 0x1F
    if (
        multi != (length > 1)
        or any(not b & 0x80 for b in raw[1:-1])
        or (raw[-1] & 0x80 and length > 1)
    ):
        raise ValueError(f"{tag:X} is not a valid BER-TLV tag")
    return raw


def encode_length(length: int) -> bytes:
    """The definite-form length octets for ``length``."""
    if length < 0x80:
        return bytes((length,))
    size = (length.bit_length() + 7) // 8
    if size > _MAX_LENGTH_BYTES:
        raise ValueError(f"TLV length {length} does not fit {_MAX_LENGTH_BYTES} bytes")
    return bytes((0x80 | size,)) + length.to_bytes(size, "big")


def tlv(tag: int, value: bytes | Iterable[Tlv] = b"") -> bytes:
    """Encode one element; ``value`` may be bytes or child elements."""
    if not isinstance(value, bytes | bytearray):
        value = b"".join(child.encode() for child in value)
    return Tlv(tag, bytes(value)).encode()


def _read_tag(data: bytes, pos: int) -> tuple[int, int]:
    start = pos
    if pos >= len(data):
        raise TlvError("missing tag", pos)
    first = data[pos]
    pos += 1
    tag = first
    if first & 0x1F == 0x1F:  # multi-byte tag: continuation while bit 8 is set
        while True:
            if pos >= len(data):
                raise TlvError("tag truncated", start)
            byte = data[pos]
            pos += 1
            tag = (tag << 8) | byte
            if pos - start > _MAX_TAG_BYTES:
                raise TlvError(f"tag longer than {_MAX_TAG_BYTES} bytes", start)
            if not byte & 0x80:
                break
    return tag, pos


def _read_length(data: bytes, pos: int) -> tuple[int, int]:
    if pos >= len(data):
        raise TlvError("missing length", pos)
    first = data[pos]
    pos += 1
    if first < 0x80:
        return first, pos
    size = first & 0x7F
    if size == 0:
        raise TlvError("indefinite length is not allowed", pos - 1)
    if size > _MAX_LENGTH_BYTES:
        raise TlvError(f"length field of {size} bytes (at most {_MAX_LENGTH_BYTES})", pos - 1)
    if pos + size > len(data):
        raise TlvError("length field truncated", pos - 1)
    return int.from_bytes(data[pos : pos + size], "big"), pos + size


def iter_tlv(data: bytes, *, offset: int = 0) -> Iterator[Tlv]:
    """Iterate over consecutive elements filling ``data`` exactly.

    ``offset`` only shifts the byte positions reported in errors (for nested
    parsing). Raises :class:`TlvError` on truncation or trailing garbage.
    """
    pos = 0
    while pos < len(data):
        start = pos
        tag, pos = _read_tag(data, pos)
        length, pos = _read_length(data, pos)
        if pos + length > len(data):
            raise TlvError(
                f"element {tag:X} says {length} bytes but only {len(data) - pos} remain",
                offset + start,
            )
        yield Tlv(tag, bytes(data[pos : pos + length]))
        pos += length


def parse_list(data: bytes) -> list[Tlv]:
    """All elements of ``data`` (which must be exactly a sequence of TLVs)."""
    return list(iter_tlv(data))


def parse_one(data: bytes, expected_tag: int | None = None) -> Tlv:
    """Exactly one element filling ``data``; optionally check its tag."""
    items = parse_list(data)
    if len(items) != 1:
        raise TlvError(f"expected one element, found {len(items)}")
    item = items[0]
    if expected_tag is not None and item.tag != expected_tag:
        raise TlvError(f"expected tag {expected_tag:X}, found {item.tag:X}")
    return item


def parse_dict(data: bytes) -> dict[int, bytes]:
    """Elements as a tag -> value map; a repeated tag is an error."""
    out: dict[int, bytes] = {}
    for item in iter_tlv(data):
        if item.tag in out:
            raise TlvError(f"tag {item.tag:X} appears twice")
        out[item.tag] = item.value
    return out
