"""Inputs that once escaped as untyped exceptions (found by property tests and fuzzing)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fuzz import seeds
from fuzz.targets import trust_chain
from sdbox.centre.protocol import Refused, certificate_field
from sdbox.renewal import cmp
from sdbox.renewal.errors import CmpProtocolError
from sdbox.smartcard import profile, tlv
from sdbox.smartcard.directory import parse_signed_directory
from sdbox.smartcard.emulator import profiles
from sdbox.smartcard.emulator.profiles import ProfileError, parse_profile
from sdbox.smartcard.errors import CardProtocolError, DirectoryError
from sdbox.smartcard.profile import KeyRef
from sdbox.trust.errors import CrlNumberInvalid, MalformedCertificate
from sdbox.trust.loaders import load_certificates, load_crl
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
    found = bytes.fromhex("000010") + bytes.fromhex("80026162820101")
    with pytest.raises(MalformedCertificate, match="certificate of sdbox Root CA is damaged"):
        trust_chain(found)


def test_crl_whose_number_is_critical_is_refused() -> None:
    # Issue 15: accepted before; the input is the intermediate's CRL with a
    # critical CRL number 5 (place 3 | critical, CRL number, INTEGER).
    found = bytes.fromhex("070004") + b"\x05"
    with pytest.raises(CrlNumberInvalid, match="marks its CRL number critical"):
        trust_chain(found)


def _ca() -> tuple[ec.EllipticCurvePrivateKey, x509.Name]:
    return ec.generate_private_key(ec.SECP256R1()), x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, "fuzz issuer")]
    )


def _certificate_der() -> bytes:
    key, name = _ca()
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(7)
        .not_valid_before(now).not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=False, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False,
        ), critical=True)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    return cert.public_bytes(serialization.Encoding.DER)


def test_crl_with_an_unknown_version_is_a_malformed_revocation_list() -> None:
    # cryptography raises InvalidVersion, which is not a ValueError (make fuzz, certificates)
    key, name = _ca()
    now = datetime.now(UTC)
    crl = (
        x509.CertificateRevocationListBuilder().issuer_name(name)
        .last_update(now).next_update(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    encoded = bytearray(crl.public_bytes(serialization.Encoding.DER))
    at = encoded.index(bytes.fromhex("020101"))  # TBSCertList's version, v2
    encoded[at + 2] = 0x21
    with pytest.raises(MalformedCertificate, match="revocation list"):
        load_crl(bytes(encoded))


def test_box_certificate_with_an_unknown_version_is_refused_as_malformed() -> None:
    # the card-management centre let InvalidVersion escape (make fuzz, card-management)
    encoded = bytearray(_certificate_der())
    at = encoded.index(bytes.fromhex("a003020102"))
    encoded[at + 4] = 0x12
    with pytest.raises(Refused, match="malformed") as refused:
        certificate_field(bytes(encoded), "holder")
    assert refused.value.code == "holder_certificate"


def test_certificate_whose_issuer_name_has_an_unknown_string_type_is_refused_on_arrival() -> None:
    # decoded lazily, the name raised KeyError in the middle of validation (make fuzz)
    encoded = bytearray(_certificate_der())
    cn = b"\x0c\x0bfuzz issuer"  # UTF8String "fuzz issuer", first in the issuer name
    encoded[encoded.index(cn)] = 0xEC  # no such universal string type
    with pytest.raises(Refused, match="malformed") as refused:
        certificate_field(bytes(encoded), "box")
    assert refused.value.code == "box_certificate"


def test_certificate_with_a_duplicate_extension_is_refused_as_malformed() -> None:
    # cryptography raises DuplicateExtension, not a ValueError (make fuzz, certificates)
    encoded = bytearray(_certificate_der())
    at = encoded.index(bytes.fromhex("0603551d13"))  # basicConstraints' OID ...
    encoded[at + 4] = 0x0F  # ... made keyUsage's: two keyUsage extensions
    with pytest.raises(Refused, match="malformed"):
        certificate_field(bytes(encoded), "box")


def test_card_profile_finger_reference_that_is_not_hex_is_a_profile_error() -> None:
    demo = Path(profiles.__file__).with_name("demo-profile.toml").read_text(encoding="utf-8")
    text = demo.replace('reference = "96"', 'reference = "9~7"', 1)
    with pytest.raises(ProfileError, match="'reference' must be 96 or 97"):
        parse_profile(text, source="fuzz.toml")


def test_pem_bundle_with_a_certificate_of_unknown_version_is_malformed() -> None:
    # load_certificates caught ValueError only (make fuzz, certificates)
    encoded = bytearray(_certificate_der())
    encoded[encoded.index(bytes.fromhex("a003020102")) + 4] = 0x1A
    pem = x509.load_der_x509_certificate(_certificate_der()).public_bytes(
        serialization.Encoding.PEM
    )
    damaged = pem.replace(
        pem.split(b"\n", 1)[1].rsplit(b"-----END", 1)[0],
        base64.encodebytes(bytes(encoded)),
    )
    with pytest.raises(MalformedCertificate, match="bundle"):
        load_certificates(damaged)


def test_bit_with_an_empty_minutiae_order_is_a_card_protocol_error() -> None:
    # an empty optional field raised IndexError (make fuzz, card-objects)
    params = tlv.tlv(profile.TAG_MINMAX_MINUTIAE, bytes((12, 60))) + tlv.tlv(
        profile.TAG_MINUTIAE_ORDER, b""
    )
    bit = tlv.tlv(
        profile.TAG_BIT,
        tlv.tlv(profile.TAG_BIT_REFERENCE, bytes((KeyRef.FINGER_PRIMARY,)))
        + tlv.tlv(profile.TAG_ALGO_PARAMS, params),
    )
    group = tlv.tlv(profile.TAG_BIT_GROUP, tlv.tlv(profile.TAG_BIT_COUNT, b"\x01") + bit)
    with pytest.raises(CardProtocolError, match="empty"):
        profile.parse_bit_group(group)


def test_cmp_answer_with_a_length_beyond_2_63_is_a_protocol_error() -> None:
    # pyasn1 raised OverflowError reading the extra certificate (make fuzz, cmp-answer)
    answer = (Path(seeds.CORPUS) / "cmp-answer" / "pollrep").read_bytes()
    p256 = bytes.fromhex("06072a8648ce3d020106082a8648ce3d030107")  # ecPublicKey, prime256v1
    at = answer.index(p256) + 9  # the curve's OID ...
    damaged = (
        answer[:at] + bytes.fromhex("0688f8b4f331c20ebd6c") + answer[at + 2 :]
    )  # ... 2**63 long
    with pytest.raises(CmpProtocolError, match="does not parse"):
        cmp.parse_answer(damaged)
