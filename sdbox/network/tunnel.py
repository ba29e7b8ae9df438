"""The tunnel to the centre, driven and watched over VICI.

charon (strongSwan's IKE daemon) does the IPsec; this module tells it what
to do and says what happened, as typed events (:class:`TunnelEvent`) an
operator can act on: up (through which gateway, with which inner address),
down (no network, the gateway does not answer, the gateway closed it) or
refused (the gateway refused the box, or the box refused the gateway's
certificate: another CA, another name, expired, revoked, status unknown).

Two sockets of charon's: VICI (commands, ``ike-updown``/``child-updown``
events) and the error-notify plugin's, whose alerts carry the *why* as
numbers (``CERT_REVOKED``, ``PEER_AUTH_FAILED``...), so nothing here reads
log text. :class:`Tunnel` keeps the tunnel up: gateways in the site
profile's order, the next one when one fails, from the first again after a
loss. This is the only module that imports ``vici``. The agent watches the
same two sockets without driving anything (:mod:`sdbox.network.watch`).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import vici
import vici.exception

from sdbox.errors import SdboxError
from sdbox.network import strongswan
from sdbox.network.events import (
    NOTIFY_MESSAGE,
    REFUSALS,
    AlertMessage,
    Reason,
    TunnelEvent,
    TunnelState,
    explain,
    parse_alert,
)

_log = logging.getLogger("sdbox.network.tunnel")


class TunnelError(SdboxError):
    """charon cannot be reached or refused a command."""


class AlertListener:
    """Reads charon's error-notify socket in a thread and queues what it says."""

    def __init__(self, path: Path, on_alert: Callable[[AlertMessage], None] | None = None) -> None:
        self._path = path
        self._on_alert = on_alert  # also told of each alert as it arrives (a watcher's push)
        self._queue: queue.Queue[AlertMessage] = queue.Queue()
        self._stopping = threading.Event()
        self._socket: socket.socket | None = None
        self._thread = threading.Thread(target=self._run, name="tunnel-alerts", daemon=True)

    def start(self) -> None:
        """Connect (so that charon starts sending) and start reading."""
        self._socket = _connect_unix(self._path)
        self._thread.start()

    def stop(self) -> None:
        """Stop reading."""
        self._stopping.set()
        if self._socket is not None:
            with contextlib.suppress(OSError):
                self._socket.shutdown(socket.SHUT_RDWR)
            self._socket.close()
        self._thread.join(timeout=5)

    def drain(self) -> list[AlertMessage]:
        """Every alert received since the last drain."""
        alerts = []
        while True:
            try:
                alerts.append(self._queue.get_nowait())
            except queue.Empty:
                return alerts

    def _run(self) -> None:
        assert self._socket is not None
        buffer = b""
        while not self._stopping.is_set():
            try:
                chunk = self._socket.recv(NOTIFY_MESSAGE.size * 4)
            except OSError:
                return
            if not chunk:
                return
            buffer += chunk
            while len(buffer) >= NOTIFY_MESSAGE.size:
                alert = parse_alert(buffer[: NOTIFY_MESSAGE.size])
                buffer = buffer[NOTIFY_MESSAGE.size :]
                _log.debug("charon alert %s on %s: %s", alert.kind, alert.connection, alert.text)
                self._queue.put(alert)
                if self._on_alert is not None:
                    self._on_alert(alert)


def _connect_unix(path: Path, timeout: float = 10.0) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.settimeout(None)
    except OSError as exc:
        sock.close()
        raise TunnelError(f"charon is not reachable at {path} ({exc.strerror or exc})") from exc
    return sock


# --- VICI ---------------------------------------------------------------------


@dataclass(frozen=True)
class SaInfo:
    """One IKE SA as ``list-sas`` reports it."""

    connection: str
    state: str  # charon's IKE SA state: ESTABLISHED, CONNECTING...
    remote_host: str
    remote_id: str
    inner_addresses: tuple[str, ...]
    children: tuple[str, ...]  # names of installed CHILD_SAs

    @property
    def established(self) -> bool:
        """Whether the IKE SA is up and a CHILD_SA carries traffic."""
        return self.state == "ESTABLISHED" and bool(self.children)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _encode(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _encode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_encode(v) for v in value]
    return value


