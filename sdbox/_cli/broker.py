"""``sdbox broker``: the reference centre-side broker (tests, demo, a model for centres)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import click

from sdbox._cli.output import emit_json, json_option

if TYPE_CHECKING:
    from sdbox.broker.bioenrol import BioEnrolment


@click.group()
def broker() -> None:
    """The reference broker of one-time session credentials."""


@broker.command("run")
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    required=True,
)
def run(config_path: Path) -> None:
    """Serve the broker until interrupted."""
    from sdbox.broker.server import BrokerServer, load_config  # noqa: PLC0415

    logging.getLogger("sdbox.broker").setLevel(logging.INFO)
    server = BrokerServer(load_config(config_path))
    click.echo(f"broker listening on {server.url}", err=True)
    try:
        server.serve()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


@broker.command("enrolment-token")
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    required=True,
)
@click.option("--box-id", required=True, help="The name the centre gives the box.")
@click.option(
    "--out",
    type=click.Path(path_type=Path, dir_okay=False),
    required=True,
    help="Where to write the token (0600) for `sdbox flash --enrolment-token-file`.",
)
def enrolment_token(config_path: Path, box_id: str, out: Path) -> None:
    """Register a one-time enrolment token for a box (only its hash is kept)."""
    import os  # noqa: PLC0415

    from sdbox.broker.enrolment import EnrolmentTokens  # noqa: PLC0415
    from sdbox.broker.server import load_config  # noqa: PLC0415
    from sdbox.config import ConfigError  # noqa: PLC0415

    config = load_config(config_path)
    if not config.enrolment_tokens:
        raise ConfigError(f"{config_path}: enrolment_tokens is not set")
    token = EnrolmentTokens(Path(config.enrolment_tokens)).add(box_id)
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
    click.echo(f"token for box {box_id} written to {out}", err=True)


@broker.command("register-card")
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    required=True,
)
@click.option("--guid", required=True, help="The card's GUID (CHUID), 32 hex digits.")
@click.option(
    "--holder-certificate",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    required=True,
    help="The holder certificate (PEM) issued for this card (slot 9A).",
)
@click.option(
    "--management-key-file",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    required=True,
    help="File with the card's management key (hex); never on the command line.",
)
def register_card(
    config_path: Path, guid: str, holder_certificate: Path, management_key_file: Path
) -> None:
    """Let the centre manage a card during renewal (9B relay, directory signing)."""

    from sdbox.broker.cards import add_card  # noqa: PLC0415
    from sdbox.broker.server import load_config  # noqa: PLC0415
    from sdbox.certificates import UnreadableCertificate, load_certificate  # noqa: PLC0415
    from sdbox.config import ConfigError  # noqa: PLC0415

    config = load_config(config_path)
    if not config.card_register:
        raise ConfigError(f"{config_path}: card_register is not set")
    try:
        card = bytes.fromhex(guid)
        key = bytes.fromhex(management_key_file.read_text().strip())
        holder = load_certificate(holder_certificate.read_bytes(), "holder certificate")
    except (ValueError, UnreadableCertificate) as exc:
        raise ConfigError(f"register-card: {exc}") from exc
    add_card(Path(config.card_register), card, key, holder)
    click.echo(f"card {card.hex()} registered in {config.card_register}", err=True)


@broker.command("project-catalogue")
@click.option(
    "--projects",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    required=True,
    help="TOML: sequence, and per project its name, protocol, endpoint, server certificate, "
    "policy (sdbox/broker/catalogue.py).",
)
@click.option(
    "--pki",
    "pki_dir",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    required=True,
    help="The PKI directory whose directory signer signs (the broker's directory_pki).",
)
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), required=True)
def project_catalogue(projects: Path, pki_dir: Path, out: Path) -> None:
    """Sign the site's project catalogue: where one-project cards' projects are."""
    from sdbox.broker.catalogue import build_catalogue  # noqa: PLC0415

    data = build_catalogue(projects, pki_dir)
    out.write_bytes(data)
    click.echo(f"project catalogue written to {out}", err=True)


# -- remote biometric enrolment, the operator's side (docs/remote-enrolment.md) -------------


@broker.group("enrol")
def enrol() -> None:
    """Remote fingerprint enrolment: an operator's authorisations for one card at one box."""


_CONFIG = click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    required=True,
)


def _bio(config_path: Path) -> BioEnrolment:
    from sdbox.broker.server import Broker, load_config  # noqa: PLC0415
    from sdbox.config import ConfigError  # noqa: PLC0415

    bio = Broker(load_config(config_path)).bio
    if bio is None:
        raise ConfigError(
            f"{config_path}: bio_enrolment_register, enrolment_operators and card_register "
            "must be set for remote enrolment"
        )
    return bio


def _show(record: dict[str, object], as_json: bool) -> None:
    if as_json:
        emit_json(record)
        return
    for key in ("id", "state", "card_guid", "box_id", "fingers", "operator", "not_after", "code"):
        if key in record:
            value = record[key]
            click.echo(f"{key}: {', '.join(value) if isinstance(value, list) else value}")


@enrol.command("open")
@_CONFIG
@click.option("--card", "card_guid", required=True, help="The card's GUID (32 hex digits).")
@click.option("--box", "box_id", required=True, help="The box's id (its certificate's urn:sdbox:box:).")
@click.option(
    "--finger", "fingers", multiple=True, required=True,
    type=click.Choice(["primary", "secondary"]), help="A finger to enrol (repeat for both).",
)  # fmt: skip
@click.option("--minutes", default=15, show_default=True, help="How long the box may use it.")
@click.option("--operator", required=True, help="The operator (their key in enrolment_operators).")
@json_option("The authorisation's record.")
def enrol_open(config_path: Path, card_guid: str, box_id: str, fingers: tuple[str, ...],
               minutes: int, operator: str, as_json: bool) -> None:  # fmt: skip
    """Authorise one remote enrolment of FINGERs of one card at one box."""
    from sdbox.config import ConfigError  # noqa: PLC0415

    try:
        guid = bytes.fromhex(card_guid)
    except ValueError as exc:
        raise ConfigError(f"--card: {exc}") from exc
    _show(_bio(config_path).open(card_guid=guid, box_id=box_id, fingers=fingers,
                                 minutes=minutes, operator=operator), as_json)  # fmt: skip


@enrol.command("show")
@_CONFIG
@click.argument("auth_id", required=False)
@json_option("The record (or the list of records).")
def enrol_show(config_path: Path, auth_id: str | None, as_json: bool) -> None:
    """One authorisation (with the code the box shows, once it asked), or all of them."""
    bio = _bio(config_path)
    if auth_id is not None:
        _show(bio.show(auth_id), as_json)
        return
    records = bio.records()
    if as_json:
        emit_json(records)
        return
    for record in records:
        _show(record, False)
        click.echo("")


@enrol.command("confirm")
@_CONFIG
@click.argument("auth_id")
def enrol_confirm(config_path: Path, auth_id: str) -> None:
    """Type the code the researcher reads from the box: if it matches, the box may write.

    The code is read from standard input (never the command line: it binds the
    authorisation to that box's screen). Three wrong codes revoke the authorisation.
    """
    code = click.prompt("code read from the box", err=True).strip()
    _show(_bio(config_path).confirm(auth_id, code), False)


@enrol.command("revoke")
@_CONFIG
@click.argument("auth_id")
def enrol_revoke(config_path: Path, auth_id: str) -> None:
    """End an authorisation that is not done."""
    _show(_bio(config_path).revoke(auth_id), False)
