"""Trust: the PKI model, chain and revocation validation, possession proofs.

A pure library: no D-Bus, no CLI, no printing, no card transport. The card
operations that possession proofs need are passed in as callables.
"""

from sdbox.trust.errors import TrustError
from sdbox.trust.revocation import CrlSet, CrlSource
from sdbox.trust.validate import Purpose, ValidatedChain, validate, validate_directory_signer

__all__ = [
    "CrlSet",
    "CrlSource",
    "Purpose",
    "TrustError",
    "ValidatedChain",
    "validate",
    "validate_directory_signer",
]
