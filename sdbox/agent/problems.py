"""What the agent reports when a step fails: a problem code (sdbox.agent.api) and plain words.

:func:`problem_for` is the one translation from an exception to the problem
the greeter shows (python-fido2's ``_ctap2client_err`` is the model): by the
exception's type, within the step that raised it, never by its name or
message. A card that cannot be reached (``CardAccessError``) is no
connection step's problem: the flow lets it through and the agent reports
the card unusable (``Step.CARD``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from enum import Enum
from typing import Any

from sdbox.agent.api import Detail, Problem
from sdbox.agent.bioenrol import EnrolmentNotAuthorised, NoFingerprint
from sdbox.biometric.errors import BiometricError, SensorUnavailable
from sdbox.biometric.quality import PoorCapture
from sdbox.centre.errors import CentreError, CentreRefused, CentreUnreachable
from sdbox.errors import SdboxError
from sdbox.session.errors import SessionError, SessionFailed
from sdbox.smartcard.errors import (
    CardBusy,
    CardError,
    CardNotResponding,
    CardRemoved,
    DirectoryError,
    FingerBlocked,
    FingerNotEnrolled,
    InvalidPinFormat,
    NoCard,
    NoReader,
    NotSupported,
    PcscUnavailable,
    PinBlocked,
    SecurityStatusNotSatisfied,
    VerificationError,
    WrongFinger,
    WrongPin,
)
from sdbox.smartcard.variants import ContradictoryCard
from sdbox.trust.errors import (
    CertificateExpired,
    CertificateNotYetValid,
    CertificateRevoked,
    ClockWrong,
    CrlMissing,
    CrlStale,
    PossessionFailed,
    ProjectMismatch,
    ServerNameMismatch,
    TrustError,
)


class Refusal(SdboxError):
    """A step refused, with the problem code the greeter shows.

    ``detail`` and ``args`` say what ``message`` says, as a code and its
    parameters (:class:`sdbox.agent.api.Detail`), for the greeter to say in
    the researcher's language; ``message`` stays English, for the journal.
    """

    def __init__(
        self,
        problem: Problem,
        message: str,
        detail: Detail = Detail.NONE,
        args: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.problem = problem
        self.detail = detail
        self.detail_args = dict(args or {})  # not ``args``: BaseException's own


class Step(Enum):
    """The agent's steps that can fail with a problem."""

    READING = "reading"  # the card's summary and directory, at insertion
    CARD = "card"  # any step, when the card itself fails (or the flow has a bug)
    HOLDER = "holder"  # the finger (or PIN) on the card, and the capture before it
    PROJECT = "project"  # the project certificate and the possession proof of its key
    SERVER = "server"  # the bubble's server certificate
    CREDENTIAL = "credential"  # the session credential from the centre
    ENROLMENT = "enrolment"  # remote fingerprint enrolment (docs/remote-enrolment.md)


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
    Step.ENROLMENT: (
        (NoFingerprint, Problem.NO_FINGERPRINT),
        (EnrolmentNotAuthorised, Problem.ENROLMENT_REFUSED),
        (CentreUnreachable, Problem.CENTRE_UNREACHABLE),
        (CentreError, Problem.ENROLMENT_REFUSED),
    ),
}
_DEFAULT: dict[Step, Problem] = {
    Step.READING: Problem.CARD_NOT_RECOGNISED,
    Step.CARD: Problem.CARD_UNREADABLE,
    Step.HOLDER: Problem.SENSOR_FAILED,  # a poor capture, a sensor gone, a card refusing the probe
    Step.PROJECT: Problem.CERTIFICATE_INVALID,
    Step.SERVER: Problem.SERVER_UNTRUSTED,
    Step.CREDENTIAL: Problem.CREDENTIAL_REFUSED,
    Step.ENROLMENT: Problem.ENROLMENT_FAILED,  # captures refused, the new reference not verified
}


def problem_for(exc: BaseException, step: Step) -> Problem:
    """The problem the greeter shows for ``exc``, raised during ``step``."""
    if isinstance(exc, PoorCapture):  # refused before the card: the code says what to do
        return Problem(exc.advice.value)
    for kind, problem in _BY_TYPE[step]:
        if isinstance(exc, kind):
            return problem
    return _DEFAULT[step]


def _iso(moment: datetime) -> str:
    return moment.isoformat()


def _subject(exc: Any) -> dict[str, str]:
    return {"subject": str(exc.subject)}


