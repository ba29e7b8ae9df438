"""The tunnel as the agent sees it: charon watched, never driven.

On a box the tunnel is kept up by its own daemon (:class:`sdbox.network.tunnel.Tunnel`
in a process of its own); the agent only needs to know, at once, whether the
centre is reachable and if not why. :class:`TunnelWatch` implements
:class:`~sdbox.network.events.TunnelPort` from charon's own pushes: VICI's
``ike-updown``/``child-updown`` events (then one ``list-sas`` to see what is
established and through which gateway) and the error-notify plugin's alerts
(the refusals and timeouts, as numbers). Nothing is polled while charon runs;
only a charon that is not there (yet) is retried, every ``retry_s``.

It never initiates or terminates an SA: two drivers would fight over the
gateway order. ``start``/``stop`` only start and stop watching.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from sdbox.network.events import (
    REFUSALS,
    AlertMessage,
    Reason,
    TunnelEvent,
    TunnelState,
    explain,
)
from sdbox.network.tunnel import (
    AlertListener,
    EventListener,
    RouteProbe,
    SaInfo,
    TunnelError,
    Vici,
    route_exists,
)

_log = logging.getLogger("sdbox.network.watch")

# Alerts older than this do not explain a loss: they belong to an earlier attempt.
_ALERT_MEMORY_S = 30.0


def _address(peer: str) -> str:
    """An error-notify peer address (``192.0.2.1[4500]``) without its port."""
    return peer.split("[", 1)[0]


class TunnelWatch:
    """Follows charon's SAs and alerts; reports them as :class:`TunnelEvent` s."""

    def __init__(
        self,
        vici_socket: Path,
        notify_socket: Path,
        *,
        retry_s: float = 2.0,
        route_probe: RouteProbe = route_exists,
        list_sas: Callable[[], list[SaInfo]] | None = None,
    ) -> None:
        self._vici_socket = vici_socket
        self._notify_socket = notify_socket
        self._retry_s = retry_s
        self._route_probe = route_probe
        self._list_sas = list_sas or self._list_sas_over_vici
        self._lock = threading.RLock()
        self._listeners: list[Callable[[TunnelEvent], None]] = []
        # until charon says otherwise, the tunnel daemon is on its way up
        self._current = TunnelEvent(TunnelState.CONNECTING)
        self._alerts: deque[tuple[float, AlertMessage]] = deque(maxlen=32)
        self._up: SaInfo | None = None
        self._stopping = threading.Event()
        self._gone = threading.Event()  # charon's event stream ended (or stop)
        self._thread = threading.Thread(target=self._run, name="tunnel-watch", daemon=True)

    # -- the port ----------------------------------------------------------

    def current(self) -> TunnelEvent:
        """The latest state."""
        with self._lock:
            return self._current

    def subscribe(self, listener: Callable[[TunnelEvent], None]) -> Callable[[], None]:
        """Call ``listener`` on every change (from a watcher thread).

        Listeners are called in order under the watch's lock, so that two of
        charon's threads (alerts, events) never deliver changes out of order:
        they must return at once (the agent's hands the event to its loop).
        """
        with self._lock:
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with self._lock, contextlib.suppress(ValueError):
                self._listeners.remove(listener)

        return unsubscribe

    def start(self) -> None:
        """Start watching (the tunnel itself is its daemon's)."""
        self._thread.start()

    def stop(self) -> None:
        """Stop watching; the tunnel stays as it is."""
        self._stopping.set()
        self._gone.set()
        self._thread.join(timeout=10)

    # -- what charon pushes --------------------------------------------------

    def on_alert(self, alert: AlertMessage) -> None:
        """One error-notify alert (from the alert thread)."""
        found = explain([alert])
        with self._lock:
            self._alerts.append((time.monotonic(), alert))
            if found is None or self._up is not None:
                return  # while up, an alert only explains the loss that follows it
            reason, detail = found
            gateway = _address(alert.peer_address) or None
            self._emit(self._event(reason, gateway, detail))

    def on_charon_event(self, name: str, up: bool, connection: str) -> None:
        """An ``ike-updown``/``child-updown`` (or the stream's end) from the event thread."""
        del up, connection  # what is established is read back, whatever moved
        if name == "daemon-gone":
            self._gone.set()
            return
        self.refresh()

    def refresh(self) -> None:
        """Read what is established and report it (on start and on every up/down)."""
        try:
            sas = self._list_sas()
        except TunnelError as exc:
            self._emit(TunnelEvent(TunnelState.DOWN, reason=Reason.DAEMON_UNAVAILABLE,
                                   detail=str(exc)))  # fmt: skip
            return
        with self._lock:
            established = next((sa for sa in sas if sa.established), None)
            if established is not None:
                self._up = established
                self._alerts.clear()
                inner = next(iter(established.inner_addresses), None)
                self._emit(TunnelEvent(TunnelState.UP, established.remote_host,
                                       inner_address=inner))  # fmt: skip
                return
            lost, self._up = self._up, None
            if lost is None:
                return  # not up before either: the last reason (or "connecting") stands
            self._emit(self._loss(lost))

    # -- internals -------------------------------------------------------------

    def _loss(self, lost: SaInfo) -> TunnelEvent:
        since = time.monotonic() - _ALERT_MEMORY_S
        mine = [a for at, a in self._alerts
                if at >= since and a.connection in ("", lost.connection)]  # fmt: skip
        found = explain(mine) or (Reason.CLOSED, "the tunnel closed")
        return self._event(found[0], lost.remote_host, found[1])

    def _event(self, reason: Reason, gateway: str | None, detail: str) -> TunnelEvent:
        # the tunnel daemon takes the SA down itself when the route goes: no alert says so
        if (
            reason in (Reason.CLOSED, Reason.GATEWAY_UNREACHABLE)
            and gateway
            and not self._route_probe(gateway)
        ):
            reason, detail = Reason.NO_NETWORK, f"no route to {gateway}"
        state = TunnelState.REFUSED if reason in REFUSALS else TunnelState.DOWN
        return TunnelEvent(state, gateway, reason, detail)

    def _emit(self, event: TunnelEvent) -> None:
        with self._lock:
            last = self._current
            if (event.state, event.gateway, event.reason) == (last.state, last.gateway, last.reason):
                return
            self._current = event
            listeners = list(self._listeners)
        _log.info("%s", event.describe())
        for listener in listeners:
            try:
                listener(event)
            except Exception:  # a listener's bug must not stop the watch
                _log.exception("tunnel event listener failed")

    def _list_sas_over_vici(self) -> list[SaInfo]:
        with Vici(self._vici_socket) as command:
            return command.list_sas()

    def _run(self) -> None:
        while not self._stopping.is_set():
            alerts = AlertListener(self._notify_socket, self.on_alert)
            events = EventListener(self._vici_socket, self.on_charon_event)
            started: list[AlertListener | EventListener] = []
            try:
                for listener in (alerts, events):
                    listener.start()
                    started.append(listener)
            except TunnelError as exc:
                for listener in started:
                    listener.stop()
                self._emit(TunnelEvent(TunnelState.DOWN, reason=Reason.DAEMON_UNAVAILABLE,
                                       detail=str(exc)))  # fmt: skip
                self._stopping.wait(self._retry_s)
                continue
            self._gone.clear()
            self.refresh()
            # stop() sets both; checking _stopping too closes the race with the clear() above
            while not self._stopping.is_set() and not self._gone.wait(1.0):
                pass
            for listener in started:
                listener.stop()
            if self._stopping.is_set():
                return
            with self._lock:
                self._up = None
            self._emit(TunnelEvent(TunnelState.DOWN, reason=Reason.DAEMON_UNAVAILABLE,
                                   detail="charon's event stream ended"))  # fmt: skip
            self._stopping.wait(self._retry_s)
