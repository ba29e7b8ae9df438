"""`sdbox agent`: the daemon around the state machine.

Wires the configured ports, exports the D-Bus API, watches the readers,
tells systemd it is ready (``Type=notify``) and keeps the watchdog fed
from the event loop itself, so a stuck loop is restarted by systemd. On
SIGTERM it kills any session client first, then leaves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509

from sdbox import __version__
from sdbox.agent.adapters import SessionService, TrustService, make_sensor
from sdbox.agent.card import CardHandle, ReaderWatcher
from sdbox.agent.config import AgentConfig
from sdbox.agent.machine import Agent
from sdbox.agent.outer_network import NetworkStore
from sdbox.agent.preferences import Preferences
from sdbox.audit import AuditEvent, audit
from sdbox.certificates import UnreadableCertificate, load_certificates
from sdbox.config import ConfigError
from sdbox.errors import SdboxError
from sdbox.identity import IdentitySource, probe
from sdbox.network import site
from sdbox.network.site import SiteProfile
from sdbox.smartcard.directory import Project

if TYPE_CHECKING:
    from sdbox.agent.sensors import SensorWatcher

_log = logging.getLogger("sdbox.agent")


def setup_logging(level: int = logging.INFO) -> None:
    """Structured journal logging under systemd, plain stderr otherwise."""
    root = logging.getLogger()
    root.setLevel(level)
    handler: logging.Handler
    if os.environ.get("JOURNAL_STREAM") or os.environ.get("INVOCATION_ID"):
        from systemd.journal import JournalHandler  # noqa: PLC0415  (only under systemd)

        handler = JournalHandler(SYSLOG_IDENTIFIER="sdbox-agent")
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    root.handlers[:] = [handler]


def notify(state: str) -> bool:
    """sd_notify(3); False when not under a service manager (NOTIFY_SOCKET unset)."""
    if not os.environ.get("NOTIFY_SOCKET"):
        return False
    from systemd import daemon  # noqa: PLC0415

    return bool(daemon.notify(state))


def watchdog_interval() -> float | None:
    """Half the watchdog period systemd asked for (WATCHDOG_USEC), or None."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and int(pid) != os.getpid()):
        return None
    return int(usec) / 1_000_000 / 2


class InteractiveCredentials:
    """The bubble runs its own logon: no credential from the box."""

    async def obtain(
        self, project: Project, certificate: x509.Certificate, card: CardHandle
    ) -> tuple[str, Any]:
        """No user, no credential: the session client shows the bubble's logon screen.

        The holder was still verified on the card and the project and server
        certificates validated: only the credential step is the bubble's.
        """
        del project, certificate, card
        return "", None


def make_credentials(config: AgentConfig, identity: IdentitySource | None = None) -> Any:
    """The configured credential provider."""
    if config.credentials.provider == "interactive":
        return InteractiveCredentials()
    from sdbox.agent.credentials import BrokerCredentials  # noqa: PLC0415

    return BrokerCredentials(config, identity)


def make_renewal(config: AgentConfig, trust: Any, identity: IdentitySource | None = None) -> Any:
    """The renewal port, or None when no CA is configured ([renewal] cmp_url)."""
    if not config.renewal.cmp_url:
        return None
    from sdbox.agent.renewal import RenewalService  # noqa: PLC0415

    return RenewalService(
        config, trust, identity or IdentitySource(config.identity.identity_config())
    )


