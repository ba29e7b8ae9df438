"""The agent's configuration (``/etc/sdbox/agent.toml``), declared once.

`sdbox agent --print-config-reference` prints every setting with its default
and help, generated from these declarations.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from sdbox.config import load_file, setting
from sdbox.session.keyboard import layout_problem

if TYPE_CHECKING:
    from sdbox.identity import IdentityConfig

DEFAULT_PATH = Path("/etc/sdbox/agent.toml")


def _positive(value: float) -> str | None:
    return None if value > 0 else "must be greater than 0"


def _ppi(value: int) -> str | None:
    # mindtct is tuned for 500 ppi; far from it, its block sizes no longer fit the ridges
    return None if 250 <= value <= 1000 else "must be between 250 and 1000"


def _usb_ids(values: list[str]) -> str | None:
    for value in values:
        if not re.fullmatch(r"[0-9A-Fa-f]{4}:[0-9A-Fa-f]{4}", value):
            return f"{value!r} is not a USB id VVVV:PPPP (hexadecimal vendor:product)"
    return None


def _endpoint_patterns(values: list[str]) -> str | None:
    for value in values:
        if not re.fullmatch(r"[A-Za-z0-9.*?\[\]-]+:[0-9*]+", value):
            return f"{value!r} is not HOST:PORT (wildcards * and ? allowed)"
    return None


@dataclass(frozen=True)
class TrustConfig:
    """Where trust comes from."""

    anchors: Path = setting(
        Path("/etc/sdbox/trust/roots.pem"), help="PEM bundle of trusted root certificates"
    )
    intermediates: Path = setting(
        Path("/etc/sdbox/trust/intermediates.pem"), help="issuing CA certificates (optional file)"
    )
    crl_dir: Path = setting(Path("/var/lib/sdbox/crl"), help="cached CRLs (and the time floor)")
    build_time: str = setting(
        "2026-01-01T00:00:00+00:00", help="the image's build time: the lowest trusted clock"
    )
    crl_grace_hours: float = setting(
        0.0, help="how long past nextUpdate a cached CRL is still accepted"
    )
    check_revocation: bool = setting(
        True, help="refuse when a CRL is missing or stale (never off in production)"
    )
    crl_urls: list[str] = setting(
        [], help="CRL distribution points to refresh besides those the intermediates name"
    )


@dataclass(frozen=True)
class CardConfig:
    """Which readers to watch."""

    readers: list[str] = setting([], help="reader names to use (empty: every reader)")
    project_catalogue: Path = setting(
        Path("/etc/sdbox/project-catalogue.json"),
        help="one-project cards: the centre's signed catalogue of their projects "
        "(endpoint, server certificate, policy; docs/card-variants.md)",
    )


@dataclass(frozen=True)
class SensorConfig:
    """The fingerprint sensor."""

    kind: Literal["libfprint", "emulated", "file", "none"] = setting(
        "none",
        help="libfprint (an image sensor; minutiae by libfprint's NBIS mindtct), none (PIN where "
        "allowed), emulated (test: a seeded synthetic finger), file (test)",
    )
    driver: str = setting(
        "", help="libfprint: the driver to use (empty: the first device that captures images)"
    )
    ppi: int = setting(
        500, help="libfprint: the sensor's resolution in pixels per inch", check=_ppi
    )
    seed: int = setting(1001, help="emulated: the synthetic finger's identity seed")
    path: str = setting("", help="file: the template presented")
    timeout_s: float = setting(30.0, help="how long to wait for a finger", check=_positive)
    hotplug: bool = setting(
        True,
        help="libfprint: watch udev for the sensor being plugged in and out (the finger prompt "
        "waits for it instead of failing)",
    )
    usb_ids: list[str] = setting(
        [],
        help="USB ids (VVVV:PPPP) of the box's sensor; empty: every sensor libfprint's udev hwdb "
        "lists (for [sensor] driver when set)",
        check=_usb_ids,
    )


def _monitors(value: int) -> str | None:
    return None if 0 <= value <= 4 else f"{value} is not 0 (count them) or 1 to 4 screens"


def _scale(value: int) -> str | None:
    if value == 0 or 100 <= value <= 500:
        return None
    return f"{value} is not 0 (the generation's) or 100 to 500 percent"


@dataclass(frozen=True)
class SessionConfig:
    """Where and as whom session clients run."""

    xwayland: bool = setting(
        True, help="the X11 display is the kiosk compositor's Xwayland (cage on the box)"
    )
    x11_display: str = setting(
        "", help="X11 display of the session clients (empty: native Wayland)"
    )
    wayland_display: str = setting("wayland-0", help="Wayland display name (when no X11 display)")
    runtime_dir: str = setting(
        "/run/sdbox/session", help="XDG_RUNTIME_DIR holding the Wayland socket"
    )
    user: str = setting(
        "sdbox-session",
        help="unprivileged account the clients run as ('' = the agent's own, tests only)",
    )
    connect_timeout_s: float = setting(
        20.0, help="how long a session may take to connect", check=_positive
    )
    monitors: int = setting(
        0, help="screens a session spans (0: count the connected DRM outputs at each start; "
        "cage extends over all of them)", check=_monitors,
    )  # fmt: skip
    scale: int = setting(
        0, help="the screen's density in percent, asked of the remote desktop (0: the "
        "generation's [display] scale in /etc/sdbox/generation.toml)", check=_scale,
    )  # fmt: skip


def _layouts(values: list[str]) -> str | None:
    for value in values:
        problem = layout_problem(value)
        if problem is not None:
            return problem
    return None


@dataclass(frozen=True)
class KeyboardConfig:
    """The box's keyboard: its layout and those the researcher may pick on the greeter."""

    layout: str = setting(
        "us",
        help="the box's XKB layout (fr, de, gb, us, ch...): the greeter's (cage) and the one RDP "
        "sessions announce, until the researcher picks another on the greeter",
        check=layout_problem,
    )
    choices: list[str] = setting(
        ["fr", "de", "gb", "us"],
        help="the XKB layouts the greeter offers (the box's layout is always one); the choice is "
        "kept in the state directory",
        check=_layouts,
    )


