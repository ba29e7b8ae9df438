"""The outer network set on the greeter, applied by the real systemd-networkd in network namespaces.

Topology (nothing touches the host's interfaces): the box's namespace has
``eth0``, a veth whose peer ``lan0`` sits in the "local network" namespace,
where a second systemd-networkd is the DHCP server (192.0.2.1/24, leases from
.100). Each networkd runs in a mount namespace of its own: a private
``/run/systemd``, the test's directories bound over its configuration
directories, and sysfs read-only (networkd then does not wait for a udev
this machine does not run). The box's networkd reads the image's
``80-sdbox-wired.network`` and whatever :func:`install` put in
``/run/systemd/network``, as on the box; where the box runs
``networkctl reload`` (no system bus here), the test restarts it.

Wi-Fi is not here: this kernel has no ``mac80211_hwsim`` (no modules at
all), so iwd's side is tested as files (tests/unit/test_outer_network.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sdbox.agent.api import NetworkStatus
from sdbox.agent.outer_network import DIRECTORY, PENDING, LinkFacts, NetworkStore, diagnose, install
from sdbox.network.boot import NETWORKD_FILE, networkd_config
from sdbox.network.outer import NetworkSettingsError
from sdbox.network.site import load_bytes
from tests.cli import REPO_ROOT
from tests.integration.session_servers import stop

NETWORKD = Path("/lib/systemd/systemd-networkd")
IMAGE_WIRED = REPO_ROOT / "bootimage/rootfs/etc/systemd/network/80-sdbox-wired.network"
SITE = load_bytes(
    b'[[gateways]]\naddress = "198.51.100.7"\nidentity = "gw1.centre.example"\n'
    b'[[networks]]\ncidr = "10.20.0.0/16"\n[box]\ninterface = "eth0"\n',
    "site.toml",
)
SERVER = """[Match]
Name=lan0
[Network]
Address=192.0.2.1/24
DHCPServer=yes
[DHCPServer]
PoolOffset=100
PoolSize=20
EmitRouter=yes
"""
# networkd in a namespace: a private /run/systemd, our directories as its configuration
SCRIPT = """set -e
mount -t tmpfs tmpfs /run/systemd
mkdir -p /run/systemd/netif /run/systemd/network
chown systemd-network:systemd-network /run/systemd/netif
mount --bind "$1" /run/systemd/network
mount --bind "$2" /etc/systemd/network
mount -o remount,ro /sys
exec "$3"
"""


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "network namespaces need root"
    if not NETWORKD.exists() or shutil.which("unshare") is None:
        return "systemd-networkd or unshare is not installed"
    return None


pytestmark = pytest.mark.skipif(_missing() is not None, reason=str(_missing()))


def _run(*argv: str) -> str:
    done = subprocess.run(list(argv), capture_output=True, text=True, timeout=20, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip()}")
    return done.stdout


@dataclass
class Side:
    """A namespace with its own systemd-networkd."""

    ns: str
    run_dir: Path  # its /run/systemd/network
    etc_dir: Path  # its /etc/systemd/network
    log: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                ["ip", "netns", "exec", self.ns, "unshare", "-m", "--propagation", "private",
                 "sh", "-c", SCRIPT, "networkd", str(self.run_dir), str(self.etc_dir), str(NETWORKD)],
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)
            self.process = None

    def link(self, interface: str = "eth0") -> LinkFacts:
        """What the agent's read_link sees in this namespace."""
        code = (
            "import dataclasses, json, sys; from sdbox.agent.outer_network import read_link; "
            f"print(json.dumps(dataclasses.asdict(read_link({interface!r}))))"
        )
        out = _run("ip", "netns", "exec", self.ns, "env", f"PYTHONPATH={REPO_ROOT}",
                   sys.executable, "-c", code)  # fmt: skip
        facts = json.loads(out)
        return LinkFacts(facts["exists"], facts["carrier"], tuple(facts["addresses"]),
                         facts["default_route"])  # fmt: skip


@contextlib.contextmanager
def lan(tmp_path: Path) -> Iterator[tuple[Side, Side]]:
    """The box and its local network (with a DHCP server), joined by a veth pair."""
    tag = f"{os.getpid()}-{secrets.token_hex(2)}"
    sides: list[Side] = []
    for role in ("box", "lan"):
        base = tmp_path / role
        for sub in ("run", "etc"):
            (base / sub).mkdir(parents=True)
        sides.append(Side(f"sdbd-{role}-{tag}", base / "run", base / "etc", base / "networkd.log"))
    box, local = sides
    made: list[Side] = []
    try:
        for side in sides:
            _run("ip", "netns", "add", side.ns)
            made.append(side)
        _run("ip", "-n", box.ns, "link", "add", "eth0", "type", "veth", "peer", "name", "lan0",
             "netns", local.ns)  # fmt: skip
        shutil.copy(IMAGE_WIRED, box.etc_dir)  # the image's wired DHCP
        (local.etc_dir / "10-lan.network").write_text(SERVER)
        yield box, local
    finally:
        for side in sides:
            side.stop()
        for side in reversed(made):
            subprocess.run(["ip", "netns", "del", side.ns], capture_output=True, timeout=20, check=False)


def _until(side: Side, wanted: NetworkStatus, timeout: float = 15.0) -> LinkFacts:
    deadline = time.monotonic() + timeout
    while True:
        facts = side.link()
        if diagnose(facts, None) is wanted or time.monotonic() > deadline:
            assert diagnose(facts, None) is wanted, f"{facts} after {timeout:.0f} s: {side.log.read_text()[-1500:]}"
            return facts
        time.sleep(0.3)


