"""``sdbox bio``: enrolment (a station's job; remotely, under the card office's authorisation), the matcher benchmark."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from sdbox._cli.output import emit_json, json_option
from sdbox.smartcard.profile import FINGER_REFERENCE_OBJECT, KeyRef


@click.group()
def bio() -> None:
    """Fingerprint enrolment and the on-card matcher's benchmark."""


def _management_key(path: Path | None) -> bytes:
    """The card management key from a file or stdin (hex), never from argv."""
    text = path.read_text() if path else sys.stdin.readline()
    try:
        key = bytes.fromhex(text.strip())
    except ValueError as exc:
        raise click.UsageError("the management key must be hex (16, 24 or 32 bytes)") from exc
    if len(key) not in (16, 24, 32):
        raise click.UsageError("the management key must be 16, 24 or 32 bytes")
    return key


def capture_with_libfprint(driver: str = "") -> bytes:
    """One capture from a libfprint image sensor, as a card template (prompts on stderr)."""
    import asyncio  # noqa: PLC0415

    from sdbox.biometric.libfprint import LibfprintSensor  # noqa: PLC0415

    click.echo("place your finger on the sensor", err=True)
    return asyncio.run(LibfprintSensor(driver).capture())


@bio.command()
@click.option("--reader", "-r", help="Reader name (default: the first holding a card).")
@click.option(
    "--finger",
    "which",
    type=click.Choice(["primary", "secondary"]),
    default="primary",
    show_default=True,
)
@click.option("--identity-seed", type=int, help="Enrol a synthetic finger (emulated sensor).")
@click.option(
    "--template",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="Enrol from an ISO/IEC 19794-2 record or compact template.",
)
@click.option(
    "--sensor",
    type=click.Choice(["libfprint"]),
    help="Enrol from a capture of a libfprint image sensor.",
)
@click.option("--sensor-driver", default="", help="libfprint: the driver to use.")
@click.option(
    "--image",
    "image_files",
    multiple=True,
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="Enrol from fingerprint images (8-bit grey PNG/PGM), one capture each, in order.",
)
@click.option("--ppi", type=click.IntRange(250, 1000), default=500, show_default=True,
              help="--image: the images' resolution.")  # fmt: skip
@click.option("--captures", type=click.IntRange(1, 10), default=3, show_default=True,
              help="--sensor/--image: good captures needed, cross-compared, the best kept.")  # fmt: skip
@click.option("--capture-timeout", type=click.FloatRange(1, 600), default=30.0, show_default=True,
              help="--sensor: seconds to wait for a finger (nothing is written after a time-out).")  # fmt: skip
@click.option(
    "--management-key-file",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="Hex management key (default: read from stdin).",
)
def enrol(
    reader: str | None,
    which: str,
    identity_seed: int | None,
    template: Path | None,
    sensor: str | None,
    sensor_driver: str,
    image_files: tuple[Path, ...],
    ppi: int,
    captures: int,
    capture_timeout: float,
    management_key_file: Path | None,
) -> None:
    """Write a finger's reference template to the card (resets and unblocks its counter).

    From a sensor or images: several captures, each through the capture quality gate,
    cross-compared, the most consistent kept (docs/biometrics.md, "Enrolment quality").
    """
    from sdbox.biometric.sensor import to_probe  # noqa: PLC0415
    from sdbox.biometric.synth import enrolment_template  # noqa: PLC0415
    from sdbox.smartcard import pcsc  # noqa: PLC0415
    from sdbox.smartcard.biosso import BioSsoSession  # noqa: PLC0415
    from sdbox.smartcard.piv import LocalManagementKey  # noqa: PLC0415

    given = (identity_seed, template, sensor, image_files or None)
    if sum(x is not None for x in given) != 1:
        raise click.UsageError("give exactly one of --identity-seed, --template, --sensor or --image")
    key = _management_key(management_key_file)  # before the capture: the key comes from stdin
    if identity_seed is not None:
        reference = enrolment_template(identity_seed)
    elif sensor is not None or image_files:
        # every capture happens before the card is touched: a time-out or an unplugged
        # sensor ends the command with the card as it was
        reference = _enrol_captures(sensor_driver, image_files, ppi, captures, capture_timeout)
    else:
        assert template is not None  # checked just above
        reference = to_probe(template.read_bytes())
    ref = KeyRef.FINGER_PRIMARY if which == "primary" else KeyRef.FINGER_SECONDARY
    conn = pcsc.connect(reader, exclusive=True)
    try:
        session = BioSsoSession.for_atr(conn, conn.atr)
        session.piv.select()
        session.piv.authenticate_management(LocalManagementKey(key))
        session.piv.put_object(FINGER_REFERENCE_OBJECT[ref], reference)
        tries = session.piv.finger_tries_left(ref)
    finally:
        conn.close()
    click.echo(f"enrolled the {which} finger ({len(reference) // 3} minutiae); {tries} tries")


