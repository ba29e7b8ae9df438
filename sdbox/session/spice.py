"""SPICE sessions on ``remote-viewer`` (virt-viewer).

- The connection file (``.vv``, with the password) goes on stdin
  (``remote-viewer -``): nothing secret in argv, environ or on disk.
- TLS only: ``tls-port`` and no plain ``port``, ``secure-channels=all``, the
  bubble CA as ``ca`` and the server's subject as ``host-subject``; when the
  spec carries a fingerprint, sdbox also checks the server's certificate
  against it before the viewer starts (a CA-valid certificate for the right
  subject is not enough, as for RDP).
- USB redirection, USB auto-share and smart card off in the ``.vv`` (and
  ``--spice-disable-usbredir``); clipboard sharing off through the viewer's
  settings file (``share-clipboard=false``) in the private config dir; audio
  off unless the policy allows it.
- ``--kiosk --kiosk-quit=on-disconnect``: full screen, no menus, and the
  viewer exits when the server goes away.
- two screens: guest display N full screen on monitor N (``monitor-mapping``).
  A dense screen is the guest's to honour (its own DPI setting): the viewer
  shows the guest's pixels 1:1, and GTK 3's ``GDK_SCALE`` does nothing on
  Wayland, where the viewer runs under cage.

remote-viewer does not exit after a TLS or authentication failure in kiosk
mode (it shows a dialog nobody may dismiss): the launcher recognises those
failures in its ``--debug`` output and ends the viewer itself, and the
session's connect timeout covers anything else. "Connected" is the viewer's
``main channel: opened``: spice-gtk emits it once the main channel's TLS
handshake, the subject check and the ticket (password) check have all passed.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import ssl
from pathlib import Path

from sdbox.session.base import Launch, LineEvent, Session
from sdbox.session.errors import SessionFailed
from sdbox.session.outcome import EndReason, SessionEnded

CLIENT = "remote-viewer"
_CONNECTED = re.compile(r"main channel: opened")
_FAILURES: tuple[tuple[re.Pattern[str], EndReason], ...] = (
    (
        re.compile(r"ssl_verify.*verification failed|subject .* verification failed"),
        EndReason.CERTIFICATE_REJECTED,
    ),
    (re.compile(r"SSL_connect"), EndReason.CERTIFICATE_REJECTED),
    (re.compile(r"main channel: auth failure"), EndReason.AUTH_FAILED),
    (
        re.compile(r"main channel: failed to connect|Unable to connect|Connection refused"),
        EndReason.UNREACHABLE,
    ),
)


def _vv_value(text: str) -> str:
    # GKeyFile values are one line; newlines are written as the two
    # characters backslash-n, which GKeyFile turns back into newlines.
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "")


class SpiceSession(Session):
    """A hardened remote-viewer session."""

    def connection_file(self) -> str:
        """The ``.vv`` file for this spec (includes the secret: stdin only)."""
        spec = self.spec
        assert spec.ca_pem is not None
        assert spec.host_subject is not None
        lines = [
            "[virt-viewer]",
            "type=spice",
            f"host={spec.endpoint.host}",
            f"tls-port={spec.endpoint.port}",
            f"ca={_vv_value(spec.ca_pem.strip())}",
            f"host-subject={_vv_value(spec.host_subject)}",
            "secure-channels=all",
            "enable-usbredir=0",
            "enable-usb-autoshare=0",
            "enable-smartcard=0",
            "fullscreen=1",
            "delete-this-file=0",
        ]
        if spec.credential is not None:  # None: the guest's own logon screen
            lines.insert(4, f"password={_vv_value(spec.credential.reveal())}")
        if spec.user:
            lines.append(f"username={_vv_value(spec.user)}")
        return "\n".join(lines) + "\n"

    def settings_file(self) -> str:
        """remote-viewer's settings: no clipboard; on two screens, one guest display on each.

        ``monitor-mapping`` in the ``[fallback]`` group (every guest) puts guest
        display N full screen on client monitor N; a guest with one display
        still gets one window, and a guest with two (two heads, or two video
        devices) fills both screens.
        """
        lines = ["[virt-viewer]", "share-clipboard=false"]
        count = self.spec.display.monitors
        if count > 1:
            mapping = ";".join(f"{n}:{n}" for n in range(1, count + 1))
            lines += ["", "[fallback]", f"monitor-mapping={mapping}"]
        return "\n".join(lines) + "\n"

    def launch(self, home: Path) -> Launch:
        """``remote-viewer --kiosk … -`` with the settings file in the private config dir."""
        argv = [
            CLIENT,
            "--kiosk",
            "--kiosk-quit=on-disconnect",
            # monitor-mapping (below) only applies with --full-screen (remote-viewer(1))
            "--full-screen",
            "--debug",  # the connection events the supervisor reads (no secrets in them)
            "--spice-disable-usbredir",
        ]
        if not self.spec.policy.audio:
            argv.append("--spice-disable-audio")
        argv.append("-")
        return Launch(
            argv=argv,
            stdin_data=self.connection_file().encode(),
            home_files={
                ".config/virt-viewer/settings": self.settings_file(),
                "empty-ca.pem": "",
                "empty-ca.d/.keep": "",
            },
            extra_env={
                "SSL_CERT_FILE": str(home / "empty-ca.pem"),
                "SSL_CERT_DIR": str(home / "empty-ca.d"),
            },
        )

    async def preflight(self) -> None:
        """Check the server's certificate against the pin before the viewer starts."""
        expected = self.spec.server_fingerprint
        if expected is None:
            return
        endpoint = self.spec.endpoint
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        # Only the certificate's identity is looked at here (the pin); the
        # viewer then does the full CA + subject verification itself.
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        try:
            _reader, writer = await asyncio.wait_for(
                asyncio.open_connection(endpoint.host, endpoint.port, ssl=context),
                self.spec.connect_timeout,
            )
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            raise SessionFailed(
                SessionEnded(EndReason.UNREACHABLE, f"TLS probe of {endpoint}: {exc!r}")
            ) from exc
        ssl_object = writer.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object else None
        writer.close()
        if der is None:
            raise SessionFailed(
                SessionEnded(EndReason.CERTIFICATE_REJECTED, "server sent no certificate")
            )
        actual = "sha256:" + hashlib.sha256(der).hexdigest()
        if actual != expected:
            raise SessionFailed(
                SessionEnded(
                    EndReason.CERTIFICATE_REJECTED,
                    f"server certificate {actual} is not the pinned {expected}",
                )
            )

    def classify(self, line: str) -> LineEvent | None:
        """Connected on ``main channel: opened``; TLS/auth failures end the viewer."""
        if _CONNECTED.search(line):
            return LineEvent(connected=True)
        if self.connected:
            return None
        for pattern, reason in _FAILURES:
            if pattern.search(line):
                return LineEvent(failure=reason, detail=line.strip()[-300:])
        return None

    def outcome(self, status: int, *, was_connected: bool) -> tuple[EndReason, str]:
        """remote-viewer exits 0 after a disconnect in kiosk mode; anything else is a failure."""
        detail = f"{CLIENT} exit status {status}"
        if status == 0:
            return (EndReason.CONNECTION_LOST if was_connected else EndReason.UNREACHABLE), detail
        return EndReason.CLIENT_FAILED, detail
