"""The agent's start-up check of the box identity (sdbox.identity.probe)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sdbox.identity import IdentityConfig, IdentityError, IdentitySource, probe

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


def development_box(tmp_path: Path, *, start: datetime, end: datetime) -> IdentityConfig:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "sdbox box unit-9")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "box.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return IdentityConfig("development", tmp_path / "box.pem", key_file=tmp_path / "key.pem")


def test_a_working_identity_is_named_with_its_key_and_days_left(tmp_path: Path) -> None:
    box = development_box(tmp_path, start=NOW - timedelta(days=1), end=NOW + timedelta(days=40))
    said = probe(IdentitySource(box), NOW).summary
    assert said == (
        "sdbox box unit-9, DEVELOPMENT software key signs and matches its certificate, "
        "valid until 2027-01-16 (40 days left)"
    )


def test_an_expired_certificate_is_refused_with_what_to_do(tmp_path: Path) -> None:
    box = development_box(tmp_path, start=NOW - timedelta(days=400), end=NOW - timedelta(days=3))
    with pytest.raises(IdentityError, match=r"expired on 2026-12-04.*re-enrol the box"):
        probe(IdentitySource(box), NOW)


def test_a_certificate_not_yet_valid_points_at_the_clock(tmp_path: Path) -> None:
    box = development_box(tmp_path, start=NOW + timedelta(days=2), end=NOW + timedelta(days=300))
    with pytest.raises(IdentityError, match="check the box's clock"):
        probe(IdentitySource(box), NOW)


def test_a_box_never_enrolled_says_so(tmp_path: Path) -> None:
    box = IdentityConfig("development", tmp_path / "box.pem", key_file=tmp_path / "key.pem")
    with pytest.raises(IdentityError, match="is missing: the box is not enrolled"):
        probe(IdentitySource(box), NOW)


def test_a_failed_open_is_tried_again_once_the_identity_is_there(tmp_path: Path) -> None:
    # the TPM or the certificate may come after the agent: a failure is not kept
    box = IdentityConfig("development", tmp_path / "box.pem", key_file=tmp_path / "key.pem")
    source = IdentitySource(box)
    with pytest.raises(IdentityError):
        source()
    development_box(tmp_path, start=NOW - timedelta(days=1), end=NOW + timedelta(days=10))
    assert source().box_id == "sdbox box unit-9"
