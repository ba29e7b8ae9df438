"""A box and a centre in network namespaces of their own, with strongSwan in each.

Topology (nothing touches the host's own interfaces, routes or firewall)::

    box ns                                   centre ns
    eth0 192.0.2.2/24  ------- veth -------  uplink 192.0.2.1/24 (gateway 1)
    (firewall: sdbox.network.firewall)              192.0.2.3/24 (gateway 2)
                                             lo     10.20.0.1/16 (the centre network:
                                                    a TCP echo server, "the bubble")

Each namespace runs its own charon-systemd with its own strongswan.conf,
VICI and error-notify sockets, log, and a private /run (a mount namespace
with a directory bound over /run: charon's piddir). The box key is the
identity's TPM key (swtpm behind tpm2-abrmd, provisioned by
sdbox.identity.provision); charon reaches it through p11-kit's server.
The box also has a route to 10.20.0.0/16 through the centre, as a site LAN
might: only the tunnel and the firewall keep plaintext off it.

Everything is created here and removed here, by name and by pid, also when
a test fails.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sdbox.identity import IdentityConfig, read_pin
from sdbox.network import firewall, strongswan
from sdbox.network.events import TunnelEvent
from sdbox.network.site import SiteProfile, load_bytes
from sdbox.network.tunnel import (
    BoxTrust,
    Tunnel,
    Vici,
    gateway_targets,
    load_box,
)
from sdbox.trust.pki import Pki
from tests.cli import REPO_ROOT
from tests.integration.agent_env import RdpBubble
from tests.integration.delay_link import delayed_link
from tests.integration.session_servers import stop, tool_missing
from tests.integration.tpm_env import SoftwareTpm

CHARON = Path("/usr/sbin/charon-systemd")
BOX_OUTER = "192.0.2.2"
GATEWAYS = ("192.0.2.1", "192.0.2.3")
GATEWAY_IDS = ("gw1.centre.test", "gw2.centre.test")
CENTRE_NET = "10.20.0.0/16"
BUBBLE = "10.20.0.1"
ECHO_PORT = 7777
POOL = "10.99.0.0/24"
DATA_PLANE: strongswan.DataPlane = "libipsec"
T = TypeVar("T")

SITE = f"""
[[gateways]]
address = "{GATEWAYS[0]}"
identity = "{GATEWAY_IDS[0]}"

[[gateways]]
address = "{GATEWAYS[1]}"
identity = "{GATEWAY_IDS[1]}"

[[networks]]
cidr = "{CENTRE_NET}"
purpose = "bubbles"

[box]
interface = "eth0"
mode = "static"
address = "{BOX_OUTER}/24"
gateway = "{GATEWAYS[0]}"

[tunnel]
gateway_ca = "/unused/in/tests.pem"
dpd_delay_s = 2
rekey_time_s = 3600
"""


def network_missing() -> str | None:
    """Why the namespace tests cannot run here, if they cannot."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    missing = tool_missing("ip", "nft", "tcpdump", "unshare")
    if missing:
        return f"{missing} is not installed (make setup, network tier)"
    for path in (CHARON, strongswan.P11_KIT_CLIENT, strongswan.P11_KIT_SERVER):
        if not path.exists():
            return f"{path} is not installed (make setup, network tier)"
    probe = f"sdbt-probe-{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, timeout=10, check=False)
    if made.returncode != 0:
        return f"`ip netns add` fails here: {made.stderr.decode().strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=10, check=False)
    return None


def run(*argv: str, check: bool = True, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    """A command, its failure with its output."""
    done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr.strip() or done.stdout.strip()}")
    return done


@dataclass
class Netns:
    """A network namespace created here."""

    name: str

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run("ip", "-n", self.name, *args, check=check)

    def exec(self, *argv: str, check: bool = True, timeout: float = 20) -> subprocess.CompletedProcess[str]:
        return run("ip", "netns", "exec", self.name, *argv, check=check, timeout=timeout)

    def route_exists(self, address: str) -> bool:
        return self.ip("route", "get", address, check=False).returncode == 0


