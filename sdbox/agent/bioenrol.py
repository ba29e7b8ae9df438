"""Remote biometric enrolment on the box (docs/remote-enrolment.md).

The box enrols a finger only under an operator's authorisation for this card
at this box, bound to a challenge the box drew now; every step that writes
takes the :class:`Pending` enrolment that only :meth:`RemoteEnrolment.authorise`
makes, so there is no path to a card write without one. In order:

1. the card must compare fingers itself (a card without on-card comparison:
   :class:`NoFingerprint`, and nothing else happens);
2. the authorisation, checked (:func:`sdbox.centre.bioauth.verify`), and the
   code the operator reads back; wait until the operator confirms it;
3. the holder's PIN on the card (the normal counter);
4. the captures through the quality gate, consistent with one another
   (:func:`sdbox.biometric.enrolment.enrol`) - before anything is written, so
   that a poor capture, an unplugged sensor or an unreachable centre leaves
   the card as it was;
5. the write: 9B answered by the centre through card management, then one
   PUT DATA per finger (each atomic on the card and resetting that finger's
   counter), so that an interruption leaves each finger with its old or its
   new reference;
6. the confirmation: a fresh capture verified ON THE CARD for each finger,
   then ``finish`` to the centre, which closes the authorisation.

Card I/O is synchronous (the agent runs it on its card thread); captures are
awaited. Every step is an audit event naming the operator.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, NoReturn

from cryptography import x509

from sdbox.audit import AuditEvent, audit
from sdbox.biometric.errors import PlaceFingerAgain
from sdbox.centre.bioauth import (
    CHALLENGE_BYTES,
    FINGERS,
    Authorisation,
    AuthorisationRefused,
    OperatorCheck,
    SignedAuthorisation,
    short_code,
    verify,
)
from sdbox.centre.bioenrol import BioEnrolmentCentre
from sdbox.centre.errors import CentreError
from sdbox.errors import SdboxError
from sdbox.smartcard.biosso import BioSsoSession
from sdbox.smartcard.errors import WrongFinger
from sdbox.smartcard.profile import FINGER_REFERENCE_OBJECT, KeyRef
from sdbox.trust import Purpose, validate
from sdbox.trust.store import RevocationStore

if TYPE_CHECKING:  # numpy (the matcher, the capture measure) only when enrolment runs
    from sdbox.biometric.enrolment import EnrolmentPolicy
    from sdbox.biometric.sensor import Sensor

CONFIRM_TRIES = 3  # fresh captures verified on the card before the enrolment is called failed


class NoFingerprint(SdboxError):
    """The card does not compare fingers: there is nothing to enrol."""

    def __init__(self) -> None:
        super().__init__("this card has no fingerprint; enrolment is not possible")


class EnrolmentNotAuthorised(SdboxError):
    """The box or the centre refused the authorisation; ``reason`` says why (docs)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class EnrolmentNotConfirmed(SdboxError):
    """The new reference did not verify on the card; the authorisation stays open."""


@dataclass(frozen=True)
class Pending:
    """An authorisation the box checked: what may be written, and the code to show."""

    authorisation: Authorisation
    signed: SignedAuthorisation
    code: str

    @property
    def operator(self) -> str:
        """Who authorised it."""
        return self.authorisation.operator


