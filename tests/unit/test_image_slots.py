"""The box's A/B logic (sdbox.bootimage.slots, shipped as RAUC's handler and backend):
version comparison, downgrade refusal, target slot, UKI placement, one-shot trial
boots and the default entry. EFI variables are an in-memory fake here; the real
ones are exercised in QEMU (make image-update-test)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sdbox.bootimage import slots
from sdbox.bootimage.slots import Backend, EfiVars, ImageVersion, SlotError
from sdbox.errors import SdboxError


class FakeEfi(EfiVars):
    """systemd-boot's variables in a dict; writes as bootctl would make them."""

    def __init__(self, **values: str) -> None:
        super().__init__(Path("/nonexistent"))
        self.values = dict(values)
        self.writes: list[tuple[str, str | None]] = []

    def read(self, name: str) -> str | None:
        return self.values.get(name)

    def write(self, name: str, value: str | None) -> None:
        self.writes.append((name, value))
        if value is not None:
            self.values[name] = value
        else:
            self.values.pop(name, None)


@pytest.mark.parametrize(
    ("older", "newer"),
    [
        ("0.1.0+1764670000", "0.1.0+1764670001"),  # same release, later build
        ("0.1.0+1764670000", "0.2.0+1"),  # the release counts first
        ("0.9.9", "0.10.0"),  # numbers, not text
        ("0.1.0", "0.1.0+1"),  # no build number is build 0
        ("1.2", "1.2.1"),
    ],
)
def test_versions_order(older: str, newer: str) -> None:
    assert ImageVersion.parse(older) < ImageVersion.parse(newer)
    slots.check_newer(older, newer)  # accepted
    with pytest.raises(SlotError, match=f"refusing a downgrade: the bundle has version {re.escape(older)},"):
        slots.check_newer(newer, older)


def test_equal_version_refused_and_trailing_zeros_equal() -> None:
    assert ImageVersion.parse("1.0") == ImageVersion.parse("1.0.0")
    with pytest.raises(SlotError, match="already running"):
        slots.check_newer("0.1.0+5", "0.1.0+5")
    with pytest.raises(SlotError, match="already running"):
        slots.check_newer("1.0+5", "1.0.0+5")


@pytest.mark.parametrize("text", ["", "latest", "1.0-rc1", "1.0+abc", "v1.0", "1..0", "1.0+"])
def test_unparseable_version_refused(text: str) -> None:
    with pytest.raises(SlotError, match="cannot be compared"):
        slots.check_newer("0.1.0+1", text)
    with pytest.raises(SlotError, match="cannot be compared"):
        slots.check_newer(text, "0.1.0+1")


def test_slot_error_is_an_sdbox_error() -> None:
    assert issubclass(SlotError, SdboxError)


def test_manifest_version() -> None:
    text = "[update]\ncompatible=sdbox-qemu-q35\nversion = 0.1.0+7\n\n[image.rootfs]\nversion=9\n"
    assert slots.manifest_version(text) == "0.1.0+7"
    with pytest.raises(SlotError, match="no \\[update\\] version"):
        slots.manifest_version("[image.rootfs]\nversion=9\n")


def rauc_env(bundle: Path, target: str = "b", booted: str = "a") -> dict[str, str]:
    """What RAUC 1.8 gives a system handler (prepare_environment in install.c)."""
    names = {"a": "1 2", "b": "3 4"}
    env = {
        "RAUC_BUNDLE_MOUNT_POINT": str(bundle),
        "RAUC_CURRENT_BOOTNAME": booted,
        "RAUC_SLOTS": "1 2 3 4",
        "RAUC_TARGET_SLOTS": names[target],
    }
    for index, (cls, bootname) in enumerate(
        [("rootfs", "a"), ("verity", ""), ("rootfs", "b"), ("verity", "")], start=1
    ):
        env[f"RAUC_SLOT_CLASS_{index}"] = cls
        env[f"RAUC_SLOT_BOOTNAME_{index}"] = bootname
    return env


def make_bundle_dir(tmp_path: Path, version: str) -> Path:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "manifest.raucm").write_text(f"[update]\ncompatible=sdbox-qemu-q35\nversion={version}\n")
    (bundle / "sdbox-a.efi").write_bytes(b"UKI for slot a")
    (bundle / "sdbox-b.efi").write_bytes(b"UKI for slot b")
    return bundle


def test_accept_newer_bundle_into_the_other_slot(tmp_path: Path) -> None:
    running = tmp_path / "image-version"
    running.write_text("0.1.0+100\n")
    bundle = make_bundle_dir(tmp_path, "0.1.0+101")
    assert slots.accept(rauc_env(bundle, "b", "a"), running) == ("b", "0.1.0+101", "0.1.0+100")
    assert slots.accept(rauc_env(bundle, "a", "b"), running)[0] == "a"


