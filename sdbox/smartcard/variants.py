"""The card variants sdbox knows, and how a card is recognised as one (docs/card-variants.md).

A variant is recognised from what the card says about itself (its ATR, the
PIV application answering SELECT, the discovery object, the CHUID, the BIT
group, the objects present and the certificates in them), never from a list
of serial numbers. Each variant declares its :class:`Capabilities`; callers
(the agent, the renewal job, the HIL suite) ask capabilities ("does this card
have a project directory?", "can it compare a finger?"), never the variant's
name, as OpenSC's card drivers gate on ``card->caps`` and yubikit on the
features a device reports.

:func:`gather` reads the card (read-only, nothing that needs a PIN);
:func:`classify` decides from what was read, and is a pure function so that
every decision can be tested without a card. A card that contradicts itself
raises :class:`ContradictoryCard`, naming the contradiction.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import Enum

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from sdbox.certificates import UnreadableCertificate, load_certificate
from sdbox.smartcard import tlv
from sdbox.smartcard.atr import AtrInfo, Transmission, parse_atr
from sdbox.smartcard.biosso import BioSsoSession
from sdbox.smartcard.directory import parse_signed_directory
from sdbox.smartcard.errors import CardError, CardProtocolError, NotSupported
from sdbox.smartcard.piv import FileNotFoundOnCard
from sdbox.smartcard.profile import (
    CERT_INFO_GZIP,
    RETIRED_SLOTS,
    TAG_CERT_INFO,
    Algorithm,
    Discovery,
    ObjectTag,
    Slot,
    certificate_object,
    chuid_guid,
    decode_certificate,
    parse_bit_group,
    parse_key_history,
)

# The URI a project certificate carries in its subjectAltName (docs/card-profile.md);
# sdbox.trust.oids holds the same value for validation.
PROJECT_URI_PREFIX = "urn:sdbox:project:"


class ContradictoryCard(CardError):
    """The card's self-description contradicts itself; the message names how."""


class ProjectLayout(Enum):
    """Where a card keeps its projects."""

    DIRECTORY = "directory"  # several projects: signed directory, one retired slot each
    CARD_IS_PROJECT = "card"  # one project per card: the 9A key and certificate are the project


class PinPolicy(Enum):
    """What satisfies the card's access rules (discovery object, PIN usage policy)."""

    FINGER_OR_PIN = "finger_or_pin"  # on-card comparison, and the PIV PIN beside it
    PIN_ONLY = "pin_only"


@dataclass(frozen=True)
class Capabilities:
    """What a card generation can do; the only thing callers gate behaviour on."""

    project_layout: ProjectLayout
    fingers: int  # fingers compared on the card (0: PIN only)
    holder_algorithm: Algorithm  # the 9A key
    key_algorithms: frozenset[Algorithm]  # project keys this generation holds
    extended_length: bool  # else command chaining and response chaining only
    command_chaining: bool
    transmission: Transmission
    compressed_certificates: bool  # PIV CertInfo 01: gzip
    pin_policy: PinPolicy

    @property
    def multi_project(self) -> bool:
        """A project directory: the picker lists several projects on one card."""
        return self.project_layout == ProjectLayout.DIRECTORY

    @property
    def on_card_comparison(self) -> bool:
        """The card compares a finger itself (VERIFY 96/97)."""
        return self.fingers > 0

    @property
    def possession_by_ecdh(self) -> bool:
        """Project keys are EC: possession is proven by ECDH (else by an RSA signature)."""
        return self.key_algorithms <= {Algorithm.ECCP256, Algorithm.ECCP384}

    def to_json(self) -> dict[str, object]:
        """The stable JSON form (``sdbox card identify --json``)."""
        return {
            "project_layout": self.project_layout.value,
            "multi_project": self.multi_project,
            "on_card_comparison": self.on_card_comparison,
            "fingers": self.fingers,
            "holder_algorithm": _ALGORITHM_NAMES[self.holder_algorithm],
            "key_algorithms": sorted(_ALGORITHM_NAMES[a] for a in self.key_algorithms),
            "extended_length": self.extended_length,
            "command_chaining": self.command_chaining,
            "transmission": self.transmission.value,
            "compressed_certificates": self.compressed_certificates,
            "pin_policy": self.pin_policy.value,
        }

    def accepts(self, observed: Capabilities) -> bool:
        """Whether a card showing ``observed`` is of a generation with these capabilities.

        Every field must agree, except the project keys: a generation that can
        hold P-256 and P-384 keys may carry only one kind.
        """
        return replace(observed, key_algorithms=self.key_algorithms) == self and (
            observed.key_algorithms <= self.key_algorithms
        )


