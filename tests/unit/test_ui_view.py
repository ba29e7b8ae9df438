"""The greeter's screens, from the agent's state (no display needed), in its languages."""

from __future__ import annotations

from dataclasses import replace

import pytest

from sdbox.ui.catalogue import translator
from sdbox.ui.view import AgentView, screen_for

PROJECTS = (
    (
        "census-2021",
        "Census microdata 2021",
        "rdp",
        "finger",
        "2027-11-22T00:00:00+00:00",
        "ready",
        True,
    ),
    (
        "genomics-lab",
        "Genomics lab",
        "spice",
        "finger",
        "2026-11-27T00:00:00+00:00",
        "certificate expires in 5 days",
        True,
    ),
    (
        "old-study",
        "Old study",
        "rdp",
        "finger",
        "2026-01-01T00:00:00+00:00",
        "certificate expired",
        False,
    ),
)
# a project whose policy lets the PIN replace the finger (the agent's project record)
FINGER_OR_PIN = (
    ("survey-2024", "Household survey", "rdp", "finger_or_pin", "2027-11-22T00:00:00+00:00",
     "ready", True),
)  # fmt: skip
EN, FR, DE = translator("en"), translator("fr"), translator("de")


def test_insert_card_then_picker() -> None:
    assert screen_for(AgentView(), EN).title == "Insert your card"
    picker = screen_for(AgentView(state="picker", projects=PROJECTS, tries_left=5), EN)
    assert picker.kind == "picker"
    assert [p.name for p in picker.projects] == [
        "Census microdata 2021",
        "Genomics lab",
        "Old study",
    ]
    assert picker.projects[1].detail == "Virtual machine · access expires in 5 days"
    assert picker.projects[2].usable is False


def test_finger_screen_shows_tries_and_the_pin_only_where_allowed() -> None:
    finger = screen_for(
        AgentView(
            state="verifying",
            message="place your finger",
            tries_left=4,
            active_project="census-2021",
            projects=PROJECTS,
        ),
        EN,
    )
    assert finger.title == "Place your finger on the sensor"
    assert finger.body == "4 tries left"
    assert finger.pin_entry is False
    both = screen_for(
        AgentView(
            state="verifying", message="place your finger or enter your PIN", tries_left=5,
            active_project="survey-2024", projects=FINGER_OR_PIN,
        ),
        EN,
    )  # fmt: skip
    assert both.pin_entry is True
    wrong = screen_for(
        AgentView(
            state="verifying", message="place your finger", problem="wrong_finger", tries_left=3
        ),
        EN,
    )
    assert wrong.title == "The finger did not match"
    assert wrong.alert


@pytest.mark.parametrize(
    ("problem", "title"),
    [
        ("finger_blocked", "This finger is blocked"),
        ("certificate_revoked", "Access to this project was withdrawn"),
        ("server_untrusted", "The project's desktop could not be trusted"),
        ("broker_unreachable", "The centre cannot be reached"),
        ("clock_wrong", "The box's clock is wrong"),
    ],
)
def test_errors_in_plain_words(problem: str, title: str) -> None:
    screen = screen_for(
        AgentView(state="picker", projects=PROJECTS, problem=problem, message="detail"), EN
    )
    assert screen.title == title
    assert screen.alert
    assert screen.hint


def test_session_ended_says_why() -> None:
    screen = screen_for(
        AgentView(
            state="picker",
            projects=PROJECTS,
            message="The connection to the project's desktop was lost.",
            detail="session_ended",
            detail_args={"reason": "connection_lost"},
        ),
        EN,
    )
    assert screen.kind == "ended"
    assert "lost" in screen.body


def test_card_not_recognised_is_blocking() -> None:
    screen = screen_for(
        AgentView(state="blocked", problem="directory_untrusted", message="signature"), FR
    )
    assert screen.title == "Cette carte n’est pas reconnue"  # noqa: RUF001  (French typography)


def test_french() -> None:
    assert screen_for(AgentView(), FR).title == "Insérez votre carte"
    finger = screen_for(AgentView(state="verifying", message="place your finger", tries_left=2), FR)
    assert finger.body == "2 essais restants"


def test_a_blocked_finger_leaves_only_the_pin_where_the_project_allows_it() -> None:
    screen = screen_for(
        AgentView(
            state="verifying", message="place your finger or enter your PIN", tries_left=0,
            active_project="survey-2024", projects=FINGER_OR_PIN,
        ),
        EN,
    )  # fmt: skip
    assert screen.title == "Enter your PIN"
    assert "blocked" in screen.body
    assert screen.pin_entry is True


