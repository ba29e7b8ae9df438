"""`sdbox session open`: refusals a hand-testing engineer would meet, with exit code 6."""

from __future__ import annotations

import subprocess
import sys


def sdbox(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sdbox", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_session_is_a_command_family() -> None:
    assert "session" in sdbox("--help").stdout


def test_unknown_protocol_is_a_session_error() -> None:
    result = sdbox("session", "open", "vnc://h:1", "--user", "u", "--display", ":9", stdin="pw\n")
    assert result.returncode == 6
    assert "rdp://HOST:PORT" in result.stderr


def test_missing_credential_is_refused_before_any_client_starts() -> None:
    result = sdbox(
        "session",
        "open",
        "rdp://127.0.0.1:1",
        "--user",
        "u",
        "--display",
        ":9",
        "--server-fingerprint",
        "sha256:" + "00" * 32,
        stdin="\n",
    )
    assert result.returncode == 6
    assert "No session credential" in result.stderr


def test_rdp_without_a_pin_is_refused() -> None:
    result = sdbox(
        "session", "open", "rdp://127.0.0.1:1", "--user", "u", "--display", ":9", stdin="pw\n"
    )
    assert result.returncode == 6
    assert "pin" in result.stderr
