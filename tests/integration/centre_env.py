"""The centre behind the tunnel, for the benchmark and the demo: the researcher's path for real.

tunnel_env.py builds the box and centre namespaces, a charon in each and the
box key in swtpm; this module puts what a researcher reaches into the centre
namespace (the RDP/SPICE bubbles and the reference broker, on the centre
network's BUBBLE address) and lets a thread of the calling process act as
the box (its sockets, and the processes it starts, in the box namespace).

Why threads and not processes: a network namespace is a property of a
thread (``setns(2)``), sockets keep the namespace they were made in, and a
child process inherits its parent thread's. So the broker's listening socket
is made by a thread inside the centre namespace and then served from
anywhere; the agent's event loop runs in a thread inside the box namespace,
so the broker's HTTPS, the session client and everything else it starts go
through the tunnel; and the emulated card, which plugs into the host's pcscd
over TCP loopback (vpcd), is inserted from a thread that steps back into the
host's namespace for that one connection. pcscd, D-Bus and the X server are
reached by socket paths, which namespaces do not separate.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from sdbox.identity import IdentityConfig
from sdbox.network.events import TunnelEvent, TunnelState
from sdbox.trust.pki import Pki
from tests.integration.tpm_env import SoftwareTpm, tpm_identity_config, tpm_missing
from tests.integration.tunnel_env import (
    BUBBLE,
    Centre,
    TunnelRig,
    network_missing,
    provision_box,
    tunnel_rig,
)

CLONE_NEWNET = 0x40000000
T = TypeVar("T")


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"setns: {os.strerror(error)}")


@contextlib.contextmanager
def thread_in_netns(target: str | int) -> Iterator[None]:
    """The calling thread inside ``target`` (an `ip netns` name, or an fd on a netns) meanwhile."""
    back = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    into = os.open(f"/run/netns/{target}", os.O_RDONLY) if isinstance(target, str) else target
    try:
        _setns(into)
        try:
            yield
        finally:
            _setns(back)
    finally:
        os.close(back)
        if isinstance(target, str):
            os.close(into)


class HostNetns:
    """The namespace this process started in, to step back into from the box's thread."""

    def __init__(self) -> None:
        self.fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY)

    def call(self, action: Callable[[], T]) -> T:
        """``action()`` with the calling thread in the host's namespace."""
        with thread_in_netns(self.fd):
            return action()

    def close(self) -> None:
        os.close(self.fd)


@dataclass(frozen=True)
class TunnelBox:
    """The box identity for the tunnel: its key in the TPM, its certificate on disk."""

    config: IdentityConfig

    @classmethod
    def provision(cls, tpm: SoftwareTpm, directory: Path, pki: Pki,
                  token_label: str = "tunnel-box") -> TunnelBox:  # fmt: skip
        """A key made in the TPM and certified by the PKI's box CA (what enrolment gives)."""
        directory = directory.resolve()
        directory.mkdir(parents=True, exist_ok=True)
        config = replace(tpm_identity_config(tpm, directory, directory / "box.pem"),
                         token_label=token_label)  # fmt: skip
        certificate = provision_box(config, pki)
        config.certificate.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        return cls(config)


@dataclass
class TunnelUp:
    """A rig whose tunnel is up, and how long that took."""

    rig: TunnelRig
    event: TunnelEvent
    seconds_from_start: float  # Tunnel.start() -> up (IKE_SA_INIT + IKE_AUTH, TPM signature)
    seconds_from_cold: float  # both charons started -> up (configuration over VICI included)


def wait_up(rig: TunnelRig, timeout: float = 40.0, since: int = 0) -> TunnelEvent:
    """The tunnel's next "up" (AssertionError with what was seen instead)."""
    return rig.wait_for(lambda e: e.state is TunnelState.UP, timeout, since=since)


@contextlib.contextmanager
def centre_behind_tunnel(workdir: Path, tpm: SoftwareTpm, box: TunnelBox, pki: Pki, *,
                         rtt_ms: float | None = None) -> Iterator[TunnelUp]:  # fmt: skip
    """Box and centre namespaces, the gateways of ``pki`` configured, the tunnel up."""
    workdir = workdir.resolve()  # charon and p11-kit's server do not share our working directory
    workdir.mkdir(parents=True, exist_ok=True)
    centre = Centre(pki, pki)  # no foreign gateway here: the second PKI is never used
    certificate = x509.load_pem_x509_certificate(box.config.certificate.read_bytes())
    with tunnel_rig(workdir, tpm, box.config, centre, certificate, rtt_ms=rtt_ms) as rig:
        rig.configure_gateways()
        rig.configure_box(box.config)
        started = time.monotonic()
        rig.start_tunnel()
        up = wait_up(rig)
        yield TunnelUp(rig, up, up.at - started, up.at - rig.charons_started_at)


def why_not() -> str | None:
    """Why the centre cannot be put behind a tunnel here, if it cannot."""
    missing = network_missing()
    if missing:
        return missing
    missing_tpm = tpm_missing()
    return f"{missing_tpm} is not installed (make setup, tpm tier)" if missing_tpm else None


__all__ = ["BUBBLE", "HostNetns", "TunnelBox", "TunnelUp", "centre_behind_tunnel",
           "thread_in_netns", "wait_up", "why_not"]  # fmt: skip
