"""The agent's researcher flow on each card variant, in process (docs/card-variants.md).

The same holder and projects on every multi-project variant: the picker lists
the same projects, the finger opens a session, removal ends it. The card's
APDU stack follows its ATR, as on the box (``BioSsoSession.for_atr``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sdbox.agent.api import CardLayout, Detail, Problem, State
from sdbox.agent.card import CardHandle
from sdbox.agent.events import Transition
from sdbox.agent.machine import Agent
from sdbox.certificates import load_certificate
from sdbox.renewal.due import RENEWABILITY, mark_due
from sdbox.smartcard.biosso import BioSsoSession
from sdbox.smartcard.catalogue import CatalogueEntry, ProjectCatalogue, sign_catalogue
from sdbox.smartcard.directory import Protocol, SecondFactor
from sdbox.smartcard.emulator.applet import PivApplet, response
from sdbox.smartcard.emulator.profiles import bubble_dir, issue_card, load_profile
from sdbox.smartcard.emulator.vpcd import build_atr
from sdbox.smartcard.profile import ObjectTag
from sdbox.trust.pki import Pki
from tests.unit.test_agent_machine import Credentials, Sensor, Sessions, Trust, until
from tests.unit.test_applet import Direct

T = TypeVar("T")
# The PIN-only card has no finger for the emulated sensor (its own test below); the RSA card
# proves its project keys by signing (docs/card-variants.md).
FINGER_FLOW_VARIANTS = (
    "biosso-p256", "biosso-p384", "biosso-one-finger", "biosso-rsa2048", "biosso-chaining",
    "biosso-t0", "biosso-compressed",
)  # fmt: skip


class VariantCard(CardHandle):
    """The agent's card handle on an in-process applet, its stack chosen from the card's ATR."""

    applet: PivApplet

    def _call(self, fn: Callable[[BioSsoSession], T]) -> T:
        if self._session is None:
            state = self.applet.state
            atr = build_atr(state.transmission, extended=state.extended_length)
            self._session = BioSsoSession.for_atr(Direct(self.applet), atr)
        return fn(self._session)

    async def make_exclusive(self) -> None:
        """Nothing to reconnect in process."""


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki.init(tmp_path_factory.mktemp("pki"))


def agent_with(applet: PivApplet, pki: Pki) -> tuple[Agent, Sessions]:
    sessions = Sessions()

    def open_card(reader: str) -> CardHandle:
        handle = VariantCard(reader)
        handle.applet = applet
        return handle

    agent = Agent(
        trust=Trust(pki), sensor=Sensor(1001), credentials=Credentials(), sessions=sessions,
        endpoint_allowed=lambda endpoint: endpoint.startswith("127.0.0.1:"), open_card=open_card,
    )  # fmt: skip
    return agent, sessions


def state_of(agent: Agent) -> State:
    """The agent's state, read afresh (the flow moves it between two reads)."""
    return agent.snapshot.state


@pytest.mark.parametrize("name", FINGER_FLOW_VARIANTS)
def test_insert_list_finger_session_remove_on_each_variant(pki: Pki, name: str) -> None:
    applet = PivApplet(issue_card(load_profile(name), pki, keygen_seed=b"variants"))

    async def scenario() -> None:
        agent, sessions = agent_with(applet, pki)
        await agent.card_inserted("reader")
        await until(lambda: agent.snapshot.state in (State.PICKER, State.BLOCKED))
        assert state_of(agent) == State.PICKER, agent.snapshot.message
        assert [p.id for p in agent.snapshot.projects] == [
            "census-2021", "health-cohort", "genomics-lab",
        ]  # fmt: skip
        await agent.choose_project("genomics-lab")
        await until(
            lambda: agent.snapshot.state == State.RUNNING or agent.snapshot.problem is not None
        )
        assert state_of(agent) == State.RUNNING, agent.snapshot.message
        await agent.switch("census-2021")
        await until(
            lambda: (
                agent.snapshot.state == State.RUNNING
                and agent.snapshot.active_project == "census-2021"
            )
        )
        await agent.card_removed("reader")
        assert sessions.opened[-1].killed
        assert agent.snapshot.state == State.IDLE

    asyncio.run(scenario())


