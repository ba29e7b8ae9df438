"""CMP messages for key update (RFC 4210 / RFC 9480), encoded with pyasn1.

Only what renewal needs: ``kur`` (one CertReqMsg with the new public key,
RA-verified proof of possession and the old certificate's ID), ``certConf``,
``pollReq``, and the parsing of ``kup`` / ``ip`` / ``cp``, ``pollRep``,
``pkiConf`` and ``error``. Requests are signature-protected by the holder's
key on the card: this module builds the DER of ``ProtectedPart`` and takes
the signature from a callable, so it never sees a key. No DER is written by
hand: every structure goes through pyasn1's DER encoder, and the only bytes
taken verbatim are DER produced by ``cryptography`` (certificates, names,
public keys), decoded into the pyasn1 schema first.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import IntEnum
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from pyasn1.codec.der import decoder as der_decoder
from pyasn1.codec.der import encoder as der_encoder
from pyasn1.error import PyAsn1Error
from pyasn1.type import univ
from pyasn1_modules import rfc2459, rfc2511, rfc4210, rfc4211

from sdbox.certificates import UnreadableCertificate, load_certificate
from sdbox.renewal.errors import CmpProtocolError

PVNO_CMP2000 = 2
CERT_REQ_ID = 0
ID_REGCTRL_OLD_CERT_ID = rfc2511.id_regCtrl_oldCertID
OID_ECDSA_SHA256 = univ.ObjectIdentifier("1.2.840.10045.4.3.2")
OID_ECDSA_SHA384 = univ.ObjectIdentifier("1.2.840.10045.4.3.3")
OID_RSA_SHA256 = univ.ObjectIdentifier("1.2.840.113549.1.1.11")
_NONCE_BYTES = 16

# Signs the DER of ProtectedPart with the holder key (on the card).
Signer = Callable[[bytes], bytes]


class PkiStatus(IntEnum):
    """PKIStatus (RFC 4210 section 5.2.3)."""

    ACCEPTED = 0
    GRANTED_WITH_MODS = 1
    REJECTION = 2
    WAITING = 3
    REVOCATION_WARNING = 4
    REVOCATION_NOTIFICATION = 5
    KEY_UPDATE_WARNING = 6


class BodyType(IntEnum):
    """The PKIBody choices used here (their context tag numbers)."""

    IP = 1
    CP = 3
    KUR = 7
    KUP = 8
    PKICONF = 19
    ERROR = 23
    CERTCONF = 24
    POLLREQ = 25
    POLLREP = 26


_BODY_NAMES = {
    BodyType.IP: "ip",
    BodyType.CP: "cp",
    BodyType.KUR: "kur",
    BodyType.KUP: "kup",
    BodyType.PKICONF: "pkiconf",
    BodyType.ERROR: "error",
    BodyType.CERTCONF: "certConf",
    BodyType.POLLREQ: "pollReq",
    BodyType.POLLREP: "pollRep",
}
_NAME_BODIES = {name: kind for kind, name in _BODY_NAMES.items()}


@dataclass(frozen=True)
class Transaction:
    """What ties the messages of one CMP transaction together."""

    transaction_id: bytes
    sender: x509.Certificate
    recipient: x509.Name

    @classmethod
    def new(cls, sender: x509.Certificate, recipient: x509.Name) -> Transaction:
        """A fresh transaction (random transactionID)."""
        return cls(secrets.token_bytes(_NONCE_BYTES), sender, recipient)


@dataclass(frozen=True)
class Outgoing:
    """An encoded request and the nonce the answer must echo."""

    der: bytes
    sender_nonce: bytes


@dataclass(frozen=True)
class Answer:
    """A parsed, not yet trusted, CMP answer."""

    body: BodyType
    transaction_id: bytes
    sender_nonce: bytes
    recip_nonce: bytes
    sender: x509.Name | None
    sender_kid: bytes | None
    protection_alg: str | None
    protected_part: bytes
    protection: bytes | None
    extra_certs: tuple[x509.Certificate, ...]
    status: PkiStatus | None = None
    status_text: str = ""
    fail_info: int | None = None
    certificate: x509.Certificate | None = None
    check_after_s: int | None = None

    def verify_protection(self, signer: x509.Certificate) -> None:
        """Check the answer's signature protection with ``signer``'s public key."""
        if self.protection is None or self.protection_alg is None:
            raise CmpProtocolError("the CA's answer is not protected")
        hash_alg: hashes.HashAlgorithm
        key = signer.public_key()
        try:
            if self.protection_alg in (str(OID_ECDSA_SHA256), str(OID_ECDSA_SHA384)):
                hash_alg = (
                    hashes.SHA256()
                    if self.protection_alg == str(OID_ECDSA_SHA256)
                    else hashes.SHA384()
                )
                if not isinstance(key, ec.EllipticCurvePublicKey):
                    raise CmpProtocolError("the CA's protection algorithm does not fit its key")
                key.verify(self.protection, self.protected_part, ec.ECDSA(hash_alg))
            elif self.protection_alg == str(OID_RSA_SHA256):
                if not isinstance(key, rsa.RSAPublicKey):
                    raise CmpProtocolError("the CA's protection algorithm does not fit its key")
                key.verify(
                    self.protection, self.protected_part, padding.PKCS1v15(), hashes.SHA256()
                )
            else:
                raise CmpProtocolError(
                    f"the CA protected its answer with an unsupported algorithm {self.protection_alg}"
                )
        except InvalidSignature as exc:
            raise CmpProtocolError("the CA's answer has a bad protection signature") from exc


# -- building ------------------------------------------------------------------


_SCHEMA_OBJECT = re.compile(r"<(\w+) schema object")
_UNEXPECTED_TAG = re.compile(r"<TagSet object, tags ([\d:]+)> not in asn1Spec: <(\w+) schema object")
_SUMMARY_CHARS = 160


def _asn1_summary(exc: BaseException) -> str:
    """pyasn1's message without the schema it dumps (pages of nested types): one short line.

    A dump is replaced by the name of its outermost type ("not in asn1Spec:
    PKIHeader"); the full text stays on the exception chain (``__cause__``) for
    a developer, while an operator reading the renewal log needs what failed.
    """
    text = " ".join(str(exc).split()) or type(exc).__name__
    unexpected = _UNEXPECTED_TAG.match(text)
    if unexpected:
        text = f"an element tagged {unexpected[1]} where a {unexpected[2]} was expected"
    elif "<" in text:
        named = _SCHEMA_OBJECT.search(text)
        text = text.split("<", 1)[0].strip() + (f" {named[1]}" if named else "")
    return text if len(text) <= _SUMMARY_CHARS else text[: _SUMMARY_CHARS - 1] + "…"


def _decode(der: bytes, spec: Any) -> Any:
    value, rest = der_decoder.decode(der, asn1Spec=spec)
    if rest:
        raise CmpProtocolError("trailing bytes after a DER value")
    return value


def _general_name(name: x509.Name, target: Any) -> None:
    """Fill a GeneralName schema object with directoryName ``name``.

    A Name's DER is its RDNSequence's DER, decoded with the RDNSequence type of
    the module that defined ``target`` (pyasn1-modules mixes RFC 2459/3280).
    """
    directory = target["directoryName"]
    rdn_type = directory.componentType.getTypeByPosition(0)
    directory[0] = _decode(name.public_bytes(), rdn_type)


def _protection_oid(cert: x509.Certificate) -> univ.ObjectIdentifier:
    key = cert.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        return OID_ECDSA_SHA384 if key.curve.key_size > 256 else OID_ECDSA_SHA256
    if isinstance(key, rsa.RSAPublicKey):
        return OID_RSA_SHA256
    raise CmpProtocolError("the holder key is neither EC nor RSA: it cannot protect CMP requests")


def _header(tx: Transaction, *, recip_nonce: bytes | None) -> tuple[Any, bytes]:
    header = rfc4210.PKIHeader()
    header["pvno"] = PVNO_CMP2000
    _general_name(tx.sender.subject, header["sender"])
    _general_name(tx.recipient, header["recipient"])
    header["messageTime"] = header["messageTime"].clone(datetime.now(UTC).strftime("%Y%m%d%H%M%SZ"))
    header["protectionAlg"]["algorithm"] = _protection_oid(tx.sender)
    try:
        ski = tx.sender.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
        header["senderKID"] = header["senderKID"].clone(ski)
    except x509.ExtensionNotFound:
        pass
    header["transactionID"] = header["transactionID"].clone(tx.transaction_id)
    nonce = secrets.token_bytes(_NONCE_BYTES)
    header["senderNonce"] = header["senderNonce"].clone(nonce)
    if recip_nonce is not None:
        header["recipNonce"] = header["recipNonce"].clone(recip_nonce)
    return header, nonce


def _protect(tx: Transaction, header: Any, body: Any, sign: Signer) -> bytes:
    part = rfc4210.ProtectedPart()
    part["header"] = header
    part["infoValue"] = body
    signature = sign(der_encoder.encode(part))
    message = rfc4210.PKIMessage()
    message["header"] = header
    message["body"] = body
    message["protection"] = message["protection"].clone(univ.BitString.fromOctetString(signature))
    holder = _decode(tx.sender.public_bytes(serialization.Encoding.DER), rfc4210.CMPCertificate())
    message["extraCerts"].append(holder)
    return bytes(der_encoder.encode(message))


def build_kur(
    tx: Transaction,
    new_key: ec.EllipticCurvePublicKey,
    old_cert: x509.Certificate,
    sign: Signer,
) -> Outgoing:
    """A key update request for ``new_key`` replacing ``old_cert`` (RA-verified POP)."""
    header, nonce = _header(tx, recip_nonce=None)
    body = rfc4210.PKIBody()
    msg = body["kur"][0]
    request = msg["certReq"]
    request["certReqId"] = CERT_REQ_ID
    template = request["certTemplate"]
    spki = _decode(
        new_key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        rfc2459.SubjectPublicKeyInfo(),
    )
    template["publicKey"]["algorithm"] = spki["algorithm"]
    template["publicKey"]["subjectPublicKey"] = spki["subjectPublicKey"]
    subject = template["subject"]
    subject[0] = _decode(
        old_cert.subject.public_bytes(), subject.componentType.getTypeByPosition(0)
    )
    cert_id = rfc4211.CertId()  # rfc2511's GeneralName is a placeholder
    _general_name(old_cert.issuer, cert_id["issuer"])
    cert_id["serialNumber"] = old_cert.serial_number
    control = request["controls"][0]
    control["type"] = ID_REGCTRL_OLD_CERT_ID
    control["value"] = der_encoder.encode(cert_id)
    msg["pop"]["raVerified"] = msg["pop"]["raVerified"].clone(b"")
    return Outgoing(_protect(tx, header, body, sign), nonce)


def build_cert_conf(
    tx: Transaction,
    certificate: x509.Certificate,
    recip_nonce: bytes,
    sign: Signer,
    *,
    accept: bool = True,
) -> Outgoing:
    """certConf: the hash of the certificate received, accepted or rejected."""
    header, nonce = _header(tx, recip_nonce=recip_nonce)
    body = rfc4210.PKIBody()
    status = body["certConf"][0]
    status["certHash"] = cert_hash(certificate)
    status["certReqId"] = CERT_REQ_ID
    status["statusInfo"]["status"] = PkiStatus.ACCEPTED if accept else PkiStatus.REJECTION
    return Outgoing(_protect(tx, header, body, sign), nonce)


def build_poll_req(tx: Transaction, recip_nonce: bytes, sign: Signer) -> Outgoing:
    """pollReq for our one request."""
    header, nonce = _header(tx, recip_nonce=recip_nonce)
    body = rfc4210.PKIBody()
    body["pollReq"][0]["certReqId"] = CERT_REQ_ID
    return Outgoing(_protect(tx, header, body, sign), nonce)


def cert_hash(certificate: x509.Certificate) -> bytes:
    """certHash (RFC 4210 5.3.18): the certificate's own signature hash, SHA-256 by default."""
    algorithm = certificate.signature_hash_algorithm
    name = algorithm.name if algorithm is not None else "sha256"
    return hashlib.new(name, certificate.public_bytes(serialization.Encoding.DER)).digest()


# -- parsing -----------------------------------------------------------------------


def _name_of(general_name: Any) -> x509.Name | None:
    if general_name.getName() != "directoryName":
        return None
    inner = rfc2459.Name()
    inner[0] = general_name["directoryName"][0]
    try:
        return _parse_name(bytes(der_encoder.encode(inner)))
    except (ValueError, PyAsn1Error):
        return None


def _parse_name(der: bytes) -> x509.Name:
    """A Name from its DER, through a throwaway CSR-free path in cryptography."""
    # cryptography has no public Name parser; a Name is rebuilt from its RDNs.
    decoded = _decode(der, rfc2459.Name())
    rdns = []
    for rdn in decoded[0]:
        attributes = []
        for atv in rdn:
            oid = x509.ObjectIdentifier(str(atv["type"]))
            value_any = bytes(atv["value"])
            text, _ = der_decoder.decode(value_any)
            attributes.append(x509.NameAttribute(oid, str(text)))
        rdns.append(x509.RelativeDistinguishedName(attributes))
    return x509.Name(rdns)


def _free_text(value: Any) -> str:
    if not value.isValue:
        return ""
    return "; ".join(str(item) for item in value)


def _status(info: Any) -> tuple[PkiStatus, str, int | None]:
    try:
        status = PkiStatus(int(info["status"]))
    except ValueError as exc:
        raise CmpProtocolError(f"unknown PKIStatus {int(info['status'])}") from exc
    fail: int | None = None
    if info["failInfo"].isValue:
        bits = info["failInfo"]
        fail = next((i for i, bit in enumerate(bits) if bit), None)
    return status, _free_text(info["statusString"]), fail


def parse_answer(der: bytes) -> Answer:
    """Parse a CMP answer (not yet trusted: check protection and nonces next)."""
    try:
        message = _decode(der, rfc4210.PKIMessage())
        header = message["header"]
        body = message["body"]
        kind_name = body.getName()
        if kind_name not in _NAME_BODIES:
            raise CmpProtocolError(f"the CA answered with an unexpected '{kind_name}' message")
        kind = _NAME_BODIES[kind_name]
        part = rfc4210.ProtectedPart()
        part["header"] = header
        part["infoValue"] = body
        protected_part = bytes(der_encoder.encode(part))
        extra: list[x509.Certificate] = []
        if message["extraCerts"].isValue:
            for item in message["extraCerts"]:
                extra.append(load_certificate(bytes(der_encoder.encode(item)), "extra certificate"))
        fields: dict[str, Any] = {}
        content = body[kind_name]
        if kind in (BodyType.IP, BodyType.CP, BodyType.KUP):
            responses = content["response"]
            if len(responses) != 1:
                raise CmpProtocolError("the CA answered for more or fewer than one request")
            response = responses[0]
            if int(response["certReqId"]) != CERT_REQ_ID:
                raise CmpProtocolError("the CA answered for another request id")
            status, text, fail = _status(response["status"])
            fields.update(status=status, status_text=text, fail_info=fail)
            pair = response["certifiedKeyPair"]
            if pair.isValue and pair["certOrEncCert"].getName() == "certificate":
                cert_der = bytes(der_encoder.encode(pair["certOrEncCert"]["certificate"]))
                # the explicit [0] tag is part of the encoding: re-decode as a plain certificate
                plain = _decode(cert_der, pair["certOrEncCert"]["certificate"])
                untagged = rfc2459.Certificate()
                for name in ("tbsCertificate", "signatureAlgorithm", "signatureValue"):
                    untagged[name] = plain[name]
                fields["certificate"] = load_certificate(
                    bytes(der_encoder.encode(untagged)), "issued certificate"
                )
        elif kind == BodyType.ERROR:
            status, text, fail = _status(content["pKIStatusInfo"])
            details = _free_text(content["errorDetails"])
            fields.update(
                status=status,
                status_text="; ".join(t for t in (text, details) if t),
                fail_info=fail,
            )
        elif kind == BodyType.POLLREP:
            fields["check_after_s"] = int(content[0]["checkAfter"])
        sender = _name_of(header["sender"])
        protection_alg = (
            str(header["protectionAlg"]["algorithm"]) if header["protectionAlg"].isValue else None
        )
        protection = message["protection"].asOctets() if message["protection"].isValue else None

        def octets(field: Any) -> bytes:
            return bytes(field) if field.isValue else b""

        return Answer(
            body=kind,
            transaction_id=octets(header["transactionID"]),
            sender_nonce=octets(header["senderNonce"]),
            recip_nonce=octets(header["recipNonce"]),
            sender=sender,
            sender_kid=octets(header["senderKID"]) or None,
            protection_alg=protection_alg,
            protected_part=protected_part,
            protection=protection,
            extra_certs=tuple(extra),
            **fields,
        )
    # OverflowError: a DER length beyond 2**63 (pyasn1 reads it as a size; found by fuzzing)
    except (PyAsn1Error, ValueError, KeyError, IndexError, OverflowError) as exc:
        raise CmpProtocolError(f"the CA's answer does not parse: {_asn1_summary(exc)}") from exc
    except UnreadableCertificate as exc:
        raise CmpProtocolError(f"the CA's answer does not parse: {exc.message}") from exc
