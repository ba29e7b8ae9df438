"""``sdbox agent``: the box's daemon."""

from __future__ import annotations

from pathlib import Path

import click

from sdbox.agent.config import DEFAULT_PATH, AgentConfig
from sdbox.config import describe


@click.group()
def agent() -> None:
    """The connection agent (runs as a systemd service on the box)."""


@agent.command("run")
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=DEFAULT_PATH,
    show_default=True,
)
@click.option("--bus", "bus_address", help="D-Bus address (default: the system bus).")
def run_command(config_path: Path, bus_address: str | None) -> None:
    """Run the agent until stopped."""
    from sdbox.agent.service import main  # noqa: PLC0415

    main(config_path, bus_address)


@agent.command("config-reference")
def config_reference() -> None:
    """Print every configuration setting with its default and meaning."""
    for line in describe(AgentConfig):
        click.echo(line)