def make_enrolment(config: AgentConfig, trust: Any, identity: IdentitySource | None = None) -> Any:
    """Remote fingerprint enrolment's flow factory, or None without a centre ([credentials] broker_url).

    Whether the centre offers it is the centre's answer (``enrolment``, 404): the box asks.
    """
    if not config.credentials.broker_url:
        return None
    from sdbox.agent.bioenrol import RemoteEnrolment, operator_check  # noqa: PLC0415
    from sdbox.centre.bioenrol import BioEnrolmentCentre  # noqa: PLC0415

    source = identity or IdentitySource(config.identity.identity_config())

    def factory(session: Any) -> RemoteEnrolment:
        try:
            anchors = load_certificates(config.credentials.broker_anchors.read_bytes())
        except (OSError, UnreadableCertificate) as exc:
            raise ConfigError(
                f"[credentials] broker_anchors {config.credentials.broker_anchors}: {exc}"
            ) from exc
        centre = BioEnrolmentCentre(config.credentials.broker_url, anchors=anchors,
                                    identity=source())  # fmt: skip
        check = operator_check(trust.anchors, trust.intermediates, trust.store)
        return RemoteEnrolment(session, centre, check)

    return factory


def make_tunnel(config: AgentConfig) -> Any:
    """The tunnel port ([tunnel] watch), or None on a site without a tunnel."""
    if not config.tunnel.watch:
        return None
    from sdbox.network.watch import TunnelWatch  # noqa: PLC0415  (vici only where it is used)

    return TunnelWatch(config.tunnel.vici_socket, config.tunnel.notify_socket)


def _site_profile() -> SiteProfile | None:
    """The site profile flashing wrote, for the network settings' checks (None: none there)."""
    if not site.DEFAULT_PATH.exists():
        return None
    try:
        return site.load()
    except ConfigError as exc:  # the tunnel refuses to start on it; the settings are unchecked
        _log.warning("the site profile cannot be read: %s", exc.message)
        return None


def build_agent(
    config: AgentConfig, identity: IdentitySource | None = None, **overrides: Any
) -> Agent:
    """The agent with its real ports (``overrides`` replaces ports, for tests)."""
    trust = overrides.pop("trust", None) or TrustService(config)
    # shared by credentials and renewal: one PKCS#11 session
    identity = identity or IdentitySource(config.identity.identity_config())
    preferences = overrides.pop("preferences", None) or Preferences(
        config.state_dir / "preferences",
        layout=config.keyboard.layout,
        choices=tuple(config.keyboard.choices),
    )
    ports: dict[str, Any] = {
        "network": NetworkStore(config.state_dir, _site_profile()),
        "trust": trust,
        "sensor": make_sensor(config.sensor),
        "sessions": SessionService(
            config.session, trust, keyboard_layout=lambda: preferences.keyboard_layout
        ),
        "preferences": preferences,
        "endpoint_allowed": config.policy.endpoint_allowed,
        "renewal_window_days": config.policy.renewal_window_days,
        "renewal": make_renewal(config, trust, identity),
        "enrolment": make_enrolment(config, trust, identity),
        "seen_dir": config.state_dir / "renewal",
        "grace_s": config.tunnel.grace_s,
        "catalogue": config.card.project_catalogue,
        "directory_cache": config.state_dir / "directories",
        "fleet_config": config.fleet_config,
    }
    if "tunnel" not in overrides:
        ports["tunnel"] = make_tunnel(config)
    if "credentials" not in overrides:
        ports["credentials"] = make_credentials(config, identity)
    ports.update(overrides)
    return Agent(**ports)


def start_sensor_watch(
    config: AgentConfig, agent: Agent, loop: asyncio.AbstractEventLoop
) -> SensorWatcher | None:
    """Watch udev for the sensor (libfprint, or a sensor named by [sensor] usb_ids), if asked.

    A watch that cannot start (no libfprint hwdb, no udev) is logged and the
    agent runs without it: a capture on an absent sensor then fails as before.
    """
    section = config.sensor
    if not section.hotplug or (section.kind != "libfprint" and not section.usb_ids):
        return None
    from sdbox.agent.sensors import SensorWatcher, sensor_table  # noqa: PLC0415  (pyudev)

    try:
        watcher = SensorWatcher(
            loop, agent.on_sensor_event, sensor_table(section.usb_ids, section.driver)
        )
        watcher.start()  # reports the sensors already plugged in
        agent.sensor_watched()
    except SdboxError as exc:
        _log.warning("the fingerprint sensor is not watched for hotplug: %s", exc.message)
        return None
    return watcher


