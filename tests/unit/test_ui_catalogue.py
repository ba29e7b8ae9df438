"""Every text the greeter can show, in every language it ships: the catalogues are complete.

The msgids are what the greeter's code asks gettext for (read from its source)
and what it asks for when it renders every code the agent can send: each
problem, each detail with its parameters, each end reason, each project
status. A language is one ``sdbox/ui/locale/<code>/LC_MESSAGES/sdbox.po``;
each must translate every one of them, with no fuzzy entry and the same
``{placeholders}`` as the English, and its committed ``.mo`` must be the
compilation of its ``.po``.
"""

from __future__ import annotations

import ast
import functools
import itertools
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from sdbox.agent.api import (
    DETAIL_ARGS,
    END_MESSAGES,
    CardLayout,
    CentreState,
    Detail,
    DiagnosticsOutcome,
    EndReason,
    NetworkRefusal,
    NetworkStatus,
    Preference,
    Problem,
    ProjectStatus,
    State,
    TunnelReason,
    project_status,
)
from sdbox.session.keyboard import RDP_LAYOUTS
from sdbox.ui.catalogue import languages, locale_dir, translator
from sdbox.ui.desk import MODES, DeskView, network_screen, support_screen
from sdbox.ui.enrolment import refusal_reasons
from sdbox.ui.view import AgentView, detail_text, layout_name, screen_for

UI = Path(__file__).resolve().parents[2] / "sdbox" / "ui"
LANGUAGES = [language for language in languages() if language != "en"]
# Problems that are only ever a refused method call (a D-Bus error the greeter logs), never
# a state the greeter shows.
NOT_SHOWN = {Problem.BUSY, Problem.UNKNOWN_PROJECT, Problem.INVALID_PREFERENCE, Problem.INVALID_NETWORK}
PLACEHOLDER = re.compile(r"\{(\w*)\}")


@dataclass(frozen=True)
class Entry:
    msgstr: str
    fuzzy: bool


def _unquote(text: str) -> str:
    return str(ast.literal_eval(text))  # a PO string is a C string: Python's escapes cover ours


def parse_po(path: Path) -> dict[str, Entry]:
    """The entries of a .po file (obsolete ``#~`` entries left out; no plural forms here)."""
    entries: dict[str, Entry] = {}
    flags: set[str] = set()
    field, parts = "", {"msgid": "", "msgstr": ""}

    def close() -> None:
        if field == "msgstr" and parts["msgid"]:
            assert parts["msgid"] not in entries, f"{path}: {parts['msgid']!r} twice"
            entries[parts["msgid"]] = Entry(parts["msgstr"], "fuzzy" in flags)

    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if line.startswith("#~") or (not line and field == ""):
            continue
        if not line:
            close()
            flags, field, parts = set(), "", {"msgid": "", "msgstr": ""}
        elif line.startswith("#,"):
            flags |= {flag.strip() for flag in line[2:].split(",")}
        elif line.startswith("#"):
            continue
        elif line.startswith(("msgid ", "msgstr ")):
            if line.startswith("msgid ") and field == "msgstr":  # no blank line between entries
                close()
                flags, parts = set(), {"msgid": "", "msgstr": ""}
            field, _, value = line.partition(" ")
            assert field in parts, f"{path}: {field} (plural forms are not used)"
            parts[field] = _unquote(value)
        elif line.startswith('"'):
            parts[field] += _unquote(line)
    close()
    return entries


@functools.cache
def source_msgids() -> frozenset[str]:
    """Every literal the greeter's code passes to ``_`` (or marks with ``N_``)."""
    found: set[str] = set()
    for path in [*UI.glob("*.py"), UI.parent / "session" / "outcome.py"]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in ("_", "N_")
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                found.add(node.args[0].value)
    return frozenset(found)


def sample_args(detail: Detail) -> dict[str, str]:
    values = {"date": "2026-12-07T14:00:00+00:00", "now": "2026-12-07T14:00:00+00:00",
              "floor": "2026-12-09T14:00:00+00:00", "reason": "keyCompromise"}  # fmt: skip
    if detail is Detail.SESSION_ENDED:
        values["reason"] = EndReason.CONNECTION_LOST.value
    return {key: values.get(key, f"<{key}>") for key in DETAIL_ARGS.get(detail, ())}


def recording(language: str) -> tuple[Callable[[str], str], set[str]]:
    """A translator for ``language`` that notes every msgid it is asked for."""
    asked: set[str] = set()
    real = translator(language)

    def translate(text: str) -> str:
        asked.add(text)
        return real(text)

    return translate, asked


