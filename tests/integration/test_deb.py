"""`make deb`: the Debian package builds, lintian is clean, and what it ships works.

The build (about a minute) runs once per test session through the same script
as `make deb`.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.integration.test_security import EXPOSURE_CEILING

ROOT = Path(__file__).resolve().parents[2]
PRIVATE = "usr/lib/sdbox/python"

# the first test also waits for the package build
pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The freshly built package, unpacked."""
    done = subprocess.run(
        ["bash", "scripts/build-deb.sh"],
        cwd=ROOT, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert done.returncode == 0, f"make deb failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert "lintian clean" in done.stdout
    debs = sorted((ROOT / "build" / "deb").glob("sdbox_*_amd64.deb"))
    assert len(debs) == 1, debs
    unpacked = tmp_path_factory.mktemp("deb")
    subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(unpacked)], check=True, timeout=120)
    return unpacked


def test_package_ships_units_policy_rules_and_the_command(package: Path) -> None:
    for path in (
        "usr/bin/sdbox",
        "lib/systemd/system/sdbox-agent.service",
        "lib/systemd/system/sdbox-greeter.service",
        "lib/systemd/system/sdbox-renewal-due.timer",
        "lib/systemd/system/sdbox-crl-refresh.timer",
        "lib/systemd/system/sdbox-fleet.service",
        "lib/systemd/system/pcscd.socket.d/sdbox.conf",
        "usr/share/dbus-1/system.d/org.sdbox.Agent1.conf",
        "lib/udev/rules.d/70-sdbox.rules",
        "usr/lib/sysusers.d/sdbox.conf",
        "etc/pam.d/sdbox-greeter",
        "usr/share/sdbox/hwtests/plugin.py",  # the suite, as data (docs/hwtests.md)
        "usr/share/sdbox/hwtests/conftest.py",
    ):
        assert (package / path).is_file(), f"the package lacks {path}"
    # ... and not as a top-level package of the pinned set
    assert not (package / PRIVATE / "hwtests").exists()
    agent = (package / "lib/systemd/system/sdbox-agent.service").read_text()
    assert "Type=notify" in agent
    assert re.search(r"^WatchdogSec=\d+", agent, re.M)
    assert "ExecStart=/usr/bin/sdbox agent run" in agent


def test_pinned_set_is_the_one_shipped(package: Path) -> None:
    # cryptography must be the pinned one, not Debian's 38 (no x509.verification)
    shipped = dict(
        p.name.removesuffix(".dist-info").lower().split("-", 1)
        for p in (package / PRIVATE).glob("*.dist-info")
    )
    assert shipped.get("cryptography") == "46.0.7"
    assert "sdbox" in shipped


def test_shipped_command_runs_from_the_private_tree(package: Path) -> None:
    # the launcher as installed, pointed at the unpacked tree instead of /usr/lib
    launcher = (package / "usr/bin/sdbox").read_text()
    assert launcher.startswith("#!/usr/bin/python3 -I\n")
    script = launcher.replace("/usr/lib/sdbox/python", str(package / PRIVATE))
    env = {"PATH": "/usr/bin:/bin", "HOME": str(package)}
    done = subprocess.run(
        ["/usr/bin/python3", "-I", "-B", "-c", script, "--version"],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "sdbox, version" in done.stdout
    probe = (
        f"import sys; sys.path.insert(0, {str(package / PRIVATE)!r}); "
        "import cryptography.x509.verification, smartcard.scard, numpy, dbus_fast; print('ok')"
    )
    done = subprocess.run(
        ["/usr/bin/python3", "-I", "-B", "-c", probe],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )  # fmt: skip
    assert done.stdout.strip() == "ok", done.stderr[-2000:]


@pytest.mark.parametrize("unit", sorted(u for u in EXPOSURE_CEILING if u.startswith("sdbox-")))
def test_unit_exposure_stays_under_its_ceiling(package: Path, unit: str) -> None:
    done = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", f"--root={package}",
         str(package / "lib/systemd/system" / unit)],
        capture_output=True, text=True, timeout=60, check=False,
        env={"PATH": "/usr/bin:/bin", "SYSTEMD_COLORS": "0"},
    )  # fmt: skip
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d)", done.stdout)
    assert found, done.stdout[-2000:] + done.stderr[-2000:]
    assert float(found[1]) <= EXPOSURE_CEILING[unit][0], done.stdout


def test_bus_policy_is_accepted_by_dbus_daemon(package: Path, tmp_path: Path) -> None:
    # a private bus that includes the policy: dbus-daemon refuses a malformed one
    config = tmp_path / "bus.conf"
    config.write_text(
        '<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"'
        ' "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">\n'
        f"<busconfig><type>system</type><listen>unix:path={tmp_path}/bus</listen>"
        "<auth>EXTERNAL</auth>"
        f"<include>{package}/usr/share/dbus-1/system.d/org.sdbox.Agent1.conf</include>"
        "</busconfig>\n"
    )
    proc = subprocess.Popen(
        ["dbus-daemon", f"--config-file={config}", "--nofork", "--print-address"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        address = proc.stdout.readline()
        assert address.startswith("unix:"), proc.stderr.read() if proc.stderr else ""
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_python_is_debians(package: Path) -> None:
    # the box runs /usr/bin/python3 (3.11): wheels of another ABI would not load
    tags = {p.name.split(".")[1] for p in (package / PRIVATE).rglob("*.cpython-*.so")}
    assert tags == {"cpython-311-x86_64-linux-gnu"}, tags
