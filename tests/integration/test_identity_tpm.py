"""The box identity in a (software) TPM: provisioning, signing, enrolment, the broker, the agent."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pkcs11 import Attribute
from pkcs11 import exceptions as p11err

from sdbox.agent.api import State
from sdbox.broker.enrolment import EnrolmentTokens
from sdbox.centre.errors import CentreRefused
from sdbox.identity import (
    IdentityConfig,
    IdentityError,
    IdentitySource,
    open_identity,
    probe,
    read_pin,
)
from sdbox.identity.enrol import enrol
from sdbox.identity.provision import _init_token, provision_tpm, so_pin_file, tpm_csr
from sdbox.identity.tpm import (
    find_private_key,
    get_token,
    key_properties,
    key_status,
    load_module,
)
from sdbox.trust import Purpose, validate
from sdbox.trust.pki import Pki
from tests.integration.agent_env import BrokerEnv, broker_settings, reference_broker, until
from tests.integration.session_servers import tool_missing
from tests.integration.test_broker import Centre, _ask, _census, centre, verified_card
from tests.integration.tpm_env import SoftwareTpm, tpm_identity_config

__all__ = ["centre"]


@pytest.fixture(scope="module")
def box(swtpm: SoftwareTpm, tmp_path_factory: pytest.TempPathFactory) -> IdentityConfig:
    """A provisioned box key (the token of this module)."""
    directory = tmp_path_factory.mktemp("box-identity")
    config = tpm_identity_config(swtpm, directory, directory / "box.pem")
    provision_tpm(config)
    return config


def test_provisioning_interrupted_after_the_token_was_created_is_repaired(
    swtpm: SoftwareTpm, tmp_path: Path
) -> None:
    config = replace(
        tpm_identity_config(swtpm, tmp_path, tmp_path / "box.pem"), token_label="interrupted"
    )
    assert config.pin_file is not None
    so_pin_file(config).write_text("so-pin-from-the-first-try\n")
    config.pin_file.write_text("user-pin-from-the-first-try\n")
    _init_token(config, load_module(config), "so-pin-from-the-first-try")  # then power lost
    result = provision_tpm(config)
    assert not result.created_token
    assert result.created_key
    assert key_status(config).properties.bound_to_tpm


def _certify(pki: Pki, config: IdentityConfig, box_id: str = "tpm-box-1") -> x509.Certificate:
    csr = tpm_csr(config, x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, box_id)]))
    cert = pki.issue_box(csr.public_key(), box_id=box_id)
    config.certificate.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert


def test_provisioning_creates_a_key_in_the_tpm_and_root_only_pins(
    box: IdentityConfig, swtpm: SoftwareTpm
) -> None:
    assert box.pin_file is not None
    for path in (box.pin_file, so_pin_file(box)):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert len(path.read_text().strip()) >= 32
    again = provision_tpm(box)  # first boot interrupted and run again: same key
    assert not again.created_token
    assert not again.created_key
    token = get_token(load_module(box), box)
    with token.open(user_pin=read_pin(box)) as session:
        key = find_private_key(session, box)
        props = key_properties(key)
        assert props.bound_to_tpm, props
        with pytest.raises(p11err.PKCS11Error):  # the private value cannot be read
            key[Attribute.VALUE]


def test_tpm_signature_verifies_with_the_certificate_key(pki: Pki, box: IdentityConfig) -> None:
    cert = _certify(pki, box)
    identity = open_identity(box)
    assert identity.box_id == "sdbox box tpm-box-1"
    public = cert.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    for message in (b"", b"transcript" * 100):
        public.verify(identity.sign(message), message, ec.ECDSA(hashes.SHA256()))


def test_the_agents_start_up_probe_signs_in_the_tpm(pki: Pki, box: IdentityConfig) -> None:
    # what the agent logs after READY on a box (sdbox.identity.probe)
    cert = _certify(pki, box)
    said = probe(IdentitySource(box), datetime.now(UTC)).summary
    assert said.startswith("sdbox box tpm-box-1, TPM key signs and matches its certificate")
    assert f"valid until {cert.not_valid_after_utc:%Y-%m-%d}" in said
    # a certificate for another key: the probe's signature does not verify
    other = pki.issue_box(ec.generate_private_key(ec.SECP256R1()).public_key(), box_id="tpm-box-1")
    box.certificate.write_bytes(other.public_bytes(serialization.Encoding.PEM))
    try:
        with pytest.raises(IdentityError, match="does not match the box certificate"):
            probe(IdentitySource(box), datetime.now(UTC))
    finally:
        box.certificate.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _lockout_counter(tpm: SoftwareTpm) -> int:
    """The TPM's dictionary-attack counter (wrong authorisations)."""
    out = subprocess.run(
        ["tpm2_getcap", "properties-variable"],
        capture_output=True, text=True, timeout=30, check=True, env={**os.environ, **tpm.environment()},
    ).stdout  # fmt: skip
    line = next(x for x in out.splitlines() if x.startswith("TPM2_PT_LOCKOUT_COUNTER"))
    return int(line.split(":")[1], 0)


