"""The box identity in a TPM (swtpm behind tpm2-abrmd, through libtpm2-pkcs11).

- box signature with the TPM key, as the broker protocol does it (session,
  login with the PIN file, sign, close): median over SIGNS runs;
- the same signature inside an open session (the TPM's own cost);
- first boot: token + key creation, and enrolment with the reference broker
  (CSR signed in the TPM, one-time token, certificate checked and stored);
- a whole credential request (challenge, ECDH on the emulated card with
  20 ms per APDU, box signature, RDP bubble provisioning) with the TPM
  identity, and with a development software key for comparison: medians
  over ROUNDS runs.

swtpm is a software TPM: a hardware TPM signs in tens of milliseconds, so on
a box the TPM figures are larger; the comparison with the software key shows
what the TPM adds to a credential request.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from pkcs11 import Mechanism

from sdbox.broker.enrolment import EnrolmentTokens
from sdbox.centre.client import request_credential
from sdbox.identity import BoxIdentity, DevelopmentIdentity, open_identity, read_pin
from sdbox.identity.enrol import enrol
from sdbox.identity.provision import provision_tpm
from sdbox.identity.tpm import find_private_key, get_token, load_module
from sdbox.smartcard import pcsc
from sdbox.smartcard.biosso import BioSsoSession
from sdbox.smartcard.directory import parse_signed_directory
from sdbox.smartcard.emulator.applet import PivApplet
from sdbox.smartcard.emulator.profiles import issue_card, parse_profile, seeded_template
from sdbox.smartcard.emulator.stack import PcscDaemon, reader_name, reserve_reader, wait_for_card
from sdbox.smartcard.emulator.vpcd import VPCD_BASE_PORT, VirtualCard
from sdbox.smartcard.profile import KeyRef, ObjectTag
from sdbox.trust.pki import Pki
from tests.integration.agent_env import card_profile, rdp_bubble, reference_broker
from tests.integration.session_servers import free_port, xvfb
from tests.integration.tpm_env import software_tpm, tpm_identity_config, tpm_missing

SIGNS = 50
ROUNDS = 10
LATENCY_MS = 20.0


def _median_ms(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1000, 2)


def _credential_rounds(
    pki: Pki, broker: Any, project: Any, session: BioSsoSession, identity: BoxIdentity
) -> list[float]:
    anchors = [pki.root.cert]
    certificate = session.certificate(project.slot)

    async def ecdh(peer: ec.EllipticCurvePublicKey) -> bytes:
        return await asyncio.to_thread(session.ecdh, project.slot, peer)

    times = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        asyncio.run(
            request_credential(
                broker.url, project_id=project.id, endpoint=project.endpoint,
                project_certificate=certificate, card_ecdh=ecdh, identity=identity,
                server_anchors=anchors,
            )
        )  # fmt: skip
        times.append(time.perf_counter() - start)
    return times


def run() -> dict[str, object]:
    """Run the identity benchmark; print and return the figures."""
    missing = tpm_missing()
    if missing:
        print(f"skipped: {missing} is not installed (make setup, identity tier)")
        return {"skipped": f"{missing} missing"}
    result: dict[str, object] = {}
    daemon = PcscDaemon()
    daemon.start()
    try:
        with (
            tempfile.TemporaryDirectory() as tmp,
            software_tpm(Path(tmp) / "tpm") as tpm,
            contextlib.ExitStack() as stack,
        ):
            work = Path(tmp)
            for name, value in tpm.environment().items():
                stack.enter_context(_env(name, value))
            pki = Pki.init(work / "pki")
            box = tpm_identity_config(tpm, work / "sealed", work / "sealed" / "box.pem")

            start = time.perf_counter()
            provision_tpm(box)
            result["provision_s"] = round(time.perf_counter() - start, 3)

            register = work / "tokens.json"
            broker = stack.enter_context(
                reference_broker(work / "enrol", pki, {}, {}, enrolment_tokens=register)
            )
            token_file = work / "enrolment-token"
            token_file.write_text(EnrolmentTokens(register).add("bench-box") + "\n")
            start = time.perf_counter()
            enrol(box, broker_url=broker.url, token_file=token_file, broker_anchors=[pki.root.cert],
                  anchors=[pki.root.cert], intermediates=pki.intermediates)  # fmt: skip
            result["enrol_s"] = round(time.perf_counter() - start, 3)

            identity = open_identity(box)
            samples = []
            for i in range(SIGNS):
                start = time.perf_counter()
                identity.sign(b"transcript %d" % i)
                samples.append(time.perf_counter() - start)
            result["tpm_sign_ms"] = _median_ms(samples)
            token = get_token(load_module(box), box)
            with token.open(user_pin=read_pin(box)) as session:
                key = find_private_key(session, box)
                samples = []
                for i in range(SIGNS):
                    start = time.perf_counter()
                    key.sign(b"transcript %d" % i, mechanism=Mechanism.ECDSA_SHA256)  # type: ignore[attr-defined]
                    samples.append(time.perf_counter() - start)
            result["tpm_sign_in_session_ms"] = _median_ms(samples)

            result.update(_credential_figures(work, pki, identity, stack))
    finally:
        daemon.cleanup()
    for name, figure in result.items():
        print(f"{name:28} {figure!s:>8}")
    result["signs"] = SIGNS
    result["rounds"] = ROUNDS
    result["latency_ms_per_apdu"] = LATENCY_MS
    result["tpm"] = "swtpm 0.7 (software) behind tpm2-abrmd"
    return result


def _credential_figures(
    work: Path, pki: Pki, tpm_identity: BoxIdentity, stack: contextlib.ExitStack
) -> dict[str, float]:
    ports = {"census-2021": free_port(), "health-cohort": free_port()}
    state = issue_card(parse_profile(card_profile(ports), source="bench"), pki)
    display = stack.enter_context(xvfb())
    servers = {
        p: stack.enter_context(rdp_bubble(work / p, pki, p, display, port))
        for p, port in ports.items()
    }
    broker = stack.enter_context(reference_broker(work / "broker", pki, dict(servers), ports))
    development = DevelopmentIdentity(broker.box_certificate, broker.box_key)
    index = stack.enter_context(reserve_reader())
    card = VirtualCard(PivApplet(state), port=VPCD_BASE_PORT + index, latency_ms=LATENCY_MS)
    card.insert()
    stack.callback(card.remove)
    wait_for_card(reader_name(index), present=True)
    connection = pcsc.connect(reader_name(index))
    stack.callback(connection.close)
    session = BioSsoSession(connection)
    session.piv.select()
    session.piv.verify_finger(KeyRef.FINGER_PRIMARY, seeded_template(1001))
    project = parse_signed_directory(state.objects[ObjectTag.DIRECTORY]).directory.project(
        "census-2021"
    )
    with_tpm = _credential_rounds(pki, broker, project, session, tpm_identity)
    with_dev = _credential_rounds(pki, broker, project, session, development)
    return {
        "credential_tpm_s": round(statistics.median(with_tpm), 3),
        "credential_software_key_s": round(statistics.median(with_dev), 3),
    }


@contextlib.contextmanager
def _env(name: str, value: str) -> Iterator[None]:
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old
