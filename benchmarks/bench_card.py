"""Listing the demo card's projects for the picker, over the real pcscd + vpcd.

Target (issue 2): with 20 ms injected latency per APDU, the listing uses at
most 6 APDUs and 150 ms. Reading every certificate as well is reported with
no target.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509

from sdbox.smartcard import pcsc
from sdbox.smartcard.biosso import BioSsoSession
from sdbox.smartcard.emulator.applet import PivApplet
from sdbox.smartcard.emulator.profiles import issue_card, load_profile
from sdbox.smartcard.emulator.stack import PcscDaemon, reader_name, reserve_reader, wait_for_card
from sdbox.smartcard.emulator.vpcd import VPCD_BASE_PORT, VirtualCard
from sdbox.smartcard.profile import Slot
from sdbox.trust import validate_directory_signer
from sdbox.trust.pki import Pki

LATENCY_MS = 20.0
ROUNDS = 7


def _measure(
    reader: str, anchors: list[x509.Certificate], *, all_certificates: bool
) -> tuple[int, float]:
    def check(signer: x509.Certificate, intermediates: list[x509.Certificate]) -> None:
        validate_directory_signer(signer, intermediates, anchors, at=datetime.now(UTC))

    conn = pcsc.connect(reader)
    try:
        session = BioSsoSession(conn)
        start = time.perf_counter()
        summary = session.read_summary(check)
        if all_certificates:
            session.certificate(Slot.AUTHENTICATION)
            assert summary.directory is not None
            for project in summary.directory.projects:
                session.certificate(project.slot)
        return session.stack.stats.apdus, time.perf_counter() - start
    finally:
        conn.close()


def run() -> dict[str, object]:
    """Run the listing benchmark; print and return its figures."""
    daemon = PcscDaemon()
    daemon.start()
    try:
        with tempfile.TemporaryDirectory() as tmp, reserve_reader() as index:
            pki = Pki.init(Path(tmp) / "pki")
            profile = load_profile("demo")
            state = issue_card(profile, pki)
            virtual = VirtualCard(
                PivApplet(state), port=VPCD_BASE_PORT + index, latency_ms=LATENCY_MS
            )
            virtual.insert()
            try:
                reader = reader_name(index)
                wait_for_card(reader, present=True)
                return _run_rounds(reader, [pki.root.cert], len(profile.projects))
            finally:
                virtual.remove()
    finally:
        daemon.cleanup()


def _run_rounds(reader: str, anchors: list[x509.Certificate], projects: int) -> dict[str, object]:
    results: dict[str, object] = {"latency_ms_per_apdu": LATENCY_MS, "projects": projects}
    for name, everything in (("listing", False), ("listing_and_all_certificates", True)):
        runs = [_measure(reader, anchors, all_certificates=everything) for _ in range(ROUNDS)]
        apdus = runs[0][0]
        median = statistics.median(t for _n, t in runs)
        results[name] = {"apdus": apdus, "median_s": round(median, 4), "rounds": ROUNDS}
        target = " (target: <= 6 APDUs, <= 0.150 s)" if name == "listing" else ""
        print(f"{name:30} {apdus:3d} APDUs  median {median * 1000:7.1f} ms{target}")
    return results
