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

A/B updates (``--update``, on demand: four boots of one disk and one set of EFI
variables): slot A installs a newer signed bundle into B and refuses the same
version; B, damaged before its trial boot, falls back to A; A installs it again;
B boots, confirms itself (agent ready: the default entry) and refuses the older
bundle. Bundles reach the guest (no NIC) on a second disk labelled SDBOXUPD.
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

import centre  # noqa: E402  (bootimage/centre.py: the first-boot test's broker)
import e2e_screen  # noqa: E402  (bootimage/e2e_screen.py: QMP screendumps)
import numpy as np  # noqa: E402
import tunnel_centre  # noqa: E402  (bootimage/tunnel_centre.py: gateway + broker behind a tap)

from sdbox.bootimage import checks as image_checks  # noqa: E402
from sdbox.bootimage import disk, tools  # noqa: E402
from sdbox.bootimage.errors import BootImageError  # noqa: E402
from sdbox.bootimage.slots import ImageVersion  # noqa: E402
from tests.integration.greeter_env import REFERENCES, load  # noqa: E402

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.snakeoil.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.snakeoil.fd")
REPORT = "SDBOX-BOOT-REPORT "
WATCHDOG = "SDBOX-WATCHDOG-REPORT "
GREETER = "SDBOX-GREETER-REPORT "
END = "SDBOX-BOOT-REPORT-END"
UPDATE = "SDBOX-UPDATE-REPORT "


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

    def __init__(self, work: Path, disk_image: Path, accel: str, secure_boot: bool = True,
                 keep_vars: bool = False) -> None:  # fmt: skip
        self.work = work
        self.disk_image = disk_image
        self.accel = accel
        self.secure_boot = secure_boot
        # the EFI variables survive a reboot (systemd-boot's one-shot and default entries)
        self.keep_vars = keep_vars
        self.extra_disk: Path | None = None
        self.netdev: list[str] | None = None  # a NIC (the first-boot test's centre), else none
        self.prefix: list[str] = []  # e.g. ip netns exec NAME: QEMU inside the centre's namespace
        # the box's one display (no q35 standard VGA beside it: the console and cage share it)
        self.gpu = f"virtio-gpu-pci,id={e2e_screen.GPU}"
        self.qmp: Path | None = None  # QEMU's monitor (screendumps, keys), when set
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
        if not (self.keep_vars and vars_copy.exists()):
            shutil.copy(OVMF_VARS, vars_copy)
        cpu = "host" if self.accel == "kvm" else "max"
        extra = [] if self.extra_disk is None else [
            "-drive", f"file={self.extra_disk},if=none,id=disk1,format=raw,readonly=on",
            "-device", "virtio-blk-pci,drive=disk1",
        ]  # fmt: skip
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
            "-device", self.gpu, "-vga", "none", "-display", "none",
            *(self.netdev or ["-nic", "none"]), "-serial", "stdio", "-monitor", "none", "-no-reboot",
            *(["-qmp", f"unix:{self.qmp},server=on,wait=off"] if self.qmp else []),
            *extra,
        ]  # fmt: skip

    def boot(
        self, until: tuple[str, ...], timeout: float, echo: TextIO | None, label: str = "boot"
    ) -> Boot:
        """Boot and read the console until a line contains one of ``until`` (or QEMU exits)."""
        tpm = self.start_tpm()
        argv = self.prefix + self.argv(tpm)
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
        if not until:  # until QEMU exits (the guest rebooted: -no-reboot)
            reader.join(5)
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


KVM_PROBE_SECONDS = 60.0
FIRMWARE_FIRST_OUTPUT = "BdsDxe"  # OVMF's boot manager, on the serial console


