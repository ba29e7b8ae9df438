"""A session to a test bubble: the card's RDP project, its pinned server, start -> connected.

Emulated target: freerdp-shadow-cli3 serves the project's bubble on
loopback with the certificate the card's directory pins, through the
repository's test harness (tests/integration). Real bench: ``--bubble URL``
of one of the card's projects, the credential typed by the operator.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hwtests.bench import Bench
from hwtests.plugin import RecordProperty, milliseconds, operator

CONNECT_TIMEOUT_S = 60.0


def _rdp_project(bench: Bench) -> Any:
    from sdbox.smartcard.directory import Protocol

    with bench.session() as card:
        directory = card.read_signed_directory().directory
    for project in directory.projects:
        if project.protocol == Protocol.RDP and (
            bench.bubble is None or bench.bubble.endswith(project.endpoint)
        ):
            return project
    pytest.skip("the card's directory has no RDP project" + (
        f" at {bench.bubble}" if bench.bubble else ""))  # fmt: skip


@contextlib.contextmanager
def _emulated_bubble(bench: Bench, project: Any, workdir: Path) -> Iterator[tuple[str, str, str, str]]:
    """(url, user, one-time credential, client display) of a local bubble for ``project``."""
    try:
        from tests.integration.agent_env import RDP_USER, rdp_bubble
        from tests.integration.session_servers import free_port, tool_missing, xvfb
    except ImportError:
        pytest.skip("the emulated bubble needs the repository's test harness (tests/integration): "
                    "run from a checkout, or give --bubble URL")  # fmt: skip
    missing = tool_missing("Xvfb", "freerdp-shadow-cli3", "xfreerdp3", "winpr-hash3")
    if missing:
        pytest.skip(f"{missing} is not installed (make setup installs the session tier)")
    from sdbox.trust.pki import Pki

    assert bench.emulated is not None
    pki = Pki.open(bench.emulated.pki_path)
    port = free_port()
    with xvfb() as server_display, xvfb() as client_display, \
            rdp_bubble(workdir, pki, project.id, server_display, port) as bubble:  # fmt: skip
        yield f"rdp://{project.host}:{port}", RDP_USER, bubble.provision(), client_display


@pytest.mark.scenario("session to a test bubble (RDP)")
def test_session_to_the_projects_bubble_connects(
    pytestconfig: pytest.Config, bench: Bench, tmp_path: Path,
    record_property: RecordProperty,
) -> None:  # fmt: skip
    from sdbox.session import (
        DEFAULT_SESSION_USER,
        Credential,
        Display,
        Endpoint,
        EndReason,
        SessionSpec,
        open_session,
    )

    bench.require(lambda c: c.multi_project, "one-project card: its endpoint comes from the "
                  "site's signed catalogue, not the card (the agent's flow on it: "
                  "tests/integration/test_agent_variants.py, docs/card-variants.md)")  # fmt: skip
    if bench.emulated is None and bench.bubble is None:
        pytest.skip("real bench: give --bubble rdp://HOST:PORT of a test bubble")
    project = _rdp_project(bench)
    with contextlib.ExitStack() as stack:
        if bench.emulated is not None:
            url, user, secret, display = stack.enter_context(_emulated_bubble(bench, project, tmp_path))
        else:
            assert bench.bubble is not None
            if not bench.interactive:
                pytest.skip("the bubble's credential is typed by the operator: run with --operator -s")
            with operator(pytestconfig):
                user = input(f"user on {bench.bubble}: ")
                secret = getpass.getpass("one-time credential (not echoed): ")
            url, display = bench.bubble, os.environ.get("DISPLAY", "")
            if not display:
                pytest.skip("no X display for the client (DISPLAY)")
        spec = SessionSpec(
            endpoint=Endpoint.parse(url),
            user=user,
            credential=Credential(secret),
            display=Display(x11=display),
            server_fingerprint="sha256:" + hashlib.sha256(project.server_certificate).hexdigest(),
            connect_timeout=CONNECT_TIMEOUT_S,
        )
        run_as = DEFAULT_SESSION_USER if os.geteuid() == 0 else None

        async def scenario() -> tuple[float, float, Any]:
            session = open_session(spec, run_as=run_as)
            started = time.perf_counter()
            await session.start()
            try:
                await session.wait_connected()
            except BaseException:
                await session.kill()
                raise
            connected = time.perf_counter() - started
            started = time.perf_counter()
            ended = await session.kill()  # what card removal does
            return connected, time.perf_counter() - started, ended

        connected_s, kill_s, ended = asyncio.run(scenario())
    assert ended.reason is EndReason.KILLED, ended
    assert ended.was_connected
    record_property("connect_ms", milliseconds(connected_s))
    record_property("kill_ms", milliseconds(kill_s))
    record_property("project", project.id)
