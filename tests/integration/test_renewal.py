"""Remote certificate renewal through the real pcscd, the emulated card and `openssl cmp`.

The card's first project (slot 82, in the middle of three) is inside the
renewal window; OpenSSL's CMP mock server is the CA.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509

from sdbox.centre.cards import BrokerCentre
from sdbox.renewal.flow import Outcome
from sdbox.renewal.ports import Centre
from sdbox.smartcard.biosso import BioSsoSession
from sdbox.smartcard.directory import Directory, SignedDirectory
from sdbox.smartcard.emulator.profiles import CardProfile
from sdbox.smartcard.emulator.stack import PcscDaemon, reader_name, reserve_reader, wait_for_card
from sdbox.smartcard.errors import CardError
from sdbox.trust.pki import Pki
from tests.cli import sdbox_argv
from tests.integration.cmp_ca import CmpMock, renewed_certificate
from tests.integration.conftest import InsertedCard
from tests.integration.renewal_env import (
    PIN_LINE,
    PROJECT,
    Bench,
    CentreBench,
    centre_broker,
    make_bench,
)
from tests.integration.test_opensc_interop import pkcs11_tool

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def bench(
    pcscd: PcscDaemon, pki: Pki, demo_profile: CardProfile, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Bench]:
    """One card, one pcscd reader and a mock CA for the whole module."""
    with reserve_reader() as index:
        reader = reader_name(index)
        assert wait_for_card(reader, present=False), "the reader still holds another card"
        b = make_bench(tmp_path_factory.mktemp("renewal"), pki, demo_profile, index, reader)
        b.card.insert()
        assert wait_for_card(reader, present=True)
        yield b
        for mock in b.mocks.values():
            mock.stop()
        b.mock.stop()
        b.card.remove()


@pytest.fixture
def fresh(bench: Bench) -> Bench:
    """The card as issued, inserted."""
    if not bench.card.inserted:
        _reinsert(bench)
    bench.reset()
    return bench


def _reinsert(bench: Bench) -> None:
    assert wait_for_card(bench.reader, present=False)
    bench.card.insert()
    assert wait_for_card(bench.reader, present=True)


def _cli_json(
    bench: Bench, *args: str, config: Path | None = None
) -> tuple[int, dict[str, dict[str, str]]]:
    proc = bench.cli("--json", *args, config=config)
    out, err = proc.communicate(PIN_LINE, timeout=60)
    try:
        doc = json.loads(out)
    except ValueError:
        pytest.fail(f"sdbox renew printed no JSON (exit {proc.returncode}): {err.decode()[-2000:]}")
    return proc.returncode, {r["project"]: r for r in doc["results"]}


# -- the full renewal -------------------------------------------------------------------


def test_full_renewal_through_the_cli(fresh: Bench) -> None:
    old_slot, old_cert = fresh.check_card_works()
    expected_key = fresh.next_key()
    started = time.monotonic()
    code, results = _cli_json(fresh)
    elapsed = time.monotonic() - started
    assert code == 0, results
    assert results[PROJECT]["outcome"] == "renewed"
    assert results["health-cohort"]["outcome"] == "not_due"
    assert results["genomics-lab"]["outcome"] == "not_due"
    slot, cert = fresh.check_card_works()
    assert (old_slot, slot) == (0x82, 0x85)  # first free slot after the three in use
    assert cert.public_key() == expected_key
    assert cert.not_valid_after_utc > old_cert.not_valid_after_utc
    assert not fresh.pending()
    print(
        f"\nrenewal (sdbox renew, process start to exit): {elapsed:.2f} s, {fresh.card.apdus} APDUs"
    )
    # OpenSC (Key History) sees every project key, the new one included
    listing = pkcs11_tool("--list-objects", "--type", "cert", card=_as_inserted(fresh))
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.count("Certificate Object") == 5  # holder + 82 (superseded) + 83-85
    ids = {
        line.split()[-1] for line in listing.stdout.splitlines() if line.strip().startswith("ID:")
    }
    assert {"05", "06", "07", "08"} <= ids  # retired keys 1-4 = slots 82-85
    # nothing left to do
    code, results = _cli_json(fresh)
    assert code == 0
    assert results[PROJECT]["outcome"] == "not_due"


def _as_inserted(bench: Bench) -> InsertedCard:
    return InsertedCard(bench.reader, bench.state, bench.card, bench.pki)


def test_a_second_renewal_reuses_the_superseded_slot_and_shrinks_key_history(fresh: Bench) -> None:
    assert fresh.renew(fresh.mock.url)[0].outcome == Outcome.RENEWED
    mock = fresh.mock_for_next_key()
    results = {r.project: r for r in fresh.renew(mock.url, force=[PROJECT])}
    assert results[PROJECT].outcome == Outcome.RENEWED
    slot, _cert = fresh.check_card_works()
    assert slot == 0x82
    assert 0x5FC110 not in fresh.state.objects  # slot 85's certificate is gone
    assert fresh.state.objects[0x5FC10C][:3] == bytes.fromhex("C10103")


def test_the_hwtests_renewal_scenario_on_a_named_reader(
    fresh: Bench, demo_profile: CardProfile, tmp_path: Path
) -> None:
    """`sdbox hwtest --target pcsc:READER --renewal-config`: the real-bench path of the suite."""
    import asyncio
    import sys

    from sdbox.biometric.sensor import EmulatedSensor

    finger = tmp_path / "holder.template"  # what the bench operator passes as --template
    finger.write_bytes(asyncio.run(EmulatedSensor(demo_profile.fingers[0].identity_seed).capture()))
    expected_key = fresh.next_key()
    done = subprocess.run(
        [sys.executable, "-m", "sdbox", "hwtest", "--target", f"pcsc:{fresh.reader}",
         "--card-serial", fresh.state.guid.hex(), "--allow-write", "--template", str(finger),
         "--renewal-config", str(fresh.config), "--", "-k", "renewal"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:]
    row = next(line for line in done.stdout.splitlines() if line.startswith("renewal on a spare"))
    assert " passed " in row, row
    assert "slots=82->85" in row
    slot, cert = fresh.check_card_works()
    assert slot == 0x85
    assert cert.public_key() == expected_key
    assert not fresh.pending()


# -- refused answers ---------------------------------------------------------------------


def _config_with(bench: Bench, url: str, name: str) -> Path:
    text = bench.config.read_text()
    old_url = next(line for line in text.splitlines() if line.startswith("cmp_url"))
    path = bench.work / f"agent-{name}.toml"
    path.write_text(text.replace(old_url, f'cmp_url = "{url}"'))
    return path


def _refused(bench: Bench, name: str, canned: x509.Certificate, *extra: str) -> dict[str, str]:
    mock = CmpMock(bench.work, *bench._ra_files()).start(canned, *extra)
    try:
        config = _config_with(bench, mock.url, name)
        proc = subprocess.Popen(
            [*sdbox_argv(), "-v", "renew", "--config", str(config),
             "--reader", bench.reader, "--pin", "--json"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        out, err = proc.communicate(b"123456\n", timeout=60)
    finally:
        mock.stop()
    assert proc.returncode == 1, err.decode()
    result: dict[str, str] = {r["project"]: r for r in json.loads(out)["results"]}[PROJECT]
    assert result["outcome"] in err.decode()  # the log says it too
    # the old credential is kept and works; nothing half-done is left
    slot, cert = bench.check_card_works()
    assert slot == 0x82
    assert cert == bench.old_certificate()
    assert not bench.pending()
    return result


def test_ca_rejection_keeps_the_old_credential(fresh: Bench) -> None:
    canned = renewed_certificate(fresh.pki, fresh.old_certificate(), fresh.next_key())
    result = _refused(
        fresh, "reject", canned, "-pkistatus", "2", "-failure", "1", "-statusstring", "not allowed"
    )
    assert result["outcome"] == "rejected"
    assert "not allowed" in result["detail"]


def test_a_ca_that_keeps_us_waiting_is_reported(fresh: Bench) -> None:
    canned = renewed_certificate(fresh.pki, fresh.old_certificate(), fresh.next_key())
    result = _refused(fresh, "wait", canned, "-poll_count", "10", "-check_after", "1")
    assert result["outcome"] == "waiting"


def test_polling_then_success(fresh: Bench) -> None:
    canned = renewed_certificate(fresh.pki, fresh.old_certificate(), fresh.next_key())
    mock = CmpMock(fresh.work, *fresh._ra_files()).start(
        canned, "-poll_count", "2", "-check_after", "0"
    )
    try:
        assert fresh.renew(mock.url)[0].outcome == Outcome.RENEWED
    finally:
        mock.stop()
    assert fresh.check_card_works()[0] == 0x85


def test_a_certificate_for_another_key_is_refused(fresh: Bench) -> None:
    canned = renewed_certificate(fresh.pki, fresh.old_certificate(), fresh.next_key(offset=5))
    assert _refused(fresh, "wrongkey", canned)["outcome"] == "wrong_key"


def test_a_certificate_for_another_project_is_refused(fresh: Bench) -> None:
    canned = renewed_certificate(
        fresh.pki, fresh.old_certificate(), fresh.next_key(), project="health-cohort"
    )
    assert _refused(fresh, "wrongproject", canned)["outcome"] == "wrong_project"


def test_a_certificate_not_yet_valid_is_a_clock_problem(fresh: Bench) -> None:
    canned = renewed_certificate(
        fresh.pki, fresh.old_certificate(), fresh.next_key(),
        not_before=datetime.now(UTC) + timedelta(days=2),
    )  # fmt: skip
    assert _refused(fresh, "clock", canned)["outcome"] == "clock_problem"


def test_a_clock_below_the_time_floor_renews_nothing(fresh: Bench) -> None:
    past = datetime.now(UTC) - timedelta(days=3650)
    results = fresh.renew(fresh.mock.url, trust=fresh.trust(now=lambda: past))
    assert {r.outcome for r in results} == {Outcome.CLOCK_PROBLEM}
    assert fresh.check_card_works()[0] == 0x82
    assert fresh.state.keygen_counter == 0  # no key was even generated


# -- the interruption matrix --------------------------------------------------------------


def _full_run_apdus(bench: Bench) -> int:
    bench.reset()
    started = time.monotonic()
    assert bench.renew(bench.mock.url)[0].outcome == Outcome.RENEWED
    print(f"\nrenewal in process: {time.monotonic() - started:.3f} s, {bench.card.apdus} APDUs")
    return bench.card.apdus


def _after_interruption(
    bench: Bench, label: str, *, centre: Callable[[BioSsoSession], Centre] | None = None
) -> None:
    """Old or new credential works; the next run finishes or cleans up; the new one works."""
    if not bench.card.inserted:
        _reinsert(bench)
    slot, cert = bench.check_card_works(strict=False)
    assert slot in (0x82, 0x85), label
    mock = bench.mock_for_next_key()
    results = {r.project: r for r in bench.renew(mock.url, centre=centre)}
    outcome = results[PROJECT].outcome
    if slot == 0x82:
        assert outcome in (Outcome.RENEWED, Outcome.INTERRUPTED_RESUMED), (label, results[PROJECT])
    else:
        assert outcome in (Outcome.INTERRUPTED_RESUMED, Outcome.NOT_DUE), (label, results[PROJECT])
    new_slot, new_cert = bench.check_card_works()
    assert (new_slot != 0x82 and new_cert != cert) or slot != 0x82, label
    assert not bench.pending(), label


def _pull_after_every_apdu(
    bench: Bench, total: int, label: str, centre: Callable[[BioSsoSession], Centre] | None = None
) -> None:
    """For each i: the card pulled after APDU i, then the old or new credential works."""
    for i in range(1, total + 1):
        if not bench.card.inserted:
            _reinsert(bench)
        bench.reset()

        def pull(n: int, i: int = i) -> bool:
            return n == i

        bench.card.on_apdu = pull
        with pytest.raises(CardError):
            bench.renew(bench.mock.url, centre=centre)
        bench.card.on_apdu = None
        deadline = time.monotonic() + 10
        while bench.card.inserted and time.monotonic() < deadline:  # removal runs in a thread
            time.sleep(0.005)
        _reinsert(bench)
        _after_interruption(bench, f"card pulled after APDU {i}/{total}{label}", centre=centre)
    print(f"\ncard pulled{label}: {total} interruption points")


def test_card_pulled_after_every_apdu(bench: Bench) -> None:
    _pull_after_every_apdu(bench, _full_run_apdus(bench), "")


def test_ca_gone_after_every_apdu(bench: Bench) -> None:
    total = _full_run_apdus(bench)
    for i in range(1, total + 1):
        bench.reset()
        mock = CmpMock(bench.work, *bench._ra_files()).start(
            renewed_certificate(bench.pki, bench.old_certificate(), bench.next_key())
        )

        def gone(n: int, i: int = i, mock: CmpMock = mock) -> bool:
            if n == i:
                mock.stop()
            return False

        bench.card.on_apdu = gone
        try:
            results = {r.project: r for r in bench.renew(mock.url)}
        finally:
            bench.card.on_apdu = None
            mock.stop()
        assert results[PROJECT].outcome in (Outcome.CA_UNREACHABLE, Outcome.RENEWED), (
            i, results[PROJECT],
        )  # fmt: skip
        _after_interruption(bench, f"CA gone after APDU {i}/{total}")
    print(f"\nCA gone: {total} interruption points")


def test_process_killed_after_every_apdu(bench: Bench) -> None:
    if not bench.card.inserted:
        _reinsert(bench)
    bench.reset()
    code, results = _cli_json(bench)
    assert code == 0
    assert results[PROJECT]["outcome"] == "renewed"
    total = bench.card.apdus
    for i in range(1, total + 1):
        bench.reset()
        proc = bench.cli("--json")

        def kill(n: int, i: int = i, proc: subprocess.Popen[bytes] = proc) -> bool:
            if n == i:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)
            return False

        bench.card.on_apdu = kill
        proc.communicate(PIN_LINE, timeout=60)
        bench.card.on_apdu = None
        assert proc.returncode == -signal.SIGKILL, f"not killed at APDU {i}"
        _after_interruption(bench, f"process killed after APDU {i}/{total}")
    print(f"\nprocess killed: {total} interruption points")


# -- in the agent ------------------------------------------------------------------------


@pytest.mark.parametrize("centre_kind", ["broker", "development"])
def test_the_agent_renews_in_the_background_of_a_session(
    fresh: Bench, caplog: pytest.LogCaptureFixture, centre_kind: str
) -> None:
    """The agent's machine, with the real renewal port (Renewer, journal, CMP to the mock CA).

    The centre is the reference broker (9B relayed, directory signed there) as
    on a box, or the development centre. The card is the bench's applet spoken
    to in process (the machine's unit-test handle): the renewal port does not
    care which transport the session uses.
    """
    with contextlib.ExitStack() as stack:
        config_path = fresh.config
        if centre_kind == "broker":
            centre = stack.enter_context(centre_broker(fresh))
            config_path = _broker_config(fresh, centre)
        _agent_renews(fresh, caplog, config_path)
        if centre_kind == "broker":
            assert centre.cards.directories_signed == 1


def _broker_config(bench: Bench, centre: CentreBench) -> Path:
    """The bench's agent configuration with the broker as centre (no development centre)."""
    lines = [line for line in bench.config.read_text().splitlines() if not line.startswith("dev_")]
    env = centre.broker
    lines += [
        "[credentials]", f'broker_url = "{env.url}"', f'broker_anchors = "{env.anchors}"',
        "[identity]", 'kind = "development"', f'key_file = "{env.box_key}"',
        f'certificate = "{env.box_certificate}"',
    ]  # fmt: skip
    path = bench.work / "agent-broker.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _agent_renews(fresh: Bench, caplog: pytest.LogCaptureFixture, config_path: Path) -> None:
    import asyncio

    from sdbox.agent.adapters import TrustService
    from sdbox.agent.api import State
    from sdbox.agent.config import load
    from sdbox.agent.machine import Agent
    from sdbox.agent.service import make_renewal
    from tests.unit.test_agent_machine import (
        Credentials,
        InProcessCard,
        Sensor,
        Sessions,
        Trust,
        until,
    )

    config = load(config_path)
    renewal = make_renewal(config, TrustService(config))
    assert renewal is not None
    expected_key = fresh.next_key()

    def open_card(reader: str) -> InProcessCard:
        handle = InProcessCard(reader)
        handle.applet = fresh.card.applet
        return handle

    async def scenario() -> None:
        agent = Agent(
            trust=Trust(fresh.pki), sensor=Sensor(1001), credentials=Credentials(),
            sessions=Sessions(), endpoint_allowed=lambda e: e.startswith("127.0.0.1:"),
            open_card=open_card, renewal_window_days=config.policy.renewal_window_days,
            renewal=renewal,
        )  # fmt: skip
        await agent.card_inserted("in-process")
        await until(lambda: agent.snapshot.state == State.PICKER)
        before = {p.id: p.expires for p in agent.snapshot.projects}
        await agent.choose_project("health-cohort")
        await until(lambda: agent.snapshot.state == State.RUNNING)
        await until(
            lambda: {p.id: p.expires for p in agent.snapshot.projects}[PROJECT] != before[PROJECT]
        )
        assert agent.snapshot.state == State.RUNNING  # the session was never disturbed
        await agent.card_removed("in-process")

    # Out of the reader while the machine speaks to it in process: pcscd would
    # power the idle card down under the agent's feet.
    fresh.card.remove()
    try:
        with caplog.at_level("INFO", logger="sdbox.audit"):
            asyncio.run(scenario())
    finally:
        _reinsert(fresh)
    events = [(r.SDBOX_EVENT, getattr(r, "SDBOX_PROJECT", "")) for r in caplog.records
              if hasattr(r, "SDBOX_EVENT")]  # fmt: skip
    assert ("renewal_succeeded", PROJECT) in events
    assert events.index(("renewal_succeeded", PROJECT)) > events.index(
        ("session_started", "health-cohort")
    )
    slot, cert = fresh.check_card_works()
    assert slot == 0x85
    assert cert.public_key() == expected_key


# -- the reference broker as the centre (9B relay, directory signing) ---------------------


def test_full_renewal_with_the_broker_as_centre(fresh: Bench) -> None:
    expected_key = fresh.next_key()
    with centre_broker(fresh) as centre:
        results = {r.project: r for r in fresh.renew(fresh.mock.url, centre=centre.centre)}
        assert results[PROJECT].outcome == Outcome.RENEWED, results[PROJECT]
        assert centre.cards.directories_signed == 1
    slot, cert = fresh.check_card_works()
    assert slot == 0x85
    assert cert.public_key() == expected_key
    assert not fresh.pending()


def test_sdbox_renew_with_the_broker_as_centre(fresh: Bench) -> None:
    """The command a box runs: its configuration names the broker, no development centre."""
    with centre_broker(fresh) as centre:
        code, results = _cli_json(fresh, config=_broker_config(fresh, centre))
        assert code == 0, results
        assert results[PROJECT]["outcome"] == "renewed"
        assert centre.cards.directories_signed == 1
    assert fresh.check_card_works()[0] == 0x85


def _kept_old(bench: Bench) -> None:
    slot, cert = bench.check_card_works()
    assert slot == 0x82
    assert cert == bench.old_certificate()


def test_a_card_the_centre_does_not_know_is_not_touched(fresh: Bench) -> None:
    with centre_broker(fresh) as centre:
        centre.register.write_text("{}")
        result = fresh.renew(fresh.mock.url, centre=centre.centre)[0]
    assert result.outcome == Outcome.CENTRE_REFUSED
    assert "does not know this card" in result.detail
    assert fresh.state.keygen_counter == 0  # nothing was generated
    _kept_old(fresh)
    assert not fresh.pending()


def _edit_register(bench: Bench, centre: CentreBench, **entry: str) -> None:
    register = json.loads(centre.register.read_text())
    register[bench.state.guid.hex()].update(entry)
    centre.register.write_text(json.dumps(register))


def test_a_holder_certificate_from_another_card_is_refused(fresh: Bench) -> None:
    with centre_broker(fresh) as centre:
        _edit_register(fresh, centre, holder_certificate_sha256="00" * 32)
        result = fresh.renew(fresh.mock.url, centre=centre.centre)[0]
    assert result.outcome == Outcome.CENTRE_REFUSED
    assert "holder certificate was not issued for this card" in result.detail
    assert fresh.state.keygen_counter == 0
    _kept_old(fresh)


def test_the_centre_decides_what_is_due(fresh: Bench) -> None:
    # The box's window (60 days) says the project is due; the centre's (1 day) says not.
    with centre_broker(fresh, window_days=1) as centre:
        result = fresh.renew(fresh.mock.url, centre=centre.centre)[0]
    assert result.outcome == Outcome.CENTRE_REFUSED
    assert "due" in result.detail
    _kept_old(fresh)


def test_a_centre_that_cannot_be_reached_leaves_the_card_alone(fresh: Bench) -> None:
    with centre_broker(fresh) as centre:
        pass  # stopped: nothing listens at its address any more
    result = fresh.renew(fresh.mock.url, centre=centre.centre)[0]
    assert result.outcome == Outcome.CENTRE_UNREACHABLE
    assert fresh.state.keygen_counter == 0
    _kept_old(fresh)
    assert not fresh.pending()


def test_a_centre_with_the_wrong_management_key_is_refused_by_the_card(fresh: Bench) -> None:
    with centre_broker(fresh) as centre:
        _edit_register(fresh, centre, management_key="11" * 16)
        result = fresh.renew(fresh.mock.url, centre=centre.centre)[0]
    assert result.outcome == Outcome.CENTRE_REFUSED
    assert fresh.state.keygen_counter == 0
    _kept_old(fresh)


def test_a_box_asking_for_another_directory_gets_nothing_signed(fresh: Bench) -> None:
    """A compromised box cannot have the centre sign a directory of its own making."""

    class Tampering(BrokerCentre):
        def sign_directory(
            self, directory: Directory, *, project: str, slot: int, certificate: x509.Certificate
        ) -> SignedDirectory:
            other = next(p for p in directory.projects if p.id != project)
            forged = dataclasses.replace(
                directory,
                projects=tuple(
                    dataclasses.replace(p, endpoint="attacker.example:3389") if p is other else p
                    for p in directory.projects
                ),
            )
            return super().sign_directory(
                forged, project=project, slot=slot, certificate=certificate
            )

    with centre_broker(fresh) as centre:

        def tampering(session: BioSsoSession) -> Tampering:
            return Tampering(
                centre.broker.url,
                anchors=centre.anchors(),
                identity=centre.identity,
                session=session,
            )

        result = fresh.renew(fresh.mock.url, centre=tampering)[0]
        assert centre.cards.directories_signed == 0
        assert result.outcome == Outcome.CENTRE_REFUSED
        assert "changes more than" in result.detail
        _kept_old(fresh)  # the confirmed certificate waits in its slot, unreferenced
        # An honest run (next insertion) finishes the renewal from the journal.
        again = fresh.renew(fresh.mock.url, centre=centre.centre)[0]
        assert again.outcome == Outcome.INTERRUPTED_RESUMED, again
        assert centre.cards.directories_signed == 1
    assert fresh.check_card_works()[0] == 0x85
    assert not fresh.pending()


def test_card_pulled_after_every_apdu_with_the_broker_as_centre(bench: Bench) -> None:
    if not bench.card.inserted:
        _reinsert(bench)
    with centre_broker(bench) as centre:
        bench.reset()
        assert bench.renew(bench.mock.url, centre=centre.centre)[0].outcome == Outcome.RENEWED
        _pull_after_every_apdu(bench, bench.card.apdus, " (broker as centre)", centre.centre)
