"""``python -m fuzz [--seconds N] [target ...]``: each target in its own atheris process.

Each target starts from its committed seeds (fuzz/corpus/<target>/, made by
``python -m fuzz.seeds``), read-only; what the fuzzer finds beyond them goes
to build/fuzz/<target>/corpus/. Exit status 0 when no target found an input
that raises anything but a typed error; the crashing input is written to
build/fuzz/<target>/ (libFuzzer's crash-* files) and named in the output.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

from fuzz.targets import TARGETS

SEEDS = Path(__file__).parent / "corpus"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=5, help="seconds per target")
    parser.add_argument("targets", nargs="*", help=f"targets (default all: {', '.join(TARGETS)})")
    args = parser.parse_args()
    failed = []
    for name in args.targets or list(TARGETS):
        workdir = Path("build/fuzz") / name
        (workdir / "corpus").mkdir(parents=True, exist_ok=True)
        start = time.monotonic()
        # libFuzzer writes new inputs to the first directory only: the seeds stay as committed
        corpora = [str(workdir / "corpus"), str(SEEDS / name)]
        proc = subprocess.run(
            [sys.executable, "-m", "fuzz.run", name, *corpora,
             f"-max_total_time={args.seconds}", f"-artifact_prefix={workdir}/", "-rss_limit_mb=2048", "-print_final_stats=1"],
            capture_output=True, text=True, timeout=args.seconds * 4 + 60, check=False,
        )  # fmt: skip
        runs = re.findall(r"stat::number_of_executed_units:\s*(\d+)", proc.stderr)
        executions = int(runs[-1]) if runs else 0
        status = "ok" if proc.returncode == 0 else "CRASH"
        print(
            f"{name:15} {executions:9d} executions in {time.monotonic() - start:5.1f} s  {status}",
            flush=True,
        )
        if proc.returncode != 0:
            failed.append(name)
            print("\n".join(proc.stderr.splitlines()[-25:]), file=sys.stderr)
    if failed:
        print(f"crashes in: {', '.join(failed)} (inputs under build/fuzz/)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
