"""The fuzz targets' seed corpora (``python -m fuzz.seeds`` rewrites fuzz/corpus/).

Each seed is a valid input of one kind, made by the project's own encoders
and emulator, so that the fuzzer starts from messages that get past the
first checks: the card's data objects and signed directory as the emulator
issues them, the APDUs the box's BIO SSO session sends and the answers the
emulated card gives (recorded in one session), synthetic templates, PKI
certificates and a CRL, the shipped card profile and agent configuration,
broker and card-management requests with the fields the box's clients send,
and CMP answers built with the box's own CMP header and protection code.

Keys and certificates are fresh on every run, so regenerated seeds differ
in those bytes; file names and kinds stay the same. `make fuzz` passes each
target's directory to libFuzzer as a read-only seed corpus
(tests/unit/test_fuzz_corpus.py checks that every target has one).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pyasn1.codec.der import decoder as der_decoder
from pyasn1_modules import rfc2459, rfc4210

from fuzz.targets import TARGETS, encode_answers, encode_variant_input
from sdbox.biometric import compact, synth
from sdbox.centre.bioauth import Authorisation
from sdbox.centre.protocol import b64
from sdbox.renewal import cmp
from sdbox.smartcard.biosso import BioSsoSession
from sdbox.smartcard.catalogue import CatalogueEntry, ProjectCatalogue, sign_catalogue
from sdbox.smartcard.directory import Protocol, SecondFactor, parse_signed_directory
from sdbox.smartcard.emulator.applet import PivApplet
from sdbox.smartcard.emulator.profiles import issue_card, load_profile
from sdbox.smartcard.emulator.state import CardState
from sdbox.smartcard.emulator.vpcd import build_atr
from sdbox.smartcard.profile import KeyRef, ObjectTag, decode_certificate
from sdbox.smartcard.variants import gather
from sdbox.trust.pki import Pki

CORPUS = Path(__file__).parent / "corpus"
_REPO = Path(__file__).parent.parent
GUID_OF_ZEROS = "00" * 16  # the one card fuzz.targets' card management knows


class _Recorder:
    """A connection to the emulated applet that keeps every command and answer."""

    def __init__(self, applet: PivApplet) -> None:
        self.applet = applet
        self.commands: list[bytes] = []
        self.answers: list[bytes] = []

    def send_and_receive(self, apdu: bytes) -> tuple[bytes, int]:
        answer = self.applet.process(apdu)
        self.commands.append(apdu)
        self.answers.append(answer)
        return answer[:-2], int.from_bytes(answer[-2:], "big")

    def close(self) -> None:
        pass


def _card(pki: Pki) -> CardState:
    # the demo card with one project: its directory (one bubble certificate) stays small
    demo = load_profile("demo")
    return issue_card(dataclasses.replace(demo, projects=demo.projects[:1]), pki)


def _session_seeds(state: CardState) -> dict[str, dict[str, bytes]]:
    """The client's session against the card: its commands (applet, tlv) and the answers (client)."""
    recorder = _Recorder(PivApplet(state))
    session = BioSsoSession(recorder)
    session.read_summary(lambda _s, _i: None)
    session.tries_left()
    session.certificate(0x82)  # the client target's own steps, in its order
    client = encode_answers(recorder.answers)
    probe = synth.impression(load_profile("demo").fingers[0].identity_seed, 1)
    session.piv.verify_finger(KeyRef.FINGER_PRIMARY, probe)
    applet = {f"command-{i:02d}": c for i, c in enumerate(dict.fromkeys(recorder.commands))}
    return {"applet": applet, "client": {"session": client}}


