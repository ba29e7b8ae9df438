"""make image: a Debian 12 appliance image for one box generation.

mmdebstrap builds the root from Debian's archive (bookworm + backports for
FreeRDP 3) with the sdbox package installed; the root becomes a squashfs
sealed by dm-verity; the kernel, initramfs and a command line naming the
verity root hash become one UKI (systemd's EFI stub), signed for Secure Boot
together with systemd-boot; everything is laid out on a GPT disk with two
root slots, a config area and a data partition. Why this pipeline and not
mkosi, and what is not done yet: docs/image.md.

    python bootimage/build.py [--generation qemu-q35] [--out build/image]

Secure Boot keys: SDBOX_SB_KEY / SDBOX_SB_CERT from the environment (a real
build's), else OVMF's published snakeoil key (CI and QEMU only).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402

from sdbox import __version__  # noqa: E402
from sdbox.bootimage import bundle, checks, disk, generations, pe, tools  # noqa: E402
from sdbox.bootimage.errors import BootImageError  # noqa: E402

MIB = 2**20
SUITE = "bookworm"
MIRRORS = [
    "deb http://deb.debian.org/debian bookworm main non-free-firmware",
    "deb http://deb.debian.org/debian bookworm-updates main non-free-firmware",
    "deb http://deb.debian.org/debian-security bookworm-security main non-free-firmware",
    "deb http://deb.debian.org/debian bookworm-backports main",
]
# What the box runs. Recommends stay off: every package here is chosen.
PACKAGES = [
    "systemd", "systemd-sysv", "udev", "dbus", "libpam-systemd", "kmod",
    "linux-image-amd64", "initramfs-tools", "cryptsetup-bin", "zstd",
    "e2fsprogs",  # mkfs.ext4: the first boot makes /var inside the LUKS2 data partition
    "intel-microcode", "amd64-microcode",
    "pcscd", "libccid", "opensc", "opensc-pkcs11",
    "tpm-udev", "libtpm2-pkcs11-1",
    # polkitd: logind asks it whether cage (the greeter's user) may activate its session
    # (libseat calls Session.Activate and gives up without it); rootfs's rules allow that
    # one action to that one user and refuse every other to the box's service users
    "polkitd",
    "cage", "xwayland", "python3", "python3-gi", "gir1.2-gtk-4.0", "fonts-dejavu-core",
    "freerdp3-sdl", "virt-viewer",
    "chrony", "ca-certificates",
    "iproute2",  # ss: the boot test lists listening sockets with their owners
    # A/B updates: RAUC (its D-Bus service installs bundles), bootctl is systemd's
    "rauc", "rauc-service",
]  # fmt: skip
# The boot-time tunnel (docs/tunnel.md, "At boot"): charon-systemd and VICI (swanctl's
# package holds the vici plugin), the openssl plugin (standard), pkcs11 (extra),
# error-notify (charon extra), p11-kit's server and client module, nftables.
TUNNEL_PACKAGES = [
    "charon-systemd", "strongswan-swanctl", "libstrongswan-standard-plugins",
    "libstrongswan-extra-plugins", "libcharon-extra-plugins", "p11-kit", "p11-kit-modules",
    "nftables",
]  # fmt: skip
# sdbox's own units for it (bootimage/rootfs/usr/lib/systemd/system); each is skipped
# by its condition on a box without a site profile
TUNNEL_UNITS = [
    "sdbox-site.service", "sdbox-time-floor.service", "sdbox-p11-kit.service",
    "sdbox-charon.service", "sdbox-tunnel.service",
]  # fmt: skip
# Debian's own: charon with /etc/swanctl (sdbox runs its own), and nftables.service,
# whose /etc/nftables.conf starts with "flush ruleset" (it would drop sdbox's firewall)
TUNNEL_MASKED = ["strongswan.service", "strongswan-starter.service", "nftables.service"]
# an image sensor through libfprint (its NBIS mindtct extracts the minutiae); python3-gi is above
LIBFPRINT_PACKAGES = ["libfprint-2-2", "gir1.2-fprint-2.0"]
# Leaner root (issue 26, docs/image.md "Leaner"): mmdebstrap lays out the merged /usr itself
# (its merged-usr hook, as debootstrap does) and usr-is-merged meets init-system-helpers'
# `usrmerge | usr-is-merged`: without the hook apt takes usrmerge, which converts the tree at
# install time and brings perl (about 45 MB) that nothing on the box runs.
LEAN_MMDEBSTRAP_OPTIONS = ["--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr"]
LEAN_PACKAGES = ["usr-is-merged"]
# Files of installed packages the box never uses; `make image` refuses a root where a kept
# program or library links to one of them (checks.missing_shared_libraries).
LEAN_DPKG_OPTIONS = [
    "path-include=/usr/share/locale/de/*",  # the greeter speaks en, fr and de
    # development files and static libraries
    "path-exclude=/usr/include/*",
    "path-exclude=/usr/lib/x86_64-linux-gnu/*.a",
    "path-exclude=/usr/lib/x86_64-linux-gnu/pkgconfig/*",
    "path-exclude=/usr/share/pkgconfig/*",
    "path-exclude=/usr/share/aclocal/*",
    "path-exclude=/usr/share/gir-1.0/*",  # GObject introspection's sources; the typelibs stay
    "path-exclude=/usr/share/gtk-doc/*",
    "path-exclude=/usr/share/help/*",  # desktop help (virt-viewer's), shown by nothing here
    "path-exclude=/usr/share/lintian/*",
    "path-exclude=/usr/share/bug/*",
    # Intel Media SDK's hardware library and plugins (libavcodec's QSV path, behind its
    # dispatcher's dlopen): FreeRDP decodes with libavcodec's software decoders
    "path-exclude=/usr/lib/x86_64-linux-gnu/libmfxhw64.so*",
    "path-exclude=/usr/lib/x86_64-linux-gnu/mfx/*",
    # tc's ATM queueing plugin: its libatm is a Recommends, not installed
    "path-exclude=/usr/lib/x86_64-linux-gnu/tc/q_atm.so",
]
# Mesa's DRI drivers and the LLVM (and z3) they alone need, about 160 MB installed: out
# unless the generation renders with its GPU ([display] gpu_rendering). cage then draws with
# wlroots' pixman renderer, GTK 4 with cairo, Xwayland without glamor, SDL and GTK 3
# clients with their software paths; libEGL/libGL/libgbm stay (linked), finding no driver.
GPU_STACK_EXCLUDES = [
    "path-exclude=/usr/lib/x86_64-linux-gnu/dri/*",
    "path-exclude=/usr/lib/x86_64-linux-gnu/libLLVM-15.so*",
    "path-exclude=/usr/lib/x86_64-linux-gnu/libz3.so*",
    "path-exclude=/usr/share/drirc.d/*",
]
SOFTWARE_RENDERING_DROPIN = """\
# written by bootimage/build.py: this generation renders without its GPU ([display]
# gpu_rendering = false) and the image has no Mesa DRI driver (docs/image.md "Leaner")
[Service]
Environment=WLR_RENDERER=pixman GSK_RENDERER=cairo
"""
# Early microcode goes into the initramfs (its hooks read these at build time); the kernel
# has no late loading (CONFIG_MICROCODE_LATE_LOADING unset), so the root's copy is never read.
PRUNED_AFTER_INITRAMFS = ["usr/lib/firmware/intel-ucode", "usr/lib/firmware/amd-ucode"]
# dpkg drops documentation and foreign translations (the greeter speaks fr and en)
DPKG_OPTIONS = [
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/fr/*",
    "path-include=/usr/share/locale/en*",
    # Kernel modules no box generation uses: cameras and TV tuners, server HBAs and
    # InfiniBand, SCSI targets, industrial I/O, flash chips, CAN buses, cluster and
    # network file systems, USB gadget roles. About 120 of the kernel's 384 MB;
    # `make image` refuses a root where a kept module needs a left-out one
    # (checks.missing_module_dependencies), so this list cannot break a driver quietly.
    *(f"path-exclude=/lib/modules/*/kernel/{tree}" for tree in (
        "drivers/media/*", "drivers/infiniband/*", "drivers/iio/*", "drivers/staging/*",
        "drivers/comedi/*", "drivers/isdn/*", "drivers/target/*", "drivers/mtd/*",
        "drivers/net/can/*", "drivers/scsi/*/*", "drivers/usb/gadget/*", "drivers/usb/usbip/*",
        "drivers/nvme/target/*",
        "drivers/nvme/host/nvme-rdma.ko", "drivers/net/ethernet/sfc/*", "drivers/ptp/ptp_ocp.ko",
        "drivers/block/rbd.ko", "drivers/md/md-cluster.ko", "drivers/vhost/vhost_scsi.ko",
        "drivers/xen/xen-scsiback.ko", "drivers/input/touchscreen/sur40.ko",
        "sound/pci/snd-es1968.ko", "sound/pci/snd-fm801.ko", "net/bluetooth/cmtp/*",
        "net/smc/*", "net/ceph/*", "net/rds/*", "net/tipc/*", "net/sunrpc/*", "net/9p/*",
        *(f"fs/{fs}/*" for fs in (
            "xfs", "ocfs2", "nfs", "nfsd", "nfs_common", "lockd", "btrfs", "gfs2", "f2fs", "ceph",
            "smb", "zonefs", "ubifs", "sysv", "romfs", "reiserfs", "jfs", "nilfs2", "afs",
            "orangefs", "coda", "dlm", "ufs", "hfs", "hfsplus", "minix", "omfs", "qnx4", "qnx6",
            "jffs2", "9p", "vboxsf", "erofs",
        )),
    )),
    # what i915 and amdgpu (HDMI CEC) and a few laptop drivers (industrialio) need from those trees
    "path-include=/lib/modules/*/kernel/drivers/media/cec/*",
    "path-include=/lib/modules/*/kernel/drivers/media/rc/rc-core.ko",
    "path-include=/lib/modules/*/kernel/drivers/media/mc/*",
    "path-include=/lib/modules/*/kernel/drivers/iio/industrialio.ko",
]
GPT_ESP = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
GPT_ROOT = "4f68bce3-e8cd-4db1-96e7-fbcaf984b709"  # root, x86-64 (discoverable partitions)
GPT_ROOT_VERITY = "2c7357ed-ebd2-46d9-aec1-23d437ec2bf5"
GPT_LINUX = "0fc63daf-8483-4772-8e79-3d69d8477de4"
SLOT_SIZE = 768 * MIB
VERITY_SIZE = 64 * MIB
ESP_SIZE = 192 * MIB
CONFIG_SIZE = 16 * MIB
DATA_SIZE = 256 * MIB
# hardening arguments every generation gets (the profile adds its own)
KERNEL_ARGS = [
    "ro", "rootfstype=squashfs", "root=/dev/mapper/root",
    "lockdown=integrity", "module.sig_enforce=1",
    "init_on_alloc=1", "init_on_free=1", "slab_nomerge", "page_alloc.shuffle=1",
    "randomize_kstack_offset=on", "vsyscall=none", "debugfs=off", "pti=on",
    "systemd.show_status=error", "panic=10",
]  # fmt: skip
STUB = Path("/usr/lib/systemd/boot/efi/linuxx64.efi.stub")
BOOT_EFI = Path("/usr/lib/systemd/boot/efi/systemd-bootx64.efi")
SNAKEOIL_KEY = Path("/usr/share/ovmf/PkKek-1-snakeoil.key")
SNAKEOIL_CERT = Path("/usr/share/ovmf/PkKek-1-snakeoil.pem")
# The centre the box enrols with at first boot and asks for session credentials:
# SDBOX_BROKER_URL in a real build's environment; otherwise the broker that
# `make image-test` runs on the host, reached from the guest through QEMU's
# user network (a guestfwd address: the guest reaches nothing else).
# With a site profile the first boot enrols at the profile's [enrolment] url
# instead, outside the tunnel, and this broker lies behind the tunnel: the
# boot test's centre namespace has it on 10.20.0.1, its tunnel network.
TEST_BROKER_URL = "https://10.20.0.1:8443"
# Where sdbox-site (usr/libexec/sdbox/site-setup) puts the config area's project catalogue.
FLASHED_CATALOGUE = "/run/sdbox/site/project-catalogue.json"


@dataclass
class Build:
    """One image build: where things go and how long each step took."""

    generation: generations.Generation
    out: Path
    epoch: int
    version: str
    # make image-e2e's test build (--test-build): bootimage/rootfs-e2e/ and libfprint's
    # virtual_image sensor fed from the host; never a production image
    test_build: bool = False
    # the centre's fleet service (--fleet-url / SDBOX_FLEET_URL); '' : no fleet.toml, the
    # box's sdbox-fleet.service stays skipped
    fleet_url: str = ""
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def work(self) -> Path:
        return self.out / "work" / self.generation.name

    @property
    def rootdir(self) -> Path:
        return self.work / "root"

    @property
    def image(self) -> Path:
        return self.out / f"sdbox-{self.generation.name}.raw"

    @property
    def broker_url(self) -> str:
        return os.environ.get("SDBOX_BROKER_URL") or TEST_BROKER_URL

    def step(self, name: str, started: float) -> None:
        self.timings[name] = round(time.monotonic() - started, 1)
        print(f"image: {name}: {self.timings[name]:.1f} s", flush=True)


def deterministic_uuid(*parts: str) -> str:
    """A UUID that depends only on ``parts`` (stable across rebuilds)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "sdbox:" + ":".join(parts)))


