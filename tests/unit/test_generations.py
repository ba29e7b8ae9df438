"""Generation profiles: both shipped ones load; mistakes are named by file, key and problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdbox.bootimage import generations
from sdbox.config import ConfigError

ROOT = Path(__file__).resolve().parents[2]
DIRECTORY = ROOT / "bootimage" / "generations"
GOOD = (DIRECTORY / "nuc-g1.toml").read_text()


def test_shipped_generations_load() -> None:
    names = generations.available(DIRECTORY)
    assert {"qemu-q35", "nuc-g1"} <= set(names)
    for name in names:
        profile = generations.load(name, DIRECTORY)
        assert profile.name == name
        assert profile.readers


def test_udev_rules_tag_the_generations_reader_and_sensor() -> None:
    rules = generations.load("nuc-g1", DIRECTORY).udev_rules()
    assert 'ATTR{idVendor}=="04e6", ATTR{idProduct}=="5116", ENV{SDBOX_DEVICE}="reader"' in rules
    assert 'ATTR{idVendor}=="05ba", ATTR{idProduct}=="000a", ENV{SDBOX_DEVICE}="sensor"' in rules


def _error(text: str, tmp_path: Path, name: str = "nuc-g1") -> str:
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        generations.load(name, tmp_path)
    return caught.value.message


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ('usb_id = "04e6:5116"', 'usb_id = "04E6:5116"', "[readers[0]] usb_id: expected a USB id"),
        ('kernel_args = ["i915.enable_psr=0"', 'kernel_args = ["root=/dev/sda1"',
         "[firmware] kernel_args: 'root=/dev/sda1': the image sets this itself"),
        ("min_size_gib = 32", "min_size_gib = 0", "[storage] min_size_gib: must be greater than 0"),
        ('kind = "libfprint"', 'kind = "optical"', "[sensor] kind: must be one of"),
        ('resolution = "1920x1080"', 'resolution = "big"', "[display] resolution: expected WIDTHxHEIGHT"),
        ('device = "/dev/mmcblk0"', 'device = "mmcblk0"', "[storage] device: expected a device path"),
        ('name = "nuc-g1"', 'name = "nuc-g2"', "differs from the file name 'nuc-g1'"),
        ("[display]", "[screen]", "unknown table [screen]"),
        ('connector = "HDMI-A-1"', 'connector = "HDMI-A-1"\nrefresh = 60', "[display] unknown key 'refresh'"),
        ("blank_after_s = 300", "blank_after_s = 5", "[power] blank_after_s: 5 is neither 0 (never) nor 30"),
        ('cpu_governor = "schedutil"', 'cpu_governor = "turbo"', "[power] cpu_governor: 'turbo' is not one of"),
        ("usb_autosuspend_s = 2", "usb_autosuspend_s = -5", "[power] usb_autosuspend_s: -5 is not -1"),
        ("scale = 100", "scale = 110", "[display] scale: 110 is not a percentage from 100 to 500"),
    ],
)  # fmt: skip
def test_mistakes_name_file_key_and_problem(
    old: str, new: str, expected: str, tmp_path: Path
) -> None:
    assert old in GOOD
    message = _error(GOOD.replace(old, new, 1), tmp_path)
    assert message.startswith(str(tmp_path / "nuc-g1.toml"))
    assert expected in message


def test_missing_table_is_required(tmp_path: Path) -> None:
    text = GOOD.split("[storage]")[0] + "[sensor]" + GOOD.split("[sensor]")[1]
    assert _error(text, tmp_path).endswith("nuc-g1.toml: storage is required (internal disk)")


def test_a_generation_needs_a_reader(tmp_path: Path) -> None:
    text = GOOD.split("[[readers]]")[0]
    assert "[[readers]] is required" in _error(text, tmp_path)


def test_a_libfprint_sensor_needs_its_usb_id(tmp_path: Path) -> None:
    text = GOOD.replace('usb_id = "05ba:000a"\n', "")
    assert "[sensor] usb_id: a libfprint sensor needs its USB id" in _error(text, tmp_path)


def test_power_settings_reach_the_kernel_command_line() -> None:
    nuc = generations.load("nuc-g1", DIRECTORY)
    assert nuc.power.blank_after_s == 300
    assert nuc.power.kernel_args() == ["cpufreq.default_governor=schedutil", "usbcore.autosuspend=2"]
    qemu = generations.load("qemu-q35", DIRECTORY)
    assert "usbcore.autosuspend=-1" in qemu.power.kernel_args()


def test_the_generations_resolution_is_the_kernels_mode_for_its_connector() -> None:
    assert generations.load("nuc-g1", DIRECTORY).display.kernel_args() == [
        "video=HDMI-A-1:1920x1080"
    ]
    assert generations.Display().kernel_args() == []  # auto: the monitor's preferred mode


def test_a_generation_renders_without_its_gpu_unless_it_says_so(tmp_path: Path) -> None:
    # off by default: the image leaves Mesa's drivers and LLVM out (bootimage/build.py)
    assert all(not generations.load(name, DIRECTORY).display.gpu_rendering
               for name in generations.available(DIRECTORY))  # fmt: skip
    (tmp_path / "nuc-g1.toml").write_text(GOOD.replace("[display]", "[display]\ngpu_rendering = true"))
    assert generations.load("nuc-g1", tmp_path).display.gpu_rendering is True
    message = _error(GOOD.replace("[display]", '[display]\ngpu_rendering = "yes"'), tmp_path)
    assert "[display] gpu_rendering" in message


def test_a_generation_states_its_screens_density() -> None:
    assert generations.load("nuc-g1", DIRECTORY).display.scale == 100
    assert generations.Display().scale == 100  # an ordinary screen unless the profile says


def test_force_mode_gives_the_connector_the_kernels_edid_for_the_resolution(tmp_path: Path) -> None:
    # wlroots sets the preferred mode; video= only adds a user-defined one
    (tmp_path / "nuc-g1.toml").write_text(GOOD.replace("[display]", "[display]\nforce_mode = true"))
    assert generations.load("nuc-g1", tmp_path).display.kernel_args() == [
        "video=HDMI-A-1:1920x1080", "drm.edid_firmware=HDMI-A-1:edid/1920x1080.bin"
    ]
    odd = GOOD.replace("[display]", "[display]\nforce_mode = true").replace("1920x1080", "1920x1200")
    assert "[display] force_mode: needs a named connector and one of" in _error(odd, tmp_path)
