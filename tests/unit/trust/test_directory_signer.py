"""The box accepts a directory signer only if the project CA certified it for that."""

from __future__ import annotations

from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from sdbox.trust import validate_directory_signer
from sdbox.trust.errors import (
    CertificateExpired,
    CertificateNotYetValid,
    CertificateRevoked,
    CrlMissing,
    UnknownIssuer,
    WrongPurpose,
)
from sdbox.trust.pki import Pki

from .conftest import T0

AT = T0 + timedelta(days=30)


def test_the_pki_directory_signer_is_accepted(pki: Pki) -> None:
    validate_directory_signer(pki.directory_signer.cert, pki.intermediates, [pki.root.cert], at=AT)


def test_a_project_credential_cannot_sign_the_directory(pki: Pki) -> None:
    cert = pki.issue_project(
        "p", ec.generate_private_key(ec.SECP256R1()).public_key(), subject_cn="x", not_before=T0
    )
    with pytest.raises(WrongPurpose, match="may not be used here"):
        validate_directory_signer(cert, pki.intermediates, [pki.root.cert], at=AT)


def test_a_signer_from_another_pki_is_an_unknown_issuer(
    pki: Pki, tmp_path_factory: pytest.TempPathFactory
) -> None:
    other = Pki.init(tmp_path_factory.mktemp("other"), now=T0)
    with pytest.raises(UnknownIssuer, match="not issued by an authority this box trusts"):
        validate_directory_signer(
            other.directory_signer.cert, other.intermediates, [pki.root.cert], at=AT
        )


def test_missing_project_ca_is_an_unknown_issuer(pki: Pki) -> None:
    with pytest.raises(UnknownIssuer):
        validate_directory_signer(pki.directory_signer.cert, [], [pki.root.cert], at=AT)


def test_expired_and_future_signers_are_refused_with_their_dates(pki: Pki) -> None:
    end = pki.directory_signer.cert.not_valid_after_utc
    with pytest.raises(CertificateExpired) as expired:
        validate_directory_signer(
            pki.directory_signer.cert,
            pki.intermediates,
            [pki.root.cert],
            at=end + timedelta(days=1),
        )
    assert expired.value.not_after == end
    with pytest.raises(CertificateNotYetValid):
        validate_directory_signer(
            pki.directory_signer.cert,
            pki.intermediates,
            [pki.root.cert],
            at=T0 - timedelta(days=1),
        )


def test_a_revoked_signer_is_refused_when_crls_are_given(pki: Pki) -> None:
    pki.revoke(pki.directory_signer.cert, x509.ReasonFlags.key_compromise, when=T0)
    crls = [pki.crl("project-ca", now=AT), pki.crl("root", now=AT)]
    with pytest.raises(CertificateRevoked) as revoked:
        validate_directory_signer(
            pki.directory_signer.cert, pki.intermediates, [pki.root.cert], at=AT, crls=crls
        )
    assert revoked.value.revoked_at == T0
    assert "compromised" in revoked.value.message


def test_crls_given_but_one_missing_is_a_refusal(pki: Pki) -> None:
    with pytest.raises(CrlMissing, match="no revocation list"):
        validate_directory_signer(
            pki.directory_signer.cert,
            pki.intermediates,
            [pki.root.cert],
            at=AT,
            crls=[pki.crl("root", now=AT)],
        )
