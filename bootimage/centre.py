"""The centre side of the first-boot test: a reference `sdbox broker` on the host.

`make image-test` (bootimage/boot_test.py) starts it on 127.0.0.1 with a TLS
certificate for the address the image was built to reach
(``broker_url`` in the image's manifest, 10.0.2.100:8443 for a test build),
registers a one-time enrolment token for the box and writes it into a copy of
the image's config area with `sdbox flash`'s own code. QEMU's user network
(``restrict=on``: the guest reaches nothing else) forwards that one address to
the broker: ``guestfwd`` runs bootimage/guestfwd_relay.py per connection,
which relays to the broker's port and notes the connection, so the test can
show that an enrolled box does not contact the centre again.
"""

from __future__ import annotations

import ipaddress
import json
import shutil
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sdbox.bootimage import disk, flash, generations, tools
from sdbox.bootimage.errors import BootImageError
from sdbox.broker.enrolment import EnrolmentTokens
from sdbox.broker.server import BrokerServer, load_config
from sdbox.trust import Purpose, validate
from sdbox.trust.pki import CA_NAMES, Pki
from sdbox.trust.store import RevocationStore

RELAY = Path(__file__).resolve().parent / "guestfwd_relay.py"
BOX_ID = "qemu-box-1"


@dataclass
class Centre:
    """The running broker, its token register and the guest's way to it."""

    server: BrokerServer
    pki: Pki
    register: Path
    connections: Path  # one line per guest connection (guestfwd_relay.py)
    guest_host: str
    guest_port: int

    def netdev(self) -> list[str]:
        """QEMU arguments: a virtio NIC whose only reachable address is the broker."""
        port = self.server.httpd.server_address[1]
        relay = f"cmd:{sys.executable} -I {RELAY} {port} {self.connections}"
        for part in (relay,):
            if "," in part:
                raise BootImageError(f"the guestfwd command may not contain a comma: {part}")
        return [
            "-netdev",
            f"user,id=net0,restrict=on,guestfwd=tcp:{self.guest_host}:{self.guest_port}-{relay}",
            # romfile= (none): a box boots from its disk, never from the network, and
            # OVMF then neither loads iPXE nor offers PXE/HTTP boot (seconds under TCG)
            "-device", "virtio-net-pci,netdev=net0,romfile=",
        ]  # fmt: skip

    def connection_count(self) -> int:
        """Guest connections to the centre so far."""
        try:
            return len(self.connections.read_text().splitlines())
        except FileNotFoundError:
            return 0

    def tokens(self) -> dict[str, dict[str, Any]]:
        """The register as the broker keeps it (digests, box ids, when used)."""
        data: dict[str, dict[str, Any]] = json.loads(self.register.read_text())["tokens"]
        return data

    def stop(self) -> None:
        """Stop the broker (the relays end with their connections)."""
        self.server.stop()


