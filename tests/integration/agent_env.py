"""Bring up an agent on the real stack: pcscd + emulated card, Xvfb + RDP bubble, dbus-daemon.

The credential port here is a stand-in for the broker (it provisions a fresh
one-time password in the shadow server's SAM file), until the reference
broker is wired in.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import socket
import subprocess
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from sdbox.agent.card import CardHandle
from sdbox.agent.config import AgentConfig, load
from sdbox.identity import IdentityConfig
from sdbox.smartcard.directory import Project
from sdbox.trust.pki import CA_NAMES, Pki
from sdbox.trust.store import RevocationStore
from tests.integration.session_servers import free_port, stop, wait_for_port

RDP_USER = "researcher"


async def until(condition: Callable[[], bool], timeout: float = 60.0, poll: float = 0.01) -> None:
    """Wait for ``condition`` (a state the agent publishes); TimeoutError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached in time")
        await asyncio.sleep(poll)


def _accepts(path: Path) -> bool:
    import socket as sockets  # local: `socket` names the path in dbus_daemon

    probe = sockets.socket(sockets.AF_UNIX, sockets.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        return False
    finally:
        probe.close()
    return True


@contextlib.contextmanager
def dbus_daemon(workdir: Path) -> Iterator[str]:
    """A private bus (these machines have no system bus); yields its address."""
    socket = workdir / "bus"
    config = workdir / "bus.conf"
    config.write_text(
        textwrap.dedent(f"""\
        <!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
         "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
        <busconfig>
          <type>session</type>
          <listen>unix:path={socket}</listen>
          <auth>EXTERNAL</auth>
          <policy context="default">
            <allow user="*"/>
            <allow send_destination="*" eavesdrop="true"/>
            <allow eavesdrop="true"/>
            <allow own="*"/>
          </policy>
        </busconfig>
        """)
    )
    process = subprocess.Popen(
        ["dbus-daemon", "--nofork", f"--config-file={config}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        # The socket file appears at bind(), before listen(): wait until a
        # connection is accepted, or the first client may be refused.
        for _ in range(200):
            if socket.exists() and _accepts(socket):
                break
            threading.Event().wait(0.05)
        yield f"unix:path={socket}"
    finally:
        stop(process)


def publish_crls(pki: Pki, crl_dir: Path) -> None:
    """Give the box fresh CRLs of every CA of the PKI."""
    store = RevocationStore(crl_dir, build_time=pki.root.cert.not_valid_before_utc)
    for ca in CA_NAMES:
        crl = pki.crl(ca)
        store.accept(crl.public_bytes(serialization.Encoding.DER), pki.authority(ca).cert)


def write_config(
    workdir: Path,
    pki: Pki,
    *,
    display: str,
    sensor: str = 'kind = "emulated"\nseed = 1001',
    provider: str = "broker",
    extra: str = "",
    broker: BrokerEnv | None = None,
    connect_timeout_s: float = 30.0,
    endpoint_host: str = "127.0.0.1",
) -> AgentConfig:
    """An agent configuration for this test environment."""
    intermediates = workdir / "intermediates.pem"
    intermediates.write_bytes(
        b"".join(
            pki.authority(ca).cert.public_bytes(serialization.Encoding.PEM) for ca in CA_NAMES[1:]
        )
    )
    path = workdir / "agent.toml"
    path.write_text(
        textwrap.dedent(f"""\
        state_dir = "{workdir / "state"}"
        [trust]
        anchors = "{pki.path / "root.pem"}"
        intermediates = "{intermediates}"
        crl_dir = "{workdir / "crl"}"
        build_time = "{pki.root.cert.not_valid_before_utc.isoformat()}"
        [sensor]
        """)
        + sensor
        + textwrap.dedent(f"""
        [session]
        x11_display = "{display}"
        xwayland = false
        connect_timeout_s = {connect_timeout_s}
        [credentials]
        provider = "{provider}"
        broker_url = "{broker.url if broker else ""}"
        broker_anchors = "{pki.path / "root.pem"}"
        [policy]
        allowed_endpoints = ["{endpoint_host}:*"]
        """)
        + extra
        + (broker_settings(broker) if broker else "")
    )
    return load(path)


@dataclass
class RdpBubble:
    """freerdp-shadow-cli3 serving a project's bubble with the PKI's server certificate."""

    process: subprocess.Popen[bytes]
    port: int
    sam: Path
    issued: list[str] = field(default_factory=list)

    def provision(self) -> str:
        """A fresh one-time password for RDP_USER (what the broker does)."""
        password = secrets.token_urlsafe(18)
        hashed = subprocess.run(
            ["winpr-hash3", "-u", RDP_USER, "-p", password, "-f", "sam"],
            capture_output=True, check=True, timeout=30,
        ).stdout.decode()  # fmt: skip
        line = next(x for x in hashed.splitlines() if x.startswith(RDP_USER))
        tmp = self.sam.with_suffix(".tmp")
        tmp.write_text(line + "\n")
        tmp.replace(self.sam)
        self.issued.append(password)
        return password


@contextlib.contextmanager
def rdp_bubble(
    workdir: Path, pki: Pki, project_id: str, display: str, port: int, host: str = "127.0.0.1"
) -> Iterator[RdpBubble]:
    """The bubble of ``project_id`` on ``host``:``port``."""
    from sdbox.smartcard.emulator.profiles import bubble_dir

    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "config"
    certs = config / "freerdp" / "shadow"
    certs.mkdir(parents=True, exist_ok=True)
    source = bubble_dir(pki.path, project_id)
    (certs / "shadow.crt").write_bytes((source / "server.pem").read_bytes())
    (certs / "shadow.key").write_bytes((source / "server.key").read_bytes())
    (certs / "shadow.key").chmod(0o600)
    sam = workdir / "SAM"
    sam.write_text("")
    log = workdir / "shadow.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            ["freerdp-shadow-cli3", f"/port:{port}", f"/bind-address:{host}", f"/sam-file:{sam}",
             "-may-interact", "/log-level:INFO"],
            env={"DISPLAY": display, "HOME": str(workdir), "XDG_CONFIG_HOME": str(config), "PATH": os.environ["PATH"]},
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        wait_for_port(port, process, host=host)
        yield RdpBubble(process, port, sam)
    finally:
        stop(process)


@dataclass
class SpiceBubble:
    """QEMU's TLS-only SPICE server for a project, tickets set over QMP."""

    process: subprocess.Popen[bytes]
    port: int
    qmp: Path
    issued: list[str] = field(default_factory=list)

    def provision(self) -> str:
        """A fresh ticket, valid for 60 s (what the broker does), set over QMP."""
        ticket = secrets.token_urlsafe(18)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as qmp:
            qmp.settimeout(10)
            qmp.connect(str(self.qmp))
            reader = qmp.makefile("rb")
            reader.readline()  # greeting
            for command in (
                {"execute": "qmp_capabilities"},
                {"execute": "set_password", "arguments": {"protocol": "spice", "password": ticket}},
                {"execute": "expire_password", "arguments": {"protocol": "spice", "time": "+60"}},
            ):
                qmp.sendall(json.dumps(command).encode() + b"\n")
                answer = json.loads(reader.readline())
                while "event" in answer:
                    answer = json.loads(reader.readline())
                if "error" in answer:
                    raise RuntimeError(f"QMP refused {command['execute']}: {answer['error']}")
        self.issued.append(ticket)
        return ticket


@contextlib.contextmanager
def spice_bubble(workdir: Path, pki: Pki, project_id: str, port: int,
                 host: str = "127.0.0.1") -> Iterator[SpiceBubble]:  # fmt: skip
    """The SPICE bubble of ``project_id`` on ``host``:``port`` (QEMU, no disk, paused)."""
    from sdbox.smartcard.emulator.profiles import bubble_dir

    x509_dir = workdir / "x509"
    x509_dir.mkdir(parents=True, exist_ok=True)
    source = bubble_dir(pki.path, project_id)
    (x509_dir / "ca-cert.pem").write_bytes(
        pki.server_ca.cert.public_bytes(serialization.Encoding.PEM)
    )
    (x509_dir / "server-cert.pem").write_bytes((source / "server.pem").read_bytes())
    (x509_dir / "server-key.pem").write_bytes((source / "server.key").read_bytes())
    (x509_dir / "server-key.pem").chmod(0o600)
    qmp = workdir / "qmp.sock"
    process = subprocess.Popen(
        ["qemu-system-x86_64", "-machine", "none", "-nodefaults", "-S", "-display", "none",
         "-qmp", f"unix:{qmp},server=on,wait=off",
         "-spice", f"tls-port={port},addr={host},x509-dir={x509_dir},disable-ticketing=off"],
        stdout=subprocess.DEVNULL, stderr=(workdir / "qemu.log").open("wb"), start_new_session=True,
    )  # fmt: skip
    try:
        wait_for_port(port, process, host=host)
        yield SpiceBubble(process, port, qmp)
    finally:
        stop(process)


class StandInBroker:
    """Provisions a one-time password on the test bubble (stand-in for sdbox broker)."""

    def __init__(self, bubbles: dict[str, RdpBubble] | dict[str, RdpBubble | SpiceBubble]) -> None:
        self.bubbles = bubbles
        self.requests: list[str] = []

    async def obtain(
        self, project: Project, certificate: x509.Certificate, card: CardHandle
    ) -> tuple[str, Any]:
        self.requests.append(project.id)
        bubble = self.bubbles[project.id]
        return RDP_USER, await asyncio.to_thread(bubble.provision)


def card_profile(ports: dict[str, int], host: str = "127.0.0.1") -> str:
    """A card profile whose projects point at this test's bubbles (on ``host``)."""
    return textwrap.dedent(f"""\
        label = "agent test card"
        holder = "Dr Test Holder"
        pin = "123456"
        puk = "12345678"
        management_key = "00112233445566778899aabbccddeeff"
        [[fingers]]
        reference = "96"
        subtype = 2
        identity_seed = 1001
        [[projects]]
        id = "census-2021"
        name = "Census microdata 2021"
        protocol = "rdp"
        endpoint = "{host}:{ports["census-2021"]}"
        second_factor = "finger"
        [[projects]]
        id = "health-cohort"
        name = "Health cohort study"
        protocol = "rdp"
        endpoint = "{host}:{ports["health-cohort"]}"
        second_factor = "finger_or_pin"
        """) + (
        textwrap.dedent(f"""\
        [[projects]]
        id = "genomics-lab"
        name = "Genomics lab"
        protocol = "spice"
        endpoint = "{host}:{ports.get("genomics-lab", 0)}"
        second_factor = "finger"
        curve = "p384"
        """)
        if "genomics-lab" in ports
        else ""
    )


__all__ = ["free_port"]


@dataclass
class BrokerEnv:
    """The reference broker on loopback HTTPS, and a box identity it knows."""

    server: Any
    url: str
    box_key: Path
    box_certificate: Path
    anchors: Path
    identity: IdentityConfig | None = None  # a TPM identity instead of the development key


@contextlib.contextmanager
def reference_broker(
    workdir: Path,
    pki: Pki,
    bubbles: dict[str, Any],
    ports: dict[str, int],
    *,
    enrolment_tokens: Path | None = None,
    card_register: Path | None = None,
    renewal_window_days: int = 30,
    bio_enrolment: Path | None = None,
    host: str = "127.0.0.1",
    construct: Callable[[Callable[[], Any]], Any] | None = None,
) -> Iterator[BrokerEnv]:
    """`sdbox broker` (in a thread) provisioning the given bubbles, with a development box identity.

    ``host``: where it listens and its bubbles are (its TLS name); ``construct`` builds the
    server (its listening socket) somewhere else, e.g. in the centre's network namespace.
    """
    from cryptography.hazmat.primitives.asymmetric import ec

    from sdbox.broker.server import BrokerServer, load_config

    workdir.mkdir(parents=True, exist_ok=True)
    pem = serialization.Encoding.PEM
    tls_key = ec.generate_private_key(ec.SECP256R1())
    (workdir / "broker.key").write_bytes(
        tls_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    tls_cert = pki.issue_server(host, tls_key.public_key())
    chain = tls_cert.public_bytes(pem) + pki.server_ca.cert.public_bytes(pem)
    (workdir / "broker.pem").write_bytes(chain)
    box_key = ec.generate_private_key(ec.SECP256R1())
    (workdir / "box.key").write_bytes(
        box_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    (workdir / "box.pem").write_bytes(
        pki.issue_box(box_key.public_key(), box_id="test-box-1").public_bytes(pem)
    )
    (workdir / "intermediates.pem").write_bytes(
        b"".join(pki.authority(ca).cert.public_bytes(pem) for ca in CA_NAMES[1:])
    )
    publish_crls(pki, workdir / "crl")
    lines = [
        f'listen = "{host}:0"',
        f'tls_certificate = "{workdir / "broker.pem"}"',
        f'tls_key = "{workdir / "broker.key"}"',
        f'anchors = "{pki.path / "root.pem"}"',
        f'intermediates = "{workdir / "intermediates.pem"}"',
        f'crl_dir = "{workdir / "crl"}"',
        f'build_time = "{pki.root.cert.not_valid_before_utc.isoformat()}"',
    ]
    if enrolment_tokens is not None:  # first boot: the broker certifies boxes with the PKI's box CA
        lines += [f'enrolment_tokens = "{enrolment_tokens}"', f'box_ca = "{pki.path}"']
    if card_register is not None:  # renewal: the broker manages cards and signs their directories
        lines += [
            f'card_register = "{card_register}"', f'directory_pki = "{pki.path}"',
            f"renewal_window_days = {renewal_window_days}",
        ]  # fmt: skip
    if bio_enrolment is not None:  # remote enrolment: the register and the operators' keys
        lines += [
            f'bio_enrolment_register = "{bio_enrolment / "register.json"}"',
            f'enrolment_operators = "{bio_enrolment / "operators"}"',
        ]
    for project, bubble in bubbles.items():
        lines.append(f'[bubbles."{project}"]')
        lines.append(f'endpoint = "{host}:{ports[project]}"')
        if isinstance(bubble, RdpBubble):
            lines += ['kind = "rdp"', f'user = "{RDP_USER}"', f'sam_file = "{bubble.sam}"']
        else:
            lines += ['kind = "spice"', f'qmp_socket = "{bubble.qmp}"']
    (workdir / "broker.toml").write_text("\n".join(lines) + "\n")
    config = load_config(workdir / "broker.toml")
    server = construct(lambda: BrokerServer(config)) if construct else BrokerServer(config)
    server.start()
    try:
        yield BrokerEnv(
            server, server.url, workdir / "box.key", workdir / "box.pem", pki.path / "root.pem"
        )
    finally:
        server.stop()


def broker_settings(env: BrokerEnv) -> str:
    """The agent configuration's [credentials] and [identity] for ``env``."""
    if env.identity is not None:
        ident = env.identity
        return textwrap.dedent(f"""
            [identity]
            kind = "tpm"
            certificate = "{ident.certificate}"
            pkcs11_module = "{ident.pkcs11_module}"
            pin_file = "{ident.pin_file}"
            tpm_store = "{ident.tpm_store}"
            tcti = "{ident.tcti}"
            token_label = "{ident.token_label}"
            key_label = "{ident.key_label}"
            """)
    return textwrap.dedent(f"""
        [identity]
        kind = "development"
        key_file = "{env.box_key}"
        certificate = "{env.box_certificate}"
        """)
