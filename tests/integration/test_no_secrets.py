"""After a full flow, no secret appears anywhere the box writes.

Secrets: the PIN, the finger template, the one-time session passwords, the
card's private keys and its management key. Places: every log record the
agent, the session layer and the card layer produce (captured at the most
verbose level, APDU trace included, with the structured fields that go to
the journal), the session clients' kept output and their private homes
while they run, every file the agent's run left in its work directory
(state, CRL cache, configuration; the card emulator's own state excepted:
that is the card), and core dumps (none may exist; on the box LimitCORE=0
and kernel.core_pattern keep them from being written, test_security.py).
Encodings: raw, hex (both cases, bare or with ``:``/space separators),
base64 (standard and URL-safe, at each of the three alignments a secret can
have inside a longer encoded blob) and UTF-16LE of the text forms.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sdbox.agent.api import State
from sdbox.logging import TRACE
from sdbox.smartcard.emulator.profiles import seeded_template
from sdbox.smartcard.profile import pad_pin
from sdbox.trust.pki import Pki
from tests.integration.test_agent import Bubbles, _wait, bubbles, running_agent

__all__ = ["bubbles"]


def encodings(secret: bytes) -> list[bytes]:
    """The forms a leaked secret could take."""
    texts = [secret.hex(), secret.hex().upper()]
    for sep in (":", " "):
        texts += [sep.join(f"{b:02x}" for b in secret), sep.join(f"{b:02X}" for b in secret)]
    forms = [secret, *(t.encode() for t in texts)]
    for shift in range(3):  # inside a longer base64 blob the secret starts at offset 0, 1 or 2
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            encoded = encode(bytes(shift) + secret)
            # keep the characters whose 6 bits all come from the secret
            first, end = -(-8 * shift // 6), 8 * (shift + len(secret)) // 6
            forms.append(encoded[first:end])
    with contextlib.suppress(UnicodeDecodeError):
        texts.append(secret.decode())
    forms += [t.encode("utf-16-le") for t in texts]
    return [f for f in forms if len(f) >= 6]


def snapshot(directory: Path, into: dict[str, bytes], skip: tuple[Path, ...] = ()) -> None:
    """Every readable file under ``directory`` (not following links), by path."""
    if not directory.exists():
        return
    for path in directory.rglob("*"):
        if path.is_symlink() or not path.is_file() or any(path.is_relative_to(x) for x in skip):
            continue
        with contextlib.suppress(OSError):
            into[str(path)] = path.read_bytes()


def client_home(agent: object) -> Path | None:
    """The running session client's private home (its working directory)."""
    client = getattr(getattr(agent, "_session", None), "_client", None)
    pid = getattr(client, "pid", None)
    if pid is None:
        return None
    with contextlib.suppress(OSError):
        return Path(os.readlink(f"/proc/{pid}/cwd"))
    return None


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
    homes: dict[str, bytes] = {}
    try:

        def keep_client(agent: object) -> None:
            tail = getattr(getattr(getattr(agent, "_session", None), "_client", None), "tail", None)
            if tail is not None:
                kept_client_output.extend(tail.lines())
            home = client_home(agent)
            if home is not None:
                snapshot(home, homes)

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
                keep_client(run.agent)
                await asyncio.to_thread(run.card.remove)
                await _wait(run.agent, State.IDLE)
                # the finger, on the card inserted again
                gate.open.set()
                await asyncio.to_thread(run.card.insert)
                await _wait(run.agent, State.PICKER)
                await run.iface.call_choose_project("census-2021")  # type: ignore[attr-defined]
                await _wait(run.agent, State.RUNNING)
                keep_client(run.agent)
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
    assert homes, "no session client's home was seen: the test would prove nothing there"
    haystacks: dict[str, bytes] = {
        "log records": "\n".join(records).encode(),
        "client output": "\n".join(kept_client_output).encode(),
        **homes,
    }
    # everything the run wrote: state, CRL cache, configuration, bus... (not the card itself)
    snapshot(tmp_path, haystacks, skip=(tmp_path / "card.json",))
    assert any("/state/" in where or "/crl/" in where for where in haystacks)
    cores = [
        where for where in haystacks
        if Path(where).name == "core" or Path(where).name.startswith("core.")
    ] + [str(p) for p in Path.cwd().glob("core*") if p.is_file()]  # fmt: skip
    assert not cores, f"core dumps were written: {cores}"
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


def test_every_encoding_is_found_inside_a_longer_blob() -> None:
    # the search above is only as good as these forms: a secret at any offset of a
    # longer hex or base64 blob, and its text in UTF-16LE, must be found
    secret = bytes(range(7, 27))
    for offset in range(6):
        blob = b"\x01" * offset + secret + b"\x02" * 5
        for where in (
            blob,
            blob.hex().encode(),
            blob.hex().upper().encode(),
            base64.b64encode(blob),
            base64.urlsafe_b64encode(blob),
        ):
            assert any(form in where for form in encodings(secret)), (offset, where)
    pin = b"123456"
    assert any(f in "PIN=123456".encode("utf-16-le") for f in encodings(pin))
    assert any(f in b"12:34:56:78:9A:BC" for f in encodings(bytes.fromhex("123456789abc")))
