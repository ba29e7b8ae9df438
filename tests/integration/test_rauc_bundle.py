"""RAUC bundles as `make bundle` signs them (sdbox.bootimage.bundle), checked by the
real `rauc info` on the host: the box's keyring and purpose check accept our
signer, refuse another CA's bundle and a bundle with one byte changed. The
image's own bundle is too large for this tier; this one has small stand-in
images and the same manifest and slots."""

from __future__ import annotations

import configparser
import os
import re
import shutil
from pathlib import Path

import pytest

from sdbox.bootimage import bundle, slots, tools
from sdbox.bootimage.errors import BootImageError, ToolFailed

EPOCH = 1764670000


def build(tmp_path: Path, keys: bundle.SigningKeys, version: str, name: str) -> Path:
    src = tmp_path / f"src-{name}"
    src.mkdir()
    files = {}
    for file, size in (("root.squashfs", 64 * 1024), ("root.verity", 4096),
                       ("sdbox-a.efi", 1000), ("sdbox-b.efi", 1000)):  # fmt: skip
        # incompressible, as a real squashfs is (rauc wants a payload over 4 KiB)
        (src / file).write_bytes(os.urandom(size))
        files[file] = src / file
    conf = bundle.host_conf(tmp_path / f"{name}.conf", "qemu-q35", keys.keyring)
    text = bundle.manifest("qemu-q35", version, "2026-12-02T00:00:00+00:00")
    return bundle.make_bundle(tmp_path / f"content-{name}", tmp_path / f"{name}.raucb", keys, conf,
                              files, text, EPOCH)  # fmt: skip


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> bundle.SigningKeys:
    return bundle.make_test_keys(tmp_path_factory.mktemp("keys") / "keys")


def test_signed_bundle_verifies_against_the_box_keyring(tmp_path: Path, keys: bundle.SigningKeys) -> None:
    made = build(tmp_path, keys, "0.1.0+1764670001", "good")
    # the keyring and purpose check the image ships (/etc/rauc/system.conf)
    conf = configparser.ConfigParser()
    conf.read_string(bundle.system_conf("qemu-q35"))
    assert conf["keyring"]["check-purpose"] == "codesign"
    assert conf["system"]["bundle-formats"] == "verity"
    info = bundle.info(made, bundle.host_conf(tmp_path / "box.conf", "qemu-q35", keys.keyring))
    assert info["version"] == "0.1.0+1764670001"
    assert info["compatible"] == "sdbox-qemu-q35"
    images = {name for image in info["images"] for name in image}  # type: ignore[attr-defined]
    assert images == {"rootfs", "verity"}
    # the version the box compares is the one rauc verified
    slots.check_newer("0.1.0+1764670000", str(info["version"]))
    assert (keys.key.stat().st_mode & 0o777) == 0o600


def test_bundle_from_another_ca_refused(tmp_path: Path, keys: bundle.SigningKeys) -> None:
    other = bundle.make_test_keys(tmp_path / "other-keys")
    made = build(tmp_path, other, "0.1.0+1764670001", "other")
    box = bundle.host_conf(tmp_path / "box.conf", "qemu-q35", keys.keyring)
    with pytest.raises(ToolFailed, match=re.escape("verifying other.raucb")) as raised:
        bundle.info(made, box)
    assert "signature verification failed" in raised.value.detail


def test_changed_byte_refused(tmp_path: Path, keys: bundle.SigningKeys) -> None:
    made = build(tmp_path, keys, "0.1.0+1764670001", "tampered")
    box = bundle.host_conf(tmp_path / "box.conf", "qemu-q35", keys.keyring)
    copy = tmp_path / "copy.raucb"
    shutil.copy(made, copy)
    with copy.open("r+b") as stream:  # inside the squashfs payload, not the signature
        stream.seek(100)
        byte = stream.read(1)
        stream.seek(100)
        stream.write(bytes([byte[0] ^ 0xFF]))
    # the signature covers the manifest, the manifest the payload's verity hash:
    # rauc checks the payload before it uses any of it (the box: at install)
    tools.run(["rauc", f"--conf={box}", "extract", made, tmp_path / "good"], what="extract", timeout=120)
    assert (tmp_path / "good" / "root.squashfs").read_bytes() == (tmp_path / "src-tampered" / "root.squashfs").read_bytes()
    with pytest.raises(ToolFailed) as raised:
        tools.run(["rauc", f"--conf={box}", "extract", copy, tmp_path / "bad"], what="extract", timeout=120)
    assert "bundle payload is corrupted" in raised.value.detail
    assert not (tmp_path / "bad").exists()


def test_image_version_rules() -> None:
    assert bundle.image_version("0.1.0", EPOCH) == "0.1.0+1764670000"
    assert bundle.image_version("0.1.0", EPOCH, "0.2.0+5") == "0.2.0+5"
    with pytest.raises(BootImageError, match="cannot be compared"):
        bundle.image_version("0.1.0", EPOCH, "0.2.0-beta")


def test_install_hook_writes_the_hash_tree(tmp_path: Path) -> None:
    """The bundle's hook, as RAUC 1.8 runs it for the verity image (slot-install)."""
    hook = tmp_path / "hook"
    hook.write_text(bundle.INSTALL_HOOK)
    hook.chmod(0o755)
    tree = tmp_path / "root.verity"
    tree.write_bytes(os.urandom(3 * 4096))
    device = tmp_path / "root-b-verity"
    device.write_bytes(b"\0" * 8 * 4096)
    env = {"RAUC_SLOT_CLASS": "verity", "RAUC_IMAGE_NAME": "root.verity",
           "RAUC_SLOT_DEVICE": str(device)}  # fmt: skip
    tools.run([hook, "slot-install"], what="the install hook", timeout=60, env=env)
    assert device.read_bytes()[: 3 * 4096] == tree.read_bytes()
    with pytest.raises(ToolFailed, match="install hook"):
        tools.run([hook, "slot-install"], what="the install hook", timeout=60,
                  env={**env, "RAUC_SLOT_CLASS": "rootfs"})  # fmt: skip
