"""``sdbox emulate card``: an emulated BIO SSO card in a vpcd reader of the real pcscd."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from types import FrameType

import click

from sdbox.smartcard.emulator.applet import PivApplet
from sdbox.smartcard.emulator.faults import parse_fault
from sdbox.smartcard.emulator.profiles import issue_card, load_profile, profile_names
from sdbox.smartcard.emulator.stack import reader_name
from sdbox.smartcard.emulator.state import CardState
from sdbox.smartcard.emulator.vpcd import VPCD_BASE_PORT, VirtualCard


@click.group()
def emulate() -> None:
    """Emulated hardware for tests, demos and development."""


def _list_profiles(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    for name in profile_names():
        click.echo(name)
    ctx.exit(0)


@emulate.command("card")
@click.option(
    "--profile",
    default="demo",
    show_default=True,
    help="A built-in profile (see --list-profiles: 'demo' and one per card variant) "
    "or a card profile TOML file.",
)
@click.option(
    "--list-profiles",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_list_profiles,
    help="Print the built-in profile names, one per line, and exit.",
)
@click.option(
    "--reader-index",
    type=click.IntRange(0, 1),
    default=0,
    show_default=True,
    help="vpcd reader: Virtual PCD 00 0N.",
)
@click.option(
    "--apdu-latency-ms", type=click.FloatRange(0), default=0.0, help="Added latency per APDU."
)
@click.option(
    "--state",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Card state file: loaded if it exists, else issued from the profile; every change is saved.",
)
@click.option(
    "--pki",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("build/demo/pki"),
    show_default=True,
    help="Test PKI used to issue a new card (created if missing).",
)
@click.option("--keygen-seed", help="Make on-card key generation deterministic (hex seed).")
@click.option(
    "--fault", "faults", multiple=True, help="Inject a fault, e.g. remove:ins=cb (repeatable)."
)
@click.option(
    "--vpcd-port", type=int, default=VPCD_BASE_PORT, show_default=True, help="vpcd's base port."
)
def card(
    profile: str,
    reader_index: int,
    apdu_latency_ms: float,
    state: Path | None,
    pki: Path,
    keygen_seed: str | None,
    faults: tuple[str, ...],
    vpcd_port: int,
) -> None:
    """Insert an emulated card; runs until interrupted (then the card is pulled)."""
    from sdbox.trust.pki import Pki  # noqa: PLC0415

    seed = bytes.fromhex(keygen_seed) if keygen_seed else None
    if state is not None and state.exists():
        card_state = CardState.load(state)
        if seed is not None:
            card_state.keygen_seed = seed
    else:
        authority = Pki.open(pki) if (pki / "state.json").exists() else Pki.init(pki)
        card_state = issue_card(
            load_profile(profile), authority, state_path=state, keygen_seed=seed
        )
    virtual = VirtualCard(
        PivApplet(card_state), port=vpcd_port + reader_index, latency_ms=apdu_latency_ms
    )
    for spec in faults:
        virtual.add_fault(parse_fault(spec))
    stop = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    virtual.insert()
    click.echo(
        f"card {card_state.guid.hex().upper()} inserted in '{reader_name(reader_index)}'", err=True
    )
    try:
        stop.wait()
    finally:
        virtual.remove()
        click.echo("card removed", err=True)
