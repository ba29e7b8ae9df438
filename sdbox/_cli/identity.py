"""``sdbox identity``: the box's TPM-held identity (first boot, enrolment, checks)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import click

from sdbox.agent.config import DEFAULT_PATH, AgentConfig, load

if TYPE_CHECKING:
    from cryptography import x509

_config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=DEFAULT_PATH,
    show_default=True,
    help="The agent configuration whose [identity] section is used.",
)


def _certificates(path: Path) -> list[x509.Certificate]:

    from sdbox.certificates import UnreadableCertificate, load_certificates  # noqa: PLC0415
    from sdbox.config import ConfigError  # noqa: PLC0415

    try:
        return load_certificates(path.read_bytes())
    except FileNotFoundError:
        return []
    except (OSError, UnreadableCertificate) as exc:
        raise ConfigError(f"{path}: cannot be read ({exc})") from exc


@click.group()
def identity() -> None:
    """The box identity: a key that never leaves the TPM, certified by the centre."""


@identity.command()
@_config_option
def provision(config_path: Path) -> None:
    """Create the TPM token and box key if missing (PINs go to the root-only pin_file)."""
    from sdbox.identity.provision import provision_tpm  # noqa: PLC0415

    config = load(config_path)
    result = provision_tpm(config.identity.identity_config())
    click.echo("token: " + ("created" if result.created_token else "already present"))
    click.echo("box key: " + ("generated in the TPM" if result.created_key else "already present"))


@identity.command()
@_config_option
@click.option("--broker", "broker_url", help="The centre's broker URL (default: [credentials]).")
@click.option(
    "--token-file",
    type=click.Path(path_type=Path, dir_okay=False),
    required=True,
    help="The one-time enrolment token written at flashing (config partition).",
)
def enrol(config_path: Path, broker_url: str | None, token_file: Path) -> None:
    """First boot: create the TPM key, have the centre certify it, store the certificate."""
    from sdbox.identity.enrol import enrol as do_enrol  # noqa: PLC0415

    config = load(config_path)
    result = do_enrol(
        config.identity.identity_config(),
        broker_url=broker_url or config.credentials.broker_url,
        token_file=token_file,
        broker_anchors=_certificates(config.credentials.broker_anchors),
        anchors=_certificates(config.trust.anchors),
        intermediates=_certificates(config.trust.intermediates),
        timeout_s=config.credentials.timeout_s,
    )
    if result.already:
        click.echo(f"already enrolled as {result.box_id}: the token was not used")
        return
    click.echo(f"enrolled as {result.box_id}, certificate valid until {result.not_after:%Y-%m-%d}")
    if not result.token_removed:
        click.echo(f"note: {token_file} could not be removed (it is used up)", err=True)


@identity.command()
@_config_option
def check(config_path: Path) -> None:
    """Box id, certificate validity, and whether the key is in the TPM and non-extractable."""
    config = load(config_path)
    _check(config)


def _check(config: AgentConfig) -> None:
    from sdbox.identity import IdentityError, _box_id, _load_certificate  # noqa: PLC0415

    ident = config.identity.identity_config()
    certificate = _load_certificate(ident.certificate)
    now = datetime.now(UTC)
    start, end = certificate.not_valid_before_utc, certificate.not_valid_after_utc
    in_force = start <= now <= end
    if now < start:
        validity = "NOT YET VALID"
    elif now > end:
        validity = "EXPIRED"
    else:
        validity = f"valid, {(end - now).days} days left"
    click.echo(f"box id:       {_box_id(certificate)}")
    click.echo(f"certificate:  {start:%Y-%m-%d} to {end:%Y-%m-%d} ({validity})")
    if ident.kind != "tpm":
        click.echo("key:          DEVELOPMENT software key (not for a box in service)")
        return
    from sdbox.identity.tpm import key_status  # noqa: PLC0415

    status = key_status(ident)
    props = status.properties
    yes = {True: "yes", False: "NO"}
    click.echo(f"key in TPM:   {yes[props.local]} (generated there)")
    click.echo(
        f"extractable:  {'YES' if props.extractable else 'no'} "
        f"(never extractable: {yes[props.never_extractable]}, sensitive: {yes[props.sensitive]})"
    )
    matches = status.public_key == certificate.public_key()
    click.echo(f"matches cert: {yes[matches]}")
    if not (props.bound_to_tpm and matches and in_force):
        raise IdentityError("the box identity is not in order (see above)")
