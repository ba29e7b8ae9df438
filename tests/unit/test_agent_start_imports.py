"""The agent's start loads what it runs: every module imported before READY is seconds of a box's boot under emulation."""

from __future__ import annotations

import subprocess
import sys

from sdbox._cli import _COMMAND_MODULES, cli

# what `sdbox agent run` must not import before it is ready: other command families'
# heavy modules (the card emulator, the PKI tools) and numpy (the capture-quality measure)
NOT_AT_START = ("numpy", "sdbox.smartcard.emulator.profiles", "sdbox.trust.pki", "sdbox._cli.emulate")


def test_the_agent_command_imports_neither_numpy_nor_other_command_families() -> None:
    probe = (
        "import sys\n"
        "from sdbox._cli import cli\n"
        "cli.commands['agent']\n"
        "import sdbox.agent.service\n"
        f"print(' '.join(m for m in {NOT_AT_START!r} if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                          check=True)  # fmt: skip
    assert done.stdout.split() == []


def test_every_command_family_is_still_reachable() -> None:
    assert list(cli.commands) == sorted(name for _, name in _COMMAND_MODULES)
    assert all(cli.commands[name].name == name for name in cli.commands)