def _card_seeds(state: CardState) -> dict[str, dict[str, bytes]]:
    """The card's data objects as the emulator issued them (and the TLV inside them)."""
    objects = state.objects
    signed = objects[ObjectTag.DIRECTORY]
    return {
        "card-objects": {
            "discovery": objects[ObjectTag.DISCOVERY],
            "chuid": objects[ObjectTag.CHUID],
            "key-history": objects[ObjectTag.KEY_HISTORY],
            "bit-group": objects[ObjectTag.BIT_GROUP],
            "certificate-9a": objects[ObjectTag.AUTH_CERT],
        },
        "directory": {"signed": signed, "tbs": parse_signed_directory(signed).tbs},
        "tlv": {
            "bit-group": objects[ObjectTag.BIT_GROUP],
            "discovery": objects[ObjectTag.DISCOVERY],
            "key-history": objects[ObjectTag.KEY_HISTORY],
        },
    }


_VARIANT_SEEDS = ("biosso-t0", "biosso-chaining", "legacy-one-project", "biosso-pin-only")
_VARIANT_ANSWERS = 7  # SELECT and the small objects: the certificates would not fit in 8 KB


def _variant_seeds(pki: Pki) -> dict[str, bytes]:
    """Identification sessions of a few variants: the ATR and the first answers."""
    out = {}
    for name in _VARIANT_SEEDS:
        state = issue_card(load_profile(name), pki)
        atr = build_atr(state.transmission, extended=state.extended_length)
        recorder = _Recorder(PivApplet(state))
        gather(BioSsoSession.for_atr(recorder, atr), atr)
        out[name] = encode_variant_input(atr, recorder.answers[:_VARIANT_ANSWERS])
    return out


def _biometric_seeds() -> dict[str, bytes]:
    """Probe + reference pairs of equal length (the target splits its input in half)."""

    def pair(probe: bytes, reference: bytes) -> bytes:
        size = (
            min(len(probe), len(reference)) // compact.BYTES_PER_MINUTIA * compact.BYTES_PER_MINUTIA
        )
        return probe[:size] + reference[:size]

    return {
        "genuine-pair": pair(synth.impression(1001, 1), synth.enrolment_template(1001)),
        "impostor-pair": pair(synth.impression(1002, 1), synth.enrolment_template(1001)),
    }


def _certificate_seeds(pki: Pki, holder: x509.Certificate) -> dict[str, bytes]:
    pem, der = serialization.Encoding.PEM, serialization.Encoding.DER
    return {
        "holder.der": holder.public_bytes(der),
        "holder.pem": holder.public_bytes(pem),
        "chain.pem": pki.project_ca.cert.public_bytes(pem) + pki.root.cert.public_bytes(pem),
        "crl.der": pki.crl("project-ca").public_bytes(der),
    }


def _request_seeds(
    pki: Pki, state: CardState, holder: x509.Certificate
) -> dict[str, dict[str, bytes]]:
    """Requests with the fields the box's broker and card-management clients send."""
    der = serialization.Encoding.DER
    box = pki.issue_box(ec.generate_private_key(ec.SECP256R1()).public_key(), box_id="fuzz-box")
    project_der = decode_certificate(state.objects[ObjectTag.RETIRED_CERT_1])
    signature = b64(bytes(72))  # the length of a P-256 ECDSA signature; never checked this far

    def encode(request: dict[str, Any]) -> bytes:
        return json.dumps(request, separators=(",", ":")).encode()

    directory = state.objects[ObjectTag.DIRECTORY]
    first = load_profile("demo").projects[0]
    return {
        "broker-request": {
            "challenge": encode({
                "project": first.id, "endpoint": first.endpoint,
                "box_certificate": b64(box.public_bytes(der)), "project_certificate": b64(project_der),
            }),
            "credential": encode(
                {"exchange": "x" * 22, "proof": b64(bytes(32)), "box_signature": signature}
            ),
        },
        "card-management": {
            "open": encode({
                "card_guid": GUID_OF_ZEROS, "box_certificate": b64(box.public_bytes(der)),
                "holder_certificate": b64(holder.public_bytes(der)), "directory": b64(directory),
            }),
            "authenticate": encode(
                {"exchange": "x" * 22, "holder_signature": signature, "box_signature": signature}
            ),
            "witness": encode({"session": "s" * 22, "witness": b64(bytes(16))}),
            "response": encode({"session": "s" * 22, "response": b64(bytes(16))}),
            "prove": encode({
                "session": "s" * 22, "project": first.id, "slot": 0x82,
                "certificate": b64(project_der),
            }),
            "directory": encode({
                "session": "s" * 22, "exchange": "x" * 22, "proof": b64(bytes(32)),
                "directory": b64(parse_signed_directory(directory).tbs),
            }),
        },
    }  # fmt: skip


