#!/usr/bin/python3 -I
"""A/B slots on the box: RAUC's pre-install handler and custom bootloader backend.

This file is copied into the image as /usr/libexec/sdbox/rauc-bootloader
(``rauc-pre-install`` is a symlink to it), so it uses the standard library
only and runs under the image's /usr/bin/python3 -I. RAUC calls it as:

* ``rauc-pre-install`` (system handler, before any slot is written):
  refuses a bundle whose version is not newer than the running root's
  (/etc/sdbox/image-version), then puts the bundle's UKI for the target slot
  on the ESP (EFI/Linux/sdbox-<slot>.efi).
* ``rauc-bootloader get-primary | set-primary S | get-state S | set-state S good|bad``
  (``bootloader=custom``): systemd-boot chooses the entry; the slot to try
  next is a one-shot entry (``LoaderEntryOneShot``, consumed by systemd-boot
  on the next boot), the slot that has proved itself is the default
  (``LoaderEntryDefault``): the variables ``bootctl set-oneshot/set-default``
  write. A trial boot that never confirms itself
  (reset, panic, verity corruption, agent never ready) falls back to the
  default on the next boot.
* ``rauc-bootloader confirm`` (sdbox-boot-confirm.service, after the agent):
  agent active = ``rauc status mark-good`` (this slot becomes the default);
  otherwise, on a trial boot, mark it bad and reboot into the default.

The choice of the custom backend over RAUC's ``efi`` backend: docs/image.md.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

LOADER_GUID = "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f"  # systemd-boot's vendor GUID
EFIVARS = Path("/sys/firmware/efi/efivars")
IMAGE_VERSION_FILE = Path("/etc/sdbox/image-version")
STATE_DIR = Path("/var/lib/rauc/sdbox")
ESP_DEVICE = Path("/dev/disk/by-partlabel/esp")
SLOTS = ("a", "b")
# the build's loader.conf default: the slot a freshly flashed box boots
FLASHED_SLOT = "a"
ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8"}

_VERSION = re.compile(r"^(\d+(?:\.\d+)*)(?:\+(\d+))?$")


try:  # on the build host the project's error base; on the box the standard library only
    from sdbox.errors import SdboxError as _ErrorBase
except ImportError:  # pragma: no cover - the copy in the image
    _ErrorBase = Exception  # type: ignore[assignment,misc]


class SlotError(_ErrorBase):
    """Refused or failed; the message says what was wrong and what to do."""


@dataclass(frozen=True, order=True)
class ImageVersion:
    """``<release>[+<build>]``: the package's release (1.2.3), then the build's
    SOURCE_DATE_EPOCH; compared release first, then build (absent = 0)."""

    release: tuple[int, ...]
    build: int

    @classmethod
    def parse(cls, text: str) -> ImageVersion:
        match = _VERSION.match(text.strip())
        if not match:
            raise SlotError(
                f"version {text.strip()!r} is not <release>[+<build>] (like 0.1.0+1764670000): "
                "refusing a version that cannot be compared"
            )
        release = tuple(int(part) for part in match.group(1).split("."))
        # 1.0 and 1.0.0 are the same release
        while len(release) > 1 and release[-1] == 0:
            release = release[:-1]
        return cls(release, int(match.group(2) or 0))


def entry(slot: str) -> str:
    """The systemd-boot entry (Type #2: the UKI's file name) of a slot."""
    if slot not in SLOTS:
        raise SlotError(f"unknown slot {slot!r}: the image has slots {', '.join(SLOTS)}")
    return f"sdbox-{slot}.efi"


def slot_of(entry_id: str | None) -> str | None:
    match = re.fullmatch(r"sdbox-([ab])\.efi", (entry_id or "").strip().lower())
    return match.group(1) if match else None


def check_newer(running: str, offered: str) -> None:
    """Refuse a bundle that is not newer than the running root (downgrade or same)."""
    old, new = ImageVersion.parse(running), ImageVersion.parse(offered)
    if new < old:
        raise SlotError(
            f"refusing a downgrade: the bundle has version {offered}, older than the running "
            f"{running}; install a bundle newer than {running}"
        )
    if new == old:
        raise SlotError(
            f"refusing the bundle: version {offered} is the version already running; "
            f"install a bundle newer than {running}"
        )


def manifest_version(manifest: str) -> str:
    """``version=`` of the ``[update]`` section of a RAUC manifest."""
    section = None
    for raw in manifest.splitlines():
        line = raw.strip()
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip()
        elif section == "update" and "=" in line:
            key, value = line.split("=", 1)
            if key.strip() == "version":
                return value.strip()
    raise SlotError("the bundle's manifest has no [update] version: refusing a bundle without one")


def target_slot(env: Mapping[str, str]) -> str:
    """The bootname RAUC writes: the target slot of class ``rootfs``."""
    for index in env.get("RAUC_TARGET_SLOTS", "").split():
        if env.get(f"RAUC_SLOT_CLASS_{index}") == "rootfs":
            bootname = env.get(f"RAUC_SLOT_BOOTNAME_{index}", "")
            entry(bootname)  # a known slot, or refused
            return bootname
    raise SlotError("RAUC named no rootfs target slot: refusing to install")


class EfiVars:
    """systemd-boot's EFI variables in efivarfs, as `bootctl set-default/set-oneshot`
    writes them (bookworm ships bootctl in systemd-boot, whose kernel hooks the
    image does not want): 4 bytes of attributes, then UTF-16LE with a NUL."""

    def __init__(self, root: Path = EFIVARS) -> None:
        self.root = root

    def path(self, name: str) -> Path:
        return self.root / f"{name}-{LOADER_GUID}"

    def read(self, name: str) -> str | None:
        try:
            raw = self.path(name).read_bytes()[4:]
        except OSError:
            return None
        return raw.decode("utf-16-le", errors="replace").rstrip("\0") or None

    def write(self, name: str, value: str | None) -> None:
        """Set (non-volatile, boot + runtime access) or, with None, delete a variable."""
        path = self.path(name)
        try:
            if path.exists():
                _make_mutable(path)  # efivarfs marks existing variables immutable
                path.unlink()
            if value is not None:
                data = struct.pack("<I", EFI_ATTRIBUTES) + (value + "\0").encode("utf-16-le")
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                try:
                    if os.write(fd, data) != len(data):  # efivarfs takes one write
                        raise OSError(f"short write to {path}")
                finally:
                    os.close(fd)
        except OSError as exc:
            raise SlotError(f"cannot set the EFI variable {name} to {value!r}: {exc}") from exc


EFI_ATTRIBUTES = 0x7  # NON_VOLATILE | BOOTSERVICE_ACCESS | RUNTIME_ACCESS
FS_IOC_GETFLAGS, FS_IOC_SETFLAGS, FS_IMMUTABLE_FL = 0x80086601, 0x40086602, 0x10


def _make_mutable(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        flags = struct.unpack("i", fcntl.ioctl(fd, FS_IOC_GETFLAGS, struct.pack("i", 0)))[0]
        if flags & FS_IMMUTABLE_FL:
            fcntl.ioctl(fd, FS_IOC_SETFLAGS, struct.pack("i", flags & ~FS_IMMUTABLE_FL))
    except OSError:
        pass  # a file system without flags (the unit tests' tmp directory)
    finally:
        os.close(fd)


class Backend:
    """RAUC's custom bootloader backend over systemd-boot's one-shot/default entries."""

    def __init__(self, efi: EfiVars, state_dir: Path = STATE_DIR) -> None:
        self.efi = efi
        self.state_dir = state_dir

    def default(self) -> str:
        return slot_of(self.efi.read("LoaderEntryDefault")) or FLASHED_SLOT

    def booted(self) -> str | None:
        return slot_of(self.efi.read("LoaderEntrySelected"))

    def get_primary(self) -> str:
        return slot_of(self.efi.read("LoaderEntryOneShot")) or self.default()

    def set_primary(self, slot: str) -> None:
        self._mark(slot, bad=False)
        if slot == self.booted():
            self.efi.write("LoaderEntryDefault", entry(slot))
            self.efi.write("LoaderEntryOneShot", None)
        else:
            # a trial: the next boot only; the default stays until it confirms itself
            self.efi.write("LoaderEntryOneShot", entry(slot))
            self.state_dir.mkdir(parents=True, exist_ok=True)
            (self.state_dir / "trial").write_text(f"{slot}\n")

    def pending_trial(self) -> str | None:
        """The slot activated for a trial boot that has not confirmed itself yet."""
        try:
            slot = (self.state_dir / "trial").read_text().strip()
        except OSError:
            return None
        return slot if slot in SLOTS else None

    def end_trial(self) -> None:
        (self.state_dir / "trial").unlink(missing_ok=True)

    def get_state(self, slot: str) -> str:
        entry(slot)
        return "bad" if (self.state_dir / f"{slot}.bad").exists() else "good"

    def set_state(self, slot: str, state: str) -> None:
        if state == "good":
            self._mark(slot, bad=False)
            if slot_of(self.efi.read("LoaderEntryDefault")) != slot:  # NVRAM: write only changes
                self.efi.write("LoaderEntryDefault", entry(slot))
        elif state == "bad":
            self._mark(slot, bad=True)
            if self.default() == slot:
                other = next(s for s in SLOTS if s != slot)
                self.efi.write("LoaderEntryDefault", entry(other))
            if slot_of(self.efi.read("LoaderEntryOneShot")) == slot:
                self.efi.write("LoaderEntryOneShot", None)
        else:
            raise SlotError(f"unknown slot state {state!r} (good or bad)")

    def _mark(self, slot: str, bad: bool) -> None:
        entry(slot)  # a known slot, or refused
        marker = self.state_dir / f"{slot}.bad"
        if bad:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            marker.write_text("marked bad\n")
        else:
            marker.unlink(missing_ok=True)


def install_uki(bundle: Path, slot: str, esp: Path) -> Path:
    """The bundle's UKI for ``slot`` onto a mounted ESP (the slot is not the booted one)."""
    source = bundle / entry(slot)
    if not source.is_file():
        raise SlotError(f"the bundle has no {source.name}: it was not made by `make bundle`")
    linux = esp / "EFI" / "Linux"
    linux.mkdir(parents=True, exist_ok=True)
    target = linux / entry(slot)
    # the old one first: the ESP holds two UKIs and little more
    target.unlink(missing_ok=True)
    partial = linux / f".{target.name}.new"
    shutil.copyfile(source, partial)
    with partial.open("rb") as stream:
        os.fsync(stream.fileno())
    partial.rename(target)
    return target


def accept(env: Mapping[str, str], version_file: Path = IMAGE_VERSION_FILE) -> tuple[str, str, str]:
    """The checks before anything is written: (target slot, offered version, running version)."""
    bundle = Path(env.get("RAUC_BUNDLE_MOUNT_POINT", ""))
    try:
        offered = manifest_version((bundle / "manifest.raucm").read_text())
    except OSError as exc:
        raise SlotError(f"cannot read the bundle's manifest in {bundle}: {exc}") from exc
    try:
        running = version_file.read_text().strip()
    except OSError as exc:
        raise SlotError(f"cannot read the running image's version ({version_file}): {exc}") from exc
    check_newer(running, offered)
    slot = target_slot(env)
    if slot == env.get("RAUC_CURRENT_BOOTNAME"):
        raise SlotError(f"RAUC chose the running slot {slot} as target: refusing to overwrite it")
    return slot, offered, running


def pre_install(env: Mapping[str, str], version_file: Path = IMAGE_VERSION_FILE,
                esp_device: Path = ESP_DEVICE) -> str:  # fmt: skip
    """RAUC's pre-install handler: a newer version or nothing; then the slot's UKI."""
    slot, offered, running = accept(env, version_file)
    bundle = Path(env["RAUC_BUNDLE_MOUNT_POINT"])
    with tempfile.TemporaryDirectory(prefix="sdbox-esp-", dir=env.get("RUNTIME_DIRECTORY")) as mnt:
        mount = subprocess.run(
            ["mount", "-t", "vfat", "-o", "nodev,nosuid,noexec,umask=0077", esp_device, mnt],
            capture_output=True, text=True, timeout=60, check=False, env=ENV,
        )  # fmt: skip
        if mount.returncode != 0:
            raise SlotError(f"cannot mount the ESP {esp_device}: {mount.stderr.strip()}")
        try:
            install_uki(bundle, slot, Path(mnt))
        finally:
            subprocess.run(["umount", mnt], capture_output=True, timeout=60, check=False, env=ENV)
    return f"sdbox: version {offered} (running {running}) accepted; UKI for slot {slot} on the ESP"


def _run(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=120, check=False, env=ENV)


class System:
    """What confirm() asks of the running system (a fake in the unit tests)."""

    def agent_active(self) -> bool:
        return _run(["systemctl", "is-active", "--quiet", "sdbox-agent.service"]).returncode == 0

    def mark_good(self) -> None:
        """Through RAUC, so that its status file says so too; it calls set-state good."""
        done = _run(["rauc", "status", "mark-good", "booted"])
        if done.returncode != 0:
            raise SlotError(f"rauc status mark-good failed: {done.stderr.strip()}")

    def reboot(self) -> None:
        _run(["systemctl", "--no-block", "reboot"])


def confirm(backend: Backend, system: System | None = None) -> str:
    """After the agent's start: this slot good, or (on a trial boot) bad and reboot."""
    system = system or System()
    booted = backend.booted()
    if booted is None:
        return "sdbox: not booted through a slot entry; nothing to confirm"
    notes = []
    pending = backend.pending_trial()
    if pending is not None and pending != booted:
        # the trial boot never got here (reset, panic, verity): the firmware came back
        backend.set_state(pending, "bad")
        backend.end_trial()
        notes.append(f"the trial boot of slot {pending} failed: marked bad, back on slot {booted}")
    trial = booted != backend.default()
    if system.agent_active():
        system.mark_good()
        backend.end_trial()
        notes.append(f"slot {booted} confirmed (agent ready){' after its trial boot' if trial else ''}")
        return "sdbox: " + "; ".join(notes)
    if not trial:
        raise SlotError(f"the agent is not active on slot {booted}, the default: no other slot to fall back to")
    backend.set_state(booted, "bad")
    backend.end_trial()
    system.reboot()
    return f"sdbox: trial slot {booted} failed (agent not active): marked bad, rebooting into {backend.default()}"


def main(argv: Sequence[str], env: Mapping[str, str]) -> int:
    name = Path(argv[0]).name
    args = list(argv[1:])
    backend = Backend(EfiVars())
    try:
        if name == "rauc-pre-install":
            print(pre_install(env), flush=True)
        elif args[:1] == ["get-primary"]:
            print(backend.get_primary())
        elif args[:1] == ["set-primary"] and len(args) == 2:
            backend.set_primary(args[1])
        elif args[:1] == ["get-state"] and len(args) == 2:
            print(backend.get_state(args[1]))
        elif args[:1] == ["set-state"] and len(args) == 3:
            backend.set_state(args[1], args[2])
        elif args[:1] == ["confirm"]:
            print(confirm(backend), flush=True)
        else:
            print(f"usage: {name} get-primary | set-primary SLOT | get-state SLOT | "
                  "set-state SLOT good|bad | confirm", file=sys.stderr)  # fmt: skip
            return 2
    except SlotError as exc:
        if name == "rauc-pre-install":  # RAUC passes "<< error" lines on to `rauc install`
            print(f"<< error sdbox: {exc}", flush=True)
        print(f"sdbox: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv, os.environ))
