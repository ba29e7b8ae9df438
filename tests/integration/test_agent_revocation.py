"""Revoked project and server certificates through the agent.

These tests revoke certificates, so they run under a PKI of their own
(a module-scoped ``pki`` overriding the session's): the revocations must not
leak into other tests' CRLs.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from sdbox.agent.api import State
from sdbox.smartcard.profile import ObjectTag, certificate_object, decode_certificate
from sdbox.trust.pki import Pki
from tests.integration.agent_env import publish_crls
from tests.integration.test_agent import Bubbles, _wait, _wait_for, bubbles, running_agent

__all__ = ["bubbles"]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A PKI for this module only."""
    return Pki.init(tmp_path_factory.mktemp("revocation-pki"))


@pytest.mark.parametrize("which", ["project", "server"])
def test_revoked_certificates_are_refused(
    pki: Pki, bubbles: Bubbles, free_reader: int, tmp_path: Path, which: str
) -> None:
    async def scenario() -> None:
        async with running_agent(pki, bubbles, free_reader, tmp_path) as run:
            await _wait(run.agent, State.PICKER)
            from cryptography import x509

            from sdbox.smartcard.directory import parse_signed_directory

            directory = parse_signed_directory(
                run.card.state.objects[ObjectTag.DIRECTORY]
            ).directory
            census = directory.project("census-2021")
            if which == "project":
                victim = x509.load_der_x509_certificate(
                    decode_certificate(run.card.state.objects[certificate_object(census.slot)])
                )
            else:
                victim = x509.load_der_x509_certificate(census.server_certificate)
            pki.revoke(victim, x509.ReasonFlags.key_compromise)
            publish_crls(pki, run.config.trust.crl_dir)
            await run.iface.call_choose_project("census-2021")  # type: ignore[attr-defined]
            await _wait_for(lambda: run.agent.snapshot.problem is not None)
            assert run.agent.snapshot.state == State.PICKER
            assert State.VALIDATING in [e.state for e in run.events]
            problem = await run.iface.get_problem()  # type: ignore[attr-defined]
            assert problem == ("certificate_revoked" if which == "project" else "server_untrusted")
            assert "revoked" in (await run.iface.get_message()).lower()  # type: ignore[attr-defined]
            assert run.agent._session is None

    asyncio.run(scenario())
