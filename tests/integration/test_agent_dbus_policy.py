"""The agent's system bus policy: only the greeter's user may talk to it."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
import textwrap
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from sdbox.agent.api import BUS_NAME, INTERFACE, OBJECT_PATH
from sdbox.agent.dbus import export
from sdbox.agent.machine import Agent
from tests.integration.agent_env import _accepts
from tests.integration.session_servers import stop

pytestmark = pytest.mark.skipif(
    shutil.which("dbus-daemon") is None
    or subprocess.run(["id", "sdbox-greeter"], capture_output=True, check=False).returncode != 0,
    reason="needs dbus-daemon and the sdbox-greeter user (make setup)",
)


def _system_like_bus(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    policy = resources.files("sdbox.agent").joinpath("data/org.sdbox.Agent1.conf").read_text()
    (workdir / "system.d").mkdir()
    (workdir / "system.d" / "org.sdbox.Agent1.conf").write_text(policy)
    socket = workdir / "system_bus_socket"
    # the defaults of Debian's system bus: method calls denied unless a policy allows them
    (workdir / "bus.conf").write_text(
        textwrap.dedent(f"""\
        <!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
         "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
        <busconfig>
          <type>system</type>
          <listen>unix:path={socket}</listen>
          <auth>EXTERNAL</auth>
          <policy context="default">
            <allow user="*"/>
            <deny send_type="method_call"/>
            <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
            <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Introspectable"/>
            <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Properties"/>
            <allow receive_type="method_call"/>
            <allow send_requested_reply="true" send_type="method_return"/>
            <allow send_requested_reply="true" send_type="error"/>
            <allow receive_type="method_return"/>
            <allow receive_type="error"/>
            <allow receive_type="signal"/>
            <allow send_type="signal"/>
          </policy>
          <includedir>{workdir / "system.d"}</includedir>
        </busconfig>
        """)
    )
    process = subprocess.Popen(["dbus-daemon", "--nofork", f"--config-file={workdir / 'bus.conf'}"])
    # The socket file appears at bind(), before listen(): wait until a connection
    # is accepted, or the first client may be refused (seen under load).
    for _ in range(200):
        if socket.exists() and _accepts(socket):
            break
        subprocess.run(["sleep", "0.05"], check=True)
    return process, f"unix:path={socket}"


def _as(user: str, address: str, *call: str) -> subprocess.CompletedProcess[str]:
    import pwd

    entry = pwd.getpwnam(user)  # 'nobody' has no group of that name: use its gid
    return subprocess.run(
        ["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--clear-groups",
         "dbus-send", f"--bus={address}", "--print-reply", f"--dest={BUS_NAME}", OBJECT_PATH, *call],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip


class _Idle:
    """Ports that are never reached: the policy test only reads the idle state."""


def test_only_the_greeter_user_reaches_the_agent() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="sdbox-bus-"))
    workdir.chmod(0o755)  # the other users must reach the socket to be refused by the policy
    bus, address = _system_like_bus(workdir)

    async def scenario() -> None:
        idle: Any = _Idle()
        agent = Agent(
            trust=idle,
            sensor=idle,
            credentials=idle,
            sessions=idle,
            endpoint_allowed=lambda _e: False,
        )
        service = await export(agent, address)
        try:
            get_state = (
                "org.freedesktop.DBus.Properties.Get",
                f"string:{INTERFACE}",
                "string:State",
            )
            allowed = await asyncio.to_thread(_as, "sdbox-greeter", address, *get_state)
            assert allowed.returncode == 0, allowed.stderr
            assert 'string "idle"' in allowed.stdout
            denied = await asyncio.to_thread(_as, "nobody", address, *get_state)
            assert denied.returncode != 0
            assert "AccessDenied" in denied.stderr
            choose = (f"{INTERFACE}.ChooseProject", "string:census-2021")
            refused = await asyncio.to_thread(_as, "nobody", address, *choose)
            assert "AccessDenied" in refused.stderr
            greeter = await asyncio.to_thread(_as, "sdbox-greeter", address, *choose)
            assert "insert your card first" in greeter.stderr  # reached the agent, which refused
        finally:
            service.disconnect()

    try:
        asyncio.run(scenario())
    finally:
        stop(bus)
        shutil.rmtree(workdir, ignore_errors=True)