def probe_kvm(work: Path) -> str:
    """Why KVM cannot boot the firmware here, or "" when it can.

    /dev/kvm may exist and still be unable to run firmware (a paravirtual
    KVM: QEMU aborts on an MSR, or OVMF stops on an emulation failure, and
    SMM is missing): a short boot with no disk must reach OVMF's boot
    manager on the serial console.
    """
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "/dev/kvm is absent or not usable"
    vars_copy = work / "probe-OVMF_VARS.fd"
    shutil.copy(OVMF_VARS, vars_copy)
    argv = [
        "qemu-system-x86_64", "-accel", "kvm", "-machine", "q35,smm=on", "-cpu", "host",
        "-m", "512", "-global", "driver=cfi.pflash01,property=secure,value=on",
        "-drive", f"if=pflash,format=raw,unit=0,file={OVMF_CODE},readonly=on",
        "-drive", f"if=pflash,format=raw,unit=1,file={vars_copy}",
        "-display", "none", "-nic", "none", "-serial", "stdio", "-monitor", "none", "-no-reboot",
    ]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=dict(tools.BASE_ENV))  # fmt: skip
    seen: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            seen.append(raw.decode(errors="replace"))
            if FIRMWARE_FIRST_OUTPUT in seen[-1]:
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(KVM_PROBE_SECONDS)
    proc.kill()
    proc.wait()
    vars_copy.unlink(missing_ok=True)
    if any(FIRMWARE_FIRST_OUTPUT in line for line in seen):
        return ""
    said = " ".join(line.strip() for line in seen[-3:])
    return f"the firmware did not start under KVM within {KVM_PROBE_SECONDS:.0f} s" + (
        f" (QEMU: {said})" if said else ""
    )


def print_profile(report: dict[str, Any]) -> None:
    """The guest's own account of the boot (systemd's timestamps), if the image reports it."""
    profile = report.get("boot_profile") or {}
    phases = profile.get("phases") or {}
    if phases:
        print(f"  guest: initrd at {phases.get('InitRDTimestampMonotonic', 0):.1f} s, the real "
              f"root's systemd at {phases.get('UserspaceTimestampMonotonic', 0):.1f} s")  # fmt: skip
    chain = profile.get("agent_chain", [])
    if chain:
        print("  guest: what the agent waits for, by when it became active:")
        for line in chain:
            print(f"    {line}")
    slowest = profile.get("slowest", [])
    if slowest:
        print("  guest: units by time spent activating:")
        for line in slowest[:12]:
            print(f"    {line}")


def pick_accel(requested: str, work: Path) -> str:
    """KVM where it really boots the firmware, else TCG; says which and why."""
    if requested != "auto":
        print(f"accel: {requested} (asked for)")
        return requested
    why_not = probe_kvm(work)
    if why_not:
        print(f"accel: tcg (software emulation): {why_not}")
        return "tcg"
    print("accel: kvm (the firmware booted under KVM)")
    return "kvm"


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
    ab = report.get("slots") or {}
    entries = ab.get("entries") or {}
    checks.append(Check("slot a booted and confirmed (agent ready: systemd-boot's default entry)",
                        ab.get("booted") == "a" and entries.get("Default") == "sdbox-a.efi",
                        f"booted {ab.get('booted')}, entries {json.dumps(entries)}, "
                        f"confirm: {' / '.join(ab.get('confirm') or [])[-200:]}"))  # fmt: skip
    failed = report["failed"]
    checks.append(Check("no failed units", not failed, ", ".join(report["failed"]) or "none"))
    listeners = image_listeners(report)
    unexpected = image_checks.unexpected_listeners(listeners)
    checks.append(Check("no unexpected listening socket (ss -tulpn)", not unexpected,
                        ", ".join(f"{x.key} {x.address} {x.process}".strip() for x in listeners)
                        or "none"))  # fmt: skip
    checks.append(audit_check(report.get("audit") or []))
    if watchdog is not None:
        checks.append(Check("a frozen agent is restarted by the watchdog",
                            bool(watchdog.get("restarted")), json.dumps(watchdog)))  # fmt: skip
        checks.append(Check("the restarted agent's audit trail starts again (agent_started)",
                            "agent_started" in (watchdog.get("new_events") or []),
                            f"pid {watchdog.get('new_pid')}: {watchdog.get('new_events')}"))  # fmt: skip
    return checks


def audit_check(events: list[dict[str, Any]]) -> Check:
    """The agent's audit events reach journald as structured fields (docs/agent.md)."""
    started = [e for e in events if e.get("SDBOX_EVENT") == "agent_started"]
    checked = [e for e in events if e.get("SDBOX_EVENT") == "box_identity_checked"]
    ok = (len(started) == 1 and started[0].get("SDBOX_PROVIDER") == "broker"
          and started[0].get("SDBOX_IDENTITY") == "tpm" and bool(started[0].get("SDBOX_VERSION"))
          and len(checked) == 1 and checked[0].get("SDBOX_OUTCOME") == "ok"
          and checked[0].get("SDBOX_BOX") == f"sdbox box {centre.BOX_ID}"
          and bool(checked[0].get("SDBOX_VALID_UNTIL")))  # fmt: skip
    shown = "; ".join(
        " ".join(f"{k.removeprefix('SDBOX_').lower()}={v}" for k, v in e.items() if k != "_PID")
        for e in events
    )
    return Check("audit events reach the journal with their fields (agent_started, "
                 "box_identity_checked ok)", ok, shown or "no audit event in the journal")  # fmt: skip


