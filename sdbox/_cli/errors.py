"""Error -> exit code mapping for the CLI, in one place.

Exit codes (documented in README.md):
  0  success
  1  an sdbox error not listed below
  2  usage error (click)
  3  card absent, removed or unresponsive; reader missing
  4  holder verification failed (wrong PIN or finger, blocked)
  5  trust failure (signature, chain, revocation, clock)
  6  session failure (server, certificate pin, authentication)
  7  configuration error
  8  the centre (broker) cannot be reached: worth retrying later
 70  internal error (a bug: please report the traceback in the log)
"""

from __future__ import annotations

import logging

import click

from sdbox.errors import SdboxError

_log = logging.getLogger("sdbox.cli")

# Listed by (module, class name) so that this table does not import every
# layer eagerly; the most specific match wins (first match in MRO order).
_EXIT_CODES: dict[str, int] = {
    "sdbox.smartcard.errors.CardAccessError": 3,
    "sdbox.smartcard.errors.VerificationError": 4,
    "sdbox.smartcard.errors.DirectoryError": 5,
    "sdbox.biometric.errors.BiometricError": 4,
    "sdbox.trust.errors.TrustError": 5,
    "sdbox.session.errors.SessionError": 6,
    "sdbox.config.ConfigError": 7,
    "sdbox.centre.errors.CentreUnreachable": 8,
}


def exit_code_for(error: BaseException) -> int:
    """The exit code for ``error`` (see the module docstring)."""
    for klass in type(error).__mro__:
        code = _EXIT_CODES.get(f"{klass.__module__}.{klass.__qualname__}")
        if code is not None:
            return code
    return 1 if isinstance(error, SdboxError) else 70


def run_guarded(command: click.Command) -> int:
    """Run a click command, turning errors into a message and an exit code."""
    try:
        result = command.main(standalone_mode=False)
    except click.exceptions.Exit as exc:  # ctx.exit(n) / --version / --help
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        return 1
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except SdboxError as exc:
        _log.debug("command failed", exc_info=True)
        click.echo(f"sdbox: {exc.message}", err=True)
        return exit_code_for(exc)
    except KeyboardInterrupt:
        return 130
    except Exception:  # a bug: keep the traceback in the log, not on the researcher's screen
        _log.exception("internal error")
        click.echo("sdbox: internal error (details in the log with -vv)", err=True)
        return 70
    # with standalone_mode=False, click returns the exit code of ctx.exit(n)
    return result if isinstance(result, int) else 0
