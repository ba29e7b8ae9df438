"""Unit hardening: `systemd-analyze security --offline=yes` on every unit the package ships.

Runs on the unit files of the work tree (no package build, a second each), so
a unit edit that loosens a service fails `make test` at once; test_deb.py
checks the same ceilings on the built package. `--offline=yes` reads the
file only: it works without systemd as PID 1, as on these machines.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEBIAN = ROOT / "debian"
DEBIAN_PCSCD_UNIT = Path("/lib/systemd/system/pcscd.service")

# Exposure ceilings (0 = locked down, 10 = open) and why each is what it is.
# The measured values are in docs/image.md ("Unit exposure").
EXPOSURE_CEILING: dict[str, tuple[float, str]] = {
    "sdbox-agent.service": (
        2.0,
        "root with CAP_SETUID/SETGID only (the session supervisor starts each client's reaper "
        "as sdbox-session; the reaper makes the home and kills the group), host network "
        "(broker, bubbles), no PrivateUsers= (the sdbox-session uid); about 1.3 once session "
        "clients are transient units and the agent leaves root",
    ),
    "sdbox-greeter.service": (
        1.5,
        "cage needs the seat (DRM, input devices) through logind and a Wayland socket the "
        "session user shares; otherwise an unprivileged user with no network",
    ),
    "sdbox-crl-refresh.service": (
        1.5,
        "an unprivileged job that fetches CRLs over the network (tunnel) and writes one "
        "cache directory",
    ),
    "sdbox-renewal-due.service": (
        1.0,
        "an unprivileged job that only marks what is due: no network, nothing writable "
        "but its state",
    ),
    "sdbox-outer-network.service": (
        2.0,
        "root (it writes networkd's and iwd's directories, and networkctl reloads networkd "
        "over the system bus), file capabilities only, no network of its own beyond the bus",
    ),
    "sdbox-fleet.service": (
        1.6,
        "root without capabilities (the TPM key store, the journal, rauc install and the reboot "
        "into an update go through files and D-Bus), network to the fleet service through the "
        "tunnel only, no PrivateUsers= (root's files)",
    ),
    "pcscd.service": (
        4.5,
        "Debian's pcscd with sdbox's drop-in: root with its capabilities, host network "
        "namespace (udev hotplug is netlink) and USB devices (readers); was 9.6 as packaged",
    ),
}


def unit_files() -> dict[str, str]:
    """Every service the package ships, by installed name, as the text systemd would load."""
    units = {
        path.name.removeprefix("sdbox."): path.read_text()
        for path in sorted(DEBIAN.glob("sdbox.*.service"))
    }
    if DEBIAN_PCSCD_UNIT.is_file():  # our drop-in on Debian's unit, as systemd merges it
        drop_in = (DEBIAN / "pcscd" / "pcscd.service.conf").read_text()
        units["pcscd.service"] = DEBIAN_PCSCD_UNIT.read_text() + "\n" + drop_in
    return units


def exposure(unit: Path) -> tuple[float, str]:
    """The overall exposure of ``unit`` and the full report."""
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze is missing: install the `systemd` package (make setup)")
    done = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(unit)],
        capture_output=True, text=True, timeout=60, check=False,
        env={"PATH": "/usr/bin:/bin", "SYSTEMD_COLORS": "0", "LANG": "C.UTF-8"},
    )  # fmt: skip
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d)", done.stdout)
    assert found, f"systemd-analyze gave no figure:\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
    return float(found[1]), done.stdout


def test_every_shipped_service_has_a_stated_ceiling() -> None:
    assert set(unit_files()) <= set(EXPOSURE_CEILING), (
        "a new unit needs a ceiling and its reason in EXPOSURE_CEILING"
    )
    assert "sdbox-agent.service" in unit_files()


@pytest.mark.parametrize("name", sorted(EXPOSURE_CEILING))
def test_unit_exposure_stays_under_its_ceiling(name: str, tmp_path: Path) -> None:
    units = unit_files()
    if name not in units:
        pytest.skip(f"{DEBIAN_PCSCD_UNIT} is not installed here (package pcscd)")
    unit = tmp_path / name
    unit.write_text(units[name])
    level, report = exposure(unit)
    ceiling, why = EXPOSURE_CEILING[name]
    failing = "\n".join(line for line in report.splitlines() if line.startswith("✗"))
    assert level <= ceiling, f"{name}: exposure {level} > {ceiling} ({why}); open items:\n{failing}"


def test_agent_keeps_the_settings_its_exposure_depends_on() -> None:
    # the figure can stay under the ceiling while one key item goes: name them
    agent = unit_files()["sdbox-agent.service"]
    settings = dict.fromkeys(
        (
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "ProtectProc=invisible",
            "ProcSubset=pid",
            "UMask=0077",
            "PrivateDevices=yes",
            "BindPaths=-/dev/tpmrm0 -/dev/bus/usb",
            "DeviceAllow=/dev/tpmrm0 rw",
            "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK",
            "SystemCallFilter=@system-service",
            "IPAddressDeny=any",
            "CapabilityBoundingSet=CAP_SETUID CAP_SETGID",
        )
    )
    lines = set(agent.splitlines())
    assert [s for s in settings if s not in lines] == []
    # only the TPM and the USB sensor among devices, only loopback until the image's
    # drop-in adds the tunnel
    assert sorted(x for x in lines if x.startswith("DeviceAllow=")) == [
        "DeviceAllow=/dev/tpmrm0 rw",
        "DeviceAllow=char-usb_device rw",
    ]
    assert [x for x in lines if x.startswith("IPAddressAllow=")] == ["IPAddressAllow=localhost"]
    # the reaper (sdbox-session) makes the client's home: the agent changes no file's owner
    allowed = [x for x in lines if x.startswith("SystemCallFilter=") and "~" not in x]
    assert not any("chown" in x for x in allowed), allowed


def test_no_core_dump_can_hold_a_secret() -> None:
    # the agent (PIN relayed, one-time credential) and the greeter (PIN typed) dump no core,
    # and the image writes none for any process (test_no_secrets.py checks none appeared)
    units = unit_files()
    for name in ("sdbox-agent.service", "sdbox-greeter.service"):
        assert "LimitCORE=0" in units[name].splitlines(), name
    sysctl = (ROOT / "bootimage/rootfs/etc/sysctl.d/90-sdbox-hardening.conf").read_text()
    assert "kernel.core_pattern = |/bin/false" in sysctl.splitlines()
    assert "fs.suid_dumpable = 0" in sysctl.splitlines()