@functools.cache
def rendered_msgids() -> frozenset[str]:
    """Every msgid the greeter asks for while it renders every code the agent can send."""
    translate, asked = recording("en")
    projects = tuple(
        (f"p{i}", f"Project {i}", protocol, factor, "2027-01-01T00:00:00+00:00",
         project_status(status, 5), True)
        for i, (status, protocol, factor) in enumerate(
            (s, p, f) for s in ProjectStatus for p in ("rdp", "spice")
            for f in ("finger_or_pin", "finger")
        )
    )  # fmt: skip
    for state in [*State, "a state this greeter does not know"]:
        for problem in ["", *(p for p in Problem if p not in NOT_SHOWN)]:
            for tries, sensor, active, detail, layout in itertools.product(
                (-1, 0, 3), ("connected", "disconnected"), ("p0", "p1"),
                (Detail.NONE, Detail.SESSION_ENDED, Detail.ENTER_PIN), CardLayout,
            ):  # fmt: skip
                screen_for(
                    AgentView(state=state, problem=problem, tries_left=tries, sensor=sensor,
                              projects=projects, active_project=active, detail=detail,
                              detail_args={"reason": "closed"}, card_layout=layout),
                    translate,
                )  # fmt: skip
    # remote fingerprint enrolment: each step, with the problems it shows, and each refusal
    for detail, problem in itertools.product(
        [d for d in Detail if d.value.startswith("enrolment_")],
        ["", Problem.WRONG_PIN, Problem.CAPTURE_FAINT],
    ):
        screen_for(AgentView(state=State.ENROLLING, detail=detail, problem=problem, tries_left=2,
                             detail_args=sample_args(detail)), translate)  # fmt: skip
    screen_for(AgentView(state=State.PICKER, detail=Detail.ENROLMENT_DONE,
                         detail_args=sample_args(Detail.ENROLMENT_DONE)), translate)  # fmt: skip
    for why in [*refusal_reasons(str), "a reason this greeter does not know"]:
        detail_text(Detail.ENROLMENT_REFUSED, {"reason": why}, translate)
    layouts = tuple(RDP_LAYOUTS)
    for choosing, state in itertools.product((True, False), (State.IDLE, State.PICKER)):
        screen_for(
            AgentView(state=state, choosing_layout=choosing, keyboard_layouts=layouts,
                      preferences={Preference.KEYBOARD_LAYOUT: "fr"}),
            translate,
        )  # fmt: skip
    # the centre's state on the start and picker screens, each reason, and a session waiting
    # for the tunnel
    for state, centre, reason, detail in itertools.product(
        (State.IDLE, State.PICKER, State.CONNECTING), CentreState, ["", *TunnelReason],
        (Detail.NONE, Detail.SESSION_ENDED, Detail.SESSION_RECONNECTING),
    ):  # fmt: skip
        screen_for(
            AgentView(state=state, centre=centre, centre_reason=reason, centre_gateway="192.0.2.1",
                      detail=detail, detail_args={"reason": "network"}, projects=projects),
            translate,
        )  # fmt: skip
    # the screens without a card (sdbox.ui.desk): every status, mode, refusal, support line
    for status, mode, code in itertools.product(
        [*NetworkStatus, "unknown-status"], MODES, ["", *NetworkRefusal]
    ):
        for saved, kept in itertools.product((False, True), ("0", "1")):
            network_screen(
                DeskView(network={"mode": mode, "passphrase_set": kept}, status=status, mode=mode,
                         refusal=f"address {code}: words" if code else "", saved=saved),
                translate,
            )  # fmt: skip
    for full in (False, True):
        problems = "\n".join(f"2026-12-07T14:00:00+00:00 {p.value}" for p in Problem)
        support = {"box": "CN=box-1", "version": "0.1.0", "slot": "A", "generation": "nuc-g1",
                   "interface": "eth0", "addresses": "192.0.2.100/24", "tunnel": "udp_blocked",
                   "card": "BIO SSO", "card_seen": "2026-12-07T14:00:00+00:00",
                   "problems": problems} if full else {}  # fmt: skip
        support_screen(DeskView(support=support), translate)
    # the support screen's "send diagnostics": sending, then each outcome the agent answers
    for outcome in ["sending", *DiagnosticsOutcome]:
        support_screen(DeskView(diagnostics=outcome, diagnostics_text="7"), translate)
    for detail in Detail:
        detail_text(detail, sample_args(detail), translate)
    for reason in EndReason:
        detail_text(Detail.SESSION_ENDED, {"reason": reason.value}, translate)
    detail_text(Detail.CENTRE_REFUSED, {"code": ""}, translate)
    detail_text(Detail.CERTIFICATE_REVOKED, {**sample_args(Detail.CERTIFICATE_REVOKED),
                                             "reason": ""}, translate)  # fmt: skip
    return frozenset(asked)


