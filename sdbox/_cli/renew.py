"""`sdbox renew` (renew due project certificates on a card) and `sdbox trust refresh`."""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click

from sdbox._cli.output import emit_json, json_option
from sdbox.agent.config import DEFAULT_PATH, AgentConfig, load
from sdbox.config import ConfigError

_log = logging.getLogger("sdbox.renewal")
# `sdbox trust refresh-crls`: no distribution point reached, nothing else wrong (sysexits'
# EX_TEMPFAIL); sdbox-crl-refresh.service counts it as success (SuccessExitStatus=)
UNREACHABLE_ONLY = 75


def _config(path: Path) -> AgentConfig:
    return load(path)


def _pems(path: Path, what: str, *, required: bool) -> list[Any]:
    from sdbox.certificates import UnreadableCertificate, load_certificates  # noqa: PLC0415

    try:
        return load_certificates(path.read_bytes())
    except FileNotFoundError as exc:
        if required:
            raise ConfigError(f"{what} {path} is missing") from exc
        return []
    except (OSError, UnreadableCertificate) as exc:
        raise ConfigError(f"{what} {path} cannot be read: {exc}") from exc


def _store(config: AgentConfig) -> Any:
    from sdbox.trust.store import RevocationStore  # noqa: PLC0415

    return RevocationStore(
        config.trust.crl_dir, build_time=datetime.fromisoformat(config.trust.build_time)
    )


def _probe(use_pin: bool, identity_seed: int | None) -> tuple[str, bytes]:
    if use_pin == (identity_seed is not None):
        raise click.UsageError("give exactly one of --pin or --sensor-seed")
    if use_pin:
        secret = (
            click.prompt("PIN", hide_input=True) if sys.stdin.isatty() else sys.stdin.readline()
        )
        return str(secret).strip(), b""
    import asyncio  # noqa: PLC0415

    from sdbox.biometric.sensor import EmulatedSensor  # noqa: PLC0415

    assert identity_seed is not None
    return "", asyncio.run(EmulatedSensor(identity_seed).capture())


@click.command("renew")
@click.option(
    "--config", "config_path", type=click.Path(path_type=Path), default=DEFAULT_PATH,
    show_default=True, help="Agent configuration ([trust], [renewal], [policy]).",
)  # fmt: skip
@click.option("--reader", "-r", help="Reader name (default: the first holding a card).")
@click.option("--pin", "use_pin", is_flag=True, help="Verify the holder with the PIN (stdin).")
@click.option("--sensor-seed", type=int, help="Verify with the emulated sensor's finger (test).")
@click.option("--project", "projects", multiple=True, help="Renew this project even if not due.")
@json_option("Machine-readable outcome per project.")
def renew(
    config_path: Path,
    reader: str | None,
    use_pin: bool,
    sensor_seed: int | None,
    projects: tuple[str, ...],
    as_json: bool,
) -> None:
    """Renew the card's project certificates that are due (CMP key update)."""
    from sdbox.agent.renewal import make_centre  # noqa: PLC0415
    from sdbox.identity import IdentitySource  # noqa: PLC0415
    from sdbox.renewal.flow import Outcome, Renewer  # noqa: PLC0415
    from sdbox.renewal.ports import HttpCmpTransport, RenewalTrust  # noqa: PLC0415
    from sdbox.renewal.state import Journal  # noqa: PLC0415
    from sdbox.smartcard import pcsc  # noqa: PLC0415
    from sdbox.smartcard.biosso import BioSsoSession  # noqa: PLC0415
    from sdbox.smartcard.profile import KeyRef  # noqa: PLC0415
    from sdbox.trust import validate_directory_signer  # noqa: PLC0415

    config = _config(config_path)
    section = config.renewal
    if not section.cmp_url:
        raise ConfigError(f"{config_path}: [renewal] cmp_url is not set")
    pin, probe = _probe(use_pin, sensor_seed)
    anchors = _pems(config.trust.anchors, "trust anchors", required=True)
    intermediates = _pems(config.trust.intermediates, "intermediates", required=False)
    cmp_server = _pems(section.cmp_server_cert, "[renewal] cmp_server_cert", required=True)[0]
    store = _store(config) if config.trust.check_revocation else None
    trust = RenewalTrust(anchors, intermediates, store, cmp_server, lambda: datetime.now(UTC))

    def validate_signer(signer: Any, chain: list[Any]) -> None:
        validate_directory_signer(
            signer, [*chain, *intermediates], anchors, at=trust.check_clock(), crls=store
        )

    identity = IdentitySource(config.identity.identity_config())
    conn = pcsc.connect(reader, exclusive=True)
    try:
        session = BioSsoSession.for_atr(conn, conn.atr)
        session.piv.select()
        if pin:
            session.piv.verify_pin(pin)
        else:
            session.piv.verify_finger(KeyRef.FINGER_PRIMARY, probe)
        renewer = Renewer(
            session=session, centre=make_centre(config, session, identity),
            transport=HttpCmpTransport(section.cmp_url, timeout_s=section.timeout_s),
            trust=trust, journal=Journal(section.journal), validate_signer=validate_signer,
            window=timedelta(days=config.policy.renewal_window_days), max_wait_s=section.max_wait_s,
            atr=conn.atr,
        )  # fmt: skip
        results = renewer.run(force=projects)
    finally:
        conn.close()
    for result in results:
        level = (
            logging.INFO
            if result.outcome in (Outcome.RENEWED, Outcome.NOT_DUE)
            else logging.WARNING
        )
        _log.log(level, "renewal %s: %s %s", result.project, result.outcome.value, result.detail)
    if as_json:
        emit_json({"results": [r.to_json() for r in results]})
    else:
        for result in results:
            click.echo(f"{result.project}: {result.outcome.value} {result.detail}".rstrip())
    good = {Outcome.RENEWED, Outcome.NOT_DUE, Outcome.INTERRUPTED_RESUMED}
    if any(r.outcome not in good for r in results):
        click.get_current_context().exit(1)