_ALGORITHM_NAMES = {
    Algorithm.ECCP256: "P-256",
    Algorithm.ECCP384: "P-384",
    Algorithm.RSA2048: "RSA-2048",
}


@dataclass(frozen=True)
class Variant:
    """One card generation: its name, what it is, its capabilities and its limits on a box."""

    name: str
    title: str
    capabilities: Capabilities
    limits: tuple[str, ...] = ()  # what sdbox cannot do with it, in plain words


_P256, _P384, _RSA = Algorithm.ECCP256, Algorithm.ECCP384, Algorithm.RSA2048
_TODAY = Capabilities(
    project_layout=ProjectLayout.DIRECTORY,
    fingers=2,
    holder_algorithm=_P256,
    key_algorithms=frozenset({_P256, _P384}),
    extended_length=True,
    command_chaining=True,
    transmission=Transmission.T1,
    compressed_certificates=False,
    pin_policy=PinPolicy.FINGER_OR_PIN,
)
_NO_RENEWAL_RSA = (
    "renewal: the box generates EC project keys only, so RSA project keys are not renewed "
    "on the box; the card office re-issues them"
)
_NO_RENEWAL_ONE_PROJECT = (
    "renewal: no directory to switch and no free slot, so the box does not renew "
    "this card; the card office re-issues it"
)
_BOX_GENERATES = frozenset({_P256, _P384})  # what renewal's GENERATE asks the card for


def renewal_limit(caps: Capabilities) -> str | None:
    """Why the box cannot renew the project keys of a card with ``caps`` (None: it can).

    The renewal job (:mod:`sdbox.renewal.flow`) and ``sdbox card identify``
    both ask this, so what the job refuses is what identify says it cannot do.
    """
    if not caps.multi_project:  # renewal moves a project to a new slot and re-signs the directory
        return _NO_RENEWAL_ONE_PROJECT
    if not caps.key_algorithms <= _BOX_GENERATES:  # and proves the new key by ECDH
        return _NO_RENEWAL_RSA
    return None

VARIANTS: tuple[Variant, ...] = (
    Variant("biosso-p256", "multi-project biometric card, P-256 generation (today's)", _TODAY),
    Variant(
        "biosso-p384",
        "multi-project biometric card, P-384 generation",
        replace(_TODAY, holder_algorithm=_P384, key_algorithms=frozenset({_P384})),
    ),
    Variant(
        "biosso-pin-only",
        "multi-project biometric card with no finger enrolled (PIN only)",
        replace(_TODAY, fingers=0, pin_policy=PinPolicy.PIN_ONLY),
        ("projects whose policy is 'finger' cannot be opened: no finger is enrolled",),
    ),
    Variant(
        "biosso-one-finger",
        "multi-project biometric card with one finger enrolled",
        replace(_TODAY, fingers=1),
    ),
    Variant(
        "biosso-rsa2048",
        "multi-project card with RSA-2048 keys",
        replace(_TODAY, holder_algorithm=_RSA, key_algorithms=frozenset({_RSA})),
        (_NO_RENEWAL_RSA,),
    ),
    Variant(
        "biosso-chaining",
        "multi-project biometric card on a chip without extended length",
        replace(_TODAY, extended_length=False),
    ),
    Variant(
        "biosso-t0",
        "multi-project biometric card on a T=0 chip",
        replace(_TODAY, extended_length=False, transmission=Transmission.T0),
    ),
    Variant(
        "biosso-compressed",
        "multi-project biometric card with compressed certificates (PIV CertInfo)",
        replace(_TODAY, compressed_certificates=True),
    ),
    Variant(
        "legacy-one-project",
        "earlier biometric card, one project per card",
        replace(
            _TODAY, project_layout=ProjectLayout.CARD_IS_PROJECT, key_algorithms=frozenset({_P256})
        ),
        (
            "opening its project needs the site's signed project catalogue on the box (its "
            "endpoint, server certificate and policy are not on the card, docs/card-variants.md)",
            "switching projects means swapping cards: the card holds one project",
            _NO_RENEWAL_ONE_PROJECT,
        ),
    ),
)

VARIANTS_BY_NAME = {v.name: v for v in VARIANTS}


# -- what the card said ------------------------------------------------------------


