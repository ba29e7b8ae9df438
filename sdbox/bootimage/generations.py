"""Box generations: hardware profiles under bootimage/generations/<name>.toml.

A generation names the hardware one batch of boxes is built from: card
readers, fingerprint sensor, display, storage device and firmware quirks. The
image build turns it into udev rules, kernel arguments and packages;
``sdbox flash`` checks the target against it and writes it into the box's
config area. Profiles are declared once (frozen dataclasses below) and
validated on load; errors read ``FILE: [section] key: problem``.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from sdbox.config import ConfigError, load_section, setting

_USB_ID = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{4}$")
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")
# kernel arguments a profile may not set: they would undo verified boot or
# the kiosk (init=, root=, verity, console login, debugging)
_FORBIDDEN_ARGS = re.compile(
    r"^(init|rd\.|root|roothash|systemd\.verity|verity|usrhash|mount\.usr|systemd\.unit|"
    r"systemd\.debug|rescue|emergency|single|lockdown|module\.sig_enforce|efi=)"
)


def _usb_id(value: str) -> str | None:
    return None if _USB_ID.match(value) else "expected a USB id 'vvvv:pppp' in lower-case hex"


def _usb_ids(values: list[str]) -> str | None:
    for value in values:
        if not _USB_ID.match(value):
            return f"{value!r}: expected a USB id 'vvvv:pppp' in lower-case hex"
    return None


def _kernel_args(values: list[str]) -> str | None:
    for value in values:
        if not value or any(c.isspace() for c in value):
            return f"{value!r}: one argument per item, without spaces"
        if _FORBIDDEN_ARGS.match(value):
            return (
                f"{value!r}: the image sets this itself (verified boot, kiosk); a profile may not"
            )
    return None


# the EDIDs Debian 12's kernel (6.1) carries in drm.ko for drm.edid_firmware= (Linux
# dropped them in 6.10: a later kernel needs the file under /lib/firmware/edid)
BUILTIN_EDID_MODES = ("800x600", "1024x768", "1280x1024", "1600x1200", "1680x1050", "1920x1080")


def _resolution(value: str) -> str | None:
    if value == "auto" or re.match(r"^\d{3,5}x\d{3,5}$", value):
        return None
    return "expected WIDTHxHEIGHT (e.g. 1920x1080) or 'auto'"


def _scale(value: int) -> str | None:
    # RDP's desktop scale factor is 100-500 %; steps of 25 are what desktops offer
    if 100 <= value <= 500 and value % 25 == 0:
        return None
    return f"{value} is not a percentage from 100 to 500 in steps of 25"


def _device(value: str) -> str | None:
    if value.startswith("/dev/") and len(value) > 5:
        return None
    return "expected a device path under /dev/ (as the box's kernel names it)"


def _positive(value: float) -> str | None:
    return None if value > 0 else "must be greater than 0"


def _modules(value: list[str]) -> str | None:
    for name in value:
        if not re.fullmatch(r"[a-z0-9_-]+", name):
            return f"{name!r} is not a kernel module name"
    return None


def _packages(values: list[str]) -> str | None:
    for value in values:
        if not re.match(r"^[a-z0-9][a-z0-9+.-]+$", value):
            return f"{value!r}: not a Debian package name"
    return None


@dataclass(frozen=True)
class Reader:
    """A smart-card reader model the box carries."""

    model: str = setting(help="the reader's model, for people")
    usb_id: str = setting(help="USB vendor:product id (lower-case hex)", check=_usb_id)
    driver: Literal["ccid", "vpcd"] = setting(
        "ccid", help="pcscd driver: ccid (USB CCID) or vpcd (emulated, CI only)"
    )


@dataclass(frozen=True)
class Sensor:
    """The fingerprint sensor."""

    kind: Literal["libfprint", "emulated", "none"] = setting(
        help="libfprint (a real sensor), emulated (CI/QEMU), none (PIN-only projects)"
    )
    model: str = setting("", help="the sensor's model, for people")
    usb_id: str = setting("", help="USB vendor:product id (libfprint sensors)")


@dataclass(frozen=True)
class Display:
    """The screen the greeter and sessions use."""

    connector: str = setting("auto", help="DRM connector (e.g. HDMI-A-1), or auto")
    resolution: str = setting("auto", help="WIDTHxHEIGHT or auto", check=_resolution)
    scale: int = setting(
        100, help="the screen's density in percent (100 ordinary, 150 a 27-inch 4K, 200 a "
        "small 4K panel): the remote desktop renders at this scale (RDP's desktop scale "
        "factor); 100 to 500", check=_scale,
    )  # fmt: skip
    force_mode: bool = setting(
        False, help="make the resolution the monitor's preferred mode (the kernel's built-in "
        "EDID for it replaces the monitor's own: cage takes the preferred mode and has no "
        "option for another); only for the sizes the kernel carries: "
        + ", ".join(BUILTIN_EDID_MODES),
    )  # fmt: skip
    gpu_rendering: bool = setting(
        False,
        help="render with the GPU (Mesa's DRI drivers and LLVM in the image, about 160 MB); "
        "off: cage on wlroots' pixman renderer and GTK on cairo, with Mesa's drivers left out",
    )

    def kernel_args(self) -> list[str]:
        """``video=CONNECTOR:WIDTHxHEIGHT`` when both are named: the kernel's mode for it.

        The DRM core adds the command line's mode to that connector's modes as
        a user-defined one: the console uses it, but wlroots (cage) sets the
        monitor's *preferred* mode. ``force_mode`` also gives the connector the
        kernel's built-in EDID for that size (``drm.edid_firmware=``), whose
        preferred mode it is. "auto" leaves the monitor's preferred mode.
        """
        if self.connector == "auto" or self.resolution == "auto":
            return []
        args = [f"video={self.connector}:{self.resolution}"]
        if self.force_mode:
            args.append(f"drm.edid_firmware={self.connector}:edid/{self.resolution}.bin")
        return args


@dataclass(frozen=True)
class Storage:
    """The box's internal disk, the one `sdbox flash` writes."""

    device: str = setting(help="the disk as the box's kernel names it", check=_device)
    min_size_gib: float = setting(help="smallest disk of this generation", check=_positive)
    model: str = setting("", help="the disk's model, for people")
    drivers: list[str] = setting(
        [],
        help="kernel modules that reach the disk, which the initramfs must hold "
        "(it holds only a list, not Debian's 'most': docs/image.md)",
        check=_modules,
    )


