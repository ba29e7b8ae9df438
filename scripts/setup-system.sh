#!/usr/bin/env bash
# Installs the Debian packages sdbox builds, tests and demonstrates against.
# Idempotent: a machine that already has everything installs nothing.
# Tiers can be chosen (default: all) so that a developer working only on the
# card does not have to pull QEMU: scripts/setup-system.sh card session ...
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
    exec sudo --preserve-env=DEBIAN_FRONTEND "$0" "$@"
fi
export DEBIAN_FRONTEND=noninteractive

# FreeRDP 3 only exists in bookworm-backports.
backports=/etc/apt/sources.list.d/bookworm-backports.list
if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    echo "deb http://deb.debian.org/debian bookworm-backports main" > "$backports"
    apt_updated=""
fi

declare -A tier
tier[base]="python3 python3-venv python3-dev build-essential pkg-config git make"
# pyscard builds from source (swig, pcsclite headers); pcscd with the vpcd
# reader driver is the real PC/SC stack the emulated card plugs into.
tier[card]="pcscd libpcsclite-dev swig vsmartcard-vpcd opensc opensc-pkcs11 pcsc-tools openssl yubico-piv-tool"
tier[session]="freerdp3-x11 freerdp3-sdl freerdp3-shadow-x11 winpr3-utils virt-viewer qemu-system-x86 xvfb x11-apps imagemagick xdotool"
tier[kiosk]="python3-gi gir1.2-gtk-4.0 cage grim xwayland dbus libsystemd-dev gettext"
# swtpm has no resource manager (3 object slots: libtpm2-pkcs11 runs out);
# tests put tpm2-abrmd (with its TCTI for clients) on a private D-Bus in front.
tier[identity]="swtpm swtpm-tools libtpm2-pkcs11-1 libtpm2-pkcs11-tools tpm2-tools tpm2-abrmd libtss2-tcti-tabrmd0 libtss2-tcti-swtpm0 dbus"
# umockdev: USB sensors plugged in and out for the real libudev (tests/integration/test_sensor_hotplug.py;
# test machines have no udevd and no USB sensor)
tier[biometric]="gir1.2-fprint-2.0 libfprint-2-2 python3-gi umockdev gir1.2-umockdev-1.0"
# The Debian package (make deb): debhelper, lintian, and what the pinned
# sdists compile against (pyscard: swig + pcsclite; systemd-python: libsystemd).
# systemd: systemd-analyze scores the units' exposure (--offline, no systemd PID 1 needed; test_security.py)
tier[debian]="debhelper dpkg-dev lintian fakeroot python3-venv python3-dev swig libpcsclite-dev libsystemd-dev pkg-config systemd"
# The appliance image (make image image-test): mmdebstrap builds the root,
# squashfs + veritysetup seal it, systemd's EFI stub + sbsign make the signed
# UKI, mtools/dosfstools/fdisk assemble the disk without mounting anything;
# OVMF (Secure Boot variables with Debian's snakeoil keys) and swtpm boot it.
tier[image]="mmdebstrap squashfs-tools cryptsetup-bin systemd-boot-efi sbsigntool binutils dosfstools mtools fdisk ovmf swtpm swtpm-tools qemu-system-x86 qemu-utils zstd rauc"

# The site tunnel (docs/tunnel.md): Debian's strongSwan driven over VICI
# (charon-systemd on the box; tests run one charon per network namespace with
# its own strongswan.conf and VICI socket), its PKCS#11 and revocation plugins,
# nftables for the outer interface, and tcpdump for the tests' captures.
# The fleet (docs/fleet.md): the box ships its audit trail from the systemd
# journal; tests write real journal files from export format with
# systemd-journal-remote (test machines run no journald). PostgreSQL's server
# binaries for the tests' private clusters (the package's own "main" cluster is
# not created: nothing listens on the machine).
tier[fleet]="systemd-journal-remote postgresql-15"
tier[network]="charon-systemd strongswan-swanctl libstrongswan-standard-plugins libstrongswan-extra-plugins libcharon-extra-plugins p11-kit p11-kit-modules nftables iproute2 tcpdump"

tiers=("$@")
[ ${#tiers[@]} -gt 0 ] || tiers=(base card session kiosk identity biometric network fleet debian image)

wanted=()
for t in "${tiers[@]}"; do
    [ -n "${tier[$t]+x}" ] || { echo "setup-system: unknown tier '$t' (known: ${!tier[*]})" >&2; exit 2; }
    # shellcheck disable=SC2206
    wanted+=(${tier[$t]})
done

# Session clients (xfreerdp3, remote-viewer) run as an unprivileged account of
# their own, never as the agent's (sdbox.session.supervisor). Created even when
# every package is already present.
for t in "${tiers[@]}"; do
    if [ "$t" = session ] && ! getent passwd sdbox-session >/dev/null; then
        useradd --system --user-group --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin --comment "sdbox session clients" sdbox-session
        echo "setup-system: created user sdbox-session"
    fi
    # The greeter runs as its own user: the agent's D-Bus policy lets only it in.
    if [ "$t" = kiosk ] && ! getent passwd sdbox-greeter >/dev/null; then
        useradd --system --user-group --create-home --home-dir /var/lib/sdbox-greeter \
            --shell /usr/sbin/nologin --comment "sdbox kiosk greeter" sdbox-greeter
        echo "setup-system: created user sdbox-greeter"
    fi
done

# The fleet dashboard's browser test fetches its headless Chromium with npm
# (scripts/fetch-browser.sh): Debian's nodejs and npm, unless a Node.js with
# npm is already there (NodeSource's bundles npm and conflicts with Debian's).
for t in "${tiers[@]}"; do
    if [ "$t" = fleet ] && ! command -v npm >/dev/null; then
        wanted+=(nodejs npm)
    fi
done

missing=()
for p in "${wanted[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
    echo "setup-system: all packages present (${tiers[*]})"
    exit 0
fi
echo "setup-system: installing ${missing[*]}"
if [[ " ${missing[*]} " == *" postgresql-15 "* ]]; then
    # tests start their own clusters; the package would create and start a system one
    mkdir -p /etc/postgresql-common/createcluster.d
    echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.d/sdbox.conf
fi
apt-get update -qq
# Packages that exist only in backports (FreeRDP 3) are picked from there by
# apt itself; everything else stays on bookworm's own versions.
apt-get install -y -qq --no-install-recommends "${missing[@]}"