@dataclass(frozen=True)
class CertificateFacts:
    """The public facts of one certificate on the card."""

    slot: int
    subject: str
    not_after: datetime
    algorithm: Algorithm | None  # None: a key type no variant uses
    compressed: bool
    project_id: str | None  # the project named in subjectAltName
    sha256: str

    def to_json(self) -> dict[str, object]:
        """JSON form for the support dump."""
        return {
            "slot": f"{self.slot:02X}",
            "subject": self.subject,
            "not_after": self.not_after.isoformat(),
            "algorithm": _ALGORITHM_NAMES.get(self.algorithm) if self.algorithm else None,
            "compressed": self.compressed,
            "project": self.project_id,
            "sha256": self.sha256,
        }


@dataclass(frozen=True)
class Evidence:
    """Everything :func:`gather` read, all of it public (no PIN, template or key)."""

    atr: bytes
    atr_info: AtrInfo | None
    atr_problem: str | None = None
    piv: bool = False  # the PIV application answered SELECT
    application_label: str = ""
    guid: bytes | None = None
    discovery: Discovery | None = None
    finger_count: int | None = None  # fingers in the BIT group; None: no BIT group
    key_history: int | None = None
    directory_projects: int | None = None  # None: no directory object
    holder: CertificateFacts | None = None
    project_certificates: tuple[CertificateFacts, ...] = ()
    objects: dict[int, bytes] = field(default_factory=dict)  # raw public objects read
    problems: tuple[str, ...] = ()  # objects present but unreadable


# Objects gather() asks for, in order; all are readable without verification.
_PROBED = (
    ObjectTag.CHUID,
    ObjectTag.CCC,
    ObjectTag.DISCOVERY,
    ObjectTag.BIT_GROUP,
    ObjectTag.KEY_HISTORY,
    ObjectTag.DIRECTORY,
)


def gather(session: BioSsoSession, atr: bytes) -> Evidence:
    """Read what the card says about itself: SELECT, the public objects, the certificates."""
    try:
        atr_info: AtrInfo | None = parse_atr(atr)
        atr_problem = None
    except CardProtocolError as exc:
        atr_info, atr_problem = None, exc.message
    try:
        label = session.piv.select().label
    except NotSupported:
        return Evidence(atr, atr_info, atr_problem)
    except CardError as exc:
        return Evidence(atr, atr_info, atr_problem, problems=(f"SELECT PIV: {exc.message}",))
    objects: dict[int, bytes] = {}
    problems: list[str] = []
    for tag in _PROBED:
        try:
            objects[tag] = session.piv.get_object(tag)
        except FileNotFoundOnCard:
            continue
        except CardError as exc:
            problems.append(f"object {tag:X}: {exc.message}")
    evidence = Evidence(atr, atr_info, atr_problem, piv=True, application_label=label)
    parsed = _parse_objects(objects, problems)
    holder = _certificate(session, Slot.AUTHENTICATION, objects, problems)
    count = parsed.key_history if parsed.key_history is not None else 0
    # One slot past what the key history claims: a certificate there is a contradiction.
    projects = []
    for slot in RETIRED_SLOTS[: count + 1]:
        facts = _certificate(session, slot, objects, problems)
        if facts is not None:
            projects.append(facts)
    return replace(
        evidence,
        guid=parsed.guid,
        discovery=parsed.discovery,
        finger_count=parsed.finger_count,
        key_history=parsed.key_history,
        directory_projects=parsed.directory_projects,
        holder=holder,
        project_certificates=tuple(projects),
        objects=objects,
        problems=tuple(problems),
    )


def _parse_objects(objects: dict[int, bytes], problems: list[str]) -> Evidence:
    """The small objects parsed (an Evidence used as a record of the parsed fields)."""
    out = Evidence(b"", None)
    for tag, value in objects.items():
        try:
            if tag == ObjectTag.CHUID:
                out = replace(out, guid=chuid_guid(value))
            elif tag == ObjectTag.DISCOVERY:
                out = replace(out, discovery=Discovery.parse(value))
            elif tag == ObjectTag.BIT_GROUP:
                out = replace(out, finger_count=len(parse_bit_group(value)))
            elif tag == ObjectTag.KEY_HISTORY:
                out = replace(out, key_history=parse_key_history(value))
            elif tag == ObjectTag.DIRECTORY:
                count = len(parse_signed_directory(value).directory.projects)
                out = replace(out, directory_projects=count)
        except CardError as exc:
            problems.append(f"object {tag:X}: {exc.message}")
            if tag == ObjectTag.DIRECTORY:
                out = replace(out, directory_projects=-1)  # present, unreadable
    return out


