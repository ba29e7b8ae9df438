"""A development PKI shared by the trust tests (fixed clock: tests never read the wall clock)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from sdbox.trust.pki import Pki

T0 = datetime(2030, 1, 1, tzinfo=UTC)
"""When the test PKI was created."""


@pytest.fixture(scope="session")
def pki_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pki") / "pki"
    Pki.init(path, now=T0)
    return path


@pytest.fixture
def pki(pki_dir: Path, tmp_path: Path) -> Pki:
    """A private copy of the session PKI, so revocations do not leak between tests."""
    import shutil

    copy = tmp_path / "pki"
    shutil.copytree(pki_dir, copy)
    return Pki.open(copy)
