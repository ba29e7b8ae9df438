"""The agent's state machine with the card in process and fake sessions (no pcscd, no FreeRDP)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from sdbox.agent.api import State
from sdbox.agent.card import CardHandle
from sdbox.agent.events import PreferencesChanged, SessionEndedEvent, Transition
from sdbox.agent.machine import Agent
from sdbox.agent.preferences import Preferences
from sdbox.agent.problems import Refusal
from sdbox.biometric.errors import PlaceFingerAgain
from sdbox.smartcard.biosso import BioSsoSession
from sdbox.smartcard.directory import Project
from sdbox.smartcard.emulator.applet import PivApplet
from sdbox.smartcard.emulator.profiles import issue_card, load_profile, seeded_template
from sdbox.smartcard.emulator.vpcd import build_atr
from sdbox.trust import Purpose, validate, validate_directory_signer
from sdbox.trust.pki import Pki
from tests.unit.test_applet import Direct

T = TypeVar("T")


class InProcessCard(CardHandle):
    """The agent's card handle, talking to an in-process applet."""

    applet: PivApplet

    def _call(self, fn: Callable[[BioSsoSession], T]) -> T:
        if self._session is None:  # the ATR the emulator's card answers (its capabilities)
            state = self.applet.state
            atr = build_atr(state.transmission, extended=state.extended_length)
            self._session = BioSsoSession.for_atr(Direct(self.applet), atr)
        return fn(self._session)

    async def make_exclusive(self) -> None:
        """Nothing to reconnect in process."""


class FakeSession:
    """A session that connects, then ends when told to."""

    def __init__(self, project: Project, fail: bool = False) -> None:
        self.project, self.fail = project, fail
        self.ended: asyncio.Future[Any] = asyncio.get_event_loop().create_future()
        self.pid: int | None = 4242
        self.killed = self.closed = False
        self.credential: Any = None

    async def start(self) -> None:
        pass

    async def wait_connected(self) -> None:
        if self.fail:
            from sdbox.session import SessionFailed
            from sdbox.session.outcome import EndReason, SessionEnded

            raise SessionFailed(
                SessionEnded(EndReason.UNREACHABLE, "The project's desktop cannot be reached.")
            )

    async def wait_ended(self) -> Any:
        return await self.ended

    def end(self, reason: str, message: str) -> None:
        class Ended:
            pass

        ended = Ended()
        ended.reason = type("R", (), {"value": reason})()  # type: ignore[attr-defined]
        ended.message = message  # type: ignore[attr-defined]
        if not self.ended.done():
            self.ended.set_result(ended)

    async def kill(self) -> None:
        self.killed = True
        self.end("killed", "The session was ended because the card was removed.")

    async def close(self) -> None:
        self.closed = True
        self.end("closed", "The session was closed.")


class Sessions:
    def __init__(self) -> None:
        self.opened: list[FakeSession] = []
        self.fail: set[str] = set()

    def open(
        self, project: Project, user: str, credential: Any, server: x509.Certificate
    ) -> FakeSession:
        session = FakeSession(project, project.id in self.fail)
        session.credential = credential
        self.opened.append(session)
        return session


class Trust:
    def __init__(self, pki: Pki) -> None:
        self.pki = pki

    def directory_validator(self) -> Callable[[x509.Certificate, list[x509.Certificate]], None]:
        def check(signer: x509.Certificate, intermediates: list[x509.Certificate]) -> None:
            validate_directory_signer(signer, intermediates, [self.pki.root.cert], at=_now())

        return check

    def check_project(self, certificate: x509.Certificate, project: Project) -> None:
        validate(
            certificate,
            self.pki.intermediates,
            [self.pki.root.cert],
            at=_now(),
            purpose=Purpose.PROJECT,
            crls=None,
            project=project.id,
        )

    def check_server(self, certificate: x509.Certificate, project: Project) -> None:
        validate(
            certificate,
            self.pki.intermediates,
            [self.pki.root.cert],
            at=_now(),
            purpose=Purpose.SERVER,
            crls=None,
            hostname=project.host,
        )


def _now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)


class Sensor:
    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.poor_captures = 0  # how many captures are too poor before a good one
        self.captures = 0

    async def capture(self) -> bytes:
        self.captures += 1
        if self.poor_captures:
            self.poor_captures -= 1
            raise PlaceFingerAgain("too few clear ridge details")
        return seeded_template(self.seed)


class Credentials:
    async def obtain(
        self, project: Project, certificate: x509.Certificate, card: CardHandle
    ) -> tuple[str, Any]:
        return "researcher", "one-time"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki.init(tmp_path_factory.mktemp("pki"))


