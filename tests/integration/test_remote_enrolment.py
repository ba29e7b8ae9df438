"""Remote biometric enrolment through the real pcscd, the emulated card and the reference broker.

docs/remote-enrolment.md: an operator's authorisation for one card at one box, the code read
back, the holder's PIN, captures through the quality gate, the references written with the
card's 9B answered by the centre, and a verification on the card.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from sdbox.agent.bioenrol import EnrolmentNotAuthorised, NoFingerprint
from sdbox.biometric.enrolment import EnrolmentRefused
from sdbox.biometric.errors import PlaceFingerAgain
from sdbox.biometric.sensor import EmulatedSensor
from sdbox.broker.bioenrol import EnrolmentAuthorisationError, write_operator
from sdbox.centre.bioauth import SignedAuthorisation
from sdbox.centre.bioenrol import BioEnrolmentCentre
from sdbox.centre.client import CentreConnection
from sdbox.centre.errors import CentreUnreachable
from sdbox.errors import SdboxError
from sdbox.smartcard.errors import (
    FingerBlocked,
    SecurityStatusNotSatisfied,
    WrongFinger,
    WrongPin,
)
from sdbox.smartcard.profile import KeyRef
from tests.cli import sdbox_argv
from tests.integration.agent_env import publish_crls, write_config
from tests.integration.bioenrol_env import (
    BOX_ID,
    NEW,
    OPERATOR_NAME,
    PIN,
    EnrolBench,
    _sensor,
    bench,
    module_bench,
    swap_card,
)

__all__ = ["bench", "module_bench"]  # the bench's fixtures


def test_a_finger_is_enrolled_remotely_and_verified_on_the_card(bench: EnrolBench) -> None:
    assert bench.which("primary") == "old"
    opened = bench.open(("primary",))
    flow = bench.run(("primary",))
    assert flow.written == ("primary",)
    assert bench.which("primary") == "new"
    assert bench.which("secondary") == "old"  # not authorised: untouched
    record = bench.register[opened["id"]]
    assert record["state"] == "done"
    assert record["operator"] == OPERATOR_NAME

# -- the operator's commands -----------------------------------------------------------------


def _cli(bench: EnrolBench, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    config = bench.work / "broker" / "broker.toml"
    return subprocess.run(
        [*sdbox_argv(), "broker", "enrol", args[0], "--config", str(config), *args[1:]],
        capture_output=True, text=True, timeout=60, check=False, input=stdin,
    )  # fmt: skip


def test_the_operator_opens_reads_the_code_back_and_the_box_enrols(bench: EnrolBench) -> None:
    opened = _cli(bench, "open", "--card", bench.state.guid.hex(), "--box", BOX_ID,
                  "--finger", "primary", "--finger", "secondary", "--minutes", "10",
                  "--operator", "alice", "--json")  # fmt: skip
    assert opened.returncode == 0, opened.stderr
    auth_id = json.loads(opened.stdout)["id"]
    with bench.session() as session:
        flow = bench.enrolment(session)
        pending = flow.authorise()
        assert pending.operator == OPERATOR_NAME
        assert pending.authorisation.fingers == ("primary", "secondary")
        shown = json.loads(_cli(bench, "show", auth_id, "--json").stdout)
        assert shown["state"] == "bound"
        assert shown["code"] == pending.code
        wrong = _cli(bench, "confirm", auth_id, stdin=_other(pending.code) + "\n")
        assert wrong.returncode != 0
        assert "does not match" in wrong.stderr
        confirmed = _cli(bench, "confirm", auth_id, stdin=pending.code + "\n")
        assert confirmed.returncode == 0, confirmed.stderr
        flow.wait_for_operator(pending, poll_s=0.05)
        flow.verify_holder(PIN)
        fingers = ("primary", "secondary")
        references = asyncio.run(flow.capture(pending, _sensor(fingers)))
        session_id = flow.write(pending, references)
        asyncio.run(flow.confirm(pending, _sensor(fingers, start=10), session_id))
    assert json.loads(_cli(bench, "show", auth_id, "--json").stdout)["state"] == "done"
    assert bench.which("primary") == "new"
    assert bench.which("secondary") == "new"
    revoke = _cli(bench, "revoke", auth_id)  # a done authorisation stays done
    assert revoke.returncode != 0
    assert "already done" in revoke.stderr


def test_three_wrong_codes_revoke_the_authorisation(bench: EnrolBench) -> None:
    auth_id = bench.open()["id"]
    with bench.session() as session:
        flow = bench.enrolment(session)
        pending = flow.authorise()
        for _ in range(3):
            with pytest.raises(EnrolmentAuthorisationError):
                bench.centre.confirm(auth_id, _other(pending.code))
        with pytest.raises(EnrolmentNotAuthorised) as refused:
            flow.wait_for_operator(pending, poll_s=0.05)
        assert refused.value.reason == "revoked"
    assert bench.which("primary") == "old"


def test_the_centre_refuses_an_operator_without_the_enrolment_role(bench: EnrolBench) -> None:
    _not_an_operator(bench, "mallory")
    with pytest.raises(EnrolmentAuthorisationError, match="not an enrolment operator"):
        bench.open(operator="mallory")


# -- refusals at the box ---------------------------------------------------------------------


def _refused(bench: EnrolBench, reason: str, *, client: BioEnrolmentCentre | None = None,
             ) -> EnrolmentNotAuthorised:  # fmt: skip
    """The box refuses at the authorisation, writes nothing and audits the reason."""
    with bench.session() as session, pytest.raises(EnrolmentNotAuthorised) as refused:
        bench.enrolment(session, client).authorise()
    assert refused.value.reason == reason, refused.value.message
    assert bench.which("primary") == "old"
    return refused.value


def test_an_expired_authorisation_is_refused(bench: EnrolBench) -> None:
    auth_id = bench.open()["id"]
    _edit(bench, auth_id, not_after=(datetime.now(UTC) - timedelta(minutes=1)).isoformat())
    assert "expired" in _refused(bench, "expired").message


def test_an_expired_authorisation_is_refused_by_the_box_itself(bench: EnrolBench) -> None:
    bench.open(minutes=5)
    with bench.session() as session:
        flow = bench.enrolment(session)
        flow.now = lambda: datetime.now(UTC) + timedelta(minutes=20)  # the box's own clock
        with pytest.raises(EnrolmentNotAuthorised) as refused:
            flow.authorise()
    assert refused.value.reason == "expired"


def test_an_authorisation_already_used_is_refused(bench: EnrolBench) -> None:
    bench.open()
    bench.run()
    with bench.session() as session, pytest.raises(EnrolmentNotAuthorised) as refused:
        bench.enrolment(session).authorise()
    assert refused.value.reason == "used"
    assert bench.which("primary") == "new"


def test_an_authorisation_for_another_card_is_refused(bench: EnrolBench) -> None:
    bench.open(card_guid=bytes(range(16)))
    _refused(bench, "other_card")


def test_an_authorisation_for_another_box_is_refused(bench: EnrolBench) -> None:
    bench.open(box_id="another-box")
    _refused(bench, "other_box")


def test_a_revoked_authorisation_is_refused(bench: EnrolBench) -> None:
    bench.centre.revoke(bench.open()["id"])
    _refused(bench, "revoked")


def test_an_authorisation_not_signed_by_an_enrolment_operator_is_refused(
    bench: EnrolBench,
) -> None:
    bench.open()  # by alice, whose key is then replaced by one without the operator role
    _not_an_operator(bench, "alice")
    assert "not signed by an enrolment operator" in _refused(bench, "operator").message


class _Replaying(BioEnrolmentCentre):
    """A centre (or a man in the middle) that answers with an authorisation it kept."""

    kept: SignedAuthorisation | None = None

    def begin(self, card_guid: bytes, challenge: bytes) -> SignedAuthorisation:
        fresh = super().begin(card_guid, challenge)
        if self.kept is None:
            self.kept = fresh
        return self.kept


def test_a_replayed_authorisation_is_refused(bench: EnrolBench) -> None:
    bench.open()
    client = bench.client()
    replaying = _Replaying(client.url, anchors=client.anchors, identity=bench.identity)
    with bench.session() as session:
        bench.enrolment(session, replaying).authorise()  # the first one is genuine
    _refused(bench, "replay", client=replaying)


def test_a_wrong_pin_spends_the_normal_counter_and_writes_nothing(bench: EnrolBench) -> None:
    bench.open()
    with bench.session() as session:
        flow = bench.enrolment(session)
        pending = flow.authorise()
        bench.centre.confirm(pending.authorisation.id, pending.code)
        flow.wait_for_operator(pending, poll_s=0.05)
        with pytest.raises(WrongPin) as wrong:
            flow.verify_holder("000000")
        assert wrong.value.message.startswith("wrong PIN: 2 attempts left")
        references = asyncio.run(flow.capture(pending, _sensor(("primary",))))
        with pytest.raises(SecurityStatusNotSatisfied):  # the holder's signature needs the PIN
            flow.write(pending, references)
        assert flow.written == ()
    assert bench.which("primary") == "old"
    assert bench.state.pin.tries == 2


class _PoorThenGood:
    """Two captures below quality, then good ones."""

    def __init__(self, poor: int) -> None:
        self.poor, self.calls = poor, 0
        self._good = EmulatedSensor(NEW["primary"])

    async def capture(self) -> bytes:
        self.calls += 1
        if self.calls <= self.poor:
            raise PlaceFingerAgain("only 7 minutiae were found")
        return await self._good.capture()


def test_poor_captures_are_retried_and_never_written(bench: EnrolBench) -> None:
    bench.open()
    with bench.session() as session:
        flow = bench.enrolment(session)
        pending = flow.authorise()
        bench.centre.confirm(pending.authorisation.id, pending.code)
        flow.wait_for_operator(pending, poll_s=0.05)
        flow.verify_holder(PIN)
        never = _PoorThenGood(poor=1000)
        apdus = bench.card.apdus
        with pytest.raises(EnrolmentRefused):
            asyncio.run(flow.capture(pending, never))
        assert bench.card.apdus == apdus  # not one command reached the card
        sensor = _PoorThenGood(poor=2)
        references = asyncio.run(flow.capture(pending, sensor))
        assert sensor.calls == 5  # 2 refused, 3 kept
        session_id = flow.write(pending, references)
        asyncio.run(flow.confirm(pending, _sensor(("primary",), start=10), session_id))
    assert bench.which("primary") == "new"


def test_a_centre_unreachable_mid_way_leaves_nothing_half_written(bench: EnrolBench) -> None:
    bench.open()
    client = bench.client(timeout_s=2)
    with bench.session() as session:
        flow = bench.enrolment(session, client)
        pending = flow.authorise()
        bench.centre.confirm(pending.authorisation.id, pending.code)
        flow.wait_for_operator(pending, poll_s=0.05)
        flow.verify_holder(PIN)
        references = asyncio.run(flow.capture(pending, _sensor(("primary",))))
        client.url = f"https://127.0.0.1:{_free_port()}"  # the centre is gone
        with pytest.raises(CentreUnreachable):
            flow.write(pending, references)
        assert flow.written == ()
    assert bench.which("primary") == "old"
    bench.run()  # the next attempt completes
    assert bench.which("primary") == "new"


def test_a_blocked_finger_is_re_enrolled_and_its_counter_reset(bench: EnrolBench) -> None:
    impostor = EmulatedSensor(4242)
    with bench.session() as session:
        for _ in range(5):
            with contextlib.suppress(WrongFinger, FingerBlocked):
                session.piv.verify_finger(KeyRef.FINGER_PRIMARY, asyncio.run(impostor.capture()))
        assert session.piv.finger_tries_left(KeyRef.FINGER_PRIMARY) == 0
    bench.open()
    bench.run()
    counter = bench.state.fingers[KeyRef.FINGER_PRIMARY]
    assert counter.tries == counter.max_tries == 5  # unblocked, every try back
    assert bench.which("primary") == "new"


# -- card variants -----------------------------------------------------------------------------


def test_a_finger_the_card_does_not_have_is_refused(bench: EnrolBench) -> None:
    swap_card(bench, "biosso-one-finger")
    bench.open(("primary", "secondary"))
    with bench.session() as session, pytest.raises(EnrolmentNotAuthorised) as refused:
        bench.enrolment(session).authorise()
    assert refused.value.reason == "finger"
    assert "no secondary finger" in refused.value.message


def test_a_card_without_on_card_comparison_cannot_be_enrolled(bench: EnrolBench) -> None:
    swap_card(bench, "biosso-pin-only")
    auth_id = bench.open()["id"]
    with bench.session() as session, pytest.raises(NoFingerprint) as refused:
        bench.enrolment(session).authorise()
    assert refused.value.message == "this card has no fingerprint; enrolment is not possible"
    assert bench.register[auth_id]["state"] == "open"  # the centre was never asked


# -- helpers -------------------------------------------------------------------------------


def _other(code: str) -> str:
    return f"{(int(code) + 1) % 1_000_000:06d}"


def _edit(bench: EnrolBench, auth_id: str, **fields: str) -> None:
    path = bench.bio_dir / "register.json"
    records = json.loads(path.read_text())
    records[auth_id].update(fields)
    path.write_text(json.dumps(records))


def _not_an_operator(bench: EnrolBench, name: str) -> None:
    """``name``'s key certified as a holder (clientAuth), not as an enrolment operator."""
    key = ec.generate_private_key(ec.SECP256R1())
    write_operator(bench.bio_dir / "operators", name, key,
                   bench.pki.issue_holder(key.public_key(), subject_cn=name))  # fmt: skip


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- the interruption matrix -------------------------------------------------------------------

