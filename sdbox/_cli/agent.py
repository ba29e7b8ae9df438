"""``sdbox agent``: the box's daemon."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from sdbox._cli.output import emit_json, json_option
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


def checkout_root(candidates: list[Path]) -> Path:
    """The first of ``candidates`` that is an sdbox source checkout with the benchmark harness."""
    for root in candidates:
        if all((root / part).is_file() for part in _HARNESS):
            return root
    looked = ", ".join(str(c) for c in dict.fromkeys(candidates))
    raise click.ClickException(
        "`sdbox agent bench` needs an sdbox source checkout: it runs benchmarks/bench_agent.py "
        f"with the test harness in tests/integration/, and found neither under {looked} "
        "(run it from the checkout, or with the checkout's sdbox)"
    )


# what the benchmark imports from a checkout (it starts bubbles, a broker, a private bus)
_HARNESS = ("benchmarks/bench_agent.py", "tests/integration/agent_env.py")


@agent.command("bench")
@click.option("--rounds", type=click.IntRange(1), default=5, show_default=True,
              help="Insert/switch/remove rounds (medians are reported).")  # fmt: skip
@click.option("--idle-seconds", type=click.FloatRange(1.0), default=60.0, show_default=True,
              help="How long the idle agent is watched for memory and wake-ups.")  # fmt: skip
@json_option("Print the figures as JSON (the table goes to standard error).")
def bench(rounds: int, idle_seconds: float, as_json: bool) -> None:
    """Measure insert->session, switch, removal teardown, memory and idle wake-ups.

    Runs from a source checkout (it starts test bubbles, an emulated card and
    a private bus): the one this sdbox is installed from (`pip install -e`),
    or the current directory. `make bench` runs it with the other benchmarks.
    """
    import sdbox  # noqa: PLC0415

    root = checkout_root([Path(sdbox.__file__).resolve().parents[1], Path.cwd()])
    if str(root) not in sys.path:
        # the console script's sys.path has its own directory, not the checkout's
        sys.path.insert(0, str(root))
    from benchmarks import bench_agent  # noqa: PLC0415

    figures = bench_agent.run(rounds=rounds, idle_s=idle_seconds)
    if as_json:
        emit_json(figures)
