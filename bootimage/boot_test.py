"""make image-test: boot the appliance image in QEMU and check it from the serial console.

QEMU runs q35 with OVMF's Secure Boot firmware (Debian's snakeoil key
enrolled in PK/KEK/db), a swtpm TPM 2.0, no network card (the guest reaches
nothing) and the image behind a throw-away qcow2 overlay. The image's boot
report (bootimage/rootfs/usr/libexec/sdbox/boot-report, enabled by the
qemu-q35 generation's command line) prints the running system's view on the
serial console; this script checks it and prints ``boot-to-ready: N.N s``
(QEMU start to the agent's READY=1, firmware included).

Negative boots (``--negative``): a root with one flipped byte never reaches a
running agent (dm-verity), and an unsigned UKI is refused by Secure Boot.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sdbox.bootimage import checks as image_checks  # noqa: E402
from sdbox.bootimage import disk, tools  # noqa: E402
from sdbox.bootimage.errors import BootImageError  # noqa: E402

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.snakeoil.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.snakeoil.fd")
REPORT = "SDBOX-BOOT-REPORT "
WATCHDOG = "SDBOX-WATCHDOG-REPORT "
GREETER = "SDBOX-GREETER-REPORT "
END = "SDBOX-BOOT-REPORT-END"


@dataclass
class Boot:
    """One QEMU run: its serial console, line by line with host timestamps."""

    started: float
    lines: list[tuple[float, str]] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)

    def find(self, prefix: str) -> tuple[float, str] | None:
        for when, line in self.lines:
            index = line.find(prefix)
            if index >= 0:
                return when, line[index + len(prefix) :]
        return None


class Vm:
    """QEMU + swtpm for one boot; everything stopped by pid on exit."""

    def __init__(self, work: Path, disk_image: Path, accel: str, secure_boot: bool = True) -> None:
        self.work = work
        self.disk_image = disk_image
        self.accel = accel
        self.secure_boot = secure_boot
        self.procs: list[subprocess.Popen[bytes]] = []

    def start_tpm(self) -> Path:
        state = self.work / "tpm"
        state.mkdir(exist_ok=True)
        sock = self.work / "swtpm.sock"
        sock.unlink(missing_ok=True)
        proc = subprocess.Popen(
            ["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={state}",
             "--ctrl", f"type=unixio,path={sock}", "--log", f"file={self.work / 'swtpm.log'}",
             "--terminate"],
            env=dict(tools.BASE_ENV), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self.procs.append(proc)
        deadline = time.monotonic() + 10
        while not sock.exists():
            if time.monotonic() > deadline or proc.poll() is not None:
                raise BootImageError("swtpm did not start", detail=self._log("swtpm.log"))
            time.sleep(0.05)
        return sock

    def _log(self, name: str) -> str:
        path = self.work / name
        return tools.tail(path.read_text(errors="replace")) if path.exists() else ""

    def argv(self, tpm_sock: Path) -> list[str]:
        vars_copy = self.work / "OVMF_VARS.fd"
        shutil.copy(OVMF_VARS, vars_copy)
        cpu = "host" if self.accel == "kvm" else "max"
        return [
            "qemu-system-x86_64", "-accel", self.accel, "-machine", "q35,smm=on",
            "-cpu", cpu, "-smp", "2", "-m", "2048",
            "-global", "driver=cfi.pflash01,property=secure,value=on",
            "-drive", f"if=pflash,format=raw,unit=0,file={OVMF_CODE},readonly=on",
            "-drive", f"if=pflash,format=raw,unit=1,file={vars_copy}",
            "-drive", f"file={self.disk_image},if=none,id=disk0,format=qcow2",
            "-device", "virtio-blk-pci,drive=disk0",
            "-chardev", f"socket,id=chrtpm,path={tpm_sock}",
            "-tpmdev", "emulator,id=tpm0,chardev=chrtpm", "-device", "tpm-crb,tpmdev=tpm0",
            "-device", "virtio-gpu-pci", "-display", "none",
            "-nic", "none", "-serial", "stdio", "-monitor", "none", "-no-reboot",
        ]  # fmt: skip

    def boot(
        self, until: tuple[str, ...], timeout: float, echo: TextIO | None, label: str = "boot"
    ) -> Boot:
        """Boot and read the console until a line contains one of ``until`` (or QEMU exits)."""
        tpm = self.start_tpm()
        argv = self.argv(tpm)
        record = Boot(time.monotonic())
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=dict(tools.BASE_ENV))  # fmt: skip
        self.procs.append(proc)
        console = (self.work / f"console-{label}.log").open("w")

        def read() -> None:
            assert proc.stdout is not None
            for raw in proc.stdout:
                line = raw.decode(errors="replace").rstrip("\r\n")
                # OVMF and the kernel write escape sequences; keep the text
                line = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", line)
                record.lines.append((time.monotonic(), line))
                console.write(line + "\n")
                console.flush()
                if echo:
                    echo.write(line + "\n")
                if any(marker in line for marker in until):
                    record.done.set()
            record.done.set()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        record.done.wait(timeout)
        return record

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=15)
        self.procs.clear()


def overlay(image: Path, work: Path) -> Path:
    """A qcow2 overlay: the boot writes there, never into the built image."""
    target = work / "disk.qcow2"
    target.unlink(missing_ok=True)
    tools.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", image, target],
              what="creating the disk overlay", timeout=60)  # fmt: skip
    return target


def private_copy(image: Path, work: Path, name: str) -> Path:
    target = work / name
    tools.run(["cp", "--sparse=always", image, target], what="copying the image", timeout=600)
    return target


def pick_accel(requested: str) -> str:
    if requested != "auto":
        return requested
    return "kvm" if os.access("/dev/kvm", os.R_OK | os.W_OK) else "tcg"


@dataclass
class Check:
    name: str
    ok: bool
    detail: str = ""
    pending: bool = False


def image_listeners(report: dict[str, Any]) -> list[image_checks.Listener]:
    """The image's listening sockets: ss's view (with owners), else /proc/net's."""
    sockets = report.get("sockets") or {}
    if sockets.get("ss"):
        return image_checks.listeners_from_ss(sockets["ss"])
    if sockets.get("proc_net"):
        return image_checks.listeners_from_proc_net(sockets["proc_net"])
    # an image from before the raw tables: its own "proto:port" list
    old = (key.split(":", 1) for key in report["listening"])
    return [image_checks.Listener(proto, "?", int(port)) for proto, port in old]