@dataclass(frozen=True)
class Firmware:
    """Quirks of this hardware: kernel arguments and firmware packages."""

    kernel_args: list[str] = setting(
        [], help="extra kernel arguments (never root/verity/init)", check=_kernel_args
    )
    packages: list[str] = setting([], help="extra Debian packages (firmware)", check=_packages)
    quirks: list[str] = setting([], help="known quirks, for people")


_GOVERNORS = ("schedutil", "powersave", "performance", "ondemand", "conservative")


def _blank_after(value: int) -> str | None:
    if value == 0 or 30 <= value <= 86400:
        return None
    return f"{value} is neither 0 (never) nor 30 to 86400 seconds"


def _governor(value: str) -> str | None:
    return None if value in _GOVERNORS else f"{value!r} is not one of {', '.join(_GOVERNORS)}"


def _autosuspend(value: int) -> str | None:
    return None if -1 <= value <= 3600 else f"{value} is not -1 (never) to 3600 seconds"


@dataclass(frozen=True)
class Power:
    """Power settings: the greeter's idle blank, the CPU governor, USB autosuspend."""

    blank_after_s: int = setting(
        300, help="the greeter blanks the screen after this many idle seconds at the picker "
        "or the start screen (0: never)", check=_blank_after,
    )  # fmt: skip
    cpu_governor: str = setting(
        "schedutil", help="cpufreq's governor (kernel argument cpufreq.default_governor)",
        check=_governor,
    )  # fmt: skip
    usb_autosuspend_s: int = setting(
        2, help="idle USB devices suspend after this many seconds (-1: never; a reader or "
        "sensor that does not wake from it needs -1)", check=_autosuspend,
    )  # fmt: skip

    def kernel_args(self) -> list[str]:
        """The kernel arguments that apply these settings (the blank is the greeter's)."""
        return [
            f"cpufreq.default_governor={self.cpu_governor}",
            f"usbcore.autosuspend={self.usb_autosuspend_s}",
        ]


@dataclass(frozen=True)
class GenerationInfo:
    """The [generation] table."""

    name: str = setting(help="must equal the file name without .toml")
    description: str = setting(help="what this generation is, for people")


