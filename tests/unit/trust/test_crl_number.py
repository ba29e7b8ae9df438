"""The CRL number (RFC 5280 5.2.3): present and non-critical, or the list is refused.

The box's rollback protection compares CRL numbers, so a list without one, or
with one marked critical, is refused wherever it is met: handed to
``validate()``, offered to the store, or already held from an older release.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes

from sdbox.trust import Purpose, validate
from sdbox.trust.errors import (
    BadSignature,
    CrlNumberInvalid,
    CrlRollback,
    MalformedCertificate,
)
from sdbox.trust.pki import Issued, Pki
from sdbox.trust.store import RevocationStore

from .conftest import T0

AT = T0 + timedelta(days=30)
CA = "sdbox Project Credentials CA"


def _crl(
    ca: Issued,
    *,
    number: int | None,
    critical: bool = False,
    delta_of: int | None = None,
    at: datetime = AT,
) -> x509.CertificateRevocationList:
    key: CertificateIssuerPrivateKeyTypes = ca.key  # type: ignore[assignment]
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.cert.subject)
        .last_update(at)
        .next_update(at + timedelta(days=1))
    )
    if number is not None:
        builder = builder.add_extension(x509.CRLNumber(number), critical=critical)
    if delta_of is not None:
        builder = builder.add_extension(x509.DeltaCRLIndicator(delta_of), critical=True)
    return builder.sign(key, hashes.SHA256())


def _der(crl: x509.CertificateRevocationList) -> bytes:
    return crl.public_bytes(serialization.Encoding.DER)


def _project(pki: Pki) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    return pki.issue_project("alpha", key, subject_cn="Ada", not_before=T0)


def _validate(pki: Pki, crls: object) -> None:
    validate(
        _project(pki),
        pki.intermediates,
        [pki.root.cert],
        at=AT,
        purpose=Purpose.PROJECT,
        crls=crls,  # type: ignore[arg-type]
        project="alpha",
    )


@pytest.mark.parametrize(
    ("number", "critical", "said"),
    [(None, False, "has no CRL number"), (7, True, "marks its CRL number critical")],
)
def test_validate_refuses_a_list_without_a_usable_number(
    pki: Pki, number: int | None, critical: bool, said: str
) -> None:
    bad = _crl(pki.project_ca, number=number, critical=critical)
    with pytest.raises(CrlNumberInvalid) as refused:
        _validate(pki, [pki.crl("root", now=AT), bad])
    message = refused.value.message
    assert f"Refused the revocation list of {CA}: it {said}" in message
    assert "non-critical CRL number" in message  # what the CA must do
    assert "refresh" in message  # and what the box's operator does next
    assert refused.value.issuer == CA
    # callers that handle a damaged list (sdbox trust refresh) handle this one
    assert isinstance(refused.value, MalformedCertificate)


def test_a_usable_list_beside_a_numberless_one_does_not_save_it(pki: Pki) -> None:
    # Skipping the numberless list could leave an older list to decide.
    good = pki.crl("project-ca", now=AT)
    with pytest.raises(CrlNumberInvalid):
        _validate(pki, [pki.crl("root", now=AT), good, _crl(pki.project_ca, number=None)])


def test_a_forged_numberless_list_is_still_a_bad_signature(pki: Pki) -> None:
    rogue = ec.generate_private_key(ec.SECP256R1())
    forged = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(pki.project_ca.cert.subject)
        .last_update(AT)
        .next_update(AT + timedelta(days=1))
        .sign(rogue, hashes.SHA256())
    )
    with pytest.raises(BadSignature):
        _validate(pki, [pki.crl("root", now=AT), forged])


def test_a_delta_with_a_critical_number_is_refused(pki: Pki) -> None:
    base = _crl(pki.project_ca, number=10)
    delta = _crl(pki.project_ca, number=11, critical=True, delta_of=10)
    with pytest.raises(CrlNumberInvalid, match="critical"):
        _validate(pki, [pki.crl("root", now=AT), base, delta])
    _validate(pki, [pki.crl("root", now=AT), base, _crl(pki.project_ca, number=11, delta_of=10)])


def test_the_test_pki_numbers_every_list_non_critically(pki: Pki) -> None:
    for name in ("root", "project-ca", "server-ca", "box-ca"):
        number = pki.crl(name, now=AT).extensions.get_extension_for_class(x509.CRLNumber)
        assert not number.critical
    _validate(pki, [pki.crl(name, now=AT) for name in ("root", "project-ca")])


@pytest.mark.parametrize(("number", "critical"), [(None, False), (7, True)])
def test_the_store_refuses_a_list_without_a_usable_number(
    pki: Pki, tmp_path: Path, number: int | None, critical: bool
) -> None:
    store = RevocationStore(tmp_path / "crls", build_time=T0)
    store.accept(_der(_crl(pki.project_ca, number=3)), pki.project_ca.cert)
    with pytest.raises(CrlNumberInvalid, match=CA):
        store.accept(
            _der(_crl(pki.project_ca, number=number, critical=critical)), pki.project_ca.cert
        )
    assert [c.number for c in store.crls_for(pki.project_ca.cert.subject)] == [3]  # kept


def test_a_held_list_with_a_critical_number_refuses_until_a_newer_one_comes(
    pki: Pki, tmp_path: Path
) -> None:
    # As an older release could have stored it: written straight to the cache.
    store = RevocationStore(tmp_path / "crls", build_time=T0)
    store.accept(_der(pki.crl("root", now=AT)), pki.root.cert)
    store.accept(_der(_crl(pki.project_ca, number=5)), pki.project_ca.cert)
    (held_file,) = [
        p
        for p in (tmp_path / "crls").glob("*.crl")
        if x509.load_der_x509_crl(p.read_bytes()).issuer == pki.project_ca.cert.subject
    ]
    held_file.write_bytes(_der(_crl(pki.project_ca, number=5, critical=True)))
    restarted = RevocationStore(tmp_path / "crls", build_time=T0)
    with pytest.raises(CrlNumberInvalid, match="critical"):
        _validate(pki, restarted)
    # Its number still guards against rollback ...
    with pytest.raises(CrlRollback):
        restarted.accept(_der(_crl(pki.project_ca, number=4)), pki.project_ca.cert)
    # ... and a newer, well-formed list replaces it.
    restarted.accept(_der(_crl(pki.project_ca, number=6)), pki.project_ca.cert)
    _validate(pki, restarted)
