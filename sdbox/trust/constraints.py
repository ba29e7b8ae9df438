"""Name constraints over the whole path (RFC 5280 4.2.1.10 and 6.1.3 (b)).

cryptography's verifier applies a CA's DNS and IP constraints, and nothing
else: a CA constrained to ``O=Lab A`` could otherwise certify ``O=Lab B``, or
one constrained to some mailboxes any mailbox. This module checks every kind
of constraint a certificate in the path carries against every certificate
below it (self-issued intermediates excepted, as RFC 5280 says), and refuses
what it cannot decide: a constraint of a kind it does not evaluate (URI
without a host, otherName, X.400, EDI party, registered ID) on a certificate
that has names of that kind. Fail closed, never open.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from cryptography import x509
from cryptography.x509.oid import NameOID

from sdbox.trust.errors import WrongPurpose
from sdbox.trust.names import subject_of

# name kinds this module evaluates; any other kind under a constraint is refused
_DECIDABLE = (
    x509.DirectoryName,
    x509.RFC822Name,
    x509.DNSName,
    x509.IPAddress,
    x509.UniformResourceIdentifier,
)


def check_name_constraints(chain: Sequence[x509.Certificate]) -> None:
    """Refuse ``chain`` (leaf first, anchor last) if a name breaks a CA's constraints."""
    for position, ca in enumerate(chain):
        if position == 0:
            continue  # the leaf constrains nothing below it
        try:
            constraints = ca.extensions.get_extension_for_class(x509.NameConstraints).value
        except x509.ExtensionNotFound:
            continue
        for below, cert in enumerate(chain[:position]):
            if below != 0 and cert.subject == cert.issuer:
                continue  # self-issued intermediates are exempt (RFC 5280 6.1.4 (b))
            problem = _violation(cert, constraints)
            if problem:
                raise WrongPurpose(
                    subject_of(cert),
                    f"{problem}, outside what {subject_of(ca)} may certify (name constraints)",
                )


def _names(cert: x509.Certificate) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    if len(cert.subject.rdns):
        names.append(x509.DirectoryName(cert.subject))
    # RFC 5280: rfc822Name constraints also bind the subject's emailAddress
    names += [
        x509.RFC822Name(str(attr.value))
        for attr in cert.subject.get_attributes_for_oid(NameOID.EMAIL_ADDRESS)
    ]
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return names
    return names + list(san)


def _violation(cert: x509.Certificate, constraints: x509.NameConstraints) -> str:
    permitted = list(constraints.permitted_subtrees or ())
    excluded = list(constraints.excluded_subtrees or ())
    for name in _names(cert):
        kind = type(name)
        same_kind_permitted = [p for p in permitted if type(p) is kind]
        same_kind_excluded = [e for e in excluded if type(e) is kind]
        if not (same_kind_permitted or same_kind_excluded):
            continue
        if kind not in _DECIDABLE:
            return f"a {kind.__name__} this box cannot check against a constraint"
        try:
            if any(_within(name, e) for e in same_kind_excluded):
                return f"{_show(name)} is excluded"
            if same_kind_permitted and not any(_within(name, p) for p in same_kind_permitted):
                return f"{_show(name)} is not permitted"
        except _Undecidable as exc:
            return f"{_show(name)} cannot be checked ({exc})"
    return ""


class _Undecidable(Exception):
    """A name or constraint whose form cannot be compared: refused by the caller."""


def _show(name: x509.GeneralName) -> str:
    if isinstance(name, x509.DirectoryName):
        return f"the name '{name.value.rfc4514_string()}'"
    return f"'{name.value}'"


def _within(name: x509.GeneralName, subtree: x509.GeneralName) -> bool:
    if isinstance(name, x509.DirectoryName):
        assert isinstance(subtree, x509.DirectoryName)
        return _dn_within(name.value, subtree.value)
    if isinstance(name, x509.RFC822Name):
        return _mail_within(name.value, subtree.value)
    if isinstance(name, x509.DNSName):
        return _dns_within(name.value, subtree.value)
    if isinstance(name, x509.IPAddress):
        assert isinstance(subtree, x509.IPAddress)
        return _ip_within(name.value, subtree.value)
    if isinstance(name, x509.UniformResourceIdentifier):
        return _uri_within(name.value, subtree.value)
    raise _Undecidable(type(name).__name__)


def _rdn_key(rdn: x509.RelativeDistinguishedName) -> frozenset[tuple[str, object]]:
    # caseIgnoreMatch with insignificant spaces (RFC 4518, simplified): a
    # constraint that differs only in case or spacing names the same subtree
    return frozenset(
        (
            attr.oid.dotted_string,
            " ".join(attr.value.split()).casefold() if isinstance(attr.value, str) else attr.value,
        )
        for attr in rdn
    )


def _dn_within(name: x509.Name, subtree: x509.Name) -> bool:
    """``subtree``'s RDNs are the first RDNs of ``name``."""
    base = [_rdn_key(r) for r in subtree.rdns]
    mine = [_rdn_key(r) for r in name.rdns]
    return len(mine) >= len(base) and mine[: len(base)] == base


def _host_within(host: str, constraint: str) -> bool:
    host, constraint = host.lower().rstrip("."), constraint.lower().rstrip(".")
    if not constraint:
        return True  # an empty constraint matches every host
    if constraint.startswith("."):  # a domain: any host below it, not the domain itself
        return host.endswith(constraint)
    return host == constraint


def _mail_within(mailbox: str, constraint: str) -> bool:
    if "@" not in mailbox:
        raise _Undecidable("not a mailbox")
    local, _, host = mailbox.rpartition("@")
    if "@" in constraint:  # one mailbox
        c_local, _, c_host = constraint.rpartition("@")
        return local == c_local and host.lower() == c_host.lower()
    return _host_within(host, constraint)


def _dns_within(dns: str, constraint: str) -> bool:
    dns, constraint = dns.lower().rstrip("."), constraint.lower().rstrip(".").lstrip(".")
    if not constraint:
        return True
    return dns == constraint or dns.endswith("." + constraint)


def _ip_within(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address | object,
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | object,
) -> bool:
    if isinstance(address, ipaddress.IPv4Network | ipaddress.IPv6Network):
        raise _Undecidable("an address range as a name")
    if not isinstance(address, ipaddress.IPv4Address | ipaddress.IPv6Address) or not isinstance(
        network, ipaddress.IPv4Network | ipaddress.IPv6Network
    ):
        raise _Undecidable("not an address")
    return address.version == network.version and address in network


def _uri_within(uri: str, constraint: str) -> bool:
    """The constraint names the URI's host (RFC 5280): a URI without one is undecidable."""
    scheme, sep, rest = uri.partition(":")
    if not sep or not rest.startswith("//"):
        raise _Undecidable("the URI has no host")
    authority = rest[2:].split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]
    host = authority.rpartition("@")[2]
    host = host[1:].split("]", 1)[0] if host.startswith("[") else host.split(":", 1)[0]
    del scheme
    return _host_within(host, constraint)
