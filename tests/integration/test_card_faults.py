"""Faults on the real PC/SC path: each ends in a typed error that says what happened."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from sdbox.smartcard import pcsc
from sdbox.smartcard.biosso import BioSsoSession
from sdbox.smartcard.directory import parse_signed_directory
from sdbox.smartcard.emulator.faults import parse_fault
from sdbox.smartcard.emulator.stack import PcscDaemon, wait_for_card
from sdbox.smartcard.emulator.state import CardState, deterministic_key
from sdbox.smartcard.errors import (
    ApduError,
    CardAccessError,
    CardBusy,
    CardRemoved,
    DirectoryError,
    FingerBlocked,
    NoReader,
    SecurityStatusNotSatisfied,
    WrongFinger,
)
from sdbox.smartcard.piv import LocalManagementKey
from sdbox.smartcard.profile import Algorithm, KeyRef, ObjectTag
from sdbox.trust import validate_directory_signer
from sdbox.trust.pki import Pki
from tests.integration.conftest import InsertedCard, insert_card

DEMO_MANAGEMENT_KEY = bytes.fromhex("00112233445566778899aabbccddeeff")


def validator(pki: Pki):  # type: ignore[no-untyped-def]
    from datetime import UTC, datetime

    def check(signer, intermediates):  # type: ignore[no-untyped-def]
        validate_directory_signer(signer, intermediates, [pki.root.cert], at=datetime.now(UTC))

    return check


@pytest.fixture
def session(demo_card: InsertedCard) -> Iterator[BioSsoSession]:
    conn = pcsc.connect(demo_card.reader)
    yield BioSsoSession(conn)
    conn.close()


def test_card_pulled_mid_listing_is_card_removed(
    demo_card: InsertedCard, session: BioSsoSession
) -> None:
    demo_card.virtual.add_fault(parse_fault(f"remove:ins=cb,object={ObjectTag.DIRECTORY:x}"))
    with pytest.raises(CardAccessError) as err:
        session.read_summary(validator(demo_card.pki))
    assert isinstance(err.value, CardRemoved | CardAccessError)
    assert "removed" in err.value.message or "card" in err.value.message
    assert wait_for_card(demo_card.reader, present=False)


def test_card_pulled_mid_listing_in_the_cli_exits_3_without_traceback(
    demo_card: InsertedCard,
) -> None:
    demo_card.virtual.add_fault(parse_fault(f"remove:ins=cb,object={ObjectTag.DIRECTORY:x}"))
    out = subprocess.run(
        [sys.executable, "-m", "sdbox", "card", "info", "--reader", demo_card.reader, "--anchors", str(demo_card.anchors)],
        check=False, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 3, out.stderr
    assert "Traceback" not in out.stderr
    assert out.stderr.startswith("sdbox: ")


@pytest.mark.parametrize("kind", ["truncate", "garble"])
def test_damaged_directory_answer_is_reported_not_trusted(
    demo_card: InsertedCard, session: BioSsoSession, kind: str
) -> None:
    demo_card.virtual.add_fault(parse_fault(f"{kind}:ins=cb,object={ObjectTag.DIRECTORY:x}"))
    summary = session.read_summary(validator(demo_card.pki))
    assert not summary.directory_verified
    assert isinstance(summary.directory_error, DirectoryError)
    assert "project directory" in summary.directory_error.message


def test_wrong_status_word_names_the_command(
    demo_card: InsertedCard, session: BioSsoSession
) -> None:
    session.piv.select()
    demo_card.virtual.add_fault(parse_fault("sw:ins=20,sw=6f00"))
    with pytest.raises(ApduError, match=r"VERIFY 96 .*6F00"):
        session.piv.verify_finger(KeyRef.FINGER_PRIMARY, b"\x01\x02\x03" * 20)


def test_answer_without_status_word_is_a_typed_error(
    demo_card: InsertedCard, session: BioSsoSession
) -> None:
    demo_card.virtual.add_fault(parse_fault("no-sw:ins=a4"))
    with pytest.raises(CardAccessError):
        session.piv.select()


def test_tampered_directory_is_refused(demo_card: InsertedCard) -> None:
    demo_card.remove()
    value = demo_card.state.objects[ObjectTag.DIRECTORY]
    demo_card.state.objects[ObjectTag.DIRECTORY] = value.replace(
        b"Census microdata", b"Census MICROdata"
    )
    demo_card.insert()
    conn = pcsc.connect(demo_card.reader)
    try:
        summary = BioSsoSession(conn).read_summary(validator(demo_card.pki))
    finally:
        conn.close()
    assert summary.directory is None
    assert "signature does not verify" in str(summary.directory_error)


def test_directory_copied_from_another_card_is_refused(
    demo_card: InsertedCard, pki: Pki, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from sdbox.smartcard.emulator.profiles import issue_card, load_profile

    other = issue_card(load_profile("demo"), pki)
    demo_card.remove()
    demo_card.state.objects[ObjectTag.DIRECTORY] = other.objects[ObjectTag.DIRECTORY]
    demo_card.insert()
    conn = pcsc.connect(demo_card.reader)
    try:
        summary = BioSsoSession(conn).read_summary(validator(demo_card.pki))
    finally:
        conn.close()
    assert "belongs to another card" in str(summary.directory_error)


def test_card_without_directory_says_it_was_not_issued_for_sdbox(demo_card: InsertedCard) -> None:
    demo_card.remove()
    del demo_card.state.objects[ObjectTag.DIRECTORY]
    demo_card.insert()
    conn = pcsc.connect(demo_card.reader)
    try:
        summary = BioSsoSession(conn).read_summary(validator(demo_card.pki))
    finally:
        conn.close()
    assert "no project directory" in str(summary.directory_error)


def test_unknown_reader_is_no_reader(pcscd: PcscDaemon) -> None:
    with pytest.raises(NoReader, match="no reader named 'Virtual PCD 00 07'"):
        pcsc.connect("Virtual PCD 00 07")


def test_exclusive_holder_keeps_other_programs_out(demo_card: InsertedCard) -> None:
    holder = pcsc.connect(demo_card.reader, exclusive=True)
    try:
        with pytest.raises(CardBusy, match="another program is using the card"):
            pcsc.connect(demo_card.reader)
    finally:
        holder.close()


def test_finger_blocks_after_five_misses_and_re_enrolment_unblocks(
    demo_card: InsertedCard, session: BioSsoSession
) -> None:
    piv = session.piv
    piv.select()
    wrong = bytes((10, 10, 0x41)) * 20
    for left in (4, 3, 2, 1):
        with pytest.raises(WrongFinger) as err:
            piv.verify_finger(KeyRef.FINGER_PRIMARY, wrong)
        assert err.value.tries_left == left
    with pytest.raises(FingerBlocked):
        piv.verify_finger(KeyRef.FINGER_PRIMARY, wrong)
    reference = demo_card.state.fingers[KeyRef.FINGER_PRIMARY].reference
    assert reference is not None
    with pytest.raises(FingerBlocked):  # even the right finger: blocked is blocked
        piv.verify_finger(KeyRef.FINGER_PRIMARY, reference)
    # RESET RETRY COUNTER is for the PIN only
    _data, sw = session.stack.send(
        __import__("sdbox.smartcard.apdu", fromlist=["Apdu"]).Apdu(
            0, 0x2C, 0, 0x96, b"12345678" + b"123456\xff\xff"
        )
    )
    assert sw == 0x6A86
    # the enrolment station re-enrols with the management key
    piv.authenticate_management(LocalManagementKey(DEMO_MANAGEMENT_KEY))
    piv.put_object(ObjectTag.FINGER_REFERENCE_PRIMARY, reference)
    assert piv.finger_tries_left(KeyRef.FINGER_PRIMARY) == 5
    piv.verify_finger(KeyRef.FINGER_PRIMARY, reference)


def test_references_are_never_returned(demo_card: InsertedCard, session: BioSsoSession) -> None:
    session.piv.select()
    with pytest.raises(SecurityStatusNotSatisfied):
        session.piv.get_object(ObjectTag.FINGER_REFERENCE_PRIMARY)


def test_signing_needs_holder_verification(demo_card: InsertedCard, session: BioSsoSession) -> None:
    session.piv.select()
    with pytest.raises(SecurityStatusNotSatisfied, match="verify your finger"):
        session.sign(b"challenge")


def test_wrong_management_key_is_refused(demo_card: InsertedCard, session: BioSsoSession) -> None:
    session.piv.select()
    with pytest.raises(SecurityStatusNotSatisfied):
        session.piv.authenticate_management(LocalManagementKey(b"\x00" * 16))
    with pytest.raises(SecurityStatusNotSatisfied):
        session.piv.put_object(0x5FC10D, b"x")


def test_generated_key_is_deterministic_and_survives_reinsertion(
    demo_card: InsertedCard, session: BioSsoSession
) -> None:
    piv = session.piv
    piv.select()
    piv.authenticate_management(LocalManagementKey(DEMO_MANAGEMENT_KEY))
    public = piv.generate_key(0x85, Algorithm.ECCP256)
    expected = deterministic_key(b"test", 0, ec.SECP256R1()).public_key()
    assert public == expected
    piv.put_object(0x5FC110, b"\x70\x01\x00")
    session.stack.connection.close()
    demo_card.remove()
    assert demo_card.state.path is not None
    reloaded = CardState.load(demo_card.state.path)
    assert reloaded.keys[0x85].public_key() == expected
    assert reloaded.objects[0x5FC110] == b"\x70\x01\x00"
    card = insert_card(reloaded, demo_card.pki)
    try:
        conn = pcsc.connect(card.reader)
        try:
            again = BioSsoSession(conn)
            again.piv.select()
            assert again.piv.get_object(0x5FC110) == b"\x70\x01\x00"
        finally:
            conn.close()
    finally:
        card.remove()


def test_sign_and_ecdh_after_finger(demo_card: InsertedCard, session: BioSsoSession) -> None:
    session.piv.select()
    reference = demo_card.state.fingers[KeyRef.FINGER_PRIMARY].reference
    assert reference is not None
    session.piv.verify_finger(KeyRef.FINGER_PRIMARY, reference)
    signature = session.sign(b"challenge")
    key = session.certificate(0x9A).public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    from cryptography.hazmat.primitives import hashes

    key.verify(signature, b"challenge", ec.ECDSA(hashes.SHA256()))
    project = session.certificate(0x84).public_key()  # genomics-lab, P-384
    assert isinstance(project, ec.EllipticCurvePublicKey)
    ephemeral = ec.generate_private_key(project.curve)
    assert session.ecdh(0x84, ephemeral.public_key()) == ephemeral.exchange(ec.ECDH(), project)
    directory = parse_signed_directory(demo_card.state.objects[ObjectTag.DIRECTORY]).directory
    assert [p.slot for p in directory.projects] == [0x82, 0x83, 0x84]
    assert session.key_history_count() == 3


def test_pcscd_restart_is_reported_and_the_next_connection_works(
    demo_card: InsertedCard, pcscd: PcscDaemon
) -> None:
    if not pcscd.owned or pcscd.shared:
        pytest.skip("pcscd was already running or is shared with another run: not ours to restart")
    conn = pcsc.connect(demo_card.reader)
    session = BioSsoSession(conn)
    session.piv.select()
    pcscd.restart()
    with pytest.raises(CardAccessError):
        session.piv.select()
    conn.close()
    demo_card.virtual.remove()
    demo_card.insert()
    context = pcsc.PcscContext()
    try:
        assert demo_card.reader in context.list_readers()
    finally:
        context.release()
    conn = pcsc.connect(demo_card.reader)
    try:
        BioSsoSession(conn).piv.select()
    finally:
        conn.close()


def test_transaction_keeps_a_command_sequence_together(demo_card: InsertedCard) -> None:
    conn = pcsc.connect(demo_card.reader)
    try:
        with conn.transaction():
            session = BioSsoSession(conn)
            session.piv.select()
            assert session.piv.pin_tries_left() == 3
    finally:
        conn.close()