@contextlib.contextmanager
def namespaces(rtt_ms: float | None = None) -> Iterator[tuple[Netns, Netns]]:
    """The box and the centre, joined by a veth pair (or, with ``rtt_ms``, a delaying link)."""
    tag = f"{os.getpid()}-{secrets.token_hex(2)}"
    box, centre = Netns(f"sdbt-box-{tag}"), Netns(f"sdbt-centre-{tag}")
    made: list[Netns] = []
    link = contextlib.ExitStack()  # the delaying process, when there is one
    try:
        for ns in (box, centre):
            run("ip", "netns", "add", ns.name)
            made.append(ns)
            ns.ip("link", "set", "lo", "up")
        if rtt_ms is None:
            # created inside the box namespace, its peer moved straight into the centre's
            box.ip("link", "add", "eth0", "type", "veth", "peer", "name", "uplink", "netns",
                   centre.name)  # fmt: skip
        else:  # no netem in this kernel: two TAPs and a process that delays (delay_link.py)
            link.enter_context(delayed_link((box.name, "eth0"), (centre.name, "uplink"), rtt_ms))
        box.ip("addr", "add", f"{BOX_OUTER}/24", "dev", "eth0")
        box.ip("link", "set", "eth0", "up")
        # gateway 2 must outlive gateway 1's address (the subnet's primary) in the failover test
        centre.exec("sysctl", "-q", "-w", "net.ipv4.conf.all.promote_secondaries=1")
        centre.exec("sysctl", "-q", "-w", "net.ipv4.conf.default.promote_secondaries=1")
        for address in GATEWAYS:
            centre.ip("addr", "add", f"{address}/24", "dev", "uplink")
        centre.ip("link", "set", "uplink", "up")
        centre.ip("addr", "add", f"{BUBBLE}/16", "dev", "lo")
        # the site LAN could route to the centre network: the tunnel must be what is used
        box.ip("route", "add", CENTRE_NET, "via", GATEWAYS[0])
        centre.ip("route", "add", POOL, "via", BOX_OUTER)
        yield box, centre
    finally:
        link.close()
        for ns in reversed(made):
            run("ip", "netns", "del", ns.name, check=False)


