"""An agent in a process of its own, for tests that kill it (``python -m tests.integration.agent_child``).

argv[1]: a JSON document {config, reader, sams: {project: SAM path}}. It runs the
agent (with the tests' stand-in broker rewriting the bubbles' SAM files),
chooses ``census-2021`` once the picker shows, and prints the session
client's pid when the session runs. Then it waits to be killed.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

from sdbox.agent.api import State
from sdbox.agent.card import ReaderWatcher
from sdbox.agent.config import load
from sdbox.agent.service import build_agent
from tests.integration.agent_env import RdpBubble, StandInBroker, until


async def main(spec: dict[str, object]) -> None:
    config = load(Path(str(spec["config"])))
    sams = dict(spec["sams"])  # type: ignore[call-overload]
    bubbles = {p: RdpBubble(subprocess.Popen(["true"]), 0, Path(sam)) for p, sam in sams.items()}
    agent = build_agent(config, credentials=StandInBroker(bubbles))
    watcher = ReaderWatcher(
        asyncio.get_running_loop(), agent.on_reader_event, [str(spec["reader"])]
    )
    watcher.start()
    await until(lambda: agent.snapshot.state == State.PICKER)
    await agent.choose_project("census-2021")
    await until(lambda: agent.snapshot.state == State.RUNNING)
    assert agent._session is not None
    print(agent._session.pid, flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1])))
