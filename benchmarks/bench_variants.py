"""Insert -> picker (or -> project, for a one-project card) on each card variant, real pcscd + vpcd.

At 20 ms injected latency per APDU: the APDUs and seconds of what the agent
reads at insertion (the picker's listing through the stack the card's ATR
selects; for a card without a directory, its 9A certificate as well). The
picker target (issue 2: at most 6 APDUs and 150 ms) is checked for the
multi-project variants; the others are reported (docs/card-variants.md).

Each variant twice: at its first insertion on this box, and again with the
directory the box verified then in its cache (``sdbox.agent.dircache``: only
chips without extended length use it).
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
from sdbox.smartcard.emulator.profiles import issue_card, load_profile, profile_names
from sdbox.smartcard.emulator.stack import PcscDaemon, reader_name, reserve_reader, wait_for_card
from sdbox.smartcard.emulator.vpcd import VPCD_BASE_PORT, VirtualCard
from sdbox.smartcard.variants import one_project_of
from sdbox.trust import validate_directory_signer
from sdbox.trust.pki import Pki

LATENCY_MS = 20.0
ROUNDS = 3
TARGET_APDUS, TARGET_S = 6, 0.150


def _insertion(
    reader: str, anchors: list[x509.Certificate], cache: dict[bytes, bytes]
) -> tuple[int, float]:
    def check(signer: x509.Certificate, intermediates: list[x509.Certificate]) -> None:
        validate_directory_signer(signer, intermediates, anchors, at=datetime.now(UTC))

    conn = pcsc.connect(reader)
    try:
        session = BioSsoSession.for_atr(conn, conn.atr)
        start = time.perf_counter()
        summary = session.read_summary(check, cache.get)
        if summary.directory is None:
            one_project_of(session)  # what the agent reads next (machine._read_card)
        elif summary.directory_object:
            cache[summary.guid] = summary.directory_object  # what the agent keeps
        return session.stack.stats.apdus, time.perf_counter() - start
    finally:
        conn.close()


def run() -> dict[str, object]:
    """Measure every variant's insertion; print and return the figures."""
    results: dict[str, object] = {"latency_ms_per_apdu": LATENCY_MS, "rounds": ROUNDS}
    daemon = PcscDaemon()
    daemon.start()
    try:
        with tempfile.TemporaryDirectory() as tmp, reserve_reader() as index:
            pki = Pki.init(Path(tmp) / "pki")
            reader = reader_name(index)
            for name in profile_names():
                if name == "demo":
                    continue
                state = issue_card(load_profile(name), pki)
                virtual = VirtualCard(
                    PivApplet(state), port=VPCD_BASE_PORT + index, latency_ms=LATENCY_MS
                )
                virtual.insert()
                try:
                    wait_for_card(reader, present=True)
                    first = [_insertion(reader, [pki.root.cert], {}) for _ in range(ROUNDS)]
                    cache: dict[bytes, bytes] = {}
                    _insertion(reader, [pki.root.cert], cache)
                    again = [_insertion(reader, [pki.root.cert], cache) for _ in range(ROUNDS)]
                finally:
                    virtual.remove()
                    wait_for_card(reader, present=False)
                multi = name != "legacy-one-project"
                results[name] = {}
                for when, runs in (("first", first), ("cached", again)):
                    apdus, median = runs[0][0], statistics.median(t for _n, t in runs)
                    met = apdus <= TARGET_APDUS and median <= TARGET_S
                    verdict = ("target met" if met else "target MISSED") if multi else "reported"
                    results[name][when] = {  # type: ignore[index]
                        "apdus": apdus, "median_s": round(median, 4),
                        "picker_target_met": met if multi else None,
                    }  # fmt: skip
                    print(
                        f"{name:20} {when:6} {apdus:3d} APDUs  median {median * 1000:7.1f} ms  "
                        f"{verdict}"
                    )
    finally:
        daemon.cleanup()
    return results