def _certificate(
    session: BioSsoSession, slot: int, objects: dict[int, bytes], problems: list[str]
) -> CertificateFacts | None:
    tag = certificate_object(slot)
    try:
        value = session.piv.get_object(tag)
    except FileNotFoundOnCard:
        return None
    except CardError as exc:
        problems.append(f"certificate {slot:02X}: {exc.message}")
        return None
    try:
        return certificate_facts(slot, value)
    except CardError as exc:
        problems.append(f"certificate {slot:02X}: {exc.message}")
        return None


def certificate_facts(slot: int, container: bytes) -> CertificateFacts:
    """The public facts of a certificate container (compressed ones included)."""
    try:
        info = tlv.parse_dict(container).get(TAG_CERT_INFO, b"\x00")
        compressed = info[:1] == bytes((CERT_INFO_GZIP,))
        der = decode_certificate(container)
        cert = load_certificate(der)
    except (ValueError, UnreadableCertificate) as exc:  # ValueError: the container's TLV
        raise CardProtocolError(f"the certificate does not parse: {exc}") from exc
    return CertificateFacts(
        slot=slot,
        subject=cert.subject.rfc4514_string(),
        not_after=cert.not_valid_after_utc,
        algorithm=_algorithm(cert),
        compressed=compressed,
        project_id=_project_id(cert),
        sha256=hashlib.sha256(der).hexdigest(),
    )


def _algorithm(cert: x509.Certificate) -> Algorithm | None:
    key = cert.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        return {"secp256r1": _P256, "secp384r1": _P384}.get(key.curve.name)
    if isinstance(key, rsa.RSAPublicKey) and key.key_size == 2048:
        return _RSA
    return None


def _project_id(cert: x509.Certificate) -> str | None:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (x509.ExtensionNotFound, ValueError):
        return None
    for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
        if uri.startswith(PROJECT_URI_PREFIX):
            return uri[len(PROJECT_URI_PREFIX) :]
    return None


# -- the decision ----------------------------------------------------------------


@dataclass(frozen=True)
class Identification:
    """What the card is: a known variant, or why it is not supported."""

    evidence: Evidence
    variant: Variant | None
    observed: Capabilities | None
    reason: str | None  # why the card is not supported (None when it is)

    @property
    def supported(self) -> bool:
        """Whether sdbox knows this card's variant."""
        return self.variant is not None

    @property
    def capabilities(self) -> Capabilities | None:
        """The variant's declared capabilities (what callers gate on)."""
        return self.variant.capabilities if self.variant else None


def identify(session: BioSsoSession, atr: bytes) -> Identification:
    """Read the card and decide its variant (:class:`ContradictoryCard` if it contradicts itself)."""
    return classify(gather(session, atr))


def classify(evidence: Evidence) -> Identification:
    """Decide the variant from what the card said; pure."""

    def unsupported(reason: str, observed: Capabilities | None = None) -> Identification:
        return Identification(evidence, None, observed, reason)

    info = evidence.atr_info
    if info is None:
        return unsupported(f"its ATR does not parse ({evidence.atr_problem})")
    if not evidence.piv:
        return unsupported("it has no PIV application (SELECT PIV was refused)")
    if evidence.problems:
        return unsupported("some of its objects cannot be read: " + "; ".join(evidence.problems))
    if evidence.guid is None:
        return unsupported("it has no CHUID: a PIV card without an identity")
    if evidence.discovery is None:
        return unsupported("it has no discovery object, so its PIN policy is unknown")
    _check_consistency(evidence)
    holder = evidence.holder
    if holder is None or holder.algorithm is None:
        return unsupported("its authentication certificate (9A) is missing or of an unknown key")
    if evidence.directory_projects is not None:
        layout = ProjectLayout.DIRECTORY
        algorithms = {c.algorithm for c in evidence.project_certificates}
        if None in algorithms:
            return unsupported("a project certificate holds a key of an unknown type")
        certs = (holder, *evidence.project_certificates)
    elif holder.project_id is not None:
        layout = ProjectLayout.CARD_IS_PROJECT
        algorithms = {holder.algorithm}
        certs = (holder,)
    else:
        return unsupported("it holds neither a project directory nor a project certificate")
    compressed = {c.compressed for c in certs}
    observed = Capabilities(
        project_layout=layout,
        fingers=evidence.finger_count or 0,
        holder_algorithm=holder.algorithm,
        key_algorithms=frozenset(a for a in algorithms if a is not None),
        extended_length=info.extended_length,
        command_chaining=info.command_chaining,
        transmission=info.transmission,
        compressed_certificates=True in compressed,
        pin_policy=PinPolicy.FINGER_OR_PIN if evidence.discovery.occ else PinPolicy.PIN_ONLY,
    )
    for variant in VARIANTS:
        if variant.capabilities.accepts(observed):
            return Identification(evidence, variant, observed, None)
    return unsupported("no variant known to sdbox has these capabilities", observed)


