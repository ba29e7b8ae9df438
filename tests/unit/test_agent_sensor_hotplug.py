"""The finger prompt and the sensor coming and going (fake hotplug events; the real udev path
is tests/integration/test_sensor_hotplug.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from sdbox.agent.api import SensorState, State
from sdbox.agent.events import SensorChanged, Transition
from sdbox.agent.machine import Agent
from sdbox.agent.sensors import SensorEvent, parse_hwdb, sensor_table, usb_id_of
from sdbox.biometric.errors import SensorUnavailable
from sdbox.smartcard.emulator.profiles import seeded_template
from sdbox.trust.pki import Pki
from tests.unit.test_agent_machine import make_agent, pki, until

__all__ = ["pki"]

SENSOR = "/sys/devices/pci0000:00/0000:00:14.0/usb1/1-3"
PLUGGED = SensorEvent(True, SENSOR, "08ff:1600", "aes1610")
UNPLUGGED = SensorEvent(False, SENSOR, "08ff:1600", "aes1610")


class HandSensor:
    """A sensor that waits for a finger the test places (as a hand would), cancellable."""

    def __init__(self) -> None:
        self.fingers: asyncio.Queue[int] = asyncio.Queue()
        self.waiting = 0  # captures started
        self.cancelled = 0
        self.fail_with: Exception | None = None

    async def capture(self) -> bytes:
        self.waiting += 1
        if self.fail_with is not None:
            raise self.fail_with
        try:
            seed = await self.fingers.get()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return seeded_template(seed)


def sensor_state(agent: Agent) -> SensorState:
    """What the D-Bus ``Sensor`` property says (a call: mypy must not narrow it)."""
    return agent.snapshot.sensor


def prompts(events: list[object]) -> list[tuple[str, str]]:
    return [
        (e.message, e.problem.value if e.problem else "")
        for e in events
        if isinstance(e, Transition) and e.state == State.VERIFYING
    ]


def test_unplugging_the_sensor_at_the_prompt_says_so_and_plugging_it_back_resumes(
    pki: Pki, tmp_path: Path
) -> None:
    async def scenario() -> None:
        agent, _sessions, events, applet = make_agent(pki, tmp_path)
        sensor = agent.sensor = HandSensor()
        agent.on_sensor_event(PLUGGED)
        agent.sensor_watched()
        assert sensor_state(agent) == SensorState.CONNECTED
        await agent.card_inserted("reader")
        await until(lambda: agent.snapshot.state == State.PICKER)
        await agent.choose_project("census-2021")
        await until(lambda: sensor.waiting == 1)
        agent.on_sensor_event(UNPLUGGED)
        await until(lambda: agent.snapshot.problem is not None)
        assert sensor.cancelled == 1  # the capture stopped
        assert agent.snapshot.state == State.VERIFYING  # still at the prompt, not sent back
        assert agent.snapshot.problem.value == "sensor_unplugged"  # type: ignore[union-attr]
        assert "not connected" in agent.snapshot.message
        assert sensor_state(agent) == SensorState.DISCONNECTED
        assert applet.state.fingers[0x96].tries == 5  # no try spent
        sensor.fingers.put_nowait(1001)  # a finger on the unplugged sensor reaches nothing
        await asyncio.sleep(0)
        assert sensor.waiting == 1
        agent.on_sensor_event(PLUGGED)  # the card stayed in: the prompt resumes by itself
        await until(lambda: agent.snapshot.state == State.RUNNING)
        assert sensor.waiting == 2
        assert prompts(events) == [
            ("place your finger", ""),
            ("the fingerprint sensor is not connected: plug it back in or call the service desk",
             "sensor_unplugged"),
            ("place your finger", ""),
        ]  # fmt: skip
        assert [e.state for e in events if isinstance(e, SensorChanged)] == [
            SensorState.CONNECTED, SensorState.DISCONNECTED, SensorState.CONNECTED,
        ]  # fmt: skip
        assert applet.state.fingers[0x96].tries == 5

    asyncio.run(scenario())


def test_without_the_sensor_a_finger_or_pin_project_takes_the_pin(
    pki: Pki, tmp_path: Path
) -> None:
    async def scenario() -> None:
        agent, _sessions, _events, _applet = make_agent(pki, tmp_path)
        sensor = agent.sensor = HandSensor()
        agent.sensor_watched()  # nothing plugged in
        await agent.card_inserted("reader")
        await until(lambda: agent.snapshot.state == State.PICKER)
        await agent.choose_project("health-cohort")
        await until(lambda: agent.snapshot.state == State.VERIFYING)
        assert agent.snapshot.problem.value == "sensor_unplugged"  # type: ignore[union-attr]
        assert "enter your PIN" in agent.snapshot.message
        assert sensor.waiting == 0  # nothing to capture with
        await agent.submit_pin("123456")
        await until(lambda: agent.snapshot.state == State.RUNNING)
        assert agent.snapshot.holder_verified

    asyncio.run(scenario())


def test_a_finger_only_project_waits_for_the_sensor_and_can_be_cancelled(
    pki: Pki, tmp_path: Path
) -> None:
    async def scenario() -> None:
        agent, _sessions, _events, _applet = make_agent(pki, tmp_path)
        agent.sensor = HandSensor()
        agent.sensor_watched()
        await agent.card_inserted("reader")
        await until(lambda: agent.snapshot.state == State.PICKER)
        await agent.choose_project("census-2021")
        await until(lambda: agent.snapshot.state == State.VERIFYING)
        assert agent.snapshot.problem.value == "sensor_unplugged"  # type: ignore[union-attr]
        await agent.cancel()
        assert agent.snapshot.state == State.PICKER
        assert agent.snapshot.problem is None

    asyncio.run(scenario())


def test_a_capture_failing_because_the_sensor_left_waits_for_it(
    pki: Pki, tmp_path: Path
) -> None:
    """The capture's USB error can come before udev's removal: the removal still counts."""

    async def scenario() -> None:
        agent, _sessions, _events, applet = make_agent(pki, tmp_path)
        sensor = agent.sensor = HandSensor()
        agent.on_sensor_event(PLUGGED)
        agent.sensor_watched()
        await agent.card_inserted("reader")
        await until(lambda: agent.snapshot.state == State.PICKER)
        sensor.fail_with = SensorUnavailable("the fingerprint sensor failed: No such device")
        await agent.choose_project("census-2021")
        await until(lambda: sensor.waiting == 1)
        agent.on_sensor_event(UNPLUGGED)  # udev's word arrives after the failed capture
        await until(lambda: agent.snapshot.problem is not None)
        assert agent.snapshot.state == State.VERIFYING
        assert agent.snapshot.problem.value == "sensor_unplugged"  # type: ignore[union-attr]
        sensor.fail_with = None
        agent.on_sensor_event(PLUGGED)
        await until(lambda: sensor.waiting == 2)
        sensor.fingers.put_nowait(1001)
        await until(lambda: agent.snapshot.state == State.RUNNING)
        assert applet.state.fingers[0x96].tries == 5

    asyncio.run(scenario())


def test_a_broken_sensor_that_stays_plugged_in_is_a_sensor_failure(
    pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sdbox.agent.presence.UNPLUG_GRACE_S", 0.05)

    async def scenario() -> None:
        agent, _sessions, _events, _applet = make_agent(pki, tmp_path)
        sensor = agent.sensor = HandSensor()
        agent.on_sensor_event(PLUGGED)
        agent.sensor_watched()
        sensor.fail_with = SensorUnavailable("the fingerprint sensor failed: timeout")
        await agent.card_inserted("reader")
        await until(lambda: agent.snapshot.state == State.PICKER)
        await agent.choose_project("census-2021")
        await until(lambda: agent.snapshot.problem is not None)
        assert agent.snapshot.state == State.PICKER
        assert agent.snapshot.problem.value == "sensor_failed"  # type: ignore[union-attr]

    asyncio.run(scenario())


HWDB = """\
# This file has been generated using fprint-list-udev-hwdb with all drivers enabled