def test_a_session_end_is_said_in_the_researchers_language() -> None:
    from sdbox.agent.api import END_MESSAGES, EndReason

    lost = END_MESSAGES[EndReason.CONNECTION_LOST]
    view = AgentView(
        state="picker", projects=PROJECTS, message=lost, detail="session_ended",
        detail_args={"reason": "connection_lost"},
    )  # fmt: skip
    assert screen_for(view, FR).body == "La connexion au bureau du projet a été perdue."
    assert screen_for(view, EN).body == lost
    assert screen_for(view, DE).body == "Die Verbindung zum Desktop des Projekts wurde unterbrochen."
    # the agent's English words are never what the screen says: the code is
    reworded = AgentView(state="picker", projects=PROJECTS, message="Something else.",
                         detail="session_ended", detail_args={"reason": "connection_lost"})  # fmt: skip
    assert screen_for(reworded, FR).body == "La connexion au bureau du projet a été perdue."


def test_the_agents_detail_is_said_in_the_researchers_language_with_its_data() -> None:
    view = AgentView(
        state="picker", projects=PROJECTS, problem="certificate_revoked",
        message="The certificate of CN=Ada was revoked on 2026-12-07 14:05 UTC; ...",
        detail="certificate_revoked",
        detail_args={"subject": "CN=Ada", "date": "2026-12-07T14:05:00+00:00", "reason": ""},
    )  # fmt: skip
    french = screen_for(view, FR)
    assert french.title == "L’accès à ce projet a été retiré"  # noqa: RUF001
    assert french.body.startswith("Le certificat de CN=Ada a été révoqué le 2026-12-07 14:05 UTC")
    german = screen_for(view, DE)
    assert german.body.startswith("Das Zertifikat von CN=Ada wurde am 2026-12-07 14:05 UTC")
    # no detail code (an agent error this greeter cannot say): the title and advice, no English
    bare = screen_for(AgentView(state="blocked", problem="card_unreadable", message="pcsc: x"), FR)
    assert bare.body == ""
    assert "pcsc" not in " ".join((bare.title, bare.body, bare.hint))


def test_advice_the_agent_already_gave_is_not_repeated() -> None:
    revoked = {"subject": "CN=Ada", "date": "2026-12-07T14:05:00+00:00", "reason": ""}
    said = screen_for(
        AgentView(
            state="picker", projects=PROJECTS, problem="certificate_revoked",
            detail="certificate_revoked", detail_args=revoked,
        ),
        EN,
    )  # fmt: skip
    assert said.hint == ""
    assert said.body.endswith("Contact your project's data manager.")
    unsaid = screen_for(
        AgentView(
            state="picker", projects=PROJECTS, problem="certificate_revoked",
            detail="certificate_not_listed", detail_args={"slot": "82"},
        ),
        EN,
    )  # fmt: skip
    assert unsaid.hint == "Contact your project's data manager."


def test_an_unplugged_sensor_at_the_finger_prompt_says_so_without_losing_the_card() -> None:
    unplugged = AgentView(
        state="verifying", active_project="census-2021", projects=PROJECTS, tries_left=4,
        problem="sensor_unplugged", sensor="disconnected",
        message="the fingerprint sensor is not connected: plug it back in or call the service desk",
    )  # fmt: skip
    screen = screen_for(unplugged, EN)
    assert screen.title == "The fingerprint sensor is not connected"
    assert "your card can stay in" in screen.body
    assert screen.hint == "4 tries left"  # none was spent
    assert screen.pin_entry is False
    assert screen.can_cancel
    assert screen.alert
    french = screen_for(unplugged, FR)
    assert french.title == "Le capteur d’empreintes n’est pas branché"  # noqa: RUF001
    assert french.hint == "4 essais restants"


def test_an_unplugged_sensor_leaves_the_pin_where_the_project_allows_it() -> None:
    screen = screen_for(
        AgentView(
            state="verifying", problem="sensor_unplugged", sensor="disconnected", tries_left=5,
            message="the fingerprint sensor is not connected: enter your PIN, or plug the sensor back in",
            active_project="survey-2024", projects=FINGER_OR_PIN,
        ),
        EN,
    )
    assert screen.title == "The fingerprint sensor is not connected"
    assert "type your PIN below" in screen.body
    assert screen.pin_entry is True


def test_the_picker_says_when_the_sensor_is_unplugged() -> None:
    shown = screen_for(AgentView(state="picker", projects=PROJECTS, sensor="disconnected"), EN)
    assert shown.kind == "picker"
    assert "not connected" in shown.hint
    plugged = screen_for(AgentView(state="picker", projects=PROJECTS, sensor="connected"), FR)
    assert "capteur" not in plugged.hint