def slot_partuuids(generation: str, slot: str) -> tuple[str, str]:
    """The root and verity partitions of a slot: fixed per generation, not derived from the
    root hash (systemd-repart's convention for one image), because an update rewrites
    a slot's contents but not its GPT entry; the UKI of a slot names these."""
    return (deterministic_uuid(generation, f"root-{slot}"),
            deterministic_uuid(generation, f"root-{slot}-verity"))  # fmt: skip


def find_deb() -> Path:
    debs = sorted((ROOT / "build" / "deb").glob("sdbox_*_amd64.deb"))
    if not debs:
        raise BootImageError("no sdbox package in build/deb: run `make deb` first")
    return debs[-1]


def fleet_config(build: Build, sdbox_etc: Path) -> None:
    """/etc/sdbox/fleet.toml for sdbox-fleet.service (docs/fleet.md), and the generation's plain
    name the reporter sends (the R&D view: a flashed box shows its generation at first check-in)."""
    url = build.fleet_url.rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise BootImageError(f"the fleet URL {url!r} is not http(s)://HOST[:PORT]")
    (sdbox_etc / "generation").write_text(f"{build.generation.name}\n")
    tls = 'ca_bundle = "/etc/sdbox/trust/roots.pem"\n' if url.startswith("https://") else ""
    (sdbox_etc / "fleet.toml").write_text(
        f"# sdbox fleet run on a {build.generation.name} box; written by bootimage/build.py\n"
        f'url = "{url}"\n{tls}'
        'generation_file = "/etc/sdbox/generation"\n'
        'image_version_file = "/etc/sdbox/image-version"\n'
    )