@dataclass(frozen=True)
class CredentialConfig:
    """Where one-time session credentials come from."""

    provider: Literal["broker", "interactive"] = setting(
        "broker",
        help="broker (one-time credential from the centre) or interactive (the bubble's own logon)",
    )
    broker_url: str = setting("", help="the centre's broker, reachable through the tunnel")
    broker_anchors: Path = setting(
        Path("/etc/sdbox/trust/roots.pem"), help="roots for the broker's TLS certificate"
    )
    timeout_s: float = setting(10.0, help="broker request timeout", check=_positive)


@dataclass(frozen=True)
class IdentityConfigSection:
    """The box's own identity."""

    kind: Literal["tpm", "development"] = setting(
        "tpm", help="tpm (key in the TPM via PKCS#11) or development (software key; logged as such)"
    )
    pkcs11_module: Path = setting(
        Path("/usr/lib/x86_64-linux-gnu/pkcs11/libtpm2_pkcs11.so"), help="tpm: PKCS#11 module"
    )
    token_label: str = setting("sdbox-box", help="tpm: token label")
    key_label: str = setting("box-identity", help="tpm: key label")
    pin_file: Path = setting(
        Path("/var/lib/sdbox/identity/token-pin"), help="tpm: root-only file with the token PIN"
    )
    key_file: Path = setting(
        Path("/var/lib/sdbox/identity/dev-key.pem"), help="development: software key"
    )
    certificate: Path = setting(Path("/var/lib/sdbox/identity/box.pem"), help="the box certificate")
    tpm_store: Path = setting(
        Path("/var/lib/sdbox/identity/tpm2-pkcs11"),
        help="tpm: libtpm2-pkcs11's token store (TPM2_PKCS11_STORE), on the sealed partition",
    )
    tcti: str = setting(
        "device:/dev/tpmrm0",
        help="tpm: how to reach the TPM (TPM2_PKCS11_TCTI); the kernel resource manager on a box",
    )

    def identity_config(self) -> IdentityConfig:
        """The library's view of this section (sdbox.identity)."""
        # imported here: sdbox.identity loads cryptography's X.509 stack, which the
        # boot-time commands that only read this file (`sdbox tunnel clock-floor`) never use
        from sdbox.identity import IdentityConfig  # noqa: PLC0415

        return IdentityConfig(
            kind=self.kind, certificate=self.certificate, key_file=self.key_file,
            pkcs11_module=self.pkcs11_module, token_label=self.token_label,
            key_label=self.key_label, pin_file=self.pin_file, tpm_store=self.tpm_store,
            tcti=self.tcti,
        )  # fmt: skip


