"""The support screen's "send diagnostics": the box's own `sdbox fleet diagnostics`, for the greeter.

The agent runs the command the helpdesk would run on the box (docs/fleet.md,
"Diagnostics for the helpdesk"): versions, tunnel and network state,
certificate expiries, recent problem codes and the recent journal lines of
sdbox's units, signed with the box identity and sent to the fleet service,
where the operator sees them on the box's page. It runs as a child process so
that a centre that does not answer, or a TPM that is slow, never holds up the
agent's loop, and so that the upload is the very path the command line tests.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sdbox.agent.api import DiagnosticsOutcome
from sdbox.process import CommandFailed, run

_log = logging.getLogger("sdbox.agent")

REASON = "sent from the box's support screen"
TIMEOUT_S = 60.0  # the reporter's HTTP timeout is 10 s, twice (a sequence re-aligned), plus `ip`

# The command line's exit codes (sdbox/_cli/errors.py) that say something the screen can act on
_BY_EXIT_CODE = {7: DiagnosticsOutcome.NOT_CONFIGURED, 8: DiagnosticsOutcome.UNREACHABLE}


@dataclass(frozen=True)
class DiagnosticsResult:
    """D-Bus ``SendDiagnostics``'s answer: the outcome and its text (the request's number, or why)."""

    outcome: DiagnosticsOutcome
    text: str = ""

    def to_wire(self) -> tuple[str, str]:
        """``(ss)``."""
        return self.outcome.value, self.text


def _why(error: CommandFailed) -> str:
    """The command's own last words ("sdbox: ..."), else what failed."""
    lines = [line for line in error.detail.splitlines() if line.strip()]
    if lines:
        return lines[-1].removeprefix("sdbox: ").strip()
    return error.message


def send(
    fleet_config: Path,
    *,
    reason: str = REASON,
    command: Sequence[str] = (sys.executable, "-m", "sdbox"),
) -> DiagnosticsResult:
    """Upload the box's diagnostics now; never raises (the screen shows what happened)."""
    if not fleet_config.is_file():
        return DiagnosticsResult(
            DiagnosticsOutcome.NOT_CONFIGURED, f"this box has no fleet configuration ({fleet_config})"
        )
    argv = [*command, "fleet", "diagnostics", "--config", str(fleet_config), "--reason", reason, "--json"]
    try:
        answer = json.loads(run(argv, what="sending diagnostics", timeout=TIMEOUT_S))
    except CommandFailed as exc:
        outcome = _BY_EXIT_CODE.get(exc.returncode or 0, DiagnosticsOutcome.FAILED)
        _log.warning("diagnostics not sent (%s): %s", outcome.value, _why(exc))
        return DiagnosticsResult(outcome, _why(exc))
    except ValueError:
        return DiagnosticsResult(DiagnosticsOutcome.FAILED, "the upload's answer could not be read")
    _log.info("diagnostics sent to the fleet service (request %s)", answer.get("accepted"))
    return DiagnosticsResult(DiagnosticsOutcome.SENT, str(answer.get("accepted", "")))
