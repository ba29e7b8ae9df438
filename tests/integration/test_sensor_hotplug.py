"""The fingerprint sensor unplugged and plugged back, seen through the real libudev.

USB devices come and go in a umockdev testbed (tests/integration/usb_testbed.py);
the watching processes run the box's code with the system's libudev and
pyudev, reading the monitor's descriptor on their loop. The agent test runs
the real daemon (D-Bus, pcscd, the emulated card) and looks at it as the
greeter does: its D-Bus properties, and the screen the view model makes of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from dbus_fast.aio import MessageBus, ProxyInterface

from sdbox.agent.api import BUS_NAME, INTERFACE, OBJECT_PATH
from sdbox.smartcard.emulator.profiles import issue_card, parse_profile
from sdbox.smartcard.emulator.stack import reader_name
from sdbox.trust.pki import Pki
from sdbox.ui.catalogue import translator
from sdbox.ui.view import AgentView, Screen, screen_for
from tests.cli import REPO_ROOT
from tests.integration.agent_env import card_profile, dbus_daemon, publish_crls, write_config
from tests.integration.conftest import InsertedCard, insert_card
from tests.integration.usb_testbed import UsbTestbed, available

SENSOR = (0x08FF, 0x1600)  # AuthenTec AES1610: in libfprint's hwdb (driver aes1610)
KEYBOARD = (0x046D, 0xC31C)  # a Logitech keyboard: not a sensor
EN = translator("en")

pytestmark = pytest.mark.skipif(available() is not None, reason=str(available()))


@pytest.fixture
def testbed() -> Iterator[UsbTestbed]:
    with UsbTestbed() as bed:
        yield bed


class Lines:
    """A child's stdout, line by line, with a deadline (a stuck child fails the test)."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        stream = process.stdout
        assert stream is not None

        def pump() -> None:
            for line in stream:
                self.lines.put(line.strip())

        threading.Thread(target=pump, daemon=True).start()

    def next(self, timeout: float = 30.0) -> str:
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError("the watcher reported nothing") from None


@contextlib.contextmanager
def child(*args: str, env: dict[str, str], **kwargs: Any) -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.integration.hotplug_child", *args],
        env=env, text=True, cwd=REPO_ROOT, **kwargs,
    )  # fmt: skip
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def test_the_watcher_reports_sensors_from_udev_events_and_ignores_other_usb_devices(
    testbed: UsbTestbed,
) -> None:
    already = testbed.plug(*SENSOR, "usb1/1-1")  # plugged before the box started
    with child("watch", env=testbed.env(), stdout=subprocess.PIPE) as process:
        lines = Lines(process)
        first = json.loads(lines.next())  # enumerated at start
        assert first == {"present": True, "device": already, "usb_id": "08ff:1600", "driver": "aes1610"}
        assert lines.next() == "ready"
        keyboard = testbed.plug(*KEYBOARD, "usb1/1-2")  # not a sensor: no event
        testbed.unplug(already)
        assert json.loads(lines.next()) == {**first, "present": False}
        again = testbed.plug(*SENSOR, "usb1/1-3")  # another port, the same sensor model
        assert json.loads(lines.next()) == {**first, "device": again}
        testbed.unplug(keyboard)
        testbed.unplug(again)
        assert json.loads(lines.next()) == {**first, "device": again, "present": False}


