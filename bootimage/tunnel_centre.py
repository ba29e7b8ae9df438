"""The centre behind a tap device, for `make image-test`: a namespace, a gateway, the broker.

The booted image brings its tunnel up at boot to this centre (docs/tunnel.md,
"At boot"). Nothing touches the host's own network: QEMU runs inside the
namespace (``ip netns exec``), so its tap device exists only there::

    guest (QEMU)                     namespace sdbox-imgtun-<pid>
    enp0s4 192.0.2.10/24 ---- tap ---- sdboxtap 192.0.2.1/24  the gateway (IKE, gw1.centre.test)
      (static, from the site              192.0.2.5/24  the enrolment endpoint (broker, TCP 8443)
       profile flashed into      lo       10.20.0.1/16  the centre network: the broker again,
       the config area)                                  reached by the box only through the tunnel

- the gateway is the reference responder (:func:`sdbox.network.strongswan.gateway_connection`):
  charon-systemd with its own strongswan.conf, VICI socket and a private /run; it
  accepts boxes certified by the image's box-identity CA, revocation checked, and
  hands out inner addresses from 10.99.0.0/24. This host's kernel has no ESP, so
  the gateway runs charon's own data plane (kernel-libipsec, ESP in UDP); the
  guest's Debian kernel has ESP and runs the kernel's;
- the broker (`sdbox broker run`) listens on both addresses with one TLS
  certificate for both; an nftables counter in the namespace counts the box's
  connections to the enrolment endpoint (a second boot must make none).

Everything is removed by :meth:`TunnelCentre.stop`: processes by pid, then the
namespace (which takes the tap, the addresses and the counter with it).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from centre import publish_crls  # bootimage/centre.py
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sdbox.bootimage import tools
from sdbox.bootimage.errors import BootImageError
from sdbox.broker.enrolment import EnrolmentTokens
from sdbox.network import strongswan
from sdbox.network.tunnel import Vici
from sdbox.trust.pki import CA_NAMES, Pki

CHARON = Path("/usr/sbin/charon-systemd")
TAP = "sdboxtap"
GATEWAY = "192.0.2.1"
GATEWAY_ID = "gw1.centre.test"
ENROLMENT = "192.0.2.5"
BOX = "192.0.2.10/24"
CENTRE_NET = "10.20.0.0/16"
BROKER = "10.20.0.1"
BROKER_PORT = 8443
POOL = "10.99.0.0/24"
GUEST_INTERFACE = "enp0s4"  # virtio-net at PCI 00:04.0 (addr=0x4 below)
MAC = "52:54:00:5d:b0:01"

SITE = f"""# the boot test's site (bootimage/tunnel_centre.py)
[[gateways]]
address = "{GATEWAY}"
identity = "{GATEWAY_ID}"

[[networks]]
cidr = "{CENTRE_NET}"
purpose = "broker"

[box]
interface = "{GUEST_INTERFACE}"
mode = "static"
address = "{BOX}"
gateway = "{GATEWAY}"