BOTH = ("primary", "secondary")


def _full_run_apdus(bench: EnrolBench) -> int:
    bench.reset()
    bench.open(BOTH)
    bench.run(BOTH)
    total = bench.card.apdus
    assert len(bench.card.trace) == total
    print(f"\nremote enrolment of two fingers: {total} APDUs: {', '.join(bench.card.trace)}")
    return total


def _after_interruption(
    bench: EnrolBench, label: str, fingers: tuple[str, ...] = BOTH
) -> None:
    """Each finger has its old or its new reference; the next attempt completes."""
    if not bench.card.inserted:
        bench.reinsert()
    for finger in fingers:
        assert bench.which(finger) in ("old", "new"), (label, finger)
    bench.run(fingers)
    for finger in fingers:
        assert bench.which(finger) == "new", (label, finger)
    assert [r["state"] for r in bench.register.values()] == ["done"], label


def test_card_pulled_after_every_apdu(module_bench: EnrolBench) -> None:
    bench = module_bench
    total = _full_run_apdus(bench)
    for i in range(1, total + 1):
        bench.reset()
        bench.open(BOTH)

        def pull(n: int, i: int = i) -> bool:
            return n == i

        bench.card.on_apdu = pull
        with pytest.raises(SdboxError):
            bench.run(BOTH)
        bench.card.on_apdu = None
        bench.reinsert()
        _after_interruption(bench, f"card pulled after APDU {i}/{total}")
    print(f"\ncard pulled: {total} interruption points")


