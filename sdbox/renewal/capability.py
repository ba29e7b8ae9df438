"""Whether the box may renew a card's project keys at all: asked of its capabilities.

Renewal generates an EC key in a free retired slot, proves it by ECDH and
switches the card's signed directory (docs/renewal.md). A card generation
that has no directory (the one-project card) or whose project keys are RSA
cannot go through that, and the job says so instead of failing half-way.
The decision is :func:`sdbox.smartcard.variants.renewal_limit` over the
card's variant capabilities, never over a variant's name; a card whose
variant cannot be established (unknown, or contradicting itself) is not
touched either: renewal writes to the card, so it fails closed.
"""

from __future__ import annotations

from sdbox.smartcard.biosso import BioSsoSession
from sdbox.smartcard.variants import ContradictoryCard, identify, renewal_limit


def renewal_refusal(session: BioSsoSession, atr: bytes) -> str | None:
    """Why renewal must not run on ``session``'s card (None: its capabilities allow it).

    Reads only public objects (``sdbox card identify``'s reads); card errors
    (a card pulled) propagate like any other card error of the run.
    """
    try:
        found = identify(session, atr)
    except ContradictoryCard as exc:
        return f"renewal: the card contradicts itself ({exc.message}); it is not touched"
    if found.capabilities is None:
        return f"renewal: this card's variant is not known ({found.reason}); it is not touched"
    return renewal_limit(found.capabilities)