[enrolment]
url = "https://{ENROLMENT}:{BROKER_PORT}"
"""


def missing() -> str | None:
    """Why the tunnel centre cannot run here, or None."""
    if os.geteuid() != 0:
        return "network namespaces and tap devices need root"
    for path in (CHARON, Path("/dev/net/tun")):
        if not path.exists():
            return f"{path} is missing (make setup, tier network)"
    return None


def _ip(*args: str) -> None:
    tools.run(["ip", *args], what=f"ip {' '.join(args)}", timeout=30)


@dataclass
class TunnelCentre:
    """The namespace and what runs in it."""

    name: str
    work: Path
    pki: Pki
    register: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    charon_paths: strongswan.CharonPaths | None = None
    made: bool = False
    broker_extra: str = ""  # more of the broker's configuration (make image-e2e: its bubbles)

    # -- what the boot test uses --------------------------------------------------

    def qemu_prefix(self) -> list[str]:
        """QEMU runs in the namespace: its tap device is created there."""
        return ["ip", "netns", "exec", self.name]

    def netdev(self) -> list[str]:
        """QEMU arguments: a virtio NIC on the namespace's tap device."""
        return [
            "-netdev", f"tap,id=net0,ifname={TAP},script=no,downscript=no",
            # romfile= (none): a box boots from its disk, never from the network
            "-device", f"virtio-net-pci,netdev=net0,mac={MAC},addr=0x4,romfile=",
        ]  # fmt: skip

    def connection_count(self) -> int:
        """The box's TCP connections to the enrolment endpoint so far (nftables counter)."""
        listing = subprocess.run(
            ["ip", "netns", "exec", self.name, "nft", "list", "table", "inet", "sdbox-test"],
            capture_output=True, text=True, timeout=30, check=False,
        ).stdout  # fmt: skip
        found = re.search(r"counter packets (\d+)", listing)
        return int(found.group(1)) if found else 0

    def tokens(self) -> dict[str, dict[str, object]]:
        """The broker's token register (digests, box ids, when used)."""
        data: dict[str, dict[str, object]] = json.loads(self.register.read_text())["tokens"]
        return data

    def add_token(self, box_id: str) -> bytes:
        """A one-time enrolment token for ``box_id``, registered with the broker."""
        return EnrolmentTokens(self.register).add(box_id).encode()

    def gateway_log(self, lines: int = 40) -> str:
        """The tail of the gateway's charon log."""
        log = self.work / "gateway" / "charon.log"
        text = log.read_text(errors="replace") if log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def gateway_sas(self) -> list[str]:
        """The gateway's IKE SAs, one line each."""
        assert self.charon_paths is not None
        with Vici(self.charon_paths.vici_socket) as vici:
            return [f"{sa.connection} {sa.state} {sa.remote_host} ({sa.remote_id}) inner "
                    f"{','.join(sa.inner_addresses) or '-'} children {','.join(sa.children) or '-'}"
                    for sa in vici.list_sas()]  # fmt: skip

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        """The namespace, the gateway and the broker (removed by :meth:`stop` on any failure)."""
        try:
            self._network()
            self._gateway()
            self._broker()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Everything, by pid and then by name."""
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=15)
        self.procs.clear()
        if self.made:
            subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=30,
                           check=False)  # fmt: skip
            self.made = False

    def _spawn(self, argv: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            proc = subprocess.Popen(["ip", "netns", "exec", self.name, *argv], env=env,
                                    stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)  # fmt: skip
        self.procs.append(proc)
        return proc

    def _network(self) -> None:
        _ip("netns", "add", self.name)
        self.made = True
        _ip("-n", self.name, "link", "set", "lo", "up")
        _ip("-n", self.name, "addr", "add", f"{BROKER}/16", "dev", "lo")
        _ip("-n", self.name, "tuntap", "add", "dev", TAP, "mode", "tap")
        _ip("-n", self.name, "addr", "add", f"{GATEWAY}/24", "dev", TAP)
        _ip("-n", self.name, "addr", "add", f"{ENROLMENT}/24", "dev", TAP)
        _ip("-n", self.name, "link", "set", TAP, "up")
        rules = (f"table inet sdbox-test {{ chain input {{ type filter hook input priority 0; "
                 f"policy accept; ip daddr {ENROLMENT} tcp dport {BROKER_PORT} ct state new "
                 "counter; }; }\n")  # fmt: skip
        tools.run(["ip", "netns", "exec", self.name, "nft", "-f", "-"], what="the connection counter",
                  timeout=30, input=rules.encode())  # fmt: skip

    def _gateway(self) -> None:
        gw = self.work / "gateway"
        (gw / "run").mkdir(parents=True, exist_ok=True)
        paths = strongswan.CharonPaths(gw / "charon.vici", gw / "charon.enfy", gw / "charon.log")
        conf = gw / "strongswan.conf"
        # this host's kernel has no ESP: charon's own data plane (ESP in UDP)
        conf.write_text(strongswan.charon_conf(paths, data_plane="libipsec"))
        env = {**tools.BASE_ENV, "STRONGSWAN_CONF": str(conf)}
        # a private /run (charon's piddir) in a mount namespace of its own
        self._spawn(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                     'mount --bind "$0" /run && exec "$@"', str(gw / "run"), str(CHARON)],
                    gw / "stdout.log", env)  # fmt: skip
        self.charon_paths = paths
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(Exception), Vici(paths.vici_socket, timeout=2) as vici:
                vici.version()
                break
            if time.monotonic() > deadline or self.procs[-1].poll() is not None:
                raise BootImageError("the gateway's charon did not come up", detail=self.gateway_log())
            time.sleep(0.2)
        key = ec.generate_private_key(ec.SECP384R1())
        cert = self.pki.issue_server(GATEWAY_ID, key.public_key())
        spec = strongswan.GatewaySpec(identity=GATEWAY_ID, certificate=cert,
                                      box_ca=self.pki.box_ca.cert, networks=[CENTRE_NET],
                                      pool=POOL, local_addrs=[GATEWAY])  # fmt: skip
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())  # fmt: skip
        with Vici(paths.vici_socket) as vici:
            vici.load_certificate(strongswan.pem(self.pki.root.cert), authority=True)
            vici.load_certificate(strongswan.pem(self.pki.box_ca.cert), authority=True)
            for ca in ("root", "box-ca"):
                vici.load_crl(strongswan.pem(self.pki.crl(ca)))
            vici.load_private_key(key_pem)
            vici.load_connections({"boxes": strongswan.gateway_connection(spec)})
            vici.load_pools(strongswan.gateway_pool(spec))

    def _broker(self) -> None:
        work = self.work / "broker"
        work.mkdir(parents=True, exist_ok=True)
        pem = serialization.Encoding.PEM
        tls_key = ec.generate_private_key(ec.SECP256R1())
        key_file = work / "broker.key"
        key_file.touch(mode=0o600)
        key_file.write_bytes(tls_key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption()))  # fmt: skip
        # one certificate for both of the broker's addresses
        tls_cert = self.pki.issue_server(ENROLMENT, tls_key.public_key(), also=[BROKER])
        server_ca = self.pki.server_ca
        (work / "broker.pem").write_bytes(tls_cert.public_bytes(pem) + server_ca.cert.public_bytes(pem))
        (work / "intermediates.pem").write_bytes(
            b"".join(self.pki.authority(ca).cert.public_bytes(pem) for ca in CA_NAMES[1:])
        )
        publish_crls(self.pki, work / "crl")
        (work / "broker.toml").write_text("\n".join([
            f'listen = "0.0.0.0:{BROKER_PORT}"',
            f'tls_certificate = "{work / "broker.pem"}"',
            f'tls_key = "{key_file}"',
            f'anchors = "{self.pki.path / "root.pem"}"',
            f'intermediates = "{work / "intermediates.pem"}"',
            f'crl_dir = "{work / "crl"}"',
            f'build_time = "{self.pki.root.cert.not_valid_before_utc.isoformat()}"',
            f'enrolment_tokens = "{self.register}"',
            f'box_ca = "{self.pki.path}"',
        ]) + "\n" + self.broker_extra)  # fmt: skip
        env = {**tools.BASE_ENV, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
        proc = self._spawn([sys.executable, "-m", "sdbox", "broker", "run", "--config",
                            str(work / "broker.toml")], work / "broker.log", env)  # fmt: skip
        deadline = time.monotonic() + 60
        while f":{BROKER_PORT}" not in subprocess.run(
            ["ip", "netns", "exec", self.name, "ss", "-ltn"], capture_output=True, text=True,
            timeout=30, check=False,
        ).stdout:  # fmt: skip
            if time.monotonic() > deadline or proc.poll() is not None:
                raise BootImageError("the broker did not start in the centre namespace",
                                     detail=tools.tail((work / "broker.log").read_text()))  # fmt: skip
            time.sleep(0.3)


def start(work: Path, pki_dir: Path, broker_extra: str = "") -> TunnelCentre:
    """A running centre in a namespace of its own (call :meth:`TunnelCentre.stop` when done);
    ``broker_extra``: TOML appended to the broker's configuration."""
    work.mkdir(parents=True, exist_ok=True)
    register = work / "enrolment-tokens.json"
    centre = TunnelCentre(f"sdbox-imgtun-{os.getpid()}", work, Pki.open(pki_dir), register,
                          broker_extra=broker_extra)  # fmt: skip
    centre.start()
    return centre