def test_accept_refuses_older_and_running_slot(tmp_path: Path) -> None:
    running = tmp_path / "image-version"
    running.write_text("0.1.0+100\n")
    older = make_bundle_dir(tmp_path, "0.1.0+99")
    with pytest.raises(SlotError, match=re.escape("refusing a downgrade: the bundle has version 0.1.0+99")):
        slots.accept(rauc_env(older), running)
    (older / "manifest.raucm").write_text("[update]\nversion=0.1.0+200\n")
    with pytest.raises(SlotError, match="running slot a"):
        slots.accept(rauc_env(older, "a", "a"), running)


def test_accept_fails_closed_without_versions(tmp_path: Path) -> None:
    bundle = make_bundle_dir(tmp_path, "0.1.0+101")
    with pytest.raises(SlotError, match="running image's version"):
        slots.accept(rauc_env(bundle), tmp_path / "missing")
    running = tmp_path / "image-version"
    running.write_text("0.1.0+100\n")
    env = rauc_env(bundle)
    env["RAUC_TARGET_SLOTS"] = "2"  # only the verity slot: no rootfs named
    with pytest.raises(SlotError, match="no rootfs target slot"):
        slots.accept(env, running)
    env = rauc_env(bundle)
    env["RAUC_SLOT_BOOTNAME_3"] = "c"
    with pytest.raises(SlotError, match="unknown slot 'c'"):
        slots.accept(env, running)


def test_install_uki_replaces_the_target_slots_only(tmp_path: Path) -> None:
    bundle = make_bundle_dir(tmp_path, "0.1.0+101")
    esp = tmp_path / "esp"
    (esp / "EFI/Linux").mkdir(parents=True)
    (esp / "EFI/Linux/sdbox-a.efi").write_bytes(b"running")
    (esp / "EFI/Linux/sdbox-b.efi").write_bytes(b"old b")
    slots.install_uki(bundle, "b", esp)
    assert (esp / "EFI/Linux/sdbox-b.efi").read_bytes() == b"UKI for slot b"
    assert (esp / "EFI/Linux/sdbox-a.efi").read_bytes() == b"running"
    assert sorted(p.name for p in (esp / "EFI/Linux").iterdir()) == ["sdbox-a.efi", "sdbox-b.efi"]
    (bundle / "sdbox-a.efi").unlink()
    with pytest.raises(SlotError, match=re.escape("no sdbox-a.efi")):
        slots.install_uki(bundle, "a", esp)


def test_flashed_box_boots_a(tmp_path: Path) -> None:
    backend = Backend(FakeEfi(LoaderEntrySelected="sdbox-a.efi"), tmp_path)
    assert backend.get_primary() == "a"
    assert backend.booted() == "a"
    assert backend.get_state("a") == "good"


def test_install_is_a_one_shot_trial_until_confirmed(tmp_path: Path) -> None:
    efi = FakeEfi(LoaderEntrySelected="sdbox-a.efi", LoaderEntryDefault="sdbox-a.efi")
    backend = Backend(efi, tmp_path)
    backend.set_primary("b")  # what RAUC does after writing slot b
    assert efi.values["LoaderEntryOneShot"] == "sdbox-b.efi"
    assert efi.values["LoaderEntryDefault"] == "sdbox-a.efi"  # a failed trial comes back to a
    assert backend.get_primary() == "b"
    # the trial boot: systemd-boot consumed the one-shot variable
    efi.values.pop("LoaderEntryOneShot")
    efi.values["LoaderEntrySelected"] = "sdbox-b.efi"
    assert backend.get_primary() == "a"
    backend.set_state("b", "good")  # rauc status mark-good, once the agent is ready
    assert efi.values["LoaderEntryDefault"] == "sdbox-b.efi"
    assert backend.get_primary() == "b"
    writes = len(efi.writes)
    backend.set_state("b", "good")  # every later boot: no NVRAM write
    assert len(efi.writes) == writes


def test_bad_slot_gives_the_default_to_the_other(tmp_path: Path) -> None:
    efi = FakeEfi(LoaderEntrySelected="sdbox-b.efi", LoaderEntryDefault="sdbox-b.efi",
                  LoaderEntryOneShot="sdbox-b.efi")  # fmt: skip
    backend = Backend(efi, tmp_path)
    backend.set_state("b", "bad")
    assert backend.get_state("b") == "bad"
    assert efi.values["LoaderEntryDefault"] == "sdbox-a.efi"
    assert "LoaderEntryOneShot" not in efi.values
    backend.set_primary("b")  # a new install into b clears the mark
    assert backend.get_state("b") == "good"


def test_set_primary_on_the_booted_slot_makes_it_default(tmp_path: Path) -> None:
    efi = FakeEfi(LoaderEntrySelected="sdbox-b.efi", LoaderEntryDefault="sdbox-a.efi",
                  LoaderEntryOneShot="sdbox-a.efi")  # fmt: skip
    Backend(efi, tmp_path).set_primary("b")
    assert efi.values["LoaderEntryDefault"] == "sdbox-b.efi"
    assert "LoaderEntryOneShot" not in efi.values


