"""Processes that watch udev inside a umockdev testbed (``python -m tests.integration.hotplug_child``).

They run with the testbed's environment (tests/integration/usb_testbed.py), so
their libudev sees its devices and its uevents; nothing else in them is
faked.

- ``watch``: the real :class:`~sdbox.agent.sensors.SensorWatcher` over the
  installed libfprint hwdb; prints ``ready`` and then one JSON line per event.
- ``agent CONFIG BUS FINGER_SOCKET``: the real daemon (``sdbox.agent.service.run``:
  D-Bus, reader watch, sensor watch from the configuration), with one port
  replaced: the sensor is a hand the test moves (:class:`SocketFinger`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from dataclasses import asdict
from pathlib import Path

from sdbox.agent.sensors import SensorEvent, SensorWatcher, sensor_table
from sdbox.smartcard.emulator.profiles import seeded_template


class SocketFinger:
    """A sensor whose finger comes from the test: a seed line on a unix socket.

    The answer says whether a capture was waiting for it (``taken``) or not
    (``no capture``: nobody was asked for a finger, e.g. the sensor is unplugged).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._waiting: asyncio.Future[int] | None = None

    async def serve(self) -> asyncio.Server:
        return await asyncio.start_unix_server(self._finger, path=str(self.path))

    async def _finger(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seed = int((await reader.readline()).decode())
        waiting = self._waiting
        if waiting is not None and not waiting.done():
            waiting.set_result(seed)
            writer.write(b"taken\n")
        else:
            writer.write(b"no capture\n")
        await writer.drain()
        writer.close()

    async def capture(self) -> bytes:
        self._waiting = asyncio.get_running_loop().create_future()
        try:
            seed = await self._waiting
        finally:
            self._waiting = None
        return seeded_template(seed)


async def watch() -> None:
    loop = asyncio.get_running_loop()

    def report(event: SensorEvent) -> None:
        print(json.dumps(asdict(event)), flush=True)

    watcher = SensorWatcher(loop, report, sensor_table([], ""))
    watcher.start()
    print("ready", flush=True)
    await asyncio.Event().wait()


async def agent(config_path: str, bus: str, finger_socket: str) -> None:
    from sdbox.agent.config import load
    from sdbox.agent.service import build_agent, run, setup_logging

    setup_logging()
    config = load(Path(config_path))
    finger = SocketFinger(Path(finger_socket))
    server = await finger.serve()
    try:
        await run(config, bus_address=bus, agent=build_agent(config, sensor=finger))
    finally:
        server.close()
        with contextlib.suppress(Exception):
            await server.wait_closed()


if __name__ == "__main__":
    if sys.argv[1] == "watch":
        asyncio.run(watch())
    else:
        asyncio.run(agent(*sys.argv[2:5]))