def test_wrong_pin_file_is_refused_clearly(
    pki: Pki, box: IdentityConfig, swtpm: SoftwareTpm, tmp_path: Path
) -> None:
    _certify(pki, box)
    wrong = tmp_path / "token-pin"
    wrong.write_text("not-the-pin\n")
    os.chmod(wrong, 0o600)
    identity = open_identity(replace(box, pin_file=wrong))
    lockout_before = _lockout_counter(swtpm)
    with pytest.raises(IdentityError, match=r"refused the token PIN from .*do not retry"):
        identity.sign(b"x")
    assert _lockout_counter(swtpm) == lockout_before + 1
    with pytest.raises(IdentityError, match="not trying it again"):
        identity.sign(b"x")
    assert _lockout_counter(swtpm) == lockout_before + 1  # the TPM was not asked again
    missing = replace(box, pin_file=tmp_path / "absent")
    with pytest.raises(IdentityError, match=r"PIN file .* cannot be read"):
        open_identity(missing).sign(b"x")


def test_missing_token_is_refused_clearly(pki: Pki, box: IdentityConfig) -> None:
    _certify(pki, box)
    other = replace(box, token_label="never-provisioned")
    with pytest.raises(IdentityError, match=r"holds no token 'never-provisioned'.*provision"):
        open_identity(other)
    no_key = replace(box, key_label="no-such-key")
    with pytest.raises(IdentityError, match="holds no key 'no-such-key'"):
        open_identity(no_key).sign(b"x")


# -- first boot: enrolment with the reference broker -------------------------------


@dataclass
class EnrolmentCentre:
    broker: BrokerEnv
    tokens: EnrolmentTokens
    register: Path
    config: Path  # the broker's TOML


@pytest.fixture(scope="module")
def enrolment_centre(
    pki: Pki, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EnrolmentCentre]:
    work = tmp_path_factory.mktemp("enrolment-centre")
    register = work / "enrolment-tokens.json"
    with reference_broker(work, pki, {}, {}, enrolment_tokens=register) as broker:
        yield EnrolmentCentre(broker, EnrolmentTokens(register), register, work / "broker.toml")


def _flash_token(centre: EnrolmentCentre, box_id: str, directory: Path) -> tuple[str, Path]:
    """What flashing leaves on the box's config partition (sdbox flash --enrolment-token-file)."""
    token = centre.tokens.add(box_id)
    path = directory / "config" / "enrolment-token"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(token + "\n")
    return token, path


def _enrol(pki: Pki, centre: EnrolmentCentre, config: IdentityConfig, token_file: Path) -> Any:
    return enrol(
        config,
        broker_url=centre.broker.url,
        token_file=token_file,
        broker_anchors=[pki.root.cert],
        anchors=[pki.root.cert],
        intermediates=pki.intermediates,
    )