def check_report(
    report: dict[str, Any], watchdog: dict[str, Any] | None, greeter_late: dict[str, Any] | None
) -> list[Check]:
    """What the running image says, against what the design wants."""
    checks: list[Check] = []
    units = report["units"]
    agent = units["sdbox-agent.service"]
    checks.append(Check("boot reached multi-user (report unit ran after multi-user.target)", True,
                        f"system state: {report.get('system_state')}"))  # fmt: skip
    checks.append(Check("root is the dm-verity squashfs, read-only",
                        report["root"].get("source") == "/dev/mapper/root"
                        and report["root"].get("fstype") == "squashfs"
                        and report["root"].get("options", "").startswith("ro"),
                        json.dumps(report["root"])))  # fmt: skip
    checks.append(Check("Secure Boot on", report["secure_boot"] is True, str(report["secure_boot"])))
    checks.append(Check("kernel lockdown", bool(re.search(r"\[(integrity|confidentiality)\]",
                        report.get("lockdown") or "")), str(report.get("lockdown"))))  # fmt: skip
    checks.append(Check("sdbox-agent ready (Type=notify, active)",
                        agent.get("ActiveState") == "active" and agent.get("SubState") == "running",
                        f"{agent.get('ActiveState')}/{agent.get('SubState')} result={agent.get('Result')}"))  # fmt: skip
    for unit in ("sdbox-renewal-due.timer", "sdbox-crl-refresh.timer"):
        state = units[unit]
        checks.append(Check(f"{unit} active", state.get("ActiveState") == "active",
                            f"{state.get('ActiveState')}/{state.get('SubState')}"))  # fmt: skip
    greeter = units["sdbox-greeter.service"]
    late = greeter_late or {}
    # up, and still up without a restart a while later (a missing or crashing
    # greeter is a restart loop that looks "active" between two attempts)
    greeter_up = (late.get("program") is True and greeter.get("ActiveState") == "active"
                  and late.get("state") == "active" and late.get("restarts") == 0)  # fmt: skip
    checks.append(Check("sdbox-greeter (cage on tty1) running and stable",
                        greeter_up, f"{greeter.get('LoadState')} {greeter.get('UnitFileState')}, "
                        f"program present: {late.get('program')}, restarts: {late.get('restarts')}",
                        pending=not greeter_up and late.get("program") is False))  # fmt: skip
    failed = report["failed"]
    checks.append(Check("no failed units", not failed, ", ".join(report["failed"]) or "none"))
    listeners = image_listeners(report)
    unexpected = image_checks.unexpected_listeners(listeners)
    checks.append(Check("no unexpected listening socket (ss -tulpn)", not unexpected,
                        ", ".join(f"{x.key} {x.address} {x.process}".strip() for x in listeners)
                        or "none"))  # fmt: skip
    if watchdog is not None:
        checks.append(Check("a frozen agent is restarted by the watchdog",
                            bool(watchdog.get("restarted")), json.dumps(watchdog)))  # fmt: skip
    return checks