class Charon:
    """charon-systemd in one namespace, with its own files."""

    def __init__(self, ns: Netns, workdir: Path, env: dict[str, str] | None = None,
                 pkcs11: dict[str, Path] | None = None) -> None:  # fmt: skip
        self.ns = ns
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "run").mkdir(exist_ok=True)
        self.paths = strongswan.CharonPaths(
            self.dir / "charon.vici", self.dir / "charon.enfy", self.dir / "charon.log"
        )
        self.conf = self.dir / "strongswan.conf"
        # this machine's kernel has no ESP (CONFIG_INET_ESP unset): charon's own data plane
        self.conf.write_text(strongswan.charon_conf(self.paths, pkcs11_modules=pkcs11,
                                                    data_plane=DATA_PLANE))  # fmt: skip
        self.env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
                    "STRONGSWAN_CONF": str(self.conf), **(env or {})}  # fmt: skip
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        for stale in (self.paths.vici_socket, self.paths.notify_socket):
            stale.unlink(missing_ok=True)
        out = (self.dir / "stdout").open("ab")
        # ip netns exec -> unshare -> sh -> charon: one pid, exec'd all the way
        self.process = subprocess.Popen(
            ["ip", "netns", "exec", self.ns.name, "unshare", "--mount", "--propagation", "private",
             "sh", "-c", 'mount --bind "$0" /run && exec "$@"', str(self.dir / "run"), str(CHARON)],
            env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        out.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"charon in {self.ns.name} exited: {self.log_tail()}")
            if self.paths.vici_socket.exists() and self.paths.notify_socket.exists():
                with contextlib.suppress(Exception), Vici(self.paths.vici_socket, timeout=2) as v:
                    v.version()
                    return
            time.sleep(0.1)
        raise RuntimeError(f"charon in {self.ns.name} did not come up: {self.log_tail()}")

    def kill(self) -> None:
        """As a crash would: SIGKILL, no goodbye to the peer."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)

    def vici(self) -> Vici:
        return Vici(self.paths.vici_socket)

    def log_tail(self, lines: int = 30) -> str:
        log = self.paths.log_file
        text = log.read_text(errors="replace") if log and log.exists() else ""
        out = self.dir / "stdout"
        text += out.read_text(errors="replace") if out.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class Centre:
    """The test PKI and what the gateway presents."""

    pki: Pki
    other_pki: Pki  # another organisation's CAs: a gateway certificate from it is refused
    gateway_keys: dict[str, ec.EllipticCurvePrivateKey] = field(default_factory=dict)

    def gateway_certificate(self, identity: str, *, not_after: datetime | None = None,
                            not_before: datetime | None = None,
                            pki: Pki | None = None) -> tuple[x509.Certificate, bytes]:  # fmt: skip
        key = ec.generate_private_key(ec.SECP384R1())
        cert = (pki or self.pki).issue_server(identity, key.public_key(), not_before=not_before,
                                               not_after=not_after)  # fmt: skip
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())  # fmt: skip
        return cert, key_pem


def expired_window() -> tuple[datetime, datetime]:
    now = datetime.now(UTC).replace(microsecond=0)
    return now - timedelta(days=30), now - timedelta(days=1)


@dataclass
class TunnelRig:
    """Everything of one test: namespaces, both charons, the box's tunnel, the echo server."""

    box: Netns
    centre_ns: Netns
    box_charon: Charon
    centre_charon: Charon
    centre: Centre
    profile: SiteProfile
    box_certificate: x509.Certificate
    workdir: Path
    tunnel: Tunnel | None = None
    events: list[TunnelEvent] = field(default_factory=list)
    charons_started_at: float = 0.0  # monotonic, before both charons were started
    _changed: threading.Condition = field(default_factory=threading.Condition)

    # -- the centre side ---------------------------------------------------

    def configure_gateways(self, certificates: dict[int, tuple[x509.Certificate, bytes]] | None = None,
                           crls: list[x509.CertificateRevocationList] | None = None) -> None:  # fmt: skip
        """Load the gateway side: both gateways (or those given), box CA, CRLs, pool."""
        pki = self.centre.pki
        chosen = certificates or {
            i: self.centre.gateway_certificate(GATEWAY_IDS[i - 1]) for i in (1, 2)
        }
        with self.centre_charon.vici() as vici:
            vici.load_certificate(strongswan.pem(pki.root.cert), authority=True)
            vici.load_certificate(strongswan.pem(pki.box_ca.cert), authority=True)
            for crl in crls if crls is not None else [pki.crl("root"), pki.crl("box-ca")]:
                vici.load_crl(strongswan.pem(crl))
            spec = None
            for index, (cert, key_pem) in chosen.items():
                vici.load_private_key(key_pem)
                spec = strongswan.GatewaySpec(
                    identity=GATEWAY_IDS[index - 1], certificate=cert, box_ca=pki.box_ca.cert,
                    networks=[CENTRE_NET], pool=POOL, local_addrs=[GATEWAYS[index - 1]],
                    dpd_delay_s=2,
                )  # fmt: skip
                vici.load_connections({f"gateway-{index}": strongswan.gateway_connection(spec)})
            assert spec is not None
            vici.load_pools(strongswan.gateway_pool(spec))

    # -- the box side ----------------------------------------------------------

    def configure_box(self, identity: IdentityConfig,
                      crls: list[x509.CertificateRevocationList] | None = None) -> None:  # fmt: skip
        """The box's trust (root, gateway CA, its CRLs), its TPM key and connections."""
        pki = self.centre.pki
        trust = BoxTrust(
            authorities=[strongswan.pem(pki.root.cert), strongswan.pem(pki.server_ca.cert)],
            crls=[strongswan.pem(c) for c in (crls if crls is not None
                                               else [pki.crl("root"), pki.crl("server-ca")])],
        )  # fmt: skip
        connections = strongswan.box_connections(
            self.profile, box_certificate=self.box_certificate, gateway_ca=pki.server_ca.cert
        )
        with self.box_charon.vici() as vici:
            load_box(vici, connections, trust, strongswan.TokenKey(key_id=b"\x01"),
                     read_pin(identity))  # fmt: skip

    def start_tunnel(self, *, retry_delay_s: float = 1.0, attempt_timeout_s: float = 15.0,
                     gateways: int | None = None) -> Tunnel:  # fmt: skip
        """The box's tunnel through the profile's gateways (the first ``gateways`` of them)."""
        addresses = [g.address for g in self.profile.gateways][:gateways]
        tunnel = Tunnel(
            self.box_charon.paths.vici_socket, self.box_charon.paths.notify_socket,
            gateway_targets(addresses),
            attempt_timeout_s=attempt_timeout_s, retry_delay_s=retry_delay_s,
            route_probe=self.box.route_exists,
        )  # fmt: skip
        tunnel.subscribe(self._record)
        self.tunnel = tunnel
        tunnel.start()
        return tunnel

    def _record(self, event: TunnelEvent) -> None:
        with self._changed:
            self.events.append(event)
            self._changed.notify_all()

    def wait_for(self, accept: Callable[[TunnelEvent], bool], timeout: float,
                 since: int = 0) -> TunnelEvent:  # fmt: skip
        """The first event from index ``since`` on that ``accept`` takes."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for event in self.events[since:]:
                    if accept(event):
                        return event
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = "; ".join(e.describe() for e in self.events[since:]) or "nothing"
                    raise AssertionError(f"no such tunnel event within {timeout} s; seen: {seen}\n"
                                         f"box charon:\n{self.box_charon.log_tail(15)}")  # fmt: skip
                self._changed.wait(left)

    # -- traffic ------------------------------------------------------------

    def echo(self, payload: bytes = b"ping through the tunnel", timeout: float = 3.0) -> bytes | None:
        """Send ``payload`` from the box to the bubble's echo server; what came back, or None."""
        script = ("import socket,sys\n"
                  f"s=socket.create_connection(('{BUBBLE}',{ECHO_PORT}),timeout={timeout})\n"
                  "data=sys.stdin.buffer.read(); s.sendall(data); s.shutdown(socket.SHUT_WR)\n"
                  "out=b''\n"
                  "while (chunk := s.recv(4096)): out += chunk\n"
                  "sys.stdout.buffer.write(out)\n")  # fmt: skip
        done = subprocess.run(
            ["ip", "netns", "exec", self.box.name, "python3", "-c", script],
            input=payload, capture_output=True, timeout=timeout + 5, check=False,
        )
        return done.stdout if done.returncode == 0 else None

    def load_firewall(self) -> None:
        rules = self.workdir / "box.nft"
        rules.write_text(firewall.ruleset(self.profile, DATA_PLANE))
        self.box.exec("nft", "-f", str(rules))


