"""The agent on the real stack meets cards of other variants (docs/card-variants.md).

An unsupported card is reported over D-Bus as ``card_not_supported`` with
words that say what was seen, and the box stays usable: the next card is
listed as usual.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from sdbox.agent.api import State
from sdbox.certificates import load_certificate
from sdbox.smartcard.apdu import Sw
from sdbox.smartcard.catalogue import CatalogueEntry, ProjectCatalogue, sign_catalogue
from sdbox.smartcard.directory import Protocol, SecondFactor
from sdbox.smartcard.emulator.applet import PivApplet, response
from sdbox.smartcard.emulator.profiles import bubble_dir, issue_card, load_profile
from sdbox.smartcard.emulator.stack import reader_name, wait_for_card
from sdbox.smartcard.emulator.vpcd import VPCD_BASE_PORT, VirtualCard
from sdbox.trust.pki import Pki
from tests.integration.agent_env import reference_broker
from tests.integration.conftest import insert_card
from tests.integration.session_servers import pid_alive
from tests.integration.test_agent import Bubbles, _wait, bubbles, running_agent

__all__ = ["bubbles"]  # the module-scoped fixture, shared with test_agent


class _PlainCard(PivApplet):
    """A card of another kind: no PIV application."""

    def process(self, raw: bytes) -> bytes:
        return response(b"", Sw.FILE_NOT_FOUND)


def test_unsupported_cards_are_named_and_the_next_card_is_listed(
    pki: Pki, bubbles: Bubbles, free_reader: int, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with running_agent(pki, bubbles, free_reader, tmp_path) as run:
            await _wait(run.agent, State.PICKER)
            listed = [p.id for p in run.agent.snapshot.projects]
            await asyncio.to_thread(run.card.remove)
            await _wait(run.agent, State.IDLE)

            plain = VirtualCard(
                _PlainCard(issue_card(load_profile("demo"), pki)),
                port=VPCD_BASE_PORT + free_reader,
            )
            await asyncio.to_thread(plain.insert)
            try:
                await _wait(run.agent, State.BLOCKED)
                assert await run.iface.get_problem() == "card_not_supported"  # type: ignore[attr-defined]
                assert "no PIV application" in await run.iface.get_message()  # type: ignore[attr-defined]
            finally:
                await asyncio.to_thread(plain.remove)
                await asyncio.to_thread(wait_for_card, reader_name(free_reader), present=False)
            await _wait(run.agent, State.IDLE)

            # a one-project card on a box without the site's project catalogue: refused, named
            legacy = issue_card(load_profile("legacy-one-project"), pki)
            inserted = await asyncio.to_thread(insert_card, legacy, pki, free_reader)
            try:
                await _wait(run.agent, State.BLOCKED)
                assert await run.iface.get_problem() == "card_not_supported"  # type: ignore[attr-defined]
                message = await run.iface.get_message()  # type: ignore[attr-defined]
                assert "one-project card (project 'census-2021')" in message
                assert "no project catalogue" in message
            finally:
                await asyncio.to_thread(inserted.remove)
            await _wait(run.agent, State.IDLE)

            await asyncio.to_thread(run.card.insert)  # the researcher's own card: as usual
            await _wait(run.agent, State.PICKER)
            assert [p.id for p in run.agent.snapshot.projects] == listed

    asyncio.run(scenario())


def _catalogue(pki: Pki, ports: dict[str, int], *, second_factor: SecondFactor) -> bytes:
    """The site's catalogue, signed by the PKI's directory signer: census-2021 at its bubble."""
    server = load_certificate((bubble_dir(pki.path, "census-2021") / "server.pem").read_bytes())
    entry = CatalogueEntry(
        "census-2021", "Census microdata 2021", Protocol.RDP, f"127.0.0.1:{ports['census-2021']}",
        server.public_bytes(serialization.Encoding.DER), second_factor, False,
    )  # fmt: skip
    catalogue = ProjectCatalogue(1, datetime.now(UTC), (entry,))
    signer = pki.directory_signer
    return sign_catalogue(catalogue, signer.key, signer.cert, [])  # type: ignore[arg-type]


def test_a_one_project_card_goes_straight_to_its_project_and_removal_ends_it(
    pki: Pki, bubbles: Bubbles, free_reader: int, tmp_path: Path
) -> None:
    """Insert the earlier card: no choice, finger, session; pull it: the session is gone."""
    path = tmp_path / "project-catalogue.json"
    path.write_bytes(_catalogue(pki, bubbles.ports, second_factor=SecondFactor.FINGER))
    extra = f'[card]\nproject_catalogue = "{path}"\n'

    async def scenario() -> None:
        async with running_agent(pki, bubbles, free_reader, tmp_path, extra_config=extra) as run:
            await _wait(run.agent, State.PICKER)
            assert await run.iface.get_card_layout() == "directory"  # type: ignore[attr-defined]
            await asyncio.to_thread(run.card.remove)
            await _wait(run.agent, State.IDLE)
            run.events.clear()

            legacy = issue_card(load_profile("legacy-one-project"), pki)
            inserted = await asyncio.to_thread(insert_card, legacy, pki, free_reader)
            try:
                await _wait(run.agent, State.RUNNING)
                states = [e.state for e in run.events]
                # straight to its project: the finger was asked for, the picker never shown
                assert State.VERIFYING in states
                assert State.PICKER not in states
                assert await run.iface.get_card_layout() == "one_project"  # type: ignore[attr-defined]
                projects = await run.iface.get_projects()  # type: ignore[attr-defined]
                assert [p[0] for p in projects] == ["census-2021"]
                assert await run.iface.get_active_project() == "census-2021"  # type: ignore[attr-defined]
                session = run.agent._session
                assert session is not None
                assert session.pid is not None
                pid = session.pid
            finally:
                await asyncio.to_thread(inserted.remove)
            await _wait(run.agent, State.IDLE, timeout=10)
            assert not pid_alive(pid)
            assert await run.iface.get_card_layout() == ""  # type: ignore[attr-defined]

    asyncio.run(scenario())


def test_a_one_project_card_is_refused_when_the_catalogue_is_not_the_centres(
    pki: Pki, bubbles: Bubbles, free_reader: int, tmp_path: Path
) -> None:
    """A catalogue altered on the box (here: its endpoint) fails closed, and says so."""
    path = tmp_path / "project-catalogue.json"
    good = _catalogue(pki, bubbles.ports, second_factor=SecondFactor.FINGER)
    import base64
    import json

    outer = json.loads(good)
    content = base64.b64decode(outer["catalogue"]).replace(b"127.0.0.1", b"127.0.0.2")
    outer["catalogue"] = base64.b64encode(content).decode()
    path.write_text(json.dumps(outer))
    extra = f'[card]\nproject_catalogue = "{path}"\n'

    async def scenario() -> None:
        async with running_agent(pki, bubbles, free_reader, tmp_path, extra_config=extra) as run:
            await _wait(run.agent, State.PICKER)
            await asyncio.to_thread(run.card.remove)
            await _wait(run.agent, State.IDLE)
            legacy = issue_card(load_profile("legacy-one-project"), pki)
            inserted = await asyncio.to_thread(insert_card, legacy, pki, free_reader)
            try:
                await _wait(run.agent, State.BLOCKED)
                assert await run.iface.get_problem() == "directory_untrusted"  # type: ignore[attr-defined]
                assert "signature does not verify" in await run.iface.get_message()  # type: ignore[attr-defined]
                assert run.agent._session is None
            finally:
                await asyncio.to_thread(inserted.remove)
            await _wait(run.agent, State.IDLE)

    asyncio.run(scenario())


def test_the_rsa_card_proves_its_project_key_by_signing_and_gets_a_session(
    pki: Pki, bubbles: Bubbles, free_reader: int, tmp_path: Path
) -> None:
    """RSA-2048 project keys cannot do ECDH: the card signs the broker's transcript instead."""
    profile = load_profile("biosso-rsa2048")
    profile = replace(profile, projects=tuple(
        replace(p, endpoint=f"127.0.0.1:{bubbles.ports[p.id]}")
        for p in profile.projects if p.id in bubbles.ports
    ))  # fmt: skip

    async def scenario() -> None:
        with reference_broker(
            tmp_path / "broker", pki, dict(bubbles.servers), bubbles.ports
        ) as broker:
            async with running_agent(pki, bubbles, free_reader, tmp_path, broker=broker) as run:
                await _wait(run.agent, State.PICKER)
                await asyncio.to_thread(run.card.remove)
                await _wait(run.agent, State.IDLE)
                card = issue_card(profile, pki)
                inserted = await asyncio.to_thread(insert_card, card, pki, free_reader)
                try:
                    await _wait(run.agent, State.PICKER)
                    issued = broker.server.broker.issued
                    await run.iface.call_choose_project("census-2021")  # type: ignore[attr-defined]
                    await _wait(run.agent, State.RUNNING)
                    assert await run.iface.get_active_project() == "census-2021"  # type: ignore[attr-defined]
                    assert broker.server.broker.issued == issued + 1
                finally:
                    await asyncio.to_thread(inserted.remove)
                await _wait(run.agent, State.IDLE, timeout=10)

    asyncio.run(scenario())


