"""How certificates are named in messages a researcher reads."""

from __future__ import annotations

from cryptography import x509
from cryptography.x509.oid import NameOID


def describe(name: x509.Name) -> str:
    """A short human name for ``name``: its common name, else the whole DN."""
    common = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    if common:
        value = common[0].value
        return value if isinstance(value, str) else value.decode(errors="replace")
    return name.rfc4514_string() or "(no name)"


def subject_of(cert: x509.Certificate) -> str:
    """A short human name for ``cert``'s subject."""
    return describe(cert.subject)