@click.command("refresh")
@click.option(
    "--config", "config_path", type=click.Path(path_type=Path), default=DEFAULT_PATH,
    show_default=True, help="Agent configuration ([trust]).",
)  # fmt: skip
@click.option("--url", "urls", multiple=True, help="Refresh this distribution point as well.")
@click.option(
    "--charon-vici", type=click.Path(path_type=Path), default=None,
    help="Then give every CRL held to the charon behind this VICI socket (the tunnel checks "
    "the gateway against them); root only. `sdbox tunnel load-crls` does that step alone.",
)  # fmt: skip
@json_option("Machine-readable result per CRL.")
def refresh(config_path: Path, urls: tuple[str, ...], charon_vici: Path | None,
            as_json: bool) -> None:  # fmt: skip
    """Fetch each CA's CRL from its distribution point; keep the old copy on any doubt."""
    from sdbox.renewal.crls import RefreshStatus, distribution_points  # noqa: PLC0415
    from sdbox.renewal.crls import refresh as do_refresh  # noqa: PLC0415

    config = _config(config_path)
    anchors = _pems(config.trust.anchors, "trust anchors", required=True)
    intermediates = _pems(config.trust.intermediates, "intermediates", required=False)
    points = distribution_points(intermediates)
    for url in [*config.trust.crl_urls, *urls]:
        if url not in points:
            points.append(url)
    store = _store(config)
    results = do_refresh(store, points, [*anchors, *intermediates], now=datetime.now(UTC))
    for result in results:
        _log.log(
            logging.INFO if result.ok else logging.WARNING,
            "CRL %s: %s %s", result.url, result.status.value, result.detail,
        )  # fmt: skip
    # whatever the refresh's outcome: charon gets the newest lists held, failed URLs or not
    charon = None if charon_vici is None else push_to_charon(charon_vici, store)
    if as_json:
        doc: dict[str, object] = {"results": [r.to_json() for r in results]}
        if charon is not None:
            doc["charon"] = charon
        emit_json(doc)
    else:
        for result in results:
            click.echo(f"{result.url}: {result.status.value} {result.detail}".rstrip())
        if charon is not None:
            click.echo(describe_push(charon))
    failed = [r for r in results if not r.ok]
    if any(r.status is not RefreshStatus.UNREACHABLE for r in failed) or (
        charon is not None and "error" in charon
    ):
        click.get_current_context().exit(1)
    if failed:
        # only distribution points not reached, every cached list kept: a temporary state
        # (EX_TEMPFAIL) the timer retries; the agent refuses a session once a list is stale
        click.get_current_context().exit(UNREACHABLE_ONLY)


def push_to_charon(vici_socket: Path, store: Any) -> dict[str, object]:
    """Every CRL ``store`` holds, loaded into charon; the outcome as JSON (``error`` on failure)."""
    from sdbox.network.crl_push import push_crls  # noqa: PLC0415
    from sdbox.network.tunnel import TunnelError  # noqa: PLC0415

    try:
        pushed = push_crls(vici_socket, [held.crl for held in store.held()])
    except TunnelError as exc:
        _log.warning("CRLs not given to charon: %s", exc.message)
        return {"socket": str(vici_socket), "error": exc.message}
    _log.info("%d CRLs given to charon (%s)", len(pushed.issuers), vici_socket)
    return pushed.to_json()


def describe_push(outcome: dict[str, object]) -> str:
    """One line for people."""
    if "error" in outcome:
        return f"charon: not updated: {outcome['error']}"
    return f"charon: {outcome['loaded']} CRLs loaded ({outcome['socket']})"
