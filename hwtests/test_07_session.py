"""A session to a test bubble: the card's RDP project, its pinned server, start -> connected.

Emulated target: freerdp-shadow-cli3 serves the project's bubble on
loopback with the certificate the card's directory pins, through the
repository's test harness (tests/integration). Real bench: ``--bubble URL``
of one of the card's projects, the credential typed by the operator.

A one-project card has no directory: its 9A certificate names its project,
and the site's signed project catalogue says where that project's bubble is
and which certificate it presents (docs/card-variants.md), as on a box. The
emulated bench signs one with its PKI's directory signer, as the centre
does; a real bench gives ``--project-catalogue FILE``. The catalogue's
signer is checked against ``--anchors`` (the emulated bench's own roots).
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


def _rdp_project(bench: Bench, record_property: RecordProperty) -> Any:
    from sdbox.smartcard.directory import Protocol

    caps = bench.capabilities()
    projects: tuple[Any, ...]
    if caps is not None and not caps.multi_project:
        projects = (_catalogue_project(bench, record_property),)
    else:
        with bench.session() as card:
            projects = card.read_signed_directory().directory.projects
    for project in projects:
        if project.protocol == Protocol.RDP and (
            bench.bubble is None or bench.bubble.endswith(project.endpoint)
        ):
            return project
    pytest.skip("the card has no RDP project" + (
        f" at {bench.bubble}" if bench.bubble else ""))  # fmt: skip


def _catalogue_project(bench: Bench, record_property: RecordProperty) -> Any:
    """A one-project card's project: named by its 9A certificate, placed by the site's catalogue."""
    from sdbox.smartcard.catalogue import verify_catalogue
    from sdbox.smartcard.variants import one_project_certificate

    with bench.session() as card:
        facts = one_project_certificate(card)
    if facts is None or facts.project_id is None:
        pytest.skip("the card's 9A certificate names no project")
    if bench.project_catalogue is not None:
        data = bench.project_catalogue.read_bytes()
    elif bench.emulated is not None and bench.emulated.catalogue is not None:
        data = bench.emulated.catalogue
    else:
        pytest.skip("one-project card: give --project-catalogue FILE, the site's signed "
                    "catalogue that says where its project's bubble is")  # fmt: skip
    validate = bench.validate_signer()
    # what a box refuses (an altered file, an untrusted signer, the project not listed)
    # fails the scenario with the same words
    catalogue = verify_catalogue(data, validate or (lambda _signer, _chain: None))
    record_property("catalogue", "verified" if validate else "signer not checked (no --anchors)")
    return catalogue.entry(facts.project_id).card_project(facts)


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

    if bench.emulated is None and bench.bubble is None:
        pytest.skip("real bench: give --bubble rdp://HOST:PORT of a test bubble")
    project = _rdp_project(bench, record_property)
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
