"""RDP sessions on FreeRDP 3 (``xfreerdp3``; ``sdl-freerdp3`` on a Wayland display).

Hardening, and why (docs/ARCHITECTURE.md, "Sessions"):

- every argument goes through ``/args-from:stdin``: the password never appears
  in ``/proc/PID/cmdline`` or ``environ``;
- ``/cert:deny,fingerprint:sha256:…`` pins the server; FreeRDP would still
  accept a certificate that a trusted CA issued for the right name, so the
  client gets ``SSL_CERT_FILE``/``SSL_CERT_DIR`` pointing at an empty file and
  an empty directory, and an empty ``OPENSSL_CONF``: there is no CA to trust;
- ``/sec:rdp:off``: legacy RDP security has no server certificate at all, so a
  server (or a man in the middle) choosing it would bypass the pin;
- ``-clipboard`` (on by default in FreeRDP), no drive/printer/serial/
  parallel/USB/smart card/microphone option is ever given (all off by
  default), and the features that make FreeRDP load the device-redirection
  channel on its own are off: without audio, neither cliprdr nor rdpdr is
  loaded at all; audio output only where the project's policy allows it;
- full screen, no Ctrl+Alt+Enter toggle, no decorations, keyboard grabbed;
- on two screens, ``/multimon`` with the monitors named (the server learns the
  layout); on a dense screen, the server's own desktop scale (``/scale-desktop``,
  ``/scale-device``), not the client stretching pixels;
- the credential is always given, and stdin is at EOF once the arguments are
  read, so FreeRDP never prompts.

"Connected" is FreeRDP's own connection state machine reaching
``CONNECTION_STATE_ACTIVE``: the TLS pin, NLA, licensing, capability exchange
and finalisation have all succeeded, and the server is sending the desktop.
Only the ``com.freerdp.core.rdp`` tag is raised to DEBUG to see it: the NLA
tags (which can dump authentication messages) stay at WARN.
"""

from __future__ import annotations

import re
from pathlib import Path

from sdbox.session.base import Launch, LineEvent, Session
from sdbox.session.keyboard import rdp_layout_argument
from sdbox.session.outcome import EndReason, rdp_exit_name, rdp_reason
from sdbox.session.spec import SessionSpec, check_text
from sdbox.session.supervisor import DEFAULT_SESSION_USER

X11_CLIENT = "xfreerdp3"
WAYLAND_CLIENT = "sdl-freerdp3"
STATE_TAG = "com.freerdp.core.rdp"
_CONNECTED = re.compile(r"rdp_client_transition_to_state\].*--> CONNECTION_STATE_ACTIVE\s*$")
_ERRCONNECT = re.compile(r"\b(ERRCONNECT_[A-Z_]+)\b")
_CERT_REFUSED = re.compile(r"certificate not trusted|Host key verification failed")


# /scale-device takes only these (MS-RDPBCGR's DeviceScaleFactor)
DEVICE_SCALES = (100, 140, 180)


def device_scale(scale: int) -> int:
    """The device scale factor nearest ``scale`` percent (a tie goes to the larger one)."""
    return min(DEVICE_SCALES, key=lambda device: (abs(device - scale), -device))


