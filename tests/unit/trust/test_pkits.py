"""NIST PKITS (from the cryptography-vectors package) through sdbox.trust.validate.

Each PKITS test is an end-entity certificate named ``<Valid|Invalid>...TestN``;
the path is built from all PKITS CA certificates (the verifier picks by name
and signature), every PKITS CRL is available, and the trust anchor is PKITS's.
Sections are told apart by the test names (PKITS, sections 4.1 to 4.16).

The sdbox profile is narrower than RFC 5280: it does no policy processing
(4.8-4.12), no DSA, no indirect CRLs. Delta CRLs (4.15) are read on top of
the complete list they extend. Name constraints (4.13) apply in
full: what cryptography's verifier leaves out (directory names) is checked
by sdbox.trust.constraints, and a kind neither can check is refused. The sections that apply must
pass in full, except for the listed cases where the profile (through
cryptography's webpki verifier) is deliberately stricter.
"""

from __future__ import annotations

import re
import warnings
from collections import Counter
from datetime import UTC, datetime
from functools import cache
from pathlib import Path

import pytest
from cryptography import x509

from sdbox.trust import CrlSet, Purpose, validate
from sdbox.trust.errors import MalformedCertificate, TrustError
from sdbox.trust.loaders import load_certificate

vectors = pytest.importorskip("cryptography_vectors")

AT = datetime(2020, 6, 1, tzinfo=UTC)  # inside every PKITS validity period but the broken ones

SECTIONS: tuple[tuple[str, str], ...] = (
    ("4.1 signature verification", r"CertificatePath|CASignature|EESignature|DSA"),
    ("4.2 validity periods", r"notBefore|notAfter"),
    ("4.3 name chaining", r"NameChaining|NameUIDs|AttributeTypes|UTF8String|PrintableString"),
    (
        "4.4 basic certificate revocation",
        r"MissingCRL|RevokedCA|RevokedEE|BadCRL|WrongCRL|TwoCRLs|UnknownCRL|CRLnextUpdate"
        r"|SerialNumber|SeparateCertificateandCRLKeys",
    ),
    ("4.5 self-issued certificates", r"BasicSelfIssued"),
    ("4.6 basic constraints", r"basicConstraints|cAFalse|pathLenConstraint"),
    ("4.7 key usage", r"keyUsage"),
    (
        "4.8-4.12 policies",
        r"Polic|CPSPointer|UserNotice|inhibitAnyPolicy|requireExplicit|Mapping",
    ),
    ("4.13 name constraints", r"nameConstraints"),
    (
        "4.14 distribution points",
        r"distributionPoint|onlyContains|onlySomeReasons|IDPwithindirectCRL|cRLIssuer"
        r"|NoissuingDistributionPoint",
    ),
    ("4.15 delta CRLs", r"deltaCRL"),
    ("4.16 private certificate extensions", r"CertificateExtension"),
)

APPLICABLE = {
    "4.1 signature verification",
    "4.2 validity periods",
    "4.4 basic certificate revocation",
    "4.6 basic constraints",
    "4.7 key usage",
    "4.13 name constraints",
    "4.15 delta CRLs",
    "4.16 private certificate extensions",
}

# test -> why the profile refuses what PKITS calls valid (or is not meant to run).
KNOWN_DEVIATIONS = {
    "ValidDSASignaturesTest4": "DSA keys are outside the profile (RSA >= 2048 and NIST EC only)",
    "ValidDSAParameterInheritanceTest5": (
        "DSA keys are outside the profile; cryptography does not even parse inherited parameters"
    ),
    "ValidGeneralizedTimenotBeforeDateTest4": (
        "a date before 2050 encoded as GeneralizedTime: RFC 5280 4.1.2.5 requires UTCTime, "
        "and cryptography's verifier enforces it"
    ),
    "ValidSeparateCertificateandCRLKeysTest19": (
        "a CRL signed by a separate CRL-signing key: the profile requires the issuing CA's own key"
    ),
    "ValidbasicConstraintsNotCriticalTest4": (
        "a CA whose basicConstraints is not critical: webpki requires it critical"
    ),
    "ValidpathLenConstraintTest8": "the end entity is itself a CA certificate: webpki refuses it",
    "ValidpathLenConstraintTest14": "the end entity is itself a CA certificate: webpki refuses it",
    "ValidSelfIssuedpathLenConstraintTest15": (
        "a self-issued intermediate (key rollover): cryptography's path builder does not follow it"
    ),
    "ValidDNnameConstraintsTest5": (
        "a directory-name constraint cryptography's verifier reports as unsupported: it "
        "builds no path (refused, not accepted)"
    ),
    "ValidURInameConstraintsTest34": "URI name constraints: unsupported by cryptography's verifier",
    "ValidURInameConstraintsTest36": "URI name constraints: unsupported by cryptography's verifier",
    "ValidDNnameConstraintsTest19": (
        "the CA's CRL is signed by its new, self-issued key: the profile requires the key "
        "that issued the certificate"
    ),
    "ValidSelfIssuedpathLenConstraintTest17": (
        "a self-issued intermediate (key rollover): cryptography's path builder does not follow it"
    ),
}