class RemoteEnrolment:
    """One remote enrolment of the inserted card (see the module docstring)."""

    def __init__(
        self,
        session: BioSsoSession,
        centre: BioEnrolmentCentre,
        validate_operator: OperatorCheck,
        *,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        policy: EnrolmentPolicy | None = None,
    ) -> None:
        self.session, self.centre = session, centre
        self.validate_operator, self.now = validate_operator, now
        self._policy = policy
        self.written: tuple[str, ...] = ()  # fingers whose PUT DATA the card answered

    @property
    def policy(self) -> EnrolmentPolicy:
        """How the captures are taken (the enrolment station's policy by default)."""
        if self._policy is None:
            from sdbox.biometric.enrolment import EnrolmentPolicy  # noqa: PLC0415

            self._policy = EnrolmentPolicy()
        return self._policy

    # -- 1, 2: the card and the authorisation -------------------------------------------

    def authorise(self) -> Pending:
        """Check the card, ask for the authorisation with a fresh challenge, check it."""
        bits = self.session.finger_bits()
        if not bits:
            audit(AuditEvent.ENROLMENT_REFUSED, "the card has no on-card comparison",
                  side="box", reason="no_fingerprint")  # fmt: skip
            raise NoFingerprint
        guid = self.session.guid
        challenge = secrets.token_bytes(CHALLENGE_BYTES)
        try:
            signed = self.centre.begin(guid, challenge)
            auth = verify(
                signed, validate_operator=self.validate_operator, card_guid=guid,
                box_certificate=self.centre.box_certificate, challenge=challenge, now=self.now(),
                fingers_on_card=frozenset(b.reference for b in bits),
            )  # fmt: skip
        except AuthorisationRefused as exc:
            self._refused(exc.reason, exc.message, guid)
        except CentreError as exc:
            if not exc.code:
                raise  # unreachable or malformed: nothing was written, try again later
            self._refused(exc.code, exc.message, guid)
        pending = Pending(auth, signed, short_code(signed.tbs))
        audit(AuditEvent.ENROLMENT_AUTHORISED, "authorisation checked, code shown", side="box",
              **self._fields(pending))  # fmt: skip
        return pending

    def operator_confirmed(self, pending: Pending) -> bool:
        """One look at the centre: has the operator confirmed the code (False: not yet)?"""
        guid = pending.authorisation.card_guid
        try:
            state = self.centre.status(pending.signed, pending.authorisation.id)
        except CentreError as exc:
            if not exc.code:
                raise
            self._refused(exc.code, exc.message, guid)
        if state in ("confirmed", "writing"):
            return True
        if state != "bound":
            self._refused(state, f"the authorisation is {state}", guid)
        if self.now() > pending.authorisation.not_after:
            self._refused("expired", "the operator did not confirm the code in time", guid)
        return False

    def wait_for_operator(self, pending: Pending, *, poll_s: float = 1.0) -> None:
        """Until the operator has confirmed the code (or the authorisation is over)."""
        while not self.operator_confirmed(pending):
            time.sleep(poll_s)

    # -- 3, 4: the holder and the captures ------------------------------------------------

    def verify_holder(self, pin: str) -> None:
        """The holder's PIN on the card (WrongPin / PinBlocked as at the picker)."""
        self.session.piv.verify_pin(pin)

    async def capture(
        self,
        pending: Pending,
        sensor: Sensor,
        prompt: Callable[[str], None] = lambda _t: None,
        *,
        fingers: tuple[str, ...] | None = None,
    ) -> dict[str, bytes]:
        """One reference per authorised finger (or ``fingers`` of them): captures through the
        quality gate, consistent with one another."""
        from sdbox.biometric.enrolment import enrol  # noqa: PLC0415

        wanted = pending.authorisation.fingers if fingers is None else fingers
        if not set(wanted) <= set(pending.authorisation.fingers):
            raise EnrolmentNotAuthorised("finger", "only the authorised fingers are captured")
        references: dict[str, bytes] = {}
        for finger in wanted:
            prompt(f"{finger} finger")
            references[finger] = (await enrol(sensor, self.policy, prompt)).reference
        return references

    # -- 5, 6: the write and the confirmation ---------------------------------------------

    def write(self, pending: Pending, references: dict[str, bytes]) -> str:
        """9B through the centre, then the references; the card management session's id."""
        if set(references) != set(pending.authorisation.fingers):
            raise EnrolmentNotAuthorised("finger", "only the authorised fingers are written")
        relay = self.centre.card_management(self.session, pending.authorisation.id)
        try:
            self.session.piv.authenticate_management(relay.management_key(self.session.guid))
        except CentreError as exc:
            if exc.code:
                self._refused(exc.code, exc.message, pending.authorisation.card_guid)
            raise
        for finger in pending.authorisation.fingers:
            ref = KeyRef(_reference(finger))
            self.session.piv.put_object(FINGER_REFERENCE_OBJECT[ref], references[finger])
            self.written += (finger,)
        audit(AuditEvent.ENROLMENT_WRITTEN, "new references written on the card", side="box",
              **self._fields(pending))  # fmt: skip
        return relay.session_id

    async def confirm(
        self,
        pending: Pending,
        sensor: Sensor,
        session_id: str,
        verify_on_card: Callable[[int, bytes], Awaitable[None]] | None = None,
        finish: Callable[[Callable[[], None]], Awaitable[None]] | None = None,
    ) -> None:
        """Each new reference verified on the card with a fresh capture; then ``finish``.

        ``verify_on_card``: the VERIFY, awaited (the agent runs it on its card thread);
        ``finish``: runs the centre's request (the agent: in a thread). Both default to here.
        """

        async def here(ref: int, probe: bytes) -> None:
            self.session.piv.verify_finger(ref, probe)

        async def inline(call: Callable[[], None]) -> None:
            call()

        check = verify_on_card or here
        for finger in pending.authorisation.fingers:
            for attempt in range(1, CONFIRM_TRIES + 1):
                try:
                    probe = await asyncio.wait_for(sensor.capture(), self.policy.capture_timeout_s)
                    await check(_reference(finger), probe)
                    break
                except (PlaceFingerAgain, WrongFinger):
                    if attempt == CONFIRM_TRIES:
                        audit(AuditEvent.ENROLMENT_FAILED, "the new reference did not verify",
                              side="box", **self._fields(pending))  # fmt: skip
                        raise EnrolmentNotConfirmed(
                            f"the new {finger} reference did not verify on the card: "
                            "enrol again with the operator"
                        ) from None
        auth = pending.authorisation
        await (finish or inline)(
            lambda: self.centre.finish(pending.signed, auth.id, session_id, auth.fingers)
        )
        audit(AuditEvent.ENROLMENT_COMPLETED, "remote enrolment completed and verified",
              side="box", **self._fields(pending))  # fmt: skip

    # -- helpers -----------------------------------------------------------------------

    @staticmethod
    def _fields(pending: Pending) -> dict[str, str]:
        auth = pending.authorisation
        return {"authorisation": auth.id, "operator": auth.operator,
                "card": auth.card_guid.hex(), "fingers": ",".join(auth.fingers)}  # fmt: skip

    @staticmethod
    def _refused(reason: str, message: str, guid: bytes) -> NoReturn:
        audit(AuditEvent.ENROLMENT_REFUSED, message, side="box", reason=reason, card=guid.hex())
        raise EnrolmentNotAuthorised(reason, message)


def operator_check(
    anchors: list[x509.Certificate],
    intermediates: list[x509.Certificate],
    crls: RevocationStore,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> OperatorCheck:
    """The box's check of an authorisation's signer: an enrolment operator under its roots."""

    def check(certificate: x509.Certificate, chain: list[x509.Certificate]) -> None:
        validate(certificate, [*chain, *intermediates], anchors, at=now(),
                 purpose=Purpose.ENROLMENT_OPERATOR, crls=crls)  # fmt: skip

    return check


def _reference(finger: str) -> int:
    return FINGERS[finger]
