"""Real servers for the session integration tests, all on loopback.

- Xvfb displays (``-displayfd``: the server picks a free display number, so
  that parallel work on this machine never collides with ours);
- ``freerdp-shadow-cli3`` sharing a server-side Xvfb that shows a known test
  pattern, with a certificate made here (in its config dir) and a SAM file
  made with ``winpr-hash3``;
- QEMU's SPICE server (``-nodefaults -S``, no disk, TLS only);
- certificates made with ``cryptography``.

Every process is started here and stopped by its pid.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SCREEN_W, SCREEN_H = 640, 480
# The test pattern: one colour per quadrant, far apart in RGB so that codec
# loss cannot turn one into another.
PATTERN = {
    "top_left": (255, 0, 0),
    "top_right": (0, 255, 0),
    "bottom_left": (0, 0, 255),
    "bottom_right": (255, 255, 0),
}
_QUADRANT_CENTRES = {
    "top_left": (SCREEN_W // 4, SCREEN_H // 4),
    "top_right": (3 * SCREEN_W // 4, SCREEN_H // 4),
    "bottom_left": (SCREEN_W // 4, 3 * SCREEN_H // 4),
    "bottom_right": (3 * SCREEN_W // 4, 3 * SCREEN_H // 4),
}
# The two-monitor desktop: two headless outputs of wlroots' default size side by
# side; its right half has colours of its own, so that each monitor's half is known.
WIDE_W, WIDE_H = 2560, 720
PATTERN_RIGHT = {
    "top_left": (255, 0, 255),
    "top_right": (0, 255, 255),
    "bottom_left": (255, 255, 255),
    "bottom_right": (255, 128, 0),
}
RDP_USER = "researcher"
RDP_PASSWORD = "Corr3ct-horse-battery-staple"
SPICE_PASSWORD = "spice-ticket-4711"
SPICE_SUBJECT = "C=FR,O=sdbox test,CN=bubble.test"


def tool_missing(*names: str) -> str | None:
    """The first of ``names`` not on PATH, if any."""
    return next((n for n in names if shutil.which(n) is None), None)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 30.0,
                  host: str = "127.0.0.1") -> None:  # fmt: skip
    """Wait until something listens on ``host``:port (or the process died)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before listening")
        with socket.socket() as s, contextlib.suppress(OSError):
            s.connect((host, port))
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on port {port} after {timeout} s")


def stop(process: subprocess.Popen[bytes]) -> None:
    """Stop a process we started, by its pid."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z"


def group_members(pgid: int) -> list[int]:
    """Live processes whose process group is ``pgid``."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


