"""What the agent reports when a step fails: a problem code (sdbox.agent.api) and plain words."""

from __future__ import annotations

from sdbox.agent.api import Problem
from sdbox.errors import SdboxError
from sdbox.trust import errors as trust_errors


class Refusal(SdboxError):
    """A step refused, with the problem code the greeter shows."""

    def __init__(self, problem: Problem, message: str) -> None:
        super().__init__(message)
        self.problem = problem


def _trust_problem(exc: SdboxError) -> Problem:
    if isinstance(exc, trust_errors.CertificateRevoked):
        return Problem.CERTIFICATE_REVOKED
    if isinstance(exc, trust_errors.CertificateExpired | trust_errors.CertificateNotYetValid):
        return Problem.CERTIFICATE_EXPIRED
    if isinstance(exc, trust_errors.ClockWrong):
        return Problem.CLOCK_WRONG
    return Problem.CERTIFICATE_INVALID