def report_identity(identity: IdentitySource) -> None:
    """Say at start-up whether the box identity is usable (see sdbox.identity.probe)."""
    try:
        status = probe(identity, datetime.now(UTC))
    except SdboxError as exc:
        reason = exc.message
    except Exception as exc:  # a diagnostic: whatever it meets is said, never raised
        reason = f"{type(exc).__name__}: {exc}"
    else:
        _log.info("box identity: %s", status.summary)
        audit(
            AuditEvent.BOX_IDENTITY_CHECKED,
            "the box identity signs and matches its certificate",
            outcome="ok",
            box=status.box_id,
            identity=status.kind,
            valid_until=status.valid_until.date().isoformat(),
        )
        return
    _log.warning(
        "the box identity is not usable: %s; the centre will issue no session credential "
        "until it is",
        reason,
    )
    audit(
        AuditEvent.BOX_IDENTITY_CHECKED,
        "the box identity is not usable",
        outcome="failed",
        identity=identity.kind,
        reason=reason,
    )


async def run(
    config: AgentConfig, *, bus_address: str | None = None, agent: Agent | None = None
) -> None:
    """Run until SIGTERM/SIGINT."""
    from sdbox.agent.dbus import export  # noqa: PLC0415  (dbus-fast only in the daemon)

    loop = asyncio.get_running_loop()
    identity: IdentitySource | None = None
    if agent is None:
        identity = IdentitySource(config.identity.identity_config())
        agent = build_agent(config, identity)
    try:
        bus = await export(agent, bus_address)
    except (OSError, ValueError) as exc:  # dbus-fast raises these for an absent or refusing bus
        raise SdboxError(
            f"the D-Bus {'bus ' + bus_address if bus_address else 'system bus'} cannot be reached: {exc}"
        ) from exc
    agent.start_tunnel_watch(loop)  # before the readers: a card's first screen knows the centre
    watcher = ReaderWatcher(loop, agent.on_reader_event, config.card.readers or None)
    watcher.start()
    sensors = start_sensor_watch(config, agent, loop)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    interval = watchdog_interval() if config.watchdog else None
    keepalive: asyncio.Task[None] | None = None
    if interval:

        async def feed() -> None:
            while True:
                notify("WATCHDOG=1")
                await asyncio.sleep(interval)

        keepalive = asyncio.create_task(feed())
    notify("READY=1\nSTATUS=waiting for a card")
    _log.info("agent ready")
    audit(
        AuditEvent.AGENT_STARTED,
        "the agent is ready",
        version=__version__,
        provider=config.credentials.provider,
        identity=config.identity.kind,
    )
    if identity is not None and config.credentials.provider == "broker":
        # after READY: the TPM is slow to open, and a box without its identity still
        # shows the greeter (which says why no session can start)
        loop.run_in_executor(None, report_identity, identity)
    stopped_by = "error"  # anything but the signal below ends the loop by an exception
    try:
        await stop.wait()
        stopped_by = "signal"
    finally:
        notify("STOPPING=1")
        await agent.shutdown()
        watcher.stop()
        if sensors is not None:
            sensors.stop()
        if keepalive is not None:
            keepalive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keepalive
        bus.disconnect()
        _log.info("agent stopped")
        audit(AuditEvent.AGENT_STOPPED, "the agent stopped", reason=stopped_by)


def main(config_path: Path, bus_address: str | None) -> None:
    """Entry point of `sdbox agent run`."""
    from sdbox.agent.config import load  # noqa: PLC0415

    setup_logging()
    try:
        config = load(config_path)
    except ConfigError:
        raise
    asyncio.run(run(config, bus_address=bus_address))
