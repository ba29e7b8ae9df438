"""sdbox-site's boot script (bootimage/rootfs/usr/libexec/sdbox/site-setup) in one interpreter.

The script runs as root on the box; here its external programs (nft, systemctl)
are recorded instead of run and its paths moved under the test's directory. What
it gives nft, networkd and charon must be what the `sdbox` commands print, and
anything wrong must still close the firewall.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any, ClassVar

import pytest

from sdbox.network import boot, firewall, strongswan
from sdbox.network.site import load_bytes

ROOT = Path(__file__).resolve().parents[2]
SITE_SETUP = ROOT / "bootimage/rootfs/usr/libexec/sdbox/site-setup"
CHARON_UNIT = ROOT / "bootimage/rootfs/usr/lib/systemd/system/sdbox-charon.service"

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

[enrolment]
url = "https://192.0.2.5:8443"
"""


class _Systemctl:
    """subprocess.Popen for `systemctl set-property`, recorded; ``fail`` makes it exit 1."""

    calls: ClassVar[list[list[str]]] = []
    fail: ClassVar[bool] = False

    def __init__(self, argv: list[str], **_kwargs: Any) -> None:
        self.calls.append(argv)
        self.returncode = 1 if self.fail else 0

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        return "", "Unit sdbox-x.service not found." if self.fail else ""


class _Box:
    """The script, its paths under ``root``, its programs recorded."""

    def __init__(self, root: Path, site: str | None) -> None:
        source = SITE_SETUP.read_text().removesuffix("sys.exit(main())\n")
        assert source != SITE_SETUP.read_text(), "site-setup no longer ends with sys.exit(main())"
        self.script: dict[str, Any] = {"__name__": "site_setup"}
        exec(compile(source, str(SITE_SETUP), "exec"), self.script)  # our boot script, its last line cut
        self.nft: list[str] = []
        _Systemctl.calls = []
        under = {name: root / self.script[name].relative_to("/")
                 for name in ("SITE", "CATALOGUE", "CERTIFICATE", "NETWORKD", "CHARON_CONF")}  # fmt: skip
        config = root / "config"
        config.mkdir()
        if site is not None:
            (config / "site.toml").write_text(site)
        namespace = type("subprocess", (), {"Popen": _Systemctl, "DEVNULL": subprocess.DEVNULL,
                                            "PIPE": subprocess.PIPE,
                                            "TimeoutExpired": subprocess.TimeoutExpired})  # fmt: skip
        self.script.update(under, CONFIG_PARTITION=config, MOUNT=config, run=self._run,
                           subprocess=namespace)  # fmt: skip

    def _run(self, argv: list[str], stdin: str | None = None, timeout: int = 60) -> tuple[int, str, str]:
        if argv[:2] == ["nft", "-f"]:
            self.nft.append(stdin or "")
        return 0, "", ""

    def main(self) -> int:
        code: int = self.script["main"]()
        return code

    def path(self, name: str) -> Path:
        found: Path = self.script[name]
        return found


def _sdbox(*argv: str) -> str:
    done = subprocess.run([sys.executable, "-m", "sdbox", *argv], capture_output=True, text=True,
                          timeout=120, check=True)  # fmt: skip
    return done.stdout


def test_one_interpreter_loads_the_firewall_and_writes_what_the_commands_print(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    box = _Box(tmp_path, SITE)
    assert box.main() == 0
    site = box.path("SITE")
    assert box.nft == [_sdbox("site", "firewall", str(site), "--enrolment")]
    assert box.path("NETWORKD").read_text() == _sdbox("site", "networkd", str(site))
    charon = box.path("CHARON_CONF")
    _sdbox("tunnel", "charon-conf", "--out", str(tmp_path / "cli" / "strongswan.conf"))
    assert charon.read_text() == (tmp_path / "cli" / "strongswan.conf").read_text()
    assert charon.stat().st_mode & 0o777 == 0o600
    assert sorted(_Systemctl.calls) == [
        ["systemctl", "set-property", "--runtime", unit, "IPAddressAllow=10.20.0.0/16 192.0.2.1"]
        for unit in ("sdbox-agent.service", "sdbox-fleet.service")
    ]
    said = capsys.readouterr().out
    assert "sdbox-site: firewall loaded: IKE/ESP to the gateways, the centre's networks only " \
        "through the tunnel; https://192.0.2.5:8443 open until the box is enrolled" in said
    assert "sdbox-site: outer network: enp0s4, static" in said
    assert "WARNING" not in said


def test_an_enrolled_box_gets_no_opening_and_a_failed_allow_list_is_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    box = _Box(tmp_path, SITE)
    certificate = box.path("CERTIFICATE")
    certificate.parent.mkdir(parents=True)
    certificate.write_text("enrolled")
    _Systemctl.fail = True
    try:
        assert box.main() == 0
    finally:
        _Systemctl.fail = False
    profile = load_bytes(SITE.encode(), "site.toml")
    assert box.nft == [firewall.ruleset(profile)]
    said = capsys.readouterr().out
    assert "open until the box is enrolled" not in said
    assert "WARNING: the agent's IP allow-list was not extended (Unit sdbox-x.service not found.): " \
        "it reaches no bubble" in said
    assert "WARNING: the fleet reporter's IP allow-list was not extended" in said


def test_a_profile_that_does_not_validate_closes_the_firewall_with_sdboxs_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    box = _Box(tmp_path, SITE.replace('mode = "static"', 'mode = "carrier-pigeon"'))
    assert box.main() == 1
    assert box.nft == [box.script["CLOSED"]]
    said = capsys.readouterr().out
    assert "sdbox-site: FAILED: sdbox: " in said
    assert "mode" in said
    assert said.rstrip().endswith("everything but loopback is dropped")
    assert not box.path("NETWORKD").exists()
    assert not box.path("CHARON_CONF").exists()


def test_sdbox_that_cannot_be_imported_closes_the_firewall(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    box = _Box(tmp_path, SITE)
    monkeypatch.setitem(sys.modules, "sdbox.network", None)  # what a broken install looks like
    assert box.main() == 1
    assert box.nft == [box.script["CLOSED"]]
    assert "FAILED: sdbox cannot be imported (" in capsys.readouterr().out


def test_charon_reads_the_file_the_script_writes_and_starts_no_python_of_its_own() -> None:
    script: dict[str, Any] = {"__name__": "site_setup"}
    source = SITE_SETUP.read_text().removesuffix("sys.exit(main())\n")
    exec(compile(source, str(SITE_SETUP), "exec"), script)
    unit = CHARON_UNIT.read_text()
    assert script["CHARON_CONF"] == boot.CHARON_CONF
    assert f"AssertPathExists={boot.CHARON_CONF}" in unit
    assert f"Environment=STRONGSWAN_CONF={boot.CHARON_CONF}" in unit
    assert "sdbox" not in "".join(line for line in unit.splitlines() if line.startswith("Exec"))
    assert strongswan.P11_KIT_CLIENT.name in strongswan.charon_conf(
        boot.CHARON_PATHS, pkcs11_modules={boot.P11_MODULE_NAME: strongswan.P11_KIT_CLIENT}
    )