def _enrol_captures(
    driver: str, image_files: tuple[Path, ...], ppi: int, captures: int, timeout_s: float
) -> bytes:
    """The reference from several captures (sdbox.biometric.enrolment), prompts on stderr."""
    import asyncio  # noqa: PLC0415

    from sdbox.biometric.enrolment import EnrolmentPolicy, EnrolmentRefused, enrol  # noqa: PLC0415
    from sdbox.biometric.extract import ImageFileSensor  # noqa: PLC0415
    from sdbox.biometric.libfprint import LibfprintSensor  # noqa: PLC0415
    from sdbox.biometric.sensor import Sensor  # noqa: PLC0415

    class Images:
        """The image files, one per capture, in order."""

        def __init__(self) -> None:
            self.left = [ImageFileSensor(path, ppi) for path in image_files]

        async def capture(self) -> bytes:
            if not self.left:
                raise EnrolmentRefused(
                    f"the {len(image_files)} images gave fewer than {captures} good captures"
                )
            return await self.left.pop(0).capture()

    source: Sensor = Images() if image_files else LibfprintSensor(driver)
    policy = EnrolmentPolicy(captures=captures, capture_timeout_s=timeout_s)
    enrolled = asyncio.run(enrol(source, policy, lambda text: click.echo(text, err=True)))
    click.echo(
        f"kept capture {enrolled.chosen + 1} of {len(enrolled.captures)} "
        f"(the most consistent with the others)",
        err=True,
    )
    return enrolled.reference


@bio.command("present-image")
@click.option(
    "--socket",
    "socket_path",
    type=click.Path(path_type=Path, dir_okay=False),
    required=True,
    help="libfprint's virtual_image socket (the FP_VIRTUAL_IMAGE of the capturing process).",
)
@click.option("--identity-seed", type=int, default=1001, show_default=True)
@click.option(
    "--impression",
    type=click.IntRange(0),
    default=1,
    show_default=True,
    help="Which impression (0: the careful enrolment capture).",
)
@click.option("--blank", is_flag=True, help="An empty sensor instead of a finger.")
def present_image(socket_path: Path, identity_seed: int, impression: int, blank: bool) -> None:
    """Put a generated fingerprint image on libfprint's virtual_image sensor (tests, demos)."""
    from sdbox.biometric import ridges  # noqa: PLC0415
    from sdbox.biometric.libfprint import send_image  # noqa: PLC0415

    if blank:
        image = ridges.blank()
    elif impression == 0:
        image = ridges.enrolment_image(identity_seed)
    else:
        image = ridges.impression(identity_seed, impression)
    send_image(socket_path, image, timeout_s=60)
    click.echo(f"presented a {image.width}x{image.height} image")


