"""The matcher on real fingerprints: FVC2002 DB1_B, DB2_B, DB3_B, sdbox and Bozorth3 side by side.

Every image goes through the box's own pipeline (image checks, libfprint's
mindtct, the reliability cut, the card's BIT; sdbox.biometric.realprints);
both matchers score exactly the same compact templates. Per set and pooled
(one global threshold): EER and FNMR at FMR 1 % and 0.1 %, 95 % intervals
from a bootstrap over fingers, and the pair counts. Also the sdbox
matcher's shipped threshold (FNMR / FMR there) and its median time per
comparison. One process (the machine is shared). Skips, saying why, where
the sets are absent.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict

from sdbox.biometric import bozorth3, matcher, quality, realprints
from sdbox.biometric.realprints import Rates, Scores


def _row(label: str, name: str, r: Rates) -> str:
    def ci(low_high: tuple[float, float]) -> str:
        return f"[{low_high[0] * 100:5.1f},{low_high[1] * 100:5.1f}]"

    return (
        f"{label:7} {name:8} {r.genuine:6d} {r.impostor:7d} "
        f"{r.eer * 100:6.2f} {ci(r.eer_ci)} "
        f"{r.fnmr_at_fmr_1pc * 100:6.2f} {ci(r.fnmr_at_fmr_1pc_ci)} "
        f"{r.fnmr_at_fmr_01pc * 100:6.2f} {ci(r.fnmr_at_fmr_01pc_ci)}"
    )


def run() -> dict[str, object]:
    """Extract, score, print the table; the figures as a dict."""
    why = realprints.missing()
    if why:
        print(f"skipped: {why}")
        return {"skipped": why}
    matchers = {"sdbox": matcher.score}
    if bozorth3.available():
        matchers["bozorth3"] = bozorth3.score
    started = time.perf_counter()
    made = {name: realprints.templates(name) for name in realprints.SETS}
    refused = {name: sum(t is None for t in made[name].values()) for name in made}
    sizes = [len(t) // 3 for m in made.values() for t in m.values() if t is not None]
    print(
        f"templates: {sum(len(m) for m in made.values())} images in "
        f"{time.perf_counter() - started:.0f} s; minutiae per template median "
        f"{statistics.median(sizes):.0f} (max {max(sizes)}); refused by the pipeline: {refused}"
    )
    scores: dict[str, dict[str, Scores]] = {}
    for name, compare in matchers.items():
        scores[name] = {
            s: realprints.score_set(s, made[s], compare, time.perf_counter) for s in made
        }
    print(
        f"{'set':7} {'matcher':8} {'genuine':>6} {'impost.':>7} {'EER %':>6} {'95 % CI':>13} "
        f"{'FNMR@1%':>6} {'95 % CI':>13} {'FNMR@0.1%':>6} {'95 % CI':>13}"
    )
    out: dict[str, object] = {"refused_by_pipeline": refused}
    for label in [*realprints.SETS, "pooled"]:
        for name in matchers:
            chosen = list(scores[name].values()) if label == "pooled" else [scores[name][label]]
            r = realprints.rates(chosen)
            print(_row(label, name, r))
            out[f"{label}/{name}"] = asdict(r)
    sdbox_sets = list(scores["sdbox"].values())
    fnmr, fmr = realprints.at_threshold(sdbox_sets, matcher.THRESHOLD)
    seconds = [t for s in sdbox_sets for t in s.seconds]
    median_ms = statistics.median(seconds) * 1000
    print(
        f"sdbox at its shipped threshold {matcher.THRESHOLD}: FNMR {fnmr * 100:.2f} %, "
        f"FMR {fmr * 100:.3f} % (pooled); median {median_ms:.2f} ms per comparison "
        f"(p99 {sorted(seconds)[int(len(seconds) * 0.99)] * 1000:.2f}), one process"
    )
    pooled = realprints.rates(sdbox_sets, bootstrap=0)
    print(f"capture quality gate (clear area >= {quality.THRESHOLD:.0f} mm²), genuine pairs failing "
          f"at sdbox's pooled FMR-1 % threshold ({pooled.threshold_fmr_1pc:.4f}):")  # fmt: skip
    gate: dict[str, object] = {}
    for s in sdbox_sets:
        below_count, below, above = realprints.gate_effect(
            s, realprints.qualities(s.set_name), pooled.threshold_fmr_1pc
        )
        print(f"  {s.set_name}: {below_count} of 80 captures below; their pairs fail "
              f"{below * 100:.0f} %, the others' {above * 100:.0f} %")  # fmt: skip
        gate[s.set_name] = {"below": below_count, "fail_below": below, "fail_above": above}
    out["quality_gate"] = gate
    if "bozorth3" not in matchers:
        print(f"Bozorth3 not run: no NBIS library at {bozorth3.library_path()} (make nbis)")
    out["sdbox_shipped"] = {"threshold": matcher.THRESHOLD, "fnmr": fnmr, "fmr": fmr,
                            "median_ms": median_ms}  # fmt: skip
    return out
