"""Remote biometric enrolment: the authorisation, shared by the box and the reference centre.

docs/remote-enrolment.md is the protocol. An operator of the card office
opens an enrolment for one card, one box, some fingers and a short validity;
when the box asks for it with a fresh challenge, the centre binds the
authorisation to that challenge and the operator's key signs it. The box
accepts it only if the signer validates as an enrolment operator
(``Purpose.ENROLMENT_OPERATOR``) and every field is this card's, this box's,
this challenge's and now's; it then shows :func:`short_code`, which the
operator reads back so that the authorisation is bound to this box's screen.

Nothing here touches a card, the network or a file: the encoding, the
signature and the checks, so that both sides run the same code.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sdbox.centre.protocol import ProtocolError, b64, unb64
from sdbox.errors import SdboxError
from sdbox.smartcard.profile import KeyRef
from sdbox.trust.errors import MalformedCertificate
from sdbox.trust.loaders import load_certificate

VERSION = "sdbox-bio-enrolment/1"
AUTHORISATION_CONTEXT = b"sdbox biometric enrolment authorisation v1\x00"
"""Prefix of what the operator key signs, so that the signature is never anything else."""
CODE_CONTEXT = b"sdbox biometric enrolment code v1\x00"
FINISH_CONTEXT = b"sdbox biometric enrolment finished v1\x00"
CHALLENGE_BYTES = 32
MAX_VALIDITY = timedelta(hours=2)  # an authorisation is for one call with the operator
CLOCK_SKEW = timedelta(minutes=5)  # the box's clock against the centre's

FINGERS: dict[str, int] = {"primary": KeyRef.FINGER_PRIMARY, "secondary": KeyRef.FINGER_SECONDARY}
"""Finger names on the wire -> the card's verification references (docs/card-profile.md)."""


class AuthorisationRefused(SdboxError):
    """The box refuses an authorisation; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


REASONS = (
    "malformed", "signature", "operator", "other_card", "other_box", "replay",
    "expired", "not_yet_valid", "finger",
)  # fmt: skip
"""Why a box refuses an authorisation (the greeter and the audit trail use these codes)."""


@dataclass(frozen=True)
class Authorisation:
    """What the operator signs: one enrolment of some fingers of one card at one box, once."""

    id: str
    card_guid: bytes
    box_id: str
    box_certificate_sha256: bytes
    fingers: tuple[str, ...]
    not_before: datetime
    not_after: datetime
    operator: str  # the operator certificate's common name: who authorised it
    box_challenge: bytes

    def encode(self) -> bytes:
        """Canonical bytes: sorted-key, compact JSON."""
        return json.dumps(
            {
                "version": VERSION,
                "id": self.id,
                "card_guid": self.card_guid.hex(),
                "box_id": self.box_id,
                "box_certificate_sha256": self.box_certificate_sha256.hex(),
                "fingers": list(self.fingers),
                "not_before": self.not_before.isoformat(),
                "not_after": self.not_after.isoformat(),
                "operator": self.operator,
                "box_challenge": b64(self.box_challenge),
            },
            sort_keys=True,
            separators=(",", ":"),
        ).encode()

    @classmethod
    def decode(cls, data: bytes) -> Authorisation:
        """Strict parse of :meth:`encode`'s bytes (re-encoding must give the same bytes)."""
        try:
            raw = json.loads(data)
            if not isinstance(raw, dict) or raw.get("version") != VERSION:
                raise ValueError("not an sdbox enrolment authorisation")
            fingers = raw["fingers"]
            if not isinstance(fingers, list) or not fingers or not all(
                f in FINGERS for f in fingers
            ) or len(set(fingers)) != len(fingers):
                raise ValueError("fingers must be distinct names among primary, secondary")
            auth = cls(
                id=_str(raw, "id"),
                card_guid=bytes.fromhex(_str(raw, "card_guid")),
                box_id=_str(raw, "box_id"),
                box_certificate_sha256=bytes.fromhex(_str(raw, "box_certificate_sha256")),
                fingers=tuple(fingers),
                not_before=_time(raw, "not_before"),
                not_after=_time(raw, "not_after"),
                operator=_str(raw, "operator"),
                box_challenge=unb64(raw.get("box_challenge"), "box_challenge"),
            )
        except (ValueError, KeyError, TypeError, ProtocolError) as exc:
            raise AuthorisationRefused(
                "malformed", f"the enrolment authorisation is malformed: {exc}"
            ) from exc
        if auth.encode() != data:
            raise AuthorisationRefused("malformed", "the enrolment authorisation is not canonical")
        if len(auth.card_guid) != 16 or len(auth.box_challenge) != CHALLENGE_BYTES:
            raise AuthorisationRefused("malformed", "the enrolment authorisation's sizes are wrong")
        return auth

    @property
    def references(self) -> tuple[int, ...]:
        """The card's references for :attr:`fingers`."""
        return tuple(FINGERS[f] for f in self.fingers)


