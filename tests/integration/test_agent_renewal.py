"""Renewal inside the running agent: real pcscd and card, D-Bus, the broker as centre, `openssl cmp`.

The researcher inserts a card whose project certificate expires in 20 days,
chooses a project and works; in the background the agent renews the due
certificate (9B relayed to the broker, `kur` to OpenSSL's CMP mock, the
directory signed by the broker) without disturbing the session, and tells
D-Bus listeners: the RenewalFinished signal and the Projects property with
the new expiry.
"""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from dbus_fast.aio import MessageBus

from sdbox.agent.api import BUS_NAME, INTERFACE, OBJECT_PATH, State
from sdbox.broker.cards import register_entry
from sdbox.smartcard.directory import parse_signed_directory
from sdbox.smartcard.emulator.state import deterministic_key
from sdbox.smartcard.profile import ObjectTag, Slot, certificate_object, decode_certificate
from sdbox.trust.pki import Pki
from tests.integration.agent_env import reference_broker, until
from tests.integration.cmp_ca import make_cmp_ca, renewed_certificate
from tests.integration.session_servers import free_port, tool_missing
from tests.integration.test_agent import Bubbles, _wait, bubbles, running_agent

__all__ = ["bubbles"]

pytestmark = pytest.mark.skipif(
    bool(tool_missing("freerdp-shadow-cli3", "winpr-hash3", "Xvfb", "openssl")),
    reason="the session stack is not installed (make setup)",
)

SEED = b"agent-renewal-test"
PROJECT = "census-2021"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A PKI of this module's own (the CA issues into it)."""
    return Pki.init(tmp_path_factory.mktemp("agent-renewal-pki"))


def _certificate(objects: dict[int, bytes], slot: int) -> x509.Certificate:
    return x509.load_der_x509_certificate(decode_certificate(objects[certificate_object(slot)]))


def test_the_running_agent_renews_a_due_certificate_through_the_broker(
    pki: Pki,
    bubbles: Bubbles,
    free_reader: int,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cmp_ca = make_cmp_ca(tmp_path, pki)
    cmp_port = free_port()
    extra = f"""
[renewal]
cmp_url = "http://127.0.0.1:{cmp_port}/pkix/"
cmp_server_cert = "{cmp_ca.ra_cert_path}"
journal = "{tmp_path / "renewal" / "journal.json"}"
timeout_s = 5
max_wait_s = 2
"""
    register = tmp_path / "cards.json"
    register.write_text("{}")

    async def scenario() -> None:
        with reference_broker(
            tmp_path / "broker", pki, dict(bubbles.servers), bubbles.ports, card_register=register
        ) as broker:
            async with running_agent(
                pki, bubbles, free_reader, tmp_path, broker=broker, valid_days=20,
                extra_config=extra, keygen_seed=SEED,
            ) as run:  # fmt: skip
                state = run.card.state
                # the centre knows this card (written when it was issued)
                holder = _certificate(state.objects, Slot.AUTHENTICATION)
                register.write_text(
                    json.dumps({state.guid.hex(): register_entry(state.management_key, holder)})
                )
                directory = parse_signed_directory(state.objects[ObjectTag.DIRECTORY]).directory
                old_slot = directory.project(PROJECT).slot
                new_key = deterministic_key(SEED, state.keygen_counter, ec.SECP256R1())
                canned = renewed_certificate(
                    pki, _certificate(state.objects, old_slot), new_key.public_key()
                )
                finished: list[tuple[str, str, str]] = []
                changed: list[dict[str, Any]] = []
                listener = await MessageBus(bus_address=run.bus_address).connect()
                introspection = await listener.introspect(BUS_NAME, OBJECT_PATH)
                obj = listener.get_proxy_object(BUS_NAME, OBJECT_PATH, introspection)
                obj.get_interface(INTERFACE).on_renewal_finished(  # type: ignore[attr-defined]
                    lambda *args: finished.append(args)
                )
                obj.get_interface("org.freedesktop.DBus.Properties").on_properties_changed(  # type: ignore[attr-defined]
                    lambda _iface, props, _inv: changed.append(props)
                )
                with cmp_ca.mock(tmp_path).start(canned, port=cmp_port):
                    await _wait(run.agent, State.PICKER)
                    before = {p[0]: p for p in await run.iface.get_projects()}  # type: ignore[attr-defined]
                    assert before[PROJECT][5].startswith("certificate expires in")
                    await run.iface.call_choose_project(PROJECT)  # type: ignore[attr-defined]
                    await _wait(run.agent, State.RUNNING)
                    session_pid = run.agent._session.pid  # type: ignore[union-attr]
                    await until(lambda: bool(finished), timeout=60)
                    await until(lambda: any("Projects" in c for c in changed), timeout=10)
                assert finished == [(PROJECT, "renewed", "")], finished
                # the researcher's session was never disturbed
                assert run.agent.snapshot.state == State.RUNNING
                assert run.agent._session.pid == session_pid  # type: ignore[union-attr]
                after = {p[0]: p for p in await run.iface.get_projects()}  # type: ignore[attr-defined]
                assert after[PROJECT][4] > before[PROJECT][4]  # a later expiry
                assert after[PROJECT][5] == "ready"
                # the card: the new key, named by a directory the centre signed
                new_directory = parse_signed_directory(state.objects[ObjectTag.DIRECTORY]).directory
                new_slot = new_directory.project(PROJECT).slot
                assert new_slot != old_slot
                assert _certificate(state.objects, new_slot).public_key() == new_key.public_key()
                assert broker.server.broker.cards.directories_signed == 1
                expires = datetime.fromisoformat(after[PROJECT][4])
                assert expires > datetime.now(UTC)
                listener.disconnect()

    with caplog.at_level(logging.INFO, logger="sdbox.audit"):
        asyncio.run(scenario())
    events = [r.SDBOX_EVENT for r in caplog.records if hasattr(r, "SDBOX_EVENT")]
    assert events.index("renewal_succeeded") > events.index("session_started")
