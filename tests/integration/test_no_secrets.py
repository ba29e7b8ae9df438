"""After full flows with the reference broker, no secret appears anywhere the box writes or shows.

Secrets: the PIN, the finger template, the one-time credentials as the
broker issued them, the ECDH shared secrets the card derived (the agent's
own possession proof and the broker protocol's proof), the card's private
keys and its management key. Places: every log record the agent, the
session layer, the card layer and the credential client produce (captured
at TRACE, APDU trace included, with the structured fields that go to the
journal); the session clients' kept output, command lines, environments and
private homes while they run (the PIN flow's and the finger flow's); every
file the agent's run left in its work directory (state, CRL cache,
configuration; the card emulator's own state excepted: that is the card);
the greeter's command line, environment, output and home, and its memory
(the PIN is typed into it, so there only the other secrets). Encodings: see
:func:`secret_scan.encodings`.

Core dumps: a crash of a client holding its credential leaves none (its
reaper sets the core limit to 0, soft and hard), wherever the kernel's
core_pattern would put it; a stand-in holder that may dump shows that the
same search finds the credential in a dump. The negative controls turn off
the redaction of VERIFY data and of GENERAL AUTHENTICATE answers in the APDU
trace, and the same scan must then fail.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sdbox.agent.api import State
from sdbox.logging import TRACE
from sdbox.smartcard import connection
from sdbox.smartcard.apdu import Apdu, Ins
from sdbox.smartcard.biosso import BioSsoSession
from sdbox.smartcard.emulator.profiles import seeded_template
from sdbox.smartcard.profile import pad_pin
from sdbox.trust.pki import Pki
from tests.integration import test_agent
from tests.integration.agent_env import BrokerEnv, reference_broker
from tests.integration.agent_env import card_profile as profile_of
from tests.integration.greeter_env import GREETER_USER, greeter_on_x11, missing, window_shown
from tests.integration.secret_scan import (
    DumpPlaces,
    Finding,
    Secrets,
    core_limit,
    descendants,
    encodings,
    find,
    holder_of,
    process_memory,
    process_texts,
    snapshot,
    wait_until_dead,
)
from tests.integration.session_servers import xvfb
from tests.integration.test_agent import Bubbles, _wait, _wait_for, bubbles, running_agent

__all__ = ["bubbles"]
PIN = "123456"
GREETER_LOG = Path("build/greeter-screenshots/greeter-x11.log")  # where greeter_on_x11 keeps it


@pytest.fixture(scope="module")
def broker(
    pki: Pki, bubbles: Bubbles, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BrokerEnv]:
    """The reference broker provisioning this module's bubbles."""
    work = tmp_path_factory.mktemp("broker")
    with reference_broker(work, pki, dict(bubbles.servers), bubbles.ports) as env:
        yield env


@pytest.fixture(autouse=True)
def random_management_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """Cards with a random management key, as real ones have.

    The test profile's ``0011...EEFF`` is a byte pattern that GTK's memory
    holds anyway (a constant table): searching for it would find that.
    """

    def card_profile(ports: dict[str, int]) -> str:
        key = secrets.token_hex(16)
        return profile_of(ports).replace('"00112233445566778899aabbccddeeff"', f'"{key}"', 1)

    monkeypatch.setattr(test_agent, "card_profile", card_profile)


class Issued:
    """What the broker handed out and what the card derived by ECDH, as they happen."""

    def __init__(self, broker: BrokerEnv, monkeypatch: pytest.MonkeyPatch) -> None:
        self.credentials: list[bytes] = []
        self.shared: list[bytes] = []
        handout = broker.server.broker.credential
        derive = BioSsoSession.ecdh

        def credential(request: dict[str, Any]) -> dict[str, Any]:
            answer: dict[str, Any] = handout(request)
            self.credentials.append(str(answer["secret"]).encode())
            return answer

        def ecdh(session: BioSsoSession, slot: int, peer: ec.EllipticCurvePublicKey) -> bytes:
            shared = derive(session, slot, peer)
            self.shared.append(shared)
            return shared

        # the HTTP handler looks the step up on the broker at each request
        monkeypatch.setattr(broker.server.broker, "credential", credential)
        monkeypatch.setattr(BioSsoSession, "ecdh", ecdh)


class GatedSensor:
    """Gives the holder's finger only once ``open`` is set (the PIN goes first)."""

    def __init__(self) -> None:
        self.open = asyncio.Event()

    async def capture(self) -> bytes:
        await self.open.wait()
        return seeded_template(1001)


