"""The connection flow: holder verification, validation, credential, session.

:class:`ConnectionFlow` is the part of :class:`sdbox.agent.machine.Agent`
that runs once a project is chosen (``_connect``, the agent's flow task):
the finger (or PIN) on the card, the project and server certificates and
the possession proof, the session credential, then the session client until
it ends. The agent owns the card, the session and what it publishes; this
module only moves the flow along.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from sdbox.agent.api import Detail, Problem, State
from sdbox.agent.card import CardHandle
from sdbox.agent.events import SessionEndedEvent
from sdbox.agent.problems import Refusal, Step, detail_for, problem_for, refusal_for
from sdbox.audit import AuditEvent, audit
from sdbox.biometric.errors import PlaceFingerAgain, SensorUnavailable
from sdbox.certificates import UnreadableCertificate, load_certificate
from sdbox.errors import SdboxError
from sdbox.smartcard.biosso import BioSsoSession
from sdbox.smartcard.directory import Directory, Project, SecondFactor
from sdbox.smartcard.errors import (
    CardAccessError,
    FingerBlocked,
    InvalidTemplate,
    PinBlocked,
    WrongFinger,
    WrongPin,
)
from sdbox.smartcard.profile import KeyRef
from sdbox.trust.possession import prove_key_agreement, prove_signature

if TYPE_CHECKING:
    from sdbox.agent.events import AgentEvent, Snapshot
    from sdbox.agent.ports import CredentialPort, SensorPort, SessionHandle, SessionPort, TrustPort
    from sdbox.agent.presence import SensorPresence

_log = logging.getLogger("sdbox.agent")


@dataclass
class Insertion:
    """One insertion of a card: what the agent learnt of it until it leaves."""

    handle: CardHandle
    guid: bytes = b""
    directory: Directory | None = None
    occ: bool = True  # the card compares a finger (discovery object): else PIN only
    verified: bool = False
    renewal_tried: bool = False  # renewal runs once per insertion


class ConnectionFlow:
    """The connection flow of :class:`sdbox.agent.machine.Agent`, which it is mixed into."""

    if TYPE_CHECKING:  # what the flow uses of the agent (set in Agent.__init__)
        trust: TrustPort
        sensor: SensorPort
        credentials: CredentialPort
        sessions: SessionPort
        endpoint_allowed: Callable[[str], bool]
        snapshot: Snapshot
        presence: SensorPresence
        _card: Insertion | None
        _session: SessionHandle | None
        _session_project: str
        _pin: asyncio.Future[str] | None

        def _emit(self, event: AgentEvent) -> None: ...
        def _set(
            self,
            state: State,
            *,
            project: str = "",
            message: str = "",
            problem: Problem | None = None,
            tries_left: int | None = None,
            detail: Detail = Detail.NONE,
            args: Mapping[str, str] | None = None,
        ) -> None: ...
        def _refuse(self, state: State, refusal: Refusal, *, project: str = "") -> None: ...
        def _report_end(self, project: str, ended: Any) -> None: ...
        def _start_renewal(self, card: Insertion) -> None: ...
        def _centre_refusal(self) -> Refusal | None: ...
        def _session_waits_for_centre(self, card: Insertion, project: str, ended: Any) -> bool: ...

    # -- the connection flow ---------------------------------------------------------------

    async def _connect(self, card: Insertion, project: Project) -> None:
        try:
            # the centre first: no finger is asked for a session that cannot open
            centre = self._centre_refusal()
            if centre is not None:
                raise centre
            if not self.endpoint_allowed(project.endpoint):
                raise Refusal(
                    Problem.ENDPOINT_NOT_ALLOWED,
                    f"project '{project.name}' points to a desktop this box may not reach ({project.endpoint})",
                    Detail.ENDPOINT_NOT_ALLOWED,
                    {"project": project.name, "endpoint": project.endpoint},
                )
            if not card.verified:
                await self._verify_holder(card, project)
            self._set(State.VALIDATING, project=project.id)
            certificate, server = await self._validate(card, project)
            user, credential = await self._obtain_credential(card, project, certificate)
            await self._run_session(card, project, user, credential, server)
        except Refusal as refusal:
            if self._card is card:  # a refusal for a card that has left shows nothing
                self._refuse(State.PICKER, refusal, project=project.id)

    async def _verify_holder(self, card: Insertion, project: Project) -> None:
        allow_pin = project.second_factor == SecondFactor.FINGER_OR_PIN
        if not card.occ and not allow_pin:
            raise Refusal(
                Problem.NO_FINGER_ENROLLED,
                f"project '{project.name}' needs your finger, and this card has none enrolled: "
                "take it to the enrolment station",
                Detail.FINGER_NOT_ENROLLED,
            )
        retry: Problem | None = None  # why the previous attempt failed, shown with the new prompt
        while True:
            tries = self.snapshot.tries_left
            sensor_there = self.presence.connected and card.occ
            if not card.occ:  # a PIN-only card (its capability): no finger to ask for
                message = "enter your PIN"
                detail = Detail.ENTER_PIN
            elif sensor_there:
                message = "place your finger" + (" or enter your PIN" if allow_pin else "")
                detail = Detail.PLACE_FINGER_OR_PIN if allow_pin else Detail.PLACE_FINGER
            else:  # nothing to capture with: wait for it to come back (or for the PIN)
                message = "the fingerprint sensor is not connected: " + (
                    "enter your PIN, or plug the sensor back in" if allow_pin
                    else "plug it back in or call the service desk"
                )  # fmt: skip
                detail = Detail.SENSOR_UNPLUGGED_OR_PIN if allow_pin else Detail.SENSOR_UNPLUGGED
                retry = Problem.SENSOR_UNPLUGGED
            self._set(
                State.VERIFYING, project=project.id, message=message, problem=retry,
                tries_left=tries, detail=detail,
            )  # fmt: skip
            loop = asyncio.get_running_loop()
            self._pin = loop.create_future() if allow_pin else None
            capture = asyncio.ensure_future(
                self.sensor.capture() if sensor_there else _no_capture()
            )
            plugged = asyncio.ensure_future(self.presence.changed())
            waiting: set[asyncio.Future[Any]] = {capture, plugged} | (
                {self._pin} if self._pin else set()
            )
            try:
                done, _pending = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            finally:
                capture.cancel()
                plugged.cancel()
            pin_future, self._pin = self._pin, None
            try:
                if pin_future is not None and pin_future in done and not pin_future.cancelled():
                    await card.handle.run(_verify_pin(pin_future.result()))
                    method = "pin"
                elif capture in done:
                    await card.handle.run(_verify_finger(capture.result()))
                    method = "finger"
                else:  # the sensor left or came back: the capture never reached the card
                    retry = None
                    continue
            except (WrongFinger, WrongPin) as exc:
                audit(
                    AuditEvent.HOLDER_FAILED,
                    "holder verification failed",
                    method="finger" if isinstance(exc, WrongFinger) else "pin",
                    tries_left=exc.tries_left,
                    card=card.guid.hex(),
                )
                self.snapshot.tries_left = exc.tries_left
                retry = problem_for(exc, Step.HOLDER)  # the next prompt says why, with the tries left
                continue
            except (InvalidTemplate, PlaceFingerAgain) as exc:
                # a poor capture (PoorCapture: refused before the card, with what to do) or
                # an unusable probe costs no try: ask again
                retry = problem_for(exc, Step.HOLDER)
                continue
            except SensorUnavailable as exc:
                if await self.presence.gone_soon():  # unplugged: wait for it (the loop says so)
                    retry = None
                    continue
                raise refusal_for(exc, Step.HOLDER) from exc
            except (FingerBlocked, PinBlocked) as exc:
                audit(
                    AuditEvent.HOLDER_FAILED,
                    "holder verification blocked",
                    method="finger" if isinstance(exc, FingerBlocked) else "pin",
                    tries_left=0,
                    card=card.guid.hex(),
                )
                self.snapshot.tries_left = 0
                raise refusal_for(exc, Step.HOLDER) from exc
            except CardAccessError:
                raise
            except SdboxError as exc:  # another refusal of the card (VerificationError), the sensor
                raise refusal_for(exc, Step.HOLDER) from exc
            card.verified = True
            self.snapshot.holder_verified = True
            audit(
                AuditEvent.HOLDER_VERIFIED, "holder verified", method=method, card=card.guid.hex()
            )
            await card.handle.make_exclusive()
            # another card of the same model swapped in before the exclusive hold would show here
            if await card.handle.guid(fresh=True) != card.guid:
                raise CardAccessError("a different card is in the reader: remove it")
            return

    async def _validate(
        self, card: Insertion, project: Project
    ) -> tuple[x509.Certificate, x509.Certificate]:
        certificate = await card.handle.certificate(project.slot)
        if (
            hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).digest()
            != project.certificate_sha256
        ):
            raise Refusal(
                Problem.CERTIFICATE_INVALID,
                f"the certificate in slot {project.slot:02X} is not the one the directory lists",
                Detail.CERTIFICATE_NOT_LISTED,
                {"slot": f"{project.slot:02X}"},
            )
        try:
            self.trust.check_project(certificate, project)
            await card.handle.run(_prove_possession(certificate, project.slot))
        except CardAccessError:
            raise
        except SdboxError as exc:
            audit(
                AuditEvent.CREDENTIALS_REFUSED,
                exc.message,
                project=project.id,
                card=card.guid.hex(),
            )
            raise refusal_for(exc, Step.PROJECT) from exc
        try:
            server = load_certificate(project.server_certificate, "server certificate")
            self.trust.check_server(server, project)
        except UnreadableCertificate as exc:
            raise Refusal(
                problem_for(exc, Step.SERVER),
                "the directory's server certificate is malformed",
                Detail.SERVER_CERTIFICATE_MALFORMED,
            ) from exc
        except SdboxError as exc:
            audit(
                AuditEvent.CREDENTIALS_REFUSED,
                exc.message,
                project=project.id,
                server=project.endpoint,
            )
            raise refusal_for(
                exc, Step.SERVER, f"the project's desktop is not trusted: {exc.message}"
            ) from exc
        audit(
            AuditEvent.CREDENTIALS_VALIDATED,
            "project and server certificates valid, key on the card",
            project=project.id,
            card=card.guid.hex(),
        )
        return certificate, server

    async def _obtain_credential(
        self, card: Insertion, project: Project, certificate: x509.Certificate
    ) -> tuple[str, Any]:
        try:
            user, credential = await self.credentials.obtain(project, certificate, card.handle)
        except CardAccessError:
            raise
        except SdboxError as exc:
            raise refusal_for(exc, Step.CREDENTIAL) from exc
        if credential is None:  # interactive: nothing was issued, the bubble asks
            return user, credential
        audit(
            AuditEvent.CREDENTIAL_ISSUED,
            "one-time session credential obtained",
            project=project.id,
            user=user,
        )
        return user, credential

    async def _run_session(
        self, card: Insertion, project: Project, user: str, credential: Any, server: x509.Certificate
    ) -> None:
        if self._card is not card:
            return  # the card left while the credential was being obtained
        self._set(State.CONNECTING, project=project.id)
        session = self.sessions.open(project, user, credential, server)
        self._session, self._session_project = session, project.id
        try:
            await session.start()
            await session.wait_connected()
        except asyncio.CancelledError:
            if self._session is session:  # cancelled by someone who did not end it: end it here
                self._session = None
                with contextlib.suppress(Exception):
                    await asyncio.shield(session.kill())
            raise
        except SdboxError as exc:
            if self._session is not session:
                return  # ended by the agent (removal, switch): _end_session reported it
            ended = getattr(exc, "ended", None)
            self._session = None
            reason = getattr(getattr(ended, "reason", None), "value", "client_failed")
            # the client's own account (exit status, its last lines, secrets masked): the
            # researcher's message says what to do, the log must say what happened
            _log.warning("session to %s did not connect: %s (%s)", project.endpoint, reason,
                         getattr(ended, "detail", "") or getattr(exc, "detail", "") or exc.message)  # fmt: skip
            audit(AuditEvent.SESSION_ENDED, exc.message, project=project.id, reason=reason)
            self._emit(SessionEndedEvent(project.id, reason, exc.message))
            detail, args = detail_for(exc)
            raise Refusal(Problem.SESSION_FAILED, exc.message, detail, args) from exc
        if self._session is not session or self._card is not card:
            # Connected just as the card left or a switch began: never "running".
            if self._session is session:
                self._session = None
                await session.kill()
            return
        audit(
            AuditEvent.SESSION_STARTED,
            "session connected",
            project=project.id,
            endpoint=project.endpoint,
        )
        self._set(State.RUNNING, project=project.id)
        self._start_renewal(card)
        # Shielded: cancelling the flow (switch, removal) must not cancel the
        # session's own end report, which _end_session waits for.
        ended = await asyncio.shield(session.wait_ended())
        if self._session is not session:
            return  # ended by the agent (switch, removal): _end_session reported it
        self._session = None
        if self._session_waits_for_centre(card, project.id, ended):
            return  # the tunnel dropped under it: agent/link.py reopens or ends it
        self._report_end(project.id, ended)
        if self._card is card:
            reason = getattr(getattr(ended, "reason", None), "value", "")
            self._set(
                State.PICKER, project=project.id, message=getattr(ended, "message", ""),
                detail=Detail.SESSION_ENDED if reason else Detail.NONE,
                args={"reason": reason} if reason else None,
            )  # fmt: skip


async def _no_capture() -> bytes:
    """The capture while the sensor is unplugged: none (cancelled when the prompt moves on)."""
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


def _verify_pin(pin: str) -> Callable[[BioSsoSession], None]:
    def verify(session: BioSsoSession) -> None:
        session.piv.verify_pin(pin)

    return verify


def _verify_finger(probe: bytes) -> Callable[[BioSsoSession], None]:
    def verify(session: BioSsoSession) -> None:
        session.piv.verify_finger(KeyRef.FINGER_PRIMARY, probe)

    return verify


def _prove_possession(
    certificate: x509.Certificate, slot: int
) -> Callable[[BioSsoSession], None]:
    """The card proves the project key: ECDH for an EC key, a signature for an RSA one.

    By the certificate's key (validated as a project credential just before),
    not by a variant's name: RSA keys cannot do ECDH (docs/card-variants.md).
    """

    def prove(session: BioSsoSession) -> None:
        if isinstance(certificate.public_key(), rsa.RSAPublicKey):
            prove_signature(
                certificate, slot, lambda s, m: session.sign(m, slot=s, certificate=certificate)
            )
        else:
            prove_key_agreement(certificate, slot, session.ecdh)

    return prove