def test_centre_gone_after_every_apdu(
    module_bench: EnrolBench, monkeypatch: pytest.MonkeyPatch
) -> None:
    bench = module_bench
    total = _full_run_apdus(bench)
    gone = False
    post = CentreConnection.post

    def unreachable(self: CentreConnection, path: str, body: dict[str, Any]) -> dict[str, Any]:
        if gone:
            raise CentreUnreachable("the centre cannot be reached (test: gone)")
        return post(self, path, body)

    monkeypatch.setattr(CentreConnection, "post", unreachable)
    for i in range(1, total + 1):
        bench.reset()
        bench.open(BOTH)
        gone = False

        def leave(n: int, i: int = i) -> bool:
            nonlocal gone
            gone = gone or n == i
            return False

        bench.card.on_apdu = leave
        with pytest.raises(CentreUnreachable):
            bench.run(BOTH)
        bench.card.on_apdu = None
        gone = False
        _after_interruption(bench, f"centre gone after APDU {i}/{total}")
    print(f"\ncentre gone: {total} interruption points")


def _operator_confirms(bench: EnrolBench, auth_id: str, stop: threading.Event) -> threading.Thread:
    """The operator, on the phone: confirms the code once the box has asked (a thread)."""

    def confirm() -> None:
        while not stop.is_set():
            record = bench.centre.show(auth_id)
            if record["state"] == "bound":
                bench.centre.confirm(auth_id, record["code"])
                return
            stop.wait(0.05)

    thread = threading.Thread(target=confirm, daemon=True)
    thread.start()
    return thread