def tunnel_checks(
    report: dict[str, Any], centre: TunnelCentre, box_id: str, which: str
) -> list[tuple[str, bool, str]]:
    """What one boot's report says of the tunnel: (check, ok, detail) each."""
    tunnel = report.get("tunnel") or {}
    state = tunnel.get("state") or {}
    units = report.get("units") or {}
    agent_ready = int((units.get("sdbox-agent.service") or {}).get("ActiveEnterTimestampMonotonic") or 0)
    up_at = float(state.get("first_up_monotonic_s") or 0.0)
    took = state.get("first_up_after_s")
    said = " / ".join(tunnel.get("tunnel_journal") or [])[-300:]
    probe = tunnel.get("centre_probe") or {}
    esp = [line for line in tunnel.get("xfrm_states") or [] if "proto esp" in line]
    encap = [line for line in tunnel.get("xfrm_states") or [] if "encap type" in line]
    try:
        sas = centre.gateway_sas()
    except Exception as exc:  # a gateway that died is a finding, not a crash
        sas = [f"the gateway did not answer: {exc}"]
    mine = [sa for sa in sas if f"sdbox box {box_id}" in sa]
    up = state.get("first_up_gateway") == GATEWAY and state.get("gateway_identity") == GATEWAY_ID
    return [
        (f"{which}: the site profile was read from the config area and the firewall loaded",
         bool(tunnel.get("site_profile")) and bool(tunnel.get("firewall_loaded")),
         " / ".join(tunnel.get("site_journal") or [])[-300:]),
        (f"{which}: the tunnel came up at boot through {GATEWAY_ID} ({GATEWAY})",
         up, f"{state.get('description')}; {said}" + ("" if up else " | charon: " + " / ".join(
             (tunnel.get("charon_journal") or [])[-8:] + (tunnel.get("p11_kit_journal") or [])[-3:]))),
        (f"{which}: ... before the agent was ready",
         0 < up_at * 1e6 < agent_ready,
         f"tunnel up at {up_at:.1f} s ({took} s after sdbox-tunnel started), agent ready at "
         f"{agent_ready / 1e6:.1f} s (guest monotonic clock)"),
        (f"{which}: the centre network ({BROKER}:{BROKER_PORT}) is reached, only through the tunnel",
         probe.get("connected") is True, json_text(probe)),
        (f"{which}: ESP runs in the guest kernel (XFRM states, UDP-encapsulated to libipsec)",
         len(esp) >= 2, " | ".join(esp + encap)[:400] or "no ESP state in the kernel"),
        (f"{which}: the enrolment opening is closed (the firewall's enrolment chain is empty)",
         tunnel.get("firewall_loaded") is True and tunnel.get("enrolment_chain") == [],
         json_text(tunnel.get("enrolment_chain"))),
        (f"{which}: the gateway holds the box's SA, authenticated as its enrolled identity",
         bool(mine), " | ".join(sas) or "no SA at the gateway"),
    ]  # fmt: skip


def json_text(value: object) -> str:
    """A value as compact JSON, for a check's detail."""
    return json.dumps(value)
