"""The agent's state machine: from card to session and back.

idle -> reading -> picker -> verifying -> validating -> connecting ->
running -> (switch | card removed | session ended) -> picker or idle.
``blocked`` holds a card that cannot be used until it is removed.

Everything the machine talks to is a port given at construction (card,
sensor, trust, credentials, sessions: :mod:`sdbox.agent.ports`), so that the
same logic runs against the real stack (integration tests, the box) and
against fakes (unit tests). The connection flow, from the chosen project to
the running session, is :mod:`sdbox.agent.connect`.
One flow runs at a time; card removal cancels it and kills the session at
once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sdbox.agent.api import (
    CardLayout,
    Detail,
    EndReason,
    Preference,
    Problem,
    ProjectStatus,
    ProjectView,
    State,
    project_status,
)
from sdbox.agent.card import CardHandle, ReaderEvent
from sdbox.agent.connect import ConnectionFlow, Insertion
from sdbox.agent.desk import DeskMixin
from sdbox.agent.dircache import DirectoryCache
from sdbox.agent.enrolmode import EnrolmentFactory, EnrolmentMode
from sdbox.agent.events import (
    AgentEvent,
    PreferencesChanged,
    RenewalEvent,
    SensorChanged,
    SessionEndedEvent,
    Snapshot,
    Transition,
)
from sdbox.agent.link import CentreLink
from sdbox.agent.oneproject import one_project_listing
from sdbox.agent.outer_network import LinkFacts, NetworkStore
from sdbox.agent.ports import (
    CredentialPort,
    RenewalPort,
    SensorPort,
    SessionHandle,
    SessionPort,
    TrustPort,
)
from sdbox.agent.preferences import PreferenceError, Preferences
from sdbox.agent.presence import SensorHotplug, SensorPresence
from sdbox.agent.problems import Refusal, Step, problem_for, refusal_for
from sdbox.agent.support import SupportRecord
from sdbox.audit import AuditEvent, audit
from sdbox.errors import SdboxError
from sdbox.network.events import TunnelEvent, TunnelPort
from sdbox.renewal.capability import renewal_refusal
from sdbox.renewal.due import record_renewability, record_seen, renewability_known
from sdbox.session.outcome import SessionEnded
from sdbox.smartcard.directory import Directory, Project
from sdbox.smartcard.errors import CardAccessError, DirectoryMissing

_log = logging.getLogger("sdbox.agent")

class Agent(CentreLink, ConnectionFlow, DeskMixin, EnrolmentMode):
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
        enrolment: EnrolmentFactory | None = None,
        enrolment_poll_s: float = 1.0,
        seen_dir: Path | None = None,
        preferences: Preferences | None = None,
        tunnel: TunnelPort | None = None,
        grace_s: float = 20.0,
        catalogue: Path | None = None,
        directory_cache: Path | None = None,
        network: NetworkStore | None = None,
        support: SupportRecord | None = None,
        tunnel_state: Callable[[], TunnelEvent | None] | None = None,
        link_reader: Callable[[str], LinkFacts] | None = None,
        fleet_config: Path | None = None,
    ) -> None:
        self.trust = trust
        self.sensor = sensor
        self.credentials = credentials
        self.sessions = sessions
        self.endpoint_allowed = endpoint_allowed
        self.open_card = open_card
        self.renewal_window_days = renewal_window_days
        self.renewal = renewal
        self.enrolment = enrolment  # remote fingerprint enrolment (agent/enrolmode.py), if offered
        self.enrolment_poll_s = enrolment_poll_s  # how often the code's confirmation is asked
        self.seen_dir = seen_dir  # where the renewal timer learns what is due (renewal/due.py)
        self.preferences = preferences or Preferences(None, layout="us", choices=("us",))
        self.tunnel = tunnel  # None: no tunnel on this site, the centre is taken as reachable
        self.grace_s = grace_s  # how long a session waits for a lost tunnel (agent/link.py)
        self.catalogue = catalogue  # one-project cards' projects (sdbox.agent.oneproject)
        self.directories = DirectoryCache(directory_cache)  # for chips without extended length
        self._desk_init(network, support, tunnel_state, link_reader, fleet_config)
        self._renewing = False
        self.snapshot = Snapshot()
        self.listeners: list[Callable[[AgentEvent], None]] = []
        self.presence = SensorPresence()
        self._card: Insertion | None = None
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
        detail: Detail = Detail.NONE,
        args: Mapping[str, str] | None = None,
    ) -> None:
        snap = self.snapshot
        snap.detail, snap.detail_args = detail, dict(args or {})
        snap.state, snap.active_project, snap.message, snap.problem = (
            state,
            project,
            message,
            problem,
        )
        if tries_left is not None:
            snap.tries_left = tries_left
        if problem is not None:
            self.support.problem(problem)
        _log.info(
            "state %s%s%s",
            state.value,
            f" [{project}]" if project else "",
            f": {message}" if message else "",
        )
        self._emit(
            Transition(state, project, message, problem, tries_left, detail, dict(args or {}))
        )

    def _refuse(self, state: State, refusal: Refusal, *, project: str = "") -> None:
        """Show ``refusal`` (its problem, words and detail) in ``state``."""
        self._set(
            state, project=project, message=refusal.message, problem=refusal.problem,
            detail=refusal.detail, args=refusal.detail_args,
        )  # fmt: skip

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
        card = Insertion(self.open_card(reader))
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
        self._set(
            State.IDLE,
            message="the card was swapped" if swapped else "",
            detail=Detail.CARD_SWAPPED if swapped else Detail.NONE,
        )

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
                    self._refuse(State.BLOCKED, refusal_for(exc, Step.CARD))
            except Exception as exc:
                _log.exception("agent flow failed")
                if self._card is not None:
                    self._set(
                        State.BLOCKED,
                        message="internal error: remove the card and try again",
                        problem=problem_for(exc, Step.CARD),
                        detail=Detail.INTERNAL_ERROR,
                    )

        self._flow = asyncio.ensure_future(guarded())

    async def _end_flow_and_session(
        self, *, kill: bool, because: EndReason | None = None
    ) -> None:
        """Stop the connection flow and end its session, together (removal, switch, cancel).

        The flow is cancelled first and the session told to end before
        anything is awaited, so neither waits on the other: a session still
        starting (preflight, spawn, its stdin being written) is ended the
        moment its client exists, and the flow can no longer move on to
        "running".
        """
        self._forget_outage()  # whatever ends the session, no reconnection follows
        flow, self._flow = self._flow, None
        if flow is not None and (flow.done() or flow is asyncio.current_task()):
            flow = None
        if flow is not None:
            flow.cancel()
        await self._end_session(kill=kill, because=because)
        if flow is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await flow

    async def _read_card(self, card: Insertion) -> None:
        try:
            summary = await card.handle.summary(
                self.trust.directory_validator(), self.directories.get
            )
        except SdboxError as exc:
            self._refuse(State.BLOCKED, refusal_for(exc, Step.READING))
            return
        card.guid = summary.guid
        card.occ = summary.occ  # what the card can verify: the finger prompt follows it
        # the support screen's "last card": its kind only, never its identity
        self.support.card_inserted("BIO SSO, on-card finger" if summary.occ else "PIV, PIN only")
        audit(
            AuditEvent.CARD_INSERTED,
            "card inserted",
            reader=card.handle.reader,
            card=summary.guid.hex(),
        )
        if isinstance(summary.directory_error, DirectoryMissing):
            # Capabilities, not names: a card whose 9A certificate is a project credential is
            # the earlier one-project card (docs/card-variants.md): its project comes from the
            # site's signed catalogue, and the card goes straight to it.
            try:
                listing = await one_project_listing(
                    card.handle, summary.guid, self.catalogue, self.trust.directory_validator()
                )
            except Refusal as refusal:
                audit(AuditEvent.DIRECTORY_REFUSED, refusal.message, card=summary.guid.hex())
                self._refuse(State.BLOCKED, refusal)
                return
            except CardAccessError:
                raise
            except SdboxError:  # an unreadable 9A certificate: no directory is what is reported
                listing = None
            if listing is not None:
                await self._open_one_project(card, listing, summary.finger_primary_tries)
                return
        if summary.directory is None:
            message = (
                summary.directory_error.message
                if summary.directory_error
                else "no project directory"
            )
            audit(AuditEvent.DIRECTORY_REFUSED, message, card=summary.guid.hex())
            self._set(
                State.BLOCKED, message=message, problem=Problem.DIRECTORY_UNTRUSTED,
                detail=Detail.DIRECTORY_UNTRUSTED if summary.directory_error
                else Detail.DIRECTORY_MISSING,
            )  # fmt: skip
            return
        card.directory = summary.directory
        self.snapshot.card_layout = CardLayout.DIRECTORY
        await asyncio.to_thread(self.directories.put, summary.guid, summary.directory_object)
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

    async def _open_one_project(
        self, card: Insertion, listing: Directory, tries: int | None
    ) -> None:
        """A one-project card: straight to its project, no choice (unless it cannot be opened)."""
        card.directory = listing
        self.snapshot.card_layout = CardLayout.ONE_PROJECT
        project = listing.projects[0]
        audit(
            AuditEvent.DIRECTORY_VERIFIED, "one-project card: its project is in the catalogue",
            card=card.guid.hex(), projects=1, sequence=listing.sequence,
        )  # fmt: skip
        view = self._view(project)
        self.snapshot.projects = [view]
        self.snapshot.tries_left = tries if tries is not None else -1
        if not view.usable:  # expired, or not allowed here: the picker shows which
            self._set(State.PICKER)
            return
        audit(AuditEvent.PROJECT_CHOSEN, "project chosen", project=project.id, card=card.guid.hex())
        await self._connect(card, project)

    def _view(self, project: Project) -> ProjectView:
        now = datetime.now(UTC)
        days = (project.not_after - now).days
        usable = True
        if project.not_after <= now:
            status, usable = project_status(ProjectStatus.EXPIRED), False
        elif not self.endpoint_allowed(project.endpoint):
            status, usable = project_status(ProjectStatus.NOT_ALLOWED), False
        elif days <= self.renewal_window_days:
            status = project_status(ProjectStatus.EXPIRES_SOON, days)
        else:
            status = project_status(ProjectStatus.READY)
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

    def set_preference(self, key: str, value: str) -> None:
        """A choice from the greeter (keyboard layout, large text, high contrast), kept."""
        busy = (State.VALIDATING, State.CONNECTING, State.RUNNING)
        if key == Preference.KEYBOARD_LAYOUT and self.snapshot.state in busy:
            # the greeter restarts the kiosk compositor to apply a layout, and the
            # session's window lives in it
            raise Refusal(Problem.BUSY, "the keyboard layout can change when no session is open")
        try:
            changed = self.preferences.set(key, value)
        except PreferenceError as exc:
            raise Refusal(Problem.INVALID_PREFERENCE, str(exc)) from exc
        if changed:
            _log.info("preference %s set to %s", key, value)
            self._emit(PreferencesChanged(self.preferences.values()))

    async def submit_pin(self, pin: str) -> None:
        """The PIN typed in the greeter, where the chosen project allows it."""
        if self._pin is None or self._pin.done():
            raise Refusal(
                Problem.PIN_NOT_ALLOWED, "this project does not accept the PIN: use your finger"
            )
        self._pin.set_result(pin)

    def _project(self, card: Insertion, project_id: str) -> Project:
        assert card.directory is not None
        for project in card.directory.projects:
            if project.id == project_id:
                return project
        raise Refusal(Problem.UNKNOWN_PROJECT, f"this card has no project '{project_id}'")

    # -- renewal in the background of a running session ---------------------------------

    def _start_renewal(self, card: Insertion) -> None:
        """Renew what is due, once per card, while the researcher works (card thread).

        Before that, once per card on this box, the card is asked whether the
        box may renew it at all, for the renewal timer (:meth:`_note_renewability`).
        """
        due = [p.id for p in self.snapshot.projects if p.status.startswith("certificate expires")]
        if self._renewing or card.renewal_tried or not card.verified:
            return
        if self.snapshot.card_layout != CardLayout.DIRECTORY:
            return  # a one-project card: no directory to switch, no free slot (docs/renewal.md)
        if (self.renewal is None or not due) and self.seen_dir is None:
            return
        card.renewal_tried = True
        self._renewing = True
        task = asyncio.ensure_future(self._renew(card, due if self.renewal is not None else []))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _note_renewability(self, card: Insertion) -> None:
        """Note whether the box may renew this card, once per card, for `renewal mark-due`.

        The renewal job's own question (:func:`renewal_refusal` over the card's
        capabilities: public reads, about 11 APDUs), asked while the session
        runs, so that the daily timer does not mark due what renewal refuses
        (an RSA card, docs/renewal.md). The timer's view only: a failure here
        never touches the card's session.
        """
        if self.seen_dir is None:
            return
        seen, guid = self.seen_dir, card.guid.hex()
        try:
            if await asyncio.to_thread(renewability_known, seen, guid):
                return
            asked = await card.handle.run(lambda s: (renewal_refusal(s, s.atr),) if s.atr else None)
            if asked is not None:  # without the ATR the capabilities are not the card's
                await asyncio.to_thread(record_renewability, seen, guid, asked[0])
        except (OSError, SdboxError) as exc:
            _log.warning("cannot note whether the box may renew this card: %s", exc)

    async def _renew(self, card: Insertion, due: list[str]) -> None:
        try:
            await self._note_renewability(card)
        except BaseException:
            self._renewing = False
            raise
        if not due:
            self._renewing = False
            return
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

    async def _end_session(self, *, kill: bool, because: EndReason | None = None) -> None:
        """End the agent's session (kill: card removed; else close: switch) and report it once.

        ``because``: the reason reported instead of the client's own (the agent's decision,
        e.g. the tunnel stayed down).
        """
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
        if because is not None:
            ended = SessionEnded(because, getattr(ended, "detail", ""))
        self._report_end(self._session_project, ended)

    async def shutdown(self) -> None:
        """Stop: kill any session, release the card, stop following the tunnel."""
        await self.stop_tunnel_watch()
        await self._end_flow_and_session(kill=True)
        if self._card is not None:
            self._card.handle.close()
            self._card = None