def overlay(build: Build) -> Path:
    """bootimage/rootfs plus what depends on the generation and the build."""
    target = build.work / "overlay"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(ROOT / "bootimage" / "rootfs", target, symlinks=True)
    gen = build.generation
    (target / "etc/udev/rules.d").mkdir(parents=True, exist_ok=True)
    (target / "etc/udev/rules.d/60-sdbox-generation.rules").write_text(gen.udev_rules())
    sdbox_etc = target / "etc/sdbox"
    (sdbox_etc / "trust").mkdir(parents=True, exist_ok=True)
    (sdbox_etc / "generation.toml").write_text(gen.source.read_text())
    (sdbox_etc / "image-version").write_text(f"{build.version}\n")
    build_time = datetime.fromtimestamp(build.epoch, UTC).isoformat()
    sensor_lines = f'kind = "{gen.sensor.kind}"\n'  # libfprint, emulated or none: [sensor] kinds
    if build.test_build:
        # the guest's real capture path (libfprint, NBIS mindtct) on the host's images
        shutil.copytree(ROOT / "bootimage" / "rootfs-e2e", target, symlinks=True, dirs_exist_ok=True)
        sensor_lines = ('# TEST BUILD: libfprint\'s virtual_image device (FP_VIRTUAL_IMAGE)\n'
                        'kind = "libfprint"\ndriver = "virtual_image"\nhotplug = false\n'
                        # the test centre's bubbles, behind the tunnel on the centre network
                        # (make image-e2e: bootimage/tunnel_centre.py's 10.20.0.0/16)
                        '[policy]\nallowed_endpoints = ["10.20.0.*:*"]\n')  # fmt: skip
    (sdbox_etc / "agent.toml").write_text(
        f"# sdbox agent on a {gen.name} box; written by bootimage/build.py\n"
        "[trust]\n"
        f'build_time = "{build_time}"\n'
        "[sensor]\n"
        f"# generation sensor: {gen.sensor.kind}\n"
        + sensor_lines
        + "[credentials]\n"
        'provider = "broker"\n'
        f'broker_url = "{build.broker_url}"\n'
        # the site's signed catalogue for one-project cards: `sdbox flash --project-catalogue`
        # writes it into the config area, sdbox-site copies it here (docs/card-variants.md)
        "[card]\n"
        f'project_catalogue = "{FLASHED_CATALOGUE}"\n'
    )
    if build.fleet_url:
        fleet_config(build, sdbox_etc)
    # trust anchors: the test PKI generated for this build (never committed)
    pki = build.out / "pki"
    if not (pki / "root.pem").exists():
        from sdbox.trust.pki import Pki  # noqa: PLC0415

        Pki.init(pki)
    shutil.copy(pki / "root.pem", sdbox_etc / "trust" / "roots.pem")
    # the tunnel: the CA that certifies the centre's gateways (the site profile's
    # default [tunnel] gateway_ca; the test PKI's server CA), and the CRLs the first
    # tunnel is checked with before fresher ones can come through it
    shutil.copy(pki / "server-ca.pem", sdbox_etc / "trust" / "gateway-ca.pem")
    shutil.copytree(crl_seeds(pki), sdbox_etc / "trust" / "crls", dirs_exist_ok=True)
    agent_trust(pki, build, sdbox_etc / "trust", target / "var/lib/sdbox/crl")
    # A/B updates: RAUC's slots, the keyring bundles must chain to, our handler and backend
    rauc_etc = target / "etc/rauc"
    rauc_etc.mkdir(parents=True, exist_ok=True)
    (rauc_etc / "system.conf").write_text(bundle.system_conf(gen.name))
    shutil.copy(bundle.signing_keys(build.out / "keys").keyring, rauc_etc / "keyring.pem")
    libexec = target / "usr/libexec/sdbox"
    shutil.copy(ROOT / "sdbox/bootimage/slots.py", libexec / "rauc-bootloader")
    (libexec / "rauc-bootloader").chmod(0o755)
    (libexec / "rauc-pre-install").symlink_to("rauc-bootloader")
    software_rendering(gen, target)
    for path in target.rglob("*"):
        os.utime(path, (build.epoch, build.epoch), follow_symlinks=False)
    return target


