"""One atheris target (``python -m fuzz.run TARGET CORPUS [libFuzzer flags]``)."""

from __future__ import annotations

import sys

import atheris

# instrument the code under test, so that the fuzzer follows its branches
with atheris.instrument_imports(include=["sdbox"]):
    import sdbox.agent.config
    import sdbox.biometric.compact
    import sdbox.biometric.matcher
    import sdbox.biometric.record
    import sdbox.biometric.sensor
    import sdbox.broker.server
    import sdbox.config
    import sdbox.smartcard.apdu
    import sdbox.smartcard.biosso
    import sdbox.smartcard.directory
    import sdbox.smartcard.emulator.applet
    import sdbox.smartcard.emulator.profiles
    import sdbox.smartcard.piv
    import sdbox.smartcard.profile
    import sdbox.smartcard.tlv
    import sdbox.trust.constraints
    import sdbox.trust.diagnose
    import sdbox.trust.loaders
    import sdbox.trust.revocation
    import sdbox.trust.validate  # noqa: F401

from fuzz.targets import TARGETS, guarded


def main() -> None:
    name = sys.argv.pop(1)
    atheris.Setup(sys.argv, guarded(TARGETS[name]))
    atheris.Fuzz()


if __name__ == "__main__":
    main()
