"""``sdbox fleet``: the centre's fleet service, and the box's check-in and audit shipping."""

from __future__ import annotations

import logging
import ssl
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import click

from sdbox._cli.output import emit_json, json_option

if TYPE_CHECKING:
    from sdbox.centre.checkin import Reporter, ReporterConfig
    from sdbox.centre.facts import TunnelFacts
    from sdbox.centre.fleet import Report
    from sdbox.fleet.store import FleetStore

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


def _report_once(
    config: ReporterConfig, reporter: Reporter, trigger: str, problems: tuple[str, ...] = ()
) -> dict[str, object]:
    report = _gather(config, reporter, trigger)
    if problems:
        report = replace(report, problems=(*report.problems, *problems)[-64:])
    reporter.queue(report)
    done = reporter.deliver()
    return {
        "checkins_sent": done.checkins_sent,
        "checkins_pending": done.checkins_pending,
        "audit_events_sent": done.events_sent,
        "audit_through": done.audit_through,
        "error": done.error,
        "update": done.update,
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


def _gather(config: ReporterConfig, reporter: Reporter, trigger: str) -> Report:
    from sdbox.centre import facts  # noqa: PLC0415
    from sdbox.centre.fleet import MAX_EVENTS_PER_BATCH  # noqa: PLC0415

    recent = reporter.audit.read_after(reporter.state().audit_cursor, MAX_EVENTS_PER_BATCH)
    return facts.gather(
        generation_file=config.generation_file,
        image_version_file=config.image_version_file,
        tunnel=lambda: _tunnel_facts(config.vici_socket),
        box_certificate=reporter.identity.certificate,
        crls=(),
        recent_events=recent,
        trigger=trigger,
    )


@fleet.command("diagnostics")
@_CONFIG
@click.option("--reason", default="", help="What it is for (a ticket number, the helpdesk's words).")
@json_option()
def send_diagnostics(config_path: Path, reason: str, as_json: bool) -> None:
    """Box side: send diagnostics to the fleet service now (the support screen's button)."""
    from sdbox.centre import facts  # noqa: PLC0415
    from sdbox.centre.checkin import ReporterConfig  # noqa: PLC0415
    from sdbox.centre.journal import recent_lines  # noqa: PLC0415
    from sdbox.config import load_file  # noqa: PLC0415
    from sdbox.process import CommandFailed  # noqa: PLC0415
    from sdbox.process import run as run_command  # noqa: PLC0415

    config = load_file(ReporterConfig, config_path)
    reporter = _reporter(config)
    network = []
    for argv in (["ip", "-brief", "address"], ["ip", "route"]):
        try:
            network.append(f"$ {' '.join(argv)}\n" + run_command(argv, what=argv[0], timeout=10.0))
        except CommandFailed as exc:
            network.append(f"$ {' '.join(argv)}\n{exc.message}")
    journal = Path(config.journal_dir) if config.journal_dir else None
    upload = facts.diagnostics(
        _gather(config, reporter, "event"), "\n".join(network),
        recent_lines(facts.SDBOX_UNITS, 300, journal), reason,
    )  # fmt: skip
    sequence = reporter.send_diagnostics(upload)
    if as_json:
        emit_json({"accepted": sequence, "sections": sorted(upload.sections)})
    else:
        click.echo(f"diagnostics sent ({len(upload.sections)} sections), request {sequence}")


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
    """Box side: check in on a schedule (backing off while the centre is away); apply updates."""
    from sdbox.centre.checkin import ReporterConfig, backoff_s  # noqa: PLC0415
    from sdbox.centre.errors import CentreUnreachable  # noqa: PLC0415
    from sdbox.centre.updates import (  # noqa: PLC0415
        Offer,
        UpdateError,
        Updater,
        parse_window,
        rauc_install,
    )
    from sdbox.config import load_file  # noqa: PLC0415
    from sdbox.process import run as run_command  # noqa: PLC0415

    log = logging.getLogger("sdbox.fleet")
    config = load_file(ReporterConfig, config_path)
    reporter = _reporter(config)
    updater = Updater(config.url, config.state_dir, install=rauc_install, context=reporter.context)
    window = parse_window(config.reboot_window)
    running = config.image_version_file.read_text().strip() if config.image_version_file.exists() else ""
    problems = tuple(updater.after_boot(running))  # an update that did not take is reported
    failures, trigger = 0, "boot"
    while True:
        outcome = _report_once(config, reporter, trigger, problems)
        problems, trigger = (), "schedule"
        failures = failures + 1 if outcome["error"] else 0
        if outcome["error"]:
            log.warning("fleet check-in not delivered (%s): kept for later", outcome["error"])
        offer = Offer.parse(outcome["update"])
        if config.updates and offer is not None and offer.version != running:
            try:
                updater.apply(offer)
                log.info("update %s installed into the other slot; reboot when allowed", offer.version)
            except CentreUnreachable as exc:
                log.warning("update %s not downloaded (%s): next time", offer.version, exc.message)
            except UpdateError as exc:
                log.error("update %s refused: %s", offer.version, exc.message)
                problems = (f"update_refused:{offer.version}",)
        if updater.reboot_due(datetime.now().astimezone(), window, _card_present()):
            log.info("rebooting into update %s (no card, inside the reboot window)", updater.pending())
            run_command(["systemctl", "reboot"], what="reboot", timeout=60.0)
        time.sleep(backoff_s(failures, config.interval_s))


def _card_present() -> bool:
    """Whether a card is in any reader; True when pcscd cannot say (never reboot blind)."""
    from sdbox.smartcard.errors import CardAccessError  # noqa: PLC0415
    from sdbox.smartcard.pcsc import PcscContext  # noqa: PLC0415

    context = PcscContext()
    try:
        return any(state.present for state in context.reader_states())
    except CardAccessError:
        return True
    finally:
        context.release()


@fleet.command("publish")
@_CONFIG
@click.argument("bundle", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option("--version", "version", required=True, help="The image version the bundle carries.")
def publish(config_path: Path, bundle: Path, version: str) -> None:
    """Centre side: publish a signed RAUC bundle for rollouts (prints its SHA-256)."""
    from sdbox.fleet import rollouts  # noqa: PLC0415
    from sdbox.fleet.service import Fleet, load_config  # noqa: PLC0415

    fleet_service = Fleet(load_config(config_path))
    with fleet_service.store.transaction() as tx:
        click.echo(rollouts.publish(tx, fleet_service.config.bundles, bundle, version))


@fleet.group("rollout")
def rollout() -> None:
    """Centre side: stage a published bundle to the fleet (first ring, then percentages)."""


@rollout.command("create")
@_CONFIG
@click.option("--bundle", "digest", required=True, help="The bundle's SHA-256 (from publish).")
@click.option("--ring", default="", help="The first ring: box ids, comma-separated.")
@click.option("--steps", default="10,50,100", show_default=True, help="Percentages after the ring.")
@click.option(
    "--pause-above", type=float, default=0.1, show_default=True,
    help="Pause when this share of the boxes that reported failed.",
)  # fmt: skip
def rollout_create(config_path: Path, digest: str, ring: str, steps: str, pause_above: float) -> None:
    """Start a rollout at its first ring (it replaces a running one)."""
    from sdbox.fleet import rollouts  # noqa: PLC0415

    try:
        percentages = [int(s) for s in steps.split(",") if s.strip()]
    except ValueError as exc:
        raise click.BadParameter("steps must be comma-separated percentages") from exc
    boxes = [b.strip() for b in ring.split(",") if b.strip()]
    with _store(config_path).transaction() as tx:
        made = rollouts.create(tx, digest, boxes, percentages, pause_above)
    click.echo(f"rollout {made.id}: {made.version}, first ring {len(made.ring)} boxes")


@rollout.command("advance")
@_CONFIG
def rollout_advance(config_path: Path) -> None:
    """Offer the update to the next percentage of the fleet."""
    from sdbox.fleet import rollouts  # noqa: PLC0415

    with _store(config_path).transaction() as tx:
        made = rollouts.set_stage(tx, advance=True)
    click.echo(f"rollout {made.id}: stage {made.stage} ({made.steps[made.stage - 1]} %)")


@rollout.command("pause")
@_CONFIG
def rollout_pause(config_path: Path) -> None:
    """Offer the update to nobody new until resumed."""
    from sdbox.fleet import rollouts  # noqa: PLC0415

    with _store(config_path).transaction() as tx:
        rollouts.set_stage(tx, state="paused")
    click.echo("paused")


@rollout.command("resume")
@_CONFIG
def rollout_resume(config_path: Path) -> None:
    """Resume a paused rollout at its stage."""
    from sdbox.fleet import rollouts  # noqa: PLC0415

    with _store(config_path).transaction() as tx:
        rollouts.set_stage(tx, state="running")
    click.echo("running")


@rollout.command("status")
@_CONFIG
@json_option()
def rollout_status(config_path: Path, as_json: bool) -> None:
    """Where the current rollout stands."""
    from sdbox.fleet import rollouts  # noqa: PLC0415

    with _store(config_path).db.read() as tx:
        found = rollouts.progress(tx)
    document: dict[str, object] = {"rollout": None}
    if found is not None:
        r = found.rollout
        document = {
            "rollout": {"id": r.id, "version": r.version, "sha256": r.digest, "state": r.state,
                        "stage": r.stage, "steps": list(r.steps), "ring": list(r.ring)},
            "offered": found.offered, "installed": found.installed, "failed": found.failed,
        }  # fmt: skip
    if as_json:
        emit_json(document)
    elif found is None:
        click.echo("no rollout")
    else:
        click.echo(
            f"rollout {found.rollout.id} {found.rollout.version}: {found.rollout.state}, "
            f"stage {found.rollout.stage}; offered {found.offered}, installed {found.installed}, "
            f"failed {found.failed}"
        )


def _store(config_path: Path) -> FleetStore:
    from sdbox.fleet.db import open_database  # noqa: PLC0415
    from sdbox.fleet.service import load_config  # noqa: PLC0415
    from sdbox.fleet.store import FleetStore  # noqa: PLC0415

    config = load_config(config_path)
    return FleetStore(open_database(config.database, config.postgres))
