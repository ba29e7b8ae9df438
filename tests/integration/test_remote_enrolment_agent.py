"""Remote enrolment through the agent's machine, and with real prints (FVC2002).

The same bench as tests/integration/test_remote_enrolment.py: the card in the real pcscd (or
in process for the machine), the reference broker with card management and an operator.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import pytest

from sdbox.agent.api import Detail, Problem, State
from sdbox.agent.machine import Agent
from sdbox.biometric import extract, realprints
from sdbox.biometric.ridges import GreyImage
from sdbox.smartcard.errors import WrongFinger
from sdbox.smartcard.profile import KeyRef
from tests.integration.bioenrol_env import (
    OPERATOR_NAME,
    PIN,
    EnrolBench,
    _sensor,
    bench,
    module_bench,
    swap_card,
)

__all__ = ["bench", "module_bench"]  # the bench's fixtures


# -- the agent's enrolment mode ------------------------------------------------------------------


def _agent_scenario(bench: EnrolBench, caplog: pytest.LogCaptureFixture,
                    scenario: Callable[[Agent], Awaitable[None]]) -> list[logging.LogRecord]:  # fmt: skip
    """``scenario`` against the agent's machine holding the bench's card in process."""
    from tests.unit.test_agent_machine import Credentials, InProcessCard, Sessions, Trust, until

    def open_card(reader: str) -> InProcessCard:
        handle = InProcessCard(reader)
        handle.applet = bench.card.applet
        return handle

    async def run() -> None:
        agent = Agent(
            trust=Trust(bench.pki), sensor=_sensor(("primary",)), credentials=Credentials(),
            sessions=Sessions(), endpoint_allowed=lambda _e: True, open_card=open_card,
            enrolment=bench.enrolment, enrolment_poll_s=0.05,
        )  # fmt: skip
        await agent.card_inserted("in-process")
        await until(lambda: agent.snapshot.state == State.PICKER)
        await scenario(agent)
        await agent.card_removed("in-process")

    # out of the reader while the machine speaks to it in process: pcscd would power the
    # idle card down under the agent's feet
    bench.card.remove()
    try:
        with caplog.at_level("INFO", logger="sdbox.audit"):
            asyncio.run(run())
    finally:
        bench.reinsert()
    return [r for r in caplog.records if hasattr(r, "SDBOX_EVENT")]


def test_the_agent_enrols_a_finger_in_its_enrolment_mode(
    bench: EnrolBench, caplog: pytest.LogCaptureFixture
) -> None:
    from tests.unit.test_agent_machine import until

    auth_id = bench.open(("primary",))["id"]
    seen: list[str] = []

    async def scenario(agent: Agent) -> None:
        agent.listeners.append(lambda _event: seen.append(agent.snapshot.detail.value))
        await agent.start_enrolment()
        await until(lambda: agent.snapshot.detail == Detail.ENROLMENT_CODE)
        assert agent.snapshot.state.value == "enrolling"  # (.value: no narrowing for mypy)
        assert agent.snapshot.detail_args["operator"] == OPERATOR_NAME
        bench.centre.confirm(auth_id, agent.snapshot.detail_args["code"])  # read back
        await until(lambda: agent.snapshot.detail == Detail.ENROLMENT_PIN)
        await agent.submit_pin("000000")
        await until(lambda: agent.snapshot.problem == Problem.WRONG_PIN)
        assert agent.snapshot.tries_left == 2  # the normal PIN counter
        await agent.submit_pin(PIN)
        await until(lambda: agent.snapshot.detail == Detail.ENROLMENT_DONE)
        assert agent.snapshot.state == State.PICKER
        assert agent.snapshot.detail_args == {"fingers": "primary", "operator": OPERATOR_NAME}

    events = _agent_scenario(bench, caplog, scenario)
    for step in (Detail.ENROLMENT_AUTHORISING, Detail.ENROLMENT_CAPTURE, Detail.ENROLMENT_WRITING,
                 Detail.ENROLMENT_CONFIRM):  # fmt: skip
        assert step.value in seen
    assert bench.which("primary") == "new"
    assert bench.register[auth_id]["state"] == "done"
    named = {(r.SDBOX_EVENT, r.SDBOX_SIDE) for r in events  # type: ignore[attr-defined]
             if getattr(r, "SDBOX_OPERATOR", "") == OPERATOR_NAME}  # fmt: skip
    for event in ("enrolment_authorised", "enrolment_written", "enrolment_completed"):
        assert (event, "box") in named
    holder = [(getattr(r, "SDBOX_EVENT", ""), getattr(r, "SDBOX_METHOD", "")) for r in events
              if getattr(r, "SDBOX_EVENT", "") in ("holder_failed", "holder_verified")]  # fmt: skip
    assert holder == [("holder_failed", "pin"), ("holder_verified", "pin")]
    for event in ("enrolment_authorised", "enrolment_confirmed", "enrolment_writing",
                  "enrolment_completed"):  # fmt: skip
        assert (event, "centre") in named


def test_the_agent_shows_why_an_authorisation_was_refused(
    bench: EnrolBench, caplog: pytest.LogCaptureFixture
) -> None:
    from tests.unit.test_agent_machine import until

    bench.open(box_id="another-box")

    async def scenario(agent: Agent) -> None:
        await agent.start_enrolment()
        await until(lambda: agent.snapshot.problem == Problem.ENROLMENT_REFUSED)
        assert agent.snapshot.state == State.PICKER
        assert agent.snapshot.detail == Detail.ENROLMENT_REFUSED
        assert agent.snapshot.detail_args == {"reason": "other_box"}

    events = _agent_scenario(bench, caplog, scenario)
    refused = [r for r in events if r.SDBOX_EVENT == "enrolment_refused"]  # type: ignore[attr-defined]
    assert {r.SDBOX_SIDE for r in refused} == {"box"}  # type: ignore[attr-defined]
    assert bench.which("primary") == "old"


def test_the_agent_says_a_card_without_fingerprint_cannot_be_enrolled(
    bench: EnrolBench, caplog: pytest.LogCaptureFixture
) -> None:
    from tests.unit.test_agent_machine import until

    swap_card(bench, "biosso-pin-only")
    bench.open()

    async def scenario(agent: Agent) -> None:
        await agent.start_enrolment()
        await until(lambda: agent.snapshot.problem == Problem.NO_FINGERPRINT)
        assert agent.snapshot.message == "this card has no fingerprint; enrolment is not possible"
        assert agent.snapshot.detail == Detail.NO_FINGERPRINT

    _agent_scenario(bench, caplog, scenario)


# -- real prints ---------------------------------------------------------------------------------


class _RealPrints:
    """A sensor presenting real images (FVC2002) in turn, through the box's quality gate."""

    def __init__(self, images: list[GreyImage], ppi: int) -> None:
        self.images, self.ppi, self.shown = images, ppi, 0

    async def capture(self) -> bytes:
        image = self.images[min(self.shown, len(self.images) - 1)]
        self.shown += 1
        return extract.template(image, self.ppi)  # PoorCapture: the finger is asked again


