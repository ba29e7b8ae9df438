"""The one translation from an exception to the problem the greeter shows."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from sdbox.agent.api import DETAIL_ARGS, Detail, Problem
from sdbox.agent.problems import Step, detail_for, problem_for, refusal_for
from sdbox.biometric.errors import PlaceFingerAgain, SensorUnavailable
from sdbox.centre.errors import CentreError, CentreRefused, CentreUnreachable
from sdbox.config import ConfigError
from sdbox.errors import SdboxError
from sdbox.smartcard.errors import (
    CardRemoved,
    DirectoryError,
    FingerBlocked,
    FingerNotEnrolled,
    InvalidTemplate,
    PinBlocked,
    WrongFinger,
    WrongPin,
)
from sdbox.trust.errors import (
    CertificateExpired,
    CertificateNotYetValid,
    CertificateRevoked,
    ClockWrong,
    UnknownIssuer,
)

NOW = datetime(2026, 12, 7, tzinfo=UTC)


class BubbleUnreachable(SdboxError):
    """Named like an unreachable centre, but it is not one."""


@pytest.mark.parametrize(
    ("error", "step", "problem"),
    [
        (WrongFinger(2), Step.HOLDER, Problem.WRONG_FINGER),
        (WrongPin(1), Step.HOLDER, Problem.WRONG_PIN),
        (FingerBlocked(), Step.HOLDER, Problem.FINGER_BLOCKED),
        (PinBlocked(), Step.HOLDER, Problem.PIN_BLOCKED),
        (InvalidTemplate(), Step.HOLDER, Problem.SENSOR_FAILED),
        (PlaceFingerAgain("smudged"), Step.HOLDER, Problem.SENSOR_FAILED),
        (SensorUnavailable("gone"), Step.HOLDER, Problem.SENSOR_FAILED),
        (FingerNotEnrolled(), Step.HOLDER, Problem.SENSOR_FAILED),
        (CertificateRevoked("census", NOW, None), Step.PROJECT, Problem.CERTIFICATE_REVOKED),
        (CertificateExpired("census", NOW), Step.PROJECT, Problem.CERTIFICATE_EXPIRED),
        (CertificateNotYetValid("census", NOW), Step.PROJECT, Problem.CERTIFICATE_EXPIRED),
        (ClockWrong(NOW, NOW), Step.PROJECT, Problem.CLOCK_WRONG),
        (UnknownIssuer("census"), Step.PROJECT, Problem.CERTIFICATE_INVALID),
        # the bubble's certificate: whatever is wrong, the desktop is not trusted
        (CertificateRevoked("bubble", NOW, None), Step.SERVER, Problem.SERVER_UNTRUSTED),
        (ValueError("not DER"), Step.SERVER, Problem.SERVER_UNTRUSTED),
        (CentreUnreachable("down"), Step.CREDENTIAL, Problem.BROKER_UNREACHABLE),
        (CentreRefused("possession", "no"), Step.CREDENTIAL, Problem.CREDENTIAL_REFUSED),
        (CentreError("odd answer"), Step.CREDENTIAL, Problem.CREDENTIAL_REFUSED),
        (ConfigError("no broker_url"), Step.CREDENTIAL, Problem.CREDENTIAL_REFUSED),
        # by type, never by name: this one only sounds unreachable
        (BubbleUnreachable("?"), Step.CREDENTIAL, Problem.CREDENTIAL_REFUSED),
        (CardRemoved("the card left"), Step.CARD, Problem.CARD_UNREADABLE),
        (RuntimeError("a bug"), Step.CARD, Problem.CARD_UNREADABLE),
        (DirectoryError("bad signature"), Step.READING, Problem.CARD_NOT_RECOGNISED),
    ],
)
def test_each_error_has_its_problem(error: BaseException, step: Step, problem: Problem) -> None:
    assert problem_for(error, step) is problem


@pytest.mark.parametrize(
    ("error", "detail", "args"),
    [
        (FingerBlocked(), Detail.FINGER_BLOCKED, {}),
        (CardRemoved("gone"), Detail.CARD_REMOVED, {}),
        (DirectoryError("bad signature"), Detail.DIRECTORY_UNTRUSTED, {}),
        (
            CertificateRevoked("CN=Ada (census)", NOW, "keyCompromise"),
            Detail.CERTIFICATE_REVOKED,
            {"subject": "CN=Ada (census)", "date": NOW.isoformat(), "reason": "keyCompromise"},
        ),
        (CertificateExpired("CN=Ada", NOW), Detail.CERTIFICATE_EXPIRED,
         {"subject": "CN=Ada", "date": NOW.isoformat()}),
        (ClockWrong(NOW, NOW), Detail.CLOCK_WRONG, {"now": NOW.isoformat(), "floor": NOW.isoformat()}),
        (UnknownIssuer("CN=bubble"), Detail.CERTIFICATE_UNTRUSTED, {"subject": "CN=bubble"}),
        (CentreUnreachable("down"), Detail.CENTRE_UNREACHABLE, {}),
        (CentreRefused("possession", "no"), Detail.CENTRE_REFUSED, {"code": "possession"}),
        (BubbleUnreachable("named like one"), Detail.NONE, {}),
    ],
)  # fmt: skip
def test_the_detail_is_a_code_with_its_data_never_the_words(
    error: BaseException, detail: Detail, args: dict[str, str]
) -> None:
    assert detail_for(error) == (detail, args)
    assert set(args) <= DETAIL_ARGS.get(detail, frozenset())


def test_a_refusal_carries_problem_words_and_detail() -> None:
    refusal = refusal_for(CertificateRevoked("CN=Ada", NOW, None), Step.PROJECT)
    assert refusal.problem is Problem.CERTIFICATE_REVOKED
    assert "was revoked" in refusal.message  # English, for the journal
    assert refusal.detail is Detail.CERTIFICATE_REVOKED
    assert refusal.detail_args["subject"] == "CN=Ada"
