"""Object identifiers of the sdbox PKI profile.

sdbox has no private enterprise number, so its arc is a UUID-derived OID
(ITU-T X.667, arc ``2.25``): allocation-free and collision-free. A deployment
that owns an enterprise arc may re-issue its PKI under it; the box only
compares OIDs for equality.
"""

from __future__ import annotations

from cryptography.x509.oid import ObjectIdentifier

# 2.25.<a random UUID as an integer>, drawn once for sdbox.
SDBOX_ARC = "2.25.62369838210459661955865901654231296628"

# Extended key usages (arc .1)
EKU_DIRECTORY_SIGNING = ObjectIdentifier(f"{SDBOX_ARC}.1.1")
"""Signs the project directory stored on the card."""
EKU_ENROLMENT_OPERATOR = ObjectIdentifier(f"{SDBOX_ARC}.1.2")
"""Signs remote biometric enrolment authorisations (docs/remote-enrolment.md): an
operator of the card office, certified by the project CA under the project policy."""

# Certificate policies (arc .2). Each issuing CA carries the policy of its role
# and certifies leaves under that same policy, so that the box can tell the
# project CA from the server CA by what the certificates say, not by a name.
POLICY_PROJECT = ObjectIdentifier(f"{SDBOX_ARC}.2.1")
"""Project credentials, holder certificates and the directory signer."""
POLICY_SERVER = ObjectIdentifier(f"{SDBOX_ARC}.2.2")
"""Bubble servers."""
POLICY_BOX = ObjectIdentifier(f"{SDBOX_ARC}.2.3")
"""Box identities."""

PROJECT_URN_PREFIX = "urn:sdbox:project:"
BOX_URN_PREFIX = "urn:sdbox:box:"
