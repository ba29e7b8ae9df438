"""The development PKI issues what the profile says, keeps its keys private, reopens."""

from __future__ import annotations

import stat
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from sdbox.trust import oids
from sdbox.trust.errors import PkiError
from sdbox.trust.pki import CA_NAMES, Pki

from .conftest import T0

E = TypeVar("E", bound=x509.ExtensionType)


def _ext(cert: x509.Certificate, kind: type[E]) -> E:
    return cert.extensions.get_extension_for_class(kind).value


def test_init_writes_every_authority_with_private_keys_readable_by_owner_only(
    pki: Pki,
) -> None:
    for name in (*CA_NAMES, "directory-signer"):
        assert (pki.path / f"{name}.pem").exists()
        mode = stat.S_IMODE((pki.path / f"{name}.key").stat().st_mode)
        assert mode == 0o600, name


def test_reopened_pki_has_the_same_authorities_and_keys(pki: Pki) -> None:
    again = Pki.open(pki.path)
    assert again.root.cert == pki.root.cert
    assert again.project_ca.cert == pki.project_ca.cert
    assert again.directory_signer.cert == pki.directory_signer.cert
    assert again.directory_signer.key is not None


def test_init_refuses_to_overwrite_an_existing_pki(pki: Pki) -> None:
    with pytest.raises(PkiError, match="already holds a PKI"):
        Pki.init(pki.path)


def test_open_of_an_empty_directory_says_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(PkiError, match="sdbox pki init"):
        Pki.open(tmp_path)


def test_issuing_cas_hang_under_the_root_with_path_length_zero(pki: Pki) -> None:
    for issued in (pki.project_ca, pki.server_ca, pki.box_ca):
        assert issued.cert.issuer == pki.root.cert.subject
        issued.cert.verify_directly_issued_by(pki.root.cert)
        constraints = _ext(issued.cert, x509.BasicConstraints)
        assert isinstance(constraints, x509.BasicConstraints)
        assert constraints.ca
        assert constraints.path_length == 0


def test_directory_signer_profile(pki: Pki) -> None:
    cert = pki.directory_signer.cert
    assert isinstance(pki.directory_signer.key, ec.EllipticCurvePrivateKey)
    assert pki.directory_signer.key.curve.name == "secp256r1"
    assert cert.issuer == pki.project_ca.cert.subject
    assert list(_ext(cert, x509.ExtendedKeyUsage)) == [oids.EKU_DIRECTORY_SIGNING]
    usage = _ext(cert, x509.KeyUsage)
    assert isinstance(usage, x509.KeyUsage)
    assert usage.digital_signature
    assert not usage.key_agreement
    assert not usage.key_cert_sign


def test_project_certificate_names_its_project_and_only_agrees_keys(pki: Pki) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    cert = pki.issue_project("genomics-7", key.public_key(), subject_cn="Ada Lovelace")
    usage = _ext(cert, x509.KeyUsage)
    assert isinstance(usage, x509.KeyUsage)
    assert usage.key_agreement
    assert not usage.digital_signature
    assert list(_ext(cert, x509.ExtendedKeyUsage)) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    san = _ext(cert, x509.SubjectAlternativeName)
    assert isinstance(san, x509.SubjectAlternativeName)
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        "urn:sdbox:project:genomics-7"
    ]
    policies = _ext(cert, x509.CertificatePolicies)
    assert [p.policy_identifier for p in policies] == [oids.POLICY_PROJECT]
    points = _ext(cert, x509.CRLDistributionPoints)
    assert "project-ca.crl" in points[0].full_name[0].value


def test_project_certificates_take_ec_or_rsa2048_keys_only(pki: Pki) -> None:
    # RSA-2048 is an older card variant's (docs/card-variants.md): a signature key
    rsa_cert = pki.issue_project(
        "p", rsa.generate_private_key(65537, 2048).public_key(), subject_cn="x"
    )
    usage = _ext(rsa_cert, x509.KeyUsage)
    assert isinstance(usage, x509.KeyUsage)
    assert usage.digital_signature
    assert not usage.key_agreement
    with pytest.raises(PkiError, match="RSA-2048"):
        pki.issue_project("p", rsa.generate_private_key(65537, 1024).public_key(), subject_cn="x")
    with pytest.raises(PkiError, match="EC"):
        pki.issue_project("p", ed25519.Ed25519PrivateKey.generate().public_key(), subject_cn="x")  # type: ignore[arg-type]


