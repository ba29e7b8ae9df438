"""``sdbox tunnel``: the IPsec tunnel (sdbox.network), box and reference gateway side."""

from __future__ import annotations

from pathlib import Path

import click

from sdbox._cli.output import emit_json, json_option


@click.group()
def tunnel() -> None:
    """The box's IPsec tunnel to the centre (strongSwan over VICI, docs/tunnel.md)."""


@tunnel.command("gateway-config")
@click.option(
    "--identity", required=True, help="The gateway's IKE identity (a SAN of its certificate)."
)
@click.option("--certificate", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              required=True, help="The gateway's certificate (PEM), from the gateway CA.")  # fmt: skip
@click.option("--box-ca", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              required=True, help="The box-identity CA (PEM): only boxes it certifies get in.")  # fmt: skip
@click.option("--network", "networks", multiple=True, required=True,
              help="A centre network offered to boxes (CIDR); repeat for several.")  # fmt: skip
@click.option("--pool", required=True, help="Inner addresses for boxes (CIDR).")
@click.option("--listen", "listen", multiple=True, help="The gateway's own address(es).")
def gateway_config(identity: str, certificate: Path, box_ca: Path, networks: tuple[str, ...],
                   pool: str, listen: tuple[str, ...]) -> None:  # fmt: skip
    """Print the reference gateway's swanctl.conf (certificates by file name)."""

    from cryptography.hazmat.primitives.hashes import SHA256  # noqa: PLC0415

    from sdbox.certificates import load_certificate  # noqa: PLC0415
    from sdbox.network import strongswan  # noqa: PLC0415

    gateway_cert = load_certificate(certificate.read_bytes(), f"certificate {certificate}")
    box_ca_cert = load_certificate(box_ca.read_bytes(), f"certificate {box_ca}")
    names = {gateway_cert.fingerprint(SHA256()): certificate.name,
             box_ca_cert.fingerprint(SHA256()): box_ca.name}  # fmt: skip
    spec = strongswan.GatewaySpec(identity=identity, certificate=gateway_cert, box_ca=box_ca_cert,
                                  networks=list(networks), pool=pool, local_addrs=list(listen))  # fmt: skip
    click.echo(strongswan.swanctl_conf(
        {"sdbox-boxes": strongswan.gateway_connection(
            spec, cert_ref=lambda c: names[c.fingerprint(SHA256())])},
        pools=strongswan.gateway_pool(spec),
    ), nl=False)  # fmt: skip


@tunnel.command("status")
@click.option("--vici", "vici_socket", type=click.Path(path_type=Path),
              default=Path("/run/charon.vici"), show_default=True, help="charon's VICI socket.")  # fmt: skip
def status(vici_socket: Path) -> None:
    """List charon's IKE SAs (connection, state, gateway, inner address)."""
    from sdbox.network.tunnel import Vici  # noqa: PLC0415

    with Vici(vici_socket) as vici:
        sas = vici.list_sas()
    if not sas:
        click.echo("no IKE SA: the tunnel is down")
    for sa in sas:
        inner = ", ".join(sa.inner_addresses) or "-"
        up = "carrying traffic" if sa.established else "no CHILD_SA"
        click.echo(f"{sa.connection}: {sa.state} with {sa.remote_host} ({sa.remote_id}), "
                   f"inner {inner}, {up}")  # fmt: skip


@tunnel.command("load-crls")
@click.option("--config", "config_path", type=click.Path(path_type=Path), default=None,
              help="Agent configuration ([trust] crl_dir, build_time); the packaged one by default.")  # fmt: skip
@click.option("--vici", "vici_socket", type=click.Path(path_type=Path),
              default=Path("/run/charon.vici"), show_default=True, help="charon's VICI socket.")  # fmt: skip
@json_option("The CRLs loaded, or why not.")
def load_crls(config_path: Path | None, vici_socket: Path, as_json: bool) -> None:
    """Give charon every CRL the box holds (after `sdbox trust refresh`; root only)."""
    from sdbox._cli.renew import _config, _store, describe_push, push_to_charon  # noqa: PLC0415
    from sdbox.agent.config import DEFAULT_PATH  # noqa: PLC0415

    outcome = push_to_charon(vici_socket, _store(_config(config_path or DEFAULT_PATH)))
    if as_json:
        emit_json(outcome)
    else:
        click.echo(describe_push(outcome))
    if "error" in outcome:
        click.get_current_context().exit(1)


# --- the box at boot (the image's units, docs/tunnel.md "At boot") ----------------------

_agent_config_option = click.option(
    "--config", "config_path", type=click.Path(path_type=Path, dir_okay=False),
    default=Path("/etc/sdbox/agent.toml"), show_default=True,
    help="The agent configuration (its [trust] and [identity] sections are used).",
)  # fmt: skip


@tunnel.command("charon-conf")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Where to write strongswan.conf (charon-systemd's STRONGSWAN_CONF).")  # fmt: skip
def charon_conf(out: Path) -> None:
    """Write the box's strongswan.conf: kernel data plane, the TPM token through p11-kit."""
    from sdbox.network import boot, strongswan  # noqa: PLC0415

    text = strongswan.charon_conf(
        boot.CHARON_PATHS, pkcs11_modules={boot.P11_MODULE_NAME: strongswan.P11_KIT_CLIENT}
    )
    out.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    out.write_text(text)


@tunnel.command("clock-floor")
@_agent_config_option
def clock_floor(config_path: Path) -> None:
    """Set a clock that is behind the trust floor (build time, newest CRL) forward to it."""
    from datetime import UTC, datetime  # noqa: PLC0415

    from sdbox.agent.config import load  # noqa: PLC0415
    from sdbox.network import boot  # noqa: PLC0415
    from sdbox.time_floor import read_floor  # noqa: PLC0415

    trust = load(config_path).trust
    # the floor alone (as RevocationStore.time_floor reads it), without the CRL store
    floor = read_floor(trust.crl_dir, datetime.fromisoformat(trust.build_time).astimezone(UTC))
    moved = boot.apply_time_floor(floor)
    if moved is None:
        click.echo(f"clock at or past the trust floor {floor.isoformat()}")
    else:
        click.echo(f"clock was behind the trust floor: set to {moved.isoformat()}")


@tunnel.command("run")
@click.option("--site", "site_path", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("/run/sdbox/site/site.toml"), show_default=True,
              help="The site profile (copied from the config area at boot).")  # fmt: skip
@_agent_config_option
def run(site_path: Path, config_path: Path) -> None:
    """Configure charon over VICI and keep the tunnel up (the image's sdbox-tunnel.service)."""
    import logging  # noqa: PLC0415
    import signal  # noqa: PLC0415
    import threading  # noqa: PLC0415

    from sdbox.agent.config import load  # noqa: PLC0415
    from sdbox.identity import read_pin  # noqa: PLC0415
    from sdbox.network import boot  # noqa: PLC0415
    from sdbox.network import site as site_profile  # noqa: PLC0415

    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    profile = site_profile.load(site_path)
    config = load(config_path)
    identity = config.identity.identity_config()
    material = boot.read_material(
        profile, anchors=config.trust.anchors, certificate=identity.certificate,
        crl_dirs=[boot.SEED_CRL_DIR, config.trust.crl_dir],
    )  # fmt: skip
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    boot.run(profile, material, read_pin(identity), notify=boot.sd_notify, stopping=stopping)
