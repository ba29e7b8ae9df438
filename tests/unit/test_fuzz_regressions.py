"""Inputs that once escaped as untyped exceptions (found by property tests and fuzzing)."""

from __future__ import annotations

import pytest

from sdbox.smartcard.directory import parse_signed_directory
from sdbox.smartcard.errors import DirectoryError
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
