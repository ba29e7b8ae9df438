"""Name constraints of every kind, over the whole path (the verifier only does DNS and IP)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sdbox.trust import Purpose, validate
from sdbox.trust.errors import WrongPurpose

NOW = datetime(2030, 6, 1, tzinfo=UTC)


def _name(*parts: tuple[x509.ObjectIdentifier, str]) -> x509.Name:
    return x509.Name([x509.NameAttribute(oid, value) for oid, value in parts])


ROOT_NAME = _name((NameOID.ORGANIZATION_NAME, "Centre"), (NameOID.COMMON_NAME, "Root"))


def _cert(
    subject: x509.Name,
    issuer: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    signer: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
    constraints: x509.NameConstraints | None = None,
    san: Sequence[x509.GeneralName] | None = None,
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=not ca,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), critical=False
        )
    )
    if constraints is not None:
        builder = builder.add_extension(constraints, critical=True)
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(san)), critical=False)
    if not ca:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
    return builder.sign(signer, hashes.SHA256())


def _check(
    constraints: x509.NameConstraints, subject: x509.Name, san: Sequence[x509.GeneralName]
) -> None:
    root_key, ca_key, leaf_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    root = _cert(ROOT_NAME, ROOT_NAME, root_key, root_key, ca=True)
    ca_name = _name((NameOID.ORGANIZATION_NAME, "Centre"), (NameOID.COMMON_NAME, "Lab CA"))
    ca = _cert(ca_name, ROOT_NAME, ca_key, root_key, ca=True, constraints=constraints)
    leaf = _cert(subject, ca_name, leaf_key, ca_key, ca=False, san=san)
    validate(leaf, [ca], [root], at=NOW, purpose=Purpose.CLIENT, crls=None)


LAB_A = _name((NameOID.ORGANIZATION_NAME, "Centre"), (NameOID.ORGANIZATIONAL_UNIT_NAME, "Lab A"))
IN_A = _name(
    (NameOID.ORGANIZATION_NAME, "Centre"),
    (NameOID.ORGANIZATIONAL_UNIT_NAME, "Lab A"),
    (NameOID.COMMON_NAME, "Ada"),
)
IN_B = _name(
    (NameOID.ORGANIZATION_NAME, "Centre"),
    (NameOID.ORGANIZATIONAL_UNIT_NAME, "Lab B"),
    (NameOID.COMMON_NAME, "Eve"),
)
MAIL: list[x509.GeneralName] = [x509.RFC822Name("ada@lab-a.example")]


def test_a_subject_inside_the_permitted_directory_subtree_is_accepted() -> None:
    _check(x509.NameConstraints([x509.DirectoryName(LAB_A)], None), IN_A, MAIL)


def test_a_subject_outside_the_permitted_directory_subtree_is_refused() -> None:
    with pytest.raises(WrongPurpose, match=r"not permitted.*name constraints"):
        _check(x509.NameConstraints([x509.DirectoryName(LAB_A)], None), IN_B, MAIL)


def test_an_excluded_directory_subtree_is_refused() -> None:
    with pytest.raises(WrongPurpose, match="excluded"):
        _check(x509.NameConstraints(None, [x509.DirectoryName(LAB_A)]), IN_A, MAIL)


def test_mailboxes_are_held_to_rfc822_constraints() -> None:
    permitted = x509.NameConstraints([x509.RFC822Name(".lab-a.example")], None)
    _check(permitted, IN_A, [x509.RFC822Name("ada@mail.lab-a.example")])
    with pytest.raises(WrongPurpose, match=r"outside what its authority may certify|not permitted"):
        _check(permitted, IN_A, [x509.RFC822Name("eve@elsewhere.example")])
    # the subject's emailAddress attribute is a mailbox too
    with_email = _name((NameOID.COMMON_NAME, "Eve"), (NameOID.EMAIL_ADDRESS, "eve@x.example"))
    with pytest.raises(WrongPurpose):
        _check(permitted, with_email, [])


def test_a_urn_under_a_uri_constraint_is_refused() -> None:
    # project certificates name their project as a URN, which has no host for
    # a URI constraint to match: such a CA cannot vouch for one
    constraints = x509.NameConstraints([x509.UniformResourceIdentifier(".lab-a.example")], None)
    with pytest.raises(WrongPurpose):
        _check(constraints, IN_A, [x509.UniformResourceIdentifier("urn:sdbox:project:census")])
    # and a name of another kind is not bound by it
    _check(constraints, IN_A, MAIL)


def test_dns_constraints_bind_the_leaf() -> None:
    permitted = x509.NameConstraints([x509.DNSName("lab-a.example")], None)
    _check(permitted, IN_A, [x509.DNSName("desk.lab-a.example")])
    with pytest.raises(WrongPurpose, match=r"outside what its authority may certify|not permitted"):
        _check(permitted, IN_A, [x509.DNSName("desk.lab-b.example")])


def test_case_and_spacing_do_not_move_a_name_out_of_its_subtree() -> None:
    shouted = _name(
        (NameOID.ORGANIZATION_NAME, "CENTRE"), (NameOID.ORGANIZATIONAL_UNIT_NAME, "lab  a")
    )
    _check(x509.NameConstraints([x509.DirectoryName(shouted)], None), IN_A, MAIL)
