"""First-boot enrolment on the reference broker: one-time tokens and box certificates.

A token is written on the box's config partition at flashing
(``sdbox flash --enrolment-token-file``) and registered here, hashed: the
register (a JSON file, 0600) keeps only SHA-256 digests of the tokens, the
box id each was made for, and when it was used. Tokens are 256-bit random
values, so a plain digest is enough (nothing to brute-force). A token is
consumed by its first successful use and refused after that.

The box id comes from the register, never from the box's request: a token
names one box, and the centre decides what that box is called.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sdbox.broker.errors import BrokerError
from sdbox.centre.protocol import Refused

TOKEN_BYTES = 32
MAX_TOKEN = 4096


class EnrolmentRegisterError(BrokerError):
    """The token register cannot be read or written."""


def digest(token: str) -> str:
    """What the register keeps of a token."""
    return hashlib.sha256(token.encode()).hexdigest()


class EnrolmentTokens:
    """The broker's register of one-time enrolment tokens (hashed at rest)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def _load(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise EnrolmentRegisterError(
                f"the enrolment token register {self.path} cannot be read: {exc}"
            ) from exc
        tokens = data.get("tokens") if isinstance(data, dict) else None
        if not isinstance(tokens, dict):
            raise EnrolmentRegisterError(f"the enrolment token register {self.path} is damaged")
        return tokens

    def _save(self, tokens: dict[str, dict[str, Any]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as out:
                json.dump({"tokens": tokens}, out, indent=2, sort_keys=True)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise

    def add(self, box_id: str) -> str:
        """A new token for ``box_id``; only its digest is kept. Give it to flashing, once."""
        if not box_id or len(box_id) > 64 or not box_id.isprintable():
            raise EnrolmentRegisterError("a box id is 1 to 64 printable characters")
        token = secrets.token_urlsafe(TOKEN_BYTES)
        with self._lock:
            tokens = self._load()
            tokens[digest(token)] = {
                "box_id": box_id,
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
                "used": None,
            }
            self._save(tokens)
        return token

    def consume(self, token: str) -> str:
        """The box id the token was made for; the token is used up. Refused if unknown or used."""
        with self._lock:
            tokens = self._load()
            entry = tokens.get(digest(token))
            if entry is None:
                raise Refused(
                    "enrolment_token",
                    "this enrolment token is not known to the centre: check that the box was "
                    "flashed with the token the centre issued for it",
                )
            if entry.get("used"):
                raise Refused(
                    "enrolment_token",
                    f"this enrolment token was already used (on {entry['used']}): a token "
                    "enrols one box once; ask the centre for a new token and re-flash "
                    "the box's config area",
                )
            entry["used"] = datetime.now(UTC).isoformat(timespec="seconds")
            self._save(tokens)
            return str(entry["box_id"])
