"""The session-credential protocol with the reference broker, the real card path and real bubbles."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from sdbox.agent.api import State
from sdbox.centre.client import request_credential
from sdbox.centre.errors import CentreRefused, CentreUnreachable
from sdbox.identity import DevelopmentIdentity
from sdbox.smartcard import pcsc
from sdbox.smartcard.biosso import BioSsoSession
from sdbox.smartcard.directory import parse_signed_directory
from sdbox.smartcard.emulator.profiles import issue_card, parse_profile, seeded_template
from sdbox.smartcard.profile import KeyRef, ObjectTag
from sdbox.trust.pki import Pki
from tests.integration.agent_env import (
    BrokerEnv,
    card_profile,
    publish_crls,
    rdp_bubble,
    reference_broker,
    spice_bubble,
    until,
    write_config,
)
from tests.integration.conftest import InsertedCard, insert_card
from tests.integration.session_servers import free_port, tool_missing, xvfb
from tests.integration.test_agent import Bubbles

pytestmark = pytest.mark.skipif(
    bool(tool_missing("freerdp-shadow-cli3", "winpr-hash3", "qemu-system-x86_64", "Xvfb")),
    reason="the session stack is not installed (make setup)",
)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """This module revokes certificates: a PKI of its own."""
    return Pki.init(tmp_path_factory.mktemp("broker-pki"))


@dataclass
class Centre:
    bubbles: Bubbles
    broker: BrokerEnv


@pytest.fixture(scope="module")
def centre(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Centre]:
    ports = {"census-2021": free_port(), "health-cohort": free_port(), "genomics-lab": free_port()}
    work = tmp_path_factory.mktemp("centre")
    issue_card(parse_profile(card_profile(ports), source="test"), pki)
    with xvfb() as display, contextlib.ExitStack() as stack:
        env = Bubbles(display, ports)
        for project in ("census-2021", "health-cohort"):
            env.servers[project] = stack.enter_context(
                rdp_bubble(work / project, pki, project, display, ports[project])
            )
        env.servers["genomics-lab"] = stack.enter_context(  # type: ignore[assignment]
            spice_bubble(work / "genomics-lab", pki, "genomics-lab", ports["genomics-lab"])
        )
        broker = stack.enter_context(
            reference_broker(work / "broker", pki, dict(env.servers), ports)
        )
        yield Centre(env, broker)


@contextlib.contextmanager
def verified_card(
    pki: Pki, centre: Centre, index: int, tmp_path: Path
) -> Iterator[tuple[InsertedCard, BioSsoSession]]:
    state = issue_card(
        parse_profile(card_profile(centre.bubbles.ports), source="test"),
        pki,
        state_path=tmp_path / "card.json",
    )
    card = insert_card(state, pki, index)
    conn = pcsc.connect(card.reader)
    try:
        session = BioSsoSession(conn)
        session.piv.select()
        session.piv.verify_finger(KeyRef.FINGER_PRIMARY, seeded_template(1001))
        yield card, session
    finally:
        conn.close()
        card.remove()


def _census(card: InsertedCard) -> Any:
    return parse_signed_directory(card.state.objects[ObjectTag.DIRECTORY]).directory.project(
        "census-2021"
    )


async def _ask(centre: Centre, session: BioSsoSession, project: Any, **overrides: Any) -> Any:
    identity = overrides.pop(
        "identity", DevelopmentIdentity(centre.broker.box_certificate, centre.broker.box_key)
    )

    async def ecdh(peer: ec.EllipticCurvePublicKey) -> bytes:
        return await asyncio.to_thread(session.ecdh, project.slot, peer)

    kwargs: dict[str, Any] = {
        "project_id": project.id, "endpoint": project.endpoint, "project_certificate": session.certificate(project.slot),
        "card_ecdh": ecdh, "identity": identity, "server_anchors": [x509.load_pem_x509_certificate(centre.broker.anchors.read_bytes())],
    }  # fmt: skip
    url = overrides.pop("url", centre.broker.url)
    kwargs.update(overrides)
    return await request_credential(url, **kwargs)


def test_agent_gets_one_time_credentials_from_the_broker(
    pki: Pki, centre: Centre, free_reader: int, tmp_path: Path
) -> None:
    from tests.integration.test_agent import running_agent

    async def scenario() -> None:
        async with running_agent(
            pki, centre.bubbles, free_reader, tmp_path, broker=centre.broker
        ) as run:
            await until(lambda: run.agent.snapshot.state == State.PICKER)
            await run.iface.call_choose_project("census-2021")  # type: ignore[attr-defined]
            await until(
                lambda: (
                    run.agent.snapshot.state == State.RUNNING
                    or run.agent.snapshot.problem is not None
                )
            )
            assert run.agent.snapshot.state == State.RUNNING, run.agent.snapshot.message
            await run.iface.call_switch("genomics-lab")  # type: ignore[attr-defined]
            await until(
                lambda: (
                    run.agent.snapshot.active_project == "genomics-lab"
                    and run.agent.snapshot.state == State.RUNNING
                )
            )

    issued_before = centre.broker.server.broker.issued
    asyncio.run(scenario())
    assert centre.broker.server.broker.issued == issued_before + 2


def test_card_pulled_during_the_credential_request_leaves_no_session(
    pki: Pki, centre: Centre, free_reader: int, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The broker's fresh ECDH (the second GENERAL AUTHENTICATE on the project key) fails."""
    from tests.integration.test_agent import running_agent

    async def scenario() -> None:
        async with running_agent(
            pki,
            centre.bubbles,
            free_reader,
            tmp_path,
            broker=centre.broker,
            fault="remove:ins=87,p2=82,nth=2",  # the first is the agent's own possession check
        ) as run:
            await until(lambda: run.agent.snapshot.state == State.PICKER)
            await run.iface.call_choose_project("census-2021")  # type: ignore[attr-defined]
            await until(lambda: not run.card.virtual.inserted, timeout=30)
            await until(lambda: run.agent.snapshot.state == State.IDLE, timeout=30)
            await asyncio.sleep(0.3)  # let any stray flow show itself
            assert run.agent.snapshot.state == State.IDLE
            assert run.agent._session is None
            # it got past its own checks: the card went at the credential request
            assert "project and server certificates valid" in caplog.text

    caplog.set_level(logging.INFO)
    issued_before = centre.broker.server.broker.issued
    asyncio.run(scenario())
    assert centre.broker.server.broker.issued == issued_before  # nothing was handed out