def agent_trust(pki: Path, build: Build, trust: Path, crl_cache: Path) -> None:
    """What the agent validates a card's and a bubble's certificates with, besides the roots.

    The centre's issuing CAs (public: any box may hold them) and a first CRL cache
    in the factory /var, from the same seeds as the tunnel's: a box refuses every
    session while it holds no current CRL for each authority (check_revocation),
    and fresher lists come through the tunnel (sdbox-crl-refresh.timer).
    """
    from sdbox.trust.pki import Pki  # noqa: PLC0415
    from sdbox.trust.store import RevocationStore  # noqa: PLC0415

    authority = Pki.open(pki)
    (trust / "intermediates.pem").write_bytes(
        b"".join(cert.public_bytes(serialization.Encoding.PEM) for cert in authority.intermediates))
    crl_cache.mkdir(parents=True, exist_ok=True)
    store = RevocationStore(crl_cache, build_time=datetime.fromtimestamp(build.epoch, UTC))
    for seed in sorted((pki / "crl-seed").glob("*.pem")):
        store.accept(seed.read_bytes(), authority.authority(seed.stem).cert)


def crl_seeds(pki: Path) -> Path:
    """Every authority's CRL for the image (CA_NAMES), kept in the PKI directory.

    Made once and reused while more than half their lifetime is left: a CRL
    carries a signing time, a new number and a randomised ECDSA signature, and
    two builds of the same sources must give the same root (make image-repro).
    """
    from sdbox.trust.pki import CA_NAMES, Pki  # noqa: PLC0415

    seeds = pki / "crl-seed"
    now = datetime.now(UTC)
    held = [x509.load_pem_x509_crl(f.read_bytes()) for f in sorted(seeds.glob("*.pem"))]
    if len(held) == len(CA_NAMES) and all(
        c.next_update_utc and c.next_update_utc - now > (c.next_update_utc - c.last_update_utc) / 2
        for c in held
    ):
        return seeds
    seeds.mkdir(exist_ok=True)
    authority = Pki.open(pki)
    for ca in CA_NAMES:
        (seeds / f"{ca}.pem").write_bytes(authority.crl(ca).public_bytes(serialization.Encoding.PEM))
    return seeds


def customize_script(test_build: bool = False) -> str:
    """Runs inside the root after every package is installed."""
    return "\n".join([
        "set -eu",
        *(["systemctl enable sdbox-e2e-relay.service"] if test_build else []),
        # no getty, no login, no emergency shell: the researcher gets the greeter only
        "systemctl mask getty@.service serial-getty@.service autovt@.service"
        " console-getty.service debug-shell.service emergency.service rescue.service"
        " ctrl-alt-del.target",
        "systemctl enable systemd-networkd.service sdbox-boot-report.service"
        " sdbox-boot-confirm.service sdbox-update-from-disk.service",
        # first boot: the TPM key certified by the centre (the token from the config area)
        "systemctl enable sdbox-enrol.service",
        "systemctl enable sdbox-agent.service sdbox-greeter.service"
        " sdbox-renewal-due.timer sdbox-crl-refresh.timer",
        # skipped at boot unless the build wrote /etc/sdbox/fleet.toml (--fleet-url)
        "systemctl enable sdbox-fleet.service",
        "systemctl set-default multi-user.target",
        # the boot-time tunnel: sdbox's units, not Debian's
        f"systemctl enable {' '.join(TUNNEL_UNITS)}",
        f"systemctl mask {' '.join(TUNNEL_MASKED)}",
        # the researcher's outer-network settings are not applied in the image yet: the unit
        # failed at boot in the merged image for a reason not found in time, and with a site
        # profile its files would lose to sdbox-site's anyway (docs/desk.md, "Not done")
        "systemctl disable sdbox-outer-network.service sdbox-outer-network.path",
        # RAUC keeps its slot status on the data partition (/etc/rauc/system.conf)
        "mkdir -p /var/lib/rauc",
        # chrony: only the authenticated (NTS) sources of sources.d
        "sed -i -e '/^pool /d' -e '/^server /d' /etc/chrony/chrony.conf",
        # empty: each box gets its own from the config area (`sdbox flash`), which the
        # initramfs binds over it (scripts/local-bottom/sdbox-machine-id)
        ": > /etc/machine-id",
        "rm -f /var/lib/dbus/machine-id",
        "rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/log/*.log /tmp/*",
    ])  # fmt: skip


def bootstrap(build: Build, deb: Path, overlay_dir: Path) -> None:
    started = time.monotonic()
    shutil.rmtree(build.rootdir, ignore_errors=True)
    packages = PACKAGES + TUNNEL_PACKAGES + build.generation.firmware.packages + LEAN_PACKAGES
    if build.generation.sensor.kind == "libfprint" or build.test_build:
        packages = packages + LIBFPRINT_PACKAGES
    early = build.work / "overlay-early"
    shutil.rmtree(early, ignore_errors=True)
    shutil.copytree(overlay_dir / "usr/share/initramfs-tools", early / "usr/share/initramfs-tools")
    script = build.work / "customize.sh"
    script.write_text(customize_script(build.test_build) + "\n")
    argv: list[str | Path] = [
        "mmdebstrap", "--variant=apt", "--mode=root", "--format=directory",
        "--components=main,non-free-firmware",
        "--aptopt=APT::Install-Recommends \"false\"",
        "--aptopt=Acquire::Retries \"3\"",
        *LEAN_MMDEBSTRAP_OPTIONS,
        *[f"--dpkgopt={option}" for option in DPKG_OPTIONS + lean_dpkg_options(build.generation)],
        f"--include={','.join(packages)}",
        # the initramfs hooks must be there before the kernel's postinst builds the initramfs
        f"--essential-hook=sync-in {early} /",
        f"--customize-hook=copy-in {deb} {script} /tmp",
        f"--customize-hook=chroot \"$1\" apt-get install -y --no-install-recommends /tmp/{deb.name}",
        f"--customize-hook=sync-in {overlay_dir} /",
        f"--customize-hook=chroot \"$1\" sh /tmp/{script.name}",
        SUITE, build.rootdir, *MIRRORS,
    ]  # fmt: skip
    log = build.work / "mmdebstrap.log"
    env = {**tools.BASE_ENV, "SOURCE_DATE_EPOCH": str(build.epoch)}
    with log.open("w") as stream:
        done = subprocess.run(
            [os.fspath(a) for a in argv], stdout=stream, stderr=subprocess.STDOUT,
            env=env, timeout=1800, check=False,
        )  # fmt: skip
    if done.returncode != 0:
        raise BootImageError(
            f"mmdebstrap failed (exit {done.returncode}; log {log})",
            detail=tools.tail(log.read_text()),
        )
    build.step("root filesystem (mmdebstrap)", started)
    for modules in sorted((build.rootdir / "usr/lib/modules").iterdir()):
        missing = checks.missing_module_dependencies(modules)
        if missing:
            raise BootImageError(
                f"{len(missing)} kernel module(s) need modules the image leaves out: "
                "narrow the path-exclude list in bootimage/build.py (DPKG_OPTIONS)",
                detail="\n".join(f"{m}: needs {', '.join(d)}" for m, d in missing.items()),
            )


