"""``make bench-image``: the appliance image's size, build time and boot-to-ready.

Not one of ``make bench``'s modules (no ``bench_`` prefix): it needs a built
image and a boot test, a quarter of an hour under software emulation. The
Makefile runs ``make image image-test`` first; this reads what they wrote
(``build/image/sdbox-GEN.json``, ``build/image-test/GEN/result.json``),
prints the figures with the machine they came from, and writes
``build/bench-image.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from benchmarks.__main__ import machine

ROOT = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024


def figures(generation: str) -> dict[str, Any]:
    """The build's and the boot test's figures for ``generation``."""
    build_file = ROOT / "build" / "image" / f"sdbox-{generation}.json"
    boot_file = ROOT / "build" / "image-test" / generation / "result.json"
    for path, make in ((build_file, "make image"), (boot_file, "make image-test")):
        if not path.exists():
            raise SystemExit(f"bench-image: {path} does not exist: run `{make}` first")
    build = json.loads(build_file.read_text())
    boot = json.loads(boot_file.read_text())
    return {
        "generation": generation,
        "image_version": build.get("version"),
        "disk_mib": round(build["disk_bytes"] / MIB),
        "allocated_mib": round(build["allocated_bytes"] / MIB),
        "compressed_mib": round(build["compressed_bytes"] / MIB),
        "root_installed_mib": round(build["root_installed_bytes"] / MIB),
        "root_squashfs_mib": round(build["root_squashfs_bytes"] / MIB),
        "uki_mib": round(build["uki_bytes"] / MIB, 1),
        "build_s": build["build_s"],
        "build_stages_s": build.get("timings_s", {}),
        "accel": boot.get("accel"),
        "first_boot_to_ready_s": boot.get("boot_to_ready_s"),
        "first_boot_firmware_s": boot.get("firmware_s"),
        "first_boot_kernel_to_ready_s": boot.get("kernel_to_ready_s"),
        "second_boot_to_ready_s": boot.get("second_boot_to_ready_s"),
        "packages_kib": build.get("packages_kib", {}),
        "python_kib": build.get("python_kib", {}),
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generation", default="qemu-q35")
    args = parser.parse_args(argv)
    info = machine()
    found = figures(args.generation)
    accel = found["accel"]
    how = "QEMU TCG: software emulation, no KVM" if accel == "tcg" else f"QEMU {accel}"
    print(f"machine: {info['cpu']}, {info['cores']} cores, kernel {info['kernel']}")
    print(f"image {found['generation']} {found['image_version']}")
    print(f"  disk            {found['disk_mib']} MiB ({found['allocated_mib']} MiB allocated)")
    print(f"  compressed      {found['compressed_mib']} MiB (zstd)")
    print(f"  root            {found['root_installed_mib']} MiB installed, "
          f"{found['root_squashfs_mib']} MiB squashfs")  # fmt: skip
    print(f"  UKI             {found['uki_mib']} MiB")
    print(f"  build           {found['build_s']:.0f} s")
    for stage, seconds in found["build_stages_s"].items():
        print(f"    {seconds:7.1f} s  {stage}")
    print(f"boot ({how}, 2 vCPUs, OVMF Secure Boot, swtpm)")
    print(f"  first boot      {found['first_boot_to_ready_s']} s to the agent's READY "
          f"(firmware + loader {found['first_boot_firmware_s']} s; formats and seals /var, "
          "enrols with the centre)")  # fmt: skip
    print(f"  second boot     {found['second_boot_to_ready_s']} s to the agent's READY")
    # The summary lines, one figure each (issue 26's list), then what the root holds.
    print(f"accel: {accel}")
    print(f"boot-to-ready: {found['second_boot_to_ready_s']} s")
    print(f"first-boot-to-ready: {found['first_boot_to_ready_s']} s")
    print(f"firmware + loader: {found['first_boot_firmware_s']} s")
    print(f"image zstd: {found['compressed_mib']} MiB")
    print(f"root installed: {found['root_installed_mib']} MiB")
    packages = found["packages_kib"]
    if packages:
        print("largest packages (their files on disk in the root):")
        for name, kib in list(packages.items())[:15]:
            print(f"  {kib / 1024:8.1f} MiB  {name}")
    python = found["python_kib"]
    if python:
        print("largest entries of the private Python set (/usr/lib/sdbox/python):")
        for name, kib in list(python.items())[:8]:
            print(f"  {kib / 1024:8.1f} MiB  {name}")
    out = ROOT / "build" / "bench-image.json"
    out.write_text(json.dumps({"machine": info, "image": found}, indent=2) + "\n")
    print(f"figures written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