def test_wired_dhcp_then_static_then_back(tmp_path: Path) -> None:
    store = NetworkStore(tmp_path / "state", SITE)
    with lan(tmp_path) as (box, local):
        # no cable: the veth's peer is down
        box.start()
        _until(box, NetworkStatus.NO_LINK)
        # a cable, but nobody answers DHCP
        _run("ip", "-n", local.ns, "link", "set", "lan0", "up")
        _until(box, NetworkStatus.NO_ADDRESS)
        # the local network's DHCP server answers: the image's default works
        local.start()
        facts = _until(box, NetworkStatus.LOCAL_ONLY)
        assert facts.addresses[0].startswith("192.0.2.1")  # .100 and up: a lease
        # the researcher types a static address on the greeter
        store.set({"mode": "static", "address": "192.0.2.50/24", "gateway": "192.0.2.1"})
        install(tmp_path / "state" / DIRECTORY / PENDING, box.run_dir, tmp_path / "iwd")
        box.stop()  # on the box: networkctl reload (no system bus here)
        _run("ip", "-n", box.ns, "addr", "flush", "dev", "eth0")
        box.start()
        facts = _until(box, NetworkStatus.LOCAL_ONLY)
        assert facts.addresses == ("192.0.2.50/24",)
        route = _run("ip", "-n", box.ns, "-j", "route", "show", "default")
        assert json.loads(route)[0]["gateway"] == "192.0.2.1"
        # a static address whose router is not on its network: refused, the box unchanged
        with pytest.raises(NetworkSettingsError, match="not another address"):
            store.set({"mode": "static", "address": "192.0.2.50/24", "gateway": "198.51.100.1"})
        assert sorted(p.name for p in box.run_dir.glob("*.network")) == ["05-sdbox-outer.network"]
        # a reboot (the agent again, the same data partition) keeps the static address
        assert NetworkStore(tmp_path / "state", SITE).settings.address == "192.0.2.50/24"
        # the settings forgotten (a factory reset): our file goes, the image's applies again
        store.reset()
        install(tmp_path / "state" / DIRECTORY / PENDING, box.run_dir, tmp_path / "iwd")
        assert not list(box.run_dir.glob("*.network"))
        box.stop()
        _run("ip", "-n", box.ns, "addr", "flush", "dev", "eth0")
        box.start()
        facts = _until(box, NetworkStatus.LOCAL_ONLY)
        assert facts.addresses[0] != "192.0.2.50/24"
        # the local router vanishes: an address, no route out
        _run("ip", "-n", box.ns, "route", "del", "default")
        assert diagnose(box.link(), None) is NetworkStatus.NO_ROUTE


SITE_STATIC = load_bytes(
    b'[[gateways]]\naddress = "198.51.100.7"\nidentity = "gw1.centre.example"\n'
    b'[[networks]]\ncidr = "10.20.0.0/16"\n'
    b'[box]\ninterface = "eth0"\nmode = "static"\naddress = "192.0.2.60/24"\ngateway = "192.0.2.1"\n',
    "site.toml",
)


def _restart(box: Side) -> None:
    """What `networkctl reload` + `reconfigure` do on the box (no system bus here)."""
    box.stop()
    _run("ip", "-n", box.ns, "addr", "flush", "dev", "eth0")
    box.start()


def _until_address(box: Side, wanted: str, timeout: float = 15.0) -> tuple[str, ...]:
    deadline = time.monotonic() + timeout
    while True:
        addresses = box.link().addresses
        if any(a.startswith(wanted) for a in addresses) or time.monotonic() > deadline:
            assert any(a.startswith(wanted) for a in addresses), (
                f"{addresses} after {timeout:.0f} s: {box.log.read_text()[-1500:]}"
            )
            return addresses
        time.sleep(0.3)


def test_the_researchers_setting_wins_over_the_site_profile_on_the_outer_link(tmp_path: Path) -> None:
    """The site profile fixes 192.0.2.60 (sdbox-site's 10- file); the greeter's choice wins."""
    state = tmp_path / "state"
    store = NetworkStore(state, SITE_STATIC)
    with lan(tmp_path) as (box, local):
        # what sdbox-site writes at boot, next to the image's DHCP file
        (box.run_dir / NETWORKD_FILE.name).write_text(networkd_config(SITE_STATIC))
        _run("ip", "-n", local.ns, "link", "set", "lan0", "up")
        local.start()
        box.start()
        assert _until_address(box, "192.0.2.60/") == ("192.0.2.60/24",)
        # a fixed address typed on the greeter: the site's no longer applies to eth0
        store.set({"mode": "static", "address": "192.0.2.50/24", "gateway": "192.0.2.1"})
        install(state / DIRECTORY / PENDING, box.run_dir, tmp_path / "iwd")
        _restart(box)
        assert _until_address(box, "192.0.2.50/") == ("192.0.2.50/24",)
        # DHCP chosen (at home, where the site's fixed address means nothing): a lease
        store.set({"mode": "dhcp"})
        install(state / DIRECTORY / PENDING, box.run_dir, tmp_path / "iwd")
        _restart(box)
        addresses = _until_address(box, "192.0.2.1")  # .100 and up: the DHCP server's pool
        assert not any(a.startswith(("192.0.2.60/", "192.0.2.50/")) for a in addresses)
        # forgotten (factory reset): the site profile's fixed address again
        store.reset()
        install(state / DIRECTORY / PENDING, box.run_dir, tmp_path / "iwd")
        _restart(box)
        assert _until_address(box, "192.0.2.60/") == ("192.0.2.60/24",)
        assert sorted(p.name for p in box.run_dir.glob("*.network")) == [NETWORKD_FILE.name]