def start_centre(work: Path, pki_dir: Path, broker_url: str) -> Centre:
    """The reference broker for ``broker_url`` as the guest sees it, on a free host port."""
    where = urlsplit(broker_url)
    if where.scheme != "https" or where.hostname is None or where.port is None:
        raise BootImageError(f"the image's broker_url {broker_url!r} is not https://IP:PORT")
    ipaddress.ip_address(where.hostname)  # guestfwd forwards an address, not a name
    pki = Pki.open(pki_dir)
    work.mkdir(parents=True, exist_ok=True)
    pem = serialization.Encoding.PEM
    tls_key = ec.generate_private_key(ec.SECP256R1())
    key_file = work / "broker.key"
    key_file.touch(mode=0o600)
    key_file.write_bytes(
        tls_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    tls_cert = pki.issue_server(where.hostname, tls_key.public_key())
    (work / "broker.pem").write_bytes(
        tls_cert.public_bytes(pem) + pki.server_ca.cert.public_bytes(pem)
    )
    (work / "intermediates.pem").write_bytes(
        b"".join(pki.authority(ca).cert.public_bytes(pem) for ca in CA_NAMES[1:])
    )
    publish_crls(pki, work / "crl")
    register = work / "enrolment-tokens.json"
    (work / "broker.toml").write_text("\n".join([
        'listen = "127.0.0.1:0"',
        f'tls_certificate = "{work / "broker.pem"}"',
        f'tls_key = "{key_file}"',
        f'anchors = "{pki.path / "root.pem"}"',
        f'intermediates = "{work / "intermediates.pem"}"',
        f'crl_dir = "{work / "crl"}"',
        f'build_time = "{pki.root.cert.not_valid_before_utc.isoformat()}"',
        f'enrolment_tokens = "{register}"',
        f'box_ca = "{pki.path}"',
    ]) + "\n")  # fmt: skip
    server = BrokerServer(load_config(work / "broker.toml"))
    server.start()
    return Centre(server, pki, register, work / "connections.log", where.hostname, where.port)


class TokenRegister(Protocol):
    """A centre whose broker keeps its enrolment tokens in ``register``."""

    register: Path


def flash_with_token(
    image: Path, work: Path, generation: str, centre: TokenRegister, site: bytes | None = None
) -> Path:
    """A copy of the image personalised as `sdbox flash` does, with a fresh one-time token
    (and ``site``, the site profile, as `sdbox flash --site` writes it)."""
    target = work / "flashed.raw"
    tools.run(["cp", "--sparse=always", image, target], what="copying the image", timeout=600)
    profile = generations.load(generation)
    info = flash.check_image(image, profile)
    token = EnrolmentTokens(centre.register).add(BOX_ID).encode()
    sha256 = (image.with_name(image.name + ".sha256").read_text().split() or [""])[0]
    names = flash.personalise(flash.check_target(target, image), profile, token, info, sha256, site)
    if disk.TOKEN_FILE not in names:
        raise BootImageError("the enrolment token is not in the flashed config area")
    return target


def config_area_names(overlay_disk: Path, base: Path, work: Path) -> list[str]:
    """The config partition's files as the guest left them (read from the qcow2 overlay)."""
    with base.open("rb") as stream:
        part = disk.find_partition(disk.read_gpt(stream), disk.CONFIG_PARTITION)
    extract = work / "config-area.img"
    extract.unlink(missing_ok=True)
    source = (f"driver=raw,offset={part.offset},size={part.size},"
              f"file.driver=qcow2,file.file.driver=file,file.file.filename={overlay_disk}")  # fmt: skip
    tools.run(["qemu-img", "convert", "--image-opts", source, "-O", "raw", extract],
              what="reading the config area back", timeout=120)  # fmt: skip
    whole = disk.Partition(part.number, part.name, part.type_guid, part.part_guid,
                           0, part.last_lba - part.first_lba)  # fmt: skip
    try:
        return disk.ConfigArea(extract, whole).names()
    finally:
        extract.unlink(missing_ok=True)


@dataclass(frozen=True)
class BoxCertificate:
    """What the host makes of the certificate the guest reported."""

    pem: str
    serial: int
    box_id: str
    valid: bool
    detail: str


def judge_certificate(pem: str | None, pki: Pki) -> BoxCertificate:
    """The reported box certificate, validated under the box-identity CA (Purpose.BOX)."""
    if not pem:
        return BoxCertificate("", 0, "", False, "no certificate on the data partition")
    certificate = x509.load_pem_x509_certificate(pem.encode())
    urns = [str(name) for name in certificate.extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value.get_values_for_type(x509.UniformResourceIdentifier)]  # fmt: skip
    box_id = urns[0].rsplit(":", 1)[-1] if urns else ""
    try:
        validate(certificate, [pki.box_ca.cert], [pki.root.cert], at=datetime.now(UTC),
                 purpose=Purpose.BOX, crls=[pki.crl("root"), pki.crl("box-ca")])  # fmt: skip
    except Exception as exc:
        return BoxCertificate(pem, certificate.serial_number, box_id, False, str(exc))
    issuer = certificate.issuer.rfc4514_string()
    return BoxCertificate(pem, certificate.serial_number, box_id, True,
                          f"{box_id}, issued by {issuer}, serial {certificate.serial_number:x}")  # fmt: skip


def publish_crls(pki: Pki, crl_dir: Path) -> None:
    """Every authority's current CRL in the broker's revocation store (its own file layout,
    which ``Pki.publish``'s distribution-point files are not: the broker read none from those
    and refused every box identity as unrevocable)."""
    store = RevocationStore(crl_dir, build_time=pki.root.cert.not_valid_before_utc)
    for ca in CA_NAMES:
        crl = pki.crl(ca).public_bytes(serialization.Encoding.DER)
        store.accept(crl, pki.authority(ca).cert)


def cleanup(work: Path) -> None:
    """Remove the flashed copy (2 GiB sparse) once the boots are done."""
    (work / "flashed.raw").unlink(missing_ok=True)
    shutil.rmtree(work / "crl", ignore_errors=True)
