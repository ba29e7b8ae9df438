"""make image-repro: build the image twice from this checkout and compare what must be the same.

The second build goes to build/image-repro with the first build's keys and
test PKI (a real build's come from its environment, SDBOX_SB_KEY...): same
sources, same keys. The root squashfs, its dm-verity tree, the root hash and
the unsigned UKIs must be byte for byte the same; the signed UKIs and
systemd-boot differ by sbsign's PKCS#7 signing time (docs/image.md,
"Reproducible").
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SAME = ("root.squashfs", "root.verity", "roothash", "sdbox-a.unsigned.efi", "sdbox-b.unsigned.efi")
SIGNED = ("sdbox-a.efi", "sdbox-b.efi", "BOOTX64.EFI")


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generation", default="qemu-q35")
    args = parser.parse_args()
    first, second = ROOT / "build" / "image", ROOT / "build" / "image-repro"
    build = [sys.executable, str(ROOT / "bootimage" / "build.py"), "--generation", args.generation]
    subprocess.run(build, check=True)
    shutil.rmtree(second, ignore_errors=True)
    second.mkdir(parents=True)
    for kept in ("keys", "pki"):
        shutil.copytree(first / kept, second / kept, symlinks=True)
    subprocess.run([*build, "--out", str(second)], check=True)
    work = Path("work") / args.generation
    differ = []
    for name in (*SAME, *SIGNED):
        a, b = digest(first / work / name), digest(second / work / name)
        verdict = "same" if a == b else "DIFFERS"
        print(f"  {verdict:7}  {name}  {a[:16]}  {b[:16]}")
        if a != b and name in SAME:
            differ.append(name)
    print("image-repro: " + ("passed" if not differ else f"FAILED ({', '.join(differ)} differ)")
          + " (signed files differ by sbsign's signing time)")  # fmt: skip
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
