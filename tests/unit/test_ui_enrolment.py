"""The greeter's remote enrolment screens: chosen from the agent's state, detail and problem."""

from __future__ import annotations

from sdbox.agent.api import Detail, Problem, State
from sdbox.ui.catalogue import translator
from sdbox.ui.view import AgentView, screen_for

EN, FR = translator("en"), translator("fr")


def _enrolling(detail: Detail, **kwargs: object) -> AgentView:
    return AgentView(state=State.ENROLLING, detail=detail, **kwargs)  # type: ignore[arg-type]


def test_the_code_is_the_screen_and_names_the_operator() -> None:
    view = _enrolling(Detail.ENROLMENT_CODE, detail_args={"code": "042917", "operator": "Alice"})
    screen = screen_for(view, EN)
    assert (screen.kind, screen.title, screen.body) == (
        "enrol-code", "Read this code to the operator", "042917",
    )  # fmt: skip
    assert screen.hint == "Alice types it; then you will be asked for your PIN."
    assert screen.can_cancel
    french = screen_for(view, FR)
    assert french.title == "Lisez ce code à l’opérateur"  # noqa: RUF001  (French typography)
    assert french.body == "042917"  # data, the same in every language


def test_the_pin_then_the_captures_then_the_write() -> None:
    pin = screen_for(_enrolling(Detail.ENROLMENT_PIN, detail_args={"operator": "Alice"},
                                tries_left=3), EN)  # fmt: skip
    assert (pin.kind, pin.title, pin.pin_entry) == ("pin", "Enter your PIN", True)
    assert pin.body == "Alice confirmed the code: type your PIN."
    wrong = screen_for(_enrolling(Detail.ENROLMENT_PIN, problem=Problem.WRONG_PIN,
                                  detail_args={"operator": "Alice"}, tries_left=2), EN)  # fmt: skip
    assert (wrong.title, wrong.hint, wrong.alert) == ("Wrong PIN", "2 tries left", True)
    capture = screen_for(_enrolling(Detail.ENROLMENT_CAPTURE, detail_args={"finger": "primary"}),
                         FR)  # fmt: skip
    assert capture.kind == "enrol-finger"
    assert capture.body == "Posez votre doigt principal sur le capteur, plusieurs fois."
    faint = screen_for(_enrolling(Detail.ENROLMENT_CAPTURE, problem=Problem.CAPTURE_FAINT,
                                  detail_args={"finger": "primary"}), EN)  # fmt: skip
    assert faint.title == "The fingerprint was too faint"  # retried: what to do, said
    writing = screen_for(_enrolling(Detail.ENROLMENT_WRITING), EN)
    assert (writing.hint, writing.can_cancel) == ("Do not remove the card.", False)


def test_done_and_each_refusal_come_back_to_the_picker() -> None:
    done = screen_for(AgentView(state=State.PICKER, detail=Detail.ENROLMENT_DONE,
                                detail_args={"fingers": "primary", "operator": "Alice"}), EN)  # fmt: skip
    assert (done.kind, done.title) == ("enrolled", "Your fingerprint is enrolled")
    assert done.body == "Your primary finger is enrolled (authorised by Alice)."
    refused = screen_for(AgentView(state=State.PICKER, problem=Problem.ENROLMENT_REFUSED,
                                   detail=Detail.ENROLMENT_REFUSED,
                                   detail_args={"reason": "other_box"}), EN)  # fmt: skip
    assert refused.title == "The enrolment was not authorised"
    assert refused.body == "The authorisation is for another box."
    assert refused.alert
    none = screen_for(AgentView(state=State.PICKER, problem=Problem.NO_FINGERPRINT,
                                detail=Detail.NO_FINGERPRINT), EN)  # fmt: skip
    assert none.title == "This card has no fingerprint"
    assert none.body == "This card has no fingerprint; enrolment is not possible."
    french = screen_for(AgentView(state=State.PICKER, problem=Problem.ENROLMENT_REFUSED,
                                  detail=Detail.ENROLMENT_REFUSED,
                                  detail_args={"reason": "expired"}), FR)  # fmt: skip
    assert french.body == "L’autorisation a expiré."  # noqa: RUF001