def print_checks(checks: list[Check]) -> None:
    for check in checks:
        mark = "PENDING" if check.pending else ("ok" if check.ok else "FAIL")
        print(f"  [{mark:7}] {check.name}: {check.detail}")


def print_tunnel(report: dict[str, Any]) -> None:
    """The tunnel's figures from the guest (its monotonic clock, as the agent's)."""
    state = (report.get("tunnel") or {}).get("state") or {}
    agent = (report.get("units") or {}).get("sdbox-agent.service") or {}
    ready = int(agent.get("ActiveEnterTimestampMonotonic") or 0) / 1e6
    if state.get("first_up_monotonic_s"):
        print(f"tunnel: up through {state.get('first_up_gateway')} ({state.get('gateway_identity')}) "
              f"at {state['first_up_monotonic_s']:.1f} s, {state.get('first_up_after_s')} s after "
              f"sdbox-tunnel started; agent ready at {ready:.1f} s; inner address "
              f"{state.get('inner_address')}")  # fmt: skip
    else:
        print(f"tunnel: not up ({state.get('description') or 'no state recorded'})")


def timeline(report: dict[str, Any], report_after_s: float) -> tuple[float, float]:
    """Firmware + loader time and boot-to-ready (QEMU start to the agent's READY), in s.

    The report line's arrival on the host, less the guest's uptime when it was
    printed, is when the kernel started; the agent's ActiveEnterTimestamp is on
    the guest's monotonic clock, which starts with the kernel.
    """
    agent = (report.get("units") or {}).get("sdbox-agent.service") or {}
    kernel_to_ready = int(agent.get("ActiveEnterTimestampMonotonic") or 0) / 1e6
    printed = float(report.get("uptime_at_print_s") or report.get("uptime_s") or 0.0)
    before_kernel = max(0.0, report_after_s - printed)
    return before_kernel, before_kernel + kernel_to_ready


def greeter_screen(vm: Vm, keep: Path, timeout_s: float = 120.0) -> Check:
    """The box's display shows the greeter (a QMP screendump): most of the screen is the
    greeter's background colour, as on its host-rendered start screen; a black screen (cage
    without a client), the kernel console or the firmware's are not."""
    assert vm.qmp is not None
    reference = load(REFERENCES / "insert-card.png")
    background = e2e_screen.dominant(reference)[0]
    qmp = e2e_screen.Qmp(vm.qmp)
    started = time.monotonic()
    try:
        while True:
            pixels = qmp.screendump(vm.work / "greeter.ppm")
            colour, share = e2e_screen.dominant(pixels)
            ok = share > 0.5 and int(np.abs(colour.astype(int) - background.astype(int)).max()) <= 8
            if ok or time.monotonic() - started > timeout_s:
                break
            time.sleep(2)
    finally:
        qmp.close()
    e2e_screen.save_png(pixels, keep)
    height, width, _ = pixels.shape
    return Check("the greeter is on the box's display (QMP screendump: its background, not a black "
                 "screen or the console)", ok,
                 f"{width}x{height}, {share:.0%} of it {tuple(int(c) for c in colour)}, the greeter's "
                 f"background {tuple(int(c) for c in background)}; screenshot {keep}")  # fmt: skip


