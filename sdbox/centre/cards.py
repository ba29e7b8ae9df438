"""The box's side of card management with the centre (docs/broker-protocol.md).

The card's management key (9B) and the directory-signing key are the
centre's. :class:`BrokerCentre` opens a card-management session with the
holder's signature (9A, on the card: the holder is verified now) and the
box's (TPM), relays the card's 9B mutual authentication, and asks for the
card's next directory, proving the new key by ECDH to the centre. The box
never holds either key.
"""

from __future__ import annotations

import logging
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from sdbox.centre.client import BoxKey, ephemeral_key, post_json, tls_context
from sdbox.centre.errors import CentreError, CentreRefused, CentreUnreachable
from sdbox.centre.protocol import (
    CardTranscript,
    ProtocolError,
    Transcript,
    b64,
    key_endpoint,
    proof_mac,
    unb64,
)
from sdbox.smartcard.biosso import BioSsoSession
from sdbox.smartcard.directory import (
    Directory,
    SignedDirectory,
    parse_signed_directory,
)
from sdbox.smartcard.errors import DirectoryError
from sdbox.smartcard.profile import Slot

_log = logging.getLogger("sdbox.centre.cards")


class BrokerCentre:
    """:class:`sdbox.renewal.ports.Centre` over the broker's ``/v1/card/*`` requests."""

    def __init__(
        self,
        url: str,
        *,
        anchors: list[x509.Certificate],
        identity: BoxKey,
        session: BioSsoSession,
        timeout_s: float = 10.0,
        enrolment: str = "",
    ) -> None:
        if not url.startswith("https://"):
            raise CentreError("the centre's URL must be https://")
        self.url = url.rstrip("/")
        self._context = tls_context(anchors)
        self._identity = identity
        self._session = session
        self._timeout_s = timeout_s
        self._id: str | None = None
        # a remote enrolment's authorisation id (docs/remote-enrolment.md): the centre answers
        # the card's 9B for writing finger references instead of for a due renewal
        self._enrolment = enrolment

    @property
    def session_id(self) -> str:
        """The open card management session (after :meth:`management_key` was used)."""
        return self._require_session()

    # -- Centre ---------------------------------------------------------------------

    def management_key(self, card_guid: bytes) -> _RelayedKey:
        """The centre answers the card's 9B challenges; opens the session on first use."""
        if self._id is None:
            self._open(card_guid)
        return _RelayedKey(self)

    def sign_directory(
        self, directory: Directory, *, project: str, slot: int, certificate: x509.Certificate
    ) -> SignedDirectory:
        """Prove the new key in ``slot`` to the centre (ECDH on the card), get ``directory`` signed."""
        session_id = self._require_session()
        der = serialization.Encoding.DER
        certificate_der = certificate.public_bytes(der)
        answer = self._post(
            "prove",
            {"session": session_id, "project": project, "slot": slot,
             "certificate": b64(certificate_der)},
        )  # fmt: skip
        exchange = _text(answer, "exchange")
        nonce, point = _bytes(answer, "nonce"), _bytes(answer, "ephemeral")
        try:
            ephemeral = ephemeral_key(certificate, point)
        except ProtocolError as exc:
            raise CentreError(f"the new key cannot be proven: {exc.message}") from exc
        transcript = Transcript(
            exchange, nonce, project, key_endpoint(directory.card_guid, slot),
            self._identity.certificate.public_bytes(der), certificate_der, point,
        )  # fmt: skip
        shared = self._session.ecdh(slot, ephemeral)  # on the card: it holds the new key
        answer = self._post(
            "directory",
            {"session": session_id, "exchange": exchange,
             "proof": b64(proof_mac(shared, transcript)), "directory": b64(directory.tbs())},
        )  # fmt: skip
        try:
            signed = parse_signed_directory(_bytes(answer, "directory"))
        except DirectoryError as exc:
            raise CentreError(f"the centre's signed directory is unusable: {exc.message}") from exc
        if signed.tbs != directory.tbs():
            raise CentreError("the centre signed another directory than the one asked for")
        return signed

    # -- the session ----------------------------------------------------------------

    def _open(self, card_guid: bytes) -> None:
        der = serialization.Encoding.DER
        box_der = self._identity.certificate.public_bytes(der)
        holder_der = self._session.certificate(Slot.AUTHENTICATION).public_bytes(der)
        directory = self._session.read_signed_directory().encode()
        request = {"card_guid": card_guid.hex(), "box_certificate": b64(box_der),
                   "holder_certificate": b64(holder_der), "directory": b64(directory)}  # fmt: skip
        if self._enrolment:
            request.update(purpose="enrolment", authorisation=self._enrolment)
        answer = self._post("open", request)
        exchange = _text(answer, "exchange")
        transcript = CardTranscript(
            exchange, _bytes(answer, "nonce"), card_guid, box_der, holder_der, directory
        )
        message = transcript.encode()
        holder_signature = self._session.sign(message)  # the holder key: verified on this card
        answer = self._post(
            "authenticate",
            {"exchange": exchange, "holder_signature": b64(holder_signature),
             "box_signature": b64(self._identity.sign(message))},
        )  # fmt: skip
        self._id = _text(answer, "session")
        _log.info("card management session opened with the centre for card %s", card_guid.hex())

    def _require_session(self) -> str:
        if self._id is None:
            raise CentreError("no card management session is open with the centre")
        return self._id

    def _post(self, step: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            return post_json(f"{self.url}/v1/card/{step}", body, self._context, self._timeout_s)
        except CentreUnreachable as exc:
            raise CentreUnreachable(
                f"the centre cannot be reached for card management ({exc.message}); "
                "the card keeps its current certificates and renewal is tried again later"
            ) from exc
        except CentreRefused as exc:
            raise CentreError(f"card management ({step}): {exc.message}", code=exc.code) from exc
        except ProtocolError as exc:
            raise CentreError(f"card management ({step}): {exc.message}") from exc


class _RelayedKey:
    """The card's 9B key as the centre holds it: each step is one request."""

    def __init__(self, centre: BrokerCentre) -> None:
        self._centre = centre
        self._challenge: bytes | None = None

    def decrypt_witness(self, encrypted_witness: bytes) -> bytes:
        """The centre decrypts the witness and chooses the challenge."""
        answer = self._centre._post(
            "witness",
            {"session": self._centre._require_session(), "witness": b64(encrypted_witness)},
        )
        self._challenge = _bytes(answer, "challenge")
        return _bytes(answer, "witness")

    def new_challenge(self) -> bytes:
        """The challenge the centre chose with the witness."""
        if self._challenge is None:
            raise CentreError("the centre gave no management challenge")
        return self._challenge

    def check_challenge_response(self, challenge: bytes, response: bytes) -> bool:
        """The centre checks the card's answer with the card's key."""
        if challenge != self._challenge:
            return False
        self._challenge = None
        try:
            self._centre._post(
                "response", {"session": self._centre._require_session(), "response": b64(response)}
            )
        except CentreError as exc:
            if exc.code == "card":
                return False
            raise
        return True


def _text(answer: dict[str, Any], field: str) -> str:
    value = answer.get(field)
    if not isinstance(value, str) or not value:
        raise CentreError(f"the centre's answer lacks '{field}'")
    return value


def _bytes(answer: dict[str, Any], field: str) -> bytes:
    try:
        return unb64(answer.get(field), field)
    except ProtocolError as exc:
        raise CentreError(f"the centre's answer is malformed: {exc.message}") from exc
