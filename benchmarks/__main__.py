"""``python -m benchmarks`` (``make bench``): run every ``bench_*`` module.

Each module has ``run() -> dict[str, object]``, prints its own table, and
returns its figures; this runner adds the machine description and writes all
figures to ``build/bench.json``.
"""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import platform
import sys
from pathlib import Path

import benchmarks


def machine() -> dict[str, object]:
    """What the numbers were measured on."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def main(selected: list[str]) -> int:
    """Run the benchmarks named (all when none)."""
    info = machine()
    print(f"machine: {info['cpu']}, {info['cores']} cores, Python {info['python']}")
    results: dict[str, object] = {"machine": info}
    names = sorted(m.name for m in pkgutil.iter_modules(benchmarks.__path__))
    for name in names:
        if not name.startswith("bench_"):
            continue
        short = name.removeprefix("bench_")
        if selected and short not in selected:
            continue
        print(f"\n== {short} ==", flush=True)
        module = importlib.import_module(f"benchmarks.{name}")
        results[short] = module.run()
    out = Path("build/bench.json")
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str))
    print(f"\nfigures written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