def test_every_code_the_agent_can_send_has_words() -> None:
    english = translator("en")
    for detail in Detail:
        if detail is not Detail.NONE:
            assert detail_text(detail, sample_args(detail), english), f"no words for {detail}"
    for reason in EndReason:
        said = detail_text(Detail.SESSION_ENDED, {"reason": reason.value}, english)
        assert said == END_MESSAGES[reason]
    for layout in RDP_LAYOUTS:  # every layout a box may offer ([keyboard] is checked against it)
        assert layout_name(layout, english) != layout, f"no name for the layout {layout}"
    generic = screen_for(AgentView(state="picker", problem="no-such-problem"), english).title
    for problem in Problem:
        if problem not in NOT_SHOWN:
            shown = screen_for(AgentView(state="picker", problem=problem), english)
            assert shown.title != generic, f"the greeter has no title for {problem}"


def test_the_parameters_are_data_inside_the_sentence() -> None:
    english = translator("en")
    args = {"subject": "CN=Ada (health-cohort)", "date": "2026-12-07T14:05:00+00:00",
            "reason": ""}  # fmt: skip
    said = detail_text(Detail.CERTIFICATE_REVOKED, args, english)
    assert said.startswith("The certificate of CN=Ada (health-cohort) was revoked on 2026-12-07 14:05 UTC;")
    assert "reason:" not in said
    german = detail_text(Detail.CERTIFICATE_REVOKED, args, translator("de"))
    assert german.startswith("Das Zertifikat von CN=Ada (health-cohort) wurde am 2026-12-07 14:05 UTC")
    # a parameter missing (a newer agent, an older greeter): no half-filled sentence
    assert detail_text(Detail.CERTIFICATE_REVOKED, {"subject": "x"}, english) == ""
    assert detail_text("no-such-detail", {}, english) == ""


def test_the_source_msgids_are_the_rendered_ones() -> None:
    """What the renderer asks for is in the source, and the source has no text it never shows."""
    source, rendered = source_msgids(), rendered_msgids()
    assert rendered <= source, rendered - source
    # "Secure data access" and "PIN" are the window's own labels (app.py), not the view's
    assert source - rendered <= {"Secure data access", "PIN"}, source - rendered


def test_there_is_a_language_besides_english() -> None:
    assert {"fr", "de"} <= set(LANGUAGES)


@pytest.mark.parametrize("language", LANGUAGES)
def test_every_text_is_translated(language: str) -> None:
    catalogue = parse_po(locale_dir() / language / "LC_MESSAGES" / "sdbox.po")
    wanted = source_msgids() | rendered_msgids()
    missing = sorted(wanted - catalogue.keys())
    assert not missing, f"{language}: untranslated: {missing}"
    fuzzy = sorted(m for m in wanted if catalogue[m].fuzzy)
    assert not fuzzy, f"{language}: fuzzy: {fuzzy}"
    empty = sorted(m for m in wanted if not catalogue[m].msgstr)
    assert not empty, f"{language}: empty: {empty}"
    unused = sorted(catalogue.keys() - wanted)
    assert not unused, f"{language}: entries no screen uses (remove them): {unused}"
    for msgid in wanted:
        assert sorted(PLACEHOLDER.findall(catalogue[msgid].msgstr)) == sorted(
            PLACEHOLDER.findall(msgid)
        ), f"{language}: {msgid!r}: not the same {{placeholders}}"


@pytest.mark.parametrize("language", LANGUAGES)
def test_the_greeter_speaks_it(language: str) -> None:
    """The compiled catalogue is the one that loads: a translated title, not the English one."""
    translate, _ = recording(language)
    assert screen_for(AgentView(), translate).title != "Insert your card"


@pytest.mark.skipif(shutil.which("msgfmt") is None, reason="gettext tools not installed (make setup)")
@pytest.mark.parametrize("language", LANGUAGES)
def test_the_compiled_catalogue_is_current(language: str, tmp_path: Path) -> None:
    po = locale_dir() / language / "LC_MESSAGES" / "sdbox.po"
    compiled = tmp_path / "sdbox.mo"
    subprocess.run(["msgfmt", "--check-format", "-o", str(compiled), str(po)], check=True)
    assert compiled.read_bytes() == po.with_suffix(".mo").read_bytes(), "run make locale"


def test_a_fuzzy_or_missing_entry_fails(tmp_path: Path) -> None:
    """The parser sees what the completeness test needs to see (so the test can fail)."""
    po = tmp_path / "x.po"
    po.write_text(
        'msgid ""\nmsgstr "Content-Type: text/plain; charset=UTF-8\\n"\n\n'
        '#, fuzzy\nmsgid "Insert your card"\nmsgstr "Insérez"\n\n'
        'msgid "A "\n"B"\nmsgstr ""\n"C \\"D\\""\n\n#~ msgid "old"\n#~ msgstr "vieux"\n',
        encoding="utf-8",
    )
    entries = parse_po(po)
    assert entries == {"Insert your card": Entry("Insérez", True), "A B": Entry('C "D"', False)}
