"""The outer network on the box: the researcher's settings kept, installed, and looked at.

The agent keeps what the greeter set (:mod:`sdbox.network.outer` checks it)
in ``network/outer.json`` on its state directory, which is on the data
partition (``/var``): it survives a reboot and an A/B update (the root slots
do not hold it) and a factory reset (the data partition wiped, or
:meth:`NetworkStore.reset`) clears it. The file is mode 0600: it holds the
Wi-Fi passphrase, which is never logged and never read back over D-Bus.

The agent runs without the right to configure the network (its unit has no
``CAP_NET_ADMIN`` and a read-only ``/run/systemd``): it renders
systemd-networkd's and iwd's files into ``network/pending/``, and
``sdbox network apply`` (root, ``sdbox-outer-network.service``, started at
boot before systemd-networkd and by a path unit when the directory changes)
installs them with :func:`install`.

:func:`diagnose` says where the problem is, from what the outer interface
shows (:func:`read_link`) and what the tunnel last reported.
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import logging
import os
import shutil
import socket
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from sdbox.agent.api import NetworkStatus
from sdbox.network.events import REFUSALS, Reason, TunnelEvent, TunnelState
from sdbox.network.outer import (
    Mode,
    NetworkSettingsError,
    OuterSettings,
    check,
    from_fields,
    iwd_files,
    networkd_files,
)
from sdbox.network.site import SiteProfile
from sdbox.process import CommandFailed, run

_log = logging.getLogger("sdbox.agent.network")

DIRECTORY = "network"  # under the agent's state directory
SETTINGS_FILE = "outer.json"
PENDING = "pending"  # rendered files: networkd/ and iwd/, for `sdbox network apply`
# where `sdbox network apply` puts them on the box
NETWORKD_DIR = Path("/run/systemd/network")
IWD_DIR = Path("/var/lib/iwd")
_OURS = ".sdbox-installed"  # the list of files apply wrote last, to remove stale ones


class NetworkStore:
    """The researcher's outer-network settings: checked, kept, rendered for installation."""

    def __init__(self, state_dir: Path | None, site: SiteProfile | None) -> None:
        self.directory = state_dir / DIRECTORY if state_dir is not None else None
        self.site = site
        self.interface = site.box.interface if site is not None else "eth0"
        self.settings = self._load()

    def link_interface(self, sys_net: Path | None = None) -> str:
        """The link the box reaches its network by: the wired one, or with Wi-Fi chosen, the radio.

        The wireless interface is whichever the kernel says is one (a ``wireless``
        directory in sysfs): udev names the NUC's ``wlp0s20f3``, QEMU's none.
        """
        if self.settings.mode is not Mode.WIFI:
            return self.interface
        root = sys_net or SYS_NET
        radios = sorted(p.name for p in root.glob("*") if (p / "wireless").is_dir())
        return radios[0] if radios else "wlan0"

    def set(self, values: Mapping[str, str]) -> OuterSettings:
        """Check ``values`` (the greeter's fields) and keep them; nothing kept when refused."""
        settings = check(from_fields(dict(values), self.settings), self.site)
        if self.directory is not None:
            self._write(settings)
        self.settings = settings
        _log.info("outer network set: %s", settings.mode.value)  # never the passphrase
        return settings

    def reset(self) -> None:
        """Forget the settings (factory reset): the site's (or the image's) network applies again."""
        self.settings = OuterSettings()
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self._render(None)

    def _load(self) -> OuterSettings:
        if self.directory is None:
            return OuterSettings()
        path = self.directory / SETTINGS_FILE
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(stored, dict):
                raise ValueError("not an object")
            values = {str(k): str(v) for k, v in stored.items() if k != "passphrase_set"}
            return check(from_fields(values), self.site)
        except FileNotFoundError:
            return OuterSettings()
        except (OSError, ValueError, NetworkSettingsError) as exc:
            # a damaged file, or settings the site profile no longer allows: the default holds
            _log.warning("ignoring the stored network settings %s: %s", path, exc)
            return OuterSettings()

    def _write(self, settings: OuterSettings) -> None:
        assert self.directory is not None
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        _atomic_write(self.directory / SETTINGS_FILE, json.dumps(settings.stored()) + "\n", 0o600)
        self._render(settings)

    def _render(self, settings: OuterSettings | None) -> None:
        """Stage the files for ``settings`` (None: none of ours, after a reset)."""
        assert self.directory is not None
        pending = self.directory / PENDING
        staged = self.directory / (PENDING + ".new")
        shutil.rmtree(staged, ignore_errors=True)
        for sub, files in (
            ("networkd", networkd_files(settings, self.interface) if settings else {}),
            ("iwd", iwd_files(settings) if settings else {}),
        ):
            (staged / sub).mkdir(parents=True, mode=0o700)
            for name, text in files.items():
                _atomic_write(staged / sub / name, text, 0o600)
        shutil.rmtree(pending, ignore_errors=True)
        staged.rename(pending)  # the apply step sees the old set or the new one, whole


