"""The booted box's screen and keyboard from the host: QMP (screendump, send-key).

What the screen shows is decided from the pixels: a screendump is compared,
line by line (tests/integration/greeter_env.compare, the greeter tests' own
comparison), with every host-rendered greeter reference of
tests/integration/greeter-references/, and the screen "shows" the reference
that is nearest. The guest's display is set to the references' 1280x720.
The bubble's session is the four-colour test pattern
(tests/integration/session_servers.pattern_in). The greeter's own words for
its screen (its screen file, read through the test build's relay) are kept
beside each screenshot; they never decide a step on their own.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tests.integration.greeter_env import REFERENCES, Picture, _far, _lines, load
from tests.integration.session_servers import parse_ppm, pattern_in

# A quick look compares a screenshot with one reference only (classifying against all 21 takes
# seconds under TCG load); within NEAR it is then classified against all. Different
# screens are 60 % and more apart, the same screen rendered on the box and on the
# host (fonts, renderer) a few per cent.
NEAR = 0.3
TITLE_ROWS = 185  # the greeter's heading and first sentence, above any list (1280x720 layout)
SCREEN_W, SCREEN_H = 1280, 720
GPU = "gpu0"  # the virtio GPU's QEMU id: the box's one display  # the greeter references' size: the guest's display is set to it


class QmpError(RuntimeError):
    """QEMU's monitor refused a command or went away."""