@dataclass
class Box:
    """The daemon in the testbed, as the greeter sees it, and the card in its reader."""

    iface: ProxyInterface
    card: InsertedCard
    finger_socket: Path
    states: list[str]

    async def view(self) -> AgentView:
        get = self.iface
        return AgentView(
            state=await get.get_state(),  # type: ignore[attr-defined]
            tries_left=await get.get_tries_left(),  # type: ignore[attr-defined]
            message=await get.get_message(),  # type: ignore[attr-defined]
            problem=await get.get_problem(),  # type: ignore[attr-defined]
            sensor=await get.get_sensor(),  # type: ignore[attr-defined]
            active_project=await get.get_active_project(),  # type: ignore[attr-defined]
            projects=tuple(tuple(p) for p in await get.get_projects()),  # type: ignore[attr-defined]
        )

    async def screen(self) -> Screen:
        return screen_for(await self.view(), EN)

    async def until(self, what: str, check: Any, timeout: float = 60.0) -> AgentView:
        deadline = time.monotonic() + timeout
        while True:
            view = await self.view()
            if check(view):
                return view
            if time.monotonic() > deadline:
                raise AssertionError(f"never {what}: {view}")
            await asyncio.sleep(0.05)

    def place_finger(self, seed: int) -> str:
        """A finger on the sensor: 'taken' if a capture was waiting for it."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(30)
            conn.connect(str(self.finger_socket))
            conn.sendall(f"{seed}\n".encode())
            return conn.makefile().readline().strip()


@contextlib.asynccontextmanager
async def box(
    pki: Pki, free_reader: int, tmp_path: Path, testbed: UsbTestbed
) -> AsyncIterator[Box]:
    state = issue_card(
        parse_profile(card_profile({"census-2021": 1, "health-cohort": 2}), source="test"), pki,
        state_path=tmp_path / "card.json",
    )  # fmt: skip
    publish_crls(pki, tmp_path / "crl")
    # the sensor named by the box generation (usb_ids): watched whatever the capture port
    write_config(
        tmp_path, pki, display="",
        sensor='kind = "emulated"\nusb_ids = ["08ff:1600"]\n',
        extra=f'[card]\nreaders = ["{reader_name(free_reader)}"]\n',
    )  # fmt: skip
    finger_socket = tmp_path / "finger.socket"
    with dbus_daemon(tmp_path) as address:
        card = await asyncio.to_thread(insert_card, state, pki, free_reader)
        log = (tmp_path / "agent.log").open("w")
        args = ("agent", str(tmp_path / "agent.toml"), address, str(finger_socket))
        with child(*args, env=testbed.env(), stdout=log, stderr=subprocess.STDOUT):
            bus = await MessageBus(bus_address=address).connect()
            try:
                deadline = time.monotonic() + 60
                while True:
                    try:
                        introspection = await bus.introspect(BUS_NAME, OBJECT_PATH)
                        break
                    except Exception:
                        assert time.monotonic() < deadline, (tmp_path / "agent.log").read_text()
                        await asyncio.sleep(0.1)
                iface = bus.get_proxy_object(BUS_NAME, OBJECT_PATH, introspection).get_interface(
                    INTERFACE
                )
                states: list[str] = []
                iface.on_state_changed(lambda s, *_rest: states.append(s))  # type: ignore[attr-defined]
                yield Box(iface, card, finger_socket, states)
            finally:
                bus.disconnect()
                if card.virtual.inserted:
                    await asyncio.to_thread(card.remove)
                log.close()


def test_unplugging_the_sensor_at_the_finger_prompt_and_plugging_it_back(
    pki: Pki, free_reader: int, tmp_path: Path, testbed: UsbTestbed
) -> None:
    sensor = testbed.plug(*SENSOR, "usb1/1-1")

    async def scenario() -> None:
        async with box(pki, free_reader, tmp_path, testbed) as b:
            await b.until("connected", lambda v: v.sensor == "connected")
            await b.until("at the picker", lambda v: v.state == "picker")
            await b.iface.call_choose_project("census-2021")  # type: ignore[attr-defined]
            prompt = await b.until("asking for a finger", lambda v: v.state == "verifying")
            assert (await b.screen()).title == "Place your finger on the sensor"
            assert prompt.tries_left == 5

            await asyncio.to_thread(testbed.unplug, sensor)
            unplugged = await b.until("unplugged", lambda v: v.problem == "sensor_unplugged")
            assert unplugged.state == "verifying"  # still the prompt: the card was not dropped
            assert unplugged.sensor == "disconnected"
            screen = await b.screen()
            assert screen.title == "The fingerprint sensor is not connected"
            assert screen.hint == "5 tries left"
            assert screen.pin_entry is False  # census-2021 is finger only
            # a finger on the unplugged sensor reaches nothing, the card counts nothing
            assert await asyncio.to_thread(b.place_finger, 1001) == "no capture"
            assert b.card.state.fingers[0x96].tries == 5

            await asyncio.to_thread(testbed.plug, *SENSOR, "usb1/1-1")
            back = await b.until("asking again", lambda v: v.problem == "" and v.sensor == "connected")
            assert back.state == "verifying"
            assert (await b.screen()).title == "Place your finger on the sensor"
            deadline = time.monotonic() + 30
            while (taken := await asyncio.to_thread(b.place_finger, 1001)) != "taken":
                assert time.monotonic() < deadline, taken  # the capture restarts on the loop
                await asyncio.sleep(0.05)
            await b.until("past the finger", lambda v: v.state not in ("verifying",))
            assert "validating" in b.states  # the holder was verified
            assert "idle" not in b.states  # the card was never dropped: no re-insertion
            assert "reading" not in b.states
            assert b.card.state.fingers[0x96].tries == 5

    asyncio.run(scenario())
    log = (tmp_path / "agent.log").read_text()
    assert "sensor_disconnected: fingerprint sensor unplugged (sensor=08ff:1600)" in log
    assert log.count("sensor_connected: fingerprint sensor plugged in (sensor=08ff:1600)") == 2


def test_with_the_sensor_unplugged_a_finger_or_pin_project_takes_the_pin(
    pki: Pki, free_reader: int, tmp_path: Path, testbed: UsbTestbed
) -> None:
    async def scenario() -> None:
        async with box(pki, free_reader, tmp_path, testbed) as b:  # no sensor plugged in
            await b.until("at the picker", lambda v: v.state == "picker")
            assert (await b.view()).sensor == "disconnected"
            assert "not connected" in (await b.screen()).hint
            await b.iface.call_choose_project("health-cohort")  # type: ignore[attr-defined]
            await b.until("unplugged", lambda v: v.problem == "sensor_unplugged")
            screen = await b.screen()
            assert screen.title == "The fingerprint sensor is not connected"
            assert screen.pin_entry is True
            await b.iface.call_submit_pin("123456")  # type: ignore[attr-defined]
            await b.until("past the PIN", lambda v: v.state != "verifying")
            assert "validating" in b.states
            assert b.card.state.fingers[0x96].tries == 5

    asyncio.run(scenario())