def test_credentials_are_fresh_each_time_and_never_logged(
    pki: Pki, centre: Centre, free_reader: int, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with verified_card(pki, centre, free_reader, tmp_path) as (card, session):
        project = _census(card)
        first = asyncio.run(_ask(centre, session, project))
        second = asyncio.run(_ask(centre, session, project))
    assert first.kind == "password"
    assert first.user == "researcher"
    assert first.secret != second.secret
    sam = Path(centre.broker.server.broker.config.bubbles["census-2021"].sam_file).read_text()
    assert sam.count("\n") == 1  # only the newest password is valid on the bubble
    for secret in (first.secret, second.secret):
        assert secret not in caplog.text
        assert secret not in repr(first)


def test_wrong_key_proof_is_refused(
    pki: Pki, centre: Centre, free_reader: int, tmp_path: Path
) -> None:
    with verified_card(pki, centre, free_reader, tmp_path) as (card, session):
        project = _census(card)

        async def wrong(peer: ec.EllipticCurvePublicKey) -> bytes:
            return await asyncio.to_thread(session.ecdh, 0x83, peer)  # another project's key

        with pytest.raises(CentreRefused, match="did not prove it holds the project key") as err:
            asyncio.run(_ask(centre, session, project, card_ecdh=wrong))
        assert err.value.code == "possession"


def test_unknown_box_is_refused(pki: Pki, centre: Centre, free_reader: int, tmp_path: Path) -> None:
    other = Pki.init(tmp_path / "other-pki")
    key = ec.generate_private_key(ec.SECP256R1())
    from cryptography.hazmat.primitives import serialization

    (tmp_path / "k.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (tmp_path / "c.pem").write_bytes(
        other.issue_box(key.public_key(), box_id="rogue").public_bytes(serialization.Encoding.PEM)
    )
    with (
        verified_card(pki, centre, free_reader, tmp_path) as (card, session),
        pytest.raises(CentreRefused, match="this box is not recognised") as err,
    ):
        asyncio.run(
            _ask(
                centre,
                session,
                _census(card),
                identity=DevelopmentIdentity(tmp_path / "c.pem", tmp_path / "k.pem"),
            )
        )
    assert err.value.code == "box_identity"


def test_revoked_project_certificate_is_refused(
    pki: Pki, centre: Centre, free_reader: int, tmp_path: Path
) -> None:
    with verified_card(pki, centre, free_reader, tmp_path) as (card, session):
        project = _census(card)
        pki.revoke(session.certificate(project.slot), x509.ReasonFlags.key_compromise)
        publish_crls(pki, centre.broker.server.broker.config.crl_dir)
        with pytest.raises(CentreRefused, match="revoked") as err:
            asyncio.run(_ask(centre, session, project))
    assert err.value.code == "project_certificate"


def test_unreachable_broker(pki: Pki, centre: Centre, free_reader: int, tmp_path: Path) -> None:
    with (
        verified_card(pki, centre, free_reader, tmp_path) as (card, session),
        pytest.raises(CentreUnreachable, match="cannot be reached"),
    ):
        asyncio.run(_ask(centre, session, _census(card), url=f"https://127.0.0.1:{free_port()}"))


def test_agent_reports_an_unreachable_broker(
    pki: Pki, centre: Centre, free_reader: int, tmp_path: Path
) -> None:
    from tests.integration.test_agent import running_agent

    dead = BrokerEnv(
        None,
        f"https://127.0.0.1:{free_port()}",
        centre.broker.box_key,
        centre.broker.box_certificate,
        centre.broker.anchors,
    )

    async def scenario() -> None:
        async with running_agent(pki, centre.bubbles, free_reader, tmp_path, broker=dead) as run:
            await until(lambda: run.agent.snapshot.state == State.PICKER)
            await run.iface.call_choose_project("health-cohort")  # type: ignore[attr-defined]
            await until(lambda: run.agent.snapshot.problem is not None)
            assert run.agent.snapshot.problem is not None
            assert run.agent.snapshot.problem.value == "broker_unreachable"
            assert run.agent._session is None

    asyncio.run(scenario())


__all__ = ["write_config"]
