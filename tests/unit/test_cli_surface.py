"""What the README and the man page promise is the command surface, and `--json` means JSON.

The commands named are parsed from README.md and debian/man/sdbox.1, so a
new claim without a command fails here; every command with `--json` is run
(here when it needs no hardware, in tests/integration/test_cli_json.py and
others when it needs a card) and its standard output must be one JSON
document and nothing else.
"""

from __future__ import annotations

import ast
import itertools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from sdbox._cli import cli
from sdbox._cli.errors import _EXIT_CODES
from sdbox._cli.output import JSON_MARK, emit_json, json_option
from sdbox.trust.pki import Pki
from tests.cli import REPO_ROOT, sdbox_argv

README = REPO_ROOT / "README.md"
MAN_PAGE = REPO_ROOT / "debian" / "man" / "sdbox.1"

_WORD = re.compile(r"[a-z][a-z0-9-]*\Z")


# -- the documented commands ---------------------------------------------------------


def _claims(text: str) -> set[tuple[str, ...]]:
    """Command paths in one documented invocation, e.g. `sdbox identity provision | enrol ...`.

    After `sdbox`, words are subcommands as long as the command reached so far
    is a group: a word that names no command ends the path there, and the
    `--help` check below then fails on it. After a command, ` | WORD` outside
    brackets names another subcommand of the same group (`card readers | info`).
    """
    found: set[tuple[str, ...]] = set()
    for match in re.finditer(r"(?<![\w./-])sdbox((?:\s+[^\s`]+)*)", text):
        tokens = match.group(1).split()
        path: list[str] = []
        command: click.Command | None = cli
        rest = tokens
        while rest and isinstance(command, click.Group) and _WORD.match(rest[0]):
            path.append(rest[0])
            command = command.commands.get(rest[0])
            rest = rest[1:]
        if not path:
            continue
        found.add(tuple(path))
        depth = 0
        for i, token in enumerate(rest):
            depth += token.count("[") - token.count("]")
            if token == "|" and depth == 0 and i + 1 < len(rest) and _WORD.match(rest[i + 1]):
                found.add((*path[:-1], rest[i + 1]))
    return found


def readme_claims() -> set[tuple[str, ...]]:
    """Every command the README names: in code spans and in code blocks."""
    text = README.read_text()
    claims: set[tuple[str, ...]] = set()
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S):
        claims |= _claims(block.replace("\\\n", " "))
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    for span in re.findall(r"`([^`]+)`", prose):
        claims |= _claims(span.replace("\\|", "|"))
    return claims


def _roff_text(line: str) -> str:
    """A man page line without its macro and escapes (`.B card readers | info`)."""
    line = re.sub(r"^\.[A-Z]{1,2}\s+", "", line)
    return line.replace("\\-", "-").replace('"', "")


def man_section(name: str) -> str:
    """The text of one .SH section of the man page."""
    text = MAN_PAGE.read_text()
    match = re.search(rf"^\.SH {name}\n(.*?)(?=^\.SH |\Z)", text, flags=re.S | re.M)
    assert match, f"the man page has no {name} section"
    return match.group(1)


def man_claims() -> set[tuple[str, ...]]:
    """Every command the man page names: the COMMANDS section's tags, and `sdbox ...` anywhere."""
    claims: set[tuple[str, ...]] = set()
    lines = MAN_PAGE.read_text().splitlines()
    for line in lines:
        claims |= _claims(_roff_text(line))
    section = man_section("COMMANDS").splitlines()
    for before, tag in itertools.pairwise(section):
        if before == ".TP":
            claims |= _claims("sdbox " + _roff_text(tag))
    return claims


def _top_level() -> set[str]:
    return set(cli.commands)


def test_the_documentation_parser_finds_commands_and_refuses_unknown_ones() -> None:
    # the parser itself, on the shapes the documents use
    assert _claims("sdbox card readers | info | verify") == {
        ("card", "readers"), ("card", "info"), ("card", "verify")
    }
    assert _claims("`sdbox card verify --finger-template FILE [--finger primary | secondary]`") == {
        ("card", "verify")
    }
    assert _claims("sdbox pki init DIR") == {("pki", "init")}
    assert _claims("sdbox trust frobnicate --json") == {("trust", "frobnicate")}  # then fails
    assert _claims("sdbox COMMAND --help") == set()


