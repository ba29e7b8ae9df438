"""The agent's state machine: from card to session and back.

idle -> reading -> picker -> verifying -> validating -> connecting ->
running -> (switch | card removed | session ended) -> picker or idle.
``blocked`` holds a card that cannot be used until it is removed.

Everything the machine talks to is a port given at construction (card,
sensor, trust, credentials, sessions), so that the same logic runs against
the real stack (integration tests, the box) and against fakes (unit tests).
One flow runs at a time; card removal cancels it and kills the session at
once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from sdbox.agent.card import CardHandle, ReaderEvent
from sdbox.agent.events import (
    AuditEvent,
    Problem,
    ProjectView,
    RenewalEvent,
    SensorChanged,
    SessionEndedEvent,
    Snapshot,
    State,
    Transition,
    audit,
)
from sdbox.agent.presence import SensorHotplug, SensorPresence
from sdbox.biometric.errors import PlaceFingerAgain, SensorUnavailable
from sdbox.biometric.quality import PoorCapture
from sdbox.errors import SdboxError
from sdbox.renewal.due import record_seen
from sdbox.smartcard.biosso import BioSsoSession
from sdbox.smartcard.directory import Directory, Project, SecondFactor
from sdbox.smartcard.errors import (
    CardAccessError,
    FingerBlocked,
    InvalidTemplate,
    PinBlocked,
    VerificationError,
    WrongFinger,
    WrongPin,
)
from sdbox.smartcard.profile import KeyRef
from sdbox.trust import errors as trust_errors
from sdbox.trust.possession import prove_key_agreement

_log = logging.getLogger("sdbox.agent")

SIGNER_VALIDATOR = Callable[[x509.Certificate, list[x509.Certificate]], None]
AgentEvent = Transition | SessionEndedEvent | RenewalEvent | SensorChanged


class RenewalPort(Protocol):
    """Renews the due project certificates of the verified card (runs on the card thread).

    Returns one result per project with ``project``, ``outcome`` (an enum whose
    ``value`` is the outcome name, see docs/renewal.md) and ``detail``.
    """

    def renew(self, session: BioSsoSession) -> list[Any]: ...


class SensorPort(Protocol):
    """The fingerprint sensor: one capture gives one probe template (compact card format)."""

    async def capture(self) -> bytes:
        """Wait for a finger; return the probe (cancellable)."""
        ...


class TrustPort(Protocol):
    """The trust decisions the agent needs (sdbox.trust, bound to anchors and CRLs)."""

    def directory_validator(self) -> SIGNER_VALIDATOR:
        """A validator for the directory signer, at the current time."""
        ...

    def check_project(self, certificate: x509.Certificate, project: Project) -> None:
        """Raise unless the project certificate is valid, unrevoked and names ``project``."""
        ...

    def check_server(self, certificate: x509.Certificate, project: Project) -> None:
        """Raise unless the bubble's certificate is valid, unrevoked and names its host."""
        ...


class CredentialPort(Protocol):
    """Obtains the session credential for a project (the broker, or none: interactive)."""

    async def obtain(
        self, project: Project, certificate: x509.Certificate, card: CardHandle
    ) -> tuple[str, Any]:
        """(user, credential) for the bubble."""
        ...


class SessionHandle(Protocol):
    """A running session client (sdbox.session.Session)."""

    @property
    def pid(self) -> int | None: ...

    async def start(self) -> None: ...
    async def wait_connected(self) -> None: ...
    async def wait_ended(self) -> Any: ...
    async def kill(self) -> Any: ...
    async def close(self) -> Any: ...


class SessionPort(Protocol):
    """Opens session clients."""

    def open(
        self, project: Project, user: str, credential: Any, server: x509.Certificate
    ) -> SessionHandle:
        """A session for ``project`` (not started)."""
        ...


class Refusal(SdboxError):
    """A step refused, with the problem code the greeter shows."""

    def __init__(self, problem: Problem, message: str) -> None:
        super().__init__(message)
        self.problem = problem


@dataclass
class _Card:
    handle: CardHandle
    guid: bytes = b""
    directory: Directory | None = None
    verified: bool = False
    renewal_tried: bool = False  # renewal runs once per insertion


