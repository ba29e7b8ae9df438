"""The agent's link to the centre: the tunnel's state as one of its inputs.

:class:`CentreLink` is the part of :class:`sdbox.agent.machine.Agent` that
follows the tunnel (a :class:`~sdbox.network.events.TunnelPort`, pushed from
charon by :class:`sdbox.network.watch.TunnelWatch`; none on a site without a
tunnel, where everything behaves as before). It publishes the centre's state
and reason (D-Bus ``Centre``, ``CentreReason``, ``CentreGateway``), writes the
audit trail's tunnel events, refuses to start a connection while the centre
cannot be reached (no finger asked, nothing sent to the broker), and carries a
running session over a short loss:

- the tunnel drops during a session: the session waits ``grace_s`` (its
  client may still be up, or may have ended on its own: the greeter then says
  the session is being reconnected). A client that lost its transport while
  the tunnel is still said up starts the wait too (it usually notices a dead
  gateway before charon's dead-peer detection); if the tunnel stays up
  throughout, its own reason ends the session;
- the tunnel is back in time: the old client is ended and the project opened
  again with a fresh one-time credential from the broker, without a new
  finger, since the card never left (audit ``session_reconnecting``; no
  session end is reported: for the researcher the session goes on);
- not back in time: the session ends with reason ``network`` (no client
  left), and the picker returns by itself once the tunnel is up again;
- the card pulled meanwhile: everything ends at once, as always (the card
  removal ends the flow, which forgets the outage).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sdbox.agent.api import CentreState, Detail, EndReason, Problem, State
from sdbox.agent.events import CentreChanged
from sdbox.agent.problems import Refusal
from sdbox.audit import AuditEvent, audit
from sdbox.network.events import Reason, TunnelEvent, TunnelState
from sdbox.session.outcome import SessionEnded

if TYPE_CHECKING:
    from sdbox.agent.connect import Insertion
    from sdbox.agent.events import AgentEvent, Snapshot
    from sdbox.agent.ports import SessionHandle
    from sdbox.network.events import TunnelPort
    from sdbox.smartcard.directory import Project

_log = logging.getLogger("sdbox.agent")

_AUDIT = {
    TunnelState.UP: AuditEvent.TUNNEL_UP,
    TunnelState.DOWN: AuditEvent.TUNNEL_DOWN,
    TunnelState.REFUSED: AuditEvent.TUNNEL_REFUSED,
}


@dataclass
class Outage:
    """A session caught by a tunnel loss, waiting for the tunnel (at most the grace period)."""

    card: Insertion
    project: str
    timer: asyncio.Task[None]
    # False while only the client's lost transport points at the tunnel (charon not yet
    # seen the loss); what the client said then, reported if the tunnel proves innocent
    tunnel_lost: bool = True
    client_end: Any = None


class CentreLink:
    """The tunnel side of :class:`sdbox.agent.machine.Agent`, which it is mixed into."""

    if TYPE_CHECKING:  # what the link uses of the agent (set in Agent.__init__)
        tunnel: TunnelPort | None
        grace_s: float
        snapshot: Snapshot
        _card: Insertion | None
        _session: SessionHandle | None
        _session_project: str
        _tasks: set[asyncio.Future[None]]

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
        def _start_flow(self, coro: Awaitable[None]) -> None: ...
        async def _connect(self, card: Insertion, project: Project) -> None: ...
        def _report_end(self, project: str, ended: Any) -> None: ...
        async def _end_flow_and_session(
            self, *, kill: bool, because: EndReason | None = None
        ) -> None: ...

    _centre: TunnelEvent | None = None  # the last event seen on the loop (None: no tunnel)
    _audited: tuple[TunnelState, Reason | None] | None = None  # the last state and reason audited
    _outage: Outage | None = None
    _unsubscribe: Callable[[], None] | None = None

    # -- the port ----------------------------------------------------------------

    def start_tunnel_watch(self, loop: asyncio.AbstractEventLoop) -> None:
        """Follow the tunnel port (if any): its events are handled on ``loop``."""
        if self.tunnel is None:
            return

        def pushed(event: TunnelEvent) -> None:  # from the port's thread
            loop.call_soon_threadsafe(self.on_tunnel_event, event)

        self._unsubscribe = self.tunnel.subscribe(pushed)
        self.tunnel.start()
        self.on_tunnel_event(self.tunnel.current())

    async def stop_tunnel_watch(self) -> None:
        """Stop following the tunnel (the tunnel itself is its daemon's)."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        self._forget_outage()
        if self.tunnel is not None:
            await asyncio.to_thread(self.tunnel.stop)  # joins the port's threads: off the loop

    def centre(self) -> CentreChanged:
        """The centre's state as D-Bus shows it."""
        event = self._centre
        if event is None:
            return CentreChanged(CentreState.UNWATCHED)
        reason = event.reason.value if event.reason and event.state is not TunnelState.UP else ""
        return CentreChanged(CentreState(event.state.value), reason, event.gateway or "")

    def on_tunnel_event(self, event: TunnelEvent) -> None:
        """A change of the tunnel (on the loop)."""
        last = self._centre
        self._centre = event
        if last is not None and (last.state, last.reason, last.gateway) == (
            event.state, event.reason, event.gateway
        ):  # fmt: skip
            return
        self._emit(self.centre())
        kind = _AUDIT.get(event.state)
        # a daemon trying gateway after gateway for the same reason is one event, not one a try
        if kind is not None and (event.state, event.reason) != self._audited:
            self._audited = (event.state, event.reason)
            audit(
                kind, event.describe(), gateway=event.gateway,
                reason=event.reason.value if event.reason else None,
                detail=event.detail or None, inner_address=event.inner_address,
            )  # fmt: skip
        if event.state is TunnelState.UP:
            self._centre_back()
        elif event.state in (TunnelState.DOWN, TunnelState.REFUSED):
            self._centre_lost()

    # -- what the flow asks --------------------------------------------------------

    def _centre_refusal(self) -> Refusal | None:
        """Why a connection may not start now (None: the centre is reachable, or no tunnel)."""
        event = self._centre
        if event is None or event.state is TunnelState.UP:
            return None
        if event.state is TunnelState.CONNECTING or event.reason is None:
            return Refusal(
                Problem.CENTRE_UNREACHABLE,
                "the box is still connecting to the centre: try again in a moment",
                Detail.CENTRE_CONNECTING,
            )
        return Refusal(
            Problem.CENTRE_UNREACHABLE,
            f"the centre cannot be reached: {event.describe()}",
            Detail.TUNNEL_DOWN,
            {"reason": event.reason.value, "gateway": event.gateway or ""},
        )

    def _session_waits_for_centre(self, card: Insertion, project: str, ended: Any) -> bool:
        """The session client ended: keep the session's place for the tunnel (True) or not.

        During an outage, yes. Also when the client lost its transport while the tunnel is
        watched and still said up: the client notices first (FreeRDP gives up on unanswered
        TCP after 9 s, charon's dead-peer detection takes longer), so the tunnel is the
        suspect until the grace period says otherwise.
        """
        outage = self._outage
        if outage is None:
            reason = getattr(getattr(ended, "reason", None), "value", None)
            lost_transport = reason == EndReason.CONNECTION_LOST.value
            if self._centre is None or not lost_transport or not card.verified:
                return False
            outage = self._wait_for_centre(card, project)
            outage.tunnel_lost, outage.client_end = False, ended
        if outage.card is not card or outage.project != project:
            return False
        self._set(
            State.CONNECTING, project=project,
            message="the connection to the centre was lost: reconnecting the session",
            detail=Detail.SESSION_RECONNECTING,
        )  # fmt: skip
        return True

    # -- losing and finding the centre -----------------------------------------------

    def _centre_lost(self) -> None:
        if self._outage is not None:
            self._outage.tunnel_lost = True  # the client's lost transport was the tunnel's
            return
        card, session = self._card, self._session
        if card is None or session is None or not card.verified:
            return
        self._wait_for_centre(card, self._session_project)

    def _wait_for_centre(self, card: Insertion, project: str) -> Outage:
        _log.info("session %s waits up to %.0f s for the tunnel", project, self.grace_s)
        timer = asyncio.ensure_future(self._grace_over(self.grace_s))
        self._outage = Outage(card, project, timer)
        return self._outage

    async def _grace_over(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        outage, self._outage = self._outage, None
        if outage is None:
            return
        up = self._centre is not None and self._centre.state is TunnelState.UP
        if not outage.tunnel_lost and up and self._session is None:
            # the tunnel never went down: the session ended for the client's own reason
            self._report_end(outage.project, outage.client_end)
            if self._card is outage.card:
                reason = getattr(getattr(outage.client_end, "reason", None), "value", "")
                self._set(
                    State.PICKER, project=outage.project,
                    message=getattr(outage.client_end, "message", ""),
                    detail=Detail.SESSION_ENDED, args={"reason": reason},
                )  # fmt: skip
            return
        _log.info("the tunnel stayed down for %.0f s: ending session %s", seconds, outage.project)
        had_client = self._session is not None
        await self._end_flow_and_session(kill=True, because=EndReason.NETWORK)
        if not had_client:  # the client had ended on its own: its end is reported now
            self._report_end(outage.project, SessionEnded(EndReason.NETWORK, "tunnel down"))
        if self._card is outage.card:
            self._show_network_end(outage.project)

    def _show_network_end(self, project: str) -> None:
        self._set(
            State.PICKER, project=project, message=SessionEnded(EndReason.NETWORK, "").message,
            detail=Detail.SESSION_ENDED, args={"reason": EndReason.NETWORK.value},
        )  # fmt: skip

    def _centre_back(self) -> None:
        outage, self._outage = self._outage, None
        if outage is not None:
            outage.timer.cancel()
            if self._card is outage.card:
                self._track(self._reconnect(outage))
                return
        snap = self.snapshot
        if self._card is not None and snap.state is State.PICKER and (
            snap.problem is Problem.CENTRE_UNREACHABLE
            or snap.detail_args.get("reason") == EndReason.NETWORK.value
        ):  # the picker said the centre was gone: it is back
            self._set(State.PICKER)

    async def _reconnect(self, outage: Outage) -> None:
        """The tunnel came back in time: the same project again, a fresh credential, no finger."""
        card = outage.card
        project = next(
            (p for p in (card.directory.projects if card.directory else ()) if p.id == outage.project),
            None,
        )
        # replaced, not ended: the researcher's session goes on, so no end is reported
        stale, self._session = self._session, None
        await self._end_flow_and_session(kill=True)
        if stale is not None:
            try:
                await stale.kill()
            except Exception:  # the client may be gone already
                _log.debug("ending the stale session client", exc_info=True)
        if self._card is not card or project is None:
            return
        audit(
            AuditEvent.SESSION_RECONNECTING, "the tunnel is back: reopening the session",
            project=project.id, card=card.guid.hex(),
        )  # fmt: skip
        self._start_flow(self._connect(card, project))

    def _forget_outage(self) -> None:
        """No session waits for the tunnel any more (card removed, switch, cancel, stop)."""
        outage, self._outage = self._outage, None
        if outage is not None:
            outage.timer.cancel()

    def _track(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

