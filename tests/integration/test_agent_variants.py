"""The agent on the real stack meets cards of other variants (docs/card-variants.md).

An unsupported card is reported over D-Bus as ``card_not_supported`` with
words that say what was seen, and the box stays usable: the next card is
listed as usual.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from sdbox.agent.api import State
from sdbox.smartcard.apdu import Sw
from sdbox.smartcard.emulator.applet import PivApplet, response
from sdbox.smartcard.emulator.profiles import issue_card, load_profile
from sdbox.smartcard.emulator.stack import reader_name, wait_for_card
from sdbox.smartcard.emulator.vpcd import VPCD_BASE_PORT, VirtualCard
from sdbox.trust.pki import Pki
from tests.integration.conftest import insert_card
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

            legacy = issue_card(load_profile("legacy-one-project"), pki)
            inserted = await asyncio.to_thread(insert_card, legacy, pki, free_reader)
            try:
                await _wait(run.agent, State.BLOCKED)
                assert await run.iface.get_problem() == "card_not_supported"  # type: ignore[attr-defined]
                assert "one-project card (project 'census-2021')" in (
                    await run.iface.get_message()  # type: ignore[attr-defined]
                )
            finally:
                await asyncio.to_thread(inserted.remove)
            await _wait(run.agent, State.IDLE)

            await asyncio.to_thread(run.card.insert)  # the researcher's own card: as usual
            await _wait(run.agent, State.PICKER)
            assert [p.id for p in run.agent.snapshot.projects] == listed

    asyncio.run(scenario())