def normal_boot(image: Path, work: Path, accel: str, timeout: float, echo: bool) -> int:
    vm = Vm(work, overlay(image, work), accel)
    try:
        boot = vm.boot((END,), timeout, sys.stdout if echo else None)
    finally:
        vm.stop()
    found = boot.find(REPORT)
    if found is None:
        tail = "\n".join(line for _, line in boot.lines[-40:])
        print(f"image-test: no boot report within {timeout:.0f} s; console tail:\n{tail}")
        return 1
    when, payload = found
    report = json.loads(payload)
    wd = boot.find(WATCHDOG)
    watchdog = json.loads(wd[1]) if wd else None
    gr = boot.find(GREETER)
    checks = check_report(report, watchdog, json.loads(gr[1]) if gr else None)
    agent = report["units"]["sdbox-agent.service"]
    kernel_to_ready = int(agent.get("ActiveEnterTimestampMonotonic") or 0) / 1e6
    for check in checks:
        mark = "PENDING" if check.pending else ("ok" if check.ok else "FAIL")
        print(f"  [{mark:7}] {check.name}: {check.detail}")
    if gr:
        for line in json.loads(gr[1]).get("log", []):
            print(f"    greeter: {line}")
    print(f"accel: {accel} (QEMU {'KVM' if accel == 'kvm' else 'TCG software emulation'}, 2 vCPUs)")
    print(f"kernel-to-ready: {kernel_to_ready:.1f} s (guest monotonic clock)")
    print(f"boot-to-ready: {when - boot.started:.1f} s")
    result = {"accel": accel, "boot_to_ready_s": round(when - boot.started, 1),
              "kernel_to_ready_s": round(kernel_to_ready, 1), "report": report,
              "watchdog": watchdog,
              "checks": [c.__dict__ for c in checks]}  # fmt: skip
    (work / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0 if all(c.ok or c.pending for c in checks) else 1


def tampered_boot(image: Path, work: Path, accel: str, timeout: float) -> bool:
    """One byte of the root flipped: the agent must never run."""
    copy = private_copy(image, work, "tampered.raw")
    with copy.open("r+b") as stream:
        root = disk.find_partition(disk.read_gpt(stream), "root-a")
        # the squashfs superblock: read by every boot, at mount
        stream.seek(root.offset + 40)
        byte = stream.read(1)
        stream.seek(root.offset + 40)
        stream.write(bytes([byte[0] ^ 0x01]))
    vm = Vm(work, overlay(copy, work), accel)
    try:
        boot = vm.boot((REPORT,), timeout, None, "tampered")
    finally:
        vm.stop()
        copy.unlink()
    reached = boot.find(REPORT) is not None
    corrupt = [line for _, line in boot.lines if "verity" in line.lower() and "corrupt" in line.lower()]
    ok = not reached and bool(corrupt)
    print(f"  [{'ok' if ok else 'FAIL':7}] flipped root byte: the system never came up "
          f"({corrupt[0].strip() if corrupt else 'no dm-verity corruption on the console'})")  # fmt: skip
    return ok


def unsigned_boot(image: Path, work: Path, accel: str, timeout: float) -> bool:
    """The UKI replaced by the same, unsigned: Secure Boot must refuse it."""
    copy = private_copy(image, work, "unsigned.raw")
    unsigned = ROOT / "build" / "image" / "work" / "qemu-q35" / "sdbox-a.unsigned.efi"
    with copy.open("rb") as stream:
        esp = disk.find_partition(disk.read_gpt(stream), "esp")
    tools.run(["mcopy", "-o", "-i", f"{copy}@@{esp.offset}", unsigned, "::/EFI/Linux/sdbox-a.efi"],
              what="replacing the UKI", timeout=60,
              env={"MTOOLS_SKIP_CHECK": "1", "MTOOLSRC": "/dev/null"})  # fmt: skip
    vm = Vm(work, overlay(copy, work), accel)
    try:
        # OVMF gives up on the boot entry ("Access Denied") and on the rest
        boot = vm.boot(("Linux version", "No bootable option"), timeout, None, "unsigned")
    finally:
        vm.stop()
        copy.unlink()
    kernel_ran = boot.find("Linux version") is not None
    refused = [line for _, line in boot.lines if "sdbox-a.efi" in line and "Access Denied" in line]
    ok = not kernel_ran and bool(refused)
    print(f"  [{'ok' if ok else 'FAIL':7}] unsigned UKI refused by Secure Boot, kernel never started "
          f"({refused[0].strip() if refused else 'no refusal on the console'})")  # fmt: skip
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generation", default="qemu-q35")
    parser.add_argument("--accel", choices=["auto", "kvm", "tcg"], default="tcg",
                        help="tcg (default: what CI has), kvm, or auto")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds for one boot")
    parser.add_argument("--negative", action="store_true",
                        help="also boot a tampered root and an unsigned UKI")
    parser.add_argument("--echo", action="store_true", help="copy the console to stdout")
    args = parser.parse_args()
    image = ROOT / "build" / "image" / f"sdbox-{args.generation}.raw"
    if not image.exists():
        print(f"image-test: {image} does not exist: run `make image` first", file=sys.stderr)
        return 2
    work = ROOT / "build" / "image-test" / args.generation
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    accel = pick_accel(args.accel)
    try:
        status = normal_boot(image, work, accel, args.timeout, args.echo)
        if args.negative:
            ok = tampered_boot(image, work, accel, min(args.timeout, 300))
            ok &= unsigned_boot(image, work, accel, min(args.timeout, 120))
            status = status or (0 if ok else 1)
    except BootImageError as exc:
        print(f"image-test: {exc.message}\n{exc.detail}", file=sys.stderr)
        return 1
    print(f"image-test: {'passed' if status == 0 else 'FAILED'} (consoles: {work}/console-*.log)")
    return status


if __name__ == "__main__":
    sys.exit(main())