def test_the_finger_screen_follows_the_projects_policy_not_the_messages_wording() -> None:
    # the agent's words are shown, never parsed: the PIN entry is the project's policy
    reworded = screen_for(
        AgentView(state="verifying", message="", tries_left=5, active_project="survey-2024",
                  projects=FINGER_OR_PIN),
        EN,
    )  # fmt: skip
    assert reworded.title == "Place your finger on the sensor"
    assert reworded.pin_entry is True
    finger_only = screen_for(
        AgentView(state="verifying", message="enter your PIN", tries_left=5,
                  active_project="census-2021", projects=PROJECTS),
        EN,
    )  # fmt: skip
    assert finger_only.pin_entry is False


def test_the_keyboard_layout_is_chosen_from_the_boxs_list_in_the_researchers_language() -> None:
    view = AgentView(
        state="idle", preferences={"keyboard_layout": "de"}, keyboard_layouts=("fr", "de", "gb"),
    )  # fmt: skip
    assert screen_for(view, EN).footer.startswith("F2: keyboard layout (German (QWERTZ))\n")
    assert screen_for(view, FR).footer.startswith(
        "F2 : disposition du clavier (Allemand (QWERTZ))\n"
    )
    chooser = screen_for(replace(view, choosing_layout=True), FR)
    assert chooser.kind == "keyboard"
    assert [(o.id, o.name, o.detail) for o in chooser.options] == [
        ("fr", "Français (AZERTY)", ""),
        ("de", "Allemand (QWERTZ)", "en service"),
        ("gb", "Anglais (Royaume-Uni, QWERTY)", ""),
    ]
    # never while a session is opened or runs: the agent refuses, the greeter does not offer it
    running = replace(view, state="running", choosing_layout=True, active_project="census-2021",
                      projects=PROJECTS)  # fmt: skip
    assert screen_for(running, EN).kind == "running"


def test_larger_text_and_high_contrast_follow_the_kept_choices_on_every_screen() -> None:
    plain = AgentView(state="picker", projects=PROJECTS)
    assert not screen_for(plain, EN).large_text
    assert not screen_for(plain, EN).high_contrast
    chosen = replace(plain, preferences={"large_text": "1", "high_contrast": "1"})
    for state in ("idle", "reading", "picker", "verifying", "blocked", "running"):
        screen = screen_for(replace(chosen, state=state), FR)
        assert screen.large_text
        assert screen.high_contrast
    assert not screen_for(replace(plain, preferences={"large_text": "0"}), EN).large_text
    # the start screen says how to get them
    assert screen_for(AgentView(), EN).footer == "F3: larger text · F4: high contrast"
    assert screen_for(AgentView(), DE).footer == "F3: größere Schrift · F4: hoher Kontrast"


def test_a_one_project_card_says_that_switching_means_swapping_cards() -> None:
    one = PROJECTS[:1]
    for language, words in ((EN, "swap cards"), (FR, "changez de carte"), (DE, "wechseln Sie")):
        picker = screen_for(
            AgentView(state="picker", projects=one, card_layout="one_project"), language
        )
        assert words in picker.body
        ended = screen_for(
            AgentView(state="picker", projects=one, card_layout="one_project",
                      detail="session_ended", detail_args={"reason": "closed"}),
            language,
        )  # fmt: skip
        assert words in ended.body
    several = screen_for(AgentView(state="picker", projects=PROJECTS, card_layout="directory"), EN)
    assert "swap" not in several.body


def test_a_pin_only_card_gets_a_pin_screen_without_a_finger() -> None:
    """The agent's detail enter_pin (a card without on-card comparison): no finger, no sensor."""
    for language, title, words in (
        (EN, "Enter your PIN", "this card holds no finger"),
        (FR, "Saisissez votre code PIN", "aucun doigt"),
        (DE, "Geben Sie Ihre PIN ein", "kein Finger"),
    ):
        view = AgentView(
            state="verifying", projects=FINGER_OR_PIN, active_project="survey-2024",
            detail="enter_pin", sensor="disconnected",
        )  # fmt: skip
        screen = screen_for(view, language)
        assert (screen.kind, screen.title, screen.pin_entry) == ("pin", title, True)
        assert words in screen.body
        shown = " ".join((screen.title, screen.body, screen.hint)).lower()
        assert "sensor" not in shown
        assert "finger on" not in shown
        assert screen.hint == "Household survey"
    wrong = screen_for(
        AgentView(state="verifying", projects=FINGER_OR_PIN, active_project="survey-2024",
                  detail="enter_pin", problem="wrong_pin", tries_left=2),
        EN,
    )  # fmt: skip
    assert (wrong.title, wrong.hint, wrong.alert) == ("Wrong PIN", "2 tries left", True)