# Supported by libfprint driver aes1610
usb:v08FFp1600*
 ID_AUTOSUSPEND=1
 ID_PERSIST=0

# Supported by libfprint driver uru4000
usb:v045Ep00BC*
usb:v05BAp0007*
 ID_AUTOSUSPEND=1
 ID_PERSIST=0

# Known unsupported devices
usb:v04F3p0C00*
 ID_AUTOSUSPEND=1
 ID_PERSIST=0
"""


def test_sensors_are_the_devices_libfprints_hwdb_supports(tmp_path: Path) -> None:
    assert parse_hwdb(HWDB) == {
        (0x08FF, 0x1600): "aes1610", (0x045E, 0x00BC): "uru4000", (0x05BA, 0x0007): "uru4000",
    }  # fmt: skip
    hwdb = tmp_path / "60-autosuspend-libfprint-2.hwdb"
    hwdb.write_text(HWDB)
    assert set(sensor_table([], "uru4000", hwdb)) == {(0x045E, 0x00BC), (0x05BA, 0x0007)}
    assert sensor_table(["1c7a:0603"], "uru4000", hwdb) == {(0x1C7A, 0x0603): ""}


def test_the_installed_libfprint_hwdb_is_readable() -> None:
    table = sensor_table([], "")
    assert len(table) > 100  # libfprint 1.94 lists a few hundred
    assert table[(0x08FF, 0x1600)] == "aes1610"


def test_usb_ids_come_from_the_kernel_product_or_udevs_ids() -> None:
    assert usb_id_of({"PRODUCT": "8ff/1600/0"}) == (0x08FF, 0x1600)
    assert usb_id_of({"ID_VENDOR_ID": "045e", "ID_MODEL_ID": "00bc"}) == (0x045E, 0x00BC)
    assert usb_id_of({"PRODUCT": "zz/1/0"}) is None
    assert usb_id_of({}) is None
