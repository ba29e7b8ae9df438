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


@agent.command("bench")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
def bench(as_json: bool) -> None:
    """Measure insert->session, switch, removal teardown, memory and idle wake-ups.

    Runs from a source checkout (it starts test bubbles, an emulated card and
    a private bus); `make bench` runs it with the other benchmarks.
    """
    import json  # noqa: PLC0415

    try:
        from benchmarks import bench_agent  # noqa: PLC0415
    except ImportError as exc:
        raise click.ClickException(
            "run this from an sdbox source checkout (it needs benchmarks/ and tests/)"
        ) from exc
    figures = bench_agent.run()
    if as_json:
        click.echo(json.dumps(figures, indent=2))
