"""The box's side of remote biometric enrolment with the centre (docs/remote-enrolment.md).

Three requests of its own (``/v1/bio/begin``, ``status``, ``finish``); the
card's 9B challenge goes through card management (:class:`BrokerCentre` with
the authorisation's id), the same path renewal uses. Templates never travel:
the box sends the centre only identities, the challenge and signatures.
"""

from __future__ import annotations

import hashlib
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from sdbox.centre.bioauth import SignedAuthorisation, finish_message
from sdbox.centre.cards import BrokerCentre
from sdbox.centre.client import BoxKey, post_json, tls_context
from sdbox.centre.errors import CentreError, CentreRefused, CentreUnreachable
from sdbox.centre.protocol import ProtocolError, b64
from sdbox.smartcard.biosso import BioSsoSession


class BioEnrolmentCentre:
    """The centre's enrolment requests, over HTTPS to the broker (or a centre's gateway)."""

    def __init__(
        self,
        url: str,
        *,
        anchors: list[x509.Certificate],
        identity: BoxKey,
        timeout_s: float = 10.0,
    ) -> None:
        if not url.startswith("https://"):
            raise CentreError("the centre's URL must be https://")
        self.url = url.rstrip("/")
        self.anchors = anchors
        self._context = tls_context(anchors)
        self.identity = identity
        self._timeout_s = timeout_s

    @property
    def box_certificate(self) -> bytes:
        """The box certificate (DER) the authorisation must name."""
        return self.identity.certificate.public_bytes(serialization.Encoding.DER)

    def begin(self, card_guid: bytes, challenge: bytes) -> SignedAuthorisation:
        """The operator's authorisation for this card at this box, bound to ``challenge``."""
        answer = self._post(
            "begin",
            {"card_guid": card_guid.hex(), "box_certificate": b64(self.box_certificate),
             "challenge": b64(challenge)},
        )  # fmt: skip
        try:
            return SignedAuthorisation.from_json(answer)
        except ProtocolError as exc:
            raise CentreError(f"the centre's authorisation is malformed: {exc.message}") from exc

    def status(self, signed: SignedAuthorisation, auth_id: str) -> str:
        """``bound`` until the operator confirms the code, then ``confirmed``."""
        answer = self._post(
            "status",
            {"authorisation": auth_id, "tbs_sha256": hashlib.sha256(signed.tbs).hexdigest()},
        )
        state = answer.get("state")
        if not isinstance(state, str):
            raise CentreError("the centre's answer lacks 'state'")
        return state

    def card_management(self, session: BioSsoSession, auth_id: str) -> BrokerCentre:
        """The 9B relay for this enrolment (card management with ``purpose: enrolment``)."""
        return BrokerCentre(self.url, anchors=self.anchors, identity=self.identity,
                            session=session, timeout_s=self._timeout_s,
                            enrolment=auth_id)  # fmt: skip

    def finish(
        self, signed: SignedAuthorisation, auth_id: str, session_id: str, fingers: tuple[str, ...]
    ) -> None:
        """Tell the centre the references are written and verified on the card (box-signed)."""
        message = finish_message(hashlib.sha256(signed.tbs).digest(), session_id, fingers)
        self._post(
            "finish",
            {"authorisation": auth_id, "session": session_id, "fingers": list(fingers),
             "box_signature": b64(self.identity.sign(message))},
        )  # fmt: skip

    def _post(self, step: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            return post_json(f"{self.url}/v1/bio/{step}", body, self._context, self._timeout_s)
        except CentreUnreachable as exc:
            raise CentreUnreachable(
                f"the centre cannot be reached for enrolment ({exc.message})"
            ) from exc
        except CentreRefused:
            raise
        except ProtocolError as exc:
            raise CentreError(f"enrolment ({step}): {exc.message}") from exc