@bio.command()
@click.option("--fingers", type=click.IntRange(10), default=500, show_default=True)
@click.option(
    "--profile", type=click.Choice(["default", "hard"]), default="default", show_default=True
)
@json_option("Print the figures as JSON.")
def bench(fingers: int, profile: str, as_json: bool) -> None:
    """EER and FNMR at FMR 1e-3 / 1e-4 on a generated population, and match times.

    With the NBIS library built (`make nbis`), NIST's Bozorth3 on the same pairs beside it.
    """
    from sdbox.biometric import synth  # noqa: PLC0415
    from sdbox.biometric.bench import as_dict, bozorth3_missing, run  # noqa: PLC0415

    results = run(fingers, synth.PROFILES[profile])
    missing = bozorth3_missing()
    if as_json:
        out: dict[str, object] = {r.matcher: as_dict(r) for r in results}
        if missing:
            out["bozorth3"] = {"missing": missing}
        emit_json(out)
        return
    rows = [as_dict(r) for r in results]
    click.echo(f"{'':28} " + " ".join(f"{r['matcher']!s:>24}" for r in rows))
    for key in rows[0]:
        if key == "matcher":
            continue
        click.echo(f"{key:28} " + " ".join(f"{_cell(r[key]):>24}" for r in rows))
    if missing:
        click.echo(missing)


def _cell(value: object) -> str:
    """One benchmark figure as a table cell."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, tuple):
        return "[" + ", ".join(f"{v:.4f}" for v in value) + "]"
    return str(value)


@bio.command("remote-enrol")
@click.option(
    "--config", "config_path", type=click.Path(path_type=Path, dir_okay=False, exists=True),
    required=True, help="The agent's configuration ([credentials] broker_url, [identity], "
    "[trust], [sensor]).",
)  # fmt: skip
@click.option("--reader", default=None, help="The PC/SC reader (default: the first with a card).")
def remote_enrol(config_path: Path, reader: str | None) -> None:
    """Enrol the card's fingers under the card office's authorisation (docs/remote-enrolment.md).

    What the agent's enrolment mode does, at a workstation or a bench: the code
    to read to the operator (standard error), the PIN (first line of standard
    input), the captures from the configured sensor, the write with the card's
    9B answered by the centre, the check on the card.
    """
    import asyncio  # noqa: PLC0415
    import time  # noqa: PLC0415

    from sdbox.agent.adapters import TrustService, make_sensor  # noqa: PLC0415
    from sdbox.agent.config import load  # noqa: PLC0415
    from sdbox.agent.service import make_enrolment  # noqa: PLC0415
    from sdbox.config import ConfigError  # noqa: PLC0415
    from sdbox.smartcard import pcsc  # noqa: PLC0415
    from sdbox.smartcard.biosso import BioSsoSession  # noqa: PLC0415

    config = load(config_path)
    factory = make_enrolment(config, TrustService(config))
    if factory is None:
        raise ConfigError(f"{config_path}: [credentials] broker_url is not set")
    sensor = make_sensor(config.sensor)
    conn = pcsc.connect(reader, exclusive=True)
    try:
        session = BioSsoSession.for_atr(conn, conn.atr)
        session.piv.select()
        flow = factory(session)
        pending = flow.authorise()
        click.echo(f"read this code to {pending.operator}: {pending.code}", err=True)
        while not flow.operator_confirmed(pending):
            time.sleep(1.0)
        click.echo("the operator confirmed the code: PIN on standard input", err=True)
        flow.verify_holder(sys.stdin.readline().strip())  # never echoed, never logged
        for finger in pending.authorisation.fingers:
            click.echo(f"{finger} finger: place it on the sensor, several times", err=True)
        references = asyncio.run(flow.capture(pending, sensor))
        session_id = flow.write(pending, references)
        click.echo("written; place the finger once more: the card checks it", err=True)
        asyncio.run(flow.confirm(pending, sensor, session_id))
    finally:
        conn.close()
    fingers = ", ".join(pending.authorisation.fingers)
    click.echo(f"enrolled: {fingers} (authorised by {pending.operator})")