@pytest.mark.parametrize(
    ("document", "claims"), [("README.md", readme_claims), ("sdbox.1", man_claims)]
)
def test_every_documented_command_exists(document: str, claims: object) -> None:
    assert callable(claims)
    found: set[tuple[str, ...]] = claims()
    assert len(found) > 10, f"{document}: the parser found almost nothing: {sorted(found)}"
    missing = []
    for path in sorted(found):
        # in-process (the CLI's own entry point, one process start would be a second per
        # claim); test_python_m_sdbox_is_the_same_command starts the real one
        done = CliRunner().invoke(cli, [*path, "--help"])
        if done.exit_code != 0:
            missing.append(f"sdbox {' '.join(path)}: {done.output.strip()[-200:]}")
    assert not missing, f"{document} names commands that do not exist:\n" + "\n".join(missing)


@pytest.mark.parametrize(
    ("document", "claims"), [("README.md", readme_claims), ("sdbox.1", man_claims)]
)
def test_every_command_group_is_documented(document: str, claims: object) -> None:
    assert callable(claims)
    named = {path[0] for path in claims()}
    assert _top_level() - named == set(), f"{document} leaves out these command groups"


def test_every_exit_code_is_documented() -> None:
    codes = {0, 1, 2, 70, *_EXIT_CODES.values()}
    man = _roff_text(man_section("EXIT STATUS"))
    readme = README.read_text().split("Exit codes:", 1)[1].split("\n\n", 1)[0]
    for code in sorted(codes):
        for name, text in (("the man page", man), ("README.md", readme)):
            assert re.search(rf"(?<!\d){code} ", text), f"{name} does not document exit code {code}"


# -- --json: the document alone ------------------------------------------------------


def _json_commands() -> dict[tuple[str, ...], click.Command]:
    found: dict[tuple[str, ...], click.Command] = {}

    def walk(command: click.Command, path: tuple[str, ...]) -> None:
        if isinstance(command, click.Group):
            for name, sub in command.commands.items():
                walk(sub, (*path, name))
        elif any("--json" in getattr(p, "opts", ()) for p in command.params):
            found[path] = command

    walk(cli, ())
    return found


def test_every_json_flag_carries_the_guarantee() -> None:
    commands = _json_commands()
    assert len(commands) >= 8
    for path, command in commands.items():
        assert getattr(command.callback, JSON_MARK, False), (
            f"sdbox {' '.join(path)}: --json must come from sdbox._cli.output.json_option"
        )


def test_json_output_keeps_prints_and_children_off_stdout(capfd: pytest.CaptureFixture[str]) -> None:
    @click.command()
    @json_option()
    def noisy(as_json: bool) -> None:
        print("a table")
        os.write(1, b"straight to fd 1\n")
        subprocess.run(["echo", "a child"], check=True)
        emit_json({"figure": 1})
        raise click.exceptions.Exit(1)  # a failure status after the document, as `sdbox renew`

    assert noisy.main(["--json"], standalone_mode=False) == 1
    out, err = capfd.readouterr()
    assert json.loads(out) == {"figure": 1}
    for line in ("a table", "straight to fd 1", "a child"):
        assert line in err


def _pki_config(tmp_path: Path) -> Path:
    pki = Pki.init(tmp_path / "pki")
    config = tmp_path / "agent.toml"
    config.write_text(
        f'state_dir = "{tmp_path / "state"}"\n'
        f'[trust]\nanchors = "{pki.path / "root.pem"}"\n'
        f'intermediates = "{tmp_path / "none.pem"}"\ncrl_dir = "{tmp_path / "crl"}"\n'
    )
    return config


