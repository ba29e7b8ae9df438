"""What the agent reports when a step fails: a problem code (sdbox.agent.api) and plain words.

:func:`problem_for` is the one translation from an exception to the problem
the greeter shows (python-fido2's ``_ctap2client_err`` is the model): by the
exception's type, within the step that raised it, never by its name or
message. A card that cannot be reached (``CardAccessError``) is no
connection step's problem: the flow lets it through and the agent reports
the card unusable (``Step.CARD``).
"""

from __future__ import annotations

from enum import Enum

from sdbox.agent.api import Problem
from sdbox.centre.errors import CentreUnreachable
from sdbox.errors import SdboxError
from sdbox.smartcard.errors import (
    FingerBlocked,
    NotSupported,
    PinBlocked,
    WrongFinger,
    WrongPin,
)
from sdbox.smartcard.variants import ContradictoryCard
from sdbox.trust.errors import (
    CertificateExpired,
    CertificateNotYetValid,
    CertificateRevoked,
    ClockWrong,
)


class Refusal(SdboxError):
    """A step refused, with the problem code the greeter shows."""

    def __init__(self, problem: Problem, message: str) -> None:
        super().__init__(message)
        self.problem = problem


class Step(Enum):
    """The agent's steps that can fail with a problem."""

    READING = "reading"  # the card's summary and directory, at insertion
    CARD = "card"  # any step, when the card itself fails (or the flow has a bug)
    HOLDER = "holder"  # the finger (or PIN) on the card, and the capture before it
    PROJECT = "project"  # the project certificate and the possession proof of its key
    SERVER = "server"  # the bubble's server certificate
    CREDENTIAL = "credential"  # the session credential from the centre


# Per step: (exception type, problem), the first match wins; else the step's default.
_BY_TYPE: dict[Step, tuple[tuple[type[BaseException], Problem], ...]] = {
    Step.READING: (  # otherwise, whatever fails, the card is not one this box can use
        (NotSupported, Problem.CARD_NOT_SUPPORTED),  # no PIV application: another kind of card
        (ContradictoryCard, Problem.CARD_NOT_SUPPORTED),  # the message names the contradiction
    ),
    Step.CARD: (),
    Step.HOLDER: (
        (WrongFinger, Problem.WRONG_FINGER),
        (WrongPin, Problem.WRONG_PIN),
        (FingerBlocked, Problem.FINGER_BLOCKED),
        (PinBlocked, Problem.PIN_BLOCKED),
    ),
    Step.PROJECT: (
        (CertificateRevoked, Problem.CERTIFICATE_REVOKED),
        (CertificateExpired, Problem.CERTIFICATE_EXPIRED),
        (CertificateNotYetValid, Problem.CERTIFICATE_EXPIRED),
        (ClockWrong, Problem.CLOCK_WRONG),
    ),
    Step.SERVER: (),  # whatever is wrong with the bubble's certificate, it is not trusted
    Step.CREDENTIAL: ((CentreUnreachable, Problem.BROKER_UNREACHABLE),),
}
_DEFAULT: dict[Step, Problem] = {
    Step.READING: Problem.CARD_NOT_RECOGNISED,
    Step.CARD: Problem.CARD_UNREADABLE,
    Step.HOLDER: Problem.SENSOR_FAILED,  # a poor capture, a sensor gone, a card refusing the probe
    Step.PROJECT: Problem.CERTIFICATE_INVALID,
    Step.SERVER: Problem.SERVER_UNTRUSTED,
    Step.CREDENTIAL: Problem.CREDENTIAL_REFUSED,
}


def problem_for(exc: BaseException, step: Step) -> Problem:
    """The problem the greeter shows for ``exc``, raised during ``step``."""
    for kind, problem in _BY_TYPE[step]:
        if isinstance(exc, kind):
            return problem
    return _DEFAULT[step]
