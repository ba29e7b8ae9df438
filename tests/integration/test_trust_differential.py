"""sdbox.trust.validate and `openssl verify` agree on a generated corpus of chains.

Both get the same root, intermediates, CRLs, time and purpose. Verdicts must
agree, except for the kinds in DOCUMENTED_DIFFERENCES, where ours must refuse
and OpenSSL must accept (so the list stays closed and honest: if OpenSSL
starts refusing one, or we start accepting one, the test says so).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from sdbox.trust import Purpose, validate
from sdbox.trust.errors import (
    BadSignature,
    CertificateExpired,
    CertificateNotYetValid,
    CertificateRevoked,
    CrlMissing,
    CrlStale,
    TrustError,
    UnknownIssuer,
    WrongPurpose,
)

from .trust_corpus import HOST, Case, corpus

pytestmark = pytest.mark.integration

# kind -> why we refuse what OpenSSL accepts. Also in docs/trust.md.
DOCUMENTED_DIFFERENCES = {
    "no-eku": (
        "a leaf without extendedKeyUsage: OpenSSL treats a missing EKU as 'any purpose'; "
        "the sdbox profile (and cryptography's verifier) require the purpose's EKU"
    ),
    "server-key-agreement-only": (
        "a server key with keyAgreement only: OpenSSL's sslserver purpose allows it (static "
        "ECDH suites); TLS 1.2 ECDHE and TLS 1.3 need digitalSignature, so we refuse"
    ),
    "server-cn-only": (
        "a server certificate naming its host only in the subject CN: OpenSSL falls back to "
        "the CN; RFC 6125 and cryptography's verifier require a subjectAltName"
    ),
    "rsa-1024-leaf": (
        "a 1024-bit RSA key: OpenSSL 3.0's default security level 1 allows it; "
        "cryptography's verifier requires at least 2048 bits"
    ),
}

# kind -> the error a researcher would see from us.
EXPECTED_ERRORS: dict[str, type[TrustError] | tuple[type[TrustError], ...]] = {
    "leaf-expired": CertificateExpired,
    "int-expired": CertificateExpired,
    "leaf-not-yet-valid": CertificateNotYetValid,
    "int-not-yet-valid": CertificateNotYetValid,
    "leaf-revoked": CertificateRevoked,
    "int-revoked": CertificateRevoked,
    "wrong-eku": WrongPurpose,
    "wrong-key-usage": WrongPurpose,
    "no-eku": WrongPurpose,
    "server-key-agreement-only": WrongPurpose,
    "bad-signature-leaf": BadSignature,
    "bad-signature-int": BadSignature,
    "missing-intermediate": UnknownIssuer,
    "stale-crl-leaf-issuer": CrlStale,
    "stale-crl-root": CrlStale,
    "missing-crl": CrlMissing,
    "crl-wrong-key": BadSignature,
    # Refused by the verifier with its own reason, which we pass on.
    "int-not-a-signer": (WrongPurpose, UnknownIssuer),
    "root-pathlen-0": (WrongPurpose, UnknownIssuer),
    "root-pathlen-1-over-two-cas": (WrongPurpose, UnknownIssuer),
    "server-cn-only": (WrongPurpose, UnknownIssuer),
    "rsa-1024-leaf": (WrongPurpose, UnknownIssuer),
}


def _pem(items: Sequence[x509.Certificate | x509.CertificateRevocationList]) -> bytes:
    return b"".join(item.public_bytes(Encoding.PEM) for item in items)


def _ours(case: Case) -> TrustError | None:
    try:
        validate(
            case.leaf,
            case.intermediates,
            [case.root],
            at=case.at,
            purpose=Purpose.TLS_SERVER if case.purpose == "server" else Purpose.CLIENT,
            crls=case.crls,
            hostname=HOST if case.purpose == "server" else None,
        )
    except TrustError as error:
        return error
    return None


def _openssl(case: Case, workdir: Path) -> tuple[bool, str]:
    folder = workdir / case.name
    folder.mkdir()
    (folder / "root.pem").write_bytes(_pem([case.root]))
    (folder / "leaf.pem").write_bytes(_pem([case.leaf]))
    (folder / "crls.pem").write_bytes(_pem(case.crls))
    argv = [
        "openssl",
        "verify",
        "-x509_strict",
        "-crl_check_all",
        "-purpose",
        "sslserver" if case.purpose == "server" else "sslclient",
        "-attime",
        str(int(case.at.timestamp())),
        "-CAfile",
        str(folder / "root.pem"),
        "-CRLfile",
        str(folder / "crls.pem"),
    ]
    if case.intermediates:
        (folder / "untrusted.pem").write_bytes(_pem(case.intermediates))
        argv += ["-untrusted", str(folder / "untrusted.pem")]
    if case.purpose == "server":
        argv += ["-verify_hostname", HOST]
    argv.append(str(folder / "leaf.pem"))
    done = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "OPENSSL_CONF": "/dev/null"},
        check=False,
    )
    return done.returncode == 0, (done.stdout + done.stderr).strip()


@pytest.fixture(scope="module")
def results(
    tmp_path_factory: pytest.TempPathFactory,
) -> list[tuple[Case, TrustError | None, bool, str]]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed (scripts/setup-system.sh)")
    cases = corpus()
    workdir = tmp_path_factory.mktemp("differential")
    with ThreadPoolExecutor(max_workers=(os.cpu_count() or 2) * 2) as pool:
        theirs = list(pool.map(lambda c: _openssl(c, workdir), cases))
    return [(case, _ours(case), ok, out) for case, (ok, out) in zip(cases, theirs, strict=True)]


def test_corpus_is_large_and_covers_every_kind(
    results: list[tuple[Case, TrustError | None, bool, str]],
) -> None:
    kinds = Counter(case.kind for case, *_ in results)
    assert len(results) >= 200
    assert set(kinds) == {"valid", *EXPECTED_ERRORS}


def test_verdicts_agree_except_documented_differences(
    results: list[tuple[Case, TrustError | None, bool, str]],
) -> None:
    disagreements = []
    for case, ours, openssl_ok, output in results:
        we_accept = ours is None
        if case.kind in DOCUMENTED_DIFFERENCES:
            if we_accept or not openssl_ok:
                disagreements.append(
                    f"{case.name}: documented difference no longer holds: "
                    f"ours={ours!r} openssl_ok={openssl_ok} {output[-200:]}"
                )
        elif we_accept != openssl_ok:
            disagreements.append(
                f"{case.name}: ours={'accept' if we_accept else repr(ours)} "
                f"openssl={'accept' if openssl_ok else 'refuse'} {output[-200:]}"
            )
    assert disagreements == []


def test_each_refusal_names_its_reason(
    results: list[tuple[Case, TrustError | None, bool, str]],
) -> None:
    wrong = []
    for case, ours, _ok, _out in results:
        if case.kind == "valid":
            if ours is not None:
                wrong.append(f"{case.name}: refused a valid chain: {ours.message}")
            continue
        expected = EXPECTED_ERRORS[case.kind]
        if not isinstance(ours, expected):
            wrong.append(f"{case.name}: expected {expected}, got {ours!r}")
    assert wrong == []


def test_summary(
    results: list[tuple[Case, TrustError | None, bool, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    agree = sum(1 for case, ours, ok, _ in results if (ours is None) == ok)
    documented = sum(1 for case, *_ in results if case.kind in DOCUMENTED_DIFFERENCES)
    with capsys.disabled():
        print(
            f"\ndifferential: {len(results)} chains, {agree} agreements, "
            f"{documented} documented differences ({len(DOCUMENTED_DIFFERENCES)} kinds)"
        )
    assert agree + documented == len(results)