def package_sizes(root: Path) -> dict[str, int]:
    """Debian packages in the root by the size of their files on disk (KiB), largest first.

    Not dpkg's Installed-Size: that is the whole package, including what the
    image's path-excludes left out and what the build pruned afterwards.
    """
    sizes = {}
    seen: set[tuple[int, int]] = set()  # hard links (Mesa's DRI drivers are one file) count once
    for listing in sorted((root / "var/lib/dpkg/info").glob("*.list")):
        total = 0
        for line in listing.read_text(errors="replace").splitlines():
            path = root / line.lstrip("/")
            if line and path.is_file() and not path.is_symlink():
                info = path.lstat()
                if (info.st_dev, info.st_ino) not in seen:
                    seen.add((info.st_dev, info.st_ino))
                    total += info.st_size
        sizes[listing.name.removesuffix(".list").split(":", 1)[0]] = total // 1024
    return dict(sorted(sizes.items(), key=lambda item: -item[1]))


def python_sizes(root: Path) -> dict[str, int]:
    """The private Python set's top-level entries by size on disk (KiB), largest first."""
    private = root / "usr/lib/sdbox/python"
    sizes = {
        entry.name: sum(f.lstat().st_size for f in entry.rglob("*") if f.is_file()) // 1024
        if entry.is_dir() else entry.lstat().st_size // 1024
        for entry in (private.iterdir() if private.exists() else [])
    }  # fmt: skip
    return dict(sorted(sizes.items(), key=lambda item: -item[1]))


def lean_dpkg_options(generation: generations.Generation) -> list[str]:
    """What the generation's root leaves out beyond DPKG_OPTIONS."""
    return LEAN_DPKG_OPTIONS + ([] if generation.display.gpu_rendering else GPU_STACK_EXCLUDES)


def software_rendering(generation: generations.Generation, overlay_dir: Path) -> None:
    """The greeter's renderers, for a generation without GPU rendering (no Mesa drivers)."""
    if generation.display.gpu_rendering:
        return
    dropin = overlay_dir / "etc/systemd/system/sdbox-greeter.service.d"
    dropin.mkdir(parents=True, exist_ok=True)
    (dropin / "renderer.conf").write_text(SOFTWARE_RENDERING_DROPIN)


def prune_after_initramfs(build: Build) -> None:
    """Remove from the root what only the initramfs build reads (the microcode)."""
    for rel in PRUNED_AFTER_INITRAMFS:
        shutil.rmtree(build.rootdir / rel, ignore_errors=True)


def check_shared_libraries(build: Build) -> None:
    """Refuse a root where a program or library links to a library that is not there."""
    started = time.monotonic()
    missing = checks.missing_shared_libraries(build.rootdir)
    if missing:
        raise BootImageError(
            f"{len(missing)} program(s) or librar(ies) in the root link to libraries the image "
            "leaves out: narrow the path-exclude lists in bootimage/build.py",
            detail="\n".join(f"{f}: needs {', '.join(libs)}" for f, libs in list(missing.items())[:50]),
        )
    build.step("root checks (every linked library present)", started)


def check_root(build: Build) -> None:
    """Refuse to seal a root where anyone may write outside /tmp and /var/tmp."""
    started = time.monotonic()
    loose = checks.world_writable(build.rootdir)
    if loose:
        raise BootImageError(
            f"{len(loose)} world-writable path(s) in the root outside /tmp and /var/tmp: "
            "fix their mode in the overlay or the customize script",
            detail="\n".join(loose[:50]),
        )
    build.step("root checks (no world-writable file)", started)
    check_shared_libraries(build)


def kernel_and_initrd(build: Build) -> tuple[Path, Path]:
    boot = build.rootdir / "boot"
    kernels = sorted(boot.glob("vmlinuz-*"))
    initrds = sorted(boot.glob("initrd.img-*"))
    if len(kernels) != 1 or len(initrds) != 1:
        raise BootImageError(f"expected one kernel and one initrd in /boot, found {kernels} {initrds}")
    kernel, initrd = build.work / "vmlinuz", build.work / "initrd.img"
    shutil.copy(kernels[0], kernel)
    shutil.copy(initrds[0], initrd)
    # the root's own lsinitramfs (initramfs-tools-core is not on the build host)
    listing = tools.run(
        ["chroot", build.rootdir, "lsinitramfs", f"/boot/{initrds[0].name}"],
        what="listing the initramfs", timeout=300,
    )  # fmt: skip
    for needed, why in (
        ("sbin/veritysetup", "the verity root would not open"),
        ("scripts/local-top/sdbox-verity", "the verity root would not open"),
        ("dm-verity.ko", "the verity root would not open"),
        ("scripts/local-bottom/sdbox-machine-id", "every boot would get a new machine ID"),
        ("vfat.ko", "the machine ID in the config area could not be read"),
        *((f"/{name}.ko", f"the {build.generation.name} disk ({build.generation.storage.model}) "
           "would not be found: add it to rootfs/usr/share/initramfs-tools/modules.d/sdbox")
          for name in build.generation.storage.drivers),
    ):  # fmt: skip
        if needed not in listing:
            raise BootImageError(f"the initramfs lacks {needed}: {why}")
    return kernel, initrd


