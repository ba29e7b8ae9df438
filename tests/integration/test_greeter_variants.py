"""The greeter on other card variants, under cage, driven through the real agent (references).

A PIN-only card: a project that needs the finger is refused with its
detail, and a project that takes the PIN gets a PIN screen with no finger
on it; the PIN opens the session.
"""

from __future__ import annotations

import asyncio
import shutil
from dataclasses import replace
from pathlib import Path

from sdbox.agent.api import State
from sdbox.smartcard.directory import SecondFactor
from sdbox.smartcard.emulator.profiles import issue_card, load_profile
from sdbox.trust.pki import Pki
from tests.integration.conftest import insert_card
from tests.integration.greeter_env import expect, kiosk
from tests.integration.test_agent import Bubbles, _wait, bubbles, running_agent
from tests.integration.test_greeter import OUT, _bus_dir, needs_kiosk

__all__ = ["bubbles"]


@needs_kiosk
def test_a_pin_only_card_in_the_greeter(
    pki: Pki, bubbles: Bubbles, free_reader: int, tmp_path: Path
) -> None:
    bus_dir = _bus_dir()
    profile = load_profile("biosso-pin-only")
    # census-2021 needs the finger here (a centre may say so of a project), health-cohort not
    profile = replace(profile, projects=tuple(
        replace(p, endpoint=f"127.0.0.1:{bubbles.ports[p.id]}",
                second_factor=SecondFactor.FINGER if p.id == "census-2021" else p.second_factor)
        for p in profile.projects if p.id in bubbles.ports
    ))  # fmt: skip

    async def scenario() -> None:
        async with running_agent(pki, bubbles, free_reader, tmp_path, bus_dir=bus_dir) as run:
            await _wait(run.agent, State.PICKER)
            await asyncio.to_thread(run.card.remove)
            await _wait(run.agent, State.IDLE)
            card = issue_card(profile, pki)
            inserted = await asyncio.to_thread(insert_card, card, pki, free_reader)
            try:
                await _wait(run.agent, State.PICKER)
                with kiosk(run.bus_address, "en") as screen:
                    await run.iface.call_choose_project("census-2021")  # type: ignore[attr-defined]
                    await asyncio.to_thread(
                        expect, screen, "no-finger-enrolled", OUT,
                        ("This project needs a finger, and none is enrolled on this card",
                         "No finger is enrolled on this card.", "Census microdata 2021"),
                    )  # fmt: skip
                    assert run.agent.snapshot.state == State.PICKER
                    await run.iface.call_choose_project("health-cohort")  # type: ignore[attr-defined]
                    await _wait(run.agent, State.VERIFYING)
                    await asyncio.to_thread(
                        expect, screen, "pin-only", OUT,
                        ("Enter your PIN", "Type your PIN: this card holds no finger.",
                         "Health cohort study"),
                    )  # fmt: skip
                    texts = " ".join(screen.screen_texts())
                    assert "sensor" not in texts
                    assert "Place your finger" not in texts
                    await run.iface.call_submit_pin("123456")  # type: ignore[attr-defined]
                    await _wait(run.agent, State.RUNNING)
            finally:
                await asyncio.to_thread(inserted.remove)
            await _wait(run.agent, State.IDLE)

    try:
        asyncio.run(scenario())
    finally:
        shutil.rmtree(bus_dir, ignore_errors=True)