def _cmp_seeds(pki: Pki, holder: x509.Certificate) -> dict[str, bytes]:
    """A CA's answers (kup with the new certificate, pollRep, error, pkiconf), protected by it."""
    ca = pki.project_ca
    key = ca.key
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    tx = cmp.Transaction.new(ca.cert, holder.subject)

    def sign(data: bytes) -> bytes:
        return key.sign(data, ec.ECDSA(hashes.SHA256()))

    def protected(fill: Callable[[Any], None]) -> bytes:
        header, _nonce = cmp._header(tx, recip_nonce=bytes(16))  # the request's nonce, echoed
        body = rfc4210.PKIBody()
        fill(body)
        return cmp._protect(tx, header, body, sign)

    def kup(body: Any) -> None:
        response = body["kup"]["response"][0]
        response["certReqId"] = cmp.CERT_REQ_ID
        response["status"]["status"] = cmp.PkiStatus.ACCEPTED
        plain, _ = der_decoder.decode(
            holder.public_bytes(serialization.Encoding.DER), asn1Spec=rfc2459.Certificate()
        )
        tagged = response["certifiedKeyPair"]["certOrEncCert"]["certificate"]
        for name in ("tbsCertificate", "signatureAlgorithm", "signatureValue"):
            tagged[name] = plain[name]

    def poll_rep(body: Any) -> None:
        body["pollRep"][0]["certReqId"] = cmp.CERT_REQ_ID
        body["pollRep"][0]["checkAfter"] = 5

    def error(body: Any) -> None:
        info = body["error"]["pKIStatusInfo"]
        info["status"] = cmp.PkiStatus.REJECTION
        info["statusString"].append("key update refused")

    def pkiconf(body: Any) -> None:
        body["pkiconf"] = body["pkiconf"].clone("")

    return {name: protected(fill) for name, fill in
            (("kup", kup), ("pollrep", poll_rep), ("error", error), ("pkiconf", pkiconf))}  # fmt: skip


def _trust_chain_seeds(pki: Pki, project: x509.Certificate) -> dict[str, bytes]:
    """For main's trust-chain target: byte 0 the place (1 intermediate, 2 leaf, 3 CRL;
    +4 critical), byte 1 the extension's index in its list, byte 2 no DER wrapper,
    then the extension's value as our PKI writes it. Kept out until that target is here.
    """
    ski = pki.project_ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski.value)
    usage = project.extensions.get_extension_for_class(x509.KeyUsage).value
    return {
        "leaf-aki": bytes((2, 0, 0)) + aki.public_bytes(),
        "intermediate-basic-constraints": bytes((1 | 4, 2, 0))
        + x509.BasicConstraints(ca=True, path_length=0).public_bytes(),
        "leaf-key-usage": bytes((2 | 4, 4, 0)) + usage.public_bytes(),
        "crl-number": bytes((3, 0, 0)) + x509.CRLNumber(7).public_bytes(),
    }


def _catalogue_seeds(pki: Pki) -> dict[str, bytes]:
    """A signed catalogue of one project (docs/card-variants.md, the one-project card)."""
    server = pki.issue_server("bubble.example", ec.generate_private_key(ec.SECP256R1()).public_key())
    entry = CatalogueEntry(
        "census-2021", "Census microdata 2021", Protocol.RDP, "bubble.example:3389",
        server.public_bytes(serialization.Encoding.DER), SecondFactor.FINGER, False,
    )  # fmt: skip
    signer = pki.directory_signer
    assert isinstance(signer.key, ec.EllipticCurvePrivateKey)
    catalogue = ProjectCatalogue(1, datetime(2026, 12, 1, tzinfo=UTC), (entry,))
    return {"signed": sign_catalogue(catalogue, signer.key, signer.cert, [])}