class _PlainCard(PivApplet):
    """A card with no PIV application."""

    def process(self, raw: bytes) -> bytes:
        return response(b"", 0x6A82)


def _blocked_then_next_card(pki: Pki, first: PivApplet) -> tuple[Problem | None, str, State]:
    demo = PivApplet(issue_card(load_profile("demo"), pki))
    current = [first]

    async def scenario() -> tuple[Problem | None, str, State]:
        agent, _sessions = agent_with(first, pki)
        agent.open_card = lambda reader: _handle(reader, current[0])
        await agent.card_inserted("reader")
        await until(lambda: agent.snapshot.state == State.BLOCKED)
        problem, message = agent.snapshot.problem, agent.snapshot.message
        await agent.card_removed("reader")
        current[0] = demo  # the box stays usable: the next card is listed
        await agent.card_inserted("reader")
        await until(lambda: agent.snapshot.state == State.PICKER)
        return problem, message, agent.snapshot.state

    return asyncio.run(scenario())


def _handle(reader: str, applet: PivApplet) -> CardHandle:
    handle = VariantCard(reader)
    handle.applet = applet
    return handle


def test_a_card_of_another_kind_is_not_supported_and_the_box_stays_usable(pki: Pki) -> None:
    plain = _PlainCard(issue_card(load_profile("demo"), pki))
    problem, message, after = _blocked_then_next_card(pki, plain)
    assert problem == Problem.CARD_NOT_SUPPORTED
    assert "no PIV application" in message
    assert after == State.PICKER


def test_a_one_project_card_on_a_box_without_the_catalogue_is_named_and_refused(
    pki: Pki,
) -> None:
    legacy = PivApplet(issue_card(load_profile("legacy-one-project"), pki))
    problem, message, _after = _blocked_then_next_card(pki, legacy)
    assert problem == Problem.CARD_NOT_SUPPORTED
    assert "one-project card (project 'census-2021')" in message
    assert "no project catalogue" in message


class _NoFinger:
    async def capture(self) -> bytes:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


def _catalogue(pki: Pki, path: Path, factor: SecondFactor, project: str = "census-2021") -> Path:
    server = load_certificate((bubble_dir(pki.path, "census-2021") / "server.pem").read_bytes())
    entry = CatalogueEntry(
        project, "Census microdata 2021", Protocol.RDP, "127.0.0.1:33891",
        server.public_bytes(serialization.Encoding.DER), factor, False,
    )  # fmt: skip
    signer = pki.directory_signer
    assert isinstance(signer.key, ec.EllipticCurvePrivateKey)
    path.write_bytes(
        sign_catalogue(
            ProjectCatalogue(1, datetime.now(UTC), (entry,)), signer.key, signer.cert,
            [pki.project_ca.cert],
        )
    )
    return path


def test_a_one_project_card_goes_to_its_project_and_asks_what_the_catalogue_says(
    pki: Pki, tmp_path: Path
) -> None:
    """finger_or_pin in the catalogue: the PIN is accepted; no picker choice on the way."""
    legacy = PivApplet(issue_card(load_profile("legacy-one-project"), pki))
    catalogue = _catalogue(pki, tmp_path / "catalogue.json", SecondFactor.FINGER_OR_PIN)

    async def scenario() -> None:
        agent, sessions = agent_with(legacy, pki)
        agent.catalogue = catalogue
        agent.sensor = _NoFinger()  # the researcher types the PIN: no finger arrives
        states: list[State] = []
        agent.listeners.append(
            lambda e: states.append(e.state) if isinstance(e, Transition) else None
        )
        await agent.card_inserted("reader")
        await until(lambda: agent.snapshot.state in (State.VERIFYING, State.BLOCKED))
        assert state_of(agent) == State.VERIFYING, agent.snapshot.message
        assert agent.snapshot.card_layout == CardLayout.ONE_PROJECT
        assert agent.snapshot.detail == Detail.PLACE_FINGER_OR_PIN
        await agent.submit_pin("123456")
        await until(lambda: state_of(agent) == State.RUNNING)
        assert State.PICKER not in states
        assert sessions.opened[-1].project.endpoint == "127.0.0.1:33891"  # the catalogue's
        await agent.card_removed("reader")
        assert sessions.opened[-1].killed

    asyncio.run(scenario())