@contextlib.contextmanager
def trace_records() -> Iterator[list[str]]:
    """Every log record of every logger at TRACE, with its structured fields."""
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(self.format(record) + " " + repr(record.__dict__))

    root = logging.getLogger()
    handler, old_level = Keep(level=TRACE), root.level
    root.addHandler(handler)
    root.setLevel(TRACE)
    try:
        yield records
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


@dataclass
class Seen:
    """What a run left to search."""

    secrets: Secrets = field(default_factory=dict)
    haystacks: dict[str, bytes] = field(default_factory=dict)
    homes: list[str] = field(default_factory=list)  # the flows whose client home was searched
    greeter_memory: bytes = b""

    def keep_client(self, agent: Any, flow: str) -> None:
        """The running client's home, command line, environment and output (and its reaper's)."""
        client = agent._session._client
        home = Path(os.readlink(f"/proc/{client.pid}/cwd"))
        before = len(self.haystacks)
        snapshot(home, self.haystacks)
        if len(self.haystacks) > before:
            self.homes.append(flow)
        self.haystacks.update(process_texts(client.pid, f"{flow}: client"))
        self.haystacks.update(process_texts(client.reaper_pid, f"{flow}: reaper"))
        self.haystacks[f"{flow}: client output"] = "\n".join(client.tail.lines()).encode()


def _keys(display: str, *keys: str) -> None:
    subprocess.run(
        ["xdotool", "key", "--delay", "80", *keys],
        env={"DISPLAY": display, "PATH": "/usr/bin:/bin"}, check=True, timeout=30,
    )  # fmt: skip


def _greeter_pid(runuser: subprocess.Popen[bytes]) -> int:
    """The greeter's Python process (runuser and env carry its arguments too)."""
    for pid in descendants(runuser.pid):
        with contextlib.suppress(OSError):
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if Path(argv[0].decode()).name.startswith("python") and b"sdbox.ui" in argv:
                return pid
    raise AssertionError("the greeter's process was not found under runuser")


def run_flows(
    pki: Pki, bubbles: Bubbles, broker: BrokerEnv, free_reader: int, tmp_path: Path,
    issued: Issued, *, greeter: bool,
) -> Seen:  # fmt: skip
    """PIN (typed into the greeter when ``greeter``), switch, card out, finger: what it left."""
    seen = Seen()
    bus_dir = Path(tempfile.mkdtemp(prefix="sdbox-secrets-bus-"))
    bus_dir.chmod(0o755)  # the greeter's user must reach the bus socket

    async def scenario() -> None:
        gate = GatedSensor()
        async with running_agent(
            pki, bubbles, free_reader, tmp_path, sensor_port=gate, broker=broker, bus_dir=bus_dir
        ) as run, contextlib.AsyncExitStack() as stack:  # fmt: skip
            await _wait(run.agent, State.PICKER)
            runuser = display = None
            if greeter:
                display = stack.enter_context(xvfb())
                runuser = stack.enter_context(greeter_on_x11(run.bus_address, display))
                await _wait_for(lambda: window_shown(display), timeout=30)
            # the PIN, where the project allows it: typed, over D-Bus, to the card
            await run.iface.call_choose_project("health-cohort")  # type: ignore[attr-defined]
            await _wait(run.agent, State.VERIFYING)
            if display is not None:
                await asyncio.sleep(1.5)  # the PIN screen takes the focus
                await asyncio.to_thread(_keys, display, *PIN, "Return")
            else:
                await run.iface.call_submit_pin(PIN)  # type: ignore[attr-defined]
            await _wait(run.agent, State.RUNNING)
            seen.keep_client(run.agent, "PIN flow (health-cohort)")
            await run.iface.call_switch("census-2021")  # type: ignore[attr-defined]
            await _wait(run.agent, State.CONNECTING)
            await _wait(run.agent, State.RUNNING)
            seen.keep_client(run.agent, "switch (census-2021)")
            await asyncio.to_thread(run.card.remove)
            await _wait(run.agent, State.IDLE)
            # the finger, on the card inserted again
            gate.open.set()
            await asyncio.to_thread(run.card.insert)
            await _wait(run.agent, State.PICKER)
            await run.iface.call_choose_project("census-2021")  # type: ignore[attr-defined]
            await _wait(run.agent, State.RUNNING)
            seen.keep_client(run.agent, "finger flow (census-2021)")
            if runuser is not None:
                pid = _greeter_pid(runuser)
                seen.haystacks.update(process_texts(pid, "greeter"))
                seen.greeter_memory = await asyncio.to_thread(process_memory, pid)
            assert run.card.state.management_key != bytes.fromhex(
                "00112233445566778899aabbccddeeff"
            )
            seen.secrets.update(
                keys=[_key_bytes(k) for k in run.card.state.keys.values()],
                management=[run.card.state.management_key],
            )

    try:
        with trace_records() as records:
            asyncio.run(scenario())
    finally:
        shutil.rmtree(bus_dir, ignore_errors=True)
    seen.secrets.update({
        "PIN": [PIN.encode(), pad_pin(PIN)],
        "finger template": [seeded_template(1001)],
        "one-time credential": list(issued.credentials),
        "ECDH shared secret": list(issued.shared),
    })  # fmt: skip
    seen.haystacks["log records"] = "\n".join(records).encode()
    if greeter:
        seen.haystacks["greeter output"] = GREETER_LOG.read_bytes()
        snapshot(Path(pwd.getpwnam(GREETER_USER).pw_dir), seen.haystacks)  # what it wrote home
    # everything the run wrote: state, CRL cache, configuration... (not the card itself)
    snapshot(tmp_path, seen.haystacks, skip=(tmp_path / "card.json",))
    return seen


