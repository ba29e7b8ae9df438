"""`sdbox hwtest`: the hardware-in-the-loop suite (``hwtests/``) on a bench or the emulator.

The suite is not an installed Python package (a top-level ``hwtests`` in
site-packages would be a generic name in everybody's namespace): it is a
directory of pytest files that this command hands to pytest by path, which
puts the directory's parent on ``sys.path`` for that run only. It is found in
a source checkout (beside the ``sdbox`` package this command runs from, or in
the current directory), or where the Debian package installs it as data
(docs/hwtests.md, "Where the suite lives").
"""

from __future__ import annotations

import os
from pathlib import Path

import click

import sdbox
from sdbox.errors import SdboxError

# where debian/sdbox.install puts the suite's files (data, not a package on sys.path)
INSTALLED_SUITE = Path("/usr/share/sdbox/hwtests")


class HwtestUnavailable(SdboxError):
    """The suite or its runner (pytest) is not installed with this sdbox."""


def _is_suite(directory: Path) -> bool:
    return (directory / "plugin.py").is_file() and (directory / "conftest.py").is_file()


def suite_candidates() -> list[Path]:
    """Where the suite is looked for, in order."""
    checkout = Path(sdbox.__file__).resolve().parents[1] / "hwtests"
    return [checkout, Path.cwd() / "hwtests", INSTALLED_SUITE]


def suite_directory(candidates: list[Path] | None = None) -> Path:
    """The suite's directory: a checkout's ``hwtests/``, or the Debian package's copy."""
    looked = suite_candidates() if candidates is None else candidates
    for directory in looked:
        if _is_suite(directory):
            return directory
    raise HwtestUnavailable(
        "the hardware-in-the-loop suite is not here: looked for hwtests/ (plugin.py, conftest.py) in "
        + ", ".join(str(d) for d in dict.fromkeys(looked))
        + "; run from an sdbox checkout, or install the sdbox Debian package"
    )


def pytest_argv(
    directory: Path,
    *,
    target: str,
    card_serial: str | None,
    allow_write: bool,
    junit: Path | None,
    template: Path | None,
    anchors: Path | None,
    bubble: str | None,
    operator: bool,
    extra: tuple[str, ...],
    renewal_config: Path | None = None,
    project_catalogue: Path | None = None,
) -> list[str]:
    """The pytest command line for these options (tested: tests/unit/test_hwtest_cli.py)."""
    argv = [str(directory), "-p", "no:cacheprovider", "--target", target, "-rs"]
    # the suite's files stay read-only on a box: no cache, no byte-code next to them
    if card_serial is not None:
        argv += ["--card-serial", card_serial]
    if allow_write:
        argv.append("--allow-write")
    if junit is not None:
        # xunit1: the per-scenario figures (record_property) are properties of each test case
        argv += ["--junitxml", str(junit), "-o", "junit_suite_name=sdbox-hwtests",
                 "-o", "junit_logging=no", "-o", "junit_family=xunit1"]  # fmt: skip
    if template is not None:
        argv += ["--template", str(template)]
    if anchors is not None:
        argv += ["--anchors", str(anchors)]
    if bubble is not None:
        argv += ["--bubble", bubble]
    if renewal_config is not None:
        argv += ["--renewal-config", str(renewal_config)]
    if project_catalogue is not None:
        argv += ["--project-catalogue", str(project_catalogue)]
    if operator:
        argv += ["--operator", "-s"]
    return argv + list(extra)


@click.command(context_settings={"ignore_unknown_options": True})
@click.option("--target", default="emulated", show_default=True,
              help='emulated, or pcsc:"READER NAME" (see `sdbox card readers`).')  # fmt: skip
@click.option("--card-serial", metavar="GUID",
              help="The test card's CHUID GUID (required with a real reader; any other card is refused).")  # fmt: skip
@click.option("--allow-write", is_flag=True,
              help="Run destructive steps (enrolment, key generation, renewal): test cards only.")  # fmt: skip
@click.option("--junit", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the results as JUnit XML to FILE.")  # fmt: skip
@click.option("--template", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The holder's finger (ISO/IEC 19794-2 record or compact template) for OCC.")  # fmt: skip
@click.option("--anchors", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="PEM roots the card's directory signer must chain to.")  # fmt: skip
@click.option("--bubble", metavar="URL", help="rdp://HOST:PORT of a test bubble (real bench).")
@click.option("--renewal-config", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Agent configuration naming a test CA and the card's centre (renewal, real card).")  # fmt: skip
@click.option("--project-catalogue", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The site's signed project catalogue (session on a one-project card, real card).")  # fmt: skip
@click.option("--operator", is_flag=True,
              help="Someone is at the bench to pull and insert the card, and type a credential.")  # fmt: skip
@click.argument("pytest_args", nargs=-1, type=click.UNPROCESSED)
def hwtest(
    target: str,
    card_serial: str | None,
    allow_write: bool,
    junit: Path | None,
    template: Path | None,
    anchors: Path | None,
    bubble: str | None,
    renewal_config: Path | None,
    project_catalogue: Path | None,
    operator: bool,
    pytest_args: tuple[str, ...],
) -> int:
    """Run the hardware-in-the-loop suite; prints a table of scenarios with their timings.

    Exit status: 0 all passed (skips included), 1 a scenario failed, 3 the
    bench was refused (wrong or missing card or reader), 4 usage error.
    Extra arguments after `--` go to pytest (e.g. `-- -k listing`).
    """
    try:
        import pytest  # noqa: PLC0415  (a test runner is not needed by the rest of sdbox)
    except ImportError as exc:
        raise HwtestUnavailable(
            "pytest is not installed: on a box or bench PC install python3-pytest; "
            "in a checkout run `make venv`"
        ) from exc
    directory = suite_directory()
    if junit is not None:
        junit.parent.mkdir(parents=True, exist_ok=True)
    argv = pytest_argv(
        directory, target=target, card_serial=card_serial, allow_write=allow_write, junit=junit,
        template=template, anchors=anchors, bubble=bubble, operator=operator, extra=pytest_args,
        renewal_config=renewal_config, project_catalogue=project_catalogue,
    )  # fmt: skip
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    return int(pytest.main(argv))
