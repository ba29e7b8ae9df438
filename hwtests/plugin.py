"""The hwtests pytest plugin: options, the bench, the card identity check, the timing report.

Options (``sdbox hwtest`` passes them through):

``--target emulated`` (default; what CI runs) or ``--target pcsc:"READER NAME"``;
``--card-serial GUID`` (required with a real reader: the suite refuses any
other card); ``--allow-write`` for destructive steps; ``--template FILE``
(a finger of the card's holder, ISO/IEC 19794-2 record or compact card
template, for OCC on a real card); ``--anchors FILE`` (roots that must
validate the directory signer); ``--bubble URL`` (a test bubble for a real
bench); ``--renewal-config FILE`` (a test CA and the card's development
centre, for renewal on a real card); ``--project-catalogue FILE`` (the site's
signed catalogue, for a session on a one-project card); ``--operator`` (someone at the bench
pulls and inserts the card when asked).

Scenarios name themselves with ``@pytest.mark.scenario("...")`` and record
their figures with ``record_property``: both go to the JUnit XML
(``--junitxml``) and to the table printed at the end of the run.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from hwtests.bench import (
    Bench,
    BenchError,
    WrongCard,
    check_identity,
    normalise_serial,
    parse_target,
    read_guid,
    start_emulated,
)
from sdbox.errors import SdboxError
from sdbox.smartcard.biosso import BioSsoSession

# pytest's ``record_property`` fixture: a figure for the JUnit XML and the report
RecordProperty = Callable[[str, object], None]

# Exit status when the suite refuses the bench (wrong or missing card, bad
# target): the CLI's "card absent or unusable" code, not a test failure.
REFUSED = 3
WRITES_SKIP = "destructive step: run with --allow-write, on a test card only"

# per test (node id): scenario, result, seconds over setup+call+teardown, figures
_ROWS: dict[str, dict[str, Any]] = {}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("sdbox hwtests")
    group.addoption("--target", default="emulated",
                    help='emulated (default) or pcsc:"READER NAME"')  # fmt: skip
    group.addoption("--card-serial", default=None,
                    help="the card's CHUID GUID (32 hex digits); any other card is refused")  # fmt: skip
    group.addoption("--allow-write", action="store_true", default=False,
                    help="run destructive steps (enrolment, key generation, renewal)")  # fmt: skip
    group.addoption("--template", type=Path, default=None,
                    help="the holder's finger as a template file, for OCC on a real card")  # fmt: skip
    group.addoption("--anchors", type=Path, default=None,
                    help="PEM roots the directory signer must chain to")  # fmt: skip
    group.addoption("--bubble", default=None,
                    help="rdp://HOST:PORT of a test bubble (real bench)")  # fmt: skip
    group.addoption("--renewal-config", type=Path, default=None,
                    help="agent configuration naming a test CA and the card's development centre, "
                         "for renewal on a real card")  # fmt: skip
    group.addoption("--project-catalogue", type=Path, default=None,
                    help="the site's signed project catalogue, for the session scenario on a "
                         "one-project card (real bench)")  # fmt: skip
    group.addoption("--operator", action="store_true", default=False,
                    help="someone at the bench pulls and inserts the card when asked (use -s)")  # fmt: skip
    group.addoption("--card-profile", default="demo",
                    help="emulated bench: the card variant's profile (`sdbox emulate card "
                         "--list-profiles`; docs/card-variants.md)")  # fmt: skip
    group.addoption("--operator-timeout", type=float, default=30.0,
                    help="seconds the operator has for each step")  # fmt: skip


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "scenario(name): the scenario's name in the report")
    config.addinivalue_line("markers", f"writes: {WRITES_SKIP}")
    _ROWS.clear()
    try:
        target = parse_target(config.getoption("--target"))
        serial = config.getoption("--card-serial")
        if serial is not None:
            normalise_serial(serial)
    except BenchError as exc:
        raise pytest.UsageError(exc.message) from exc
    if not target.emulated and serial is None:
        raise pytest.UsageError(
            f"--target {target.label} needs --card-serial GUID: the suite touches only a card "
            "it was told about (`sdbox card info --reader ...` shows the GUID)"
        )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    allow_write = config.getoption("--allow-write")
    for item in items:
        marker = item.get_closest_marker("scenario")
        name = str(marker.args[0]) if marker and marker.args else item.name
        item.user_properties.append(("scenario", name))
        if item.get_closest_marker("writes") and not allow_write:
            item.add_marker(pytest.mark.skip(reason=WRITES_SKIP))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    row = _ROWS.setdefault(
        report.nodeid, {"seconds": 0.0, "result": "passed", "why": "", "figures": {}}
    )
    row["seconds"] += report.duration
    for key, value in report.user_properties:
        if key == "scenario":
            row["scenario"] = value
        else:
            row["figures"][key] = value
    if report.failed:
        row["result"] = "failed" if report.when == "call" else f"error ({report.when})"
    elif report.skipped and row["result"] == "passed":
        row["result"] = "skipped"
        longrepr = report.longrepr
        row["why"] = str(longrepr[2]) if isinstance(longrepr, tuple) else str(longrepr)


def pytest_terminal_summary(
    terminalreporter: Any, exitstatus: int, config: pytest.Config
) -> None:
    rows = list(_ROWS.values())
    if not rows:
        return
    tr = terminalreporter
    target = config.getoption("--target")
    tr.write_sep("=", f"sdbox hwtests: {target}")
    width = max(len(str(r.get("scenario", ""))) for r in rows)
    tr.write_line(f"{'scenario':<{width}}  {'result':<8} {'seconds':>8}  figures / reason")
    for r in rows:
        detail = ", ".join(f"{k}={v}" for k, v in r["figures"].items()) or r["why"]
        tr.write_line(
            f"{r.get('scenario', '?'):<{width}}  {r['result']:<8} {r['seconds']:>8.3f}  {detail}"
        )
    total = sum(r["seconds"] for r in rows)
    tr.write_line(f"{'total':<{width}}  {'':<8} {total:>8.3f}")


def _refuse(message: str) -> None:
    pytest.exit(f"sdbox hwtest: {message}", returncode=REFUSED)


@pytest.fixture(scope="session")
def bench(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bench]:
    """The reader and card this run may touch (identity checked before any scenario)."""
    config = pytestconfig
    target = parse_target(config.getoption("--target"))
    serial = config.getoption("--card-serial")
    expected = normalise_serial(serial) if serial is not None else None
    anchors_path: Path | None = config.getoption("--anchors")
    anchors: list[x509.Certificate] | None = None
    if anchors_path is not None:
        from sdbox._cli.card import load_anchors

        try:
            anchors = load_anchors(anchors_path)
        except SdboxError as exc:
            _refuse(exc.message)
    options: dict[str, Any] = {
        "allow_write": config.getoption("--allow-write"),
        "template": config.getoption("--template"),
        "bubble": config.getoption("--bubble"),
        "renewal_config": config.getoption("--renewal-config"),
        "project_catalogue": config.getoption("--project-catalogue"),
        "interactive": config.getoption("--operator"),
        "operator_timeout_s": config.getoption("--operator-timeout"),
    }
    if target.emulated:
        try:
            emulated = start_emulated(
                tmp_path_factory.mktemp("hwtests"), pytestconfig.getoption("--card-profile")
            )
        except SdboxError as exc:
            _refuse(f"the emulated bench did not start: {exc.message}")
        try:
            guid = read_guid(emulated.reader)
            if expected is not None:
                check_identity(guid, expected, emulated.reader)
            yield Bench(target, emulated.reader, guid, anchors=anchors or emulated.anchors,
                        emulated=emulated, **options)  # fmt: skip
        except WrongCard as exc:
            _refuse(exc.message)
        finally:
            emulated.close()
        return
    assert target.reader is not None  # pytest_configure checked both
    assert expected is not None
    from sdbox.smartcard.pcsc import list_readers

    try:
        readers = list_readers()
    except SdboxError as exc:
        _refuse(f"PC/SC is not usable: {exc.message}")
    if target.reader not in readers:
        _refuse(f"no reader named '{target.reader}'; readers here: {readers or 'none'}")
    try:
        guid = read_guid(target.reader)
        check_identity(guid, expected, target.reader)
    except SdboxError as exc:  # no card, not a PIV card, or another card: touch nothing
        _refuse(exc.message)
    yield Bench(target, target.reader, guid, anchors=anchors, **options)


@pytest.fixture
def card(bench: Bench) -> Iterator[BioSsoSession]:
    """A selected session on the named card (shared mode); the run stops on any other card."""
    try:
        with bench.session() as session:
            yield session
    except WrongCard as exc:
        _refuse(exc.message)


@pytest.fixture
def verified_card(bench: Bench, card: BioSsoSession) -> BioSsoSession:
    """``card`` after on-card comparison of the holder's primary finger."""
    from sdbox.smartcard.profile import Discovery, KeyRef, ObjectTag

    if not Discovery.parse(card.piv.get_object(ObjectTag.DISCOVERY)).occ:
        pytest.skip("the card does not advertise on-card comparison (discovery object)")
    probe = bench.probe()
    if probe is None:
        pytest.skip("holder verification needs the holder's finger: --template FILE "
                    "(the PIN is never taken on a command line)")  # fmt: skip
    card.piv.verify_finger(KeyRef.FINGER_PRIMARY, probe)
    return card


def same_card(bench: Bench, guid: bytes) -> None:
    """Stop the run unless ``guid`` is the named card's (after a removal, say)."""
    try:
        check_identity(guid, bench.guid, bench.reader)
    except WrongCard as exc:
        _refuse(exc.message)


def milliseconds(seconds: float) -> float:
    """Figures are reported in ms, 0.1 ms resolution."""
    return round(seconds * 1000, 1)


@contextlib.contextmanager
def operator(config: pytest.Config) -> Iterator[Any]:
    """The terminal, with pytest's capture suspended, to talk to the operator."""
    capture = config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        yield sys.stderr


def ask_operator(config: pytest.Config, bench: Bench, message: str) -> float:
    """Show ``message`` to the operator; the time it was shown (monotonic)."""
    if not bench.interactive:
        pytest.skip("a real reader needs an operator for this: run with --operator -s")
    with operator(config) as out:
        out.write(f"\n>>> {message} (within {bench.operator_timeout_s:.0f} s)\n")
        out.flush()
    return time.monotonic()
