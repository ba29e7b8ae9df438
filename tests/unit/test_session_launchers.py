"""What the launchers hand their clients, and how they read the clients' output.

The recorded lines below are verbatim output of FreeRDP 3.10.3 and
remote-viewer 11.0 on this project's test servers.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sdbox.session import (
    Credential,
    Display,
    Endpoint,
    EndReason,
    Policy,
    RdpSession,
    SessionConfigError,
    SessionSpec,
    SpiceSession,
)

FINGERPRINT = "sha256:" + "ab" * 32
SECRET = "s3cret-Pa55"
CA_PEM = "-----BEGIN CERTIFICATE-----\nMIIB\nAAAA\n-----END CERTIFICATE-----\n"

RDP_ACTIVE = (
    "[11:03:11:342] [9415:000024c8] [DEBUG][com.freerdp.core.rdp] - "
    "[rdp_client_transition_to_state][0x55e8e780af60]: "
    "CONNECTION_STATE_FINALIZATION_CLIENT_FONT_MAP --> CONNECTION_STATE_ACTIVE"
)
RDP_LEAVING_ACTIVE = (
    "[11:03:15:938] [9415:000024c8] [DEBUG][com.freerdp.core.rdp] - "
    "[rdp_client_transition_to_state][0x55e8e780af60]: "
    "CONNECTION_STATE_ACTIVE --> CONNECTION_STATE_INITIAL"
)
RDP_CERT_REFUSED = (
    "[11:09:47:875] [12917:00003277] [ERROR][com.freerdp.crypto] - "
    "[freerdp_tls_handshake]: certificate not trusted, aborting."
)
SPICE_OPENED = "(remote-viewer:10132): virt-viewer-DEBUG: 11:04:44.750: main channel: opened"
SPICE_SUBJECT_FAILED = (
    "(remote-viewer:10210): Spice-WARNING **: 11:04:54.445: ../subprojects/spice-common/"
    "common/ssl_verify.c:510:openssl_verify: ssl: subject 'C=FR,O=sdbox test,CN=evil.test' "
    "verification failed"
)
SPICE_AUTH_FAILED = (
    "(remote-viewer:10274): virt-viewer-DEBUG: 11:05:00.533: "
    "main channel: auth failure (wrong username/password?)"
)


def rdp_spec(**changes: object) -> SessionSpec:
    values: dict[str, object] = {
        "endpoint": Endpoint.parse("rdp://bubble.example:3389"),
        "user": "alice",
        "credential": Credential(SECRET),
        "display": Display(x11=":5"),
        "server_fingerprint": FINGERPRINT,
    }
    values.update(changes)
    return SessionSpec(**values)  # type: ignore[arg-type]


def spice_spec(**changes: object) -> SessionSpec:
    values: dict[str, object] = {
        "endpoint": Endpoint.parse("spice://bubble.example:5901"),
        "user": "",
        "credential": Credential(SECRET),
        "display": Display(x11=":5"),
        "ca_pem": CA_PEM,
        "host_subject": "C=FR,O=sdbox,CN=bubble.example",
    }
    values.update(changes)
    return SessionSpec(**values)  # type: ignore[arg-type]


# -- RDP ----------------------------------------------------------------------------


def test_rdp_secret_travels_only_on_stdin(tmp_path: Path) -> None:
    launch = RdpSession(rdp_spec(), run_as=None).launch(tmp_path)
    assert launch.argv == ["xfreerdp3", "/args-from:stdin"]
    assert SECRET not in " ".join(launch.argv)
    assert all(SECRET not in value for value in launch.extra_env.values())
    assert f"/p:{SECRET}" in launch.stdin_data.decode().splitlines()


def test_rdp_pins_the_server_and_empties_the_trust_store(tmp_path: Path) -> None:
    launch = RdpSession(rdp_spec(), run_as=None).launch(tmp_path)
    lines = launch.stdin_data.decode().splitlines()
    assert f"/cert:deny,fingerprint:{FINGERPRINT}" in lines
    assert "/sec:rdp:off" in lines
    assert launch.extra_env["SSL_CERT_FILE"] == str(tmp_path / "empty-ca.pem")
    assert launch.extra_env["SSL_CERT_DIR"] == str(tmp_path / "empty-ca.d")
    assert launch.home_files["empty-ca.pem"] == ""


def test_rdp_redirects_nothing_and_plays_audio_only_by_policy(tmp_path: Path) -> None:
    quiet = RdpSession(rdp_spec(), run_as=None).arguments()
    assert "-clipboard" in quiet
    assert "/audio-mode:2" in quiet
    for forbidden in (
        "/drive",
        "+drives",
        "+home-drive",
        "/printer",
        "/serial",
        "/parallel",
        "/usb",
        "/smartcard",
        "/microphone",
        "/sound",
    ):
        assert not any(arg.startswith(forbidden) for arg in quiet), forbidden
    loud = RdpSession(rdp_spec(policy=Policy(audio=True)), run_as=None).arguments()
    assert "/sound" in loud
    assert "/microphone" not in " ".join(loud)


def test_rdp_connected_only_on_entering_the_active_state() -> None:
    session = RdpSession(rdp_spec(), run_as=None)
    event = session.classify(RDP_ACTIVE)
    assert event is not None
    assert event.connected
    assert session.classify(RDP_LEAVING_ACTIVE) is None


@pytest.mark.parametrize(
    ("status", "connected", "cert_line", "reason"),
    [
        (132, False, False, EndReason.AUTH_FAILED),
        (143, False, True, EndReason.CERTIFICATE_REJECTED),
        (143, False, False, EndReason.PROTOCOL_ERROR),
        (147, True, False, EndReason.CONNECTION_LOST),
        (147, False, False, EndReason.UNREACHABLE),
        (131, False, False, EndReason.UNREACHABLE),
        (2, True, False, EndReason.LOGGED_OFF),
        (3, True, False, EndReason.IDLE_TIMEOUT),
        (5, True, False, EndReason.REPLACED),
        (7, False, False, EndReason.SERVER_REFUSED),
        (18, False, False, EndReason.LICENSING),
        (135, False, False, EndReason.ACCOUNT_PROBLEM),
        (154, False, False, EndReason.AUTH_FAILED),
        (-11, True, False, EndReason.CLIENT_FAILED),
        (250, False, False, EndReason.CLIENT_FAILED),
    ],
)
def test_rdp_exit_statuses_become_reasons(
    status: int, connected: bool, cert_line: bool, reason: EndReason
) -> None:
    session = RdpSession(rdp_spec(), run_as=None)
    if cert_line:
        session.classify(RDP_CERT_REFUSED)
    got, detail = session.outcome(status, was_connected=connected)
    assert got is reason
    assert f"exit status {status}" in detail


# -- SPICE --------------------------------------------------------------------------


def test_spice_connection_file_is_tls_only_and_redirects_nothing(tmp_path: Path) -> None:
    launch = SpiceSession(spice_spec(), run_as=None).launch(tmp_path)
    assert launch.argv[-1] == "-"
    assert "--kiosk" in launch.argv
    assert "--kiosk-quit=on-disconnect" in launch.argv
    assert "--spice-disable-audio" in launch.argv
    assert SECRET not in " ".join(launch.argv)
    vv = launch.stdin_data.decode().splitlines()
    assert vv[0] == "[virt-viewer]"
    assert f"password={SECRET}" in vv
    assert "tls-port=5901" in vv
    assert not any(line.startswith("port=") for line in vv)
    for line in (
        "secure-channels=all",
        "enable-usbredir=0",
        "enable-smartcard=0",
        "enable-usb-autoshare=0",
        "host-subject=C=FR,O=sdbox,CN=bubble.example",
    ):
        assert line in vv
    ca = next(line for line in vv if line.startswith("ca="))
    assert ca == "ca=" + CA_PEM.strip().replace("\n", "\\n")
    settings = launch.home_files[".config/virt-viewer/settings"]
    assert "share-clipboard=false" in settings.splitlines()


def test_spice_without_a_credential_leaves_the_logon_to_the_guest(tmp_path: Path) -> None:
    launch = SpiceSession(spice_spec(credential=None), run_as=None).launch(tmp_path)
    vv = launch.stdin_data.decode().splitlines()
    assert not any(line.startswith("password") for line in vv)
    assert "secure-channels=all" in vv


def test_spice_audio_by_policy(tmp_path: Path) -> None:
    launch = SpiceSession(spice_spec(policy=Policy(audio=True)), run_as=None).launch(tmp_path)
    assert "--spice-disable-audio" not in launch.argv


def test_spice_lines_mean_connected_or_a_failure_to_end() -> None:
    session = SpiceSession(spice_spec(), run_as=None)
    subject = session.classify(SPICE_SUBJECT_FAILED)
    assert subject is not None
    assert subject.failure is EndReason.CERTIFICATE_REJECTED
    auth = session.classify(SPICE_AUTH_FAILED)
    assert auth is not None
    assert auth.failure is EndReason.AUTH_FAILED
    opened = session.classify(SPICE_OPENED)
    assert opened is not None
    assert opened.connected


# -- the request itself ------------------------------------------------------------


def test_credential_never_shows_in_repr() -> None:
    spec = rdp_spec()
    assert SECRET not in repr(spec)
    assert SECRET not in str(spec.credential)


@pytest.mark.parametrize("bad", ["", "two\nlines", "nul\0"])
def test_unusable_credentials_are_refused_before_anything_starts(bad: str) -> None:
    with pytest.raises(SessionConfigError):
        Credential(bad)


def test_a_user_name_cannot_inject_an_argument() -> None:
    with pytest.raises(SessionConfigError):
        rdp_spec(user="alice\n/drive:all,/")


def test_rdp_needs_a_pin_and_spice_needs_ca_and_subject() -> None:
    with pytest.raises(SessionConfigError):
        rdp_spec(server_fingerprint=None)
    with pytest.raises(SessionConfigError):
        spice_spec(host_subject=None)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("rdp://10.1.2.3:3390", ("rdp", "10.1.2.3", 3390)),
        ("rdp://bubble.example", ("rdp", "bubble.example", 3389)),
        ("spice://bubble.example:5930", ("spice", "bubble.example", 5930)),
    ],
)
def test_endpoints_parse(url: str, expected: tuple[str, str, int]) -> None:
    endpoint = Endpoint.parse(url)
    assert (endpoint.protocol.value, endpoint.host, endpoint.port) == expected


@pytest.mark.parametrize(
    "url", ["vnc://h:1", "rdp://h:99999", "rdp://user@h:1", "rdp://h:1/path", "rdp://-bad-:1"]
)
def test_bad_endpoints_are_refused(url: str) -> None:
    with pytest.raises(SessionConfigError):
        Endpoint.parse(url)


def test_fingerprints_are_normalised() -> None:
    colons = "SHA256:" + ":".join(["AB"] * 32)
    assert rdp_spec(server_fingerprint=colons).server_fingerprint == FINGERPRINT
    with pytest.raises(SessionConfigError):
        rdp_spec(server_fingerprint="sha1:" + "ab" * 20)


# -- screens: two monitors, a dense screen -----------------------------------------------


def test_one_screen_asks_for_no_monitor_layout_and_no_scale() -> None:
    args = RdpSession(rdp_spec(), run_as=None).arguments()
    assert "/f" in args
    assert not any(a.startswith(("/multimon", "/monitors", "/scale")) for a in args)


def test_two_screens_tell_the_rdp_server_of_each_monitor() -> None:
    spec = rdp_spec(display=Display(x11=":0", xwayland=True, monitors=2))
    args = RdpSession(spec, run_as=None).arguments()
    assert args[args.index("/f") : args.index("/f") + 4] == ["/f", "/multimon", "/monitors:0,1", "-gfx"]


def test_the_wayland_client_spans_the_screens_without_multimon(tmp_path: Path) -> None:
    # sdl-freerdp3's /multimon fails its pre-connect under cage (as /f does): cage's one
    # window over every output is what it gets
    display = Display(wayland="wayland-0", runtime_dir=tmp_path, monitors=2)
    args = RdpSession(rdp_spec(display=display), run_as=None).arguments()
    assert not any(a.startswith(("/multimon", "/monitors", "/f")) for a in args)


@pytest.mark.parametrize(
    ("scale", "expected"),
    [(125, ["/scale-desktop:125", "/scale-device:140"]),
     (150, ["/scale-desktop:150", "/scale-device:140"]),
     (200, ["/scale-desktop:200", "/scale-device:180"]),
     (160, ["/scale-desktop:160", "/scale-device:180"])],
)  # fmt: skip
def test_a_dense_screen_asks_the_server_to_scale_its_desktop(scale: int, expected: list[str]) -> None:
    args = RdpSession(rdp_spec(display=Display(x11=":5", scale=scale)), run_as=None).arguments()
    assert [a for a in args if a.startswith("/scale")] == expected


@pytest.mark.parametrize("changes", [{"monitors": 0}, {"monitors": 5}, {"scale": 99}, {"scale": 501}])
def test_impossible_screens_are_refused(changes: dict[str, int]) -> None:
    with pytest.raises(SessionConfigError):
        Display(x11=":5", **changes)  # type: ignore[arg-type]


def test_spice_maps_guest_displays_to_the_screens_full_screen(tmp_path: Path) -> None:
    one = SpiceSession(spice_spec(), run_as=None).launch(tmp_path)
    assert "monitor-mapping" not in one.home_files[".config/virt-viewer/settings"]
    spec = spice_spec(display=Display(x11=":5", monitors=2))
    two = SpiceSession(spec, run_as=None).launch(tmp_path)
    settings = two.home_files[".config/virt-viewer/settings"].splitlines()
    # [fallback]: every guest; monitor-mapping applies only with --full-screen
    assert settings[settings.index("[fallback]") + 1] == "monitor-mapping=1:1;2:2"
    assert "share-clipboard=false" in settings
    assert "--full-screen" in two.argv
