"""A software TPM behind a resource manager, for the box identity tests.

swtpm alone has three transient object slots and no resource manager:
libtpm2-pkcs11 then fails with "out of memory for object contexts" as soon as
it loads its primary key, the token's wrapping key and a box key. On a box
the kernel's resource manager (``device:/dev/tpmrm0``) does that job; here
``tpm2-abrmd`` does, on a private D-Bus session bus of its own, under a
unique name, so that parallel runs never share a TPM.

Everything is started by this module and stopped by pid.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sdbox.identity import IdentityConfig
from tests.integration.agent_env import dbus_daemon
from tests.integration.session_servers import free_port, stop, tool_missing, wait_for_port

PKCS11_MODULE = Path("/usr/lib/x86_64-linux-gnu/pkcs11/libtpm2_pkcs11.so")
TOOLS = ("swtpm", "tpm2-abrmd", "dbus-daemon", "tpm2_dictionarylockout")


def tpm_missing() -> str | None:
    """What of the TPM stack is not installed (make setup), if anything."""
    missing = tool_missing(*TOOLS)
    if missing is None and not PKCS11_MODULE.exists():
        missing = str(PKCS11_MODULE)
    return missing


@dataclass(frozen=True)
class SoftwareTpm:
    """A running swtpm + tpm2-abrmd; ``tcti`` is what libtpm2-pkcs11 and tpm2-tools use."""

    tcti: str
    bus_address: str
    store: Path
    module: Path = PKCS11_MODULE

    def environment(self) -> dict[str, str]:
        """The variables a process needs to reach this TPM through the resource manager."""
        return {
            "DBUS_SESSION_BUS_ADDRESS": self.bus_address,
            "TPM2TOOLS_TCTI": self.tcti,
            "TPM2_PKCS11_TCTI": self.tcti,
            "TPM2_PKCS11_STORE": str(self.store),
        }


def _wait_for_name(env: dict[str, str], process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"tpm2-abrmd exited with {process.returncode}")
        probe = subprocess.run(
            ["tpm2_getrandom", "4"], env=env, capture_output=True, timeout=10, check=False
        )
        if probe.returncode == 0:
            return
        time.sleep(0.1)
    raise RuntimeError("tpm2-abrmd did not come up on its bus")


def _port_pair() -> tuple[int, int]:
    """Two consecutive free ports: the swtpm TCTI finds the control port at server + 1."""
    for _ in range(50):
        port = free_port()
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port, port + 1
    raise RuntimeError("no two consecutive free ports on 127.0.0.1")


@contextlib.contextmanager
def software_tpm(workdir: Path) -> Iterator[SoftwareTpm]:
    """swtpm (TPM 2.0, state in ``workdir``) behind tpm2-abrmd on a private bus."""
    state, store = workdir / "swtpm-state", workdir / "pkcs11-store"
    state.mkdir(parents=True, exist_ok=True)
    store.mkdir(mode=0o700, exist_ok=True)
    server, ctrl = _port_pair()
    with contextlib.ExitStack() as stack:
        bus = stack.enter_context(dbus_daemon(workdir))
        log = stack.enter_context((workdir / "swtpm.log").open("wb"))
        swtpm = subprocess.Popen(
            ["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={state}",
             "--server", f"type=tcp,port={server},bindaddr=127.0.0.1",
             "--ctrl", f"type=tcp,port={ctrl},bindaddr=127.0.0.1",
             "--flags", "not-need-init,startup-clear"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        stack.callback(stop, swtpm)
        wait_for_port(server, swtpm)
        name = f"org.sdbox.test.Tabrmd{os.getpid()}x{secrets.token_hex(4)}"
        tcti = f"tabrmd:bus_type=session,bus_name={name}"
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "DBUS_SESSION_BUS_ADDRESS": bus,
               "TPM2TOOLS_TCTI": tcti}  # fmt: skip
        abrmd_log = stack.enter_context((workdir / "abrmd.log").open("wb"))
        # --allow-root: the test runner is root on these machines; the box runs
        # tpm2-abrmd (or the kernel resource manager) as its own user.
        abrmd = subprocess.Popen(
            ["tpm2-abrmd", "--session", "--allow-root", "--flush-all", f"--dbus-name={name}",
             f"--tcti=swtpm:host=127.0.0.1,port={server}"],
            env=env, stdout=abrmd_log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        stack.callback(stop, abrmd)
        _wait_for_name(env, abrmd, 20.0)
        # swtpm allows 3 wrong authorisations and then locks for 1000 s; the
        # wrong-PIN tests must not lock the whole session's TPM out.
        subprocess.run(
            ["tpm2_dictionarylockout", "--setup-parameters", "--max-tries=64",
             "--recovery-time=1", "--lockout-recovery-time=1"],
            env=env, capture_output=True, timeout=10, check=True,
        )  # fmt: skip
        yield SoftwareTpm(tcti, bus, store)


def tpm_identity_config(tpm: SoftwareTpm, directory: Path, certificate: Path) -> IdentityConfig:
    """The [identity] of a box whose key is in ``tpm`` (one store per process: see load_module)."""
    return IdentityConfig(
        kind="tpm",
        certificate=certificate,
        pkcs11_module=tpm.module,
        pin_file=directory / "token-pin",
        tpm_store=tpm.store,
        tcti=tpm.tcti,
    )


@pytest.fixture(scope="session")
def swtpm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SoftwareTpm]:
    """One software TPM for the test process (libtpm2-pkcs11 binds to one store per process)."""
    missing = tpm_missing()
    if missing:
        pytest.skip(f"{missing} is not installed (make setup, identity tier)")
    with software_tpm(tmp_path_factory.mktemp("swtpm")) as tpm, pytest.MonkeyPatch.context() as mp:
        # The tabrmd TCTI finds its bus through the environment only.
        mp.setenv("DBUS_SESSION_BUS_ADDRESS", tpm.bus_address)
        yield tpm
