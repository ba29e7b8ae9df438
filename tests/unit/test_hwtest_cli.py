"""`sdbox hwtest`: the suite is found, options reach pytest, bad targets and serials are refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from hwtests.bench import BenchError, normalise_serial, parse_target
from sdbox._cli.hwtest import pytest_argv, suite_directory


def test_the_suite_is_found_as_a_package() -> None:
    directory = suite_directory()
    assert (directory / "plugin.py").is_file()
    assert (directory / "conftest.py").is_file()


def test_options_become_the_suites_pytest_options(tmp_path: Path) -> None:
    argv = pytest_argv(
        tmp_path, target="pcsc:ACME Reader 0", card_serial="00" * 16, allow_write=True,
        junit=tmp_path / "out.xml", template=None, anchors=None, bubble=None, operator=True,
        extra=("-k", "listing"), renewal_config=tmp_path / "agent.toml",
    )  # fmt: skip
    assert argv[0] == str(tmp_path)
    assert argv[argv.index("--target") + 1] == "pcsc:ACME Reader 0"  # one argument, spaces kept
    assert argv[argv.index("--card-serial") + 1] == "00" * 16
    assert "--allow-write" in argv
    assert argv[argv.index("--junitxml") + 1] == str(tmp_path / "out.xml")
    assert "junit_family=xunit1" in argv  # scenario figures are per-test-case properties
    assert argv[argv.index("--renewal-config") + 1] == str(tmp_path / "agent.toml")
    assert "-s" in argv  # the operator must see the prompts
    assert argv[-2:] == ["-k", "listing"]
    assert "no:cacheprovider" in argv  # nothing written next to the suite on a read-only root


def test_a_plain_run_writes_nothing_destructive(tmp_path: Path) -> None:
    argv = pytest_argv(
        tmp_path, target="emulated", card_serial=None, allow_write=False, junit=None,
        template=None, anchors=None, bubble=None, operator=False, extra=(),
    )  # fmt: skip
    assert "--allow-write" not in argv
    assert "--card-serial" not in argv


def test_targets_parse_and_typos_are_refused() -> None:
    assert parse_target("emulated").emulated
    assert parse_target('pcsc:Virtual PCD 00 01').reader == "Virtual PCD 00 01"
    for bad in ("pcsc:", "pcsc: ", "emulate", "Virtual PCD 00 00"):
        with pytest.raises(BenchError):
            parse_target(bad)


def test_serials_are_guids_in_any_usual_spelling() -> None:
    guid = bytes(range(16))
    assert normalise_serial(guid.hex()) == guid
    assert normalise_serial(guid.hex().upper()) == guid
    assert normalise_serial(":".join(f"{b:02x}" for b in guid)) == guid
    for bad in ("", "00" * 15, "00" * 17, "zz" * 16):
        with pytest.raises(BenchError):
            normalise_serial(bad)
