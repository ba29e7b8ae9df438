"""Certificates with an extension encoded wrongly, wherever they sit in the path.

cryptography decodes extensions lazily, and the verifier reads only those its
rules need: an anchor whose AKI does not decode used to end in a bare
ValueError from the name-constraints code (issue 15). Whatever the place and
the extension, the answer is now :class:`MalformedCertificate` naming the
damaged certificate.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtensionOID

from fuzz.targets import reissued
from sdbox.trust import Purpose, validate
from sdbox.trust.errors import MalformedCertificate
from sdbox.trust.pki import Pki

from .conftest import T0

AT = T0 + timedelta(days=30)


def _tlv(tag: int, body: bytes) -> bytes:
    assert len(body) < 0x80
    return bytes([tag, len(body)]) + body


BROKEN = {
    # well-formed DER, refused by the decoder: a serial without an issuer
    "AKI serial without issuer": (
        ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
        _tlv(0x30, _tlv(0x80, b"ab") + _tlv(0x82, b"\x01")),
    ),
    "AKI truncated": (ExtensionOID.AUTHORITY_KEY_IDENTIFIER, b"\x30\x04\x80\x02a"),
    "SKI truncated": (ExtensionOID.SUBJECT_KEY_IDENTIFIER, b"\x04\x05ab"),
    "basicConstraints as an INTEGER": (ExtensionOID.BASIC_CONSTRAINTS, b"\x02\x01\x01"),
    "nameConstraints empty": (ExtensionOID.NAME_CONSTRAINTS, b"\x30\x00"),
    "keyUsage decipherOnly alone": (ExtensionOID.KEY_USAGE, _tlv(0x03, b"\x07\x00\x80")),
    "policyConstraints empty": (ExtensionOID.POLICY_CONSTRAINTS, b"\x30\x00"),
    "subjectAltName 3-byte address": (
        ExtensionOID.SUBJECT_ALTERNATIVE_NAME,
        _tlv(0x30, _tlv(0x87, b"\x01\x02\x03")),
    ),
    "certificatePolicies garbage": (ExtensionOID.CERTIFICATE_POLICIES, b"\x30\x03\x06\x01"),
}


def _leaf(pki: Pki) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    return pki.issue_project("alpha", key, subject_cn="Ada", not_before=T0)


def _key(issued: object) -> ec.EllipticCurvePrivateKey:
    key = getattr(issued, "key", None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


@pytest.mark.parametrize("critical", [False, True])
@pytest.mark.parametrize("place", ["anchor", "intermediate", "leaf"])
@pytest.mark.parametrize("broken", list(BROKEN))
def test_a_damaged_extension_is_a_malformed_certificate_named_as_such(
    pki: Pki, place: str, broken: str, critical: bool
) -> None:
    oid, raw = BROKEN[broken]
    leaf, intermediates, anchors = _leaf(pki), pki.intermediates, [pki.root.cert]
    if place == "anchor":
        anchors = [reissued(pki.root.cert, _key(pki.root), oid, raw, critical=critical)]
        named = "sdbox Root CA"
    elif place == "intermediate":
        ca = reissued(pki.project_ca.cert, _key(pki.root), oid, raw, critical=critical)
        intermediates = [ca if c == pki.project_ca.cert else c for c in intermediates]
        named = "sdbox Project Credentials CA"
    else:
        leaf = reissued(leaf, _key(pki.project_ca), oid, raw, critical=critical)
        named = "Ada"
    crls = [pki.crl("root", now=AT), pki.crl("project-ca", now=AT)]
    with pytest.raises(MalformedCertificate) as refused:
        validate(
            leaf, intermediates, anchors, at=AT, purpose=Purpose.PROJECT, crls=crls, project="alpha"
        )
    assert refused.value.message.startswith(f"The certificate of {named} is damaged")
    assert "does not decode" in refused.value.message
