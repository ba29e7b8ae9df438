"""Remote fingerprint enrolment in the greeter, under cage, driven through the real agent.

The reference broker manages the card (9B) and has an enrolment operator; the greeter shows
a refusal (no authorisation for this card, in French), then the code for the operator, the
PIN, and the enrolled finger with the projects to choose from (references).
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from sdbox.agent.api import Detail, State
from sdbox.agent.bioenrol import RemoteEnrolment, operator_check
from sdbox.broker.bioenrol import BioEnrolment, write_operator
from sdbox.broker.cards import register_entry
from sdbox.centre.bioenrol import BioEnrolmentCentre
from sdbox.identity import DevelopmentIdentity
from sdbox.smartcard.biosso import BioSsoSession
from sdbox.smartcard.profile import Slot, certificate_object, decode_certificate
from sdbox.trust.pki import Pki
from sdbox.trust.store import RevocationStore
from tests.integration.agent_env import reference_broker, until
from tests.integration.greeter_env import expect, kiosk
from tests.integration.test_agent import Bubbles, _wait, bubbles, running_agent
from tests.integration.test_greeter import OUT, _bus_dir, needs_kiosk

__all__ = ["bubbles"]
OPERATOR = "Alice Martin"


@needs_kiosk
def test_remote_enrolment_in_the_greeter(
    pki: Pki, bubbles: Bubbles, free_reader: int, tmp_path: Path
) -> None:
    bus_dir = _bus_dir()
    bio_dir, register = tmp_path / "bio", tmp_path / "cards.json"
    key = ec.generate_private_key(ec.SECP256R1())
    write_operator(bio_dir / "operators", "alice", key,
                   pki.issue_enrolment_operator(key.public_key(), operator=OPERATOR))  # fmt: skip

    async def scenario(broker_url: str, anchors: list[x509.Certificate],
                       identity: DevelopmentIdentity, bio: BioEnrolment) -> None:  # fmt: skip
        crls = RevocationStore(tmp_path / "broker" / "crl",
                               build_time=pki.root.cert.not_valid_before_utc)  # fmt: skip

        def factory(session: BioSsoSession) -> RemoteEnrolment:
            centre = BioEnrolmentCentre(broker_url, anchors=anchors, identity=identity)
            return RemoteEnrolment(session, centre,
                                   operator_check([pki.root.cert], pki.intermediates, crls))  # fmt: skip

        async with running_agent(pki, bubbles, free_reader, tmp_path, bus_dir=bus_dir,
                                 enrolment=factory) as run:  # fmt: skip
            await _wait(run.agent, State.PICKER)
            state = run.card.state  # the centre knows this card: its 9B key, its holder
            holder = x509.load_der_x509_certificate(
                decode_certificate(state.objects[certificate_object(Slot.AUTHENTICATION)])
            )
            register.write_text(
                json.dumps({state.guid.hex(): register_entry(state.management_key, holder)})
            )
            with kiosk(run.bus_address, "fr") as screen:
                await run.iface.call_start_enrolment()  # type: ignore[attr-defined]
                await asyncio.to_thread(
                    expect, screen, "enrolment-refused-fr", OUT,
                    ("L’enrôlement n’a pas été autorisé",  # noqa: RUF001  (French typography)
                     "Aucun enrôlement n’est autorisé pour cette carte sur ce boîtier."),  # noqa: RUF001
                )  # fmt: skip
            assert run.agent.snapshot.state == State.PICKER
            record = bio.open(card_guid=state.guid, box_id="test-box-1", fingers=("primary",),
                              minutes=15, operator="alice")  # fmt: skip
            with kiosk(run.bus_address, "en") as screen:
                await run.iface.call_start_enrolment()  # type: ignore[attr-defined]
                await until(lambda: run.agent.snapshot.detail == Detail.ENROLMENT_CODE)
                code = run.agent.snapshot.detail_args["code"]
                await asyncio.to_thread(
                    expect, screen, "enrolment-code", OUT,
                    ("Read this code to the operator", code,
                     f"{OPERATOR} types it; then you will be asked for your PIN."),
                )  # fmt: skip
                await asyncio.to_thread(bio.confirm, record["id"], code)  # read back
                await asyncio.to_thread(
                    expect, screen, "enrolment-pin", OUT,
                    ("Enter your PIN", f"{OPERATOR} confirmed the code: type your PIN.",
                     "3 tries left"),
                )  # fmt: skip
                await run.iface.call_submit_pin("123456")  # type: ignore[attr-defined]
                await asyncio.to_thread(
                    expect, screen, "enrolled", OUT,
                    ("Your fingerprint is enrolled",
                     f"Your primary finger is enrolled (authorised by {OPERATOR}).",
                     "Census microdata 2021"),
                )  # fmt: skip
            assert bio.show(record["id"])["state"] == "done"

    try:
        with reference_broker(tmp_path / "broker", pki, {}, {}, card_register=register,
                              bio_enrolment=bio_dir) as broker:  # fmt: skip
            anchors = x509.load_pem_x509_certificates(broker.anchors.read_bytes())
            identity = DevelopmentIdentity(broker.box_certificate, broker.box_key)
            bio = broker.server.broker.bio
            assert isinstance(bio, BioEnrolment)
            asyncio.run(scenario(broker.url, anchors, identity, bio))
    finally:
        shutil.rmtree(bus_dir, ignore_errors=True)