def _section(test: str) -> str:
    for name, pattern in SECTIONS:
        if re.search(pattern, test):
            return name
    return "unclassified"


@cache
def _data() -> tuple[
    list[x509.Certificate], x509.Certificate, CrlSet, dict[str, x509.Certificate | TrustError]
]:
    root = Path(vectors.__file__).parent / "x509" / "PKITS_data"
    certs: dict[str, x509.Certificate] = {}
    unparsable: dict[str, TrustError] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # negative serial numbers (4.4.14/15) warn on load
        for path in sorted((root / "certs").glob("*.crt")):
            try:
                certs[path.stem] = load_certificate(path.read_bytes())
            except MalformedCertificate as error:
                unparsable[path.stem] = error
        crls = []
        for path in sorted((root / "crls").glob("*.crl")):
            try:
                crls.append(x509.load_der_x509_crl(path.read_bytes()))
            except ValueError:
                continue  # a CRL we cannot even parse is, for us, no CRL
    anchor = certs.pop("TrustAnchorRootCertificate")
    ees: dict[str, x509.Certificate | TrustError] = {}
    ees.update(certs)
    ees.update(unparsable)
    ees = {name.removesuffix("EE"): c for name, c in ees.items() if name.endswith("EE")}
    # PKITS names the end entity of every test "...Test<N>EE"; everything
    # else is a candidate intermediate.
    pool = [c for name, c in certs.items() if not name.endswith("EE")]
    return pool, anchor, CrlSet(crls), ees


def _run() -> dict[str, tuple[bool, str]]:
    pool, anchor, crls, ees = _data()
    outcome = {}
    for test, leaf in sorted(ees.items()):
        expect_valid = test.startswith("Valid")
        try:
            if isinstance(leaf, TrustError):
                raise leaf  # the certificate did not even load
            validate(leaf, pool, [anchor], at=AT, purpose=Purpose.PATH, crls=crls)
            verdict, why = True, "accepted"
        except TrustError as error:
            verdict, why = False, f"{type(error).__name__}: {error.message}"
        outcome[test] = (verdict == expect_valid, why)
    return outcome


@pytest.fixture(scope="module")
def outcome() -> dict[str, tuple[bool, str]]:
    return _run()


def test_applicable_sections_pass_but_for_listed_deviations(
    outcome: dict[str, tuple[bool, str]],
) -> None:
    failures = {
        test: why
        for test, (passed, why) in outcome.items()
        if not passed and _section(test) in APPLICABLE and test not in KNOWN_DEVIATIONS
    }
    assert failures == {}


def test_listed_deviations_still_deviate(outcome: dict[str, tuple[bool, str]]) -> None:
    # Keeps the list closed: a deviation that disappears must leave the list.
    assert [t for t in KNOWN_DEVIATIONS if outcome[t][0]] == []


def test_report_counts_per_section(
    outcome: dict[str, tuple[bool, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    total: Counter[str] = Counter()
    passed: Counter[str] = Counter()
    for test, (ok, _why) in outcome.items():
        total[_section(test)] += 1
        passed[_section(test)] += ok
    with capsys.disabled():
        print("\nPKITS through sdbox.trust.validate (purpose PATH):")
        for name, _ in (*SECTIONS, ("unclassified", "")):
            if total[name]:
                mark = "applies" if name in APPLICABLE else "outside the profile"
                print(f"  {name:<40} {passed[name]:>3}/{total[name]:<3} ({mark})")
    assert total["unclassified"] == 0