@dataclass(frozen=True)
class Generation:
    """A box generation (one hardware profile)."""

    generation: GenerationInfo = setting(help="name and description")
    storage: Storage = setting(help="internal disk")
    sensor: Sensor = setting(help="fingerprint sensor")
    display: Display = setting(Display(), help="screen")
    firmware: Firmware = setting(Firmware(), help="kernel arguments, firmware packages")
    power: Power = setting(Power(), help="idle blank, CPU governor, USB autosuspend")
    readers: list[Reader] = field(default_factory=list, metadata={"help": "card readers"})
    source: Path = field(default=Path(), metadata={"help": "the file it came from"})

    @property
    def name(self) -> str:
        """The generation's name."""
        return self.generation.name

    def udev_rules(self) -> str:
        """60-sdbox-generation.rules: tags this generation's reader and sensor.

        The package's 70-sdbox.rules turns the tags into ownership and modes.
        """
        lines = [f"# generated from the {self.name} generation profile; do not edit"]
        for reader in self.readers:
            if reader.driver == "ccid":
                vendor, product = reader.usb_id.split(":")
                lines.append(
                    f'SUBSYSTEM=="usb", ATTR{{idVendor}}=="{vendor}", '
                    f'ATTR{{idProduct}}=="{product}", ENV{{SDBOX_DEVICE}}="reader"'
                )
        if self.sensor.kind == "libfprint":
            vendor, product = self.sensor.usb_id.split(":")
            lines.append(
                f'SUBSYSTEM=="usb", ATTR{{idVendor}}=="{vendor}", '
                f'ATTR{{idProduct}}=="{product}", ENV{{SDBOX_DEVICE}}="sensor"'
            )
        return "\n".join(lines) + "\n"


_TABLES = {"generation", "storage", "sensor", "display", "firmware", "power", "readers"}


def parse(text: str, source: Path) -> Generation:
    """Validate the TOML text of a profile named ``source``."""
    where = str(source)
    try:
        raw: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: not valid TOML ({exc})") from exc
    unknown = sorted(set(raw) - _TABLES)
    if unknown:
        raise ConfigError(
            f"{where}: unknown table [{unknown[0]}] (known: {', '.join(sorted(_TABLES))})"
        )
    readers_raw = raw.pop("readers", [])
    if not isinstance(readers_raw, list) or not all(isinstance(r, dict) for r in readers_raw):
        raise ConfigError(f"{where}: [[readers]] must be an array of tables")
    if not readers_raw:
        raise ConfigError(f"{where}: [[readers]] is required (at least one card reader)")
    readers = [
        load_section(Reader, item, where, f"readers[{i}]") for i, item in enumerate(readers_raw)
    ]
    profile = load_section(Generation, raw, where)
    name = profile.generation.name
    if not _NAME.match(name):
        raise ConfigError(
            f"{where}: [generation] name: {name!r} must be lower-case letters, digits and dashes"
        )
    if source.suffix == ".toml" and source.stem != name:
        raise ConfigError(
            f"{where}: [generation] name: {name!r} differs from the file name {source.stem!r}"
        )
    display = profile.display
    if display.force_mode and (
        display.connector == "auto" or display.resolution not in BUILTIN_EDID_MODES
    ):
        raise ConfigError(
            f"{where}: [display] force_mode: needs a named connector and one of the kernel's "
            f"built-in modes ({', '.join(BUILTIN_EDID_MODES)}), not "
            f"{display.connector}:{display.resolution}"
        )
    if profile.sensor.kind == "libfprint" and _usb_id(profile.sensor.usb_id):
        raise ConfigError(
            f"{where}: [sensor] usb_id: a libfprint sensor needs its USB id 'vvvv:pppp'"
        )
    return Generation(
        generation=profile.generation,
        storage=profile.storage,
        sensor=profile.sensor,
        display=profile.display,
        firmware=profile.firmware,
        power=profile.power,
        readers=readers,
        source=source,
    )


def default_directory() -> Path:
    """Where profiles are: the source tree's bootimage/generations, else the package's."""
    in_tree = Path(__file__).resolve().parents[2] / "bootimage" / "generations"
    return in_tree if in_tree.is_dir() else Path("/usr/share/sdbox/generations")


def available(directory: Path | None = None) -> list[str]:
    """The generation names in ``directory``."""
    directory = directory or default_directory()
    return sorted(p.stem for p in directory.glob("*.toml"))


def load(name: str, directory: Path | None = None) -> Generation:
    """Load and validate the generation ``name``."""
    directory = directory or default_directory()
    if not _NAME.match(name):
        raise ConfigError(f"generation {name!r}: not a generation name")
    path = directory / f"{name}.toml"
    try:
        text = path.read_text()
    except FileNotFoundError as exc:
        known = ", ".join(available(directory)) or "none"
        raise ConfigError(f"{path}: no such generation (known: {known})") from exc
    return parse(text, path)
