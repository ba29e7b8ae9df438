"""`sdbox hwtest`: the suite is found by path, options reach pytest, bad targets and serials are refused."""

from __future__ import annotations

import fnmatch
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from hwtests.bench import BenchError, normalise_serial, parse_target
from sdbox._cli.hwtest import (
    INSTALLED_SUITE,
    HwtestUnavailable,
    pytest_argv,
    suite_candidates,
    suite_directory,
)
from tests.cli import REPO_ROOT


def test_the_suite_is_found_in_the_checkout() -> None:
    assert suite_directory() == REPO_ROOT / "hwtests"


def test_the_suite_is_looked_for_by_path_and_a_missing_one_names_where(tmp_path: Path) -> None:
    shipped = tmp_path / "share" / "hwtests"  # as the Debian package installs it: plain files
    shipped.mkdir(parents=True)
    for name in ("__init__.py", "conftest.py", "plugin.py"):
        (shipped / name).write_text("")
    assert suite_directory([tmp_path / "checkout" / "hwtests", shipped]) == shipped
    with pytest.raises(HwtestUnavailable, match=str(tmp_path / "nowhere")):
        suite_directory([tmp_path / "nowhere" / "hwtests"])
    assert suite_candidates()[-1] == INSTALLED_SUITE


def test_hwtests_is_not_an_installed_top_level_package(tmp_path: Path) -> None:
    # the distribution's packages: sdbox and its subpackages, never a generic `hwtests`
    config = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    include = config["tool"]["setuptools"]["packages"]["find"]["include"]
    # setuptools matches these with fnmatch, against every directory it discovers
    top_level = [d.name for d in REPO_ROOT.iterdir() if (d / "__init__.py").is_file()]
    assert "hwtests" in top_level  # the check below is about a real directory
    shipped = {d for d in top_level if any(fnmatch.fnmatchcase(d, p) for p in include)}
    assert shipped == {"sdbox"}
    assert any(fnmatch.fnmatchcase("sdbox.trust", p) for p in include)
    # and this installation (an editable one in a checkout) does not map it either
    done = subprocess.run(
        [sys.executable, "-c", "import importlib.util; print(importlib.util.find_spec('hwtests'))"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert done.stdout.strip() == "None"


def test_the_debian_package_installs_the_suite_where_the_command_looks() -> None:
    lines = (REPO_ROOT / "debian" / "sdbox.install").read_text().splitlines()
    assert f"hwtests/*.py {str(INSTALLED_SUITE).lstrip('/')}" in lines


def test_options_become_the_suites_pytest_options(tmp_path: Path) -> None:
    argv = pytest_argv(
        tmp_path, target="pcsc:ACME Reader 0", card_serial="00" * 16, allow_write=True,
        junit=tmp_path / "out.xml", template=None, anchors=None, bubble=None, operator=True,
        extra=("-k", "listing"), renewal_config=tmp_path / "agent.toml",
        project_catalogue=tmp_path / "project-catalogue.json",
    )  # fmt: skip
    assert argv[0] == str(tmp_path)
    assert argv[argv.index("--target") + 1] == "pcsc:ACME Reader 0"  # one argument, spaces kept
    assert argv[argv.index("--card-serial") + 1] == "00" * 16
    assert "--allow-write" in argv
    assert argv[argv.index("--junitxml") + 1] == str(tmp_path / "out.xml")
    assert "junit_family=xunit1" in argv  # scenario figures are per-test-case properties
    assert argv[argv.index("--renewal-config") + 1] == str(tmp_path / "agent.toml")
    assert argv[argv.index("--project-catalogue") + 1] == str(tmp_path / "project-catalogue.json")
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
