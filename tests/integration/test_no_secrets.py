"""After a full flow, no secret appears anywhere the box writes.

Secrets: the PIN, the finger template, the one-time session passwords, the
card's private keys and its management key. Places: every log record the
agent, the session layer and the card layer produce (captured at the most
verbose level, APDU trace included), the session clients' kept output, and
the agent's state and CRL directories. Encodings: raw, hex (both cases),
base64 and UTF-16LE.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sdbox.agent.events import State
from sdbox.logging import TRACE
from sdbox.smartcard.emulator.profiles import seeded_template
from sdbox.smartcard.profile import pad_pin
from sdbox.trust.pki import Pki
from tests.integration.test_agent import Bubbles, _wait, bubbles, running_agent

__all__ = ["bubbles"]


def encodings(secret: bytes) -> list[bytes]:
    """The forms a leaked secret could take."""
    forms = [secret, secret.hex().encode(), secret.hex().upper().encode(), base64.b64encode(secret)]
    with contextlib.suppress(UnicodeDecodeError):
        forms.append(secret.decode().encode("utf-16-le"))
    return [f for f in forms if len(f) >= 6]


class GatedSensor:
    """Gives the holder's finger only once ``open`` is set (the PIN goes first)."""

    def __init__(self) -> None:
        self.open = asyncio.Event()

    async def capture(self) -> bytes:
        await self.open.wait()
        return seeded_template(1001)


def test_no_secret_in_logs_or_state(
    pki: Pki, bubbles: Bubbles, free_reader: int, tmp_path: Path
) -> None:
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(self.format(record) + " " + repr(record.__dict__))

    root = logging.getLogger()
    handler = Keep(level=TRACE)
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(TRACE)
    kept_client_output: list[str] = []
    try:

        async def scenario() -> None:
            gate = GatedSensor()
            async with running_agent(pki, bubbles, free_reader, tmp_path, sensor_port=gate) as run:
                # the PIN, where the project allows it: it crosses D-Bus and the card
                await _wait(run.agent, State.PICKER)
                await run.iface.call_choose_project("health-cohort")  # type: ignore[attr-defined]
                await _wait(run.agent, State.VERIFYING)
                await run.iface.call_submit_pin("123456")  # type: ignore[attr-defined]
                await _wait(run.agent, State.RUNNING)
                await run.iface.call_switch("census-2021")  # type: ignore[attr-defined]
                await _wait(run.agent, State.CONNECTING)
                await _wait(run.agent, State.RUNNING)
                tail = getattr(getattr(run.agent._session, "_client", None), "tail", None)
                if tail is not None:
                    kept_client_output.extend(tail.lines())
                await asyncio.to_thread(run.card.remove)
                await _wait(run.agent, State.IDLE)
                # the finger, on the card inserted again
                gate.open.set()
                await asyncio.to_thread(run.card.insert)
                await _wait(run.agent, State.PICKER)
                await run.iface.call_choose_project("census-2021")  # type: ignore[attr-defined]
                await _wait(run.agent, State.RUNNING)
                secrets_out.update(
                    passwords=[p.encode() for b in bubbles.servers.values() for p in b.issued],
                    keys=[_key_bytes(k) for k in run.card.state.keys.values()],
                    management=[run.card.state.management_key],
                )

        secrets_out: dict[str, list[bytes]] = {}
        asyncio.run(scenario())
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)

    secrets = {
        "PIN": [b"123456", pad_pin("123456")],
        "finger template": [seeded_template(1001)],
        **{name: values for name, values in secrets_out.items()},
    }
    assert secrets["passwords"], (
        "the flow issued no one-time password: the test would prove nothing"
    )
    # the trace really saw the card traffic (so its redaction is what is being tested)
    assert any("> 002000" in r for r in records), "no VERIFY in the APDU trace"
    haystacks: dict[str, bytes] = {
        "log records": "\n".join(records).encode(),
        "client output": "\n".join(kept_client_output).encode(),
    }
    for path in (tmp_path / "state").rglob("*") if (tmp_path / "state").exists() else []:
        if path.is_file():
            haystacks[str(path)] = path.read_bytes()
    for path in (tmp_path / "crl").rglob("*"):
        if path.is_file():
            haystacks[str(path)] = path.read_bytes()
    for name, values in secrets.items():
        for value in values:
            for form in encodings(value):
                for where, data in haystacks.items():
                    assert form not in data, f"{name} found in {where}"


def _key_bytes(key: object) -> bytes:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.private_numbers().private_value.to_bytes((key.curve.key_size + 7) // 8, "big")
    return key.private_bytes(  # type: ignore[attr-defined,no-any-return]
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )[-64:]