def make_agent(
    pki: Pki, tmp_path: Path, *, seed: int = 1001, credentials: Any = None
) -> tuple[Agent, Sessions, list[Any], PivApplet]:
    applet = PivApplet(issue_card(load_profile("demo"), pki, state_path=tmp_path / "card.json"))
    sessions = Sessions()
    events: list[Any] = []

    def open_card(reader: str) -> CardHandle:
        handle = InProcessCard(reader)
        handle.applet = applet
        return handle

    agent = Agent(
        trust=Trust(pki), sensor=Sensor(seed), credentials=credentials or Credentials(),
        sessions=sessions,
        endpoint_allowed=lambda endpoint: endpoint.startswith("127.0.0.1:"), open_card=open_card,
    )  # fmt: skip
    agent.listeners.append(events.append)
    return agent, sessions, events, applet


async def until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 20
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


def test_flow_switch_and_removal(pki: Pki, tmp_path: Path) -> None:
    async def scenario() -> None:
        agent, sessions, events, _applet = make_agent(pki, tmp_path)
        await agent.card_inserted("reader")
        await until(lambda: agent.snapshot.state == State.PICKER)
        assert [p.id for p in agent.snapshot.projects] == [
            "census-2021",
            "health-cohort",
            "genomics-lab",
        ]
        await agent.choose_project("census-2021")
        await until(lambda: agent.snapshot.state == State.RUNNING)
        await agent.switch("genomics-lab")
        await until(
            lambda: (
                agent.snapshot.state == State.RUNNING
                and agent.snapshot.active_project == "genomics-lab"
            )
        )
        assert sessions.opened[0].closed
        assert not sessions.opened[0].killed
        await agent.card_removed("reader")
        assert sessions.opened[1].killed
        assert agent.snapshot.state == State.IDLE
        states = [e.state for e in events if isinstance(e, Transition)]
        assert states[:3] == [State.READING, State.PICKER, State.VERIFYING]
        assert states.count(State.VERIFYING) == 1
        assert [e.reason for e in events if isinstance(e, SessionEndedEvent)] == [
            "closed",
            "killed",
        ]

    asyncio.run(scenario())


def test_session_ended_by_the_bubble_returns_to_the_picker(pki: Pki, tmp_path: Path) -> None:
    async def scenario() -> None:
        agent, sessions, _events, _applet = make_agent(pki, tmp_path)
        await agent.card_inserted("reader")
        await until(lambda: agent.snapshot.state == State.PICKER)
        await agent.choose_project("census-2021")
        await until(lambda: agent.snapshot.state == State.RUNNING)
        sessions.opened[0].end("logged_off", "You logged off from the project's desktop.")
        await until(lambda: agent.snapshot.state == State.PICKER)
        assert agent.snapshot.message == "You logged off from the project's desktop."
        await agent.choose_project("health-cohort")  # still verified: no finger
        await until(lambda: agent.snapshot.state == State.RUNNING)

    asyncio.run(scenario())


def test_unreachable_bubble_is_a_problem_not_a_crash(pki: Pki, tmp_path: Path) -> None:
    async def scenario() -> None:
        agent, sessions, _events, _applet = make_agent(pki, tmp_path)
        sessions.fail.add("census-2021")
        await agent.card_inserted("reader")
        await until(lambda: agent.snapshot.state == State.PICKER)
        await agent.choose_project("census-2021")
        await until(lambda: agent.snapshot.problem is not None)
        assert agent.snapshot.state == State.PICKER
        assert agent.snapshot.problem is not None
        assert agent.snapshot.problem.value == "session_failed"
        assert "cannot be reached" in agent.snapshot.message

    asyncio.run(scenario())


def test_commands_are_refused_in_the_wrong_state(pki: Pki, tmp_path: Path) -> None:
    async def scenario() -> None:
        agent, _sessions, _events, _applet = make_agent(pki, tmp_path)
        with pytest.raises(Refusal, match="insert your card first"):
            await agent.choose_project("census-2021")
        await agent.card_inserted("reader")
        await until(lambda: agent.snapshot.state == State.PICKER)
        with pytest.raises(Refusal, match="no project 'nope'"):
            await agent.choose_project("nope")
        with pytest.raises(Refusal, match="does not accept the PIN"):
            await agent.submit_pin("123456")

    asyncio.run(scenario())


def test_endpoint_outside_the_allow_list_is_refused(pki: Pki, tmp_path: Path) -> None:
    async def scenario() -> None:
        agent, sessions, _events, _applet = make_agent(pki, tmp_path)
        agent.endpoint_allowed = lambda endpoint: False
        await agent.card_inserted("reader")
        await until(lambda: agent.snapshot.state == State.PICKER)
        assert all(
            not p.usable and p.status == "not allowed on this box" for p in agent.snapshot.projects
        )
        await agent.choose_project("census-2021")
        await until(lambda: agent.snapshot.problem is not None)
        assert agent.snapshot.problem is not None
        assert agent.snapshot.problem.value == "endpoint_not_allowed"
        assert sessions.opened == []

    asyncio.run(scenario())