class RdpSession(Session):
    """A hardened FreeRDP 3 session."""

    def __init__(
        self,
        spec: SessionSpec,
        *,
        run_as: str | None = DEFAULT_SESSION_USER,
        home_base: Path | None = None,
        keep_lines: int = 400,
        diagnostic_log_filters: tuple[str, ...] = (),
    ) -> None:
        """``diagnostic_log_filters``: extra FreeRDP log filters (``TAG:LEVEL``) for tests
        and diagnosis; never raise the NLA tags, which can dump authentication messages."""
        super().__init__(spec, run_as=run_as, home_base=home_base, keep_lines=keep_lines)
        for item in diagnostic_log_filters:
            check_text("log filter", item)
        self._log_filters = (f"{STATE_TAG}:DEBUG", *diagnostic_log_filters)
        self._last_error = ""
        self._cert_refused = False

    @property
    def client(self) -> str:
        """The FreeRDP binary this session runs."""
        return X11_CLIENT if self.spec.display.x11 is not None else WAYLAND_CLIENT

    def arguments(self) -> list[str]:
        """The client's arguments, one per line on its stdin (they include the secret)."""
        spec = self.spec
        assert spec.server_fingerprint is not None
        args = [
            f"/v:{spec.endpoint.host}:{spec.endpoint.port}",
            *self._logon_arguments(),
            f"/cert:deny,fingerprint:{spec.server_fingerprint}",
            "-clipboard",
            "-drives",
            "-home-drive",
            # FreeRDP turns device redirection (the rdpdr channel) on by itself
            # whenever network auto-detection, heartbeats or multitransport
            # are on (all three are by default): turn them off so that no
            # device channel exists at all. Auto-detection has no switch, only
            # a settings override.
            "/tune:FreeRDP_NetworkAutoDetect:false",
            "-heartbeat",
            "-multitransport",
            *self._window_arguments(),
            *self._scale_arguments(),
            "-toggle-fullscreen",
            "-decorations",
            "+grab-keyboard",
            *self._keyboard_arguments(),
            "/log-level:WARN",
            "/log-filters:" + ",".join(self._log_filters),
        ]
        if spec.policy.audio:
            # rdpsnd needs rdpdr registered (FreeRDP, and Windows servers):
            # audio brings an rdpdr channel with no device in it.
            args += ["/sound", "/audio-mode:0"]
        else:
            args += ["/audio-mode:2"]
        return args

    def _logon_arguments(self) -> list[str]:
        spec = self.spec
        if spec.credential is not None:
            return [f"/u:{spec.user}", f"/p:{spec.credential.reveal()}", "/sec:rdp:off"]
        # The bubble's own logon screen: TLS without NLA (NLA needs the
        # password before the session exists), and an empty password given
        # explicitly, or FreeRDP would prompt for one on its terminal.
        return [f"/u:{spec.user}", "/p:", "/sec:tls"]

    def _keyboard_arguments(self) -> list[str]:
        # RDP sends scancodes; the server makes characters with the layout announced
        # here (a Windows server sets the session's input language from it).
        layout = self.spec.keyboard_layout
        return [rdp_layout_argument(layout)] if layout is not None else []

    def _window_arguments(self) -> list[str]:
        display = self.spec.display
        if display.x11 is not None:
            args = ["/f", *self._monitor_arguments()]
            if display.xwayland:
                # Seen with FreeRDP 3.10.3 under cage's Xwayland (pixman
                # renderer): the GFX pipeline leaves the window black, while
                # plain bitmap updates draw. Re-check on the box's GPU.
                args.append("-gfx")
            return args
        # Under cage the compositor sizes the one window to the output itself;
        # sdl-freerdp3 3.10's own full-screen mode fails its pre-connect on a
        # headless wlroots output (no DPI, no renderer), and so does its
        # /multimon (seen here with two headless outputs). On two screens the SDL
        # client gets one window spanning both (cage's layout): a desktop the
        # server sees as one wide monitor. Not tried on a real DRM output.
        return []

    def _monitor_arguments(self) -> list[str]:
        # Two screens: the server is told of each monitor (MS-RDPBCGR's monitor
        # layout), so that a Windows desktop maximises windows to one screen and
        # puts its taskbar on the first; the window covers every monitor named.
        # Xwayland numbers cage's outputs 0..n-1, as /list:monitor shows.
        count = self.spec.display.monitors
        if count < 2:
            return []
        return ["/multimon", "/monitors:" + ",".join(str(i) for i in range(count))]

    def _scale_arguments(self) -> list[str]:
        # A dense screen: the server renders its desktop at this scale (text and
        # controls of a readable size) instead of the client magnifying pixels.
        scale = self.spec.display.scale
        if scale == 100:
            return []
        return [f"/scale-desktop:{scale}", f"/scale-device:{device_scale(scale)}"]

    def launch(self, home: Path) -> Launch:
        """``xfreerdp3 /args-from:stdin`` with an empty trust store in the private home."""
        payload = "\n".join(self.arguments()) + "\n"
        return Launch(
            argv=[self.client, "/args-from:stdin"],
            stdin_data=payload.encode(),
            home_files={"empty-ca.pem": "", "empty-ca.d/.keep": "", "openssl.cnf": ""},
            extra_env={
                "SSL_CERT_FILE": str(home / "empty-ca.pem"),
                "SSL_CERT_DIR": str(home / "empty-ca.d"),
                "OPENSSL_CONF": str(home / "openssl.cnf"),
            },
        )

    def classify(self, line: str) -> LineEvent | None:
        """Connected on ``--> CONNECTION_STATE_ACTIVE``; remembers the last ERRCONNECT."""
        if _CONNECTED.search(line):
            return LineEvent(connected=True)
        found = _ERRCONNECT.search(line)
        if found:
            self._last_error = found.group(1)
        if _CERT_REFUSED.search(line):
            self._cert_refused = True
        return None

    def outcome(self, status: int, *, was_connected: bool) -> tuple[EndReason, str]:
        """Map FreeRDP's exit status (``XF_EXIT_*``) to a reason."""
        reason = rdp_reason(status, was_connected=was_connected)
        if status == 143 and not self._cert_refused:
            # 143 is every TLS failure; without FreeRDP's own "not trusted"
            # line it was the handshake itself (protocol, ciphers) that failed.
            reason = EndReason.PROTOCOL_ERROR
        detail = f"{self.client} exit status {status} ({rdp_exit_name(status)})"
        if self._last_error:
            detail += f", last error {self._last_error}"
        return reason, detail
