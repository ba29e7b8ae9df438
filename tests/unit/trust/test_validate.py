"""validate(): each refusal a researcher can meet comes out as its own typed error."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sdbox.trust import Purpose, validate
from sdbox.trust.errors import (
    BadSignature,
    CertificateExpired,
    CertificateNotYetValid,
    CertificateRevoked,
    CrlMissing,
    CrlStale,
    ProjectMismatch,
    ServerNameMismatch,
    UnknownIssuer,
    WrongPurpose,
)
from sdbox.trust.pki import Pki
from sdbox.trust.revocation import indexed

from .conftest import T0

AT = T0 + timedelta(days=30)


def _key() -> ec.EllipticCurvePublicKey:
    return ec.generate_private_key(ec.SECP256R1()).public_key()


def _crls(pki: Pki, *, now: datetime = AT) -> list[x509.CertificateRevocationList]:
    return [pki.crl(name, now=now) for name in ("root", "project-ca", "server-ca", "box-ca")]


def _project(pki: Pki, project: str = "alpha", **kw: datetime) -> x509.Certificate:
    return pki.issue_project(project, _key(), subject_cn="Ada", not_before=T0, **kw)


def test_a_valid_project_credential_names_its_project(pki: Pki) -> None:
    cert = _project(pki)
    result = validate(
        cert,
        pki.intermediates,
        [pki.root.cert],
        at=AT,
        purpose=Purpose.PROJECT,
        crls=_crls(pki),
        project="alpha",
    )
    assert result.projects == ("alpha",)
    assert result.chain == (cert, pki.project_ca.cert, pki.root.cert)
    assert result.revocation_checked


def test_project_mismatch_says_which_project_the_certificate_is_for(pki: Pki) -> None:
    with pytest.raises(ProjectMismatch, match="'beta'") as caught:
        validate(
            _project(pki),
            pki.intermediates,
            [pki.root.cert],
            at=AT,
            purpose=Purpose.PROJECT,
            crls=_crls(pki),
            project="beta",
        )
    assert caught.value.found == ["alpha"]


def test_expired_leaf_and_not_yet_valid_leaf(pki: Pki) -> None:
    old = _project(pki, not_after=T0 + timedelta(days=1))
    with pytest.raises(CertificateExpired, match="expired on 2030-01-02"):
        validate(old, pki.intermediates, [pki.root.cert], at=AT, purpose=Purpose.PROJECT, crls=None)
    future = pki.issue_project("alpha", _key(), subject_cn="Ada", not_before=AT + timedelta(1))
    with pytest.raises(CertificateNotYetValid):
        validate(
            future, pki.intermediates, [pki.root.cert], at=AT, purpose=Purpose.PROJECT, crls=None
        )


def test_revoked_leaf_reports_reason_and_date(pki: Pki) -> None:
    cert = _project(pki)
    pki.revoke(cert, x509.ReasonFlags.affiliation_changed, when=T0 + timedelta(days=2))
    with pytest.raises(CertificateRevoked, match="affiliation changed") as caught:
        validate(
            cert,
            pki.intermediates,
            [pki.root.cert],
            at=AT,
            purpose=Purpose.PROJECT,
            crls=_crls(pki),
        )
    assert caught.value.revoked_at == T0 + timedelta(days=2)


def test_revoked_intermediate_refuses_every_leaf_under_it(pki: Pki) -> None:
    cert = _project(pki)
    pki.revoke(pki.project_ca.cert, x509.ReasonFlags.ca_compromise, when=T0 + timedelta(days=1))
    with pytest.raises(CertificateRevoked, match="Project Credentials CA"):
        validate(
            cert,
            pki.intermediates,
            [pki.root.cert],
            at=AT,
            purpose=Purpose.PROJECT,
            crls=_crls(pki),
        )


def test_stale_crl_is_a_refusal_unless_within_grace(pki: Pki) -> None:
    cert = _project(pki)
    crls = _crls(pki, now=AT - timedelta(days=8))  # nextUpdate = AT - 1 day
    with pytest.raises(CrlStale, match="out of date"):
        validate(
            cert, pki.intermediates, [pki.root.cert], at=AT, purpose=Purpose.PROJECT, crls=crls
        )
    validate(
        cert,
        pki.intermediates,
        [pki.root.cert],
        at=AT,
        purpose=Purpose.PROJECT,
        crls=crls,
        crl_grace=timedelta(days=2),
    )


def test_missing_crl_is_a_refusal(pki: Pki) -> None:
    with pytest.raises(CrlMissing, match="Project Credentials CA"):
        validate(
            _project(pki),
            pki.intermediates,
            [pki.root.cert],
            at=AT,
            purpose=Purpose.PROJECT,
            crls=[pki.crl("root", now=AT)],
        )


def test_crl_signed_by_the_wrong_key_is_a_bad_signature(pki: Pki) -> None:
    rogue = ec.generate_private_key(ec.SECP256R1())
    forged = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(pki.project_ca.cert.subject)
        .last_update(AT)
        .next_update(AT + timedelta(days=1))
        .add_extension(x509.CRLNumber(10**6), critical=False)  # well-formed but for the key
        .sign(rogue, hashes.SHA256())
    )
    with pytest.raises(BadSignature, match="revocation list"):
        validate(
            _project(pki),
            pki.intermediates,
            [pki.root.cert],
            at=AT,
            purpose=Purpose.PROJECT,
            crls=[pki.crl("root", now=AT), forged],
        )


def test_a_server_certificate_is_the_wrong_purpose_for_a_project(pki: Pki) -> None:
    server = pki.issue_server("bubble.example", _key(), not_before=T0)
    with pytest.raises(WrongPurpose):
        validate(
            server, pki.intermediates, [pki.root.cert], at=AT, purpose=Purpose.PROJECT, crls=None
        )


def test_holder_certificate_cannot_stand_in_for_a_project(pki: Pki) -> None:
    holder = pki.issue_holder(_key(), subject_cn="Ada", not_before=T0)
    with pytest.raises(WrongPurpose, match="key agreement"):
        validate(
            holder, pki.intermediates, [pki.root.cert], at=AT, purpose=Purpose.PROJECT, crls=None
        )
    validate(holder, pki.intermediates, [pki.root.cert], at=AT, purpose=Purpose.HOLDER, crls=None)


def test_box_ca_cannot_issue_a_project_credential(pki: Pki) -> None:
    # A box certificate has clientAuth too; the role policy keeps them apart.
    box = pki.issue_box(_key(), box_id="b1", not_before=T0)
    with pytest.raises(WrongPurpose):
        validate(box, pki.intermediates, [pki.root.cert], at=AT, purpose=Purpose.HOLDER, crls=None)
    validate(box, pki.intermediates, [pki.root.cert], at=AT, purpose=Purpose.BOX, crls=None)


def test_server_name_is_checked(pki: Pki) -> None:
    server = pki.issue_server("bubble.example", _key(), not_before=T0)
    validate(
        server,
        pki.intermediates,
        [pki.root.cert],
        at=AT,
        purpose=Purpose.SERVER,
        crls=_crls(pki),
        hostname="bubble.example",
    )
    with pytest.raises(ServerNameMismatch, match=r"not for evil\.example"):
        validate(
            server,
            pki.intermediates,
            [pki.root.cert],
            at=AT,
            purpose=Purpose.SERVER,
            crls=None,
            hostname="evil.example",
        )


def test_tampered_certificate_is_a_bad_signature(pki: Pki) -> None:
    cert = _project(pki)
    der = bytearray(cert.public_bytes(serialization.Encoding.DER))
    der[-1] ^= 0x01  # last byte of the signature
    tampered = x509.load_der_x509_certificate(bytes(der))
    with pytest.raises((BadSignature, UnknownIssuer)) as caught:
        validate(
            tampered, pki.intermediates, [pki.root.cert], at=AT, purpose=Purpose.PROJECT, crls=None
        )
    assert isinstance(caught.value, BadSignature)


def test_naive_times_are_refused_rather_than_guessed(pki: Pki) -> None:
    with pytest.raises(ValueError, match="timezone"):
        validate(
            _project(pki),
            pki.intermediates,
            [pki.root.cert],
            at=datetime(2030, 2, 1),
            purpose=Purpose.PROJECT,
            crls=None,
        )


def test_a_plain_list_is_indexed_once_and_still_sees_a_new_list(pki: Pki) -> None:
    # A caller that keeps handing validate() the same list must not pay the
    # indexing each time (issue 15), and one that hands it a newer list must
    # see the newer list's revocations, never the cached index of the old one.
    cert = _project(pki)
    crls = _crls(pki)
    for _ in range(3):
        validate(
            cert, pki.intermediates, [pki.root.cert], at=AT, purpose=Purpose.PROJECT, crls=crls
        )
    assert indexed(crls[1]) is indexed(crls[1])
    pki.revoke(cert, x509.ReasonFlags.key_compromise, when=T0 + timedelta(days=2))
    newer = _crls(pki)
    assert indexed(newer[1]) is not indexed(crls[1])
    with pytest.raises(CertificateRevoked):
        validate(
            cert, pki.intermediates, [pki.root.cert], at=AT, purpose=Purpose.PROJECT, crls=newer
        )
    # The old objects, once evicted by many others, are indexed afresh and still agree.
    first = indexed(crls[1])
    for crl in [c for _ in range(3) for c in _crls(pki)]:
        indexed(crl)
    assert indexed(crls[1]) is not first
    validate(cert, pki.intermediates, [pki.root.cert], at=AT, purpose=Purpose.PROJECT, crls=crls)


def test_a_purpose_may_be_given_by_its_value(pki: Pki) -> None:
    result = validate(
        _project(pki), pki.intermediates, [pki.root.cert], at=AT, purpose="project", crls=None
    )
    assert result.purpose is Purpose.PROJECT
    with pytest.raises(ValueError, match=r"unknown purpose 'projet': one of 'project', 'holder'"):
        validate(
            _project(pki), pki.intermediates, [pki.root.cert], at=AT, purpose="projet", crls=None
        )
    with pytest.raises(TypeError, match="purpose must be a Purpose or one of its values"):
        validate(
            _project(pki),
            pki.intermediates,
            [pki.root.cert],
            at=AT,
            purpose=1,  # type: ignore[arg-type]
            crls=None,
        )
