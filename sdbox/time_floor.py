"""The time floor: below it the box's clock is wrong and nothing is validated.

The newest of the image's build time and every accepted CRL's thisUpdate,
persisted beside the cached CRLs (:class:`sdbox.trust.store.RevocationStore`
raises it). Kept out of :mod:`sdbox.trust`, with the standard library only:
``sdbox tunnel clock-floor`` reads it at every boot before charon and the
agent start, and importing anything in ``sdbox.trust`` loads the package's
validation (cryptography's X.509 stack), a second of that boot under
emulation for a command that reads one JSON file.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

FLOOR_FILE = "time-floor.json"


def read_floor(crl_dir: Path, build_time: datetime) -> datetime:
    """The newest of ``build_time`` and the floor saved in ``crl_dir``."""
    floor = build_time
    try:
        saved = json.loads((crl_dir / FLOOR_FILE).read_text())
        floor = max(floor, datetime.fromisoformat(saved["floor"]))
    except (FileNotFoundError, KeyError, ValueError, TypeError):
        pass  # a missing or damaged floor file falls back to the build time
    return floor


def floor_document(moment: datetime) -> bytes:
    """What :data:`FLOOR_FILE` holds for a floor at ``moment``."""
    return json.dumps({"floor": moment.isoformat()}).encode()
