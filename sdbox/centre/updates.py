"""The box's side of a staged update: download, check, install into the other slot, reboot politely.

The fleet service offers an update in a check-in's answer (version, SHA-256,
where to fetch it). The box downloads it through the tunnel into the data
partition, checks the hash (the service's word for *which* bundle), and hands
it to RAUC, which checks the signature and refuses a downgrade (the box's own
word for *whether*). RAUC installs into the other slot; the box reboots only
when no card is in a reader and the local time is inside the reboot window (a
researcher's session is never cut by an update). After the reboot, the running
image either is the new version (reported at the next check-in: installed) or
RAUC fell back to the old slot after a failed trial boot, and the box reports
``update_failed:<version>`` so that the rollout can pause itself.
"""

from __future__ import annotations

import hashlib
import json
import os
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, time
from pathlib import Path
from typing import Any

from sdbox.centre.errors import CentreUnreachable
from sdbox.errors import SdboxError
from sdbox.process import CommandFailed, run

MAX_BUNDLE_BYTES = 2 << 30
_CHUNK = 1 << 20


class UpdateError(SdboxError):
    """An offered update could not be fetched or installed (names why; the box keeps running)."""


@dataclass(frozen=True)
class Offer:
    """What the fleet service offered."""

    version: str
    sha256: str
    path: str

    @classmethod
    def parse(cls, raw: object) -> Offer | None:
        """The offer in a check-in answer, if well formed (anything else is ignored)."""
        if not isinstance(raw, dict):
            return None
        version, sha, path = raw.get("version"), raw.get("sha256"), raw.get("path")
        if not (isinstance(version, str) and isinstance(sha, str) and isinstance(path, str)):
            return None
        if len(sha) != 64 or not all(c in "0123456789abcdef" for c in sha):
            return None
        if path != f"/v1/bundles/{sha}":
            return None  # the box fetches from the service it reports to, by hash only
        return cls(version, sha, path)


def parse_window(text: str) -> tuple[time, time]:
    """``HH:MM-HH:MM`` (local time; may wrap past midnight)."""
    try:
        start, end = (time.fromisoformat(part.strip()) for part in text.split("-"))
    except ValueError as exc:
        raise UpdateError(f"reboot window {text!r} is not HH:MM-HH:MM") from exc
    return start, end


def in_window(now: datetime, window: tuple[time, time]) -> bool:
    """Whether ``now`` (local) falls inside the window."""
    start, end = window
    moment = now.time()
    return start <= moment < end if start <= end else moment >= start or moment < end


def rauc_install(bundle: Path) -> None:
    """``rauc install`` into the other slot (RAUC checks the signature; our handler the version)."""
    try:
        run(["rauc", "install", str(bundle)], what="rauc install", timeout=1800.0)
    except CommandFailed as exc:
        raise UpdateError(f"RAUC refused or failed the update: {exc.message}") from exc


class Updater:
    """Fetches and installs offered bundles; remembers what it installed across the reboot."""

    def __init__(
        self,
        base_url: str,
        state_dir: Path,
        *,
        install: Callable[[Path], None],
        context: Any = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.dir = state_dir / "updates"
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._install = install
        self.context = context

    @property
    def _pending_file(self) -> Path:
        return self.dir / "pending.json"

    def pending(self) -> str | None:
        """The version installed into the other slot and not yet booted (or judged)."""
        try:
            value = json.loads(self._pending_file.read_text()).get("version")
        except (FileNotFoundError, ValueError, AttributeError):
            return None
        return value if isinstance(value, str) else None

    def _set_pending(self, version: str | None) -> None:
        if version is None:
            self._pending_file.unlink(missing_ok=True)
            return
        tmp = self._pending_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"version": version}))
        os.replace(tmp, self._pending_file)

    def after_boot(self, running_version: str) -> list[str]:
        """Judge an install from before this boot: the problems to report (empty if it took)."""
        pending = self.pending()
        if pending is None:
            return []
        self._set_pending(None)
        return [] if pending == running_version else [f"update_failed:{pending}"]

    def fetch(self, offer: Offer) -> Path:
        """Download the offered bundle and check its SHA-256; the file on the data partition."""
        target = self.dir / f"{offer.sha256}.raucb"
        if target.exists():
            return target
        partial = target.with_suffix(".partial")
        sha = hashlib.sha256()
        received = 0
        request = urllib.request.Request(self.base_url + offer.path)  # noqa: S310  (the service's http(s) URL)
        try:
            with urllib.request.urlopen(request, context=self.context, timeout=60) as answer, \
                    partial.open("wb") as out:  # noqa: S310  # fmt: skip
                for block in iter(lambda: answer.read(_CHUNK), b""):
                    received += len(block)
                    if received > MAX_BUNDLE_BYTES:
                        raise UpdateError("the offered bundle is larger than any sdbox bundle")
                    sha.update(block)
                    out.write(block)
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            partial.unlink(missing_ok=True)
            raise CentreUnreachable(f"the update could not be downloaded ({exc})") from exc
        except UpdateError:
            partial.unlink(missing_ok=True)
            raise
        if sha.hexdigest() != offer.sha256:
            partial.unlink(missing_ok=True)
            raise UpdateError(
                f"the downloaded bundle for {offer.version} does not have the offered SHA-256: "
                "discarded (a damaged download or the wrong file)"
            )
        partial.replace(target)
        return target

    def apply(self, offer: Offer) -> None:
        """Fetch, install into the other slot (RAUC checks signature and version), remember it."""
        if self.pending() == offer.version:
            return  # installed already; waiting for the reboot
        bundle = self.fetch(offer)
        try:
            self._install(bundle)
        finally:
            bundle.unlink(missing_ok=True)  # installed or refused: not kept on the data partition
        self._set_pending(offer.version)

    def reboot_due(self, now: datetime, window: tuple[time, time], card_present: bool) -> bool:
        """Whether to reboot into the installed update now."""
        return self.pending() is not None and not card_present and in_window(now, window)
