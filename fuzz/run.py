"""One atheris target (``python -m fuzz.run TARGET CORPUS... [libFuzzer flags]``).

``python -m fuzz.run --check`` runs every committed seed through its target
in a fresh process and prints, as JSON, the sdbox modules that would run
without coverage feedback (tests/unit/test_fuzz_corpus.py).
"""

from __future__ import annotations

import inspect
import json
import sys
from pathlib import Path
from types import CodeType, ModuleType

import atheris


def instrumented_targets() -> ModuleType:
    """fuzz.targets with every sdbox module it imports instrumented for coverage.

    fuzz.targets imports all the code under test at its top, so importing it
    here, inside the hook, instruments each sdbox module as it is first
    loaded. A module first imported anywhere else (inside a target, or
    before this call) would run without coverage feedback.
    """
    with atheris.instrument_imports(include=["sdbox"]):
        from fuzz import targets
    return targets


def uninstrumented(package: str = "sdbox") -> list[str]:
    """The loaded modules of ``package`` with a function that atheris did not instrument.

    Instrumented code calls atheris._trace_branch; functions generated at run
    time (dataclasses' __init__, ...) have no source file of the module and
    are left out.
    """
    blind = []
    for name, module in sorted(sys.modules.items()):
        if name != package and not name.startswith(package + "."):
            continue
        source = getattr(module, "__file__", None)
        codes: list[CodeType] = []
        for value in vars(module).values():
            if getattr(value, "__module__", None) != name:
                continue
            members = vars(value).values() if inspect.isclass(value) else [value]
            codes += [m.__code__ for m in members if inspect.isfunction(m)]
        if any(c.co_filename == source and "_trace_branch" not in c.co_names for c in codes):
            blind.append(name)
    return blind


def check(seeds: Path) -> dict[str, list[str]]:
    """Modules left blind: first imported while seeds ran, or loaded but not instrumented."""
    targets = instrumented_targets()
    loaded = set(sys.modules)
    for name, target in targets.TARGETS.items():
        for seed in sorted((seeds / name).iterdir()):
            targets.guarded(target)(seed.read_bytes())
    late = sorted(m for m in set(sys.modules) - loaded if m.split(".")[0] == "sdbox")
    return {"imported_while_fuzzing": late, "uninstrumented": uninstrumented()}


def main() -> None:
    if sys.argv[1:] == ["--check"]:
        print(json.dumps(check(Path(__file__).parent / "corpus")))
        return
    targets = instrumented_targets()
    name = sys.argv.pop(1)
    atheris.Setup(sys.argv, targets.guarded(targets.TARGETS[name]))
    atheris.Fuzz()


if __name__ == "__main__":
    main()
