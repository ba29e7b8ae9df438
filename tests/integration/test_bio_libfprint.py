"""The real capture path end to end: a fingerprint image -> libfprint's virtual_image device ->
libfprint's NBIS mindtct -> compact template -> VERIFY on the emulated card through the real pcscd.

The images are generated ridge patterns of synthetic identities (sdbox.biometric.ridges); the
reference is enrolled from an image too, through the same path, as an enrolment station would.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sdbox.agent.api import Problem, State
from sdbox.biometric import matcher, ridges
from sdbox.biometric.errors import PlaceFingerAgain, SensorUnavailable
from sdbox.biometric.libfprint import LibfprintSensor, send_image, send_retry
from sdbox.biometric.ridges import GreyImage
from sdbox.trust.pki import Pki
from tests.integration.agent_env import until
from tests.integration.conftest import InsertedCard
from tests.integration.test_agent import Bubbles, _wait, bubbles, running_agent
from tests.integration.test_bio_card import DEMO_MANAGEMENT_KEY

gi = pytest.importorskip("gi")
DRIVER = "virtual_image"
__all__ = ["bubbles"]  # the agent test's fixture (Xvfb and RDP bubbles), used here


@pytest.fixture
def socket_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where libfprint's virtual_image device listens (for this process and its children)."""
    path = tmp_path / "virtual-image.socket"
    monkeypatch.setenv("FP_VIRTUAL_IMAGE", str(path))
    return path


class Finger:
    """Puts images on the virtual sensor once it is open (from a thread, as a hand would)."""

    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path
        self.threads: list[threading.Thread] = []

    def place(self, image: GreyImage | None) -> None:
        """``image`` on the sensor, or a retry report (finger too short / off centre) for None."""

        def run() -> None:
            if image is None:
                send_retry(self.socket_path, timeout_s=30)
            else:
                send_image(self.socket_path, image, timeout_s=30)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        self.threads.append(thread)

    def join(self) -> None:
        for thread in self.threads:
            thread.join(timeout=30)


@pytest.fixture
def finger(socket_path: Path) -> Iterator[Finger]:
    placed = Finger(socket_path)
    yield placed
    placed.join()


def sdbox(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sdbox", *args],
        input=stdin,
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ),
    )


def enrol(card: InsertedCard, finger: Finger, image: GreyImage) -> subprocess.CompletedProcess[str]:
    finger.place(image)
    # one capture: several, cross-compared, are tested with real prints (test_bio_realprints.py)
    return sdbox("bio", "enrol", "--reader", card.reader, "--sensor", "libfprint",
                 "--sensor-driver", DRIVER, "--captures", "1", stdin=DEMO_MANAGEMENT_KEY)  # fmt: skip


def verify(card: InsertedCard, finger: Finger, image: GreyImage | None) -> subprocess.CompletedProcess[str]:
    finger.place(image)
    return sdbox("card", "verify", "--reader", card.reader, "--sensor", "libfprint",
                 "--sensor-driver", DRIVER)  # fmt: skip


def test_genuine_passes_impostor_costs_a_try_poor_capture_costs_none(
    demo_card: InsertedCard, finger: Finger
) -> None:
    enrolled = enrol(demo_card, finger, ridges.enrolment_image(2001))
    assert enrolled.returncode == 0, enrolled.stderr
    assert "5 tries" in enrolled.stdout
    for number in (1, 2):
        genuine = verify(demo_card, finger, ridges.impression(2001, number))
        assert genuine.returncode == 0, genuine.stderr
        assert "verified" in genuine.stdout
    assert demo_card.state.fingers[0x96].tries == 5

    impostor = verify(demo_card, finger, ridges.impression(2002, 1))
    assert impostor.returncode == 4
    assert "4 attempt" in impostor.stderr
    assert demo_card.state.fingers[0x96].tries == 4

    blank = verify(demo_card, finger, ridges.blank())
    assert blank.returncode == 4
    assert "place your finger again" in blank.stderr
    retry = verify(demo_card, finger, None)  # the device itself asks for a retry
    assert retry.returncode == 4
    assert "place your finger again" in retry.stderr
    assert demo_card.state.fingers[0x96].tries == 4  # neither reached the card

    again = verify(demo_card, finger, ridges.impression(2001, 3))
    assert again.returncode == 0, again.stderr
    assert demo_card.state.fingers[0x96].tries == 5


def capture(sensor: LibfprintSensor, finger: Finger, image: GreyImage) -> bytes:
    finger.place(image)
    return asyncio.run(sensor.capture())


