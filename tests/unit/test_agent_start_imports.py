"""The agent's start loads what it runs: every module imported before READY is seconds of a box's boot under emulation."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from sdbox._cli import _COMMAND_MODULES, cli

# what `sdbox agent run` must not import before it is ready: other command families'
# heavy modules (the card emulator, the PKI tools) and numpy (the capture-quality measure)
NOT_AT_START = ("numpy", "sdbox.smartcard.emulator.profiles", "sdbox.trust.pki", "sdbox._cli.emulate")


def test_the_agent_command_imports_neither_numpy_nor_other_command_families() -> None:
    probe = (
        "import sys\n"
        "from sdbox._cli import cli\n"
        "cli.commands['agent']\n"
        "import sdbox.agent.service\n"
        f"print(' '.join(m for m in {NOT_AT_START!r} if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                          check=True)  # fmt: skip
    assert done.stdout.split() == []


def test_every_command_family_is_still_reachable() -> None:
    assert list(cli.commands) == sorted(name for _, name in _COMMAND_MODULES)
    assert all(cli.commands[name].name == name for name in cli.commands)


# --- the other commands on the way to the agent (the image's boot units) ----------------

SITE = """
[[gateways]]
address = "192.0.2.1"
identity = "gw1.centre.test"

[[networks]]
cidr = "10.20.0.0/16"
purpose = "broker"

[box]
interface = "enp0s4"
mode = "static"
address = "192.0.2.10/24"
gateway = "192.0.2.1"
"""
# heavy libraries none of the early boot commands uses: X.509 (cryptography), the card,
# TPM and D-Bus transports, the session launchers (asyncio), the biometric maths
EARLY_UNUSED = ("cryptography", "numpy", "smartcard", "pkcs11", "dbus_fast", "vici", "asyncio",
                "sdbox.session.base", "sdbox.trust.validate")  # fmt: skip


def _loaded_after(argv: list[str], unwanted: tuple[str, ...]) -> tuple[str, list[str]]:
    """Run `sdbox ARGV` in a fresh interpreter: its output, and which of ``unwanted`` it loaded."""
    probe = (
        "import sys\n"
        "from sdbox._cli.errors import run_guarded\n"
        "from sdbox._cli import cli\n"
        f"sys.argv = ['sdbox', *{argv!r}]\n"
        "code = run_guarded(cli)\n"
        f"print('LOADED', *sorted({{m.split('.')[0] if not m.startswith('sdbox') else m for m in sys.modules}} & set({unwanted!r})))\n"
        "sys.exit(code)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                          check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    output, _, loaded = done.stdout.rpartition("LOADED")
    return output, loaded.split()


def test_the_site_commands_load_neither_x509_nor_any_transport(tmp_path: Path) -> None:
    site = tmp_path / "site.toml"
    site.write_text(SITE)
    rules, loaded = _loaded_after(["site", "firewall", str(site)], EARLY_UNUSED)
    assert "table inet sdbox" in rules
    assert loaded == []
    network, loaded = _loaded_after(["site", "networkd", str(site)], EARLY_UNUSED)
    assert "Address=192.0.2.10/24" in network
    assert loaded == []


def test_the_charon_conf_and_the_clock_floor_load_neither_x509_nor_any_transport(
    tmp_path: Path,
) -> None:
    out = tmp_path / "tunnel" / "strongswan.conf"
    _, loaded = _loaded_after(["tunnel", "charon-conf", "--out", str(out)], EARLY_UNUSED)
    assert "pkcs11" in out.read_text()
    assert loaded == []
    config = tmp_path / "agent.toml"
    config.write_text(f'[trust]\ncrl_dir = "{tmp_path / "crl"}"\nbuild_time = "2001-01-01T00:00:00+00:00"\n')
    said, loaded = _loaded_after(["tunnel", "clock-floor", "--config", str(config)], EARLY_UNUSED)
    assert "clock at or past the trust floor 2001-01-01T00:00:00+00:00" in said
    assert loaded == []


def test_the_agent_with_a_libfprint_sensor_loads_numpy_at_the_first_capture_not_at_start() -> None:
    probe = (
        "import sys\n"
        "from sdbox.agent.adapters import make_sensor\n"
        "from sdbox.agent.config import SensorConfig\n"
        "sensor = make_sensor(SensorConfig(kind='libfprint'))\n"
        "print(type(sensor).__name__, 'numpy' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                          check=True)  # fmt: skip
    assert done.stdout.split() == ["LibfprintSensor", "False"]
