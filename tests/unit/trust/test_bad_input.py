"""Hostile or damaged bytes and absurd clocks: typed errors, never a crash."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from sdbox.trust import Purpose, validate
from sdbox.trust.errors import (
    CertificateExpired,
    CertificateNotYetValid,
    ClockWrong,
    MalformedCertificate,
)
from sdbox.trust.loaders import load_certificate, load_certificates, load_crl
from sdbox.trust.pki import Pki
from sdbox.trust.revocation import IndexedCrl
from sdbox.trust.store import RevocationStore

from .conftest import T0


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, bytes]:
    pki = Pki.init(tmp_path_factory.mktemp("bad") / "pki", now=T0)
    cert = pki.issue_project(
        "p", ec.generate_private_key(ec.SECP256R1()).public_key(), subject_cn="x"
    )
    pki.revoke(cert)
    crl = pki.crl("project-ca", now=T0)
    return (
        cert.public_bytes(serialization.Encoding.DER),
        crl.public_bytes(serialization.Encoding.DER),
    )


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00",
        b"\x30",  # SEQUENCE with no length
        b"\x30\x84\xff\xff\xff\xff",  # a 4 GB length
        b"\x30\x89" + b"\xff" * 9,  # a length longer than any integer
        b"\x02\x01\x01",  # an INTEGER, not a SEQUENCE
        b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
        b"-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n",
        b"\xff" * (70 * 1024),
    ],
)
def test_garbage_certificates_are_malformed(data: bytes) -> None:
    with pytest.raises(MalformedCertificate, match="damaged or not in the expected format"):
        load_certificate(data)
    with pytest.raises(MalformedCertificate):
        load_crl(data)


def test_truncated_certificate_and_crl(samples: tuple[bytes, bytes]) -> None:
    cert, crl = samples
    for cut in (1, 10, len(cert) // 2, len(cert) - 1):
        with pytest.raises(MalformedCertificate):
            load_certificate(cert[:cut])
    for cut in (1, 10, len(crl) // 2, len(crl) - 1):
        with pytest.raises(MalformedCertificate):
            load_crl(crl[:cut])


def test_wrong_tag_is_malformed(samples: tuple[bytes, bytes]) -> None:
    cert, crl = samples
    with pytest.raises(MalformedCertificate):
        load_certificate(b"\x31" + cert[1:])  # SET instead of SEQUENCE
    with pytest.raises(MalformedCertificate):
        load_crl(cert)  # a certificate where a CRL belongs
    with pytest.raises(MalformedCertificate):
        load_certificate(crl)


def test_pem_and_der_both_load(samples: tuple[bytes, bytes]) -> None:
    cert_der, crl_der = samples
    cert = load_certificate(cert_der)
    pem = cert.public_bytes(serialization.Encoding.PEM)
    assert load_certificate(pem) == cert
    assert load_certificates(pem + pem) == [cert, cert]
    assert load_crl(x509.load_der_x509_crl(crl_der).public_bytes(serialization.Encoding.PEM))


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=2048))
def test_any_bytes_load_or_fail_typed(data: bytes) -> None:
    for loader in (load_certificate, load_crl, load_certificates):
        with contextlib.suppress(MalformedCertificate):
            loader(data)


@settings(max_examples=1000, deadline=None)
@given(st.data())
def test_mutated_real_objects_load_or_fail_typed(
    samples: tuple[bytes, bytes], data: st.DataObject
) -> None:
    for original, loader in ((samples[0], load_certificate), (samples[1], load_crl)):
        raw = bytearray(original)
        for _ in range(data.draw(st.integers(1, 8))):
            raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
        cut = data.draw(st.integers(0, len(raw)))
        try:
            loaded = loader(bytes(raw[:cut]))
        except MalformedCertificate:
            continue
        if isinstance(loaded, x509.CertificateRevocationList):
            with contextlib.suppress(MalformedCertificate):
                IndexedCrl(loaded)  # indexing reads every entry


@pytest.mark.parametrize(
    ("at", "error"),
    [
        (datetime(1970, 1, 1, tzinfo=UTC), CertificateNotYetValid),
        (datetime(9999, 12, 31, tzinfo=UTC), CertificateExpired),
    ],
)
def test_absurd_clocks_are_refused_with_dates(
    pki: Pki, at: datetime, error: type[Exception]
) -> None:
    with pytest.raises(error):
        validate(
            pki.directory_signer.cert,
            pki.intermediates,
            [pki.root.cert],
            at=at,
            purpose=Purpose.DIRECTORY_SIGNING,
            crls=None,
        )


def test_a_clock_in_1970_with_a_store_says_the_clock_is_wrong(pki: Pki, tmp_path: Path) -> None:
    store = RevocationStore(tmp_path / "crls", build_time=T0 - timedelta(days=1))
    with pytest.raises(ClockWrong, match="the clock is wrong"):
        validate(
            pki.directory_signer.cert,
            pki.intermediates,
            [pki.root.cert],
            at=datetime(1970, 1, 1, tzinfo=UTC),
            purpose=Purpose.DIRECTORY_SIGNING,
            crls=store,
        )