def test_a_poor_capture_is_asked_again_and_costs_no_try(pki: Pki, tmp_path: Path) -> None:
    async def scenario() -> None:
        agent, _sessions, events, applet = make_agent(pki, tmp_path)
        sensor = agent.sensor
        assert isinstance(sensor, Sensor)
        sensor.poor_captures = 2
        await agent.card_inserted("reader")
        await until(lambda: agent.snapshot.state == State.PICKER)
        await agent.choose_project("census-2021")
        await until(lambda: agent.snapshot.state == State.RUNNING)
        assert sensor.captures == 3
        prompts = [e for e in events if isinstance(e, Transition) and e.state == State.VERIFYING]
        assert [p.problem.value if p.problem else None for p in prompts] == [
            None,
            "sensor_failed",
            "sensor_failed",
        ]
        assert applet.state.fingers[0x96].tries == 5

    asyncio.run(scenario())


__all__ = ["serialization"]


def test_interactive_provider_opens_the_bubble_logon_without_a_credential(
    pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The holder is still verified; the session gets no credential and none is said issued."""
    from sdbox.agent.service import InteractiveCredentials

    async def scenario() -> None:
        agent, sessions, events, _applet = make_agent(
            pki, tmp_path, credentials=InteractiveCredentials()
        )
        await agent.card_inserted("reader")
        await until(lambda: agent.snapshot.state == State.PICKER)
        await agent.choose_project("census-2021")
        await until(lambda: agent.snapshot.state == State.RUNNING)
        states = [e.state for e in events if isinstance(e, Transition)]
        assert State.VERIFYING in states
        assert sessions.opened[0].credential is None
        await agent.card_removed("reader")

    with caplog.at_level("INFO"):
        asyncio.run(scenario())
    assert "credential obtained" not in caplog.text


class FakeRenewal:
    """A renewal port that records the card session it ran on."""

    def __init__(self) -> None:
        self.calls = 0

    def renew(self, session: BioSsoSession) -> list[Any]:
        from sdbox.renewal.flow import Outcome, Result

        self.calls += 1
        assert session.piv.finger_tries_left(0x96) == -1  # runs with the holder verified
        return [
            Result("census-2021", Outcome.RENEWED),
            Result("health-cohort", Outcome.REJECTED, "the CA rejected the renewal: no"),
            Result("genomics-lab", Outcome.NOT_DUE),
        ]


def test_renewal_runs_in_the_background_of_a_running_session(
    pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        agent, _sessions, events, _applet = make_agent(pki, tmp_path)
        renewal = FakeRenewal()
        agent.renewal = renewal
        agent.renewal_window_days = 400  # every demo certificate is inside the window
        await agent.card_inserted("reader")
        await until(lambda: agent.snapshot.state == State.PICKER)
        await agent.choose_project("census-2021")
        await until(lambda: agent.snapshot.state == State.RUNNING)
        await until(lambda: renewal.calls == 1 and not agent._renewing)
        await agent.switch("genomics-lab")  # the session goes on; renewal runs once per card
        await until(lambda: agent.snapshot.active_project == "genomics-lab")
        await until(lambda: agent.snapshot.state == State.RUNNING)
        await asyncio.sleep(0.05)
        assert renewal.calls == 1
        from sdbox.agent.events import RenewalEvent

        finished = [(e.project, e.outcome) for e in events if isinstance(e, RenewalEvent)]
        assert finished == [("census-2021", "renewed"), ("health-cohort", "rejected")]
        await agent.card_removed("reader")

    with caplog.at_level("INFO", logger="sdbox.audit"):
        asyncio.run(scenario())
    events = [(r.SDBOX_EVENT, getattr(r, "SDBOX_PROJECT", ""), getattr(r, "SDBOX_REASON", ""))
              for r in caplog.records if hasattr(r, "SDBOX_EVENT")]  # fmt: skip
    assert ("renewal_succeeded", "census-2021", "") in events
    assert ("renewal_failed", "health-cohort", "rejected") in events
    assert events.index(("renewal_succeeded", "census-2021", "")) > next(
        i for i, e in enumerate(events) if e[0] == "session_started"
    )


def test_the_keyboard_layout_is_kept_and_never_changed_under_a_session(
    pki: Pki, tmp_path: Path
) -> None:
    async def scenario() -> None:
        agent, _sessions, events, _applet = make_agent(pki, tmp_path)
        agent.preferences = Preferences(tmp_path / "prefs", layout="fr", choices=("de", "gb"))
        agent.set_preference("keyboard_layout", "de")
        assert [e.values["keyboard_layout"] for e in events if isinstance(e, PreferencesChanged)] == [
            "de"
        ]
        with pytest.raises(Refusal) as refused:
            agent.set_preference("keyboard_layout", "us")
        assert refused.value.problem.value == "invalid_preference"
        await agent.card_inserted("reader")
        await until(lambda: agent.snapshot.state == State.PICKER)
        await agent.choose_project("census-2021")
        await until(lambda: agent.snapshot.state == State.RUNNING)
        # applying a layout restarts the kiosk compositor, which holds the session's window
        with pytest.raises(Refusal) as busy:
            agent.set_preference("keyboard_layout", "gb")
        assert busy.value.problem.value == "busy"
        assert Preferences(tmp_path / "prefs", layout="fr", choices=("de",)).keyboard_layout == "de"

    asyncio.run(scenario())