# (exception type, detail, its parameters from the typed exception): the first match wins.
# Free text (a subject, a host) travels as a parameter, never as the sentence.
_DETAILS: tuple[
    tuple[
        type[BaseException] | tuple[type[BaseException], ...],
        Detail,
        Callable[[Any], dict[str, str]],
    ],
    ...,
] = (
    (NoFingerprint, Detail.NO_FINGERPRINT, lambda e: {}),
    (EnrolmentNotAuthorised, Detail.ENROLMENT_REFUSED, lambda e: {"reason": e.reason}),
    (CardRemoved, Detail.CARD_REMOVED, lambda e: {}),
    (CardNotResponding, Detail.CARD_NOT_RESPONDING, lambda e: {}),
    (CardBusy, Detail.CARD_BUSY, lambda e: {}),
    ((NoReader, NoCard, PcscUnavailable), Detail.READER_UNAVAILABLE, lambda e: {}),
    (DirectoryError, Detail.DIRECTORY_UNTRUSTED, lambda e: {}),
    (FingerBlocked, Detail.FINGER_BLOCKED, lambda e: {}),
    (PinBlocked, Detail.PIN_BLOCKED, lambda e: {}),
    (FingerNotEnrolled, Detail.FINGER_NOT_ENROLLED, lambda e: {}),
    (InvalidPinFormat, Detail.PIN_FORMAT, lambda e: {}),
    ((VerificationError, SecurityStatusNotSatisfied), Detail.VERIFICATION_FAILED, lambda e: {}),
    (CardError, Detail.CARD_NOT_UNDERSTOOD, lambda e: {}),
    (SensorUnavailable, Detail.SENSOR_UNAVAILABLE, lambda e: {}),
    (BiometricError, Detail.CAPTURE_FAILED, lambda e: {}),
    (
        CertificateRevoked,
        Detail.CERTIFICATE_REVOKED,
        lambda e: {**_subject(e), "date": _iso(e.revoked_at), "reason": e.reason or ""},
    ),
    (
        CertificateExpired,
        Detail.CERTIFICATE_EXPIRED,
        lambda e: {**_subject(e), "date": _iso(e.not_after)},
    ),
    (
        CertificateNotYetValid,
        Detail.CERTIFICATE_NOT_YET_VALID,
        lambda e: {**_subject(e), "date": _iso(e.not_before)},
    ),
    (ClockWrong, Detail.CLOCK_WRONG, lambda e: {"now": _iso(e.now), "floor": _iso(e.floor)}),
    (CrlMissing, Detail.REVOCATION_LIST_MISSING, lambda e: {"issuer": e.issuer}),
    (
        CrlStale,
        Detail.REVOCATION_LIST_STALE,
        lambda e: {"issuer": e.issuer, "date": _iso(e.next_update)},
    ),
    (PossessionFailed, Detail.KEY_NOT_ON_CARD, _subject),
    (ProjectMismatch, Detail.PROJECT_MISMATCH, lambda e: {"project": e.expected}),
    (ServerNameMismatch, Detail.SERVER_NAME_MISMATCH, lambda e: {"host": e.hostname}),
    (
        TrustError,
        Detail.CERTIFICATE_UNTRUSTED,
        lambda e: {"subject": str(getattr(e, "subject", "") or getattr(e, "issuer", ""))},
    ),
    (CentreUnreachable, Detail.CENTRE_UNREACHABLE, lambda e: {}),
    (CentreRefused, Detail.CENTRE_REFUSED, lambda e: {"code": e.code}),
    (CentreError, Detail.CENTRE_REFUSED, lambda e: {"code": e.code}),
    (SessionFailed, Detail.SESSION_ENDED, lambda e: {"reason": e.ended.reason.value}),
    (SessionError, Detail.SESSION_NOT_STARTED, lambda e: {}),
)


def detail_for(exc: BaseException) -> tuple[Detail, dict[str, str]]:
    """What ``exc`` says, as a detail code and its parameters (by type, never by wording)."""
    for kind, detail, args in _DETAILS:
        if isinstance(exc, kind):
            return detail, args(exc)
    return Detail.NONE, {}


def refusal_for(exc: SdboxError, step: Step, message: str | None = None) -> Refusal:
    """The refusal for ``exc`` raised during ``step``: its problem, its words, its detail."""
    detail, args = detail_for(exc)
    return Refusal(
        problem_for(exc, step), exc.message if message is None else message, detail, args
    )
