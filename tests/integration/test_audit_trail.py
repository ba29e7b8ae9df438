"""The audit trail over scripted flows: every documented event once per occurrence, in order, with its fields.

Two flows cover the schema of docs/agent.md between them: the researcher's
usual day (choose, switch, pull the card) and everything that goes wrong
or needs attention (a tampered directory, a certificate due for renewal, a
wrong finger, a revoked certificate, a card swapped without pcscd seeing it
leave). The test's PKI is its own: it revokes certificates.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from sdbox.agent.api import Problem, State
from sdbox.audit import AuditEvent
from sdbox.smartcard.directory import parse_signed_directory
from sdbox.smartcard.emulator.profiles import seeded_template
from sdbox.smartcard.profile import ObjectTag, certificate_object, decode_certificate
from sdbox.trust.pki import Pki
from tests.integration.agent_env import publish_crls
from tests.integration.test_agent import Bubbles, _wait, _wait_for, bubbles, running_agent

__all__ = ["bubbles"]

# docs/agent.md, "Audit trail": the fields each event carries
FIELDS = {
    "card_inserted": {"reader", "card"},
    "card_removed": {"reader", "card"},
    "directory_verified": {"card", "projects", "sequence"},
    "project_chosen": {"project", "card"},
    "holder_verified": {"method", "card"},
    "credentials_validated": {"project", "card"},
    "credential_issued": {"project", "user"},
    "session_started": {"project", "endpoint"},
    "session_ended": {"project", "reason"},
    "switch": {"project", "previous"},
    "card_swapped": {"reader", "card"},
    "directory_refused": {"card"},
    "holder_failed": {"method", "tries_left", "card"},
    "credentials_refused": {"project"},  # and card (project certificate) or server (bubble's)
    "renewal_due": {"project", "card"},
    # the renewal run's own events: their order and fields are checked with a real
    # renewal in test_renewal.py (test_the_agent_renews_in_the_background_of_a_session)
    "renewal_started": {"card", "projects"},
    "renewal_succeeded": {"card", "project"},
    "renewal_failed": {"card", "project", "reason"},
    # the sensor plugged in and out: checked through the real libudev in test_sensor_hotplug.py
    "sensor_connected": {"sensor"},
    "sensor_disconnected": {"sensor"},
    # the daemon's own: checked on `sdbox agent run` in test_agent.py (test_daemon_*) and in
    # the journal of the booted image (bootimage/boot_test.py, `make image-test`)
    "agent_started": {"version", "provider", "identity"},
    "agent_stopped": {"reason"},
    "box_identity_checked": {"outcome", "identity"},
    # the tunnel to the centre: checked through charon in namespaces in test_agent_tunnel.py and
    # with a fake tunnel port in tests/unit/test_agent_tunnel.py (gateway: when one is known)
    "tunnel_up": {"gateway"},
    "tunnel_down": {"reason"},
    "tunnel_refused": {"gateway", "reason"},
    "session_reconnecting": {"project", "card"},
    # remote enrolment, on the box (side=box) and at the centre (side=centre): checked with the
    # reference broker in test_remote_enrolment*.py (the centre's also name the box)
    "enrolment_opened": {"side", "authorisation", "operator", "card", "box", "fingers"},
    "enrolment_authorised": {"side", "authorisation", "operator", "card", "fingers"},
    "enrolment_confirmed": {"side", "authorisation", "operator", "card", "box", "fingers"},
    "enrolment_refused": {"side", "reason", "card"},
    "enrolment_revoked": {"side", "authorisation", "operator", "card", "box", "fingers"},
    "enrolment_writing": {"side", "authorisation", "operator", "card", "box", "fingers"},
    "enrolment_written": {"side", "authorisation", "operator", "card", "fingers"},
    "enrolment_completed": {"side", "authorisation", "operator", "card", "fingers"},
    "enrolment_failed": {"side", "authorisation", "operator", "card", "fingers"},
}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A PKI for this module only (revocations must not reach other tests' CRLs)."""
    return Pki.init(tmp_path_factory.mktemp("audit-pki"))


def test_the_schema_is_the_documented_one() -> None:
    documented = (Path(__file__).resolve().parents[2] / "docs" / "agent.md").read_text()
    table = documented[documented.index("## Audit trail") :]
    assert {e.value for e in AuditEvent} == set(FIELDS)
    for event in AuditEvent:
        assert f"`{event.value}`" in table, f"{event.value} is not documented in docs/agent.md"