def _key_bytes(key: object) -> bytes:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.private_numbers().private_value.to_bytes((key.curve.key_size + 7) // 8, "big")
    return key.private_bytes(  # type: ignore[attr-defined,no-any-return]
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )[-64:]


def _sessions_and_proofs(seen: Seen, issued: Issued, sessions: int) -> None:
    """The run really did what makes the search mean something."""
    assert len(issued.credentials) == sessions, (
        "the broker did not issue one credential per session"
    )
    # per session: the agent's possession proof, then the broker protocol's proof
    assert len(issued.shared) == 2 * sessions
    assert len(set(issued.shared)) == len(issued.shared), "the ECDH secrets must be fresh"
    log = seen.haystacks["log records"].decode()
    assert "> 002000" in log, "no VERIFY in the APDU trace"
    assert "> 0087" in log, "no GENERAL AUTHENTICATE in the APDU trace"
    assert any("/state/" in where or "/crl/" in where for where in seen.haystacks)


@pytest.mark.skipif(missing() is not None, reason=str(missing()))
@pytest.mark.skipif(shutil.which("xdotool") is None, reason="xdotool is not installed (make setup)")
def test_no_secret_in_logs_state_clients_or_greeter(
    pki: Pki, bubbles: Bubbles, broker: BrokerEnv, free_reader: int, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    issued = Issued(broker, monkeypatch)
    seen = run_flows(pki, bubbles, broker, free_reader, tmp_path, issued, greeter=True)
    _sessions_and_proofs(seen, issued, sessions=3)
    assert seen.homes == [
        "PIN flow (health-cohort)", "switch (census-2021)", "finger flow (census-2021)"
    ], "a session client's home was not seen: the test would prove nothing there"  # fmt: skip
    assert any(w.startswith("greeter environ") for w in seen.haystacks), "the greeter was not seen"
    # its memory was read: what it showed (the projects' names) is there
    assert b"Census microdata 2021" in seen.greeter_memory, "the greeter's memory was not read"
    assert find(seen.secrets, seen.haystacks) == []
    # the greeter is where the PIN is typed; nothing else may ever reach it
    others = {name: values for name, values in seen.secrets.items() if name != "PIN"}
    assert find(others, {"greeter memory": seen.greeter_memory}) == []


def _trace_shows_data(command: Apdu) -> str:
    return (
        f"{command.cla:02X}{command.ins:02X}{command.p1:02X}{command.p2:02X} {command.data.hex()}"
    )


def test_the_scan_fails_with_verify_data_in_the_trace(
    pki: Pki, bubbles: Bubbles, broker: BrokerEnv, free_reader: int, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """Negative control: VERIFY's data (the PIN, the finger template) logged in clear is found."""
    redacted = connection.redacted

    def verify_in_clear(command: Apdu) -> str:
        return _trace_shows_data(command) if command.ins == Ins.VERIFY else redacted(command)

    monkeypatch.setattr(connection, "redacted", verify_in_clear)
    issued = Issued(broker, monkeypatch)
    seen = run_flows(pki, bubbles, broker, free_reader, tmp_path, issued, greeter=False)
    _sessions_and_proofs(seen, issued, sessions=3)
    found = find(seen.secrets, seen.haystacks)
    assert Finding("PIN", "log records") in found
    assert Finding("finger template", "log records") in found
    assert {f.secret for f in found} == {"PIN", "finger template"}


def test_the_scan_fails_with_general_authenticate_answers_in_the_trace(
    pki: Pki, bubbles: Bubbles, broker: BrokerEnv, free_reader: int, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """Negative control: the ECDH shared secrets logged in clear are found."""
    monkeypatch.setattr(connection, "redacted_response", lambda _command, data: data.hex().upper())
    issued = Issued(broker, monkeypatch)
    seen = run_flows(pki, bubbles, broker, free_reader, tmp_path, issued, greeter=False)
    _sessions_and_proofs(seen, issued, sessions=3)
    assert find(seen.secrets, seen.haystacks) == [Finding("ECDH shared secret", "log records")]
    # every one of them, not just one
    log = seen.haystacks["log records"]
    assert all(any(form in log for form in encodings(s)) for s in issued.shared)


def test_a_crashing_client_leaves_no_dump_of_its_credential(
    pki: Pki, bubbles: Bubbles, broker: BrokerEnv, free_reader: int, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    issued = Issued(broker, monkeypatch)
    limits: dict[str, tuple[str, str]] = {}
    dumps: dict[str, bytes] = {}
    places: list[DumpPlaces] = []

    def known_dumps() -> set[str]:
        return {where for place in places for where in place.dumps()}

    async def scenario() -> None:
        async with running_agent(pki, bubbles, free_reader, tmp_path, broker=broker) as run:
            await _wait(run.agent, State.PICKER)
            await run.iface.call_choose_project("census-2021")  # type: ignore[attr-defined]
            await _wait(run.agent, State.RUNNING)
            client = run.agent._session._client  # type: ignore[union-attr]
            pid, reaper = client.pid, client.reaper_pid
            limits.update(client=core_limit(pid), reaper=core_limit(reaper))
            for process in (pid, reaper):  # where each would dump: its own working directory
                places.append(DumpPlaces.for_cwd(Path(os.readlink(f"/proc/{process}/cwd"))))
            places.append(DumpPlaces.for_cwd(Path.cwd()))
            before = known_dumps()
            # The reaper removes the client's home (its working directory, where a
            # relative core_pattern writes) once the client is gone: hold it until
            # the dump, if any, is complete and searched.
            os.kill(reaper, signal.SIGSTOP)
            try:
                os.kill(pid, signal.SIGSEGV)
                await asyncio.to_thread(wait_until_dead, pid)
                dumps.update(
                    {w: d for p in places for w, d in p.dumps().items() if w not in before}
                )
            finally:
                os.kill(reaper, signal.SIGCONT)
            # the researcher is told and brought back to the picker
            await _wait(run.agent, State.PICKER)
            assert run.agent.snapshot.message, "the crash was not reported"
            await asyncio.to_thread(wait_until_dead, reaper)  # it re-raised the signal on itself
            dumps.update({w: d for p in places for w, d in p.dumps().items() if w not in before})

    asyncio.run(scenario())
    assert len(issued.credentials) == 1, "the client held no credential: the test proves nothing"
    assert all(place.observable for place in places), (
        f"core_pattern {places[0].pattern!r} pipes dumps where this test cannot look"
    )
    assert find({"one-time credential": issued.credentials}, dumps) == []
    assert not dumps, f"core dumps were written: {sorted(dumps)}"
    # and none can be: the limit is 0 for the client and its reaper, and neither can raise it
    assert limits == {"client": ("0", "0"), "reaper": ("0", "0")}


def test_the_dump_search_finds_a_credential_a_crash_dumped(tmp_path: Path) -> None:
    """Negative control: where the dump check looks, a holder that may dump does leave one."""
    credential = secrets.token_urlsafe(18).encode()
    workdir = tmp_path / "holder"
    workdir.mkdir()
    place = DumpPlaces.for_cwd(workdir)
    if not place.observable:
        pytest.skip(f"core_pattern {place.pattern!r} pipes dumps where this test cannot look")
    before = set(place.dumps())
    holder = holder_of(credential, workdir, may_dump=True)
    holder.send_signal(signal.SIGSEGV)
    holder.wait()
    dumps = {w: d for w, d in place.dumps().items() if w not in before}
    assert dumps, "the kernel wrote no dump where the check looks"
    assert {f.secret for f in find({"credential": [credential]}, dumps)} == {"credential"}
    for path in dumps:
        Path(path).unlink()


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
            assert find({"s": [secret]}, {"blob": where}) == [Finding("s", "blob")], (offset, where)
    pin = b"123456"
    assert any(f in "PIN=123456".encode("utf-16-le") for f in encodings(pin))
    assert any(f in b"12:34:56:78:9A:BC" for f in encodings(bytes.fromhex("123456789abc")))
