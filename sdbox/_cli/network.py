"""``sdbox network``: the outer network the researcher set on the greeter (docs/desk.md)."""

from __future__ import annotations

from pathlib import Path

import click

STATE_DIR = Path("/var/lib/sdbox")


@click.group()
def network() -> None:
    """The box's outer network as set on the greeter (wired DHCP or static, Wi-Fi)."""


@network.command("apply")
@click.option(
    "--state-dir", type=click.Path(file_okay=False, path_type=Path), default=STATE_DIR,
    show_default=True, help="the agent's state directory (on the data partition)",
)  # fmt: skip
@click.option("--no-reload", is_flag=True, help="install the files only (before networkd starts)")
def apply(state_dir: Path, no_reload: bool) -> None:
    """Install the agent's rendered networkd and iwd files and have networkd reload them.

    Root's job (sdbox-outer-network.service): the agent may not configure the network.
    """
    from sdbox.agent.outer_network import (  # noqa: PLC0415  (keeps `--help` fast)
        DIRECTORY,
        PENDING,
        install,
        reload_networkd,
    )
    from sdbox.network import site  # noqa: PLC0415

    written = install(state_dir / DIRECTORY / PENDING)
    for path in written:
        click.echo(f"installed {path}")
    if not written:
        click.echo("no settings of the researcher's: the site profile's (or the image's) network applies")
    if not no_reload:
        interface = site.load().box.interface if site.DEFAULT_PATH.exists() else "eth0"
        reload_networkd(interface)


@network.command("reset")
@click.option(
    "--state-dir", type=click.Path(file_okay=False, path_type=Path), default=STATE_DIR,
    show_default=True, help="the agent's state directory (on the data partition)",
)  # fmt: skip
def reset(state_dir: Path) -> None:
    """Forget the researcher's network settings (factory reset); apply restores the site's or image's."""
    from sdbox.agent.outer_network import NetworkStore  # noqa: PLC0415

    NetworkStore(state_dir, None).reset()
    click.echo(
        "network settings cleared: the site profile's (or the image's) network applies after "
        "`sdbox network apply`"
    )
