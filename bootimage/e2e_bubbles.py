"""make image-e2e's bubbles: the e2e card's projects on the test centre's network.

The booted box reaches its bubbles as a box in the field does: through its
tunnel, on the centre network of bootimage/tunnel_centre.py (10.20.0.0/16,
the broker's own address), at the demo profile's ports. They run inside the
centre's namespace, started from a thread that enters it
(tests/integration/centre_env.thread_in_netns), as the demo's do:

- the two RDP projects: freerdp-shadow-cli3 sharing one Xvfb that shows the
  four-colour test pattern (tests/integration/session_servers.paint_pattern),
  each with the server certificate the card's directory names;
- the SPICE project: QEMU's TLS-only SPICE server, its ticket set over QMP.

The broker in the namespace provisions each session's one-time credential on
them (:func:`broker_lines`: its ``[bubbles.*]`` sections).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sdbox.smartcard.emulator.profiles import CardProfile, load_profile
from sdbox.trust.pki import Pki
from tests.integration.agent_env import RDP_USER, rdp_bubble, spice_bubble
from tests.integration.centre_env import thread_in_netns
from tests.integration.session_servers import paint_pattern, xvfb


def profile(host: str, name: str) -> CardProfile:
    """Card profile ``name``, its projects' bubbles on ``host`` (the centre network), same ports."""
    base = load_profile(name)
    projects = tuple(
        dataclasses.replace(p, endpoint=f"{host}:{p.endpoint.rsplit(':', 1)[1]}")
        for p in base.projects
    )
    return dataclasses.replace(base, projects=projects)


def _port(endpoint: str) -> int:
    return int(endpoint.rsplit(":", 1)[1])


def broker_lines(card: CardProfile, work: Path) -> str:
    """The broker configuration's ``[bubbles.*]`` for ``card``'s projects (run by :func:`run`)."""
    lines: list[str] = []
    for p in card.projects:
        lines += [f'[bubbles."{p.id}"]', f'endpoint = "{p.endpoint}"']
        if p.protocol.name == "RDP":  # rdp_bubble's SAM file, written per session by the broker
            lines += ['kind = "rdp"', f'user = "{RDP_USER}"', f'sam_file = "{work / p.id / "SAM"}"']
        else:
            lines += ['kind = "spice"', f'qmp_socket = "{work / p.id / "qmp.sock"}"']
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def run(netns: str, card: CardProfile, pki: Pki, work: Path) -> Iterator[dict[str, Any]]:
    """The bubbles of ``card`` in ``netns`` (stopped, by pid, on exit); yields them by project."""
    work.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        bubbles: dict[str, Any] = {}
        with thread_in_netns(netns):
            display = stack.enter_context(xvfb())
            paint_pattern(display, work)
            for p in card.projects:
                host = p.endpoint.rsplit(":", 1)[0]
                bubble: contextlib.AbstractContextManager[Any]
                if p.protocol.name == "RDP":
                    bubble = rdp_bubble(work / p.id, pki, p.id, display, _port(p.endpoint), host)
                else:
                    bubble = spice_bubble(work / p.id, pki, p.id, _port(p.endpoint), host)
                bubbles[p.id] = stack.enter_context(bubble)
        yield bubbles
