"""The layering of shared/DESIGN.md ("Layout"), enforced: every import of every sdbox module.

One table says which part of sdbox may import which (docs/ARCHITECTURE.md,
"Layering", shows the same table); a second says which modules alone may
import the transport libraries. Imports are read from the source (AST),
including those inside functions and under ``if TYPE_CHECKING:``, so a
lazy import cannot walk around the table.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SDBOX = ROOT / "sdbox"

# What every part may use (foundation, pure libraries), then what each part may import.
FOUNDATION = frozenset(
    {"sdbox", "sdbox.errors", "sdbox.logging", "sdbox.config", "sdbox.audit", "sdbox.process",
     "sdbox.certificates", "sdbox.time_floor"}
)  # fmt: skip
# what the pure libraries may use
BASE = frozenset({"sdbox", "sdbox.errors", "sdbox.logging", "sdbox.certificates", "sdbox.time_floor"})
PURE = frozenset({"sdbox.smartcard", "sdbox.biometric", "sdbox.trust"})

# part -> the parts it may import (besides itself). A module belongs to the longest
# part that prefixes its name. Parts absent from the design's layout fail the test
# until they are placed here.
ALLOWED: dict[str, frozenset[str]] = {
    # foundation: errors, logging level, settings machinery, the audit trail
    "sdbox": frozenset(),
    "sdbox.errors": frozenset(),
    "sdbox.logging": frozenset(),
    "sdbox.config": frozenset({"sdbox.errors"}),
    "sdbox.audit": frozenset(),
    "sdbox.process": frozenset({"sdbox.errors"}),  # the one runner of external programs
    "sdbox.certificates": frozenset({"sdbox.errors"}),  # the one certificate and CRL loader
    "sdbox.time_floor": frozenset(),  # the trust store's floor file, read at boot without it
    # pure libraries: no D-Bus, no CLI, no printing, nothing of the box
    "sdbox.smartcard": BASE,
    "sdbox.biometric": BASE,
    "sdbox.trust": BASE,
    # the card emulator (tests, demo, `sdbox emulate`): the card's side, issued under a PKI
    "sdbox.smartcard.emulator": BASE | PURE,
    # the box's runtime
    "sdbox.session": FOUNDATION | PURE,
    "sdbox.centre": FOUNDATION | PURE,
    "sdbox.identity": FOUNDATION | PURE | {"sdbox.centre"},
    "sdbox.network": FOUNDATION | PURE | {"sdbox.identity", "sdbox.centre", "sdbox.network.site"},
    # the site profile: declared settings only, so that flashing can check one before writing it
    "sdbox.network.site": FOUNDATION,
    "sdbox.renewal": FOUNDATION | PURE | {"sdbox.centre"},
    "sdbox.agent": FOUNDATION
    | PURE
    | {"sdbox.agent.api", "sdbox.session", "sdbox.identity", "sdbox.network", "sdbox.centre",
       "sdbox.renewal", "sdbox.network.site"},
    # the agent's API without D-Bus: what the greeter may know of the agent
    "sdbox.agent.api": frozenset({"sdbox.session"}),
    # on top
    "sdbox.ui": frozenset({"sdbox.agent.api"}),
    "sdbox._cli": FOUNDATION
    | PURE
    | {
        "sdbox.smartcard.emulator", "sdbox.session", "sdbox.identity", "sdbox.network",
        "sdbox.network.site",
        "sdbox.centre", "sdbox.renewal", "sdbox.agent", "sdbox.agent.api", "sdbox.broker",
        "sdbox.fleet",
        "sdbox.bootimage",
    },
    "sdbox.__main__": frozenset({"sdbox._cli"}),
    # the centre side: the pure libraries and the protocol's definitions, never the box's runtime
    "sdbox.broker": FOUNDATION | PURE | {"sdbox.centre.protocol", "sdbox.centre.bioauth"},
    "sdbox.fleet": FOUNDATION | PURE | {"sdbox.centre.protocol", "sdbox.centre.fleet"},
    # R&D tooling (image, flashing; slots.py runs on the box with the standard library only)
    # (flashing checks the site profile and the project catalogue before writing them)
    "sdbox.bootimage": FOUNDATION | {"sdbox.network.site", "sdbox.smartcard.catalogue"},
}

# third-party module -> the only sdbox modules that may import it (the transports)
TRANSPORTS: dict[str, frozenset[str]] = {
    "smartcard": frozenset({"sdbox.smartcard.pcsc"}),  # pyscard
    "vici": frozenset({"sdbox.network.tunnel"}),  # strongSwan's own binding
    "pkcs11": frozenset(
        {"sdbox.smartcard.pkcs11", "sdbox.identity.tpm", "sdbox.identity.provision"}
    ),
    "dbus_fast": frozenset({"sdbox.agent.dbus"}),
    "systemd": frozenset({"sdbox.agent.service", "sdbox.centre.journal"}),
    "pyudev": frozenset({"sdbox.agent.sensors"}),
    "gi": frozenset({"sdbox.ui.app", "sdbox.ui.panels", "sdbox.biometric.libfprint"}),
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, module: str) -> Iterator[tuple[str, int]]:
    """(imported module, line) for every import in ``path``, wherever it sits."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against the importing package
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            yield base, node.lineno
            for alias in node.names:  # `from sdbox.agent import api` imports sdbox.agent.api
                yield f"{base}.{alias.name}", node.lineno


