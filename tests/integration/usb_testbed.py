"""USB devices plugged in and out for real libudev clients: a umockdev testbed.

umockdev (Debian's ``umockdev`` + ``gir1.2-umockdev-1.0``) gives a process a
private sysfs (``UMOCKDEV_DIR``) and, through its preload library
(``libumockdev-preload.so.0``: what ``umockdev-wrapper`` sets), turns the
process's udev netlink sockets into sockets the testbed sends uevents to.
The client side is untouched: libudev (systemd's, the box's) opens its
monitor, filters, receives and parses libudev-format messages; pyudev reads
them from the monitor's file descriptor, as on the box.

The testbed's own uevent sender needs the preload too (it looks the device up
through libudev), so it lives in a helper process run under
``umockdev-wrapper`` (``python -m tests.integration.usb_testbed``) that takes
``plug VVVV PPPP NAME`` / ``unplug SYSPATH`` lines on stdin and answers one
line each. Processes started with :meth:`UsbTestbed.env` see its devices.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import TracebackType

PRELOAD = "libumockdev-preload.so.0"


def available() -> str | None:
    """Why umockdev cannot be used here (None: it can)."""
    if shutil.which("umockdev-wrapper") is None:
        return "umockdev is not installed (make setup: Debian packages umockdev, gir1.2-umockdev-1.0)"
    probe = subprocess.run(
        ["/usr/bin/python3", "-c", "import gi; gi.require_version('UMockdev', '1.0')"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    if probe.returncode != 0:
        return "gir1.2-umockdev-1.0 is not installed (make setup)"
    return None


class UsbTestbed:
    """The helper process holding the testbed; plug and unplug USB devices in it."""

    def __init__(self) -> None:
        self._process: subprocess.Popen[str] | None = None
        self.root = Path()

    def __enter__(self) -> UsbTestbed:
        # Debian's Python: it sees python3-gi (the venv's may not, outside --system-site-packages)
        self._process = subprocess.Popen(
            ["umockdev-wrapper", "/usr/bin/python3", __file__],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.root = Path(self._answer())
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        process, self._process = self._process, None
        if process is not None:
            assert process.stdin is not None
            process.stdin.close()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        shutil.rmtree(self.root, ignore_errors=True)

    def _answer(self) -> str:
        assert self._process is not None
        assert self._process.stdout is not None
        line = self._process.stdout.readline().strip()
        if not line or line.startswith("error"):
            raise RuntimeError(f"umockdev testbed: {line or 'the helper exited'}")
        return line

    def _ask(self, command: str) -> str:
        assert self._process is not None
        assert self._process.stdin is not None
        self._process.stdin.write(command + "\n")
        self._process.stdin.flush()
        return self._answer()

    def plug(self, vendor: int, product: int, name: str) -> str:
        """A USB device (vendor:product) appears at bus position ``name`` (add uevent); its syspath."""
        return self._ask(f"plug {vendor:04x} {product:04x} {name}")

    def unplug(self, syspath: str) -> None:
        """The device leaves (remove uevent)."""
        self._ask(f"unplug {syspath}")

    def env(self) -> dict[str, str]:
        """The environment of a process that sees this testbed (what umockdev-wrapper adds)."""
        preload = os.environ.get("LD_PRELOAD", "")
        return {
            **os.environ,
            "UMOCKDEV_DIR": str(self.root),
            "LD_PRELOAD": f"{PRELOAD}:{preload}" if preload else PRELOAD,
        }


def _serve() -> None:
    """The helper: owns the testbed, runs commands from stdin."""
    import gi

    gi.require_version("UMockdev", "1.0")
    from gi.repository import UMockdev

    testbed = UMockdev.Testbed.new()
    if not UMockdev.in_mock_environment():
        print("error: not under umockdev-wrapper", flush=True)
        return
    print(testbed.get_root_dir(), flush=True)
    for line in sys.stdin:
        words = line.split()
        try:
            if words[0] == "plug":
                vendor, product, name = words[1:4]
                # what the kernel puts in a usb_device's uevent and sysfs; add_device sends "add"
                syspath = testbed.add_device(
                    "usb", name, None,
                    ["idVendor", vendor, "idProduct", product, "bDeviceClass", "ff"],
                    ["DEVTYPE", "usb_device",
                     "PRODUCT", f"{int(vendor, 16):x}/{int(product, 16):x}/100"],
                )  # fmt: skip
                print(syspath, flush=True)
            elif words[0] == "unplug":
                testbed.uevent(words[1], "remove")
                testbed.remove_device(words[1])
                print("ok", flush=True)
            else:
                print(f"error: unknown command {words[0]}", flush=True)
        except Exception as exc:
            print(f"error: {exc}", flush=True)


if __name__ == "__main__":
    _serve()