def test_server_certificate_names_host_or_ip(pki: Pki) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    by_name = pki.issue_server("bubble-7.example", key.public_key())
    by_ip = pki.issue_server("127.0.0.1", key.public_key())
    san = _ext(by_name, x509.SubjectAlternativeName)
    assert isinstance(san, x509.SubjectAlternativeName)
    assert san.get_values_for_type(x509.DNSName) == ["bubble-7.example"]
    san_ip = _ext(by_ip, x509.SubjectAlternativeName)
    assert isinstance(san_ip, x509.SubjectAlternativeName)
    assert [str(a) for a in san_ip.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert list(_ext(by_name, x509.ExtendedKeyUsage)) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert by_name.issuer == pki.server_ca.cert.subject
    # a server reached at two addresses (the boot test's broker: outside and inside the tunnel)
    both = _ext(pki.issue_server("192.0.2.5", key.public_key(), also=["10.20.0.1"]),
                x509.SubjectAlternativeName)  # fmt: skip
    assert isinstance(both, x509.SubjectAlternativeName)
    assert [str(a) for a in both.get_values_for_type(x509.IPAddress)] == ["192.0.2.5", "10.20.0.1"]


def test_holder_and_box_certificates(pki: Pki) -> None:
    key = rsa.generate_private_key(65537, 2048)
    holder = pki.issue_holder(key.public_key(), subject_cn="Ada Lovelace")
    box = pki.issue_box(ec.generate_private_key(ec.SECP256R1()).public_key(), box_id="b-0042")
    assert holder.issuer == pki.project_ca.cert.subject
    assert box.issuer == pki.box_ca.cert.subject
    san = _ext(box, x509.SubjectAlternativeName)
    assert isinstance(san, x509.SubjectAlternativeName)
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["urn:sdbox:box:b-0042"]


def test_crls_are_signed_numbered_and_list_revocations(pki: Pki) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = pki.issue_project("p1", key.public_key(), subject_cn="x")
    when = T0 + timedelta(days=3)
    pki.revoke(cert, x509.ReasonFlags.key_compromise, when=when)
    first = pki.crl("project-ca", now=T0 + timedelta(days=4))
    second = pki.crl("project-ca", now=T0 + timedelta(days=5))
    assert first.is_signature_valid(pki.project_ca.cert.public_key())  # type: ignore[arg-type]
    numbers = [
        c.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
        for c in (first, second)
    ]
    assert numbers[1] == numbers[0] + 1
    assert second.next_update_utc == T0 + timedelta(days=12)
    entry = second.get_revoked_certificate_by_serial_number(cert.serial_number)
    assert entry is not None
    assert entry.revocation_date_utc == when
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason is (
        x509.ReasonFlags.key_compromise
    )
    # Reopening keeps the count: a new CRL never reuses a number.
    third = Pki.open(pki.path).crl("project-ca")
    assert third.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == (
        numbers[1] + 1
    )


def test_crl_of_an_unknown_authority_is_refused(pki: Pki) -> None:
    with pytest.raises(PkiError, match="no authority named"):
        pki.crl("nope")


def test_cli_pki_init_creates_a_pki(tmp_path: Path) -> None:
    target = tmp_path / "demo-pki"
    done = subprocess.run(
        [sys.executable, "-m", "sdbox", "pki", "init", str(target)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "PKI created" in done.stdout
    assert Pki.open(target).root.cert.subject == Pki.open(target).root.cert.issuer
    again = subprocess.run(
        [sys.executable, "-m", "sdbox", "pki", "init", str(target)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert again.returncode == 5
    assert "already holds a PKI" in again.stderr