def _check_consistency(evidence: Evidence) -> None:
    """Raise :class:`ContradictoryCard` when the card's objects disagree with each other."""
    discovery, fingers = evidence.discovery, evidence.finger_count
    if discovery is not None:
        if discovery.occ and not fingers:
            raise ContradictoryCard(
                "the discovery object does not match the objects present: it announces "
                "on-card finger comparison, but the card has no biometric template (7F61) "
                "naming a finger"
            )
        if not discovery.occ and fingers:
            raise ContradictoryCard(
                "the discovery object does not match the objects present: it announces "
                f"no on-card comparison, but the BIT group names {fingers} finger(s)"
            )
    holder = evidence.holder
    if evidence.directory_projects is not None and holder is not None and holder.project_id:
        raise ContradictoryCard(
            "a project directory on a card that claims one project: its authentication "
            f"certificate is the credential of project '{holder.project_id}'"
        )
    history = evidence.key_history or 0
    present = len(evidence.project_certificates)
    if evidence.directory_projects is None and (history or present):
        raise ContradictoryCard(
            f"project certificates ({present}) or a key history ({history}) without a "
            "project directory"
        )
    if evidence.directory_projects is not None and present != history:
        raise ContradictoryCard(
            f"the key history counts {history} project key(s) but {present} project "
            "certificate(s) are on the card"
        )
    # A renewed card may keep one superseded key inside the Key History range (docs/renewal.md,
    # "Slots and Key History"): P projects use P or P + 1 retired slots, never more.
    if evidence.directory_projects is not None and evidence.directory_projects not in (
        -1,
        history,
        history - 1,
    ):
        raise ContradictoryCard(
            f"the project directory lists {evidence.directory_projects} project(s) but the "
            f"key history counts {history}"
        )


def abilities(variant: Variant) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """What sdbox can do with a card of ``variant``, and what it cannot, in plain words."""
    caps = variant.capabilities
    can = ["list its projects" if caps.multi_project else "recognise its one project"]
    if caps.on_card_comparison:
        can.append(f"verify the holder by finger on the card ({caps.fingers} finger(s)) or PIN")
    else:
        can.append("verify the holder by PIN (no finger is enrolled)")
    if caps.possession_by_ecdh and caps.multi_project:
        can.append("prove possession of a project key by ECDH and open its projects")
    elif caps.multi_project:
        can.append(
            "prove possession of a project key by an RSA signature (PKCS#1 v1.5) and open "
            "its projects"
        )
    elif caps.possession_by_ecdh:
        can.append(
            "go straight to its project at insertion, found in the site's signed project "
            "catalogue, and prove possession of its key by ECDH"
        )
    if not caps.extended_length:
        can.append(
            "talk to it with command and response chaining"
            + (" over T=0 (61XX, 6CXX)" if caps.transmission == Transmission.T0 else "")
        )
    if caps.compressed_certificates:
        can.append("read its compressed certificates")
    if renewal_limit(caps) is None:
        can.append("renew its project certificates on the box")
    return tuple(can), variant.limits


def one_project_of(session: BioSsoSession) -> str | None:
    """The project a card without a directory stands for (its 9A certificate), else None.

    One APDU: what the agent reads at insertion, after the picker's listing
    found no directory, to tell the earlier one-project card from a card
    that was never issued for sdbox.
    """
    facts = one_project_certificate(session)
    return facts.project_id if facts is not None else None


def one_project_certificate(session: BioSsoSession) -> CertificateFacts | None:
    """The public facts of a card's 9A certificate when it names a project, else None.

    The same one APDU as :func:`one_project_of`, for a caller that also needs
    the certificate's digest, subject and expiry (the agent's listing of a
    one-project card).
    """
    try:
        facts = certificate_facts(
            Slot.AUTHENTICATION, session.piv.get_object(certificate_object(Slot.AUTHENTICATION))
        )
    except FileNotFoundOnCard:
        return None
    return facts if facts.project_id is not None else None
