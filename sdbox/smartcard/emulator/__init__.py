"""The BIO SSO card emulator: a PIV applet behind vsmartcard's vpcd protocol.

It plugs into the real pcscd (reader driver ``vpcd``), so everything above
the transport runs exactly as with a physical reader. Faults (latency,
removal mid-command, malformed answers, wrong status words) are injected on
demand for tests and the soak.
"""