ECHO_SERVER = f"""
import socket, threading
server = socket.create_server(("{BUBBLE}", {ECHO_PORT}))
server.settimeout(300)  # a leftover echo server ends by itself
def serve(conn):
    with conn:
        conn.settimeout(10)
        while (data := conn.recv(4096)):
            conn.sendall(data)
while True:
    try:
        conn, _ = server.accept()
    except TimeoutError:
        break
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""


@contextlib.contextmanager
def tunnel_rig(workdir: Path, tpm: SoftwareTpm, identity: IdentityConfig, centre: Centre,
               box_certificate: x509.Certificate, *,
               rtt_ms: float | None = None) -> Iterator[TunnelRig]:  # fmt: skip
    """Namespaces, p11-kit's server for the TPM token, both charons and the echo server.

    ``rtt_ms``: the box's outer link delays every frame (half each way; delay_link.py).
    """
    profile = load_bytes(SITE.encode(), "site.toml")
    with contextlib.ExitStack() as stack:
        box, centre_ns = stack.enter_context(namespaces(rtt_ms))
        p11_dir = workdir / "p11"
        p11_dir.mkdir(mode=0o700, exist_ok=True)
        p11_socket = p11_dir / "box.sock"
        p11_log = stack.enter_context((workdir / "p11-kit.log").open("wb"))
        p11 = subprocess.Popen(
            strongswan.p11_kit_server_argv(p11_socket, identity.token_label),
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **tpm.environment()},
            stdout=p11_log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        stack.callback(stop, p11)
        for _ in range(100):
            if p11_socket.exists():
                break
            time.sleep(0.05)
        box_charon = Charon(box, workdir / "box",
                            env={"P11_KIT_SERVER_ADDRESS": f"unix:path={p11_socket}"},
                            pkcs11={"tpm": strongswan.P11_KIT_CLIENT})  # fmt: skip
        centre_charon = Charon(centre_ns, workdir / "centre")
        stack.callback(box_charon.stop)
        stack.callback(centre_charon.stop)
        charons_started_at = time.monotonic()
        box_charon.start()
        centre_charon.start()
        echo = subprocess.Popen(["ip", "netns", "exec", centre_ns.name, "python3", "-c", ECHO_SERVER],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)  # fmt: skip
        stack.callback(stop, echo)
        rig = TunnelRig(box, centre_ns, box_charon, centre_charon, centre, profile,
                        box_certificate, workdir, charons_started_at=charons_started_at)  # fmt: skip
        rig.load_firewall()  # as on a box: from boot, before the tunnel

        def stop_tunnel() -> None:
            if rig.tunnel is not None:
                rig.tunnel.stop()

        stack.callback(stop_tunnel)
        for _ in range(50):  # the echo server is listening
            if "7777" in centre_ns.exec("ss", "-ltn", check=False).stdout:
                break
            time.sleep(0.1)
        yield rig


_PROVISION = """
import dataclasses, json, sys
from pathlib import Path
from cryptography.hazmat.primitives import serialization
from sdbox.identity import IdentityConfig
from sdbox.identity.provision import provision_tpm
fields = json.loads(sys.argv[1])
config = IdentityConfig(**{k: Path(v) if k in PATHS and v else v for k, v in fields.items()})
public = provision_tpm(config).public_key
sys.stdout.write(public.public_bytes(serialization.Encoding.PEM,
                 serialization.PublicFormat.SubjectPublicKeyInfo).decode())
