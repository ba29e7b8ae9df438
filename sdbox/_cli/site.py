"""``sdbox site``: the site profile (sdbox.network.site)."""

from __future__ import annotations

from pathlib import Path

import click

from sdbox.config import describe


@click.group()
def site() -> None:
    """The site profile: the centre's gateways and networks, the box's own network."""


@site.command("check")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
def check(path: Path) -> None:
    """Validate a site profile (as `sdbox flash --site` does) and summarise it."""
    from sdbox.network import site as site_profile  # noqa: PLC0415  (keeps `--help` fast)

    profile = site_profile.load(path)
    for i, gateway in enumerate(profile.gateways, start=1):
        click.echo(f"gateway {i}:    {gateway.address} (IKE identity {gateway.identity})")
    for network in profile.networks:
        click.echo(f"network:      {network.cidr} ({network.purpose})")
    box = profile.box
    own = f"{box.address} via {box.gateway}" if box.mode == "static" else "DHCP"
    click.echo(f"box network:  {box.interface}, {own}")


@site.command("config-reference")
def config_reference() -> None:
    """Print every site profile setting with its default and meaning."""
    from sdbox.network.site import SiteProfile  # noqa: PLC0415

    for line in describe(SiteProfile):
        click.echo(line)


@site.command("firewall")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--data-plane",
    type=click.Choice(["kernel", "libipsec"]),
    default="kernel",
    show_default=True,
    help="Where ESP runs: the kernel (a box), or charon's TUN device (kernels without ESP).",
)
@click.option(
    "--enrolment",
    is_flag=True,
    help="Also let the box reach the profile's [enrolment] url (a box not enrolled yet).",
)
def firewall_command(path: Path, data_plane: str, enrolment: bool) -> None:
    """Print the box's nftables ruleset for this site profile (for `nft -f`)."""
    from sdbox.network import firewall  # noqa: PLC0415
    from sdbox.network import site as site_profile  # noqa: PLC0415

    profile = site_profile.load(path)
    rules = firewall.ruleset(
        profile, "libipsec" if data_plane == "libipsec" else "kernel", enrolment=enrolment
    )
    click.echo(rules, nl=False)


@site.command("networkd")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
def networkd_command(path: Path) -> None:
    """Print the systemd-networkd .network file of the box's outer interface."""
    from sdbox.network import boot  # noqa: PLC0415
    from sdbox.network import site as site_profile  # noqa: PLC0415

    click.echo(boot.networkd_config(site_profile.load(path)), nl=False)