def first_boot(boot: Boot, work: Path, accel: str, timeout: float) -> tuple[int, dict[str, Any]]:
    """The checks of the first boot's report (the image's own, before the identity's)."""
    found = boot.find(REPORT)
    if found is None:
        tail = "\n".join(line for _, line in boot.lines[-40:])
        print(f"image-test: no boot report within {timeout:.0f} s; console tail:\n{tail}")
        return 1, {}
    when, payload = found
    report = json.loads(payload)
    wd = boot.find(WATCHDOG)
    watchdog = json.loads(wd[1]) if wd else None
    gr = boot.find(GREETER)
    checks = check_report(report, watchdog, json.loads(gr[1]) if gr else None)
    agent = report["units"]["sdbox-agent.service"]
    kernel_to_ready = int(agent.get("ActiveEnterTimestampMonotonic") or 0) / 1e6
    print_checks(checks)
    if gr:
        for line in json.loads(gr[1]).get("log", []):
            print(f"    greeter: {line}")
    print(f"accel: {accel} (QEMU {'KVM' if accel == 'kvm' else 'TCG software emulation'}, 2 vCPUs)")
    before_kernel, ready = timeline(report, when - boot.started)
    print(f"firmware + loader: {before_kernel:.1f} s; kernel-to-ready: {kernel_to_ready:.1f} s "
          "(guest monotonic clock)")  # fmt: skip
    print_profile(report)
    print(f"boot report after: {when - boot.started:.1f} s (its checks take a while)")
    print(f"boot-to-ready: {ready:.1f} s")
    result = {"accel": accel, "boot_to_ready_s": round(ready, 1),
              "firmware_s": round(before_kernel, 1),
              "boot_to_report_s": round(when - boot.started, 1),
              "kernel_to_ready_s": round(kernel_to_ready, 1), "report": report,
              "watchdog": watchdog,
              "checks": [c.__dict__ for c in checks]}  # fmt: skip
    (work / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    return (0 if all(c.ok or c.pending for c in checks) else 1), report


def identity_checks(
    report: dict[str, Any], pki: Any, *, connections: int, token_left: bool, registered: bool,
    second: bool,
) -> tuple[list[Check], Any]:
    """The box identity as one boot's report shows it (see bootimage/centre.py)."""
    ident = report.get("identity") or {}
    unit = (report.get("units") or {}).get("sdbox-enrol.service", {})
    said = " / ".join(ident.get("enrol_journal") or [])[-300:]
    cert = centre.judge_certificate(ident.get("certificate"), pki)
    check_lines = ident.get("check") or []
    agent_said = ident.get("agent_said") or []
    tpm_key = (ident.get("check_exit") == 0
               and any(line.startswith("key in TPM:") and "yes" in line for line in check_lines)
               and any(line.startswith("extractable:") and " no " in line for line in check_lines)
               and any(line.startswith("matches cert:") and "yes" in line for line in check_lines))  # fmt: skip
    which = "second boot" if second else "first boot"
    checks = [
        Check(f"{which}: sdbox-enrol.service succeeded before the agent",
              unit.get("ActiveState") == "active" and unit.get("Result") == "success",
              f"{unit.get('ActiveState')}/{unit.get('SubState')} result={unit.get('Result')}: {said}"),
        Check(f"{which}: the box certificate validates under the box-identity CA (Purpose.BOX)",
              cert.valid and cert.box_id == centre.BOX_ID, cert.detail),
        Check(f"{which}: it certifies a TPM-resident, never-extractable key (sdbox identity check)",
              tpm_key, " | ".join(check_lines)),
        Check(f"{which}: the agent signs with it from inside its sandbox (PrivateDevices=)",
              any("box identity:" in line and "TPM key signs and matches its certificate" in line
                  for line in agent_said),
              " / ".join(agent_said) or "the agent said nothing of its box identity"),
    ]  # fmt: skip
    if second:
        checks.append(Check("second boot: nothing spent, the centre not contacted",
                            connections == 0 and registered
                            and any("the box is enrolled" in line
                                    for line in ident.get("enrol_journal") or []),
                            f"{connections} connection(s) to the centre; {said}"))  # fmt: skip
        # the enrolled box's shortcut: a shell reads the marker of the finished enrolment,
        # no Python and no TPM before the agent (rootfs/usr/libexec/sdbox/enrol-if-needed)
        checks.append(Check("second boot: sdbox-enrol had nothing to do (no Python, no TPM)",
                            any("nothing to do at this boot" in line
                                for line in ident.get("enrol_journal") or []), said))  # fmt: skip
    else:
        checks.append(Check("first boot: the token is spent at the centre and gone from the box",
                            registered and not token_left and connections >= 1,
                            f"register: used={registered}; config area holds the token: "
                            f"{token_left}; {connections} connection(s) to the centre"))  # fmt: skip
    return checks, cert


def data_checks(report: dict[str, Any], *, second: bool) -> list[Check]:
    """/var on the LUKS2 volume sealed to the TPM (bootimage/rootfs/usr/libexec/sdbox/data-init)."""
    data = report.get("data_partition") or {}
    var, mapping = data.get("var") or {}, data.get("mapping") or {}
    header = data.get("header") or {}
    tokens = list((header.get("tokens") or {}).values())
    tpm2 = [t for t in tokens if t.get("type") == "systemd-tpm2"]
    keyslots = header.get("keyslots") or {}
    said = " / ".join(data.get("init_journal") or [])[-240:]
    unit = data.get("cryptsetup_unit") or {}
    which = "second boot" if second else "first boot"
    checks = [
        Check(f"{which}: /var is ext4 on the dm-crypt LUKS2 mapping sdbox-data",
              var.get("source") == "/dev/mapper/sdbox-data" and var.get("fstype") == "ext4"
              and str(mapping.get("uuid", "")).startswith("CRYPT-LUKS2-"),
              f"{json.dumps(var)} {mapping.get('uuid', 'no mapping')}"),
        Check(f"{which}: the only keyslot is the TPM2 token's (PCR 7), opened without a prompt",
              len(tpm2) == 1 and tpm2[0].get("tpm2-pcrs") == [7] and len(keyslots) == 1
              and tpm2[0].get("keyslots") == list(keyslots) and unit.get("ActiveState") == "active",
              f"keyslots {json.dumps(keyslots)}, tokens {json.dumps(tokens)}, "
              f"systemd-cryptsetup@sdbox-data: {unit.get('ActiveState')}; {said}"),
    ]  # fmt: skip
    if second:
        checks.append(Check("second boot: the first boot's journal is readable from the sealed /var",
                            data.get("journal_boots") == 2
                            and any("nothing to do" in line for line in data.get("init_journal") or []),
                            f"journal boots: {data.get('journal_boots')}; {said}"))  # fmt: skip
    else:
        checks.append(Check("first boot: the data partition was formatted and sealed at this boot",
                            any("first boot: formatting" in line for line in data.get("init_journal") or []),
                            said))  # fmt: skip
    return checks


def tunnel_checks(report: dict[str, Any], ctr: tunnel_centre.TunnelCentre, which: str) -> list[Check]:
    """The boot-time tunnel as the report and the gateway see it (bootimage/tunnel_centre.py)."""
    return [Check(name, ok, detail)
            for name, ok, detail in tunnel_centre.tunnel_checks(report, ctr, centre.BOX_ID, which)]  # fmt: skip


def enrolment_scenario(image: Path, work: Path, accel: str, timeout: float, echo: bool) -> int:
    """First boot enrols outside the tunnel and brings the tunnel up; a second boot finds it
    enrolled and brings the tunnel up again (the centre behind a tap device in a namespace)."""
    figures = json.loads(image.with_suffix(".json").read_text())
    broker_url = str(figures.get("broker_url") or "")
    why_not = tunnel_centre.missing()
    if why_not:
        print(f"image-test: the centre behind a tap device cannot run here: {why_not}")
        return 1
    ctr = tunnel_centre.start(work / "centre", image.parent / "pki")
    vm: Vm | None = None
    checks: list[Check] = []
    try:
        flashed = centre.flash_with_token(image, work, figures["generation"], ctr,
                                          site=tunnel_centre.SITE.encode())  # fmt: skip
        with flashed.open("rb") as stream:
            area = disk.find_partition(disk.read_gpt(stream), disk.CONFIG_PARTITION)
        flashed_id = disk.ConfigArea(flashed, area).read(disk.MACHINE_ID_FILE).decode().strip()
        print(f"first boot: a one-time token for {centre.BOX_ID} and the site profile in the config "
              f"area; namespace {ctr.name}: gateway {tunnel_centre.GATEWAY_ID} on "
              f"{tunnel_centre.GATEWAY}, enrolment at {tunnel_centre.ENROLMENT}:"
              f"{tunnel_centre.BROKER_PORT}, the broker {broker_url} behind the tunnel")  # fmt: skip
        vm = Vm(work, overlay(flashed, work), accel, keep_vars=True)
        vm.netdev = ctr.netdev()
        vm.prefix = ctr.qemu_prefix()
        vm.qmp = work / "qmp.sock"
        boot = vm.boot((END,), timeout, sys.stdout if echo else None, "first")
        screen = greeter_screen(vm, work / "greeter.png") if boot.find(END) else None
        vm.stop()
        status, report = first_boot(boot, work, accel, timeout)
        if not report:
            print(f"gateway log:\n{ctr.gateway_log()}")
            return 1
        token_left = disk.TOKEN_FILE in centre.config_area_names(work / "disk.qcow2", flashed, work)
        used = [entry for entry in ctr.tokens().values() if entry.get("used")]
        checks, first_cert = identity_checks(
            report, ctr.pki, connections=ctr.connection_count(), token_left=token_left,
            registered=len(used) == 1, second=False)  # fmt: skip
        checks += data_checks(report, second=False)
        checks += tunnel_checks(report, ctr, "first boot")
        checks.append(screen or Check("the greeter is on the box's display", False,
                                      "the first boot did not get to its report's end"))  # fmt: skip
        print_checks(checks)
        print_tunnel(report)
        # the second boot: same disk, TPM and EFI variables; it stops at the report
        before = ctr.connection_count()
        started = time.monotonic()
        boot = vm.boot((REPORT,), timeout, sys.stdout if echo else None, "second")
        vm.stop()
        second = report_of(boot, REPORT)
        if second is None:
            print(f"  [FAIL   ] second boot: no boot report within {timeout:.0f} s")
            return 1
        used_again = [entry for entry in ctr.tokens().values() if entry.get("used")]
        more, cert = identity_checks(
            second, ctr.pki, connections=ctr.connection_count() - before,
            registered=used_again == used, token_left=False, second=True)  # fmt: skip
        more += data_checks(second, second=True)
        more += tunnel_checks(second, ctr, "second boot")
        first_id = (report.get("data_partition") or {}).get("machine_id")
        second_id = (second.get("data_partition") or {}).get("machine_id")
        more.append(Check("both boots: the machine ID is the one flashed into the config area",
                          first_id == flashed_id == second_id,
                          f"flashed {flashed_id}, first boot {first_id}, second boot {second_id}"))  # fmt: skip
        more.append(Check("second boot: the same certificate as the first",
                          cert.serial == first_cert.serial and cert.valid, f"serial {cert.serial:x}"))
        more.append(Check("second boot: no failed units", not second["failed"],
                          ", ".join(second["failed"]) or "none"))  # fmt: skip
        print_checks(more)
        print_tunnel(second)
        arrived = boot.find(REPORT)
        _, second_ready = timeline(second, (arrived[0] if arrived else boot.started) - boot.started)
        print(f"second boot: report after {time.monotonic() - started:.1f} s; "
              f"boot-to-ready {second_ready:.1f} s")  # fmt: skip
        print_profile(second)
        result_file = work / "result.json"
        if result_file.exists():
            result = json.loads(result_file.read_text())
            result["second_boot_to_ready_s"] = round(second_ready, 1)
            result_file.write_text(json.dumps(result, indent=2) + "\n")
        checks += more
        (work / "identity-result.json").write_text(
            json.dumps([c.__dict__ for c in checks], indent=2) + "\n")
        return status or (0 if all(c.ok for c in checks) else 1)
    finally:
        if vm is not None:
            vm.stop()
        if any(not c.ok for c in checks):
            print(f"gateway log:\n{ctr.gateway_log()}")
        ctr.stop()
        centre.cleanup(work)


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


def no_test_hooks(image: Path, work: Path) -> Check:
    """The image has no way to turn on libfprint's virtual sensor or make image-e2e's relay.

    Read from the image's own root (slot a's squashfs, on the disk as built):
    no e2e relay unit or program, no unit or drop-in that sets FP_VIRTUAL_*.
    """
    with image.open("rb") as stream:
        root = disk.find_partition(disk.read_gpt(stream), "root-a")
    target = work / "root-extract"
    shutil.rmtree(target, ignore_errors=True)
    wanted = [*image_checks.UNIT_DIRS, "etc/sdbox", "etc/environment", "usr/libexec/sdbox"]
    # unsquashfs exits 2 for paths a root lacks (etc/environment, lib/...): the listing decides
    subprocess.run(["unsquashfs", "-q", "-n", "-no-xattrs", "-o", str(root.offset), "-d", str(target),
                    str(image), *wanted],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300, check=False)  # fmt: skip
    if not (target / "usr/lib/systemd/system").is_dir():
        return Check("production image: no e2e relay, no FP_VIRTUAL_* setting", False,
                     "the root's unit directories could not be read from the image")  # fmt: skip
    found = image_checks.test_build_hooks(target)
    shutil.rmtree(target, ignore_errors=True)
    return Check("production image: no e2e relay, no FP_VIRTUAL_* setting (libfprint's virtual "
                 "sensor cannot be turned on)", not found, "; ".join(found) or "none found")  # fmt: skip


def update_disk(work: Path, name: str, bundles: dict[str, Path]) -> Path:
    """An ext4 disk labelled SDBOXUPD holding ``bundles`` (name on the disk -> file).
    Not FAT: its boot sector looks like a partition table to the kernel."""
    image = work / f"{name}.img"
    image.unlink(missing_ok=True)
    source = work / f"{name}.d"
    shutil.rmtree(source, ignore_errors=True)
    source.mkdir()
    for target, bundle_file in bundles.items():
        os.link(bundle_file, source / target)  # same file system (build/): no copy
    size = sum(b.stat().st_size for b in bundles.values()) + 128 * 2**20
    tools.run(["mkfs.ext4", "-q", "-L", "SDBOXUPD", "-d", source, image, f"{-(-size // 2**20)}M"],
              what="making the update disk", timeout=300)  # fmt: skip
    shutil.rmtree(source)
    return image


def image_version(generation: str) -> str:
    figures = json.loads((ROOT / "build" / "image" / f"sdbox-{generation}.json").read_text())
    return str(figures["version"])


def find_bundles(generation: str) -> tuple[Path, Path, str, str]:
    """The bundle of the image's own version and the newest newer one."""
    current = image_version(generation)
    found: dict[str, Path] = {}
    for path in (ROOT / "build" / "image").glob(f"sdbox-{generation}-*.raucb"):
        found[path.name[len(f"sdbox-{generation}-") : -len(".raucb")]] = path
    same = found.get(current)
    newer = sorted((v for v in found if ImageVersion.parse(v) > ImageVersion.parse(current)),
                   key=ImageVersion.parse)  # fmt: skip
    if same is None or not newer:
        raise BootImageError(
            f"the update test needs build/image/sdbox-{generation}-{current}.raucb (the image's "
            "version: `make image IMAGE_ARGS=--bundle`) and a newer bundle (`make update-bundle`); "
            f"found: {', '.join(sorted(found)) or 'none'}"
        )
    return same, found[newer[-1]], current, newer[-1]


def damage_slot(overlay_disk: Path, base: Path, partition: str) -> None:
    """Change the first 4 KiB of a slot in the overlay (the squashfs superblock)."""
    with base.open("rb") as stream:
        part = disk.find_partition(disk.read_gpt(stream), partition)
    tools.run(["qemu-io", "-f", "qcow2", "-c", f"write -P 0xa5 {part.offset} 4096", overlay_disk],
              what=f"damaging {partition}", timeout=60)  # fmt: skip


def report_of(boot: Boot, prefix: str) -> dict[str, Any] | None:
    found = boot.find(prefix)
    return json.loads(found[1]) if found else None


def update_results(boot: Boot) -> dict[str, dict[str, Any]]:
    report = report_of(boot, UPDATE) or {}
    return {r["bundle"]: r for r in report.get("results", [])}


def update_scenario(image: Path, work: Path, accel: str, timeout: float, echo: bool) -> int:
    """Install, refuse, fall back, install again, run the new version (module docstring)."""
    generation = image.stem.removeprefix("sdbox-")
    same, newer, v_old, v_new = find_bundles(generation)
    print(f"update: image {v_old}; bundles {same.name} (same), {newer.name} (newer)")
    started = time.monotonic()
    vm = Vm(work, overlay(image, work), accel, keep_vars=True)
    checks: list[Check] = []
    out = sys.stdout if echo else None

    def slot_report(boot: Boot) -> dict[str, Any]:
        report = report_of(boot, REPORT) or {}
        return {"booted": (report.get("slots") or {}).get("booted"), "version": report.get("version"),
                "agent": (report.get("units") or {}).get("sdbox-agent.service", {}).get("ActiveState"),
                "entries": (report.get("slots") or {}).get("entries"),
                "confirm": (report.get("slots") or {}).get("confirm")}  # fmt: skip

    def output(result: dict[str, Any] | None) -> str:
        lines = (result or {}).get("output", []) + (result or {}).get("journal", [])
        said = [line for line in lines if "sdbox:" in line or "rror" in line]
        return " | ".join(said or lines)[-400:]

    try:
        # 1. slot A (flashed): the same version refused, the newer one installed into B
        vm.extra_disk = update_disk(work, "update-1", {"1-same.raucb": same, "2-newer.raucb": newer})
        boot = vm.boot((), timeout, out, "update-1")
        vm.stop()
        seen, results = slot_report(boot), update_results(boot)
        checks.append(Check("boot 1 runs slot a, the flashed version",
                            seen["booted"] == "a" and seen["version"] == v_old, json.dumps(seen)))  # fmt: skip
        refused = results.get("1-same.raucb")
        checks.append(Check("a bundle of the running version is refused",
                            refused is not None and refused["exit"] != 0
                            and "already running" in output(refused), output(refused)))  # fmt: skip
        installed = results.get("2-newer.raucb")
        checks.append(Check(f"the newer bundle ({v_new}) installs into slot b",
                            installed is not None and installed["exit"] == 0, output(installed)))  # fmt: skip
        # 2. slot B damaged before its trial boot: dm-verity stops it, nothing runs
        damage_slot(work / "disk.qcow2", image, "root-b")
        vm.extra_disk = None
        boot = vm.boot((), min(timeout, 400), out, "update-2")
        vm.stop()
        tried_b = any("rauc.slot=b" in line for _, line in boot.lines)
        corrupt = [line for _, line in boot.lines if "verity" in line.lower() and "corrupt" in line.lower()]
        checks.append(Check("boot 2 tries slot b once (one-shot entry); the damaged root never runs",
                            tried_b and report_of(boot, REPORT) is None and bool(corrupt),
                            corrupt[0].strip() if corrupt else f"tried b: {tried_b}"))  # fmt: skip
        # 3. the firmware comes back to A (the default entry); A installs the bundle again
        vm.extra_disk = update_disk(work, "update-3", {"2-newer.raucb": newer})
        boot = vm.boot((), timeout, out, "update-3")
        vm.stop()
        seen, results = slot_report(boot), update_results(boot)
        checks.append(Check("boot 3 falls back to slot a, the previous version",
                            seen["booted"] == "a" and seen["version"] == v_old
                            and any("trial boot of slot b failed" in c for c in seen["confirm"] or []),
                            json.dumps(seen)))  # fmt: skip
        again = results.get("2-newer.raucb")
        checks.append(Check("slot a installs the newer bundle into b again",
                            again is not None and again["exit"] == 0, output(again)))  # fmt: skip
        # 4. slot B runs the new version, confirms itself, refuses the older bundle
        vm.extra_disk = update_disk(work, "update-4", {"3-older.raucb": same})
        boot = vm.boot((UPDATE,), timeout, out, "update-4")
        vm.stop()
        seen, results = slot_report(boot), update_results(boot)
        checks.append(Check(f"boot 4 runs slot b, version {v_new}, agent ready",
                            seen["booted"] == "b" and seen["version"] == v_new
                            and seen["agent"] == "active", json.dumps(seen)))  # fmt: skip
        checks.append(Check("slot b confirmed itself: systemd-boot's default entry",
                            (seen["entries"] or {}).get("Default") == "sdbox-b.efi",
                            json.dumps(seen["entries"])))  # fmt: skip
        older = results.get("3-older.raucb")
        checks.append(Check(f"the older bundle ({v_old}) is refused on {v_new}",
                            older is not None and older["exit"] != 0
                            and "refusing a downgrade" in output(older), output(older)))  # fmt: skip
    finally:
        vm.stop()
    for check in checks:
        print(f"  [{'ok' if check.ok else 'FAIL':7}] {check.name}: {check.detail}")
    print(f"update scenario: {time.monotonic() - started:.0f} s (four boots, {accel})")
    (work / "update-result.json").write_text(json.dumps([c.__dict__ for c in checks], indent=2) + "\n")
    return 0 if checks and all(c.ok for c in checks) else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generation", default="qemu-q35")
    parser.add_argument("--accel", choices=["auto", "kvm", "tcg"], default="auto",
                        help="auto (default: KVM if it boots the firmware here, else TCG), kvm, tcg")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds for one boot")
    parser.add_argument("--negative", action="store_true",
                        help="also boot a tampered root and an unsigned UKI")
    parser.add_argument("--echo", action="store_true", help="copy the console to stdout")
    parser.add_argument("--update", action="store_true",
                        help="only the A/B update scenario (four boots; needs two bundles)")
    args = parser.parse_args()
    image = ROOT / "build" / "image" / f"sdbox-{args.generation}.raw"
    if not image.exists():
        print(f"image-test: {image} does not exist: run `make image` first", file=sys.stderr)
        return 2
    work = ROOT / "build" / "image-test" / (args.generation + ("-update" if args.update else ""))
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    accel = pick_accel(args.accel, work)
    try:
        if args.update:
            status = update_scenario(image, work, accel, args.timeout, args.echo)
            print(f"image-update-test: {'passed' if status == 0 else 'FAILED'} "
                  f"(consoles: {work}/console-update-*.log)")  # fmt: skip
            return status
        hooks = no_test_hooks(image, work)
        print_checks([hooks])
        status = enrolment_scenario(image, work, accel, args.timeout, args.echo)
        status = status or (0 if hooks.ok else 1)
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
