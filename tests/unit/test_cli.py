"""The CLI's contract: help works, errors map to exit codes."""

from __future__ import annotations

import subprocess
import sys

from sdbox._cli.errors import exit_code_for
from sdbox.errors import SdboxError


def test_help_lists_command_families() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "sdbox", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for family in ("card", "emulate", "pki"):
        assert family in out


def test_unknown_errors_are_internal_and_sdbox_errors_are_one() -> None:
    assert exit_code_for(ValueError("x")) == 70
    assert exit_code_for(SdboxError("x")) == 1


def test_an_unreachable_centre_has_its_own_exit_code() -> None:
    # the first-boot enrolment retries on 8 only: a refused token or a TPM
    # failure (whose wrong PINs count towards a lockout) must not be retried
    from sdbox.centre.errors import CentreRefused, CentreUnreachable

    assert exit_code_for(CentreUnreachable("down")) == 8
    assert exit_code_for(CentreRefused("enrolment_token", "used")) == 1