@dataclass(frozen=True)
class SignedAuthorisation:
    """The authorisation's bytes, the operator's signature, the operator's certificate and chain."""

    tbs: bytes
    signature: bytes
    operator_certificate: bytes  # DER
    chain: tuple[bytes, ...] = ()  # DER, the issuing CA

    def to_json(self) -> dict[str, Any]:
        """The wire form (docs/remote-enrolment.md)."""
        return {
            "authorisation": b64(self.tbs),
            "signature": b64(self.signature),
            "operator_certificate": b64(self.operator_certificate),
            "chain": [b64(c) for c in self.chain],
        }

    @classmethod
    def from_json(cls, answer: dict[str, Any]) -> SignedAuthorisation:
        """Parse the wire form (fields only; :func:`verify` judges it)."""
        chain = answer.get("chain", [])
        if not isinstance(chain, list) or len(chain) > 4:
            raise ProtocolError("field 'chain' must be a short list")
        return cls(
            unb64(answer.get("authorisation"), "authorisation"),
            unb64(answer.get("signature"), "signature"),
            unb64(answer.get("operator_certificate"), "operator_certificate"),
            tuple(unb64(c, "chain") for c in chain),
        )


def sign(
    authorisation: Authorisation,
    key: ec.EllipticCurvePrivateKey,
    certificate: x509.Certificate,
    chain: list[x509.Certificate],
) -> SignedAuthorisation:
    """The operator's signature (ECDSA-SHA256 over the context prefix and the bytes)."""
    tbs = authorisation.encode()
    der = serialization.Encoding.DER
    return SignedAuthorisation(
        tbs,
        key.sign(AUTHORISATION_CONTEXT + tbs, ec.ECDSA(hashes.SHA256())),
        certificate.public_bytes(der),
        tuple(c.public_bytes(der) for c in chain),
    )


OperatorCheck = Callable[[x509.Certificate, list[x509.Certificate]], None]
"""Validates the signer as an enrolment operator (path, EKU, revocation); raises SdboxError."""


def verify(
    signed: SignedAuthorisation,
    *,
    validate_operator: OperatorCheck,
    card_guid: bytes,
    box_certificate: bytes,
    challenge: bytes,
    now: datetime,
    fingers_on_card: frozenset[int] | None = None,
) -> Authorisation:
    """The authorisation, if it is for this card, this box, this challenge, now; else refused.

    ``fingers_on_card``: the references the card's BIT group names (None: not checked).
    """
    try:
        certificate = load_certificate(signed.operator_certificate)
        chain = [load_certificate(c) for c in signed.chain]
    except MalformedCertificate as exc:
        raise AuthorisationRefused(
            "operator", "the enrolment operator's certificate is malformed"
        ) from exc
    try:
        validate_operator(certificate, chain)
    except SdboxError as exc:
        raise AuthorisationRefused(
            "operator", f"the authorisation is not signed by an enrolment operator: {exc.message}"
        ) from exc
    public = certificate.public_key()
    try:
        if not isinstance(public, ec.EllipticCurvePublicKey):
            raise InvalidSignature
        public.verify(signed.signature, AUTHORISATION_CONTEXT + signed.tbs, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature as exc:
        raise AuthorisationRefused(
            "signature", "the authorisation's signature does not verify"
        ) from exc
    auth = Authorisation.decode(signed.tbs)
    if auth.operator != operator_name(certificate):
        raise AuthorisationRefused("operator", "the authorisation names another operator")
    if auth.card_guid != card_guid:
        raise AuthorisationRefused("other_card", "the authorisation is for another card")
    if auth.box_certificate_sha256 != hashlib.sha256(box_certificate).digest():
        raise AuthorisationRefused("other_box", "the authorisation is for another box")
    if auth.box_challenge != challenge:
        raise AuthorisationRefused(
            "replay", "the authorisation was not made for this request (an old one replayed?)"
        )
    if now > auth.not_after + CLOCK_SKEW:
        raise AuthorisationRefused("expired", "the authorisation has expired")
    if now < auth.not_before - CLOCK_SKEW or auth.not_after - auth.not_before > MAX_VALIDITY:
        raise AuthorisationRefused(
            "not_yet_valid", "the authorisation is not valid now: check the box's clock"
        )
    if fingers_on_card is not None:
        missing = [f for f in auth.fingers if FINGERS[f] not in fingers_on_card]
        if missing:
            raise AuthorisationRefused(
                "finger", f"this card has no {' or '.join(missing)} finger to enrol"
            )
    return auth


def operator_name(certificate: x509.Certificate) -> str:
    """Who the operator is: the certificate's common name."""
    names = certificate.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""


def short_code(tbs: bytes) -> str:
    """The code the box shows and the operator reads back: 6 digits from the authorisation.

    The authorisation holds the box's fresh challenge, so the code is this
    box's and this request's: the operator confirms that the researcher on
    the call sees the authorisation the operator signed.
    """
    value = int.from_bytes(hashlib.sha256(CODE_CONTEXT + tbs).digest()[:8], "big") % 1_000_000
    return f"{value:06d}"


def finish_message(authorisation_sha256: bytes, session: str, fingers: tuple[str, ...]) -> bytes:
    """What the box signs to tell the centre that the references are written and verified.

    ``authorisation_sha256``: SHA-256 of the signed authorisation's bytes (the centre keeps
    only that); ``session``: the card management session that answered the card's 9B.
    """
    body = {"authorisation_sha256": authorisation_sha256.hex(), "session": session,
            "fingers": list(fingers), "version": VERSION}  # fmt: skip
    return FINISH_CONTEXT + json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def _str(raw: dict[str, Any], name: str) -> str:
    value = raw[name]
    if not isinstance(value, str) or not value or len(value) > 300:
        raise ValueError(f"field {name!r} must be non-empty text")
    return value


def _time(raw: dict[str, Any], name: str) -> datetime:
    value = datetime.fromisoformat(_str(raw, name))
    if value.tzinfo is None:
        raise ValueError(f"field {name!r} needs a time zone")
    return value.astimezone(UTC)