@contextlib.contextmanager
def audit_trail() -> Iterator[list[tuple[str, dict[str, str]]]]:
    """The audit events written meanwhile: (name, fields without the SDBOX_ prefix)."""
    events: list[tuple[str, dict[str, str]]] = []

    class Audit(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            fields = {
                k.removeprefix("SDBOX_").lower(): str(v)
                for k, v in record.__dict__.items()
                if k.startswith("SDBOX_")
            }
            events.append((fields.pop("event"), fields))

    logger = logging.getLogger("sdbox.audit")
    handler = Audit()
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield events
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def check_fields(events: list[tuple[str, dict[str, str]]]) -> None:
    for name, fields in events:
        assert FIELDS[name] <= set(fields), f"{name} lacks {FIELDS[name] - set(fields)}"


def test_scripted_flow_writes_the_documented_events(
    pki: Pki, bubbles: Bubbles, free_reader: int, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with running_agent(pki, bubbles, free_reader, tmp_path) as run:
            await _wait(run.agent, State.PICKER)
            await run.iface.call_choose_project("census-2021")  # type: ignore[attr-defined]
            await _wait(run.agent, State.RUNNING)
            await run.iface.call_switch("health-cohort")  # type: ignore[attr-defined]
            await _wait(run.agent, State.CONNECTING)
            await _wait(run.agent, State.RUNNING)
            await asyncio.to_thread(run.card.remove)
            await _wait(run.agent, State.IDLE)

    with audit_trail() as events:
        asyncio.run(scenario())

    names = [name for name, _fields in events]
    assert names == [
        "card_inserted", "directory_verified",
        "project_chosen", "holder_verified", "credentials_validated", "credential_issued", "session_started",
        "switch", "session_ended", "credentials_validated", "credential_issued", "session_started",
        "session_ended", "card_removed",
    ]  # fmt: skip
    check_fields(events)
    ended = [fields["reason"] for name, fields in events if name == "session_ended"]
    assert ended == ["closed", "killed"]
    guid = dict(events)["card_inserted"]["card"]
    assert all(fields.get("card", guid) == guid for _name, fields in events)
    assert dict(events)["holder_verified"]["method"] == "finger"


class Fingers:
    """A sensor presenting the given fingers in turn (the last one again and again)."""

    def __init__(self, *seeds: int) -> None:
        self.seeds = list(seeds)

    async def capture(self) -> bytes:
        seed = self.seeds.pop(0) if len(self.seeds) > 1 else self.seeds[0]
        return seeded_template(seed)


def test_refusals_failures_and_due_renewals_are_audited(
    pki: Pki, bubbles: Bubbles, free_reader: int, tmp_path: Path
) -> None:
    async def scenario() -> None:
        # census-2021 expires in 5 days: due for renewal; a wrong finger comes first
        async with running_agent(
            pki, bubbles, free_reader, tmp_path, valid_days=5, sensor_port=Fingers(4242, 1001)
        ) as run:
            await _wait(run.agent, State.PICKER)
            directory = parse_signed_directory(run.card.state.objects[ObjectTag.DIRECTORY])
            census = directory.directory.project("census-2021")
            certificate = x509.load_der_x509_certificate(
                decode_certificate(run.card.state.objects[certificate_object(census.slot)])
            )
            pki.revoke(certificate, x509.ReasonFlags.key_compromise)
            publish_crls(pki, run.config.trust.crl_dir)
            await run.iface.call_choose_project("census-2021")  # type: ignore[attr-defined]
            # (wrong_finger comes first, then the right finger, then the refusal)
            await _wait_for(lambda: run.agent.snapshot.problem == Problem.CERTIFICATE_REVOKED)
            # pcscd coalesced a removal and an insertion: the agent sees a new card event
            # while it still holds the old one
            await run.agent.card_inserted(run.card.reader)
            await _wait(run.agent, State.PICKER)
            await asyncio.to_thread(run.card.remove)
            await _wait(run.agent, State.IDLE)

    with audit_trail() as events:
        asyncio.run(scenario())
    names = [name for name, _fields in events]
    assert names == [
        "card_inserted", "directory_verified", "renewal_due",
        "project_chosen", "holder_failed", "holder_verified", "credentials_refused",
        "card_swapped", "card_inserted", "directory_verified", "renewal_due",
        "card_removed",
    ]  # fmt: skip
    check_fields(events)
    first = dict(events)
    assert first["renewal_due"]["project"] == "census-2021"
    assert first["holder_failed"]["method"] == "finger"
    assert first["holder_failed"]["tries_left"] == "4"
    assert first["credentials_refused"]["project"] == "census-2021"
    assert first["credentials_refused"]["card"] == first["card_inserted"]["card"]
    assert first["card_swapped"]["reader"] == first["card_inserted"]["reader"]


def test_a_tampered_directory_is_audited_as_refused(
    pki: Pki, bubbles: Bubbles, free_reader: int, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with running_agent(pki, bubbles, free_reader, tmp_path, tamper=True) as run:
            await _wait(run.agent, State.BLOCKED)
            await asyncio.to_thread(run.card.remove)
            await _wait(run.agent, State.IDLE)

    with audit_trail() as events:
        asyncio.run(scenario())
    assert [name for name, _fields in events] == [
        "card_inserted", "directory_refused", "card_removed"
    ]
    check_fields(events)
