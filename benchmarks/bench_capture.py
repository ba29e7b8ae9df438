"""The real capture path on generated images: libfprint's virtual_image device -> NBIS mindtct.

Per identity: one enrolment image (the reference, extracted through the same
path), then impressions of the default distortion profile; each probe is
scored against its own reference (genuine) and every other one (impostor).
Times are per capture: the device opened, the image received, mindtct run,
the device closed (``total``), and the image-to-minutiae part alone
(``capture``, measured around ``capture_sync``). Generated ridge images are
cleaner than real prints; the figures show the path works, not how well a
sensor would do in the field. With the NBIS library built (``make nbis``),
Bozorth3's scores of the same pairs are reported beside ours.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

from sdbox.biometric import bozorth3, matcher, ridges
from sdbox.biometric.libfprint import LibfprintSensor, send_image

IDENTITIES = int(os.environ.get("SDBOX_CAPTURE_BENCH_IDENTITIES", "20"))
IMPRESSIONS = 3
FIRST_SEED = 2001


def run() -> dict[str, object]:
    """Genuine and impostor scores at the matcher's threshold; capture and extraction times."""
    with tempfile.TemporaryDirectory(prefix="sdbox-capture-") as tmp:
        socket_path = Path(tmp) / "virtual-image.socket"
        os.environ["FP_VIRTUAL_IMAGE"] = str(socket_path)
        sensor = LibfprintSensor("virtual_image")
        totals: list[float] = []
        extracts: list[float] = []
        renders: list[float] = []

        def capture(image: ridges.GreyImage) -> bytes:
            feeder = threading.Thread(target=send_image, args=(socket_path, image))
            feeder.start()
            started = time.perf_counter()
            probe = asyncio.run(sensor.capture())
            totals.append(time.perf_counter() - started)
            assert sensor.last_capture is not None
            extracts.append(sensor.last_capture.seconds)
            feeder.join()
            return probe

        def render(seed: int, number: int) -> ridges.GreyImage:
            started = time.perf_counter()
            image = ridges.enrolment_image(seed) if number == 0 else ridges.impression(seed, number)
            renders.append(time.perf_counter() - started)
            return image

        seeds = range(FIRST_SEED, FIRST_SEED + IDENTITIES)
        references = {seed: capture(render(seed, 0)) for seed in seeds}
        genuine: list[float] = []
        impostor: list[float] = []
        nbis = bozorth3.available()
        nbis_genuine: list[int] = []
        nbis_impostor: list[int] = []
        minutiae: list[int] = []
        for seed in seeds:
            for number in range(1, IMPRESSIONS + 1):
                probe = capture(render(seed, number))
                minutiae.append(len(probe) // 3)
                for other, reference in references.items():
                    (genuine if other == seed else impostor).append(matcher.score(probe, reference))
                    if nbis:
                        nbis_scores = nbis_genuine if other == seed else nbis_impostor
                        nbis_scores.append(bozorth3.score(probe, reference))
        del os.environ["FP_VIRTUAL_IMAGE"]

    threshold = matcher.THRESHOLD
    result: dict[str, object] = {
        "identities": IDENTITIES,
        "impressions": IMPRESSIONS,
        "genuine_pairs": len(genuine),
        "impostor_pairs": len(impostor),
        "false_non_matches": sum(s < threshold for s in genuine),
        "false_matches": sum(s >= threshold for s in impostor),
        "genuine_min": min(genuine),
        "genuine_median": statistics.median(genuine),
        "impostor_median": statistics.median(impostor),
        "impostor_max": max(impostor),
        "probe_minutiae_median": statistics.median(minutiae),
        "render_ms_median": 1000 * statistics.median(renders),
        "capture_extract_ms_median": 1000 * statistics.median(extracts),
        "capture_total_ms_median": 1000 * statistics.median(totals),
    }
    if nbis:
        result["bozorth3"] = {
            "genuine_min": min(nbis_genuine),
            "genuine_median": statistics.median(nbis_genuine),
            "impostor_median": statistics.median(nbis_impostor),
            "impostor_max": max(nbis_impostor),
        }
    print(
        f"capture path: {IDENTITIES} identities x {IMPRESSIONS} impressions, threshold {threshold}: "
        f"genuine {len(genuine)} (min {result['genuine_min']:.3f}, median {result['genuine_median']:.3f}, "
        f"{result['false_non_matches']} below), impostor {len(impostor)} (median "
        f"{result['impostor_median']:.3f}, max {result['impostor_max']:.3f}, {result['false_matches']} above); "
        f"median probe {result['probe_minutiae_median']} minutiae; median ms: render "
        f"{result['render_ms_median']:.0f}, capture+mindtct {result['capture_extract_ms_median']:.0f}, "
        f"with device open/close {result['capture_total_ms_median']:.0f}"
    )
    if nbis:
        print(
            f"Bozorth3 on the same pairs: genuine min {min(nbis_genuine)}, median "
            f"{statistics.median(nbis_genuine)}; impostor median {statistics.median(nbis_impostor)}, "
            f"max {max(nbis_impostor)}"
        )
    return result


if __name__ == "__main__":
    run()
