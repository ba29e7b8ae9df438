"""The audit trail over a scripted flow: every documented event once per occurrence, in order, with its fields."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from sdbox.agent.events import State
from sdbox.trust.pki import Pki
from tests.integration.test_agent import Bubbles, _wait, bubbles, running_agent

__all__ = ["bubbles"]

# docs/agent.md, "Audit trail": the fields each event carries
FIELDS = {
    "card_inserted": {"reader", "card"},
    "card_removed": {"reader", "card"},
    "directory_verified": {"card", "projects", "sequence"},
    "project_chosen": {"project", "card"},
    "holder_verified": {"method", "card"},
    "credentials_validated": {"project", "card"},
    "credential_issued": {"project", "user"},
    "session_started": {"project", "endpoint"},
    "session_ended": {"project", "reason"},
    "switch": {"project", "previous"},
}


def test_scripted_flow_writes_the_documented_events(
    pki: Pki, bubbles: Bubbles, free_reader: int, tmp_path: Path
) -> None:
    events: list[tuple[str, dict[str, str]]] = []

    class Audit(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            fields = {
                k.removeprefix("SDBOX_").lower(): str(v)
                for k, v in record.__dict__.items()
                if k.startswith("SDBOX_")
            }
            events.append((fields.pop("event"), fields))

    logger = logging.getLogger("sdbox.audit")
    handler = Audit()
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:

        async def scenario() -> None:
            async with running_agent(pki, bubbles, free_reader, tmp_path) as run:
                await _wait(run.agent, State.PICKER)
                await run.iface.call_choose_project("census-2021")  # type: ignore[attr-defined]
                await _wait(run.agent, State.RUNNING)
                await run.iface.call_switch("health-cohort")  # type: ignore[attr-defined]
                await _wait(run.agent, State.CONNECTING)
                await _wait(run.agent, State.RUNNING)
                await asyncio.to_thread(run.card.remove)
                await _wait(run.agent, State.IDLE)

        asyncio.run(scenario())
    finally:
        logger.removeHandler(handler)

    names = [name for name, _fields in events]
    assert names == [
        "card_inserted", "directory_verified",
        "project_chosen", "holder_verified", "credentials_validated", "credential_issued", "session_started",
        "switch", "session_ended", "credentials_validated", "credential_issued", "session_started",
        "session_ended", "card_removed",
    ]  # fmt: skip
    for name, fields in events:
        assert FIELDS[name] <= set(fields), f"{name} lacks {FIELDS[name] - set(fields)}"
    ended = [fields["reason"] for name, fields in events if name == "session_ended"]
    assert ended == ["closed", "killed"]
    guid = dict(events)["card_inserted"]["card"]
    assert all(fields.get("card", guid) == guid for _name, fields in events)
    assert dict(events)["holder_verified"]["method"] == "finger"
