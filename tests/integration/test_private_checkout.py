"""A checkout in a private directory (root's home, ``mktemp -d``: mode 0700).

What runs as another user must not need to read the checkout: the session
client's reaper (as ``sdbox-session``) and the greeter (as ``sdbox-greeter``).
Here the ``sdbox`` package and a venv made the way ``make venv`` makes one
live under such a directory, and the supervisor runs from there.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import sdbox
from sdbox.session import DEFAULT_SESSION_USER, EndReason
from tests.integration import greeter_env


def _user_missing(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return True
    return False


pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or _user_missing(DEFAULT_SESSION_USER),
    reason=f"needs root and the {DEFAULT_SESSION_USER} user (make setup)",
)

SECRET = "private-checkout-credential"
# Run by the private venv's python with -I: neither PYTHONPATH nor the
# current directory, so `sdbox` can only come from the private copy.
_SUPERVISOR = """
import asyncio, json, sys
sys.path.insert(0, sys.argv[1])
import sdbox
from sdbox.session import Credential, Display, Endpoint, EndReason, SessionSpec
from sdbox.session.base import Launch, LineEvent, Session

class Client(Session):
    def launch(self, home):
        script = 'read line; echo "got $line as $(id -un)"; echo CONNECTED'
        return Launch(argv=["sh", "-c", script], stdin_data=(sys.argv[3] + "\\n").encode(),
                      home_files={"marker": "x"}, extra_env={})

    def classify(self, line):
        return LineEvent(connected=True) if line == "CONNECTED" else None

    def outcome(self, status, *, was_connected):
        return (EndReason.LOGGED_OFF if status == 0 else EndReason.CLIENT_FAILED), str(status)

async def main():
    spec = SessionSpec(endpoint=Endpoint.parse("rdp://127.0.0.1:1"), user="u",
                       credential=Credential(sys.argv[3]), display=Display(x11=":99"),
                       server_fingerprint="sha256:" + "00" * 32, connect_timeout=30.0)
    session = Client(spec, run_as=sys.argv[2])
    await session.start()
    await session.wait_connected()
    ended = await session.wait_ended()
    print(json.dumps({"package": sdbox.__file__, "reason": ended.reason.value,
                      "connected": ended.was_connected, "log": list(ended.log_tail)}))

asyncio.run(main())
"""


def _can_reach(user: str, path: Path) -> bool:
    probe = subprocess.run(
        ["runuser", "-u", user, "--", "test", "-r", str(path)],
        cwd="/", capture_output=True, timeout=30, check=False,
    )  # fmt: skip
    return probe.returncode == 0


@pytest.fixture(scope="module")
def private_checkout() -> Iterator[Path]:
    """The sdbox package and a venv (like `make venv`'s) under a fresh 0700 directory."""
    root = Path(tempfile.mkdtemp(prefix="sdbox-private-checkout-"))
    try:
        shutil.copytree(
            Path(sdbox.__file__).parent,
            root / "sdbox",
            ignore=shutil.ignore_patterns("__pycache__"),
        )
        base_python = getattr(sys, "_base_executable", sys.executable)
        subprocess.run(
            [base_python, "-m", "venv", "--without-pip", "--system-site-packages", str(root / ".venv")],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_the_session_user_cannot_read_the_private_checkout(private_checkout: Path) -> None:
    """What the other tests here rely on: the checkout really is out of the users' reach."""
    assert private_checkout.stat().st_mode & 0o777 == 0o700
    for user in (DEFAULT_SESSION_USER, greeter_env.GREETER_USER):
        if not _user_missing(user):
            assert not _can_reach(user, private_checkout / "sdbox" / "session" / "reaper.py")
            assert not _can_reach(user, private_checkout / ".venv" / "bin" / "python")


def test_a_session_client_starts_from_a_private_checkout(private_checkout: Path) -> None:
    """The reaper and the client run as sdbox-session, which cannot enter the checkout."""
    supervisor = subprocess.run(
        [
            str(private_checkout / ".venv" / "bin" / "python"), "-I", "-c", _SUPERVISOR,
            str(private_checkout), DEFAULT_SESSION_USER, SECRET,
        ],
        cwd=private_checkout, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert supervisor.returncode == 0, supervisor.stderr[-3000:]
    report = json.loads(supervisor.stdout)
    assert Path(report["package"]).is_relative_to(private_checkout)
    assert report["connected"]
    assert report["reason"] == EndReason.LOGGED_OFF.value
    # The credential reached the client on its stdin, and the client was the session user's.
    assert f"got <redacted> as {DEFAULT_SESSION_USER}" in report["log"]
    assert SECRET not in supervisor.stdout


@pytest.mark.skipif(
    _user_missing(greeter_env.GREETER_USER), reason=f"needs the {greeter_env.GREETER_USER} user"
)
def test_the_greeter_user_runs_its_code_staged_out_of_the_checkout(tmp_path: Path) -> None:
    """The greeter tests run the greeter as its user from a copy it can read, not the checkout."""
    base = Path(tempfile.mkdtemp(prefix="sdbox-greeter-code-"))
    try:
        base.chmod(0o755)
        code = greeter_env.stage_package(base)
        imported = subprocess.run(
            [
                "runuser", "-u", greeter_env.GREETER_USER, "--", "env", "-i", "PATH=/usr/bin:/bin",
                f"PYTHONPATH={code}", "PYTHONDONTWRITEBYTECODE=1", greeter_env.GREETER_PYTHON, "-c",
                "import sdbox, sdbox.ui.app; print(sdbox.__file__)",
            ],
            cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert imported.returncode == 0, imported.stderr[-3000:]
        assert Path(imported.stdout.strip()).is_relative_to(code)
    finally:
        shutil.rmtree(base, ignore_errors=True)
