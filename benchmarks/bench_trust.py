"""Trust path with a 100,000-entry CRL: load, lookup, chain validation."""

from __future__ import annotations

from sdbox.trust.bench import TARGETS
from sdbox.trust.bench import run as _run


def run() -> dict[str, object]:
    """Print and return the figures (targets alongside, never asserted)."""
    figures = _run()
    for name, value in figures.items():
        target = TARGETS.get(name)
        print(f"{name:<24} {value:>14.3f}" + (f"   target ≤ {target}" if target else ""))
    # validate() given a plain list: its first call indexes the big CRL (the
    # cost every call paid before issue 15), the calls after it reuse that index.
    print(
        "validate() with a plain list of CRLs: "
        f"first call {figures['validate_list_first_ms']:.1f} ms, "
        f"then p50 {figures['validate_list_median_ms']:.2f} ms, "
        f"p95 {figures['validate_list_p95_ms']:.2f} ms"
    )
    return {"figures": figures, "targets": TARGETS}
