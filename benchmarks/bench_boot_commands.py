"""The `sdbox` commands on a box's way to READY: modules, import time and wall time (issue 26).

Each command the image's units run between the sealed ``/var`` and the agent's
READY starts Python; under QEMU TCG that costs 10 to 20 times what it costs
here, so the host's figures say where a box's boot goes. For each command,
in a fresh interpreter (``python -m sdbox``, as ``/usr/bin/sdbox`` runs it):

- ``modules``: how many modules ``-X importtime`` reports;
- ``import_ms``: the sum of their own import times (median of ``RUNS``);
- ``wall_ms``: the whole process, start to exit (median of ``RUNS``).

``tunnel run`` and ``agent run`` need a box (a certificate, charon, the system
bus): here they stop at the first thing missing, after their imports, which
is what is measured (``exit`` 1; every other command exits 0). ``site-setup``
is the sdbox-site script's own work in one interpreter (nft, systemctl and the
mount left out).
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RUNS = 7
ROOT = Path(__file__).resolve().parents[1]
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
# sdbox-site's script with its external programs recorded and its paths under argv[1]
SITE_SETUP = """
import subprocess, sys
from pathlib import Path
root = Path(sys.argv[1])
source = Path(sys.argv[2]).read_text().removesuffix("sys.exit(main())\\n")
script = {"__name__": "site_setup"}
exec(compile(source, sys.argv[2], "exec"), script)
class Systemctl:
    returncode = 0
    def __init__(self, argv, **kwargs): pass
    def communicate(self, timeout=None): return "", ""
fake = type("subprocess", (), {"Popen": Systemctl, "DEVNULL": -3, "PIPE": -1,
                               "TimeoutExpired": subprocess.TimeoutExpired})
for name in ("SITE", "CATALOGUE", "CERTIFICATE", "NETWORKD", "CHARON_CONF"):
    script[name] = root / script[name].relative_to("/")
script.update(CONFIG_PARTITION=root.parent / "config", MOUNT=root.parent / "config", subprocess=fake,
              run=lambda *a, **k: (0, "", ""), say=lambda message: None)
sys.exit(script["main"]())
"""


def _commands(work: Path) -> dict[str, list[str]]:
    sdbox = [sys.executable, "-m", "sdbox"]
    site, config = str(work / "config" / "site.toml"), str(work / "agent.toml")
    return {
        "site-setup": [sys.executable, "-c", SITE_SETUP, str(work / "box"),
                       str(ROOT / "bootimage/rootfs/usr/libexec/sdbox/site-setup")],
        "site firewall": [*sdbox, "site", "firewall", site, "--enrolment"],
        "site networkd": [*sdbox, "site", "networkd", site],
        "tunnel clock-floor": [*sdbox, "tunnel", "clock-floor", "--config", config],
        "tunnel charon-conf": [*sdbox, "tunnel", "charon-conf", "--out", str(work / "charon.conf")],
        "tunnel run": [*sdbox, "tunnel", "run", "--site", site, "--config", config],
        "agent run": [*sdbox, "agent", "run", "--config", config, "--bus",
                      f"unix:path={work / 'no-bus'}"],
    }  # fmt: skip


def _measure(argv: list[str], cwd: Path) -> dict[str, float]:
    imports: list[float] = []
    walls: list[float] = []
    modules = code = 0
    for _ in range(RUNS):
        done = subprocess.run([argv[0], "-X", "importtime", *argv[1:]], cwd=cwd,
                              capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
        rows = [line.split("|")[0] for line in done.stderr.splitlines()
                if line.startswith("import time:") and "self [us]" not in line]  # fmt: skip
        modules = len(rows)
        imports.append(sum(int(row.split(":")[1]) for row in rows) / 1000)
        started = time.perf_counter()
        code = subprocess.run(argv, cwd=cwd, capture_output=True, timeout=120, check=False).returncode
        walls.append((time.perf_counter() - started) * 1000)
    return {"modules": modules, "import_ms": round(statistics.median(imports), 1),
            "wall_ms": round(statistics.median(walls), 1), "exit": code}  # fmt: skip


def run() -> dict[str, object]:
    """Measure and print each boot-path command."""
    figures: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="sdbox-boot-") as tmp:
        work = Path(tmp)
        (work / "config").mkdir()
        (work / "config" / "site.toml").write_text(SITE)
        (work / "agent.toml").write_text(
            f'[trust]\ncrl_dir = "{work / "crl"}"\n'
            f'[identity]\ncertificate = "{work / "box.pem"}"\n'
            '[sensor]\nkind = "libfprint"\n'
        )
        print(f"{'command':20} {'modules':>8} {'imports':>10} {'wall':>10} exit  (median of {RUNS})")
        for name, argv in _commands(work).items():
            figures[name] = found = _measure(argv, work)
            print(f"{name:20} {found['modules']:8.0f} {found['import_ms']:7.1f} ms "
                  f"{found['wall_ms']:7.1f} ms {found['exit']:4.0f}")  # fmt: skip
    return figures


if __name__ == "__main__":
    run()