def test_impressions_of_one_finger_match_and_of_others_do_not(finger: Finger) -> None:
    sensor = LibfprintSensor(DRIVER)
    seeds = (2003, 2004, 2005)
    references = {seed: capture(sensor, finger, ridges.enrolment_image(seed)) for seed in seeds}
    for seed in seeds:
        probe = capture(sensor, finger, ridges.impression(seed, 1))
        assert sensor.last_capture is not None
        assert sensor.last_capture.seconds < 5
        for other, reference in references.items():
            score = matcher.score(probe, reference)
            if other == seed:
                assert score >= matcher.THRESHOLD, (seed, score)
            else:
                assert score < matcher.THRESHOLD, (seed, other, score)


def test_a_capture_is_cancelled_without_blocking_the_loop(finger: Finger) -> None:
    sensor = LibfprintSensor(DRIVER)

    async def scenario() -> float:
        task = asyncio.ensure_future(sensor.capture())
        ticks = 0
        for _ in range(20):  # the loop keeps running while the sensor waits for a finger
            await asyncio.sleep(0.02)
            ticks += 1
        started = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert ticks == 20
        return time.monotonic() - started

    assert asyncio.run(scenario()) < 3
    # the device was closed: the next capture works
    assert len(capture(sensor, finger, ridges.impression(2001, 1))) >= 3 * 12


def test_blank_image_is_place_finger_again(finger: Finger) -> None:
    finger.place(ridges.blank())
    with pytest.raises(PlaceFingerAgain):
        asyncio.run(LibfprintSensor(DRIVER).capture())


def test_no_device_is_sensor_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FP_VIRTUAL_IMAGE", raising=False)
    with pytest.raises(SensorUnavailable, match="no fingerprint sensor"):
        asyncio.run(LibfprintSensor(DRIVER).capture())


def test_the_agent_verifies_the_holder_through_libfprint(
    pki: Pki, bubbles: Bubbles, free_reader: int, tmp_path: Path, finger: Finger
) -> None:
    """The box's flow: the agent's [sensor] kind = libfprint, VERIFY on the card, a session."""
    sensor = f'kind = "libfprint"\ndriver = "{DRIVER}"'

    async def scenario() -> None:
        async with running_agent(pki, bubbles, free_reader, tmp_path, sensor=sensor) as run:
            # the enrolment station's job, done on the emulated card directly
            reference = await asyncio.to_thread(
                capture, LibfprintSensor(DRIVER), finger, ridges.enrolment_image(2006)
            )
            run.card.state.fingers[0x96].reference = reference
            await _wait(run.agent, State.PICKER)
            await run.iface.call_choose_project("census-2021")  # type: ignore[attr-defined]
            await _wait(run.agent, State.VERIFYING)
            finger.place(ridges.blank())  # nothing usable: asked again, no try spent
            await until(lambda: run.agent.snapshot.problem == Problem.SENSOR_FAILED)
            finger.place(ridges.impression(2007, 1))  # someone else
            await until(lambda: run.agent.snapshot.problem == Problem.WRONG_FINGER)
            assert run.agent.snapshot.tries_left == 4
            finger.place(ridges.impression(2006, 1))
            await _wait(run.agent, State.RUNNING)
            assert run.card.state.fingers[0x96].tries == 5

    asyncio.run(scenario())


def test_the_readme_walkthrough_with_present_image(demo_card: InsertedCard, socket_path: Path) -> None:
    """Two shells: one command waits for a finger, `sdbox bio present-image` gives it one."""

    def with_finger(args: list[str], present: list[str], stdin: str | None = None) -> str:
        waiting = subprocess.Popen(
            [sys.executable, "-m", "sdbox", *args], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert waiting.stdin is not None
        waiting.stdin.write(stdin or "")
        waiting.stdin.close()
        presented = sdbox("bio", "present-image", "--socket", str(socket_path), *present)
        assert presented.returncode == 0, presented.stderr
        waiting.wait(timeout=60)  # a line or two of output: the pipes cannot fill
        assert waiting.stdout is not None
        assert waiting.stderr is not None
        out, err = waiting.stdout.read(), waiting.stderr.read()
        assert waiting.returncode == 0, err
        return out

    enrol_args = ["bio", "enrol", "--reader", demo_card.reader, "--sensor", "libfprint",
                  "--captures", "1"]  # fmt: skip
    assert "5 tries" in with_finger(enrol_args, ["--identity-seed", "2008", "--impression", "0"],
                                    stdin=DEMO_MANAGEMENT_KEY)  # fmt: skip
    verify_args = ["card", "verify", "--reader", demo_card.reader, "--sensor", "libfprint"]
    assert "verified" in with_finger(verify_args, ["--identity-seed", "2008", "--impression", "2"])