def test_unknown_slots_and_states_refused(tmp_path: Path) -> None:
    backend = Backend(FakeEfi(), tmp_path)
    with pytest.raises(SlotError, match="unknown slot"):
        backend.set_primary("c")
    with pytest.raises(SlotError, match="unknown slot state"):
        backend.set_state("a", "maybe")
    assert slots.slot_of("SDBOX-B.EFI") == "b"  # systemd-boot may case-fold entry ids
    assert slots.slot_of("sdbox-b+3-0.efi") is None
    assert slots.slot_of(None) is None


def test_efivar_format(tmp_path: Path) -> None:
    """efivarfs: 4 bytes of attributes, then UTF-16LE with a terminating NUL."""
    name = f"LoaderEntryDefault-{slots.LOADER_GUID}"
    (tmp_path / name).write_bytes(b"\x07\x00\x00\x00" + "sdbox-b.efi\0".encode("utf-16-le"))
    efi = EfiVars(tmp_path)
    assert efi.read("LoaderEntryDefault") == "sdbox-b.efi"
    assert efi.read("LoaderEntryOneShot") is None
    efi.write("LoaderEntryOneShot", "sdbox-a.efi")  # as bootctl set-oneshot writes it
    raw = (tmp_path / f"LoaderEntryOneShot-{slots.LOADER_GUID}").read_bytes()
    assert raw == b"\x07\x00\x00\x00" + "sdbox-a.efi\0".encode("utf-16-le")
    assert efi.read("LoaderEntryOneShot") == "sdbox-a.efi"
    efi.write("LoaderEntryOneShot", None)
    assert efi.read("LoaderEntryOneShot") is None
    efi.write("LoaderEntryOneShot", None)  # deleting a missing variable is fine


def test_main_usage_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert slots.main(["rauc-bootloader", "frobnicate"], {}) == 2
    assert slots.main(["rauc-bootloader", "get-state", "c"], {}) == 1
    assert "unknown slot 'c'" in capsys.readouterr().err
    # RAUC runs the pre-install handler with one empty argument (the handler args)
    env = rauc_env(make_bundle_dir(tmp_path, "0.1.0+1"))
    assert slots.main(["/usr/libexec/sdbox/rauc-pre-install", ""], env) == 1
    captured = capsys.readouterr()
    assert captured.err.startswith("sdbox: ")
    assert "version" in captured.err
    assert captured.out.startswith("<< error sdbox: ")  # shown by `rauc install`


class FakeSystem(slots.System):
    def __init__(self, backend: Backend, agent: bool) -> None:
        self.backend = backend
        self.agent = agent
        self.rebooted = False

    def agent_active(self) -> bool:
        return self.agent

    def mark_good(self) -> None:  # what rauc does with the custom backend
        booted = self.backend.booted()
        assert booted is not None
        self.backend.set_state(booted, "good")

    def reboot(self) -> None:
        self.rebooted = True


def test_confirm_trial_boot_with_ready_agent(tmp_path: Path) -> None:
    efi = FakeEfi(LoaderEntrySelected="sdbox-a.efi", LoaderEntryDefault="sdbox-a.efi")
    backend = Backend(efi, tmp_path)
    backend.set_primary("b")
    efi.values.pop("LoaderEntryOneShot")
    efi.values["LoaderEntrySelected"] = "sdbox-b.efi"
    message = slots.confirm(backend, FakeSystem(backend, agent=True))
    assert message == "sdbox: slot b confirmed (agent ready) after its trial boot"
    assert efi.values["LoaderEntryDefault"] == "sdbox-b.efi"
    assert backend.pending_trial() is None


def test_confirm_after_a_trial_that_never_came_up(tmp_path: Path) -> None:
    efi = FakeEfi(LoaderEntrySelected="sdbox-a.efi", LoaderEntryDefault="sdbox-a.efi")
    backend = Backend(efi, tmp_path)
    backend.set_primary("b")
    efi.values.pop("LoaderEntryOneShot")  # b was tried, reset: the firmware booted a again
    message = slots.confirm(backend, FakeSystem(backend, agent=True))
    assert "the trial boot of slot b failed: marked bad, back on slot a" in message
    assert backend.get_state("b") == "bad"
    assert efi.values["LoaderEntryDefault"] == "sdbox-a.efi"


def test_confirm_trial_without_agent_reboots_into_the_default(tmp_path: Path) -> None:
    efi = FakeEfi(LoaderEntrySelected="sdbox-b.efi", LoaderEntryDefault="sdbox-a.efi")
    backend = Backend(efi, tmp_path)
    system = FakeSystem(backend, agent=False)
    message = slots.confirm(backend, system)
    assert system.rebooted
    assert message.endswith("marked bad, rebooting into a")
    assert backend.get_state("b") == "bad"
    # on the default slot there is nothing to fall back to: an error, no reboot loop
    efi.values["LoaderEntrySelected"] = "sdbox-a.efi"
    system = FakeSystem(backend, agent=False)
    with pytest.raises(SlotError, match="no other slot to fall back to"):
        slots.confirm(backend, system)
    assert not system.rebooted
