"""The root of sdbox's error hierarchy.

Every layer defines its own error types under :class:`SdboxError`; each
carries a message in plain words (what happened, what to do) that the CLI and
the greeter can show as they are. The CLI maps types to exit codes in one
place (``sdbox._cli.errors``).
"""

from __future__ import annotations


class SdboxError(Exception):
    """An error a researcher, an engineer or an operator can act on."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message
