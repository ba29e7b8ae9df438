"""The on-card matcher used by the card emulator's on-card comparison (OCC).

Interface: :func:`score` compares a probe with a reference, both in the
ISO/IEC 19794-2 compact-card format, and returns a similarity; a comparison
is a match when the score reaches :data:`THRESHOLD`.

PLACEHOLDER until the biometrics issue lands: only an identical template
matches.
"""

from __future__ import annotations

import hmac

THRESHOLD = 1.0


def score(probe: bytes, reference: bytes) -> float:
    """Similarity of ``probe`` to ``reference`` (placeholder: exact match only)."""
    return 1.0 if hmac.compare_digest(probe, reference) else 0.0
