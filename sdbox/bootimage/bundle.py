"""RAUC update bundles on the build host: keys, the on-box configuration, `rauc bundle`.

A bundle (format ``verity``) holds one slot's worth of root: the squashfs,
its dm-verity hash tree, and the signed UKI for each slot (the UKI's command
line names the slot's partitions and the root hash). Its version is
:func:`image_version`; the box refuses one that is not newer than the
running root (sdbox.bootimage.slots, the image's RAUC pre-install handler).

Signing keys: SDBOX_RAUC_KEY / SDBOX_RAUC_CERT (and SDBOX_RAUC_KEYRING, the
CA the box trusts; default: the certificate itself) from a real build's
environment, else a test CA and signer made into ``build/image/keys/`` at the
first build (mode 0700, never committed).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from sdbox.bootimage import tools
from sdbox.bootimage.errors import BootImageError
from sdbox.bootimage.slots import ImageVersion, SlotError

SLOT_DEVICES = {
    "a": ("root-a", "root-a-verity"),
    "b": ("root-b", "root-b-verity"),
}


@dataclass(frozen=True)
class SigningKeys:
    key: Path
    cert: Path
    keyring: Path
    source: str


def image_version(package_version: str, epoch: int, override: str | None = None) -> str:
    """``<package version>+<SOURCE_DATE_EPOCH>``, or SDBOX_IMAGE_VERSION when a release sets it."""
    version = override.strip() if override else f"{package_version}+{epoch}"
    try:
        ImageVersion.parse(version)
    except SlotError as exc:
        raise BootImageError(f"image version: {exc.message}") from exc
    return version


def compatible(generation: str) -> str:
    """RAUC's compatible string: a bundle installs only on boxes of its generation."""
    return f"sdbox-{generation}"


def system_conf(generation: str) -> str:
    """/etc/rauc/system.conf: the slots, the keyring, our handler and backend."""
    lines = [
        "# sdbox A/B slots (bootimage/build.py; docs/image.md)",
        "[system]",
        f"compatible={compatible(generation)}",
        "bootloader=custom",
        "bundle-formats=verity",
        "mountprefix=/run/rauc",
        # /var is the data partition: not overwritten by an update
        "statusfile=/var/lib/rauc/status.raucs",
        "",
        "[keyring]",
        "path=/etc/rauc/keyring.pem",
        "check-purpose=codesign",
        "",
        "[handlers]",
        "pre-install=/usr/libexec/sdbox/rauc-pre-install",
        "bootloader-custom-backend=/usr/libexec/sdbox/rauc-bootloader",
    ]
    for index, (bootname, (root, verity)) in enumerate(SLOT_DEVICES.items()):
        lines += [
            "",
            f"[slot.rootfs.{index}]",
            f"device=/dev/disk/by-partlabel/{root}",
            "type=raw",
            f"bootname={bootname}",
            "",
            f"[slot.verity.{index}]",
            f"device=/dev/disk/by-partlabel/{verity}",
            "type=raw",
            f"parent=rootfs.{index}",
        ]
    return "\n".join(lines) + "\n"


def host_conf(path: Path, generation: str, keyring: Path) -> Path:
    """A system.conf for `rauc bundle` / `rauc info` on the build host: the same keyring
    and purpose check as the box (no slots: the host installs nothing)."""
    path.write_text(
        "[system]\n"
        f"compatible={compatible(generation)}\n"
        "bootloader=noop\n"
        "statusfile=per-slot\n"
        "[keyring]\n"
        f"path={keyring.resolve()}\n"
        "check-purpose=codesign\n"
    )
    return path


# RAUC 1.8 picks a slot's write handler by the image's file extension and has
# none for a dm-verity hash tree on a raw slot: the bundle's install hook
# copies it (the hook is inside the signed, verity-protected payload).
INSTALL_HOOK = """#!/bin/sh
# sdbox bundle hook: writes the dm-verity hash tree (image class verity) to its slot.
set -eu
[ "$1" = slot-install ] || exit 0
[ "$RAUC_SLOT_CLASS" = verity ] || { echo "unexpected slot class $RAUC_SLOT_CLASS" >&2; exit 1; }
image="$RAUC_IMAGE_NAME"
[ -f "$image" ] || image="$(dirname "$0")/$RAUC_IMAGE_NAME"
dd if="$image" of="$RAUC_SLOT_DEVICE" bs=1M conv=fsync status=none
"""


def manifest(generation: str, version: str, built: str) -> str:
    return "\n".join([
        "[update]",
        f"compatible={compatible(generation)}",
        f"version={version}",
        f"description=sdbox appliance root for {generation}",
        f"build={built}",
        "",
        "[bundle]",
        "format=verity",
        "",
        "[hooks]",
        "filename=hook",
        "",
        "[image.rootfs]",
        "filename=root.squashfs",
        "",
        "[image.verity]",
        "filename=root.verity",
        "hooks=install",
    ]) + "\n"  # fmt: skip


