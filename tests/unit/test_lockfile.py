"""The Debian package ships exactly the set pyproject.toml pins (debian/*.lock)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_ENTRY = re.compile(r"^([A-Za-z0-9_.-]+)==(\S+) \\\n\s+--hash=sha256:([0-9a-f]{64})$", re.M)


def _lock(name: str) -> dict[str, str]:
    text = (ROOT / "debian" / name).read_text()
    entries = {m[1].lower(): m[2] for m in _ENTRY.finditer(text)}
    requirement_lines = [line for line in text.splitlines() if "==" in line]
    assert len(entries) == len(requirement_lines), f"debian/{name}: an entry without its sha256"
    return entries


def _pins(requirements: list[str]) -> dict[str, str]:
    pins = {}
    for requirement in requirements:
        name, _, version = requirement.partition("==")
        assert version, f"pyproject.toml: {requirement!r} is not an exact pin"
        pins[name.strip().lower().replace("_", "-")] = version.strip()
    return pins


def test_every_runtime_pin_is_locked_with_its_hash() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    locked = _lock("requirements.lock")
    for name, version in _pins(project["project"]["dependencies"]).items():
        assert locked.get(name) == version, (
            f"pyproject.toml pins {name}=={version} but debian/requirements.lock has "
            f"{locked.get(name)!r}: run `make lock`"
        )


def test_the_build_backend_is_locked() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    locked = _lock("build-requirements.lock")
    assert _pins(project["build-system"]["requires"]).items() <= locked.items()