def test_first_boot_enrolment_succeeds_once(
    pki: Pki, swtpm: SoftwareTpm, enrolment_centre: EnrolmentCentre, tmp_path: Path
) -> None:
    sealed = tmp_path / "sealed"  # the TPM-sealed data partition
    config = replace(
        tpm_identity_config(swtpm, sealed, sealed / "box.pem"), token_label="first-boot-box"
    )
    token, token_file = _flash_token(enrolment_centre, "tpm-box-7", tmp_path)
    assert token not in enrolment_centre.register.read_text()  # hashed at rest

    result = _enrol(pki, enrolment_centre, config, token_file)
    assert result.box_id == "sdbox box tpm-box-7"
    assert not result.already
    assert result.token_removed
    assert not token_file.exists()
    certificate = x509.load_pem_x509_certificate(config.certificate.read_bytes())
    chain = validate(certificate, pki.intermediates, [pki.root.cert], at=datetime.now(UTC),
                     purpose=Purpose.BOX, crls=None)  # fmt: skip
    assert chain.chain[1:] == (pki.box_ca.cert, pki.root.cert)
    assert key_status(config).public_key == certificate.public_key()
    assert key_status(config).properties.bound_to_tpm
    public = certificate.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    public.verify(open_identity(config).sign(b"hello"), b"hello", ec.ECDSA(hashes.SHA256()))

    # first boot run again: nothing is spent
    token_file.write_text(token + "\n")
    assert _enrol(pki, enrolment_centre, config, token_file).already
    # the certificate lost: the used token is refused, and says why
    config.certificate.unlink()
    with pytest.raises(CentreRefused, match="already used") as err:
        _enrol(pki, enrolment_centre, config, token_file)
    assert err.value.code == "enrolment_token"
    assert not config.certificate.exists()


def test_wrong_enrolment_token_is_refused(
    pki: Pki, swtpm: SoftwareTpm, enrolment_centre: EnrolmentCentre, tmp_path: Path
) -> None:
    config = replace(
        tpm_identity_config(swtpm, tmp_path, tmp_path / "box.pem"), token_label="wrong-token-box"
    )
    token_file = tmp_path / "enrolment-token"
    token_file.write_text("not-a-token-the-centre-issued\n")
    with pytest.raises(CentreRefused, match="not known to the centre") as err:
        _enrol(pki, enrolment_centre, config, token_file)
    assert err.value.code == "enrolment_token"
    assert not config.certificate.exists()
    assert token_file.exists()
    with pytest.raises(IdentityError, match="cannot be read"):
        _enrol(pki, enrolment_centre, config, tmp_path / "no-token")