@pytest.mark.skipif(realprints.missing() is not None, reason=str(realprints.missing()))
def test_a_real_finger_is_enrolled_remotely_a_poor_capture_asked_again(bench: EnrolBench) -> None:
    from tests.integration.test_bio_realprints import partial, real

    ppi = realprints.SETS["DB1_B"]
    enrolment = [partial(real("DB1_B", 102, 1), 6.0),  # a third of the finger: refused
                 *(real("DB1_B", 102, n) for n in (1, 2, 3))]  # fmt: skip
    bench.open()
    with bench.session() as session:
        flow = bench.enrolment(session)
        pending = flow.authorise()
        bench.centre.confirm(pending.authorisation.id, pending.code)
        flow.wait_for_operator(pending, poll_s=0.05)
        flow.verify_holder(PIN)
        sensor = _RealPrints(enrolment, ppi)
        references = asyncio.run(flow.capture(pending, sensor))
        assert sensor.shown == 4  # the poor capture was asked again, never kept
        assert references["primary"] == extract.template(real("DB1_B", 102, 2), ppi)
        session_id = flow.write(pending, references)
        asyncio.run(flow.confirm(pending, _RealPrints([real("DB1_B", 102, 4)], ppi), session_id))
    other = extract.template(real("DB1_B", 104, 1), ppi)  # another finger does not pass for it
    with bench.session() as session, pytest.raises(WrongFinger):
        session.piv.verify_finger(KeyRef.FINGER_PRIMARY, other)
    assert bench.register[pending.authorisation.id]["state"] == "done"