@contextlib.contextmanager
def xvfb(size: tuple[int, int] = (SCREEN_W, SCREEN_H)) -> Iterator[str]:
    """An Xvfb on a free display number of its own (``size``: its screen); yields ``":N"``.

    Numbers start high: low ones are what people type by hand and what
    wlroots (cage's Xwayland) takes for itself.
    """
    for _ in range(20):
        number = random.randrange(200, 900)
        if Path(f"/tmp/.X{number}-lock").exists() or Path(f"/tmp/.X11-unix/X{number}").exists():
            continue
        process = subprocess.Popen(
            [
                "Xvfb",
                f":{number}",
                "-screen",
                "0",
                f"{size[0]}x{size[1]}x24",
                "-nolisten",
                "tcp",
                "-noreset",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        socket_path = Path(f"/tmp/.X11-unix/X{number}")
        while process.poll() is None and not socket_path.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        if process.poll() is None and socket_path.exists():
            try:
                yield f":{number}"
            finally:
                stop(process)
            return
        stop(process)  # lost a race for that number: try another
    raise RuntimeError("no free X display number found")


def screenshot(display: str) -> tuple[int, int, bytes]:
    """The root window of ``display`` as (width, height, RGB bytes)."""
    ppm = subprocess.run(
        ["import", "-silent", "-window", "root", "-depth", "8", "ppm:-"],
        env={"DISPLAY": display, "PATH": os.environ["PATH"]},
        capture_output=True,
        check=True,
        timeout=30,
    ).stdout
    return parse_ppm(ppm)


def shows_pattern(display: str, tolerance: int = 60) -> bool:
    """Whether X11 ``display`` shows the test pattern (quadrant centres within tolerance)."""
    return pattern_in(*screenshot(display), tolerance=tolerance)


def pattern_in(width: int, height: int, pixels: bytes, tolerance: int = 60) -> bool:
    """Whether an RGB image shows the test pattern, 1:1, wherever its window was placed.

    The pattern's origin is the first pixel of the top-left colour (a window
    the compositor did not maximise is placed off the corner).
    """

    def near(offset: int, colour: tuple[int, int, int]) -> bool:
        got = pixels[offset : offset + 3]
        return len(got) == 3 and all(
            abs(a - b) <= tolerance for a, b in zip(got, colour, strict=True)
        )

    origin = next(
        (i for i in range(0, width * height * 3, 3) if near(i, PATTERN["top_left"])), None
    )
    if origin is None:
        return False
    oy, ox = divmod(origin // 3, width)
    for quadrant, (x, y) in _QUADRANT_CENTRES.items():
        if ox + x >= width or oy + y >= height:
            return False
        if not near(((oy + y) * width + ox + x) * 3, PATTERN[quadrant]):
            return False
    return True


def parse_ppm(ppm: bytes) -> tuple[int, int, bytes]:
    """(width, height, RGB bytes) of a binary PPM with maxval 255."""
    fields = ppm.split(maxsplit=4)
    width, height = int(fields[1]), int(fields[2])
    return width, height, fields[4][: width * height * 3]


def pattern_rows(pattern: dict[str, tuple[int, int, int]], width: int, height: int) -> list[bytes]:
    """The RGB rows of ``pattern``'s four quadrants over ``width`` x ``height``."""
    w, h = width // 2, height // 2
    rows = []
    for y in range(height):
        left = pattern["top_left" if y < h else "bottom_left"]
        right = pattern["top_right" if y < h else "bottom_right"]
        rows.append(bytes(left) * w + bytes(right) * (width - w))
    return rows


def quadrants_in(
    width: int, height: int, pixels: bytes, pattern: dict[str, tuple[int, int, int]],
    tolerance: int = 60,
) -> bool:  # fmt: skip
    """Whether an RGB image is ``pattern``'s four quadrants, filling it (no offset, no scaling)."""
    centres = {
        "top_left": (width // 4, height // 4), "top_right": (3 * width // 4, height // 4),
        "bottom_left": (width // 4, 3 * height // 4),
        "bottom_right": (3 * width // 4, 3 * height // 4),
    }  # fmt: skip
    for quadrant, (x, y) in centres.items():
        got = pixels[(y * width + x) * 3 : (y * width + x) * 3 + 3]
        if len(got) != 3 or any(
            abs(a - b) > tolerance for a, b in zip(got, pattern[quadrant], strict=True)
        ):
            return False
    return True


def paint_pattern(display: str, workdir: Path, halves: int = 1) -> None:
    """Make ``display``'s root window show the test pattern.

    ``halves=2``: a screen twice :data:`SCREEN_W` wide (or wider) shows
    :data:`PATTERN` on its left half and :data:`PATTERN_RIGHT` on its right
    half: a desktop meant to span two monitors, each half told apart.
    """
    image = workdir / "pattern.ppm"
    if halves == 1:
        width, height = SCREEN_W, SCREEN_H
        rows = pattern_rows(PATTERN, SCREEN_W, SCREEN_H)
    else:
        width, height = WIDE_W, WIDE_H
        left = pattern_rows(PATTERN, WIDE_W // 2, WIDE_H)
        right = pattern_rows(PATTERN_RIGHT, WIDE_W // 2, WIDE_H)
        rows = [a + b for a, b in zip(left, right, strict=True)]
    image.write_bytes(f"P6 {width} {height} 255\n".encode() + b"".join(rows))
    # ImageMagick's display sets the root background and exits (status 1
    # even on success); the screenshot below is the real check.
    subprocess.run(
        ["display", "-window", "root", str(image)],
        env={"DISPLAY": display, "PATH": os.environ["PATH"]},
        capture_output=True,
        timeout=30,
        check=False,
    )
    shot = screenshot(display)
    painted = shows_pattern(display) if halves == 1 else wide_pattern_in(*shot)
    if not painted:
        raise RuntimeError(f"could not paint the test pattern on {display}")


def wide_pattern_in(width: int, height: int, pixels: bytes) -> bool:
    """Whether an RGB image is the two-monitor desktop (:func:`paint_pattern`, ``halves=2``)."""
    half = width // 2
    rows = [pixels[y * width * 3 : (y + 1) * width * 3] for y in range(height)]
    left = b"".join(row[: half * 3] for row in rows)
    right = b"".join(row[half * 3 :] for row in rows)
    return quadrants_in(half, height, left, PATTERN) and quadrants_in(
        width - half, height, right, PATTERN_RIGHT
    )


# -- certificates -----------------------------------------------------------------


@dataclass(frozen=True)
class Issued:
    """A certificate and its key, in PEM."""

    cert: x509.Certificate
    key_pem: bytes

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def fingerprint(self) -> str:
        return "sha256:" + self.cert.fingerprint(hashes.SHA256()).hex()


def _name(subject: str) -> x509.Name:
    oids = {"C": NameOID.COUNTRY_NAME, "O": NameOID.ORGANIZATION_NAME, "CN": NameOID.COMMON_NAME}
    parts = [p.split("=", 1) for p in subject.split(",")]
    return x509.Name([x509.NameAttribute(oids[k.strip()], v.strip()) for k, v in parts])


def make_ca(subject: str = "C=FR,O=sdbox test,CN=sdbox test CA") -> Issued:
    """A self-signed CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    return Issued(cert, _key_pem(key))


def make_server_cert(subject: str, dns_names: list[str], issuer: Issued | None = None) -> Issued:
    """A TLS server certificate (self-signed when ``issuer`` is None)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    if issuer is None:
        issuer_name, signing_key = _name(subject), key
    else:
        issuer_name = issuer.cert.subject
        signing_key = serialization.load_pem_private_key(issuer.key_pem, None)  # type: ignore[assignment]
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in dns_names]), False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
    )
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(
                issuer.cert.public_key()  # type: ignore[arg-type]
            ),
            False,
        )
    return Issued(builder.sign(signing_key, hashes.SHA256()), _key_pem(key))


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@contextlib.contextmanager
def trusted_by_system(ca: Issued) -> Iterator[None]:
    """Put ``ca`` into OpenSSL's default CA directory (the system trust store) for a while.

    A hashed link in ``/etc/ssl/certs`` (OPENSSLDIR/certs) is what OpenSSL's
    default verify paths read, without rebuilding any bundle.
    """
    store = Path("/etc/ssl/certs")
    subject_hash = (
        subprocess.run(
            ["openssl", "x509", "-noout", "-subject_hash"],
            input=ca.cert_pem,
            capture_output=True,
            check=True,
            timeout=30,
        )
        .stdout.decode()
        .strip()
    )
    index = 0
    while (store / f"{subject_hash}.{index}").exists():
        index += 1
    link = store / f"{subject_hash}.{index}"
    link.write_bytes(ca.cert_pem)
    try:
        yield
    finally:
        link.unlink(missing_ok=True)


# -- RDP: freerdp-shadow-cli3 --------------------------------------------------------


@dataclass
class ShadowServer:
    """A running freerdp-shadow-cli3."""

    process: subprocess.Popen[bytes]
    port: int
    certificate: Issued
    log: Path

    def kill(self) -> None:
        """SIGKILL, by pid (the "server died" case)."""
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(10)


@contextlib.contextmanager
def shadow_server(
    display: str,
    workdir: Path,
    certificate: Issued,
    *,
    own_logon: bool = False,
    interact: bool = False,
    log_filters: tuple[str, ...] = (),
) -> Iterator[ShadowServer]:
    """``freerdp-shadow-cli3`` on 127.0.0.1 sharing ``display``, with ``certificate``.

    ``own_logon``: the server asks for no credential at connection (no NLA),
    as a bubble that runs its own logon screen does. ``interact``: the
    client's keys and pointer reach ``display`` (XTest), as in a bubble.
    ``log_filters``: FreeRDP log filters (``TAG:LEVEL``) for what a test reads
    in the server's log (``com.freerdp.core.gcc:DEBUG``: the client's monitors).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "config"
    # freerdp-shadow-cli3 reads (or else makes) $XDG_CONFIG_HOME/freerdp/shadow/shadow.{crt,key}.
    certs = config / "freerdp" / "shadow"
    certs.mkdir(parents=True, exist_ok=True)
    (certs / "shadow.crt").write_bytes(certificate.cert_pem)
    (certs / "shadow.key").write_bytes(certificate.key_pem)
    (certs / "shadow.key").chmod(0o600)
    sam = workdir / "SAM"
    hashed = subprocess.run(
        ["winpr-hash3", "-u", RDP_USER, "-p", RDP_PASSWORD, "-f", "sam"],
        capture_output=True,
        check=True,
        timeout=30,
    ).stdout.decode()
    sam.write_text(next(line for line in hashed.splitlines() if line.startswith(RDP_USER)) + "\n")
    port = free_port()
    log = workdir / "shadow.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                "freerdp-shadow-cli3",
                f"/port:{port}",
                "/bind-address:127.0.0.1",
                *(["-auth", "/sec:tls"] if own_logon else [f"/sam-file:{sam}"]),
                "+may-interact" if interact else "-may-interact",
                "/log-level:INFO",
                *([f"/log-filters:{','.join(log_filters)}"] if log_filters else []),
            ],
            env={
                "DISPLAY": display,
                "HOME": str(workdir),
                "XDG_CONFIG_HOME": str(config),
                "PATH": os.environ["PATH"],
            },
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for_port(port, process)
        yield ShadowServer(process, port, certificate, log)
    finally:
        stop(process)


# -- SPICE: QEMU ---------------------------------------------------------------------------


@dataclass
class SpiceServer:
    """A running QEMU with a TLS-only SPICE server."""

    process: subprocess.Popen[bytes]
    port: int
    ca: Issued
    certificate: Issued

    def kill(self) -> None:
        """SIGKILL, by pid."""
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(10)


@contextlib.contextmanager
def spice_server(workdir: Path) -> Iterator[SpiceServer]:
    """QEMU (``-nodefaults -S``, no disk) with SPICE on a TLS port of 127.0.0.1."""
    workdir.mkdir(parents=True, exist_ok=True)
    ca = make_ca()
    certificate = make_server_cert(SPICE_SUBJECT, ["bubble.test"], issuer=ca)
    x509_dir = workdir / "x509"
    x509_dir.mkdir(exist_ok=True)
    (x509_dir / "ca-cert.pem").write_bytes(ca.cert_pem)
    (x509_dir / "server-cert.pem").write_bytes(certificate.cert_pem)
    (x509_dir / "server-key.pem").write_bytes(certificate.key_pem)
    secret = workdir / "spice-password"
    secret.write_text(SPICE_PASSWORD)
    secret.chmod(0o600)
    port = free_port()
    process = subprocess.Popen(
        [
            "qemu-system-x86_64",
            "-machine",
            "none",
            "-nodefaults",
            "-S",
            "-display",
            "none",
            "-object",
            f"secret,id=spicepw,file={secret}",
            "-spice",
            f"tls-port={port},addr=127.0.0.1,x509-dir={x509_dir},password-secret=spicepw",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(workdir / "qemu.log").open("wb"),
        start_new_session=True,
    )
    try:
        wait_for_port(port, process)
        yield SpiceServer(process, port, ca, certificate)
    finally:
        stop(process)


# -- Wayland: cage ------------------------------------------------------------------


@dataclass
class Cage:
    """A headless cage: its Wayland socket, its Xwayland display, and how to screenshot it."""

    process: subprocess.Popen[bytes]
    runtime_dir: Path
    wayland: str
    xwayland: str
    uid: int | None
    gid: int | None

    def screenshot(self, output: str | None = None) -> tuple[int, int, bytes]:
        """The compositor's whole layout, or one ``output`` (``HEADLESS-2``), through grim."""
        ppm = subprocess.run(
            ["grim", *(["-o", output] if output else []), "-t", "ppm", "-"],
            env={
                "XDG_RUNTIME_DIR": str(self.runtime_dir),
                "WAYLAND_DISPLAY": self.wayland,
                "PATH": os.environ["PATH"],
            },
            user=self.uid,
            group=self.gid,
            extra_groups=[] if self.uid is not None else None,
            capture_output=True,
            check=True,
            timeout=30,
        ).stdout
        return parse_ppm(ppm)


@contextlib.contextmanager
def cage(workdir: Path, user: str | None, outputs: int = 1) -> Iterator[Cage]:
    """cage on the headless wlroots backend, run as ``user`` (cage refuses root).

    Its child only records the Xwayland display cage gives it, then waits.
    ``outputs``: headless outputs (``HEADLESS-1``, ...; 1280x720 each), which
    cage lays out side by side as it does a box's monitors.
    """
    import pwd

    uid = gid = None
    # Not under workdir: pytest's directories are root's, mode 0700, and the
    # compositor's user must reach its own runtime dir.
    runtime = Path(tempfile.mkdtemp(prefix="sdbox-cage-"))
    workdir.mkdir(parents=True, exist_ok=True)
    if user is not None:
        entry = pwd.getpwnam(user)
        uid, gid = entry.pw_uid, entry.pw_gid
        os.chown(runtime, uid, gid)
    runtime.chmod(0o700)
    env = {
        "PATH": os.environ["PATH"],
        "XDG_RUNTIME_DIR": str(runtime),
        "WLR_BACKENDS": "headless",
        "WLR_RENDERER": "pixman",
        "WLR_LIBINPUT_NO_DEVICES": "1",
        "WLR_HEADLESS_OUTPUTS": str(outputs),
    }
    child = 'echo "$DISPLAY" > "$XDG_RUNTIME_DIR/xdisplay"; exec sleep 100000'
    log = (workdir / "cage.log").open("wb")
    process = subprocess.Popen(
        ["cage", "--", "sh", "-c", child],
        env=env,
        user=uid,
        group=gid,
        extra_groups=[] if uid is not None else None,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        marker = runtime / "xdisplay"
        while not (marker.exists() and marker.read_text().strip()):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"cage did not start: {(workdir / 'cage.log').read_text()}")
            time.sleep(0.05)
        sockets = sorted(p.name for p in runtime.glob("wayland-*") if not p.name.endswith(".lock"))
        yield Cage(process, runtime, sockets[0], marker.read_text().strip(), uid, gid)
    finally:
        # cage ends its child; stopping by pid, then the group for the child.
        stop(process)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        log.close()
        shutil.rmtree(runtime, ignore_errors=True)


def user_descendants(root: int, user: str) -> dict[int, str]:
    """Live processes of ``user`` that descend from process ``root``: pid -> command name.

    Session clients and their reapers run as the session user under the
    agent; this finds every one, including a client whose pid the agent
    never learnt (the removal matrix, the soak).
    """
    import pwd

    uid = pwd.getpwnam(user).pw_uid
    parent: dict[int, int] = {}
    owned: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            owner = (entry / "status").read_text().split("\nUid:\t", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        name, rest = stat.split(" (", 1)[1].rsplit(")", 1)
        fields = rest.split()
        if fields[0] == "Z":
            continue
        parent[int(entry.name)] = int(fields[1])
        if int(owner) == uid:
            owned[int(entry.name)] = name
    found = {}
    for pid, name in owned.items():
        ancestor, hops = parent.get(pid, 0), 0
        while ancestor not in (0, 1, root) and hops < 64:
            ancestor, hops = parent.get(ancestor, 0), hops + 1
        if ancestor == root:
            found[pid] = name
    return found
