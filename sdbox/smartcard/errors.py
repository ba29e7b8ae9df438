"""Typed errors of the smart card layer.

Two levels, as in python-fido2: :class:`ApduError` is the raw status word a
command came back with (protocol layer); the session classes translate it
once into an error a caller can act on (:class:`WrongFinger`,
:class:`FingerBlocked`, ...), keeping the ``ApduError`` as ``__cause__``.
Every message names the command and says what to do.
"""

from __future__ import annotations

from sdbox.errors import SdboxError


class CardError(SdboxError):
    """Root of the smart card errors."""


class CardAccessError(CardError):
    """The card or the reader cannot be reached (absent, removed, pcscd down)."""


class NoReader(CardAccessError):
    """No reader is connected, or the named reader does not exist."""


class NoCard(CardAccessError):
    """The reader is there but holds no card."""


class CardRemoved(CardAccessError):
    """The card was removed (or reset) while it was in use."""


class PcscUnavailable(CardAccessError):
    """The PC/SC daemon (pcscd) is not running or not reachable."""


class CardBusy(CardAccessError):
    """Another program holds the card exclusively."""


class CardNotResponding(CardAccessError):
    """The card did not answer in time."""


class CardProtocolError(CardError):
    """The card answered something that does not follow the card profile."""


class TlvError(CardProtocolError):
    """A BER-TLV structure does not parse."""

    def __init__(self, message: str, offset: int | None = None) -> None:
        where = f" at byte {offset}" if offset is not None else ""
        super().__init__(f"{message}{where}")
        self.offset = offset


class ApduError(CardError):
    """A command ended with a status word other than success."""

    def __init__(self, command: str, sw: int) -> None:
        super().__init__(f"the card refused {command} (status {sw:04X})")
        self.command = command
        self.sw = sw


class NotSupported(CardError):
    """The card does not support a function (e.g. no on-card biometric comparison)."""


class VerificationError(CardError):
    """Holder verification failed: wrong or blocked PIN or finger."""


class WrongPin(VerificationError):
    """The PIN was wrong; ``tries_left`` attempts remain."""

    def __init__(self, tries_left: int) -> None:
        plural = "attempt" if tries_left == 1 else "attempts"
        super().__init__(f"wrong PIN: {tries_left} {plural} left before the PIN is blocked")
        self.tries_left = tries_left


class PinBlocked(VerificationError):
    """The PIN is blocked (no tries left)."""

    def __init__(self) -> None:
        super().__init__("the PIN is blocked: have it reset with the PUK at your card office")


class WrongFinger(VerificationError):
    """The finger did not match; ``tries_left`` attempts remain."""

    def __init__(self, tries_left: int) -> None:
        plural = "attempt" if tries_left == 1 else "attempts"
        super().__init__(
            f"the finger did not match: {tries_left} {plural} left before it is blocked; "
            "place the same finger flat and centred"
        )
        self.tries_left = tries_left


class FingerBlocked(VerificationError):
    """The finger is blocked; it must be re-enrolled at an enrolment station."""

    def __init__(self) -> None:
        super().__init__(
            "this finger is blocked: it must be enrolled again at an enrolment station"
        )


class FingerNotEnrolled(VerificationError):
    """No reference template is enrolled for that finger."""

    def __init__(self) -> None:
        super().__init__("no finger is enrolled on this card for that slot")


class InvalidTemplate(VerificationError):
    """The card rejected the probe template as malformed (6A80)."""

    def __init__(self) -> None:
        super().__init__(
            "the card rejected the fingerprint data as malformed; capture the finger again"
        )


class InvalidPinFormat(VerificationError):
    """The PIN entered is not 6 to 8 digits (nothing was sent to the card)."""

    def __init__(self) -> None:
        super().__init__("a PIN has 6 to 8 digits; nothing was sent to the card")


class SecurityStatusNotSatisfied(CardError):
    """The command needs holder verification or the management key first."""


class DirectoryError(CardError):
    """The project directory is missing, malformed, or its signature does not verify."""


class DirectoryMissing(DirectoryError):
    """The card has no project directory at all (another card variant, or not issued for sdbox)."""