class Qmp:
    """A QMP client on QEMU's unix socket (one command at a time)."""

    def __init__(self, path: Path, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.connect(str(path))
                break
            except OSError:
                sock.close()
                if time.monotonic() > deadline:
                    raise QmpError(f"QEMU's monitor {path} did not come up") from None
                time.sleep(0.2)
        sock.settimeout(60)
        self.sock = sock
        self.stream = sock.makefile("rwb")
        self._read()  # the greeting
        self.execute("qmp_capabilities")

    def _read(self) -> dict[str, Any]:
        line = self.stream.readline()
        if not line:
            raise QmpError("QEMU's monitor closed")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def execute(self, command: str, **arguments: Any) -> Any:
        """Run ``command``; its ``return`` (events on the way are skipped)."""
        message: dict[str, Any] = {"execute": command}
        if arguments:
            message["arguments"] = arguments
        self.stream.write(json.dumps(message).encode() + b"\n")
        self.stream.flush()
        while True:
            answer = self._read()
            if "return" in answer:
                return answer["return"]
            if "error" in answer:
                raise QmpError(f"{command}: {answer['error'].get('desc')}")

    def screendump(self, path: Path) -> np.ndarray:
        """The guest's display as an (h, w, 3) array (QEMU writes a PPM)."""
        path.unlink(missing_ok=True)
        self.execute("screendump", filename=str(path), device=GPU)
        width, height, data = parse_ppm(path.read_bytes())
        return np.frombuffer(data, dtype=np.uint8).reshape(height, width, 3)

    def key(self, *qcodes: str) -> None:
        """Press and release keys together (QEMU qcodes: ret, down, esc, f2...)."""
        self.execute("send-key", keys=[{"type": "qcode", "data": code} for code in qcodes])

    def close(self) -> None:
        """Close the monitor connection (QEMU keeps running)."""
        self.stream.close()
        self.sock.close()


@dataclass(frozen=True)
class Seen:
    """What one screenshot shows."""

    nearest: str  # the nearest greeter reference ("" when none is comparable)
    score: float  # its worst line's share of differing strokes (greeter_env.Comparison)
    runner_up: str
    runner_up_score: float
    pattern: bool  # the bubble's test pattern is on screen
    blank: bool  # one colour (cage not up yet, or a session's black screen)

    def shows(self, name: str) -> bool:
        """Whether the screen shows the greeter screen ``name``: the nearest reference, within
        NEAR of it and nearer than any other (a screen the greeter never drew is far from all)."""
        return self.nearest == name and self.score <= NEAR and self.score < self.runner_up_score

    def __str__(self) -> str:
        if self.pattern:
            return "the bubble's test pattern"
        if self.blank:
            return "a blank screen"
        return (f"{self.nearest} ({self.score:.1%}; next {self.runner_up} "
                f"{self.runner_up_score:.1%})")  # fmt: skip


class Screens:
    """The greeter references, prepared once, and a classifier for screenshots."""

    def __init__(self, names: list[str] | None = None) -> None:
        paths = sorted(REFERENCES.glob("*.png"))
        if names is not None:
            paths = [p for p in paths if p.stem in names]
        self.raw = {path.stem: load(path) for path in paths}
        self.references = {name: Picture.of(image) for name, image in self.raw.items()}
        self.background = dominant(self.raw["insert-card"])[0] if "insert-card" in self.raw else None

    def near(self, pixels: np.ndarray, name: str) -> bool:
        """A quick look: whether ``pixels`` is within NEAR of reference ``name`` (then classify)."""
        return worst_line(placed(pixels), self.references[name]) <= NEAR

    def near_top(self, pixels: np.ndarray, name: str, rows: int = TITLE_ROWS) -> bool:
        """Whether the screen's first ``rows`` rows (the greeter's title block) are reference
        ``name``'s: the same screen whatever its list holds (the references' card has two
        projects, the e2e card three)."""
        return worst_line(placed(pixels[:rows]), Picture.of(self.raw[name][:rows])) <= NEAR

    def greeter_shown(self, pixels: np.ndarray) -> bool:
        """Whether most of the screen is the greeter's background (not a bubble, not blank)."""
        if self.background is None:
            return False
        colour, share = dominant(pixels)
        return share > 0.5 and int(np.abs(colour.astype(int) - self.background.astype(int)).max()) <= 8

    def classify(self, pixels: np.ndarray) -> Seen:
        """The nearest reference (and the next), the test pattern, a blank screen."""
        height, width, _ = pixels.shape
        pattern = pattern_in(width, height, pixels.tobytes())
        blank = bool((pixels == pixels[0, 0]).all())
        shots = placed(pixels)
        scored = sorted((worst_line(shots, ref), name) for name, ref in self.references.items())
        finite = [(s, n) for s, n in scored if s != float("inf")]
        if not finite:
            return Seen("", float("inf"), "", float("inf"), pattern, blank)
        second = finite[1] if len(finite) > 1 else (float("inf"), "")
        return Seen(finite[0][1], finite[0][0], second[1], second[0], pattern, blank)


def placed(pixels: np.ndarray) -> list[Picture]:
    """``pixels`` as shot, and moved one row up and down, prepared for comparison.

    The greeter's window is one row shorter than the output (app.fit_monitor), and
    its last lines are anchored to the window's bottom: on the box's DRM output they
    come one row lower than on the headless output the references were taken on, while
    the lines above do not move. Each line is compared where it fits best.
    """
    return [Picture.of(pixels), Picture.of(np.vstack([pixels[1:], pixels[-1:]])),
            Picture.of(np.vstack([pixels[:1], pixels[:-1]]))]  # fmt: skip


def worst_line(shots: list[Picture], reference: Picture) -> float:
    """greeter_env.compare's worst line, each line taken from the placing that fits it best."""
    if shots[0].pixels.shape != reference.pixels.shape:
        return float("inf")
    placings = []
    for shot in shots:
        different = _far(shot.pixels, reference.pixels, shot.packed, reference.packed)
        placings.append((different, shot.strokes | reference.strokes))
    worst = 0.0
    for top, bottom in _lines((shots[0].strokes | reference.strokes).any(axis=1)):
        share = min(different[top:bottom].sum() / max(int(strokes[top:bottom].sum()), 1)
                    for different, strokes in placings)  # fmt: skip
        worst = max(worst, float(share))
    return worst


def dominant(pixels: np.ndarray) -> tuple[np.ndarray, float]:
    """The most common colour of an (h, w, 3) picture and its share of the pixels."""
    flat = pixels.reshape(-1, 3).astype(np.uint32)
    packed = (flat[:, 0] << 16) | (flat[:, 1] << 8) | flat[:, 2]
    values, counts = np.unique(packed, return_counts=True)
    top = int(values[counts.argmax()])
    colour = np.array([(top >> 16) & 255, (top >> 8) & 255, top & 255], dtype=np.uint8)
    return colour, float(counts.max()) / len(packed)


def save_png(pixels: np.ndarray, path: Path) -> None:
    """Write ``pixels`` as a PNG (ImageMagick, as the greeter tests do)."""
    height, width, _ = pixels.shape
    ppm = f"P6 {width} {height} 255\n".encode() + pixels.tobytes()
    subprocess.run(["convert", "ppm:-", f"png:{path}"], input=ppm, check=True, timeout=60)
