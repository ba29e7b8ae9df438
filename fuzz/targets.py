"""The fuzz targets: each takes arbitrary bytes and may only raise :class:`SdboxError`.

Anything else (an IndexError, a KeyError, a crash in a library) is a bug:
atheris reports it with the input, which then becomes a regression test in
tests/unit/test_fuzz_regressions.py.
"""

from __future__ import annotations

import contextlib
import functools
import json
import tempfile
import threading
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes

# Every module under test is imported here, at the top, never inside a target:
# fuzz.run imports this module inside atheris.instrument_imports, and only
# modules first imported there get coverage feedback (a module imported
# later, inside a target, runs blind; tests/unit/test_fuzz_corpus.py checks).
from sdbox.agent.config import AgentConfig
from sdbox.biometric import compact, matcher, record, synth  # noqa: F401  (synth: in issue_card)
from sdbox.biometric.sensor import to_probe
from sdbox.broker.bioenrol import BioEnrolment
from sdbox.broker.cards import CardManagement
from sdbox.broker.server import Broker
from sdbox.centre.bioauth import Authorisation
from sdbox.config import load_section
from sdbox.errors import SdboxError
from sdbox.renewal import cmp
from sdbox.smartcard import profile
from sdbox.smartcard import tlv as tlv_codec
from sdbox.smartcard.apdu import decode_command
from sdbox.smartcard.atr import parse_atr
from sdbox.smartcard.biosso import BioSsoSession
from sdbox.smartcard.catalogue import verify_catalogue
from sdbox.smartcard.directory import parse_directory_tbs, parse_signed_directory
from sdbox.smartcard.emulator.applet import PivApplet
from sdbox.smartcard.emulator.profiles import issue_card, load_profile, parse_profile
from sdbox.smartcard.errors import CardNotResponding
from sdbox.smartcard.variants import classify, gather
from sdbox.trust.loaders import load_certificate, load_certificates, load_crl
from sdbox.trust.pki import Issued, Pki
from sdbox.trust.validate import Purpose, validate

_STATE: dict[str, object] = {}


def _applet() -> object:
    """One emulated card for the applet and client targets (issued once)."""
    if "applet" not in _STATE:
        pki = Pki.init(Path(tempfile.mkdtemp(prefix="sdbox-fuzz-")) / "pki")
        _STATE["state"] = issue_card(load_profile("demo"), pki)
        _STATE["applet"] = PivApplet(_STATE["state"])  # type: ignore[arg-type]
    return _STATE["applet"]


def tlv(data: bytes) -> None:
    tlv_codec.parse_list(data)
    decode_command(data)


def card_objects(data: bytes) -> None:
    for parse in (profile.Discovery.parse, profile.chuid_guid, profile.parse_key_history,
                  profile.parse_bit_group, profile.decode_certificate):  # fmt: skip
        try:
            parse(data)
        except SdboxError:
            pass


def directory(data: bytes) -> None:
    with contextlib.suppress(SdboxError):  # the part a centre is asked to sign
        parse_directory_tbs(data)
    signed = parse_signed_directory(data)
    signed.verify(card_guid=bytes(16), validate_signer=lambda _s, _i: None)


def project_catalogue(data: bytes) -> None:
    """The site's project catalogue as a box reads it (one-project cards), signer trusted."""
    verify_catalogue(data, lambda _s, _i: None)


def applet(data: bytes) -> None:
    """The card side: every command gets a status word, nothing raises."""
    card = _applet()
    assert isinstance(card, PivApplet)
    card.state.path = None  # never write the fuzzed card to disk
    answer = card.process(data)
    if len(answer) < 2:
        raise AssertionError("the card answered without a status word")


def encode_answers(answers: list[bytes]) -> bytes:
    """The client target's input: each card answer (data + SW) behind its 2-byte length."""
    return b"".join(len(a).to_bytes(2, "big") + a for a in answers)


def _split_answers(data: bytes) -> list[bytes]:
    """The inverse of :func:`encode_answers`; a short tail is one last (truncated) answer."""
    answers, pos = [], 0
    while pos < len(data):
        length = int.from_bytes(data[pos : pos + 2], "big")
        answers.append(data[pos + 2 : pos + 2 + length])
        pos += 2 + length
    return answers or [b""]


class _Replay:
    """A card that answers with the fuzzer's bytes (split into answers by their lengths)."""

    def __init__(self, data: bytes) -> None:
        # length-prefixed, so that a recorded session (fuzz/seeds.py) replays answer by answer
        self.chunks = _split_answers(data)

    def send_and_receive(self, apdu: bytes) -> tuple[bytes, int]:
        chunk = self.chunks.pop(0) if self.chunks else b"\x90\x00"
        if len(chunk) < 2:
            raise CardNotResponding("no status word")
        return chunk[:-2], int.from_bytes(chunk[-2:], "big")

    def close(self) -> None:
        pass