class Agent:
    """The state machine (see the module docstring)."""

    def __init__(
        self,
        *,
        trust: TrustPort,
        sensor: SensorPort,
        credentials: CredentialPort,
        sessions: SessionPort,
        endpoint_allowed: Callable[[str], bool],
        open_card: Callable[[str], CardHandle] = CardHandle,
        renewal_window_days: int = 30,
        renewal: RenewalPort | None = None,
        seen_dir: Path | None = None,
    ) -> None:
        self.trust = trust
        self.sensor = sensor
        self.credentials = credentials
        self.sessions = sessions
        self.endpoint_allowed = endpoint_allowed
        self.open_card = open_card
        self.renewal_window_days = renewal_window_days
        self.renewal = renewal
        self.seen_dir = seen_dir  # where the renewal timer learns what is due (renewal/due.py)
        self._renewing = False
        self.snapshot = Snapshot()
        self.listeners: list[Callable[[AgentEvent], None]] = []
        self.presence = SensorPresence()
        self._card: _Card | None = None
        self._flow: asyncio.Task[None] | None = None
        self._session: SessionHandle | None = None
        self._session_project = ""
        self._watch: asyncio.Task[None] | None = None
        self._pin: asyncio.Future[str] | None = None
        self._tasks: set[asyncio.Future[None]] = set()

    # -- publishing -----------------------------------------------------------------

    def _emit(self, event: AgentEvent) -> None:
        for listener in list(self.listeners):
            try:
                listener(event)
            except Exception:  # a broken listener must not stop the machine
                _log.exception("event listener failed")

    def _set(
        self,
        state: State,
        *,
        project: str = "",
        message: str = "",
        problem: Problem | None = None,
        tries_left: int | None = None,
    ) -> None:
        snap = self.snapshot
        snap.state, snap.active_project, snap.message, snap.problem = (
            state,
            project,
            message,
            problem,
        )
        if tries_left is not None:
            snap.tries_left = tries_left
        _log.info(
            "state %s%s%s",
            state.value,
            f" [{project}]" if project else "",
            f": {message}" if message else "",
        )
        self._emit(Transition(state, project, message, problem, tries_left))

    # -- sensor hotplug -----------------------------------------------------------------

    def sensor_watched(self) -> None:
        """The hotplug watcher started: the sensor's presence is known from now on."""
        self.presence.watching()
        self.snapshot.sensor = self.presence.state
        self._emit(SensorChanged(self.presence.state))

    def on_sensor_event(self, event: SensorHotplug) -> None:
        """Entry point for the sensor watcher (runs on the loop); wakes a waiting finger prompt."""
        if self.presence.update(event):
            self.snapshot.sensor = self.presence.state
            self._emit(SensorChanged(self.presence.state))

    # -- reader events ----------------------------------------------------------------

    def on_reader_event(self, event: ReaderEvent) -> None:
        """Entry point for the reader watcher (runs on the loop)."""
        coro = (
            self.card_inserted(event.reader) if event.present else self.card_removed(event.reader)
        )
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)  # keep a reference until done (the loop only holds weak ones)
        task.add_done_callback(self._tasks.discard)

    async def card_inserted(self, reader: str) -> None:
        """A card arrived: read and verify its directory, then show the picker."""
        if self._card is not None:
            if self._card.handle.reader != reader:
                return  # one card at a time; another reader's card waits
            await self.card_removed(reader, swapped=True)
        card = _Card(self.open_card(reader))
        self._card = card
        self.snapshot.reader = reader
        self._set(State.READING)
        self._start_flow(self._read_card(card))

    async def card_removed(self, reader: str, *, swapped: bool = False) -> None:
        """The card left (or was swapped): kill the session at once, forget everything."""
        card = self._card
        if card is None or card.handle.reader != reader:
            return
        self._card = None  # from here no flow step may show anything for this card
        if self._session is not None and self._session.pid is None:
            # The soak counts these: the case that once left a live session.
            _log.info("the card left while the session client was starting: ending it as it starts")
        await self._end_flow_and_session(kill=True)
        card.handle.close()
        audit(
            AuditEvent.CARD_SWAPPED if swapped else AuditEvent.CARD_REMOVED,
            "card left the reader",
            reader=reader,
            card=card.guid.hex() or None,
        )
        self.snapshot = Snapshot(sensor=self.presence.state)
        self._set(State.IDLE, message="the card was swapped" if swapped else "")

    # -- flows ------------------------------------------------------------------------

    def _start_flow(self, coro: Awaitable[None]) -> None:
        async def guarded() -> None:
            try:
                await coro
            except asyncio.CancelledError:
                raise
            except CardAccessError as exc:
                _log.info("card access failed: %s", exc.message)
                if self._card is not None:  # removal events follow; show the problem meanwhile
                    self._set(State.BLOCKED, message=exc.message, problem=Problem.CARD_UNREADABLE)
            except Exception:
                _log.exception("agent flow failed")
                if self._card is not None:
                    self._set(
                        State.BLOCKED,
                        message="internal error: remove the card and try again",
                        problem=Problem.CARD_UNREADABLE,
                    )

        self._flow = asyncio.ensure_future(guarded())

    async def _end_flow_and_session(self, *, kill: bool) -> None:
        """Stop the connection flow and end its session, together (removal, switch, cancel).

        The flow is cancelled first and the session told to end before
        anything is awaited, so neither waits on the other: a session still
        starting (preflight, spawn, its stdin being written) is ended the
        moment its client exists, and the flow can no longer move on to
        "running".
        """
        flow, self._flow = self._flow, None
        if flow is not None and (flow.done() or flow is asyncio.current_task()):
            flow = None
        if flow is not None:
            flow.cancel()
        await self._end_session(kill=kill)
        if flow is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await flow

    async def _read_card(self, card: _Card) -> None:
        try:
            summary = await card.handle.summary(self.trust.directory_validator())
        except SdboxError as exc:
            self._set(State.BLOCKED, message=exc.message, problem=Problem.CARD_NOT_RECOGNISED)
            return
        card.guid = summary.guid
        audit(
            AuditEvent.CARD_INSERTED,
            "card inserted",
            reader=card.handle.reader,
            card=summary.guid.hex(),
        )
        if summary.directory is None:
            message = (
                summary.directory_error.message
                if summary.directory_error
                else "no project directory"
            )
            audit(AuditEvent.DIRECTORY_REFUSED, message, card=summary.guid.hex())
            self._set(State.BLOCKED, message=message, problem=Problem.DIRECTORY_UNTRUSTED)
            return
        card.directory = summary.directory
        audit(
            AuditEvent.DIRECTORY_VERIFIED,
            "project directory verified",
            card=summary.guid.hex(),
            projects=len(summary.directory.projects),
            sequence=summary.directory.sequence,
        )
        self.snapshot.projects = [self._view(p) for p in summary.directory.projects]
        for view in self.snapshot.projects:
            if view.status.startswith("certificate expires"):
                audit(AuditEvent.RENEWAL_DUE, view.status, project=view.id, card=summary.guid.hex())
        if self.seen_dir is not None:
            expiries = {p.id: p.not_after for p in summary.directory.projects}
            try:
                await asyncio.to_thread(record_seen, self.seen_dir, summary.guid.hex(), expiries)
            except (OSError, SdboxError) as exc:  # the timer's view only: never stops the card
                _log.warning("cannot note the card's expiries for the renewal timer: %s", exc)
        tries = summary.finger_primary_tries if summary.finger_primary_tries is not None else -1
        self._set(State.PICKER, tries_left=tries)

    def _view(self, project: Project) -> ProjectView:
        now = datetime.now(UTC)
        days = (project.not_after - now).days
        usable = True
        if project.not_after <= now:
            status, usable = "certificate expired", False
        elif not self.endpoint_allowed(project.endpoint):
            status, usable = "not allowed on this box", False
        elif days <= self.renewal_window_days:
            status = f"certificate expires in {days} day{'s' if days != 1 else ''}"
        else:
            status = "ready"
        return ProjectView(
            id=project.id, name=project.name, protocol=project.protocol.name.lower(),
            second_factor=project.second_factor.name.lower(), expires=project.not_after.isoformat(),
            status=status, usable=usable,
        )  # fmt: skip

    # -- commands from the greeter ------------------------------------------------------

    async def choose_project(self, project_id: str) -> None:
        """Start the connection flow for ``project_id`` (from the picker)."""
        card = self._card
        if card is None or card.directory is None:
            raise Refusal(Problem.BUSY, "insert your card first")
        if self.snapshot.state not in (State.PICKER, State.RUNNING):
            raise Refusal(Problem.BUSY, f"the box is busy ({self.snapshot.state.value})")
        project = self._project(card, project_id)
        audit(AuditEvent.PROJECT_CHOSEN, "project chosen", project=project.id, card=card.guid.hex())
        await self._end_flow_and_session(kill=False)  # chosen from a running session: a switch
        self._start_flow(self._connect(card, project))

    async def switch(self, project_id: str) -> None:
        """Replace the running session with one for ``project_id`` (holder stays verified)."""
        card = self._card
        if card is None or card.directory is None:
            raise Refusal(Problem.BUSY, "insert your card first")
        project = self._project(card, project_id)
        audit(
            AuditEvent.SWITCH,
            "switching project",
            project=project.id,
            previous=self._session_project or None,
        )
        await self._end_flow_and_session(kill=False)
        self._start_flow(self._connect(card, project))

    async def cancel(self) -> None:
        """Abandon the current step (or end the running session) and go back to the picker."""
        await self._end_flow_and_session(kill=False)
        if self._pin is not None and not self._pin.done():
            self._pin.cancel()
        if self._card is not None and self._card.directory is not None:
            self._set(State.PICKER)

    async def submit_pin(self, pin: str) -> None:
        """The PIN typed in the greeter, where the chosen project allows it."""
        if self._pin is None or self._pin.done():
            raise Refusal(
                Problem.PIN_NOT_ALLOWED, "this project does not accept the PIN: use your finger"
            )
        self._pin.set_result(pin)

    def _project(self, card: _Card, project_id: str) -> Project:
        assert card.directory is not None
        for project in card.directory.projects:
            if project.id == project_id:
                return project
        raise Refusal(Problem.UNKNOWN_PROJECT, f"this card has no project '{project_id}'")

    # -- the connection flow ---------------------------------------------------------------

    async def _connect(self, card: _Card, project: Project) -> None:
        try:
            if not self.endpoint_allowed(project.endpoint):
                raise Refusal(
                    Problem.ENDPOINT_NOT_ALLOWED,
                    f"project '{project.name}' points to a desktop this box may not reach ({project.endpoint})",
                )
            if not card.verified:
                await self._verify_holder(card, project)
            self._set(State.VALIDATING, project=project.id)
            certificate, server = await self._validate(card, project)
            user, credential = await self._obtain_credential(card, project, certificate)
            await self._run_session(card, project, user, credential, server)
        except Refusal as refusal:
            if self._card is card:  # a refusal for a card that has left shows nothing
                self._set(
                    State.PICKER,
                    project=project.id,
                    message=refusal.message,
                    problem=refusal.problem,
                )

    async def _verify_holder(self, card: _Card, project: Project) -> None:
        allow_pin = project.second_factor == SecondFactor.FINGER_OR_PIN
        retry: Problem | None = None  # why the previous attempt failed, shown with the new prompt
        while True:
            tries = self.snapshot.tries_left
            sensor_there = self.presence.connected
            if sensor_there:
                message = "place your finger" + (" or enter your PIN" if allow_pin else "")
            else:  # nothing to capture with: wait for it to come back (or for the PIN)
                message = "the fingerprint sensor is not connected: " + (
                    "enter your PIN, or plug the sensor back in" if allow_pin
                    else "plug it back in or call the service desk"
                )  # fmt: skip
                retry = Problem.SENSOR_UNPLUGGED
            self._set(
                State.VERIFYING, project=project.id, message=message, problem=retry,
                tries_left=tries,
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
                problem = (
                    Problem.WRONG_FINGER if isinstance(exc, WrongFinger) else Problem.WRONG_PIN
                )
                self.snapshot.tries_left = exc.tries_left
                retry = problem  # the next prompt says why, with the tries left
                continue
            except PoorCapture as exc:  # refused before the card: say what to do, no try spent
                retry = Problem(exc.advice.value)
                continue
            except (InvalidTemplate, PlaceFingerAgain):
                retry = Problem.SENSOR_FAILED  # a poor capture costs no try: ask again
                continue
            except SensorUnavailable as exc:
                if await self.presence.gone_soon():  # unplugged: wait for it (the loop says so)
                    retry = None
                    continue
                raise Refusal(Problem.SENSOR_FAILED, exc.message) from exc
            except (FingerBlocked, PinBlocked) as exc:
                audit(
                    AuditEvent.HOLDER_FAILED,
                    "holder verification blocked",
                    method="finger" if isinstance(exc, FingerBlocked) else "pin",
                    tries_left=0,
                    card=card.guid.hex(),
                )
                problem = (
                    Problem.FINGER_BLOCKED
                    if isinstance(exc, FingerBlocked)
                    else Problem.PIN_BLOCKED
                )
                self.snapshot.tries_left = 0
                raise Refusal(problem, exc.message) from exc
            except VerificationError as exc:
                raise Refusal(Problem.SENSOR_FAILED, exc.message) from exc
            except SdboxError as exc:
                if isinstance(exc, CardAccessError):
                    raise
                raise Refusal(Problem.SENSOR_FAILED, exc.message) from exc
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
        self, card: _Card, project: Project
    ) -> tuple[x509.Certificate, x509.Certificate]:
        certificate = await card.handle.certificate(project.slot)
        if (
            hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).digest()
            != project.certificate_sha256
        ):
            raise Refusal(
                Problem.CERTIFICATE_INVALID,
                f"the certificate in slot {project.slot:02X} is not the one the directory lists",
            )
        try:
            self.trust.check_project(certificate, project)
            await card.handle.run(_prove_key_agreement(certificate, project.slot))
        except CardAccessError:
            raise
        except SdboxError as exc:
            audit(
                AuditEvent.CREDENTIALS_REFUSED,
                exc.message,
                project=project.id,
                card=card.guid.hex(),
            )
            raise Refusal(_trust_problem(exc), exc.message) from exc
        try:
            server = x509.load_der_x509_certificate(project.server_certificate)
            self.trust.check_server(server, project)
        except (ValueError, x509.InvalidVersion) as exc:
            raise Refusal(
                Problem.SERVER_UNTRUSTED, "the directory's server certificate is malformed"
            ) from exc
        except SdboxError as exc:
            audit(
                AuditEvent.CREDENTIALS_REFUSED,
                exc.message,
                project=project.id,
                server=project.endpoint,
            )
            raise Refusal(
                Problem.SERVER_UNTRUSTED, f"the project's desktop is not trusted: {exc.message}"
            ) from exc
        audit(
            AuditEvent.CREDENTIALS_VALIDATED,
            "project and server certificates valid, key on the card",
            project=project.id,
            card=card.guid.hex(),
        )
        return certificate, server

    async def _obtain_credential(
        self, card: _Card, project: Project, certificate: x509.Certificate
    ) -> tuple[str, Any]:
        try:
            user, credential = await self.credentials.obtain(project, certificate, card.handle)
        except CardAccessError:
            raise
        except SdboxError as exc:
            problem = (
                Problem.BROKER_UNREACHABLE
                if "unreachable" in type(exc).__name__.lower()
                else Problem.CREDENTIAL_REFUSED
            )
            raise Refusal(problem, exc.message) from exc
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
        self, card: _Card, project: Project, user: str, credential: Any, server: x509.Certificate
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
            audit(AuditEvent.SESSION_ENDED, exc.message, project=project.id, reason=reason)
            self._emit(SessionEndedEvent(project.id, reason, exc.message))
            raise Refusal(Problem.SESSION_FAILED, exc.message) from exc
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
        self._report_end(project.id, ended)
        if self._card is card:
            self._set(State.PICKER, project=project.id, message=getattr(ended, "message", ""))

    # -- renewal in the background of a running session ---------------------------------

    def _start_renewal(self, card: _Card) -> None:
        """Renew what is due, once per card, while the researcher works (card thread)."""
        due = [p.id for p in self.snapshot.projects if p.status.startswith("certificate expires")]
        if self.renewal is None or self._renewing or card.renewal_tried or not card.verified:
            return
        if not due:
            return
        card.renewal_tried = True
        self._renewing = True
        task = asyncio.ensure_future(self._renew(card, due))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _renew(self, card: _Card, due: list[str]) -> None:
        assert self.renewal is not None
        guid = card.guid.hex()
        audit(AuditEvent.RENEWAL_STARTED, "renewal started", card=guid, projects=",".join(due))
        try:
            results = await card.handle.run(self.renewal.renew)
        except SdboxError as exc:  # card pulled, CA or centre gone: the journal resumes it
            audit(
                AuditEvent.RENEWAL_FAILED, exc.message, card=guid, project=",".join(due),
                reason="interrupted",
            )  # fmt: skip
            return
        except Exception:  # a bug must not take the session down
            _log.exception("renewal failed")
            return
        finally:
            self._renewing = False
        renewed = False
        finished: list[RenewalEvent] = []
        for result in results:
            outcome = getattr(result.outcome, "value", str(result.outcome))
            if outcome != "not_due":
                finished.append(RenewalEvent(result.project, outcome, result.detail))
            if outcome in ("renewed", "interrupted_resumed"):
                renewed = True
                audit(
                    AuditEvent.RENEWAL_SUCCEEDED, f"certificate renewed ({outcome})",
                    card=guid, project=result.project,
                )  # fmt: skip
            elif outcome != "not_due":
                audit(
                    AuditEvent.RENEWAL_FAILED, result.detail or outcome, card=guid,
                    project=result.project, reason=outcome,
                )  # fmt: skip
        if renewed and self._card is card:
            validator = self.trust.directory_validator()
            try:
                card.directory = await card.handle.run(lambda s: s.read_directory(validator))
            except SdboxError as exc:
                _log.warning("re-reading the directory after renewal: %s", exc.message)
            else:
                self.snapshot.projects = [self._view(p) for p in card.directory.projects]
        # After the re-read: whoever listens sees the projects' new expiry with the event.
        for event in finished:
            self._emit(event)

    def _report_end(self, project: str, ended: Any) -> None:
        reason = getattr(getattr(ended, "reason", None), "value", "ended")
        message = getattr(ended, "message", "the session ended")
        audit(AuditEvent.SESSION_ENDED, message, project=project, reason=reason)
        self._emit(SessionEndedEvent(project, reason, message))

    async def _end_session(self, *, kill: bool) -> None:
        """End the agent's session (kill: card removed; else close: switch) and report it once."""
        session, self._session = self._session, None
        if session is None:
            return
        ended: Any = None
        try:
            ended = await (session.kill() if kill else session.close())
        except Exception:  # the client may be gone already; the report below says how it ended
            _log.debug("ending the session", exc_info=True)
        if not hasattr(ended, "reason"):
            with contextlib.suppress(Exception):
                ended = await asyncio.wait_for(session.wait_ended(), 5)
        self._report_end(self._session_project, ended)

    async def shutdown(self) -> None:
        """Stop: kill any session, release the card."""
        await self._end_flow_and_session(kill=True)
        if self._card is not None:
            self._card.handle.close()
            self._card = None


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


def _prove_key_agreement(
    certificate: x509.Certificate, slot: int
) -> Callable[[BioSsoSession], None]:
    def prove(session: BioSsoSession) -> None:
        prove_key_agreement(certificate, slot, session.ecdh)

    return prove


def _trust_problem(exc: SdboxError) -> Problem:
    if isinstance(exc, trust_errors.CertificateRevoked):
        return Problem.CERTIFICATE_REVOKED
    if isinstance(exc, trust_errors.CertificateExpired | trust_errors.CertificateNotYetValid):
        return Problem.CERTIFICATE_EXPIRED
    if isinstance(exc, trust_errors.ClockWrong):
        return Problem.CLOCK_WRONG
    return Problem.CERTIFICATE_INVALID
