"""`sdbox renewal mark-due`: the daily timer's job (renewal itself needs the holder: the agent)."""

from __future__ import annotations

from pathlib import Path

import click

from sdbox._cli.output import emit_json, json_option
from sdbox.agent.config import DEFAULT_PATH


@click.group("renewal")
def renewal() -> None:
    """Project certificate renewal: what the timer can do without the card."""


@renewal.command("mark-due")
@click.option(
    "--config", "config_path", type=click.Path(path_type=Path), default=DEFAULT_PATH,
    show_default=True, help="The agent configuration (renewal window, state directory).",
)  # fmt: skip
@json_option("Print what is due as JSON.")
def mark_due(config_path: Path, as_json: bool) -> None:
    """List the certificates inside the renewal window on the cards this box has seen.

    Writes due.json beside the agent's seen.json and one renewal_due audit
    event per certificate; the agent renews them at the holder's next insertion.
    A card whose capabilities do not allow renewal on the box (RSA project
    keys, one project per card) is listed with the reason, not marked due.
    """
    from sdbox.agent.config import load  # noqa: PLC0415  (keeps `--help` fast)
    from sdbox.renewal.due import mark_due as run  # noqa: PLC0415

    config = load(config_path)
    due = run(config.state_dir / "renewal", config.policy.renewal_window_days)
    if as_json:
        emit_json([d.to_json() for d in due])
        return
    if not due:
        click.echo("nothing due")
    for d in due:
        when = "expired" if d.days_left < 0 else f"expires in {d.days_left} days"
        if d.refusal is not None:  # the card's capabilities: the card office re-issues it
            click.echo(f"{d.project}: {when}, not renewed on this box: {d.refusal} "
                       f"(card {d.card[:8]}…)")  # fmt: skip
        else:
            click.echo(f"{d.project}: {when} (card {d.card[:8]}…)")