def client(data: bytes) -> None:
    """The box facing a card that answers garbage."""
    session = BioSsoSession(_Replay(data))
    session.read_summary(lambda _s, _i: None)
    session.tries_left()
    session.certificate(0x82)


def _t0_applet() -> PivApplet:
    """A T=0 chip without extended length (the biosso-t0 variant), issued once."""
    if "t0" not in _STATE:
        pki = Pki.init(Path(tempfile.mkdtemp(prefix="sdbox-fuzz-")) / "pki")
        _STATE["t0"] = PivApplet(issue_card(load_profile("biosso-t0"), pki))
    card = _STATE["t0"]
    assert isinstance(card, PivApplet)
    return card


def encode_variant_input(atr: bytes, answers: list[bytes]) -> bytes:
    """The card-variant target's input: the ATR behind its length byte, then the answers."""
    return bytes((len(atr),)) + atr + encode_answers(answers)


def card_variant(data: bytes) -> None:
    """Identification facing any ATR and any answers; a T=0, chaining-only chip facing any command."""
    size = data[0] if data else 0
    atr, answers = data[1 : 1 + size], data[1 + size :]
    with contextlib.suppress(SdboxError):
        parse_atr(atr)
    with contextlib.suppress(SdboxError):  # a contradiction is a typed refusal
        classify(gather(BioSsoSession.for_atr(_Replay(answers), atr), atr))
    card = _t0_applet()
    card.state.path = None
    if len(card.process(answers)) < 2:
        raise AssertionError("the T=0 card answered without a status word")


def profile_toml(data: bytes) -> None:
    parse_profile(data.decode("utf-8", "replace"), source="fuzz")


def agent_config(data: bytes) -> None:
    try:
        raw = tomllib.loads(data.decode("utf-8", "replace"))
    except tomllib.TOMLDecodeError:
        return  # the loader turns this into a ConfigError (tested in unit tests)
    load_section(AgentConfig, raw, "fuzz.toml")


def biometric(data: bytes) -> None:
    for parse in (compact.decode, record.decode_record, to_probe):
        try:
            parse(data)
        except SdboxError:
            pass
    half = len(data) // 2
    matcher.score(data[:half] or b"\x00\x00\x00", data[half:] or b"\x00\x00\x00")


def certificates(data: bytes) -> None:
    for load in (load_certificate, load_certificates, load_crl):
        try:
            load(data)
        except SdboxError:
            pass


# Extensions the chain target damages (certificates), and those of a CRL.
_CERT_EXTENSIONS = (
    x509.oid.ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
    x509.oid.ExtensionOID.SUBJECT_KEY_IDENTIFIER,
    x509.oid.ExtensionOID.BASIC_CONSTRAINTS,
    x509.oid.ExtensionOID.NAME_CONSTRAINTS,
    x509.oid.ExtensionOID.KEY_USAGE,
    x509.oid.ExtensionOID.EXTENDED_KEY_USAGE,
    x509.oid.ExtensionOID.SUBJECT_ALTERNATIVE_NAME,
    x509.oid.ExtensionOID.CERTIFICATE_POLICIES,
    x509.oid.ExtensionOID.POLICY_CONSTRAINTS,
    x509.oid.ExtensionOID.POLICY_MAPPINGS,
    x509.oid.ExtensionOID.INHIBIT_ANY_POLICY,
    x509.oid.ExtensionOID.CRL_DISTRIBUTION_POINTS,
    x509.oid.ExtensionOID.AUTHORITY_INFORMATION_ACCESS,
    x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"),  # one nobody knows
)
_CRL_EXTENSIONS = (
    x509.oid.ExtensionOID.CRL_NUMBER,
    x509.oid.ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
    x509.oid.ExtensionOID.ISSUING_DISTRIBUTION_POINT,
    x509.oid.ExtensionOID.DELTA_CRL_INDICATOR,
    x509.oid.ExtensionOID.FRESHEST_CRL,
    x509.oid.ExtensionOID.AUTHORITY_INFORMATION_ACCESS,
    x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"),
)
# Wrappers the fuzzer picks from, so that it reaches well-formed DER with the
# wrong content (an AKI with a serial but no issuer) and not only garbage.
_TAGS = (None, 0x30, 0x04, 0x03, 0x02, 0x01, 0x06, 0x16, 0x80, 0x81, 0x82, 0x87, 0xA0, 0xA1, 0xA4)


def _der(tag: int | None, body: bytes) -> bytes:
    if tag is None:
        return body
    size = len(body)
    if size < 0x80:
        return bytes([tag, size]) + body
    length = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(length)]) + length + body