# Without hardware: run here. The argv after the command; {config} is a config with a fresh PKI.
NO_HARDWARE: dict[tuple[str, ...], tuple[str, ...]] = {
    ("trust", "bench"): ("--entries", "1000"),
    ("bio", "bench"): ("--fingers", "10"),
    ("renewal", "mark-due"): ("--config", "{config}"),
    # an unreachable distribution point: the failure (exit 1) is in the document
    ("trust", "refresh"): ("--config", "{config}", "--url", "http://127.0.0.1:9/x.crl"),
    ("trust", "refresh-crls"): ("--config", "{config}", "--url", "http://127.0.0.1:9/x.crl"),
}
# Needing a card, pcscd or the agent's stack: the integration test that parses their --json output.
WITH_HARDWARE: dict[tuple[str, ...], str] = {
    ("tunnel", "load-crls"): "test_tunnel_upkeep.py::test_a_refreshed_crl_reaches_charon_and_a_gateway_revoked_since_is_refused",
    ("card", "readers"): "test_cli_json.py::test_card_readers_json_is_the_document_alone",
    ("card", "info"): "test_card_cli.py::test_info_json_lists_the_demo_projects_with_a_verified_directory",
    ("card", "identify"): "test_card_identify.py::test_identify_names_each_variant",
    ("trust", "check"): "test_trust_check.py::test_a_freshly_issued_card_passes_every_check",
    ("agent", "bench"): "test_cli_json.py::test_agent_bench_json_is_the_document_alone_and_runs_from_anywhere",
    ("renew",): "test_renewal.py::test_a_certificate_for_another_key_is_refused",
    ("fleet", "report"): "test_fleet.py::test_a_box_checks_in_and_ships_its_audit_trail",
    ("fleet", "diagnostics"): "test_fleet.py::test_diagnostics_reach_the_box_page_with_sdbox_lines_only",
    ("fleet", "rollout", "status"): "test_fleet.py::test_a_rollout_reaches_its_first_ring_and_pauses_on_a_failed_update",
    ("broker", "enrol", "open"): "test_remote_enrolment.py::test_the_operator_opens_reads_the_code_back_and_the_box_enrols",
    ("broker", "enrol", "show"): "test_remote_enrolment.py::test_the_operator_opens_reads_the_code_back_and_the_box_enrols",
}


def test_every_json_command_is_run_somewhere() -> None:
    assert set(_json_commands()) == set(NO_HARDWARE) | set(WITH_HARDWARE)
    for where in WITH_HARDWARE.values():
        module, function = where.split("::")
        tree = ast.parse((REPO_ROOT / "tests" / "integration" / module).read_text())
        names = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
        assert function in names, f"{where} does not exist"


@pytest.mark.parametrize("path", sorted(NO_HARDWARE), ids=" ".join)
def test_json_stdout_is_one_document(path: tuple[str, ...], tmp_path: Path) -> None:
    args = NO_HARDWARE[path]
    if "{config}" in args:
        config = str(_pki_config(tmp_path))
        args = tuple(a.replace("{config}", config) for a in args)
    done = subprocess.run(
        [*sdbox_argv(), *path, *args, "--json"],
        cwd=tmp_path, capture_output=True, text=True, timeout=110, check=False,
    )  # fmt: skip
    # 1: a refresh that failed, as asked; 75: the only trouble an unreached distribution point
    assert done.returncode in (0, 1, 75), done.stderr[-2000:]
    json.loads(done.stdout)  # exactly one document: text before or after it fails here
    assert done.stdout.strip().startswith(("{", "["))


def test_python_m_sdbox_is_the_same_command() -> None:
    # tests start sdbox beside sys.executable (tests/cli.py): that must be this sdbox, and
    # its --help lists the same command groups as the tree the tests above walk
    started = subprocess.run(
        [*sdbox_argv(), "--help"], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    module = subprocess.run(
        [sys.executable, "-m", "sdbox", "--help"], capture_output=True, text=True, timeout=60,
        check=True,
    ).stdout  # fmt: skip
    # the same but for the program name in the usage line
    assert started.splitlines()[1:] == module.splitlines()[1:]
    listed = set(re.findall(r"^  ([a-z][a-z0-9-]*)  ", started, flags=re.M))
    assert listed == _top_level()
