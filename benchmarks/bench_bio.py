"""The on-card matcher on a generated population (issue 3 targets), Bozorth3 beside it.

Targets: FNMR <= 1 % at FMR = 1e-4 on the default profile; median match time
<= 2 ms; a lower EER than NIST's Bozorth3 on the same pairs. Synthetic data
is easier than real prints. Bozorth3 runs when its NBIS library is built
(`make bench` builds it: `make nbis`); otherwise the table says so. The
population is identities 101 onwards: the matcher was tuned on 1-100
(sdbox.biometric.bench.TUNING_SEEDS).
"""

from __future__ import annotations

import os

from sdbox.biometric import synth
from sdbox.biometric.bench import TUNING_SEEDS, as_dict, bozorth3_missing, report_seeds
from sdbox.biometric.bench import run as run_population

FINGERS = int(os.environ.get("SDBOX_BIO_BENCH_FINGERS", "500"))


def run() -> dict[str, object]:
    """Both distortion profiles, both matchers; prints a table."""
    out: dict[str, object] = {}
    seeds, tuning = report_seeds(FINGERS), TUNING_SEEDS
    print(
        f"identities {seeds.start}-{seeds.stop - 1}"
        f" (the matcher was tuned on {tuning.start}-{tuning.stop - 1}: not reported)"
    )
    print(
        f"{'profile':8} {'matcher':8} {'fingers':>7} {'genuine':>8} {'impostor':>9} {'EER':>7} {'FNMR@1e-3':>18} {'FNMR@1e-4':>18} {'median ms':>9} {'p99 ms':>7}"
    )
    for profile in (synth.DEFAULT, synth.HARD):
        for r in run_population(FINGERS, profile):
            ci3 = f"[{r.fnmr_at_fmr_1e3_ci[0]:.4f},{r.fnmr_at_fmr_1e3_ci[1]:.4f}]"
            ci4 = f"[{r.fnmr_at_fmr_1e4_ci[0]:.4f},{r.fnmr_at_fmr_1e4_ci[1]:.4f}]"
            print(
                f"{r.profile:8} {r.matcher:8} {r.fingers:7d} {r.genuine:8d} {r.impostor:9d} {r.eer:7.4f} {r.fnmr_at_fmr_1e3:.4f} {ci3:>12} {r.fnmr_at_fmr_1e4:.4f} {ci4:>12} {r.median_match_ms:9.2f} {r.p99_match_ms:7.2f}"
            )
            out[f"{profile.name}/{r.matcher}"] = as_dict(r)
    missing = bozorth3_missing()
    if missing:
        out["bozorth3"] = {"missing": missing}
    print(
        "targets (default profile): FNMR <= 0.01 at FMR 1e-4, median <= 2 ms, EER below Bozorth3's; "
        + (missing or "Bozorth3 on exactly the same pairs")
    )
    return out