def factory_var(build: Build) -> None:
    """The image's /var, kept in the root as /usr/share/factory/var (systemd's convention).

    The data partition is empty in the image: the first boot formats it as
    LUKS2 sealed to the box's own TPM and fills it from this copy
    (bootimage/rootfs/usr/libexec/sdbox/data-init). /var/tmp is left out:
    tmpfiles makes it (1777) at every boot, and no world-writable directory
    goes into the sealed root.
    """
    started = time.monotonic()
    factory = build.rootdir / "usr/share/factory/var"
    shutil.rmtree(factory, ignore_errors=True)
    factory.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(build.rootdir / "var", factory, symlinks=True,
                    ignore=lambda where, names: ["tmp"] if Path(where) == build.rootdir / "var" else [])  # fmt: skip
    size = sum(f.lstat().st_size for f in factory.rglob("*") if f.is_file())
    if size > DATA_SIZE // 2:
        raise BootImageError(f"the factory /var ({size} bytes) would fill the data partition")
    build.step("factory /var (the first boot fills the sealed data partition from it)", started)


def squash_and_seal(build: Build) -> tuple[Path, Path, str]:
    """The root as squashfs, its dm-verity hash tree, and the root hash."""
    started = time.monotonic()
    squashfs = build.work / "root.squashfs"
    squashfs.unlink(missing_ok=True)
    tools.run(
        ["mksquashfs", build.rootdir, squashfs, "-comp", "zstd", "-Xcompression-level", "15",
         "-noappend", "-no-progress", "-quiet", "-mkfs-time", str(build.epoch),
         "-all-time", str(build.epoch), "-processors", str(os.cpu_count() or 2),
         # /var is the data partition's, kernel and initrd live in the UKI
         "-wildcards", "-e", "proc/*", "sys/*", "dev/*", "run/*", "tmp/*", "var/*", "boot/*"],
        what="squashing the root", timeout=1800,
    )  # fmt: skip
    if squashfs.stat().st_size > SLOT_SIZE:
        raise BootImageError(f"the root ({squashfs.stat().st_size} bytes) exceeds a slot ({SLOT_SIZE})")
    build.step("root squashfs", started)
    started = time.monotonic()
    verity = build.work / "root.verity"
    verity.unlink(missing_ok=True)
    roothash_file = build.work / "roothash"
    salt = hashlib.sha256(f"sdbox:{build.generation.name}:{build.epoch}".encode()).hexdigest()
    tools.run(
        ["veritysetup", "format", squashfs, verity, f"--salt={salt}",
         f"--uuid={deterministic_uuid(build.generation.name, 'verity')}",
         f"--root-hash-file={roothash_file}"],
        what="sealing the root (dm-verity)", timeout=600,
    )  # fmt: skip
    roothash = roothash_file.read_text().strip()
    if verity.stat().st_size > VERITY_SIZE:
        raise BootImageError("the verity hash tree exceeds its partition")
    build.step("dm-verity hash tree", started)
    return squashfs, verity, roothash


def signing_keys(build: Build) -> tuple[Path, Path, str]:
    """The Secure Boot db key and certificate, and where they came from."""
    key, cert = os.environ.get("SDBOX_SB_KEY"), os.environ.get("SDBOX_SB_CERT")
    if key and cert:
        return Path(key), Path(cert), "SDBOX_SB_KEY"
    keys = build.out / "keys"
    keys.mkdir(mode=0o700, parents=True, exist_ok=True)
    plain = keys / "snakeoil-db.key"
    if not plain.exists():
        # OVMF's test key is published with its passphrase 'snakeoil' (README.Debian);
        # the passphrase goes through a file, never the command line
        passfile = keys / "snakeoil.pass"
        passfile.write_text("snakeoil\n")
        passfile.chmod(0o600)
        tools.run(
            ["openssl", "pkey", "-in", SNAKEOIL_KEY, "-passin", f"file:{passfile}", "-out", plain],
            what="unlocking OVMF's snakeoil test key", timeout=60,
        )  # fmt: skip
        plain.chmod(0o600)
        passfile.unlink()
    return plain, SNAKEOIL_CERT, "OVMF snakeoil (test only)"


def make_uki(build: Build, kernel: Path, initrd: Path, cmdline: str, name: str) -> Path:
    """kernel + initrd + command line + os-release in systemd's stub: one EFI binary."""
    osrel = build.work / "os-release"
    osrel.write_text(
        (build.rootdir / "usr/lib/os-release").read_text()
        + f"IMAGE_ID=sdbox-{build.generation.name}\nIMAGE_VERSION={build.version}\n"
    )
    cmdfile = build.work / f"{name}.cmdline"
    cmdfile.write_text(cmdline + "\n")
    if kernel.stat().st_size >= 0x1000000:
        raise BootImageError("the kernel is larger than the UKI layout allows (16 MiB)")
    unsigned = build.work / f"{name}.unsigned.efi"
    tools.run(
        ["objcopy",
         "--add-section", f".osrel={osrel}", "--change-section-vma", ".osrel=0x20000",
         "--add-section", f".cmdline={cmdfile}", "--change-section-vma", ".cmdline=0x30000",
         "--add-section", f".linux={kernel}", "--change-section-vma", ".linux=0x2000000",
         "--add-section", f".initrd={initrd}", "--change-section-vma", ".initrd=0x3000000",
         STUB, unsigned],
        what="assembling the UKI", timeout=120,
    )  # fmt: skip
    pe.set_timestamp(unsigned, build.epoch)  # objcopy wrote the wall clock (sdbox.bootimage.pe)
    return unsigned


def sign(build: Build, unsigned: Path, signed: Path, key: Path, cert: Path) -> Path:
    tools.run(
        ["sbsign", "--key", key, "--cert", cert, "--output", signed, unsigned],
        what=f"signing {unsigned.name}", timeout=120,
    )  # fmt: skip
    return signed


