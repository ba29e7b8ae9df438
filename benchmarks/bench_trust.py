"""Trust path with a 100,000-entry CRL: load, lookup, chain validation."""

from __future__ import annotations

from sdbox.trust.bench import TARGETS
from sdbox.trust.bench import run as _run


def run() -> dict[str, object]:
    """Print and return the figures (targets alongside, never asserted)."""
    figures = _run()
    for name, value in figures.items():
        target = TARGETS.get(name)
        print(f"{name:<22} {value:>14.3f}" + (f"   target ≤ {target}" if target else ""))
    return {"figures": figures, "targets": TARGETS}