def test_a_chip_without_extended_length_is_listed_from_the_cache_at_its_next_insertion(
    pki: Pki, bubbles: Bubbles, free_reader: int, tmp_path: Path
) -> None:
    """The agent keeps the verified directory; the same card is listed alike from its head."""

    async def scenario() -> None:
        async with running_agent(pki, bubbles, free_reader, tmp_path) as run:
            await _wait(run.agent, State.PICKER)
            await asyncio.to_thread(run.card.remove)
            await _wait(run.agent, State.IDLE)
            chaining = issue_card(load_profile("biosso-chaining"), pki)
            cached = run.config.state_dir / "directories" / f"{chaining.guid.hex()}.dir"
            listed, apdus = [], []
            for _ in range(2):
                inserted = await asyncio.to_thread(insert_card, chaining, pki, free_reader)
                try:
                    await _wait(run.agent, State.PICKER)
                    listed.append([p.id for p in run.agent.snapshot.projects])
                    assert cached.exists()
                    card = run.agent._card
                    assert card is not None
                    assert card.handle._session is not None
                    apdus.append(card.handle._session.stack.stats.apdus)
                finally:
                    await asyncio.to_thread(inserted.remove)
                await _wait(run.agent, State.IDLE)
            assert listed[0] == listed[1] == ["census-2021", "health-cohort", "genomics-lab"]
            assert apdus[0] >= 17  # the directory, 256 bytes at a time
            assert apdus[1] <= 6  # its head, then the box's verified copy

    asyncio.run(scenario())
