"""What a session is asked to be: endpoint, pin, user, credential, policy, display.

Everything here is validated once, on construction, so that the launchers
never put a malformed value on a client's argument stream (FreeRDP reads one
argument per line: a newline in a user name would inject an argument).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from urllib.parse import urlsplit

from sdbox.session.errors import SessionConfigError
from sdbox.session.keyboard import RDP_LAYOUTS

_FINGERPRINT = re.compile(r"^sha256:([0-9a-f]{64})$")
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*$")
_IPV4 = re.compile(r"^\d{1,3}(\.\d{1,3}){3}$")
_FORBIDDEN_CHARS = frozenset("\n\r\0")
# FreeRDP's desktop scale factor is 100-500 % (MS-RDPBCGR's DesktopScaleFactor); a
# box drives at most a few screens (cage extends one layout over them)
MIN_SCALE, MAX_SCALE = 100, 500
MAX_MONITORS = 4


class Protocol(Enum):
    """Remote desktop protocol of a bubble."""

    RDP = "rdp"
    SPICE = "spice"


@dataclass(frozen=True)
class Endpoint:
    """Where the bubble listens."""

    protocol: Protocol
    host: str
    port: int

    def __post_init__(self) -> None:
        if not (_HOSTNAME.match(self.host) or _IPV4.match(self.host)):
            raise SessionConfigError(f"Invalid host name in the endpoint: {self.host!r}.")
        if not 0 < self.port < 65536:
            raise SessionConfigError(f"Invalid port in the endpoint: {self.port}.")

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        """Parse ``rdp://HOST:PORT`` or ``spice://HOST:PORT`` (default ports 3389, 5901)."""
        parts = urlsplit(url)
        try:
            protocol = Protocol(parts.scheme)
        except ValueError:
            raise SessionConfigError(
                f"Unknown endpoint {url!r}: expected rdp://HOST:PORT or spice://HOST:PORT."
            ) from None
        if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
            raise SessionConfigError(f"Unexpected parts in the endpoint {url!r}.")
        try:
            port = parts.port
        except ValueError:
            raise SessionConfigError(f"Invalid port in the endpoint {url!r}.") from None
        default = 3389 if protocol is Protocol.RDP else 5901
        return cls(protocol, parts.hostname or "", port or default)

    def __str__(self) -> str:
        return f"{self.protocol.value}://{self.host}:{self.port}"


class Credential:
    """A session credential: never printed, never compared in logs, only revealed to a pipe."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not value:
            # An empty credential would make the client ask for one (FreeRDP
            # prompts, sdl-freerdp3 opens a dialog): refuse before starting.
            raise SessionConfigError("No session credential was given.")
        if _FORBIDDEN_CHARS & set(value):
            raise SessionConfigError("The session credential contains a line break.")
        self._value = value

    def reveal(self) -> str:
        """The secret itself; only for the client's input pipe and the redactor."""
        return self._value

    def __repr__(self) -> str:
        return "Credential(<redacted>)"

    __str__ = __repr__


@dataclass(frozen=True)
class Policy:
    """The project's session policy (from the signed project directory)."""

    audio: bool = False


@dataclass(frozen=True)
class Display:
    """Where the client draws: an X11 display, or a Wayland socket in a runtime dir.

    ``xwayland``: the X11 display is a Wayland compositor's Xwayland (the box's
    kiosk under cage), where some client paths behave differently.
    ``monitors``: how many screens the box drives (cage extends its layout
    across all of them); two or more make the session use each one.
    ``scale``: the screen's density as a percentage (100: an ordinary screen,
    200: a 4K panel of office size), which the remote desktop is asked to
    apply to its own rendering.
    """

    x11: str | None = None
    wayland: str | None = None
    runtime_dir: Path | None = None
    xwayland: bool = False
    monitors: int = 1
    scale: int = 100

    def __post_init__(self) -> None:
        if (self.x11 is None) == (self.wayland is None):
            raise SessionConfigError("A session needs exactly one display (X11 or Wayland).")
        if self.wayland is not None and self.runtime_dir is None:
            raise SessionConfigError("A Wayland display needs its XDG_RUNTIME_DIR.")
        if not 1 <= self.monitors <= MAX_MONITORS:
            raise SessionConfigError(
                f"A session draws on 1 to {MAX_MONITORS} monitors, not {self.monitors}."
            )
        if not MIN_SCALE <= self.scale <= MAX_SCALE:
            raise SessionConfigError(
                f"The display scale is {MIN_SCALE} to {MAX_SCALE} percent, not {self.scale}."
            )

    def environ(self) -> dict[str, str]:
        """The variables a client needs to reach this display."""
        if self.x11 is not None:
            return {"DISPLAY": self.x11, "GDK_BACKEND": "x11"}
        assert self.wayland is not None
        assert self.runtime_dir is not None
        return {
            "WAYLAND_DISPLAY": self.wayland,
            "XDG_RUNTIME_DIR": str(self.runtime_dir),
            "GDK_BACKEND": "wayland",
            "SDL_VIDEODRIVER": "wayland",
        }


def parse_fingerprint(text: str) -> str:
    """Normalise ``sha256:HEX`` (colons and case tolerated) to ``sha256:lowerhex``."""
    normal = text.strip().lower().replace(":", "")
    normal = normal.replace("sha256", "sha256:", 1)
    if not _FINGERPRINT.match(normal):
        raise SessionConfigError(
            f"Invalid server certificate fingerprint {text!r}: expected sha256:<64 hex digits>."
        )
    return normal


def check_text(what: str, value: str) -> str:
    """Refuse values that would break a line-based argument stream."""
    if _FORBIDDEN_CHARS & set(value):
        raise SessionConfigError(f"The {what} contains a line break.")
    return value


@dataclass(frozen=True)
class SessionSpec:
    """Everything needed to start one session for one project.

    ``server_fingerprint`` pins the bubble's certificate (RDP: FreeRDP's own
    pin; SPICE: checked by sdbox before the viewer starts). SPICE also needs
    ``ca_pem`` and ``host_subject``, which remote-viewer verifies itself.
    """

    endpoint: Endpoint
    user: str
    # None: the bubble runs its own logon screen (the "interactive" provider)
    credential: Credential | None = field(repr=False)
    display: Display
    server_fingerprint: str | None = None
    policy: Policy = Policy()
    ca_pem: str | None = None
    host_subject: str | None = None
    connect_timeout: float = 20.0
    # the box's XKB layout (sdbox.session.keyboard): RDP announces it to the server;
    # SPICE sends scancodes and the guest's own layout decides. None: the client's default.
    keyboard_layout: str | None = None

    def __post_init__(self) -> None:
        check_text("user name", self.user)
        if self.keyboard_layout is not None and self.keyboard_layout not in RDP_LAYOUTS:
            raise SessionConfigError(f"No RDP keyboard layout for {self.keyboard_layout!r}.")
        if self.server_fingerprint is not None:
            object.__setattr__(
                self, "server_fingerprint", parse_fingerprint(self.server_fingerprint)
            )
        if self.endpoint.protocol is Protocol.RDP:
            if not self.user and self.credential is not None:
                raise SessionConfigError("An RDP session needs a user name.")
            if self.server_fingerprint is None:
                raise SessionConfigError("An RDP session needs the server's certificate pin.")
        else:
            if not self.ca_pem or not self.host_subject:
                raise SessionConfigError(
                    "A SPICE session needs the server CA and the server's certificate subject."
                )
            check_text("certificate subject", self.host_subject)
        if self.connect_timeout <= 0:
            raise SessionConfigError("The connect timeout must be positive.")