def test_a_one_project_card_whose_project_the_site_does_not_list_is_refused(
    pki: Pki, tmp_path: Path
) -> None:
    legacy = PivApplet(issue_card(load_profile("legacy-one-project"), pki))
    catalogue = _catalogue(pki, tmp_path / "c.json", SecondFactor.FINGER, project="genomics-lab")

    async def scenario() -> None:
        agent, sessions = agent_with(legacy, pki)
        agent.catalogue = catalogue
        await agent.card_inserted("reader")
        await until(lambda: agent.snapshot.state == State.BLOCKED)
        assert agent.snapshot.problem == Problem.CARD_NOT_SUPPORTED
        assert "not in this box's project catalogue" in agent.snapshot.message
        assert not sessions.opened

    asyncio.run(scenario())


def test_a_card_without_a_directory_or_project_is_still_an_untrusted_directory(pki: Pki) -> None:
    state = issue_card(load_profile("demo"), pki)
    del state.objects[ObjectTag.DIRECTORY]
    problem, message, _after = _blocked_then_next_card(pki, PivApplet(state))
    assert problem == Problem.DIRECTORY_UNTRUSTED
    assert "no project directory" in message


def test_a_pin_only_card_asks_for_the_pin_and_refuses_finger_only_projects(pki: Pki) -> None:
    pin_only = PivApplet(issue_card(load_profile("biosso-pin-only"), pki))
    demo = load_profile("demo")  # census-2021 needs the finger on the demo card
    no_finger = PivApplet(issue_card(replace(demo, fingers=()), pki))

    async def scenario() -> None:
        agent, _sessions = agent_with(pin_only, pki)
        await agent.card_inserted("reader")
        await until(lambda: agent.snapshot.state == State.PICKER)
        await agent.choose_project("health-cohort")
        await until(lambda: agent.snapshot.state == State.VERIFYING)
        assert agent.snapshot.message == "enter your PIN"  # no finger to ask for
        await agent.submit_pin("123456")
        await until(lambda: state_of(agent) == State.RUNNING)
        await agent.card_removed("reader")

        agent, _sessions = agent_with(no_finger, pki)
        await agent.card_inserted("reader")
        await until(lambda: agent.snapshot.state == State.PICKER)
        await agent.choose_project("census-2021")
        await until(lambda: agent.snapshot.problem is not None)
        assert agent.snapshot.problem == Problem.NO_FINGER_ENROLLED
        assert "enrolment station" in agent.snapshot.message
        assert state_of(agent) == State.PICKER

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("name", "refused"),
    [("biosso-rsa2048", "RSA project keys are not renewed on the box"), ("biosso-p256", None)],
)
def test_the_renewal_timer_does_not_mark_due_what_the_box_cannot_renew(
    pki: Pki, tmp_path: Path, name: str, refused: str | None
) -> None:
    """The agent asks a verified card once whether the box may renew it; mark-due follows."""
    applet = PivApplet(issue_card(load_profile(name), pki, keygen_seed=b"variants"))

    async def scenario() -> None:
        agent, _sessions = agent_with(applet, pki)
        agent.seen_dir = tmp_path
        await agent.card_inserted("reader")
        await until(lambda: agent.snapshot.state in (State.PICKER, State.BLOCKED))
        await agent.choose_project("census-2021")
        await until(lambda: state_of(agent) == State.RUNNING)
        await until((tmp_path / RENEWABILITY).exists)
        await agent.card_removed("reader")

    asyncio.run(scenario())
    # every project of the card inside a window as wide as its certificates' lifetime
    due = mark_due(tmp_path, window_days=100_000)
    assert {d.project for d in due} == {"census-2021", "health-cohort", "genomics-lab"}
    if refused is None:
        assert all(d.refusal is None for d in due)
    else:
        assert all(d.refusal is not None and refused in d.refusal for d in due), due
