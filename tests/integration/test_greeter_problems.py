"""The greeter's problem screens under cage, each reached through the real agent.

What the researcher sees while a session is connecting, when the bubble
never answers, when nothing listens at the bubble's address, when access to
the project was withdrawn (revoked certificate), when the box's clock is
behind what its CRLs prove, and when the card is not one of the centre's.
The module revokes certificates: its PKI is its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from sdbox.agent.api import State
from sdbox.biometric import synth
from sdbox.smartcard.directory import parse_signed_directory
from sdbox.smartcard.profile import ObjectTag, certificate_object, decode_certificate
from sdbox.trust.pki import Pki
from sdbox.trust.store import RevocationStore
from tests.integration.agent_env import publish_crls
from tests.integration.greeter_env import expect, kiosk, missing
from tests.integration.session_servers import free_port
from tests.integration.test_agent import Bubbles, _wait, _wait_for, bubbles, running_agent
from tests.integration.test_greeter import OUT, ScriptedSensor, _bus_dir

__all__ = ["bubbles"]
pytestmark = pytest.mark.skipif(missing() is not None, reason=str(missing()))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """This module revokes certificates: a PKI of its own."""
    return Pki.init(tmp_path_factory.mktemp("greeter-problems-pki"))


@contextlib.contextmanager
def silent_server() -> Iterator[int]:
    """A bubble address that accepts connections and never says a word."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield listener.getsockname()[1]


def _problem(run: object, code: str) -> bool:
    problem = run.agent.snapshot.problem  # type: ignore[attr-defined]
    return problem is not None and problem.value == code


def test_connecting_and_what_goes_wrong_after(
    pki: Pki, bubbles: Bubbles, free_reader: int, tmp_path: Path
) -> None:
    bus_dir = _bus_dir()
    sensor = ScriptedSensor()

    async def scenario(silent_port: int) -> None:
        # census-2021's bubble never answers; nothing listens at health-cohort's
        addresses = Bubbles(
            bubbles.display,
            {"census-2021": silent_port, "health-cohort": free_port()},
            bubbles.servers,
        )
        async with running_agent(
            pki, addresses, free_reader, tmp_path, sensor_port=sensor, bus_dir=bus_dir,
            connect_timeout_s=8,
        ) as run:  # fmt: skip
            await _wait(run.agent, State.PICKER)
            with kiosk(run.bus_address, "en") as screen:
                await run.iface.call_choose_project("census-2021")  # type: ignore[attr-defined]
                sensor.queue.put_nowait(synth.impression(1001, 1))
                await _wait(run.agent, State.CONNECTING)
                await asyncio.to_thread(
                    expect, screen, "connecting", OUT, ("Census microdata 2021", "Connecting…")
                )
                await _wait_for(lambda: _problem(run, "session_failed"), timeout=60)
                await asyncio.to_thread(
                    expect, screen, "bubble-silent", OUT,
                    ("The connection failed", "did not answer in time", "Health cohort study"),
                )  # fmt: skip

                # the holder stays verified: the next project is one choice away
                await run.iface.call_choose_project("health-cohort")  # type: ignore[attr-defined]
                await _wait_for(
                    lambda: (
                        _problem(run, "session_failed")
                        and run.agent.snapshot.active_project == "health-cohort"
                        and run.agent.snapshot.state == State.PICKER
                    ),
                    timeout=60,
                )
                await asyncio.to_thread(
                    expect, screen, "bubble-unreachable", OUT,
                    ("The connection failed", "cannot be reached", "Health cohort study"),
                )  # fmt: skip

                # the centre withdraws access to health-cohort
                directory = parse_signed_directory(
                    run.card.state.objects[ObjectTag.DIRECTORY]
                ).directory
                slot = directory.project("health-cohort").slot
                victim = x509.load_der_x509_certificate(
                    decode_certificate(run.card.state.objects[certificate_object(slot)])
                )
                pki.revoke(victim, x509.ReasonFlags.cessation_of_operation)
                publish_crls(pki, run.config.trust.crl_dir)
                await run.iface.call_choose_project("health-cohort")  # type: ignore[attr-defined]
                await _wait_for(lambda: _problem(run, "certificate_revoked"), timeout=30)
                await asyncio.to_thread(
                    expect, screen, "certificate-revoked", OUT,
                    ("Access to this project was withdrawn", "(health-cohort) was revoked on"),
                )  # fmt: skip

                # a CRL issued two days from now: the box's clock is behind what it has seen
                store = RevocationStore(
                    run.config.trust.crl_dir, build_time=pki.root.cert.not_valid_before_utc
                )
                future = pki.crl("root", now=datetime.now(UTC) + timedelta(days=2))
                store.accept(future.public_bytes(serialization.Encoding.DER), pki.root.cert)
                await run.iface.call_choose_project("census-2021")  # type: ignore[attr-defined]
                await _wait_for(lambda: _problem(run, "clock_wrong"), timeout=30)
                await asyncio.to_thread(
                    expect, screen, "clock-wrong", OUT,
                    ("The box's clock is wrong", "but it has already seen", "Call the service desk."),
                )  # fmt: skip

    try:
        with silent_server() as port:
            asyncio.run(scenario(port))
    finally:
        shutil.rmtree(bus_dir, ignore_errors=True)


def test_a_card_that_is_not_the_centres(
    pki: Pki, bubbles: Bubbles, free_reader: int, tmp_path: Path
) -> None:
    bus_dir = _bus_dir()

    async def scenario() -> None:
        async with running_agent(
            pki, bubbles, free_reader, tmp_path, tamper=True, bus_dir=bus_dir
        ) as run:
            await _wait(run.agent, State.BLOCKED)
            with kiosk(run.bus_address, "en") as screen:
                await asyncio.to_thread(
                    expect, screen, "card-not-recognised", OUT, ("This card is not recognised",)
                )

    try:
        asyncio.run(scenario())
    finally:
        shutil.rmtree(bus_dir, ignore_errors=True)