def _enrol_in_a_process(bench: EnrolBench, config: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*sdbox_argv(), "bio", "remote-enrol", "--config", str(config), "--reader", bench.reader],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


def test_process_killed_after_every_apdu(module_bench: EnrolBench) -> None:
    """The box powered off: `sdbox bio remote-enrol` killed after each APDU of the flow."""
    bench = module_bench
    bench.reset()
    publish_crls(bench.pki, bench.work / "crl")
    write_config(bench.work, bench.pki, display=":0", broker=bench.broker,
                 sensor=f'kind = "emulated"\nseed = {NEW["primary"]}')  # fmt: skip
    config = bench.work / "agent.toml"  # what write_config wrote
    auth_id = bench.open()["id"]
    stop = threading.Event()
    _operator_confirms(bench, auth_id, stop)
    proc = _enrol_in_a_process(bench, config)
    out, err = proc.communicate(PIN.encode() + b"\n", timeout=120)
    stop.set()
    assert proc.returncode == 0, err.decode()
    assert out.decode().strip() == f"enrolled: primary (authorised by {OPERATOR_NAME})"
    assert f"read this code to {OPERATOR_NAME}: " in err.decode()
    total = bench.card.apdus
    for i in range(1, total + 1):
        bench.reset()
        auth_id = bench.open()["id"]
        stop = threading.Event()
        _operator_confirms(bench, auth_id, stop)
        proc = _enrol_in_a_process(bench, config)

        def kill(n: int, i: int = i, proc: subprocess.Popen[bytes] = proc) -> bool:
            if n == i:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)
            return False

        bench.card.on_apdu = kill
        proc.communicate(PIN.encode() + b"\n", timeout=120)
        bench.card.on_apdu = None
        stop.set()
        assert proc.returncode == -signal.SIGKILL, f"not killed at APDU {i}"
        _after_interruption(bench, f"process killed after APDU {i}/{total}", ("primary",))
    print(f"\nprocess killed: {total} interruption points")
