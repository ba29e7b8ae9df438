"""Configuration: one declaration, errors that name file, section, key and problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdbox.agent.config import AgentConfig, load
from sdbox.config import ConfigError, describe


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def test_defaults_load_from_an_empty_file(tmp_path: Path) -> None:
    config = load(write(tmp_path, ""))
    assert config.session.user == "sdbox-session"
    assert config.trust.check_revocation is True
    assert config.policy.endpoint_allowed("127.0.0.1:3389") is False  # nothing allowed by default


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[sesion]\n", r"agent.toml: unknown key 'sesion' \(known: card, "),
        (
            '[sensor]\nkind = "usb"\n',
            r"agent.toml: \[sensor\] kind: must be one of 'libfprint', 'emulated', 'file', 'none', not 'usb'",
        ),
        ("[sensor]\nppi = 96\n", r"\[sensor\] ppi: must be between 250 and 1000"),
        (
            '[sensor]\nusb_ids = ["08ff-1600"]\n',
            r"\[sensor\] usb_ids: '08ff-1600' is not a USB id VVVV:PPPP",
        ),
        (
            "[session]\nconnect_timeout_s = 0\n",
            r"\[session\] connect_timeout_s: must be greater than 0",
        ),
        (
            '[session]\nconnect_timeout_s = "20"\n',
            r"\[session\] connect_timeout_s: expected float, got str",
        ),
        (
            '[policy]\nallowed_endpoints = ["bubble"]\n',
            r"\[policy\] allowed_endpoints: 'bubble' is not HOST:PORT",
        ),
        ("[policy]\nallowed_endpoints = 3\n", r"allowed_endpoints: expected a list"),
        ("state_dir = \n", r"not valid TOML"),
        ("[trust]\nanchors = 5\n", r"\[trust\] anchors: expected a path"),
        ("trust = 1\n", r"trust: expected a table"),
        ('[keyboard]\nlayout = "xq"\n', r"\[keyboard\] layout: 'xq' is not a layout XKB knows"),
        ('[keyboard]\nlayout = "Fr"\n', r"\[keyboard\] layout: 'Fr' is not an XKB layout name"),
        (
            '[keyboard]\nlayout = "mn"\n',
            r"\[keyboard\] layout: 'mn' \(Mongolian\) has no RDP keyboard layout here",
        ),
        ('[keyboard]\nchoices = ["fr", "xx"]\n', r"\[keyboard\] choices: 'xx' is not a layout"),
    ],
)
def test_errors_name_the_key_and_problem(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load(write(tmp_path, text))


def test_the_keyboard_is_the_boxs_layout_and_its_choices(tmp_path: Path) -> None:
    config = load(write(tmp_path, '[keyboard]\nlayout = "ch"\nchoices = ["ch", "fr", "de"]\n'))
    assert config.keyboard.layout == "ch"
    assert config.keyboard.choices == ["ch", "fr", "de"]
    assert load(write(tmp_path, "")).keyboard.layout == "us"


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load(tmp_path / "nope.toml")


def test_allow_list_wildcards(tmp_path: Path) -> None:
    config = load(write(tmp_path, '[policy]\nallowed_endpoints = ["*.bubbles.example:3389"]\n'))
    assert config.policy.endpoint_allowed("census.bubbles.example:3389")
    assert not config.policy.endpoint_allowed("evil.example:3389")
    assert not config.policy.endpoint_allowed("census.bubbles.example:22")


def test_reference_lists_every_setting() -> None:
    lines = describe(AgentConfig)
    assert "[session]" in lines
    assert any(line.startswith("connect_timeout_s = 20.0  # ") for line in lines)
    assert any("anchors = '/etc/sdbox/trust/roots.pem'" in line for line in lines)


def test_agent_ports_start_without_anchors_and_refuse_every_trust_decision(tmp_path: Path) -> None:
    from sdbox.agent.adapters import TrustFilesError, TrustService

    config = load(write(tmp_path, f'[trust]\nanchors = "{tmp_path / "missing.pem"}"\ncrl_dir = "{tmp_path / "crl"}"\n'))
    trust = TrustService(config)  # the agent comes up...
    with pytest.raises(TrustFilesError, match=r"trust anchors .* is missing"):
        trust.directory_validator()(None, [])  # type: ignore[arg-type]  # ...and trusts nothing
