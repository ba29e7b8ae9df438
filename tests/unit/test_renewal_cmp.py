"""CMP messages (sdbox.renewal.cmp) and the renewal journal, without a card or a CA."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pyasn1.codec.der import decoder, encoder
from pyasn1_modules import rfc4210, rfc4211

from sdbox.renewal import cmp
from sdbox.renewal.errors import CmpProtocolError, JournalError
from sdbox.renewal.state import Entry, Journal, Phase


def _cert(
    cn: str, key: ec.EllipticCurvePrivateKey, issuer_key: ec.EllipticCurvePrivateKey
) -> x509.Certificate:
    now = datetime.now(UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    return (
        x509.CertificateBuilder().subject_name(name).issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "CA")]))
        .public_key(key.public_key()).serial_number(4242).not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(issuer_key, hashes.SHA256())
    )  # fmt: skip


def test_kur_carries_the_new_key_the_old_cert_id_and_ra_verified_pop() -> None:
    ca = ec.generate_private_key(ec.SECP256R1())
    holder_key = ec.generate_private_key(ec.SECP256R1())
    holder = _cert("Holder", holder_key, ca)
    old = _cert("Holder (p)", ec.generate_private_key(ec.SECP256R1()), ca)
    new = ec.generate_private_key(ec.SECP256R1()).public_key()
    tx = cmp.Transaction.new(holder, x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "RA")]))
    signed: list[bytes] = []

    def sign(data: bytes) -> bytes:
        signed.append(data)
        return holder_key.sign(data, ec.ECDSA(hashes.SHA256()))

    out = cmp.build_kur(tx, new, old, sign)
    message, rest = decoder.decode(out.der, asn1Spec=rfc4210.PKIMessage())
    assert rest == b""
    assert encoder.encode(message) == out.der  # canonical DER
    header = message["header"]
    assert bytes(header["transactionID"]) == tx.transaction_id
    assert bytes(header["senderNonce"]) == out.sender_nonce
    request = message["body"]["kur"][0]
    assert request["pop"].getName() == "raVerified"
    template = request["certReq"]["certTemplate"]
    spki = encoder.encode(template["publicKey"])[2:]  # drop the [6] tag and length
    assert (
        new.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )[2:]
        in spki
    )
    control = request["certReq"]["controls"][0]
    assert control["type"] == rfc4211.id_regCtrl_oldCertID
    cert_id, _ = decoder.decode(bytes(control["value"]), asn1Spec=rfc4211.CertId())
    assert int(cert_id["serialNumber"]) == old.serial_number
    # the protection is the holder's signature over ProtectedPart
    part = rfc4210.ProtectedPart()
    part["header"] = header
    part["infoValue"] = message["body"]
    assert signed == [encoder.encode(part)]
    holder_key.public_key().verify(
        message["protection"].asOctets(), signed[0], ec.ECDSA(hashes.SHA256())
    )


def test_answers_that_do_not_parse_are_protocol_errors() -> None:
    with pytest.raises(CmpProtocolError):
        cmp.parse_answer(b"\x30\x03\x02\x01\x00")
    with pytest.raises(CmpProtocolError):
        cmp.parse_answer(b"garbage")


def test_a_malformed_answer_is_named_in_one_short_line_not_a_schema_dump() -> None:
    # an INTEGER where the header should start: pyasn1's own message dumps the
    # whole PKIHeader schema (kilobytes) into the renewal log
    with pytest.raises(CmpProtocolError) as refused:
        cmp.parse_answer(b"\x30\x03\x02\x01\x05")
    message = str(refused.value)
    assert "where a PKIHeader was expected" in message
    assert "schema object" not in message
    assert len(message) < 200


def test_journal_round_trip_and_damage(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j" / "journal.json")
    assert journal.read() is None
    entry = Entry("00" * 16, "p", 0x82, 0x85, Phase.GENERATING)
    journal.write(entry.advance(Phase.WRITING, certificate_pem="PEM"))
    read = journal.read()
    assert read is not None
    assert (read.phase, read.certificate_pem, read.new_slot) == (Phase.WRITING, "PEM", 0x85)
    journal.clear()
    assert journal.read() is None
    journal.path.write_text("{not json")
    with pytest.raises(JournalError, match="unreadable"):
        journal.read()


def test_each_card_has_its_own_journal(tmp_path: Path) -> None:
    base = Journal(tmp_path / "journal.json")
    one, two = base.for_card(b"\x01" * 16), base.for_card(b"\x02" * 16)
    one.write(Entry("01" * 16, "p", 0x82, 0x85, Phase.REQUESTED))
    assert two.read() is None
    assert one.path.name == f"journal-{'01' * 16}.json"
