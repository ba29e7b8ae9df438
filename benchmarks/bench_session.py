"""Session start, kill and close times on loopback (RDP and SPICE), with the client versions.

- start -> connected: ``start()`` until the client reports the protocol's own
  "connected" (RDP: CONNECTION_STATE_ACTIVE; SPICE: main channel opened);
- kill -> gone: ``kill()`` until the client is reaped and its group swept
  (an upper bound of "process gone");
- close -> gone: the same for ``close()`` (SIGTERM, SIGKILL after 2 s).

Targets (issue 5): RDP start -> connected <= 1.0 s, kill -> gone <= 300 ms.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from sdbox.session import (
    DEFAULT_SESSION_USER,
    Credential,
    Display,
    Endpoint,
    RdpSession,
    Session,
    SessionSpec,
    SpiceSession,
)
from tests.integration.session_servers import (
    RDP_PASSWORD,
    RDP_USER,
    SPICE_PASSWORD,
    SPICE_SUBJECT,
    make_server_cert,
    shadow_server,
    spice_server,
    xvfb,
)

ROUNDS = 5


def _version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except OSError as exc:
        return f"unavailable ({exc})"
    lines = [line for line in (out.stdout + out.stderr).splitlines() if "version" in line.lower()]
    return lines[0].strip() if lines else "unknown"


async def _measure(make: type[Session], spec: SessionSpec, run_as: str | None) -> dict[str, float]:
    timings: dict[str, list[float]] = {"connect_s": [], "kill_s": [], "close_s": []}
    for round_ in range(ROUNDS * 2):
        session = make(spec, run_as=run_as)
        started = time.perf_counter()
        await session.start()
        await session.wait_connected()
        timings["connect_s"].append(time.perf_counter() - started)
        stopping = time.perf_counter()
        if round_ % 2 == 0:
            await session.kill()
            timings["kill_s"].append(time.perf_counter() - stopping)
        else:
            await session.close()
            timings["close_s"].append(time.perf_counter() - stopping)
    return {
        f"{name}_{stat}": round(func(values), 4)
        for name, values in timings.items()
        for stat, func in (("median", statistics.median), ("max", max))
    }


def run() -> dict[str, object]:
    """Measure both protocols on loopback; print and return the figures."""
    run_as = DEFAULT_SESSION_USER if os.geteuid() == 0 else None
    results: dict[str, object] = {
        "rdp_client": _version(["xfreerdp3", "--version"]),
        "spice_client": _version(["remote-viewer", "--version"]),
        "runs_as": run_as or "current user",
        "rounds": ROUNDS * 2,
    }
    with (
        tempfile.TemporaryDirectory(prefix="sdbox-bench-") as tmp,
        xvfb() as server_display,
        xvfb() as client_display,
    ):
        work = Path(tmp)
        certificate = make_server_cert("CN=localhost", ["localhost"])
        with shadow_server(server_display, work / "shadow", certificate) as rdp:
            spec = SessionSpec(
                endpoint=Endpoint.parse(f"rdp://localhost:{rdp.port}"),
                user=RDP_USER,
                credential=Credential(RDP_PASSWORD),
                display=Display(x11=client_display),
                server_fingerprint=certificate.fingerprint,
            )
            results["rdp"] = asyncio.run(_measure(RdpSession, spec, run_as))
        with spice_server(work / "spice") as spice:
            spec = SessionSpec(
                endpoint=Endpoint.parse(f"spice://127.0.0.1:{spice.port}"),
                user="",
                credential=Credential(SPICE_PASSWORD),
                display=Display(x11=client_display),
                ca_pem=spice.ca.cert_pem.decode(),
                host_subject=SPICE_SUBJECT,
            )
            results["spice"] = asyncio.run(_measure(SpiceSession, spec, run_as))
    print(f"clients: {results['rdp_client']}; {results['spice_client']}")
    print(f"clients run as: {results['runs_as']}; {results['rounds']} sessions per protocol")
    print(f"{'':8}{'start->connected':>22}{'kill->gone':>22}{'close->gone':>22}")
    for protocol in ("rdp", "spice"):
        figures = results[protocol]
        assert isinstance(figures, dict)
        cells = [
            f"{figures[f'{name}_median'] * 1000:7.0f} ms (max {figures[f'{name}_max'] * 1000:5.0f})"
            for name in ("connect_s", "kill_s", "close_s")
        ]
        print(f"{protocol:8}" + "".join(f"{cell:>22}" for cell in cells))
    return results


if __name__ == "__main__":
    run()