def assemble(
    build: Build, esp_files: dict[str, Path], squashfs: Path, verity: Path, roothash: str,
    manifest: dict[str, object],
) -> list[disk.Partition]:
    started = time.monotonic()
    name = build.generation.name
    specs = [
        disk.PartitionSpec("esp", GPT_ESP, ESP_SIZE, deterministic_uuid(name, "esp")),
        disk.PartitionSpec("root-a", GPT_ROOT, SLOT_SIZE, slot_partuuids(name, "a")[0]),
        disk.PartitionSpec("root-a-verity", GPT_ROOT_VERITY, VERITY_SIZE, slot_partuuids(name, "a")[1]),
        # slot B: empty until the first update writes it (docs/image.md)
        disk.PartitionSpec("root-b", GPT_ROOT, SLOT_SIZE, slot_partuuids(name, "b")[0]),
        disk.PartitionSpec("root-b-verity", GPT_ROOT_VERITY, VERITY_SIZE, slot_partuuids(name, "b")[1]),
        disk.PartitionSpec(disk.CONFIG_PARTITION, GPT_LINUX, CONFIG_SIZE, deterministic_uuid(name, "config")),
        disk.PartitionSpec("sdbox-data", GPT_LINUX, DATA_SIZE, deterministic_uuid(name, "data-part")),
    ]  # fmt: skip
    build.image.unlink(missing_ok=True)
    parts = {p.name: p for p in disk.create_gpt(build.image, specs, deterministic_uuid(name, "disk"))}
    mtools_env = {"MTOOLS_SKIP_CHECK": "1", "MTOOLSRC": "/dev/null", "HOME": "/nonexistent"}
    esp = f"{build.image}@@{parts['esp'].offset}"
    tools.run(
        ["mformat", "-i", esp, "-F", "-T", str(ESP_SIZE // disk.SECTOR), "-h", "64", "-s", "32",
         "-v", "SDBOX-ESP", "-N", "5db0e5f0", "::"],
        what="formatting the ESP", timeout=60, env=mtools_env,
    )  # fmt: skip
    for directory in ("EFI", "EFI/BOOT", "EFI/Linux", "loader"):
        tools.run(["mmd", "-i", esp, f"::/{directory}"], what="making ESP directories",
                  timeout=60, env=mtools_env)  # fmt: skip
    for target, source in esp_files.items():
        os.utime(source, (build.epoch, build.epoch))
        tools.run(["mcopy", "-m", "-i", esp, source, f"::/{target}"],
                  what=f"copying {target} to the ESP", timeout=120, env=mtools_env)  # fmt: skip
    disk.write_at(build.image, parts["root-a"].offset, squashfs, parts["root-a"].size)
    disk.write_at(build.image, parts["root-a-verity"].offset, verity, parts["root-a-verity"].size)
    # sdbox-data stays empty (zeros): formatted LUKS2 and sealed to the TPM at first boot
    area = disk.ConfigArea(build.image, parts[disk.CONFIG_PARTITION])
    area.format()
    scratch = build.work / "config"
    scratch.mkdir(exist_ok=True)
    area.write(disk.IMAGE_MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode(), scratch)
    build.step("disk assembly (GPT, ESP, slots, config, data)", started)
    return list(parts.values())


def compress(build: Build) -> Path:
    started = time.monotonic()
    packed = build.image.with_name(build.image.name + ".zst")
    tools.run(["zstd", "-q", "-f", "-T0", "-6", "--sparse", build.image, "-o", packed],
              what="compressing the image", timeout=1800)  # fmt: skip
    build.step("compression (zstd -6)", started)
    return packed


E2E_SCREEN = "1280x720"  # tests/integration/greeter-references/ (e2e_screen.SCREEN_W, SCREEN_H)


def slot_cmdline(
    generation: generations.Generation, slot: str, roothash: str, test_build: bool = False
) -> str:
    """The signed command line of a slot's UKI: its partitions, the root hash, RAUC's slot name."""
    data, hash_tree = slot_partuuids(generation.name, slot)
    extra = generation.firmware.kernel_args
    display = generation.display.kernel_args()
    if test_build:  # the e2e flow must not find its agent frozen by the boot test's watchdog check
        extra = [arg for arg in extra if not arg.startswith("sdbox.boot_test=")]
        # the screen at the greeter references' size, which make image-e2e compares it with
        # (bootimage/e2e_screen.py): the generation's own mode is image-test's to check
        if generation.display.connector != "auto":
            display = [f"video={generation.display.connector}:{E2E_SCREEN}"]
    return " ".join([
        f"roothash={roothash}",
        f"systemd.verity_root_data=PARTUUID={data}",
        f"systemd.verity_root_hash=PARTUUID={hash_tree}",
        f"rauc.slot={slot}",
        *KERNEL_ARGS, *extra, *generation.power.kernel_args(), *display,
    ])  # fmt: skip


def make_update_bundle(build: Build, squashfs: Path, verity: Path, ukis: dict[str, Path]) -> Path:
    """build/image/sdbox-<generation>-<version>.raucb, signed, verified with `rauc info`."""
    started = time.monotonic()
    keys = bundle.signing_keys(build.out / "keys")
    conf = bundle.host_conf(build.work / "rauc-host.conf", build.generation.name, keys.keyring)
    output = build.out / f"sdbox-{build.generation.name}-{build.version}.raucb"
    files = {"root.squashfs": squashfs, "root.verity": verity,
             **{f"sdbox-{slot}.efi": uki for slot, uki in ukis.items()}}  # fmt: skip
    text = bundle.manifest(build.generation.name, build.version,
                           datetime.fromtimestamp(build.epoch, UTC).isoformat())  # fmt: skip
    bundle.make_bundle(build.work / "bundle", output, keys, conf, files, text, build.epoch)
    verified = bundle.info(output, conf)
    if verified.get("version") != build.version:
        raise BootImageError(f"the bundle says version {verified.get('version')}, not {build.version}")
    build.step(f"RAUC bundle ({output.stat().st_size / MIB:.0f} MiB, signed by {keys.source})", started)
    return output


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generation", default="qemu-q35")
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "image")
    parser.add_argument("--reuse-root", action="store_true",
                        help="keep the last mmdebstrap root (iterating on later steps)")
    parser.add_argument("--bundle", action="store_true",
                        help="also make the signed RAUC update bundle of this build")
    parser.add_argument("--no-disk", action="store_true",
                        help="no disk image (with --bundle: the bundle only)")
    parser.add_argument("--fleet-url", default=os.environ.get("SDBOX_FLEET_URL", ""),
                        help="the centre's fleet service (through the tunnel): writes "
                        "/etc/sdbox/fleet.toml for sdbox-fleet.service; default: none")
    parser.add_argument("--test-build", action="store_true",
                        help="make image-e2e's test build (into build/image-e2e-build unless --out): "
                        "libfprint's virtual_image sensor fed from the host (bootimage/rootfs-e2e/)")
    args = parser.parse_args()
    if args.test_build and args.out == ROOT / "build" / "image":
        args.out = ROOT / "build" / "image-e2e-build"
    if os.geteuid() != 0:
        print("image: mmdebstrap --mode=root needs root", file=sys.stderr)
        return 2
    started_all = time.monotonic()
    try:
        generation = generations.load(args.generation)
        epoch = int(os.environ.get("SOURCE_DATE_EPOCH") or subprocess.run(
            ["git", "log", "-1", "--format=%ct"], cwd=ROOT, capture_output=True, text=True,
            timeout=30, check=True).stdout.strip())  # fmt: skip
        version = bundle.image_version(__version__, epoch, os.environ.get("SDBOX_IMAGE_VERSION"))
        build = Build(generation, args.out, epoch, version, test_build=args.test_build,
                      fleet_url=args.fleet_url)
        build.work.mkdir(parents=True, exist_ok=True)
        deb = find_deb()
        overlay_dir = overlay(build)
        if args.reuse_root and (build.rootdir / "usr/lib/os-release").exists():
            # what the customize hooks would do, for a changed overlay
            for link in (p for p in overlay_dir.rglob("*") if p.is_symlink()):
                (build.rootdir / link.relative_to(overlay_dir)).unlink(missing_ok=True)
            # this build's package over the kept root's (the agent's code changes more often
            # than the package set), then the overlay over both, as the hooks order them
            shutil.copy(deb, build.rootdir / "tmp" / deb.name)
            tools.run(["chroot", build.rootdir, "dpkg", "-i", f"/tmp/{deb.name}"],  # noqa: S108
                      what="installing this build's package into the reused root", timeout=300)  # fmt: skip
            (build.rootdir / "tmp" / deb.name).unlink()
            shutil.copytree(overlay_dir, build.rootdir, symlinks=True, dirs_exist_ok=True)
            (build.rootdir / "tmp/customize.sh").write_text(customize_script(build.test_build) + "\n")
            tools.run(["chroot", build.rootdir, "sh", "/tmp/customize.sh"],  # noqa: S108 (inside the root)
                      what="customizing the reused root", timeout=300)  # fmt: skip
        else:
            bootstrap(build, deb, overlay_dir)
        check_root(build)
        kernel, initrd = kernel_and_initrd(build)
        prune_after_initramfs(build)
        factory_var(build)
        squashfs, verity, roothash = squash_and_seal(build)
        started = time.monotonic()
        key, cert, key_source = signing_keys(build)
        # one UKI per slot (same kernel, initrd and root hash; the slot's partitions)
        cmdlines = {slot: slot_cmdline(generation, slot, roothash, build.test_build) for slot in ("a", "b")}
        ukis = {slot: sign(build, make_uki(build, kernel, initrd, cmdlines[slot], f"sdbox-{slot}"),
                           build.work / f"sdbox-{slot}.efi", key, cert)
                for slot in ("a", "b")}  # fmt: skip
        boot = sign(build, BOOT_EFI, build.work / "BOOTX64.EFI", key, cert)
        loader = build.work / "loader.conf"
        # no menu, no editor: the command line is the signed one, nothing else; the
        # slot RAUC activates is chosen by EFI variables (sdbox.bootimage.slots)
        loader.write_text("timeout 0\neditor no\nauto-entries no\nauto-firmware no\n"
                          "default sdbox-a.efi\n")  # fmt: skip
        build.step("UKIs (slot a, slot b) + systemd-boot, signed", started)
        manifest: dict[str, object] = {
            "generation": generation.name,
            "version": version,
            "package_version": __version__,
            "built": datetime.fromtimestamp(epoch, UTC).isoformat(),
            "roothash": roothash,
            "slots": {"a": version, "b": None},
            "secure_boot_key": key_source,
            "broker_url": build.broker_url,
            "fleet_url": build.fleet_url,
            "test_build": build.test_build,
        }
        raucb = make_update_bundle(build, squashfs, verity, ukis) if args.bundle else None
        if args.no_disk:
            print(f"image: bundle {raucb} (version {version}); no disk image (--no-disk)")
            return 0
        assemble(build, {"EFI/BOOT/BOOTX64.EFI": boot, "EFI/Linux/sdbox-a.efi": ukis["a"],
                         "loader/loader.conf": loader}, squashfs, verity, roothash,
                 manifest)  # fmt: skip
        digest = hashlib.sha256()
        with build.image.open("rb") as stream:
            while chunk := stream.read(8 * MIB):
                digest.update(chunk)
        build.image.with_name(build.image.name + ".sha256").write_text(
            f"{digest.hexdigest()}  {build.image.name}\n"
        )
        packed = compress(build)
    except BootImageError as exc:
        print(f"image: {exc.message}", file=sys.stderr)
        if exc.detail:
            print(exc.detail, file=sys.stderr)
        return 1
    total = round(time.monotonic() - started_all, 1)
    # what the squashfs holds, uncompressed (not /var, /boot)
    installed = sum(
        f.stat().st_size for f in build.rootdir.rglob("*")
        if f.is_file() and not f.is_symlink()
        and f.relative_to(build.rootdir).parts[0] not in ("var", "boot", "proc", "sys", "dev", "run", "tmp")
    )  # fmt: skip
    figures: dict[str, object] = {
        **manifest,
        "image": str(build.image),
        "sha256": digest.hexdigest(),
        "disk_bytes": build.image.stat().st_size,
        "allocated_bytes": build.image.stat().st_blocks * 512,
        "compressed_bytes": packed.stat().st_size,
        "root_installed_bytes": installed,
        "root_squashfs_bytes": squashfs.stat().st_size,
        "uki_bytes": ukis["a"].stat().st_size,
        "timings_s": build.timings,
        "build_s": total,
        "cmdline": cmdlines["a"],
        "bundle": str(raucb) if raucb else None,
        "packages_kib": package_sizes(build.rootdir),
        "python_kib": python_sizes(build.rootdir),
    }
    (args.out / f"sdbox-{generation.name}.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(f"image: {build.image} ({build.image.stat().st_size / 2**30:.2f} GiB disk, "
          f"{packed.stat().st_size / MIB:.0f} MiB zstd, root {installed / MIB:.0f} MiB installed "
          f"/ {squashfs.stat().st_size / MIB:.0f} MiB squashfs) in {total:.0f} s")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
