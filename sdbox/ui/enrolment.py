"""The greeter's remote fingerprint enrolment screens (docs/remote-enrolment.md), a pure view.

The agent is in state ``enrolling`` with a detail code per step
(``sdbox.agent.api.Detail.ENROLMENT_*``); refusals come back to the picker
as problems ``no_fingerprint``, ``enrolment_refused`` (with the reason code)
or ``enrolment_failed``. Everything said here is chosen from those codes and
their parameters, never from the agent's English message. F6 at the picker
starts it (``sdbox.ui.app``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TypeVar

from sdbox.agent.api import Detail, Problem

Translate = Callable[[str], str]
S = TypeVar("S")


def enrolment_problems(_: Translate) -> dict[str, tuple[str, str]]:
    """Title and hint for each enrolment problem."""
    return {
        Problem.NO_FINGERPRINT: (
            _("This card has no fingerprint"),
            _("Enrolment is not possible on this card."),
        ),
        Problem.ENROLMENT_REFUSED: (
            _("The enrolment was not authorised"),
            _("Call the card office: nothing was written on your card."),
        ),
        Problem.ENROLMENT_FAILED: (
            _("The enrolment did not succeed"),
            _("Call the card office to try again."),
        ),
    }


def enrolment_details(_: Translate) -> dict[str, str]:
    """The sentence of each enrolment detail; ``{name}`` is a parameter."""
    return {
        Detail.ENROLMENT_AUTHORISING: _("Asking the centre for your enrolment…"),
        Detail.ENROLMENT_CODE: _("Read this code to {operator}: {code}"),
        Detail.ENROLMENT_PIN: _("{operator} confirmed the code: type your PIN."),
        Detail.ENROLMENT_CAPTURE: _("Place your {finger} finger on the sensor, several times."),
        Detail.ENROLMENT_WRITING: _("Writing your new fingerprint on the card."),
        Detail.ENROLMENT_CONFIRM: _("Place your {finger} finger once more: the card checks it."),
        Detail.ENROLMENT_DONE: _("Your {fingers} finger is enrolled (authorised by {operator})."),
        Detail.ENROLMENT_REFUSED: _("Refused: {reason}"),
        Detail.NO_FINGERPRINT: _("This card has no fingerprint; enrolment is not possible."),
    }


def refusal_reasons(_: Translate) -> dict[str, str]:
    """Why an authorisation was refused (sdbox.centre.bioauth.REASONS and the centre's codes)."""
    return {
        "expired": _("the authorisation has expired."),
        "used": _("the authorisation was already used."),
        "revoked": _("the card office withdrew the authorisation."),
        "other_card": _("the authorisation is for another card."),
        "other_box": _("the authorisation is for another box."),
        "replay": _("the authorisation was not made for this request."),
        "operator": _("the authorisation is not signed by an enrolment operator."),
        "signature": _("the authorisation's signature does not verify."),
        "malformed": _("the authorisation is damaged."),
        "not_yet_valid": _("the authorisation is not valid yet: check this box's clock."),
        "finger": _("the authorisation names a finger this card does not have."),
        "not_confirmed": _("the operator did not confirm the code."),
        "enrolment_authorisation": _("no enrolment is authorised for this card at this box."),
        "enrolment": _("the centre does not enrol fingers remotely."),
    }


def finger_name(finger: str, _: Translate) -> str:
    """A finger's name in the greeter's language."""
    names = {"primary": _("primary"), "secondary": _("secondary")}
    return ", ".join(names.get(f.strip(), f.strip()) for f in finger.split(","))


def enrolment_detail(detail: str, args: Mapping[str, str], _: Translate) -> str | None:
    """The detail's sentence, or None when it is not an enrolment detail."""
    texts = enrolment_details(_)
    if detail not in texts:
        return None
    values = dict(args)
    for key in ("finger", "fingers"):
        if key in values:
            values[key] = finger_name(values[key], _)
    if detail == Detail.ENROLMENT_REFUSED:
        reason = refusal_reasons(_).get(values.get("reason", ""))
        return reason[0].upper() + reason[1:] if reason else _("The centre refused the request.")
    try:
        return texts[detail].format_map(values)
    except (KeyError, IndexError, ValueError):
        return ""


def enrolling_screen(
    detail: str, args: Mapping[str, str], problem: str, tries_left: int, said: str,
    problems: Mapping[str, tuple[str, str]], _: Translate, screen: Callable[..., S],
) -> S:  # fmt: skip
    """The screen of one enrolment step (``screen``: the view's Screen class)."""
    if detail == Detail.ENROLMENT_CODE:
        return screen(
            "enrol-code", _("Read this code to the operator"), args.get("code", ""),
            _("{operator} types it; then you will be asked for your PIN.").format(
                operator=args.get("operator", "")),
            can_cancel=True,
        )  # fmt: skip
    if detail == Detail.ENROLMENT_PIN:
        wrong = problem == Problem.WRONG_PIN
        return screen(
            "pin", problems[Problem.WRONG_PIN][0] if wrong else _("Enter your PIN"), said,
            _("{n} tries left").format(n=tries_left) if tries_left >= 0 else "",
            pin_entry=True, can_cancel=True, alert=wrong,
        )  # fmt: skip
    if detail in (Detail.ENROLMENT_CAPTURE, Detail.ENROLMENT_CONFIRM):
        title = (_("Fingerprint enrolment") if detail == Detail.ENROLMENT_CAPTURE
                 else _("Checking your new fingerprint"))  # fmt: skip
        hint = _("Lift your finger between captures; a poor capture is simply taken again.")
        if problem in problems:
            title, hint = problems[problem]
        return screen("enrol-finger", title, said, hint, can_cancel=True, alert=bool(problem))
    if detail == Detail.ENROLMENT_WRITING:
        return screen("enrolling", _("Fingerprint enrolment"), said,
                      _("Do not remove the card."))  # fmt: skip
    return screen("enrolling", _("Fingerprint enrolment"), said,
                  _("Leave the card in the reader."), can_cancel=True)  # fmt: skip