class Vici:
    """A command session with charon (blocking; one per thread)."""

    def __init__(self, path: Path, timeout: float = 10.0) -> None:
        self.path = path
        self._socket = _connect_unix(path, timeout)
        self._session = vici.Session(self._socket)

    def close(self) -> None:
        """Close the session."""
        self._socket.close()

    def __enter__(self) -> Vici:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _call(self, what: str, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except vici.exception.CommandException as exc:
            raise TunnelError(f"charon refused {what}: {exc}") from exc
        except (OSError, vici.exception.SessionException) as exc:
            raise TunnelError(f"charon did not answer {what} ({exc})") from exc

    def version(self) -> str:
        """charon's version (a liveness probe)."""
        answer = self._call("version", self._session.version)
        return _text(answer.get("version", b"?"))

    def load_certificate(self, pem: bytes, *, authority: bool = False) -> None:
        """A certificate (``authority``: a CA the chain may end at)."""
        message: dict[str, Any] = {"type": "X509", "data": pem}
        if authority:
            message["flag"] = "CA"
        self._call("a certificate", lambda: self._session.load_cert(message))

    def load_crl(self, pem: bytes) -> None:
        """A CRL: the revocation plugin uses it instead of fetching anything."""
        self._call("a CRL", lambda: self._session.load_cert({"type": "X509_CRL", "data": pem}))

    def flush_cached_crls(self) -> None:
        """Drop the CRLs charon cached while checking certificates (crl_push.py says why)."""
        self._call("flushing cached CRLs", lambda: self._session.flush_certs({"type": "X509_CRL"}))

    def load_token_key(self, key: strongswan.TokenKey, pin: str) -> None:
        """The box key, used where it lives (PKCS#11); the PIN goes over the socket only."""
        message = key.load_token(pin)
        self._call("the box key in its token", lambda: self._session.load_token(message))

    def load_private_key(self, pem: bytes, kind: str = "ecdsa") -> None:
        """A software key (the reference gateway's; never the box's)."""
        self._call(
            "a private key", lambda: self._session.load_key({"type": kind, "data": pem})
        )

    def load_connections(self, connections: Mapping[str, strongswan.Section]) -> None:
        """Connections as :mod:`sdbox.network.strongswan` generates them."""
        for name, conn in connections.items():
            message = {name: _encode(conn)}

            def load(message: dict[str, Any] = message) -> Any:
                return self._session.load_conn(message)

            self._call(f"connection {name}", load)

    def load_pools(self, pools: Mapping[str, strongswan.Section]) -> None:
        """Address pools (the gateway's inner addresses for boxes)."""
        self._call("a pool", lambda: self._session.load_pool(_encode(pools)))

    def initiate(self, connection: str, child: str, timeout_s: float) -> None:
        """Bring ``child`` of ``connection`` up; :class:`TunnelError` when it does not come up."""
        request = {"ike": connection, "child": child, "timeout": str(int(timeout_s * 1000)),
                   "init-limits": "no", "loglevel": "-1"}  # fmt: skip

        def run() -> None:
            for _log_message in self._session.initiate(request):
                pass

        self._call(f"to bring {connection} up", run)

    def terminate(self, connection: str, timeout_s: float = 5.0) -> None:
        """Close ``connection``'s IKE SA (and its children), forcing if the peer is gone."""
        request = {"ike": connection, "force": "yes", "timeout": str(int(timeout_s * 1000)),
                   "loglevel": "-1"}  # fmt: skip

        def run() -> None:
            for _log_message in self._session.terminate(request):
                pass

        with contextlib.suppress(TunnelError):  # nothing to terminate is not an error
            self._call(f"to close {connection}", run)

    def list_sas(self) -> list[SaInfo]:
        """Every IKE SA charon has."""
        sas: list[SaInfo] = []

        def run() -> None:
            for entry in self._session.list_sas():
                for name, sa in entry.items():
                    children = sa.get("child-sas", {})
                    sas.append(SaInfo(
                        connection=_text(name),
                        state=_text(sa.get("state", b"")),
                        remote_host=_text(sa.get("remote-host", b"")),
                        remote_id=_text(sa.get("remote-id", b"")),
                        inner_addresses=tuple(_text(v) for v in sa.get("local-vips", [])),
                        children=tuple(_text(c.get("name", k)) for k, c in children.items()
                                       if _text(c.get("state", b"")) == "INSTALLED"),
                    ))  # fmt: skip

        self._call("the SA list", run)
        return sas


@dataclass(frozen=True)
class BoxTrust:
    """What the box checks the gateway with: CA certificates and the CRLs it holds."""

    authorities: Sequence[bytes]  # PEM: the root(s) and the gateway CA
    crls: Sequence[bytes]  # PEM: every CRL the box holds for those CAs


def load_box(
    command: Vici,
    connections: Mapping[str, strongswan.Section],
    trust: BoxTrust,
    key: strongswan.TokenKey,
    pin: str,
) -> None:
    """Give charon the box's trust, key and connections (all over VICI: no files)."""
    for authority in trust.authorities:
        command.load_certificate(authority, authority=True)
    for crl in trust.crls:
        command.load_crl(crl)
    command.load_token_key(key, pin)
    command.load_connections(connections)


class EventListener:
    """``ike-updown``/``child-updown`` from charon, in a thread of its own."""

    EVENTS = ("ike-updown", "child-updown")

    def __init__(self, path: Path, on_event: Callable[[str, bool, str], None]) -> None:
        self._path = path
        self._on_event = on_event  # (event, up, connection)
        self._stopping = threading.Event()
        self._ready = threading.Event()
        self._vici: Vici | None = None
        self._thread = threading.Thread(target=self._run, name="tunnel-events", daemon=True)

    def start(self) -> None:
        """Register and start listening."""
        self._vici = Vici(self._path)
        self._thread.start()
        self._ready.wait(5)

    def stop(self) -> None:
        """Stop listening."""
        self._stopping.set()
        self._thread.join(timeout=5)
        if self._vici is not None:
            self._vici.close()

    def _run(self) -> None:
        assert self._vici is not None
        session = self._vici._session
        try:
            events = session.listen(list(self.EVENTS), timeout=0.5)
            self._ready.set()
            for name, message in events:
                if self._stopping.is_set():
                    return
                if name is None:
                    continue
                up = _text(message.get("up", b"no")) == "yes"
                for key, value in message.items():
                    if key != "up" and isinstance(value, Mapping):
                        self._on_event(_text(name), up, _text(key))
        except (OSError, vici.exception.SessionException) as exc:
            _log.warning("charon's event stream ended: %s", exc)
            self._on_event("daemon-gone", False, "")


# --- keeping the tunnel up ------------------------------------------------------------


@dataclass(frozen=True)
class GatewayTarget:
    """One gateway as the supervisor tries it."""

    connection: str  # charon's connection name (strongswan.connection_name)
    address: str


RouteProbe = Callable[[str], bool]


def route_exists(address: str) -> bool:
    """Whether this network namespace has a route to ``address`` (UDP connect: no packet sent)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect((address, 500))
    except OSError:
        return False
    return True


class Tunnel:
    """Keeps the box's tunnel up through the first gateway that accepts it."""

    def __init__(
        self,
        vici_socket: Path,
        notify_socket: Path,
        gateways: Sequence[GatewayTarget],
        *,
        child: str = strongswan.CHILD_NAME,
        attempt_timeout_s: float = 15.0,
        retry_delay_s: float = 5.0,
        watch_interval_s: float = 2.0,
        route_probe: RouteProbe = route_exists,
        prepare: Callable[[GatewayTarget], str] | None = None,
    ) -> None:
        """``prepare``: before each attempt, the address to use for a gateway (named.py
        resolves names and opens the firewall); its SdboxError is "gateway unreachable"."""
        if not gateways:
            raise TunnelError("no gateway to connect to: the site profile names none")
        self._vici_socket = vici_socket
        self._gateways = list(gateways)
        self._child = child
        self._attempt_timeout_s = attempt_timeout_s
        self._retry_delay_s = retry_delay_s
        self._watch_interval_s = watch_interval_s
        self._route_probe = route_probe
        self._prepare = prepare
        self._alerts = AlertListener(notify_socket)
        self._events = EventListener(vici_socket, self._on_charon_event)
        self._wake = threading.Event()  # an SA went down, or stop()
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._listeners: list[Callable[[TunnelEvent], None]] = []
        self._current = TunnelEvent(TunnelState.DOWN)
        self._up_connection: str | None = None
        self._thread = threading.Thread(target=self._run, name="tunnel", daemon=True)

    # -- the port ----------------------------------------------------------

    def current(self) -> TunnelEvent:
        """The latest state."""
        with self._lock:
            return self._current

    def subscribe(self, listener: Callable[[TunnelEvent], None]) -> Callable[[], None]:
        """Call ``listener`` on every change (from the tunnel's thread)."""
        with self._lock:
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with self._lock, contextlib.suppress(ValueError):
                self._listeners.remove(listener)

        return unsubscribe

    def start(self) -> None:
        """Start watching charon and bring the tunnel up."""
        self._alerts.start()
        self._events.start()
        self._thread.start()

    def stop(self) -> None:
        """Close the tunnel and stop."""
        self._stopping.set()
        self._wake.set()
        self._thread.join(timeout=self._attempt_timeout_s + 10)
        with contextlib.suppress(TunnelError), Vici(self._vici_socket) as command:
            for gateway in self._gateways:
                command.terminate(gateway.connection)
        self._events.stop()
        self._alerts.stop()
        self._emit(TunnelEvent(TunnelState.DOWN, reason=Reason.STOPPED))

    def events(self, timeout_s: float) -> Iterator[TunnelEvent]:
        """Every event from now on, for ``timeout_s`` seconds (tests and the CLI)."""
        received: queue.Queue[TunnelEvent] = queue.Queue()
        unsubscribe = self.subscribe(received.put)
        deadline = time.monotonic() + timeout_s
        try:
            while (left := deadline - time.monotonic()) > 0:
                try:
                    yield received.get(timeout=left)
                except queue.Empty:
                    return
        finally:
            unsubscribe()

    # -- internals -----------------------------------------------------------

    def _emit(self, event: TunnelEvent) -> None:
        with self._lock:
            last = self._current
            if (event.state, event.gateway, event.reason) == (last.state, last.gateway, last.reason):
                return  # retrying with the same outcome is not news
            self._current = event
            listeners = list(self._listeners)
        _log.info("%s", event.describe())
        for listener in listeners:
            try:
                listener(event)
            except Exception:  # a listener's bug must not stop the tunnel
                _log.exception("tunnel event listener failed")

    def _on_charon_event(self, name: str, up: bool, connection: str) -> None:
        if name == "daemon-gone" or (not up and connection == self._up_connection):
            self._wake.set()

    def _sleep(self, seconds: float) -> bool:
        """Wait; False when stopping."""
        self._wake.wait(seconds)
        self._wake.clear()
        return not self._stopping.is_set()

    def _run(self) -> None:
        while not self._stopping.is_set():
            up = None
            for gateway in self._gateways:
                if self._stopping.is_set():
                    return
                up = self._attempt(gateway)
                if up is not None:
                    break
            if up is None:
                if not self._sleep(self._retry_delay_s):
                    return
                continue
            self._watch(*up)

    def _attempt(self, gateway: GatewayTarget) -> tuple[GatewayTarget, TunnelEvent] | None:
        """Try one gateway; it (by address) and the UP event, or None after emitting why not."""
        named = ""
        if self._prepare is not None:
            try:
                address = self._prepare(gateway)
            except SdboxError as exc:
                self._emit(TunnelEvent(TunnelState.DOWN, gateway.address,
                                       Reason.GATEWAY_UNREACHABLE, exc.message))  # fmt: skip
                return None
            if address != gateway.address:
                named = f"{gateway.address} is {address}"
                gateway = GatewayTarget(gateway.connection, address)
        if not self._route_probe(gateway.address):
            self._emit(TunnelEvent(TunnelState.DOWN, gateway.address, Reason.NO_NETWORK,
                                   f"no route to {gateway.address}"))  # fmt: skip
            return None
        self._emit(TunnelEvent(TunnelState.CONNECTING, gateway.address))
        self._alerts.drain()
        try:
            with Vici(self._vici_socket) as command:
                try:
                    command.initiate(gateway.connection, self._child, self._attempt_timeout_s)
                except TunnelError as exc:
                    command.terminate(gateway.connection)
                    self._emit(self._failure(gateway, str(exc)))
                    return None
                sas = [s for s in command.list_sas() if s.connection == gateway.connection]
        except TunnelError as exc:
            self._emit(TunnelEvent(TunnelState.DOWN, gateway.address,
                                   Reason.DAEMON_UNAVAILABLE, str(exc)))  # fmt: skip
            return None
        inner = next((a for s in sas for a in s.inner_addresses), None)
        self._up_connection = gateway.connection
        event = TunnelEvent(TunnelState.UP, gateway.address, detail=named, inner_address=inner)
        self._emit(event)
        return gateway, event

    def _failure(self, gateway: GatewayTarget, fallback: str, *, was_up: bool = False) -> TunnelEvent:
        # the alert and the command's answer travel on two sockets: give the alert a moment
        alerts = self._alerts.drain()
        deadline = time.monotonic() + 0.5
        while explain(alerts) is None and time.monotonic() < deadline:
            time.sleep(0.05)
            alerts += self._alerts.drain()
        mine = [a for a in alerts if a.connection in ("", gateway.connection)]
        found = explain(mine)
        if found is None:
            reason = Reason.CLOSED if was_up else Reason.GATEWAY_UNREACHABLE
            found = (reason, fallback)
        reason, detail = found
        if reason is Reason.GATEWAY_UNREACHABLE and not self._route_probe(gateway.address):
            reason = Reason.NO_NETWORK
        state = TunnelState.REFUSED if reason in REFUSALS else TunnelState.DOWN
        return TunnelEvent(state, gateway.address, reason, detail)

    def _watch(self, gateway: GatewayTarget, up: TunnelEvent) -> None:
        """Wait while the tunnel is up; emit why it went down."""
        while True:
            self._wake.wait(self._watch_interval_s)
            self._wake.clear()
            if self._stopping.is_set():
                return
            if not self._route_probe(gateway.address):
                # with MOBIKE charon keeps an SA whose path is gone, waiting for an
                # address to come back; for the box that is down until it does
                self._up_connection = None
                with contextlib.suppress(TunnelError), Vici(self._vici_socket) as command:
                    command.terminate(gateway.connection, timeout_s=1.0)
                self._emit(TunnelEvent(TunnelState.DOWN, gateway.address, Reason.NO_NETWORK,
                                       f"no route to {gateway.address}"))  # fmt: skip
                return
            try:
                with Vici(self._vici_socket) as command:
                    sas = [s for s in command.list_sas() if s.connection == gateway.connection]
            except TunnelError as exc:
                self._up_connection = None
                self._emit(TunnelEvent(TunnelState.DOWN, gateway.address,
                                       Reason.DAEMON_UNAVAILABLE, str(exc)))  # fmt: skip
                self._sleep(self._retry_delay_s)
                return
            if any(s.established for s in sas):
                continue
            self._up_connection = None
            with contextlib.suppress(TunnelError), Vici(self._vici_socket) as command:
                command.terminate(gateway.connection)
            self._emit(self._failure(gateway, "the tunnel closed", was_up=True))
            return


def gateway_targets(addresses: Sequence[str]) -> list[GatewayTarget]:
    """The site profile's gateways as connection names, in order."""
    return [
        GatewayTarget(strongswan.connection_name(i), address)
        for i, address in enumerate(addresses, start=1)
    ]