def _signer(issued: Issued) -> CertificateIssuerPrivateKeyTypes:
    key = issued.key
    assert isinstance(key, ec.EllipticCurvePrivateKey)  # the development PKI's keys
    return key


def reissued(
    cert: x509.Certificate,
    signer: CertificateIssuerPrivateKeyTypes,
    extension: x509.ObjectIdentifier,
    value: bytes,
    *,
    critical: bool,
) -> x509.Certificate:
    """``cert`` signed again by ``signer`` with ``extension``'s value replaced by raw bytes.

    Subject, issuer, key and serial stay, so the certificates around it
    still chain to it: only the one extension is damaged.
    """
    builder = (
        x509.CertificateBuilder().subject_name(cert.subject).issuer_name(cert.issuer)
        .public_key(cert.public_key()).serial_number(cert.serial_number)
        .not_valid_before(cert.not_valid_before_utc).not_valid_after(cert.not_valid_after_utc)
    )  # fmt: skip
    for ext in cert.extensions:
        if ext.oid != extension:
            builder = builder.add_extension(ext.value, ext.critical)
    builder = builder.add_extension(x509.UnrecognizedExtension(extension, value), critical)
    return builder.sign(signer, hashes.SHA384())


@dataclass(frozen=True)
class _TrustBench:
    """One development PKI, a project credential and fresh CRLs, made once per process."""

    pki: Pki
    at: datetime
    leaf: x509.Certificate
    root_crl: x509.CertificateRevocationList
    project_crl: x509.CertificateRevocationList


def _trust_bench() -> _TrustBench:
    if "trust" not in _STATE:
        t0 = datetime(2030, 1, 1, tzinfo=UTC)
        pki = Pki.init(Path(tempfile.mkdtemp(prefix="sdbox-fuzz-trust-")) / "pki", now=t0)
        at = t0 + timedelta(days=30)
        leaf = pki.issue_project(
            "alpha", ec.generate_private_key(ec.SECP256R1()).public_key(), subject_cn="Ada",
            not_before=t0,
        )  # fmt: skip
        _STATE["trust"] = _TrustBench(
            pki, at, leaf, pki.crl("root", now=at), pki.crl("project-ca", now=at)
        )
    bench = _STATE["trust"]
    assert isinstance(bench, _TrustBench)
    return bench


def trust_chain(data: bytes) -> None:
    """validate() with one extension of the anchor, the intermediate, the leaf or a CRL damaged.

    Layout: byte 0 picks the place (low two bits: anchor, intermediate, leaf,
    the intermediate's CRL), criticality (bit 2) and the purpose (bit 3);
    byte 1 the extension; byte 2 two DER wrappers (one per nibble) put around
    the rest, the raw value.
    """

    if len(data) < 3:
        return
    bench = _trust_bench()
    pki, leaf, at = bench.pki, bench.leaf, bench.at
    place, critical, path_only = data[0] & 3, bool(data[0] & 4), bool(data[0] & 8)
    outer, inner = _TAGS[(data[2] >> 4) % len(_TAGS)], _TAGS[(data[2] & 15) % len(_TAGS)]
    value = _der(outer, _der(inner, data[3:]))
    anchors, intermediates = [pki.root.cert], pki.intermediates
    project_crl = bench.project_crl
    cert_ext = _CERT_EXTENSIONS[data[1] % len(_CERT_EXTENSIONS)]
    try:  # building the damaged object is the harness, not the code under test
        if place == 0:
            anchors = [reissued(pki.root.cert, _signer(pki.root), cert_ext, value, critical=critical)]
        elif place == 1:
            ca = reissued(pki.project_ca.cert, _signer(pki.root), cert_ext, value, critical=critical)
            intermediates = [ca if c == pki.project_ca.cert else c for c in intermediates]
        elif place == 2:
            leaf = reissued(leaf, _signer(pki.project_ca), cert_ext, value, critical=critical)
        else:
            crl_ext = _CRL_EXTENSIONS[data[1] % len(_CRL_EXTENSIONS)]
            builder = (
                x509.CertificateRevocationListBuilder().issuer_name(pki.project_ca.cert.subject)
                .last_update(at).next_update(at + timedelta(days=1))
                .add_extension(x509.UnrecognizedExtension(crl_ext, value), critical)
            )  # fmt: skip
            if crl_ext != x509.oid.ExtensionOID.CRL_NUMBER:
                builder = builder.add_extension(x509.CRLNumber(len(data)), critical=False)
            project_crl = builder.sign(_signer(pki.project_ca), hashes.SHA384())
    except (ValueError, TypeError):
        return
    validate(
        leaf, intermediates, anchors, at=at,
        purpose=Purpose.PATH if path_only else Purpose.PROJECT,
        crls=[bench.root_crl, project_crl], project=None if path_only else "alpha",
    )  # fmt: skip