def test_identity_check_command(
    pki: Pki, swtpm: SoftwareTpm, box: IdentityConfig, tmp_path: Path
) -> None:
    _certify(pki, box)
    env = BrokerEnv(
        None, "https://127.0.0.1:1", Path(), box.certificate, pki.path / "root.pem", box
    )
    (tmp_path / "agent.toml").write_text(broker_settings(env))
    done = subprocess.run(
        [sys.executable, "-m", "sdbox", "identity", "check", "--config", str(tmp_path / "agent.toml")],
        capture_output=True, text=True, timeout=60, check=False, env={**os.environ, **swtpm.environment()},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "box id:       sdbox box tpm-box-1" in done.stdout
    assert "key in TPM:   yes" in done.stdout
    assert "extractable:  no (never extractable: yes, sensitive: yes)" in done.stdout
    assert "matches cert: yes" in done.stdout


# -- the TPM identity at work: the broker and the agent ------------------------------

needs_session_stack = pytest.mark.skipif(
    bool(tool_missing("freerdp-shadow-cli3", "winpr-hash3", "qemu-system-x86_64", "Xvfb")),
    reason="the session stack is not installed (make setup)",
)


@needs_session_stack
def test_broker_issues_a_credential_to_a_tpm_box(
    pki: Pki, box: IdentityConfig, centre: Centre, free_reader: int, tmp_path: Path
) -> None:
    _certify(pki, box)
    identity = open_identity(box)
    issued_before = centre.broker.server.broker.issued
    with verified_card(pki, centre, free_reader, tmp_path) as (card, session):
        credential = asyncio.run(_ask(centre, session, _census(card), identity=identity))
    assert credential.kind == "password"
    assert centre.broker.server.broker.issued == issued_before + 1


@needs_session_stack
def test_agent_with_tpm_identity_reaches_a_session(
    pki: Pki, box: IdentityConfig, centre: Centre, free_reader: int, tmp_path: Path
) -> None:
    from tests.integration.test_agent import running_agent

    _certify(pki, box)
    tpm_broker = replace(centre.broker, identity=box)

    async def scenario() -> None:
        async with running_agent(
            pki, centre.bubbles, free_reader, tmp_path, broker=tpm_broker
        ) as run:
            assert run.config.identity.kind == "tpm"
            await until(lambda: run.agent.snapshot.state == State.PICKER)
            await run.iface.call_choose_project("census-2021")  # type: ignore[attr-defined]
            await until(
                lambda: (
                    run.agent.snapshot.state == State.RUNNING
                    or run.agent.snapshot.problem is not None
                )
            )
            assert run.agent.snapshot.state == State.RUNNING, run.agent.snapshot.message

    issued_before = centre.broker.server.broker.issued
    asyncio.run(scenario())
    assert centre.broker.server.broker.issued == issued_before + 1


def _sdbox(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sdbox", *args],
        capture_output=True, text=True, timeout=120, check=False, env={**os.environ, **env},
    )  # fmt: skip


def test_first_boot_from_the_command_line(
    pki: Pki, swtpm: SoftwareTpm, enrolment_centre: EnrolmentCentre, tmp_path: Path
) -> None:
    token_file = tmp_path / "config-partition" / "enrolment-token"
    token_file.parent.mkdir()
    made = _sdbox("broker", "enrolment-token", "--config", str(enrolment_centre.config),
                  "--box-id", "cli-box-3", "--out", str(token_file), env={})  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    token = token_file.read_text().strip()
    assert token not in made.stdout + made.stderr

    sealed = tmp_path / "sealed"
    ident = replace(tpm_identity_config(swtpm, sealed, sealed / "box.pem"), token_label="cli-box")
    intermediates = tmp_path / "intermediates.pem"
    pem = serialization.Encoding.PEM
    intermediates.write_bytes(b"".join(c.public_bytes(pem) for c in pki.intermediates))
    env = BrokerEnv(None, enrolment_centre.broker.url, Path(), ident.certificate,
                    pki.path / "root.pem", ident)  # fmt: skip
    agent_toml = tmp_path / "agent.toml"
    agent_toml.write_text(
        f'[trust]\nanchors = "{pki.path / "root.pem"}"\nintermediates = "{intermediates}"\n'
        f'[credentials]\nbroker_url = "{env.url}"\nbroker_anchors = "{pki.path / "root.pem"}"\n'
        + broker_settings(env)
    )
    config = ["--config", str(agent_toml)]
    enrolled = _sdbox("identity", "enrol", *config, "--token-file", str(token_file),
                      env=swtpm.environment())  # fmt: skip
    assert enrolled.returncode == 0, enrolled.stderr
    assert "enrolled as sdbox box cli-box-3" in enrolled.stdout
    assert not token_file.exists()
    checked = _sdbox("identity", "check", *config, env=swtpm.environment())
    assert checked.returncode == 0, checked.stderr
    assert "box id:       sdbox box cli-box-3" in checked.stdout
    for result in (made, enrolled, checked):
        assert token not in result.stdout + result.stderr
    assert ident.pin_file is not None
    assert ident.pin_file.read_text().strip() not in enrolled.stdout + enrolled.stderr

    # the box lost its certificate; the token written at flashing is spent
    ident.certificate.unlink()
    token_file.write_text(token + "\n")
    again = _sdbox("identity", "enrol", *config, "--token-file", str(token_file),
                   env=swtpm.environment())  # fmt: skip
    assert again.returncode != 0
    assert "already used" in again.stderr
