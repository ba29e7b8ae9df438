"""Image files, capture quality and the real-print figures' arithmetic, without the FVC sets."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sdbox.biometric import images, quality, realprints, ridges
from sdbox.biometric.errors import ImageError
from sdbox.biometric.quality import Advice, PoorCapture
from sdbox.biometric.ridges import GreyImage


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png(width: int, height: int, rows: list[bytes], *, depth: int = 8, colour: int = 0) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return (
        images.PNG_SIGNATURE
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(b"".join(rows)))
        + _chunk(b"IEND", b"")
    )


def test_every_png_row_filter_decodes_to_the_same_pixels(tmp_path: Path) -> None:
    image = ridges.enrolment_image(1001)
    grey = np.frombuffer(image.pixels, dtype=np.uint8).reshape(image.height, image.width)
    rows = []
    previous = np.zeros(image.width, dtype=np.int64)
    for y in range(image.height):
        line = grey[y].astype(np.int64)
        left = np.concatenate([[0], line[:-1]])
        upper_left = np.concatenate([[0], previous[:-1]])
        kind = y % 5
        if kind == 0:
            filtered = line
        elif kind == 1:
            filtered = line - left
        elif kind == 2:
            filtered = line - previous
        elif kind == 3:
            filtered = line - (left + previous) // 2
        else:
            estimate = left + previous - upper_left
            pa, pb, pc = abs(estimate - left), abs(estimate - previous), abs(estimate - upper_left)
            predictor = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, previous, upper_left))
            filtered = line - predictor
        rows.append(bytes([kind]) + (filtered % 256).astype(np.uint8).tobytes())
        previous = line
    path = tmp_path / "finger.png"
    path.write_bytes(png(image.width, image.height, rows))
    assert images.load(path, 500).pixels == image.pixels


def test_pgm_reads(tmp_path: Path) -> None:
    image = ridges.impression(1001, 1)
    path = tmp_path / "finger.pgm"
    path.write_bytes(b"P5\n# a comment\n%d %d\n255\n" % (image.width, image.height) + image.pixels)
    assert images.load(path, 500).pixels == image.pixels


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (png(300, 300, [b"\0" + b"\x80" * 900] * 300, colour=2), "colour type 2"),
        (png(300, 300, [b"\0" + b"\x80" * 600] * 300, depth=16), "16 bits per pixel"),
        (png(300, 300, [b"\0" + b"\x80" * 300] * 10), "bytes of rows"),
        (png(300, 300, [b"\x07" + b"\x80" * 300] * 300), "filter 7"),
        (png(0, 0, []), "empty"),
        (png(40, 40, [b"\0" + bytes(range(40))] * 40), "width 40 px is 2.0 mm"),
        (png(300, 300, [b"\0" + b"\xc8" * 300] * 300), "blank"),
        (b"P5\n300 300\n65535\n", "maximum value 65535"),
        (b"GIF89a", "not a PNG or binary PGM"),
    ],
)
def test_images_a_sensor_does_not_make_are_typed_errors(
    tmp_path: Path, data: bytes, message: str
) -> None:
    path = tmp_path / "image"
    path.write_bytes(data)
    with pytest.raises(ImageError, match=message):
        images.load(path, 500)


def test_generated_captures_pass_the_gate_and_an_empty_sensor_does_not() -> None:
    assert quality.gate(ridges.enrolment_image(1001)).clear_mm2 > 200
    assert quality.gate(ridges.impression(1002, 3)).clear_mm2 > 200
    with pytest.raises(PoorCapture, match="place your finger again") as refused:
        quality.gate(ridges.blank())
    assert refused.value.advice == Advice.COVER_SENSOR


def test_smeared_ridges_ask_for_a_clean_sensor() -> None:
    image = ridges.impression(1001, 1)
    noise = np.random.default_rng(1).integers(0, 256, image.width * image.height, dtype=np.uint8)
    with pytest.raises(PoorCapture) as refused:
        quality.gate(GreyImage(image.width, image.height, noise.tobytes(), image.ppmm))
    assert refused.value.advice == Advice.CLEAN_SENSOR


def _scores(genuine: list[float], impostor: list[float]) -> realprints.Scores:
    return realprints.Scores(
        "toy", np.array(genuine), np.arange(len(genuine)) % 2 + 1,
        np.array(impostor), np.array([[1, 2]] * len(impostor)), np.array([]),
    )  # fmt: skip


def test_rates_on_separated_and_overlapping_scores() -> None:
    separated = realprints.rates([_scores([0.9, 0.8, 0.7, 0.6], [0.1] * 200)], bootstrap=20)
    assert separated.eer == 0
    assert separated.fnmr_at_fmr_1pc == separated.fnmr_at_fmr_01pc == 0
    assert (separated.genuine, separated.impostor) == (4, 200)
    # one impostor of 100 at 0.65: at FMR 1 % it may pass, at 0.1 % the threshold must rise past it
    overlapping = realprints.rates([_scores([0.9, 0.8, 0.7, 0.6], [0.1] * 99 + [0.65])], bootstrap=20)
    assert overlapping.fnmr_at_fmr_1pc == 0
    assert overlapping.fnmr_at_fmr_01pc == 0.25
    assert realprints.at_threshold([_scores([0.9, 0.1], [0.5, 0.0])], 0.5) == (0.5, 0.5)


def test_the_agent_says_what_to_do_after_a_poor_capture_and_no_try_is_spent(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The greeter's prompt carries the advice (cover the sensor, clean it); the card is untouched."""
    import asyncio

    from sdbox.agent.api import State
    from sdbox.agent.events import Transition
    from sdbox.trust.pki import Pki
    from tests.unit.test_agent_machine import Sensor, make_agent, until

    poor = [
        quality.Quality(clear_mm2=10.0, foreground_mm2=12.0, contrast=60.0, certainty=0.9),
        quality.Quality(clear_mm2=5.0, foreground_mm2=300.0, contrast=40.0, certainty=0.2),
    ]

    class PoorThenGood(Sensor):
        async def capture(self) -> bytes:
            if poor:
                self.captures += 1
                raise PoorCapture(poor.pop(0))
            return await super().capture()

    async def scenario() -> None:
        agent, _sessions, events, applet = make_agent(Pki.init(tmp_path_factory.mktemp("pki")), tmp_path)
        agent.sensor = PoorThenGood(1001)
        await agent.card_inserted("reader")
        await until(lambda: agent.snapshot.state == State.PICKER)
        await agent.choose_project("census-2021")
        await until(lambda: agent.snapshot.state == State.RUNNING)
        prompts = [e for e in events if isinstance(e, Transition) and e.state == State.VERIFYING]
        assert [p.problem.value if p.problem else None for p in prompts] == [
            None, "capture_partial", "capture_smudged",
        ]  # fmt: skip
        assert applet.state.fingers[0x96].tries == 5

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("problem", "english", "french"),
    [
        ("capture_partial", "Place your finger flat so that it covers the whole sensor.",
         "Posez votre doigt à plat pour qu’il couvre tout le capteur."),  # noqa: RUF001
        ("capture_faint", "Press your finger flatter on the sensor, and hold it still.",
         "Appuyez votre doigt plus à plat sur le capteur, sans bouger."),
        ("capture_smudged", "Wipe the sensor and your finger with a dry cloth, then try again.",
         "Essuyez le capteur et votre doigt avec un chiffon sec, puis réessayez."),
    ],
)  # fmt: skip
def test_the_greeter_says_what_to_do_after_a_poor_capture_in_both_languages(
    problem: str, english: str, french: str
) -> None:
    from sdbox.ui.catalogue import translator
    from sdbox.ui.view import AgentView, screen_for

    view = AgentView(state="verifying", message="place your finger", problem=problem, tries_left=5)
    en, fr = screen_for(view, translator("en")), screen_for(view, translator("fr"))
    assert (en.hint, fr.hint) == (english, french)
    assert en.body == "5 tries left"  # no try was spent
    assert en.alert
    assert en.title != "Place your finger on the sensor"


_SMALL = png(16, 16, [bytes([y % 5]) + bytes(range(y, y + 16)) for y in range(16)])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(_SMALL) - 1), st.integers(0, 255)), max_size=8),
       st.integers(8, len(_SMALL)))  # fmt: skip
def test_a_damaged_image_file_is_an_image_error_never_a_crash(
    edits: list[tuple[int, int]], length: int
) -> None:
    data = bytearray(_SMALL[:length])
    for offset, value in edits:
        if offset < len(data):
            data[offset] = value
    _decoded_or_image_error(bytes(data))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_a_damaged_pgm_header_is_an_image_error_never_a_crash(rest: bytes) -> None:
    _decoded_or_image_error(b"P5" + rest)


def _decoded_or_image_error(data: bytes) -> None:
    """Decoding either fails with ImageError or gives a consistent image (any other error fails)."""
    try:
        width, height, pixels = images.decode(data)
    except ImageError:
        return
    assert width >= 0
    assert height >= 0
    assert len(pixels) == width * height