def _atomic_write(path: Path, text: str, mode: int) -> None:
    partial = path.with_name(path.name + ".partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())
    partial.replace(path)


def install(pending: Path, networkd_dir: Path = NETWORKD_DIR, iwd_dir: Path = IWD_DIR) -> list[Path]:
    """Put the rendered files where networkd and iwd read them; remove what we put there before.

    Returns the files written. Files of others (the image's, iwd's own) are never touched.
    """
    written: list[Path] = []
    for sub, target in (("networkd", networkd_dir), ("iwd", iwd_dir)):
        ours = target / _OURS
        before = set(ours.read_text(encoding="utf-8").split()) if ours.exists() else set()
        names = sorted(p.name for p in (pending / sub).glob("*")) if (pending / sub).is_dir() else []
        if not names and not before:
            # nothing to put there and nothing of ours to take away: leave the directory
            # alone (a box without iwd has no /var/lib/iwd, and /var is read-only here)
            continue
        target.mkdir(parents=True, exist_ok=True, mode=0o755 if sub == "networkd" else 0o700)
        for name in before - set(names):
            (target / name).unlink(missing_ok=True)
        for name in names:
            # networkd's files are not secret (the passphrase is only in iwd's, 0600)
            mode = 0o644 if sub == "networkd" else 0o600
            _atomic_write(target / name, (pending / sub / name).read_text(encoding="utf-8"), mode)
            written.append(target / name)
        _atomic_write(ours, "\n".join(names) + "\n", 0o644)
    return written


def reload_networkd(interface: str) -> None:
    """Have systemd-networkd read its files again and set the interface up anew (on the box)."""
    run(["networkctl", "reload"], what="networkctl reload", timeout=30)
    try:
        run(["networkctl", "reconfigure", interface], what="networkctl reconfigure", timeout=30)
    except CommandFailed as exc:  # an interface that is not there (Wi-Fi only, no cable)
        _log.info("%s", exc)


# -- where the problem is ------------------------------------------------------------


@dataclass(frozen=True)
class LinkFacts:
    """What the outer interface shows."""

    exists: bool
    carrier: bool
    addresses: tuple[str, ...]  # ADDRESS/PREFIX, global scope
    default_route: bool


SYS_NET = Path("/sys/class/net")
PROC_NET = Path("/proc/self/net")  # the agent's unit has ProcSubset=pid: /proc/self is there
_SIOCGIFADDR = 0x8915
_SIOCGIFNETMASK = 0x891B
_RTF_REJECT = 0x0200  # the kernel's "unreachable" default routes (on lo) are no way out


def _ipv4(interface: str) -> str | None:
    """The interface's IPv4 address/prefix (SIOCGIFADDR: no netlink, no process)."""
    request = struct.pack("256s", interface.encode()[:15])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            address = fcntl.ioctl(sock.fileno(), _SIOCGIFADDR, request)[20:24]
            mask = fcntl.ioctl(sock.fileno(), _SIOCGIFNETMASK, request)[20:24]
        except OSError:  # no address (EADDRNOTAVAIL), or no such interface
            return None
    prefix = bin(int.from_bytes(mask, "big")).count("1")
    return f"{socket.inet_ntoa(address)}/{prefix}"


def _ipv6(interface: str, proc_net: Path) -> list[str]:
    """Global IPv6 addresses (/proc/net/if_inet6: address, index, prefix, scope, flags, name)."""
    try:
        lines = (proc_net / "if_inet6").read_text().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        fields = line.split()
        if len(fields) == 6 and fields[5] == interface and fields[3] == "00":  # global scope
            address = ipaddress.IPv6Address(bytes.fromhex(fields[0]))
            found.append(f"{address}/{int(fields[2], 16)}")
    return found


def _default_route(interface: str, proc_net: Path) -> bool:
    try:
        for line in (proc_net / "route").read_text().splitlines()[1:]:
            fields = line.split()
            if len(fields) > 2 and fields[0] == interface and fields[1] == "00000000":
                return True
        for line in (proc_net / "ipv6_route").read_text().splitlines():
            fields = line.split()  # dst, dst len, src, src len, next hop, metric, ..., flags, dev
            if (
                len(fields) == 10 and fields[9] == interface and fields[0] == "0" * 32
                and fields[1] == "00" and not int(fields[8], 16) & _RTF_REJECT
            ):  # fmt: skip
                return True
    except OSError:
        return False
    return False


def read_link(
    interface: str, sys_net: Path = SYS_NET, proc_net: Path = PROC_NET
) -> LinkFacts:
    """The outer interface's carrier, addresses and whether a default route leaves through it.

    Files and one ioctl, no `ip` process: the greeter reads the agent's
    properties every few seconds, and spawning `ip` twice per look doubled
    the agent's wake-ups at the picker (benchmarks/bench_idle.py).
    """
    link = sys_net / interface
    if not link.exists():
        return LinkFacts(False, False, (), False)
    try:
        carrier = (link / "carrier").read_text().strip() == "1"
    except OSError:  # EINVAL while the interface is down
        carrier = False
    v4 = _ipv4(interface)
    addresses = tuple([v4] if v4 else []) + tuple(_ipv6(interface, proc_net))
    return LinkFacts(True, carrier, addresses, _default_route(interface, proc_net))


def diagnose(link: LinkFacts, tunnel: TunnelEvent | None) -> NetworkStatus:
    """Where the problem is, the most basic first: link, address, route, then the tunnel's word."""
    if not link.exists or not link.carrier:
        return NetworkStatus.NO_LINK
    if not link.addresses:
        return NetworkStatus.NO_ADDRESS
    if not link.default_route:
        return NetworkStatus.NO_ROUTE
    if tunnel is None:
        return NetworkStatus.LOCAL_ONLY
    if tunnel.state is TunnelState.UP:
        return NetworkStatus.CONNECTED
    if tunnel.state is TunnelState.REFUSED or tunnel.reason in REFUSALS:
        return NetworkStatus.GATEWAY_REFUSED
    if tunnel.reason is Reason.NO_NETWORK:
        return NetworkStatus.NO_ROUTE
    if tunnel.reason is Reason.GATEWAY_UNREACHABLE:
        # a route and an address, and IKE never answered: UDP 500/4500 is dropped on the
        # way (hotel and guest networks do it), or the gateway itself is down
        return NetworkStatus.UDP_BLOCKED
    if tunnel.state is TunnelState.CONNECTING:
        return NetworkStatus.CONNECTING
    return NetworkStatus.TUNNEL_DOWN