def broker_request(data: bytes) -> None:
    """The broker facing arbitrary JSON requests (before any certificate check can pass)."""
    try:
        request = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return
    if not isinstance(request, dict):
        return
    broker = _STATE.get("broker")
    if broker is None:
        broker = Broker.__new__(Broker)
        broker.config = type(
            "C", (), {"bubbles": {}, "exchange_lifetime_s": 30, "credential_lifetime_s": 60}
        )()
        broker._exchanges = {}

        broker._lock = threading.Lock()
        _STATE["broker"] = broker
    assert isinstance(broker, Broker)
    for step in (broker.challenge, broker.credential):
        try:
            step(request)
        except SdboxError:
            pass


def card_management(data: bytes) -> None:
    """The centre's card management (renewal) facing arbitrary JSON requests."""

    try:
        request = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return
    if not isinstance(request, dict):
        return
    cards = _STATE.get("cards")
    if cards is None:
        work = Path(tempfile.mkdtemp(prefix="sdbox-fuzz-cards-"))
        register = work / "cards.json"
        # one known card (GUID of zeros), so that requests for it get past the register
        register.write_text(
            json.dumps(
                {"00" * 16: {"management_key": "00" * 16, "holder_certificate_sha256": "00" * 32}}
            )
        )
        cards = CardManagement(
            register=register, directory_pki=work, anchors=[_cmp_signer()], intermediates=[],
            store=None, window=timedelta(days=30), lifetime_s=30,  # type: ignore[arg-type]
        )  # fmt: skip
        _STATE["cards"] = cards
    assert isinstance(cards, CardManagement)
    for step in (cards.open, cards.authenticate, cards.witness, cards.response, cards.prove,
                 cards.directory):  # fmt: skip
        try:
            step(request)
        except SdboxError:
            pass


def remote_enrolment(data: bytes) -> None:
    """Remote enrolment: the authorisation's bytes as the box decodes them (after the
    operator's signature), and the centre's requests (begin, status, finish) on arbitrary JSON."""
    try:
        Authorisation.decode(data)
    except SdboxError:
        pass
    try:
        request = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return
    if not isinstance(request, dict):
        return
    bio = _STATE.get("bio")
    if bio is None:
        work = Path(tempfile.mkdtemp(prefix="sdbox-fuzz-bio-"))
        # one live authorisation for the GUID of zeros, bound, so that requests reach its checks
        (work / "register.json").write_text(json.dumps({"a" * 16: {
            "id": "a" * 16, "card_guid": "00" * 16, "box_id": "fuzz-box", "fingers": ["primary"],
            "not_before": "2026-01-01T00:00:00+00:00", "not_after": "2099-01-01T00:00:00+00:00",
            "operator_key": "nobody", "operator": "Fuzz", "state": "writing",
            "created": "2026-01-01T00:00:00+00:00", "wrong_codes": 0, "code": "000000",
            "tbs_sha256": "00" * 32, "box_certificate": _cmp_signer().public_bytes(
                serialization.Encoding.DER).hex(),
        }}))  # fmt: skip
        bio = BioEnrolment(register=work / "register.json", operators=work, anchors=[_cmp_signer()],
                           intermediates=[], store=None)  # type: ignore[arg-type]  # fmt: skip
        _STATE["bio"] = bio
    assert isinstance(bio, BioEnrolment)
    for step in (bio.begin, bio.status, bio.finish):
        try:
            step(request)
        except SdboxError:
            pass


@functools.cache
def _cmp_signer() -> x509.Certificate:
    """Some CA certificate to check an answer's protection against (never matches)."""

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "fuzz CA")])
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(1)
        .not_valid_before(now).not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )  # fmt: skip


def cmp_answer(data: bytes) -> None:
    """A CA's CMP answer as the box parses it, then its protection check."""
    cmp.parse_answer(data).verify_protection(_cmp_signer())


TARGETS: dict[str, Callable[[bytes], None]] = {
    "tlv": tlv,
    "card-objects": card_objects,
    "directory": directory,
    "project-catalogue": project_catalogue,
    "applet": applet,
    "client": client,
    "card-variant": card_variant,
    "card-profile": profile_toml,
    "agent-config": agent_config,
    "biometric": biometric,
    "certificates": certificates,
    "trust-chain": trust_chain,
    "broker-request": broker_request,
    "card-management": card_management,
    "remote-enrolment": remote_enrolment,
    "cmp-answer": cmp_answer,
}


def guarded(target: Callable[[bytes], None]) -> Callable[[bytes], None]:
    """Typed errors are the expected outcome of bad input; anything else propagates."""

    def run(data: bytes) -> None:
        try:
            target(data)
        except SdboxError:
            pass

    return run