def build() -> dict[str, dict[str, bytes]]:
    """Every target's seeds: {target: {file name: bytes}}."""
    with tempfile.TemporaryDirectory(prefix="sdbox-seeds-") as tmp:
        pki = Pki.init(Path(tmp) / "pki")
        state = _card(pki)
        holder = x509.load_der_x509_certificate(
            decode_certificate(state.objects[ObjectTag.AUTH_CERT])
        )
        seeds = {
            **_session_seeds(state),
            **_card_seeds(state),
            **_request_seeds(pki, state, holder),
        }
        seeds["tlv"] |= {name: seeds["applet"][name] for name in ("command-00", "command-01")}
        seeds["biometric"] = _biometric_seeds()
        seeds["card-variant"] = _variant_seeds(pki)
        seeds["project-catalogue"] = _catalogue_seeds(pki)
        seeds["certificates"] = _certificate_seeds(pki, holder)
        seeds["cmp-answer"] = _cmp_seeds(pki, holder)
        seeds["remote-enrolment"] = _remote_enrolment_seeds(pki)
        project = decode_certificate(state.objects[ObjectTag.RETIRED_CERT_1])
        seeds["trust-chain"] = _trust_chain_seeds(pki, x509.load_der_x509_certificate(project))
    profiles = _REPO / "sdbox/smartcard/emulator"
    seeds["card-profile"] = {
        "demo-profile.toml": (profiles / "demo-profile.toml").read_bytes(),
        # the [card] table of the chip variants (docs/card-variants.md)
        "biosso-t0.toml": (profiles / "card-profiles/biosso-t0.toml").read_bytes(),
        "legacy-one-project.toml": (
            profiles / "card-profiles/legacy-one-project.toml"
        ).read_bytes(),
    }
    seeds["agent-config"] = {"agent.toml": (_REPO / "debian/agent.toml").read_bytes()}
    missing = set(TARGETS) - set(seeds)
    if missing:
        raise RuntimeError(f"no seeds for {', '.join(sorted(missing))}")
    return {name: files for name, files in seeds.items() if name in TARGETS}


def _remote_enrolment_seeds(pki: Pki) -> dict[str, bytes]:
    """An authorisation's bytes as the operator signs them, and the box's three requests."""
    der = serialization.Encoding.DER
    box = pki.issue_box(ec.generate_private_key(ec.SECP256R1()).public_key(), box_id="fuzz-box")
    start = datetime(2026, 12, 7, 14, 0, tzinfo=UTC)
    tbs = Authorisation(
        id="a" * 16, card_guid=bytes(16), box_id="fuzz-box", box_certificate_sha256=bytes(32),
        fingers=("primary", "secondary"), not_before=start,
        not_after=start + timedelta(minutes=15), operator="Fuzz Operator", box_challenge=bytes(32),
    ).encode()  # fmt: skip

    def encode(request: dict[str, Any]) -> bytes:
        return json.dumps(request, separators=(",", ":")).encode()

    return {
        "authorisation": tbs,
        "begin": encode({"card_guid": GUID_OF_ZEROS, "box_certificate": b64(box.public_bytes(der)),
                         "challenge": b64(bytes(32))}),
        "status": encode({"authorisation": "a" * 16, "tbs_sha256": "00" * 32}),
        "finish": encode({"authorisation": "a" * 16, "session": "s" * 22,
                          "fingers": ["primary"], "box_signature": b64(bytes(72))}),
    }


def write(seeds: dict[str, dict[str, bytes]], corpus: Path = CORPUS) -> None:
    """Replace each target's directory under ``corpus`` with its seeds."""
    for target, files in seeds.items():
        directory = corpus / target
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        for name, data in files.items():
            (directory / name).write_bytes(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=CORPUS)
    args = parser.parse_args()
    seeds = build()
    write(seeds, args.corpus)
    for target, files in sorted(seeds.items()):
        print(f"{target:16} {len(files):2d} seeds {sum(map(len, files.values())):6d} bytes")


if __name__ == "__main__":
    main()
