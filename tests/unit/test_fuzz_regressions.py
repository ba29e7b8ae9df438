"""Inputs that once escaped as untyped exceptions (found by property tests and fuzzing)."""

from __future__ import annotations

import pytest

from fuzz.targets import trust_chain
from sdbox.smartcard.directory import parse_signed_directory
from sdbox.smartcard.errors import DirectoryError
from sdbox.trust.errors import CrlNumberInvalid, MalformedCertificate
from tests.unit.test_directory import GUID, _project, _signed


def _accept(_signer: object, _intermediates: object) -> None:
    pass


def test_signer_certificate_with_an_invalid_version_is_a_directory_error() -> None:
    # cryptography raises InvalidVersion, which is not a ValueError
    encoded = bytearray(_signed(_project(0)).encode())
    signer_at = encoded.index(bytes.fromhex("a003020102"))  # [0] EXPLICIT INTEGER 2 (v3)
    encoded[signer_at + 4] = 0x05  # no such X.509 version
    with pytest.raises(DirectoryError, match="malformed"):
        parse_signed_directory(bytes(encoded))


def test_signer_key_on_an_unsupported_curve_is_a_directory_error() -> None:
    # cryptography raises UnsupportedAlgorithm from public_key()
    encoded = bytearray(_signed(_project(0)).encode())
    oid = bytes.fromhex("2a8648ce3d030107")  # prime256v1
    at = encoded.index(oid)
    encoded[at + len(oid) - 1] = 0x00  # an unknown named curve
    try:
        parsed = parse_signed_directory(bytes(encoded))
    except DirectoryError:
        return
    with pytest.raises(DirectoryError, match=r"public key is unusable|malformed"):
        parsed.verify(card_guid=GUID, validate_signer=_accept)


def test_anchor_whose_aki_does_not_decode_is_a_malformed_certificate() -> None:
    # Issue 15: the anchor's AKI, SEQUENCE { [0] keyIdentifier, [2] serial }
    # without the issuer the serial needs, passed the verifier and ended in a
    # bare ValueError from the name-constraints code.
    # fuzz input: anchor, non-critical, PROJECT; AKI; wrapped in one SEQUENCE
    found = bytes.fromhex("00" "00" "10") + bytes.fromhex("80026162" "820101")
    with pytest.raises(MalformedCertificate, match="certificate of sdbox Root CA is damaged"):
        trust_chain(found)


def test_crl_whose_number_is_critical_is_refused() -> None:
    # Issue 15: accepted before; the input is the intermediate's CRL with a
    # critical CRL number 5 (place 3 | critical, CRL number, INTEGER).
    found = bytes.fromhex("07" "00" "04") + b"\x05"
    with pytest.raises(CrlNumberInvalid, match="marks its CRL number critical"):
        trust_chain(found)
