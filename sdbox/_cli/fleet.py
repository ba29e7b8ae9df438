"""``sdbox fleet``: the centre's fleet service, and the box's check-in and audit shipping."""

from __future__ import annotations

import logging
import ssl
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from sdbox._cli.output import emit_json, json_option

if TYPE_CHECKING:
    from sdbox.centre.checkin import Reporter, ReporterConfig
    from sdbox.centre.facts import TunnelFacts

_CONFIG = click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    required=True,
)


@click.group()
def fleet() -> None:
    """The fleet: boxes check in and ship their audit trail; operators see them (docs/fleet.md)."""


@fleet.command("serve")
@_CONFIG
def serve(config_path: Path) -> None:
    """Centre side: serve the fleet API and dashboard until interrupted."""
    from sdbox.fleet.service import FleetServer, load_config  # noqa: PLC0415

    logging.getLogger("sdbox.fleet").setLevel(logging.INFO)
    server = FleetServer(load_config(config_path))
    click.echo(f"fleet service listening on {server.url}", err=True)
    try:
        server.serve()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


@fleet.command("config-reference")
def config_reference() -> None:
    """Print every setting of the service's and the box's fleet configuration."""
    from sdbox.centre.checkin import ReporterConfig  # noqa: PLC0415
    from sdbox.config import describe  # noqa: PLC0415
    from sdbox.fleet.service import FleetConfig  # noqa: PLC0415

    click.echo("# sdbox fleet serve --config FILE (the centre)")
    click.echo("\n".join(describe(FleetConfig)))
    click.echo("\n# sdbox fleet report|run --config FILE (the box: /etc/sdbox/fleet.toml)")
    click.echo("\n".join(describe(ReporterConfig)))


def _reporter(config: ReporterConfig) -> Reporter:
    from sdbox.agent.config import load as load_agent_config  # noqa: PLC0415
    from sdbox.centre.checkin import Reporter  # noqa: PLC0415
    from sdbox.centre.journal import JournalAuditSource  # noqa: PLC0415
    from sdbox.identity import open_identity  # noqa: PLC0415

    identity = open_identity(load_agent_config(config.agent_config).identity.identity_config())
    context = None
    if config.ca_bundle:
        context = ssl.create_default_context(cafile=config.ca_bundle)
    journal = JournalAuditSource(Path(config.journal_dir) if config.journal_dir else None)
    return Reporter(config.url, config.state_dir, identity, journal, context=context)


def _report_once(config: ReporterConfig, reporter: Reporter, trigger: str) -> dict[str, object]:
    from sdbox.centre import facts  # noqa: PLC0415
    from sdbox.centre.fleet import MAX_EVENTS_PER_BATCH  # noqa: PLC0415

    state = reporter.state()
    recent = reporter.audit.read_after(state.audit_cursor, MAX_EVENTS_PER_BATCH)
    report = facts.gather(
        generation_file=config.generation_file,
        image_version_file=config.image_version_file,
        tunnel=lambda: _tunnel_facts(config.vici_socket),
        box_certificate=reporter.identity.certificate,
        crls=(),
        recent_events=recent,
        trigger=trigger,
    )
    reporter.queue(report)
    done = reporter.deliver()
    return {
        "checkins_sent": done.checkins_sent,
        "checkins_pending": done.checkins_pending,
        "audit_events_sent": done.events_sent,
        "audit_through": done.audit_through,
        "error": done.error,
    }


def _tunnel_facts(vici_socket: Path) -> TunnelFacts:
    from sdbox.centre.facts import TunnelFacts  # noqa: PLC0415

    if not vici_socket.exists():
        return TunnelFacts()
    from sdbox.network.tunnel import TunnelError, Vici  # noqa: PLC0415

    try:
        with Vici(vici_socket, timeout=3.0) as vici:
            sas = vici.list_sas()
    except TunnelError as exc:
        return TunnelFacts(state="down", reason=exc.message)
    up = [sa for sa in sas if sa.established]
    if up:
        return TunnelFacts(state="up", gateway=up[0].remote_host)
    return TunnelFacts(state="down")


@fleet.command("report")
@_CONFIG
@click.option(
    "--trigger", type=click.Choice(["schedule", "boot", "event"]), default="schedule",
    help="Why this check-in is sent (shown on the dashboard).",
)  # fmt: skip
@json_option()
def report(config_path: Path, trigger: str, as_json: bool) -> None:
    """Box side: check in once and ship the audit trail (queued if the centre is away)."""
    from sdbox.centre.checkin import ReporterConfig  # noqa: PLC0415
    from sdbox.config import load_file  # noqa: PLC0415

    config = load_file(ReporterConfig, config_path)
    outcome = _report_once(config, _reporter(config), trigger)
    if as_json:
        emit_json(outcome)
    else:
        click.echo(
            f"check-ins sent {outcome['checkins_sent']}, pending {outcome['checkins_pending']}; "
            f"audit events sent {outcome['audit_events_sent']}"
            + (f"; not delivered: {outcome['error']}" if outcome["error"] else "")
        )
    if outcome["error"]:
        raise SystemExit(75)  # EX_TEMPFAIL: queued, try again later


@fleet.command("run")
@_CONFIG
def run(config_path: Path) -> None:
    """Box side: check in on a schedule, backing off while the centre is away."""
    from sdbox.centre.checkin import ReporterConfig, backoff_s  # noqa: PLC0415
    from sdbox.config import load_file  # noqa: PLC0415

    log = logging.getLogger("sdbox.fleet")
    config = load_file(ReporterConfig, config_path)
    reporter = _reporter(config)
    failures, trigger = 0, "boot"
    while True:
        outcome = _report_once(config, reporter, trigger)
        failures = failures + 1 if outcome["error"] else 0
        if outcome["error"]:
            log.warning("fleet check-in not delivered (%s): kept for later", outcome["error"])
        trigger = "schedule"
        time.sleep(backoff_s(failures, config.interval_s))
