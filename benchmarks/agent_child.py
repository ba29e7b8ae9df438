"""The agent daemon for bench_agent's D-Bus figures (``python -m benchmarks.agent_child``).

The same run loop as ``sdbox agent run`` (:func:`sdbox.agent.service.run`:
the D-Bus export, the reader watcher, READY and the watchdog over
NOTIFY_SOCKET), in a process of its own, with one difference: the emulated
sensor takes ``--capture-delay`` seconds per capture, as a real sensor takes
to image a finger (the configuration's emulated sensor answers at once).
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from sdbox.agent.config import load
from sdbox.agent.service import build_agent, run, setup_logging
from sdbox.biometric.sensor import EmulatedSensor
from sdbox.identity import IdentitySource


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--bus", required=True, help="the D-Bus address to export the agent on")
    parser.add_argument("--capture-delay", type=float, required=True, help="seconds per capture")
    args = parser.parse_args()
    setup_logging()
    config = load(args.config)
    identity = IdentitySource(config.identity.identity_config())
    sensor = EmulatedSensor(config.sensor.seed, delay_s=args.capture_delay)
    agent = build_agent(config, identity, sensor=sensor)
    asyncio.run(run(config, bus_address=args.bus, agent=agent))


if __name__ == "__main__":
    main()