def _openssl(argv: list[str | Path], what: str) -> None:
    tools.run(["openssl", *argv], what=what, timeout=120)


def make_test_keys(keys: Path) -> SigningKeys:
    """A test update CA and a code-signing certificate under it (made once per build tree)."""
    keys.mkdir(mode=0o700, parents=True, exist_ok=True)
    ca_key, ca_cert = keys / "rauc-test-ca.key", keys / "rauc-test-ca.pem"
    key, cert = keys / "rauc-test-signer.key", keys / "rauc-test-signer.pem"
    if not cert.exists():
        ext = keys / "rauc-signer.ext"
        ext.write_text(
            "basicConstraints=critical,CA:FALSE\n"
            "keyUsage=critical,digitalSignature\n"
            "extendedKeyUsage=critical,codeSigning\n"
            "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"
        )
        for private in (ca_key, key):
            _openssl(["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                      "-out", private], "making a test update key")  # fmt: skip
            private.chmod(0o600)
        _openssl(["req", "-x509", "-new", "-key", ca_key, "-out", ca_cert, "-days", "3650",
                  "-subj", "/O=sdbox test/CN=sdbox test update CA",
                  "-addext", "basicConstraints=critical,CA:TRUE",
                  "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
                 "making the test update CA")  # fmt: skip
        csr = keys / "rauc-signer.csr"
        _openssl(["req", "-new", "-key", key, "-out", csr,
                  "-subj", "/O=sdbox test/CN=sdbox test update signer"], "making a signing request")  # fmt: skip
        _openssl(["x509", "-req", "-in", csr, "-CA", ca_cert, "-CAkey", ca_key, "-CAcreateserial",
                  "-out", cert, "-days", "3650", "-extfile", ext],
                 "issuing the test update signer")  # fmt: skip
        csr.unlink()
    return SigningKeys(key, cert, ca_cert, "test update CA (build/image/keys)")


def signing_keys(keys: Path) -> SigningKeys:
    key, cert = os.environ.get("SDBOX_RAUC_KEY"), os.environ.get("SDBOX_RAUC_CERT")
    if key and cert:
        keyring = os.environ.get("SDBOX_RAUC_KEYRING") or cert
        return SigningKeys(Path(key), Path(cert), Path(keyring), "SDBOX_RAUC_KEY")
    if key or cert:
        raise BootImageError("set both SDBOX_RAUC_KEY and SDBOX_RAUC_CERT, or neither (test keys)")
    return make_test_keys(keys)


def make_bundle(
    content: Path, output: Path, keys: SigningKeys, conf: Path, files: dict[str, Path],
    manifest_text: str, epoch: int,
) -> Path:
    """`rauc bundle` of ``files`` (bundle name -> source) and the manifest, signed."""
    shutil.rmtree(content, ignore_errors=True)
    content.mkdir(parents=True)
    for name, source in files.items():
        target = content / name
        try:
            os.link(source, target)  # same file system: no 400 MB copy
        except OSError:
            shutil.copyfile(source, target)
    (content / "manifest.raucm").write_text(manifest_text)
    (content / "hook").write_text(INSTALL_HOOK)
    (content / "hook").chmod(0o755)
    for path in [content, *content.iterdir()]:
        os.utime(path, (epoch, epoch))
    output.unlink(missing_ok=True)
    tools.run(
        ["rauc", f"--conf={conf}", "bundle", f"--cert={keys.cert}", f"--key={keys.key}",
         # the root is zstd squashfs already: do not spend minutes recompressing it
         f"--mksquashfs-args=-comp zstd -Xcompression-level 1 -all-time {epoch} -mkfs-time {epoch}",
         content, output],
        what="making the RAUC bundle", timeout=1800,
    )  # fmt: skip
    shutil.rmtree(content, ignore_errors=True)
    return output


def info(bundle: Path, conf: Path) -> dict[str, object]:
    """`rauc info`, the signature verified against the keyring of ``conf``
    (:func:`host_conf`): the manifest, or ToolFailed."""
    out = tools.run(
        ["rauc", f"--conf={conf}", "info", "--output-format=json", bundle],
        what=f"verifying {bundle.name}", timeout=300,
        env={"TMPDIR": str(bundle.parent)},
    )  # fmt: skip
    start = out.find("{")
    if start < 0:
        raise BootImageError(f"rauc info printed no manifest for {bundle.name}", detail=tools.tail(out))
    parsed: dict[str, object] = json.loads(out[start:])
    return parsed
