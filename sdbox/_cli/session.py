"""`sdbox session` commands: open a bubble's desktop by hand, for testing it."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import click

from sdbox.session import (
    DEFAULT_SESSION_USER,
    Credential,
    Display,
    Endpoint,
    EndReason,
    Policy,
    Protocol,
    SessionConfigError,
    SessionEnded,
    SessionFailed,
    SessionSpec,
    open_session,
)

# Ends that are not a failure of the bubble or the box.
_NORMAL_ENDS = frozenset({EndReason.LOGGED_OFF, EndReason.CLOSED, EndReason.KILLED})


@click.group()
def session() -> None:
    """Remote desktop sessions to a project's bubble."""


def _read_credential() -> Credential:
    stream = click.get_text_stream("stdin")
    if stream.isatty():
        value = click.prompt("Credential", hide_input=True, err=True)
    else:
        value = stream.readline().rstrip("\r\n")
    return Credential(value)


def _display(x11: str | None) -> Display:
    if x11:
        return Display(x11=x11)
    if os.environ.get("DISPLAY"):
        return Display(x11=os.environ["DISPLAY"])
    wayland, runtime = os.environ.get("WAYLAND_DISPLAY"), os.environ.get("XDG_RUNTIME_DIR")
    if wayland and runtime:
        return Display(wayland=wayland, runtime_dir=Path(runtime))
    raise SessionConfigError("No display: give --display or set DISPLAY or WAYLAND_DISPLAY.")


def _echo_end(ended: SessionEnded) -> None:
    click.echo(f"ended: {ended.reason.value}: {ended.message}")
    click.echo(f"detail: {ended.detail}", err=True)


async def _run(spec: SessionSpec, run_as: str | None) -> SessionEnded:
    live = open_session(spec, run_as=run_as)
    await live.start()
    try:
        await live.wait_connected()
        click.echo("connected")
        sys.stdout.flush()
        return await live.wait_ended()
    except asyncio.CancelledError:  # Ctrl+C: never leave the client behind
        await live.kill()
        raise


@session.command("open")
@click.argument("url")
@click.option("--server-fingerprint", help="sha256:HEX of the server certificate (the pin).")
@click.option("--user", default="", help="User name on the bubble.")
@click.option(
    "--ca",
    "ca_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="SPICE: PEM file of the CA that issued the server certificate.",
)
@click.option("--host-subject", help='SPICE: server certificate subject, "C=..,O=..,CN=..".')
@click.option("--display", "x11", help="X11 display (default: $DISPLAY).")
@click.option("--audio/--no-audio", default=False, help="Allow audio output (policy).")
@click.option("--connect-timeout", type=float, default=20.0, show_default=True)
@click.option(
    "--run-as",
    default=DEFAULT_SESSION_USER,
    show_default=True,
    help="Unprivileged user the client runs as ('-' for the current user).",
)
def open_(
    url: str,
    *,
    server_fingerprint: str | None,
    user: str,
    ca_file: Path | None,
    host_subject: str | None,
    x11: str | None,
    audio: bool,
    connect_timeout: float,
    run_as: str,
) -> None:
    """Open URL (rdp://HOST:PORT or spice://HOST:PORT); the credential is read from stdin.

    Prints "connected" once the desktop is up, then how the session ended.
    """
    endpoint = Endpoint.parse(url)
    if endpoint.protocol is Protocol.SPICE and ca_file is None:
        raise SessionConfigError("A SPICE session needs --ca and --host-subject.")
    spec = SessionSpec(
        endpoint=endpoint,
        user=user,
        credential=_read_credential(),
        display=_display(x11),
        server_fingerprint=server_fingerprint,
        policy=Policy(audio=audio),
        ca_pem=ca_file.read_text() if ca_file else None,
        host_subject=host_subject,
        connect_timeout=connect_timeout,
    )
    try:
        ended = asyncio.run(_run(spec, None if run_as == "-" else run_as))
    except SessionFailed as exc:
        _echo_end(exc.ended)
        raise
    _echo_end(ended)
    if ended.reason not in _NORMAL_ENDS:
        raise SessionFailed(ended)