def _part(module: str) -> str | None:
    """The table's part that ``module`` belongs to (the longest prefix)."""
    best = None
    for part in ALLOWED:
        if (module == part or module.startswith(part + ".")) and (
            best is None or len(part) > len(best)
        ):
            best = part
    if best == "sdbox" and module != "sdbox":
        return None  # a new top-level module or package: not placed in the table yet
    return best


def _is_allowed(importer: str, imported: str) -> bool:
    # an allowed part does not open the parts inside it ("sdbox.smartcard" is not its
    # emulator, "sdbox.agent" not its API module, "sdbox" itself only the root module)
    part = _part(imported)
    return any(
        (imported == a or imported.startswith(a + ".")) and _part(a) == part
        for a in ALLOWED[importer]
    )


def _sources() -> list[tuple[Path, str]]:
    return [(p, _module_name(p)) for p in sorted(SDBOX.rglob("*.py"))]


def layering_violations() -> list[str]:
    """Every import that the table forbids, as ``module:line imports target (part -> part)``."""
    known = {module for _, module in _sources()}
    found = []
    for path, module in _sources():
        source = _part(module)
        if source is None:
            found.append(f"{module} is in no part of the table: place it in ALLOWED")
            continue
        for name, line in _imports(path, module):
            if not (name == "sdbox" or name.startswith("sdbox.")):
                continue
            # `from m import name`: the module is m, unless name is a module itself
            target = name.rpartition(".")[0] if name not in known and name.rpartition(".")[0] in known else name
            destination = _part(target)
            if destination is None:
                found.append(f"{module}:{line} imports {target}, which is in no part of the table")
            elif destination != source and not _is_allowed(source, target):
                found.append(f"{module}:{line} imports {target} ({source} may not use {destination})")
    return list(dict.fromkeys(found))  # `from m import a, b`: m once


def test_every_import_follows_the_layering() -> None:
    found = layering_violations()
    assert not found, "imports against the layering (tests/unit/test_layering.py):\n" + "\n".join(
        found
    )


def test_only_the_transport_modules_import_the_transport_libraries() -> None:
    found = []
    for path, module in _sources():
        for target, line in _imports(path, module):
            top = target.partition(".")[0]
            if top in TRANSPORTS and module not in TRANSPORTS[top]:
                found.append(f"{module}:{line} imports {target} (only {sorted(TRANSPORTS[top])})")
    assert not found, "\n".join(found)


def test_the_table_has_no_cycles() -> None:
    # one part may import another only one way, so no two parts can import each other
    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for allowed in ALLOWED[start]:
            step = _part(allowed) or allowed
            if step == goal:
                return True
            if step in ALLOWED and step not in seen and step != start:
                seen.add(step)
                if reaches(step, goal, seen):
                    return True
        return False

    cyclic = [part for part in ALLOWED if reaches(part, part, set())]
    assert not cyclic, f"parts that can reach themselves: {cyclic}"


@pytest.mark.parametrize(
    ("importer", "imported"),
    [
        ("sdbox.identity.enrol", "sdbox.broker.server"),  # the box imports the centre side
        ("sdbox.broker.server", "sdbox.identity"),  # the centre side imports the box's runtime
        ("sdbox.broker.server", "sdbox.centre.client"),  # ... the box's client, not the protocol
        ("sdbox.renewal.due", "sdbox.agent.events"),  # renewal <-> agent
        ("sdbox.ui.view", "sdbox.session.outcome"),  # the greeter past the agent's API
        ("sdbox.ui.view", "sdbox.agent.dbus"),
        ("sdbox.smartcard.piv", "sdbox.trust.pki"),  # a pure library on another
        ("sdbox.centre.client", "sdbox.identity"),
        ("sdbox.agent.card", "sdbox.smartcard.emulator.applet"),  # test tooling in the box
        ("sdbox.smartcard.piv", "sdbox.smartcard.emulator.state"),
        ("sdbox.agent.api", "sdbox.agent.dbus"),  # the API module stays free of D-Bus
    ],
)
def test_the_table_forbids_what_the_design_forbids(importer: str, imported: str) -> None:
    source = _part(importer)
    assert source is not None
    assert _part(imported) != source
    assert not _is_allowed(source, imported)


def test_the_reader_sees_imports_inside_functions_and_relative_ones(tmp_path: Path) -> None:
    code = (
        "from __future__ import annotations\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from sdbox.agent.events import Transition\n"
        "def later() -> None:\n    import sdbox.broker.server\n"
        "from . import due\nfrom .flow import Renewer\n"
    )
    path = tmp_path / "mod.py"
    path.write_text(code)
    got = {name for name, _line in _imports(path, "sdbox.renewal.mod")}
    assert {"sdbox.agent.events", "sdbox.broker.server", "sdbox.renewal.due"} <= got
    assert "sdbox.renewal.flow" in got