"""


def provision_box(identity: IdentityConfig, pki: Pki) -> x509.Certificate:
    """The box key in the TPM (created once per session) and its certificate.

    In a process of its own: libtpm2-pkcs11, once initialised in the test
    process (test_identity_tpm), lists a token created after that twice, and
    the tunnel's charon reaches the key through p11-kit's server anyway.
    """
    fields = {f.name: getattr(identity, f.name) for f in dataclasses.fields(identity)}
    paths = sorted(k for k, v in fields.items() if isinstance(v, Path))
    encoded = json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in fields.items()})
    done = subprocess.run(
        [sys.executable, "-c", f"PATHS = {paths!r}\n" + _PROVISION, encoded],
        capture_output=True, text=True, timeout=120, check=False, cwd=REPO_ROOT,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"provisioning the box key failed: {done.stderr[-2000:]}")
    public = serialization.load_pem_public_key(done.stdout.encode())
    assert isinstance(public, ec.EllipticCurvePublicKey)
    return pki.issue_box(public, box_id="box-0001")


def tcpdump(ns: Netns, interface: str, out: Path) -> subprocess.Popen[bytes]:
    """A capture on ``interface`` inside ``ns``, until stopped."""
    process = subprocess.Popen(
        ["ip", "netns", "exec", ns.name, "tcpdump", "-Z", "root", "--immediate-mode", "-i", interface, "-n", "-U",
         "-w", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    assert process.stderr is not None
    # tcpdump says "listening on ..." once the capture is open
    deadline = time.monotonic() + 10
    line = b""
    while time.monotonic() < deadline and b"listening on" not in line:
        line = process.stderr.readline()
    return process


def read_capture(path: Path) -> list[str]:
    """The packets of a capture, one line each."""
    done = run("tcpdump", "-n", "-r", str(path), check=False)
    return [line for line in done.stdout.splitlines() if line.strip()]


# -- for tests that run the agent, its broker and bubbles across the tunnel --------------

_CLONE_NEWNET = 0x40000000


def in_netns(ns: Netns, build: Callable[[], T]) -> T:
    """``build()`` run in a thread that entered ``ns``: the sockets it opens live there.

    A listening socket stays in the namespace it was created in, whichever
    thread serves it afterwards (the reference broker's, in the centre).
    """
    outcome: dict[str, object] = {}

    def enter_and_build() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(f"/run/netns/{ns.name}", os.O_RDONLY)
        try:
            if libc.setns(fd, _CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f"setns into {ns.name}")
        finally:
            os.close(fd)
        try:
            outcome["value"] = build()
        except BaseException as exc:  # handed to the caller's thread
            outcome["error"] = exc

    # a thread of its own: the namespace of the thread that built is never the test's again
    worker = threading.Thread(target=enter_and_build, name=f"in-{ns.name}")
    worker.start()
    worker.join()
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["value"]  # type: ignore[return-value]


def wait_for_listener(ns: Netns, port: int, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """Until something listens on TCP ``port`` inside ``ns`` (or ``process`` died)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server for port {port} in {ns.name} exited ({process.returncode})")
        if f":{port} " in ns.exec("ss", "-ltnH", check=False).stdout:
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port} in {ns.name}")


@contextlib.contextmanager
def centre_rdp_bubble(ns: Netns, workdir: Path, bubble_certificate: Path, bubble_key: Path,
                      display: str, port: int) -> Iterator[RdpBubble]:  # fmt: skip
    """freerdp-shadow-cli3 on the centre network (``BUBBLE``:``port``), reachable only through
    the tunnel (its SAM file is what the reference broker rewrites per credential)."""
    workdir.mkdir(parents=True, exist_ok=True)
    certs = workdir / "config" / "freerdp" / "shadow"
    certs.mkdir(parents=True, exist_ok=True)
    (certs / "shadow.crt").write_bytes(bubble_certificate.read_bytes())
    (certs / "shadow.key").write_bytes(bubble_key.read_bytes())
    (certs / "shadow.key").chmod(0o600)
    sam = workdir / "SAM"
    sam.write_text("")
    with (workdir / "shadow.log").open("wb") as out:
        process = subprocess.Popen(
            ["ip", "netns", "exec", ns.name, "freerdp-shadow-cli3", f"/port:{port}",
             f"/bind-address:{BUBBLE}", f"/sam-file:{sam}", "-may-interact", "/log-level:INFO"],
            env={"DISPLAY": display, "HOME": str(workdir), "XDG_CONFIG_HOME": str(workdir / "config"),
                 "PATH": os.environ["PATH"]},
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        wait_for_listener(ns, port, process)
        yield RdpBubble(process, port, sam)
    finally:
        stop(process)
