"""The signed project directory: strict parsing and signature, card and signer checks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from sdbox.smartcard import tlv
from sdbox.smartcard.directory import (
    Directory,
    Project,
    Protocol,
    SecondFactor,
    SignedDirectory,
    parse_signed_directory,
    sign_directory,
)
from sdbox.smartcard.errors import DirectoryError

GUID = bytes(range(16))
NOW = datetime(2026, 11, 22, tzinfo=UTC)


def _signer() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "directory signer")])
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(1).not_valid_before(NOW - timedelta(days=1)).not_valid_after(NOW + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    return key, cert


KEY, SIGNER = _signer()


def _project(i: int, **changes: object) -> Project:
    fields: dict[str, object] = {
        "id": f"project-{i}", "name": f"Project {i}", "slot": 0x82 + i, "certificate_sha256": bytes(32),
        "subject": "CN=x", "not_after": NOW, "protocol": Protocol.RDP, "endpoint": "bubble.example:3389",
        "server_certificate": b"\x30\x00", "second_factor": SecondFactor.FINGER, "audio": False,
    }  # fmt: skip
    fields.update(changes)
    return Project(**fields)  # type: ignore[arg-type]


def _signed(*projects: Project) -> SignedDirectory:
    directory = Directory(sequence=7, issued=NOW, card_guid=GUID, projects=projects)
    return sign_directory(directory, KEY, SIGNER, [])


def _accept(_signer: x509.Certificate, _intermediates: list[x509.Certificate]) -> None:
    pass


def test_round_trip_and_verify() -> None:
    signed = _signed(_project(0), _project(1, protocol=Protocol.SPICE, audio=True))
    parsed = parse_signed_directory(signed.encode())
    directory = parsed.verify(card_guid=GUID, validate_signer=_accept)
    assert directory.sequence == 7
    assert directory.project("project-1").protocol == Protocol.SPICE
    assert directory.project("project-1").audio is True
    assert directory.project("project-0").port == 3389
    with pytest.raises(DirectoryError, match="no project 'nope'"):
        directory.project("nope")


def test_signer_validator_errors_propagate() -> None:
    parsed = parse_signed_directory(_signed(_project(0)).encode())

    def refuse(_s: x509.Certificate, _i: list[x509.Certificate]) -> None:
        raise DirectoryError("untrusted signer")

    with pytest.raises(DirectoryError, match="untrusted signer"):
        parsed.verify(card_guid=GUID, validate_signer=refuse)


@pytest.mark.parametrize(
    ("project", "message"),
    [
        (_project(0, id="Bad Id"), "invalid project id"),
        (_project(0, endpoint="no-port"), "invalid endpoint"),
        (_project(0, endpoint="h:70000"), "invalid endpoint"),
        (_project(0, slot=0x9A), "slot outside 82-95"),
        (_project(0, certificate_sha256=b"short"), "not SHA-256"),
    ],
)
def test_bad_project_fields_are_named(project: Project, message: str) -> None:
    with pytest.raises(DirectoryError, match=message):
        parse_signed_directory(_signed(project).encode())


def test_duplicate_slots_are_refused() -> None:
    with pytest.raises(DirectoryError, match="twice"):
        parse_signed_directory(_signed(_project(0), _project(1, slot=0x82)).encode())


def test_missing_signature_is_refused() -> None:
    signed = _signed(_project(0))
    without = signed.tbs + tlv.tlv(
        0x71,
        SIGNER.public_bytes(
            __import__(
                "cryptography.hazmat.primitives.serialization", fromlist=["Encoding"]
            ).Encoding.DER
        ),
    )
    with pytest.raises(DirectoryError, match="lacks its content"):
        parse_signed_directory(without)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 10_000), st.integers(0, 255))
def test_any_single_byte_change_is_refused_or_detected(position: int, value: int) -> None:
    encoded = bytearray(_signed(_project(0), _project(1)).encode())
    position %= len(encoded)
    if encoded[position] == value:
        return
    encoded[position] = value
    try:
        parsed = parse_signed_directory(bytes(encoded))
        parsed.verify(card_guid=GUID, validate_signer=_accept)
    except DirectoryError:
        return
    # a change that still parses and verifies can only be in the unsigned signer
    # certificate bytes (which the trust layer's validator then judges): the content is intact
    assert parsed.tbs == _signed(_project(0), _project(1)).tbs
