"""Putting a one-time credential on a test bubble (the reference broker's provisioning).

RDP (freerdp-shadow-cli3): the bubble's SAM file is rewritten atomically
with the NT hash of a fresh password (``winpr-hash3``), so the previous one
stops working. SPICE (QEMU): a fresh ticket set over QMP with an expiry.
A centre's gateway does the same through its own bubble management.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import tempfile
from pathlib import Path

from sdbox import process
from sdbox.broker.errors import BrokerError

SECRET_BYTES = 18


class ProvisioningError(BrokerError):
    """The bubble could not be given the credential."""


def new_secret() -> str:
    """A fresh one-time password or ticket."""
    return secrets.token_urlsafe(SECRET_BYTES)


def provision_rdp(sam_file: Path, user: str, password: str) -> None:
    """Make ``password`` the only one ``user`` has on the shadow bubble."""
    # winpr-hash3 reads the password from argv, the one way it takes it: this
    # short-lived process runs on the broker host, not on the box, and the
    # password is single-use and expires with the session.
    try:
        out = process.run(
            ["winpr-hash3", "-u", user, "-p", password, "-f", "sam"],
            what="preparing the RDP bubble's account", timeout=30,
            env={"PATH": os.environ.get("PATH", "/usr/bin")},
        )  # fmt: skip
    except process.CommandFailed:
        # its detail is winpr-hash3's output, which may echo the password: not kept
        raise ProvisioningError(
            "the RDP bubble's account could not be prepared (winpr-hash3 failed)"
        ) from None
    line = next((x for x in out.splitlines() if x.startswith(f"{user}:")), None)
    if line is None:
        raise ProvisioningError("winpr-hash3 gave no SAM entry")
    fd, tmp = tempfile.mkstemp(dir=sam_file.parent, prefix=".sam-")
    with os.fdopen(fd, "w") as fh:
        fh.write(line + "\n")
    os.replace(tmp, sam_file)


def provision_spice(qmp_socket: Path, ticket: str, lifetime_s: int) -> None:
    """Set the SPICE ticket of the QEMU bubble, expiring after ``lifetime_s``."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as qmp:
            qmp.settimeout(10)
            qmp.connect(str(qmp_socket))
            reader = qmp.makefile("rb")
            reader.readline()  # greeting
            for command in (
                {"execute": "qmp_capabilities"},
                {"execute": "set_password", "arguments": {"protocol": "spice", "password": ticket}},
                {
                    "execute": "expire_password",
                    "arguments": {"protocol": "spice", "time": f"+{lifetime_s}"},
                },
            ):
                qmp.sendall(json.dumps(command).encode() + b"\n")
                answer = json.loads(reader.readline())
                while "event" in answer:
                    answer = json.loads(reader.readline())
                if "error" in answer:
                    raise ProvisioningError(
                        f"QEMU refused {command['execute']}: {answer['error'].get('desc', '')}"
                    )
    except (OSError, ValueError) as exc:
        raise ProvisioningError(
            f"the SPICE bubble's QMP socket {qmp_socket} did not answer"
        ) from exc