@dataclass(frozen=True)
class PolicyConfig:
    """What the image allows."""

    allowed_endpoints: list[str] = setting(
        [],
        help="bubble endpoints a directory may name (HOST:PORT, wildcards)",
        check=_endpoint_patterns,
    )
    renewal_window_days: int = setting(
        30, help="renew a project certificate this many days before it expires"
    )

    def endpoint_allowed(self, endpoint: str) -> bool:
        """Whether ``endpoint`` matches the allow-list (empty list: nothing allowed)."""
        return any(fnmatch.fnmatchcase(endpoint, pattern) for pattern in self.allowed_endpoints)


@dataclass(frozen=True)
class RenewalConfig:
    """Remote certificate renewal (CMP) and its centre."""

    cmp_url: str = setting("", help="the CA's CMP endpoint (HTTP, through the tunnel)")
    cmp_server_cert: Path = setting(
        Path("/etc/sdbox/trust/cmp-server.pem"),
        help="the CMP server's protection certificate (pinned; must chain to the anchors)",
    )
    journal: Path = setting(
        Path("/var/lib/sdbox/renewal/journal.json"), help="where an interrupted renewal is noted"
    )
    timeout_s: float = setting(10.0, help="CMP request timeout", check=_positive)
    max_wait_s: float = setting(
        30.0, help="how long to poll a CA that answers 'waiting' before giving up for now"
    )
    dev_centre_pki: str = setting(
        "", help="development only: play the centre from this PKI directory"
    )
    dev_management_key_file: str = setting(
        "", help="development only: file with the card management key (hex), mode 0600"
    )


@dataclass(frozen=True)
class TunnelConfig:
    """The tunnel to the centre, as the agent follows it (its daemon keeps it up)."""

    watch: bool = setting(
        False,
        help="follow the tunnel to the centre through charon's sockets: sessions open only while "
        "it is up, and one lost for longer than grace_s ends them; false on a site without a tunnel "
        "(lab, demo)",
    )
    vici_socket: Path = setting(
        Path("/run/charon.vici"), help="charon's VICI socket (its up/down events, its SAs)"
    )
    notify_socket: Path = setting(
        Path("/run/charon.enfy"),
        help="charon's error-notify socket (why the tunnel was refused or lost)",
    )
    grace_s: float = setting(
        20.0,
        help="how long a running session waits for a lost tunnel to come back; back in time, "
        "it is reopened with a fresh credential and no new finger, else it ends (reason network)",
        check=_positive,
    )


@dataclass(frozen=True)
class AgentConfig:
    """The whole agent configuration."""

    trust: TrustConfig = setting(TrustConfig(), help="trust anchors, CRLs, clock floor")
    card: CardConfig = setting(CardConfig(), help="card readers")
    sensor: SensorConfig = setting(SensorConfig(), help="fingerprint sensor")
    session: SessionConfig = setting(SessionConfig(), help="session clients")
    keyboard: KeyboardConfig = setting(KeyboardConfig(), help="keyboard layout")
    credentials: CredentialConfig = setting(CredentialConfig(), help="session credentials")
    identity: IdentityConfigSection = setting(IdentityConfigSection(), help="the box identity")
    policy: PolicyConfig = setting(PolicyConfig(), help="image policy")
    renewal: RenewalConfig = setting(RenewalConfig(), help="certificate renewal")
    tunnel: TunnelConfig = setting(TunnelConfig(), help="the tunnel to the centre")
    state_dir: Path = setting(Path("/var/lib/sdbox"), help="the agent's state directory")
    fleet_config: Path = setting(
        Path("/etc/sdbox/fleet.toml"),
        help="the box's fleet configuration (sdbox fleet): the support screen's 'send diagnostics' "
        "uploads through it; a box without the file says it is not configured",
    )
    watchdog: bool = setting(True, help="send watchdog keep-alives when systemd asks for them")


def load(path: Path = DEFAULT_PATH) -> AgentConfig:
    """Load and validate the agent configuration."""
    return load_file(AgentConfig, path)
