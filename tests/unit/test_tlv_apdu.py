"""BER-TLV and APDU encoding: exact bytes, and malformed input named precisely."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sdbox.smartcard import tlv
from sdbox.smartcard.apdu import Apdu, decode_command, sw_tries_left
from sdbox.smartcard.errors import CardProtocolError, TlvError


def test_encodes_multibyte_tags_and_long_lengths() -> None:
    assert tlv.tlv(0x5FC102, b"\x01") == bytes.fromhex("5FC1020101")
    assert tlv.tlv(0x53, b"\x00" * 200)[:3] == bytes.fromhex("5381C8")
    assert tlv.tlv(0x53, b"\x00" * 300)[:4] == bytes.fromhex("53820" + "12C")


@given(
    st.lists(
        st.tuples(st.sampled_from([0x70, 0x71, 0x5FC105, 0x7F61, 0x9E]), st.binary(max_size=600))
    )
)
def test_round_trip(items: list[tuple[int, bytes]]) -> None:
    encoded = b"".join(tlv.tlv(tag, value) for tag, value in items)
    assert [(t.tag, t.value) for t in tlv.parse_list(encoded)] == items


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (bytes.fromhex("5305AABB"), "says 5 bytes but only 2 remain"),
        (bytes.fromhex("5F"), "tag truncated"),
        (bytes.fromhex("53"), "missing length"),
        (bytes.fromhex("5380"), "indefinite length"),
        (bytes.fromhex("5384FFFFFFFF"), "length field of 4 bytes"),
        (bytes.fromhex("5382FF"), "length field truncated"),
        (bytes.fromhex("5FFFFFFF0100"), "tag longer than 3 bytes"),
    ],
)
def test_malformed_tlv_names_the_problem(data: bytes, message: str) -> None:
    with pytest.raises(TlvError, match=message):
        tlv.parse_list(data)


@given(st.binary(max_size=64))
def test_parser_only_raises_typed_errors(data: bytes) -> None:
    with contextlib.suppress(TlvError):
        tlv.parse_list(data)


def test_invalid_tags_are_refused_when_encoding() -> None:
    with pytest.raises(ValueError, match="not a valid BER-TLV tag"):
        tlv.encode_tag(0x9F)
    with pytest.raises(ValueError, match="not a valid BER-TLV tag"):
        tlv.encode_tag(0x7001)


def test_duplicate_tag_is_refused_where_fields_are_unique() -> None:
    with pytest.raises(TlvError, match="appears twice"):
        tlv.parse_dict(tlv.tlv(0x80, b"a") + tlv.tlv(0x80, b"b"))


def test_apdu_short_and_extended_forms() -> None:
    get = Apdu(0x00, 0xCB, 0x3F, 0xFF, bytes.fromhex("5C037E0000")[:5], le=256)
    assert get.encode() == bytes.fromhex("00CB3FFF055C037E000000")
    assert Apdu(0, 0xCB, 0x3F, 0xFF, b"\x01", le=65536).encode(extended=True) == bytes.fromhex(
        "00CB3FFF0000010100" + "00"
    )
    assert Apdu(0, 0xCB, 0, 0, le=65536).encode(extended=True) == bytes.fromhex("00CB0000000000")
    with pytest.raises(ValueError, match="too long"):
        Apdu(0, 0xDB, 0x3F, 0xFF, b"\x00" * 300).encode()


@given(st.binary(max_size=700), st.one_of(st.none(), st.integers(1, 65536)), st.booleans())
def test_command_decoding_inverts_encoding(data: bytes, le: int | None, extended: bool) -> None:
    if not extended and (len(data) > 255 or (le or 0) > 256):
        return
    apdu = Apdu(0x00, 0xDB, 0x3F, 0xFF, data, le)
    decoded, was_extended = decode_command(apdu.encode(extended=extended))
    assert decoded == apdu
    assert was_extended == (extended and (bool(data) or le is not None))


def test_inconsistent_lengths_are_protocol_errors() -> None:
    with pytest.raises(CardProtocolError, match="Lc=5 but 2 bytes"):
        decode_command(bytes.fromhex("00DB3FFF05AABB"))
    with pytest.raises(CardProtocolError, match="shorter than its 4-byte header"):
        decode_command(b"\x00\xa4")


def test_tries_left_from_status_word() -> None:
    assert sw_tries_left(0x63C2) == 2
    assert sw_tries_left(0x9000) is None
