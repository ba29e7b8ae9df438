"""strongSwan configuration for the box and for a reference centre gateway.

Everything is generated from the site profile (:mod:`sdbox.network.site`),
the box identity and the trust material the box already holds; nothing is
edited by hand on a box. Two renderings of one model:

- VICI messages (``load-conn``, ``load-pool``, ``load-cert``, ``load-token``)
  that :mod:`sdbox.network.tunnel` sends to charon: the box needs no
  ``/etc/swanctl`` tree, its certificates and CRLs go over the socket;
- ``swanctl.conf`` text (:func:`swanctl_conf`) for a centre operator who
  runs the gateway side with ``swanctl --load-all``.

Choices (docs/tunnel.md says why):

- IKEv2 only, certificates both ways (``auth = pubkey``), one AEAD proposal
  per SA (AES-256-GCM, PRF SHA-384, ECP-384): nothing with SHA-1, MODP-1024
  or CBC-without-AEAD is offered or accepted;
- the gateway is pinned twice: ``remote.id`` is its identity from the site
  profile and ``remote.cacerts`` is the gateway CA alone, so a certificate
  from any other CA of the same root (a box's, a bubble's) is refused;
- ``revocation = strict``: a certificate whose status the loaded CRLs cannot
  establish (no CRL, a stale one) is refused, as the rest of sdbox does;
- one connection per gateway, failover driven from Python: swanctl's
  ``remote_addrs`` list only ever initiates to its first address, and a
  connection per gateway lets the tunnel module say which gateway refused
  or did not answer;
- the box key stays in the TPM; charon reaches it through PKCS#11
  (:class:`TokenKey`): charon loads p11-kit's client module, and p11-kit's
  server, a process of its own, loads libtpm2-pkcs11 (see :func:`charon_conf`
  for why not directly).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote

from sdbox.network.site import Gateway, SiteProfile

if TYPE_CHECKING:
    # certificates are only passed through here: cryptography is loaded by whoever
    # made them, not by the firewall and charon.conf writers that share this module
    from cryptography import x509

# One proposal each: the box and the reference gateway agree on exactly this.
IKE_PROPOSALS: tuple[str, ...] = ("aes256gcm16-prfsha384-ecp384",)
ESP_PROPOSALS: tuple[str, ...] = ("aes256gcm16-ecp384",)

# charon's plugins, named: nothing is loaded by default (no curl/ldap fetching of
# CRLs from the outer network, no stroke, no xauth/eap). 5.9.8's openssl plugin
# has no IKEv2 KDF: without "kdf" the PRF-SHA384 proposal fails at key derivation.
CHARON_PLUGINS: tuple[str, ...] = (
    "random", "nonce", "openssl", "kdf", "pem", "pkcs1", "pkcs8", "x509", "revocation",
    "constraints", "pubkey", "pkcs11", "kernel-netlink", "socket-default", "vici",
    "error-notify", "attr",
)  # fmt: skip

# How long an unanswered IKE request is retried: timeout * base**n for n in
# 0..tries, here 2 + 3 + 4.5 = 9.5 s before a gateway counts as unreachable
# (charon's default, 165 s, would make failover to the next gateway take minutes).
RETRANSMIT_TRIES = 2
RETRANSMIT_TIMEOUT_S = 2.0
RETRANSMIT_BASE = 1.5

# charon loads this; P11_KIT_SERVER_ADDRESS in its environment names the server
P11_KIT_CLIENT = Path("/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so")
TPM2_PKCS11 = Path("/usr/lib/x86_64-linux-gnu/pkcs11/libtpm2_pkcs11.so")
P11_KIT_SERVER = Path("/usr/libexec/p11-kit/p11-kit-server")

CONNECTION_PREFIX = "centre"
CHILD_NAME = "centre-networks"
POOL_NAME = "boxes"

# a VICI message: nested sections of strings, bytes and lists of them (Any: mypy
# cannot check a recursive union through the dict literals that build them)
Section = dict[str, Any]


def pem(cert: x509.Certificate | x509.CertificateRevocationList) -> bytes:
    """PEM bytes, as VICI's ``load-cert`` and ``certs``/``cacerts`` take them."""
    from cryptography.hazmat.primitives.serialization import Encoding  # noqa: PLC0415

    return cert.public_bytes(Encoding.PEM)


def connection_name(index: int) -> str:
    """The box's connection to gateway ``index`` (1-based, the profile's order)."""
    return f"{CONNECTION_PREFIX}-{index}"


@dataclass(frozen=True)
class TokenKey:
    """Where charon finds the box key: a PKCS#11 object, used there, never read out."""

    key_id: bytes  # CKA_ID of the private key (sdbox.identity.provision: 01)
    module: str = ""  # the pkcs11 plugin's module name ("" = any loaded module)
    slot: int | None = None

    def load_token(self, pin: str) -> Section:
        """The VICI ``load-token`` message (swanctl's ``secrets.token``)."""
        message: Section = {"handle": self.key_id.hex(), "pin": pin}
        if self.module:
            message["module"] = self.module
        if self.slot is not None:
            message["slot"] = str(self.slot)
        return message


@dataclass(frozen=True)
class CharonPaths:
    """One charon instance's own files: its sockets and its log."""

    vici_socket: Path
    notify_socket: Path  # the error-notify plugin's: typed alerts (certificate revoked...)
    log_file: Path | None = None


def p11_kit_server_argv(socket_path: Path, token_label: str, module: Path = TPM2_PKCS11) -> list[str]:
    """p11-kit's server exporting the box's token (and only it) on ``socket_path``.

    It runs with the identity's TPM environment (``TPM2_PKCS11_TCTI``/``STORE``)
    and forks a ``p11-kit remote`` per client; the socket is the access control
    (root only, in a 0700 directory). The key stays in the TPM: PKCS#11 has no
    call that exports a sensitive, non-extractable key, and the TPM object is
    fixedTPM/fixedParent.
    """
    return [str(P11_KIT_SERVER), "--foreground", "--name", str(socket_path),
            "--provider", str(module), f"pkcs11:token={quote(token_label, safe='')}"]  # fmt: skip


DataPlane = Literal["kernel", "libipsec"]
LIBIPSEC_INTERFACE = "ipsec0"  # the TUN device kernel-libipsec creates


def charon_conf(
    paths: CharonPaths,
    *,
    pkcs11_modules: Mapping[str, Path] | None = None,
    data_plane: DataPlane = "kernel",
    retransmit_tries: int = RETRANSMIT_TRIES,
    retransmit_timeout_s: float = RETRANSMIT_TIMEOUT_S,
    retransmit_base: float = RETRANSMIT_BASE,
) -> str:
    """``strongswan.conf`` for charon-systemd (``STRONGSWAN_CONF`` points at it).

    ``pkcs11_modules``: name -> shared object. On the box that is p11-kit's
    client module, not libtpm2-pkcs11 itself: libtpm2-pkcs11 1.9 exports its
    internal ``mutex_create``, which libstrongswan also exports, so loaded into
    charon its ``C_Initialize`` calls strongSwan's and fails (docs/tunnel.md).

    ``data_plane``: ``kernel`` (the box: ESP in the kernel's XFRM) or ``libipsec``
    (ESP in charon itself through a TUN device, UDP-encapsulated), for kernels
    built without ESP, such as the test machines'.
    """
    plugins = list(CHARON_PLUGINS)
    if data_plane == "libipsec":
        # before kernel-netlink: the first plugin to offer the IPsec backend is used
        plugins.insert(plugins.index("kernel-netlink"), "kernel-libipsec")
    modules = "".join(
        f"""
        {name} {{
          path = {path}
          load_certs = no
          os_locking = yes
        }}"""
        for name, path in (pkcs11_modules or {}).items()
    )
    log = ""
    if paths.log_file is not None:
        log = f"""
  filelog {{
    tunnel {{
      path = {paths.log_file}
      time_format = %F %T
      default = 1
      ike = 2
      cfg = 2
    }}
  }}"""
    return f"""\
# generated by sdbox.network.strongswan: do not edit
charon-systemd {{
  load = {" ".join(plugins)}
  retransmit_tries = {retransmit_tries}
  retransmit_timeout = {retransmit_timeout_s}
  retransmit_base = {retransmit_base}
  install_virtual_ip = yes
  journal {{
    default = 1
  }}{log}
  plugins {{
    vici {{
      socket = unix://{paths.vici_socket}
    }}
    error-notify {{
      socket = unix://{paths.notify_socket}
    }}
    revocation {{
      enable_ocsp = no
      enable_crl = yes
    }}
    pkcs11 {{
      modules {{{modules}
      }}
    }}
  }}
}}
"""


# --- the box ------------------------------------------------------------------


CertRef = Callable[["x509.Certificate"], "str | bytes"]


def _inline(cert: x509.Certificate) -> bytes:
    return pem(cert)


def box_connection(
    profile: SiteProfile,
    index: int,
    *,
    box_certificate: x509.Certificate,
    gateway_ca: x509.Certificate,
    cert_ref: CertRef = _inline,
) -> Section:
    """The box's connection to gateway ``index`` (1-based): a ``load-conn`` section.

    ``cert_ref`` turns a certificate into what the message carries: its PEM
    (VICI, the default) or a file name (swanctl.conf).
    """
    gateway: Gateway = profile.gateways[index - 1]
    tunnel = profile.tunnel
    remote_ts = [str(n) for n in profile.tunnel_networks]
    return {
        "version": "2",
        "remote_addrs": [gateway.address],
        "proposals": list(IKE_PROPOSALS),
        # an inner address from the gateway's pool: the centre routes boxes by it
        "vips": ["0.0.0.0"],  # noqa: S104  (IKE's "assign me one", not a bind)
        "dpd_delay": f"{tunnel.dpd_delay_s}s",
        "rekey_time": f"{tunnel.rekey_time_s}s",
        "keyingtries": "1",  # the tunnel module retries, gateway by gateway
        "unique": "replace",
        "fragmentation": "yes",
        "mobike": "yes",
        "send_certreq": "yes",
        "send_cert": "always",
        "local": {"auth": "pubkey", "certs": [cert_ref(box_certificate)]},
        "remote": {
            "auth": "pubkey",
            "id": gateway.identity,
            "cacerts": [cert_ref(gateway_ca)],
            "revocation": "strict",
        },
        "children": {
            CHILD_NAME: {
                "remote_ts": remote_ts,
                "esp_proposals": list(ESP_PROPOSALS),
                "mode": "tunnel",
                "dpd_action": "clear",  # the tunnel module decides where to go next
                "close_action": "none",
                "start_action": "none",
                "rekey_time": "3600s",
            }
        },
    }


def box_connections(
    profile: SiteProfile,
    *,
    box_certificate: x509.Certificate,
    gateway_ca: x509.Certificate,
    cert_ref: CertRef = _inline,
) -> dict[str, Section]:
    """Every gateway's connection, named ``centre-1``, ``centre-2``... in the profile's order."""
    return {
        connection_name(i): box_connection(
            profile, i, box_certificate=box_certificate, gateway_ca=gateway_ca, cert_ref=cert_ref
        )
        for i in range(1, len(profile.gateways) + 1)
    }


# --- the reference gateway (centre side) ----------------------------------------


@dataclass(frozen=True)
class GatewaySpec:
    """What a reference gateway needs to know."""

    identity: str  # its IKE identity (a subjectAltName of its certificate)
    certificate: x509.Certificate
    box_ca: x509.Certificate  # only boxes certified by this CA are accepted
    networks: Sequence[str]  # the centre networks it offers (CIDRs)
    pool: str  # inner addresses handed to boxes (a CIDR)
    local_addrs: Sequence[str] = ()  # where it listens ("" = every address)
    dpd_delay_s: int = 30


def gateway_connection(spec: GatewaySpec, cert_ref: CertRef = _inline) -> Section:
    """The responder's connection: any box of the box-identity CA, revocation checked."""
    ipaddress.ip_network(spec.pool)  # a malformed pool fails here, not inside charon
    conn: Section = {
        "version": "2",
        "proposals": list(IKE_PROPOSALS),
        "pools": [POOL_NAME],
        "dpd_delay": f"{spec.dpd_delay_s}s",
        "unique": "replace",  # a rebooted box replaces its stale SA
        "fragmentation": "yes",
        "mobike": "yes",
        "send_certreq": "yes",
        "send_cert": "always",
        "local": {"auth": "pubkey", "id": spec.identity,
                  "certs": [cert_ref(spec.certificate)]},
        "remote": {"auth": "pubkey", "cacerts": [cert_ref(spec.box_ca)],
                   "revocation": "strict"},
        "children": {
            CHILD_NAME: {
                "local_ts": list(spec.networks),
                "esp_proposals": list(ESP_PROPOSALS),
                "mode": "tunnel",
                "dpd_action": "clear",
            }
        },
    }  # fmt: skip
    if spec.local_addrs:
        conn["local_addrs"] = list(spec.local_addrs)
    return conn


def gateway_pool(spec: GatewaySpec) -> Section:
    """The ``load-pool`` message for the boxes' inner addresses."""
    return {POOL_NAME: {"addrs": spec.pool}}


# --- swanctl.conf -------------------------------------------------------------


def _render(section: Mapping[str, Any], indent: int) -> list[str]:
    pad = "    " * indent
    lines: list[str] = []
    for key, value in section.items():
        if isinstance(value, dict):
            lines.append(f"{pad}{key} {{")
            lines.extend(_render(value, indent + 1))
            lines.append(f"{pad}}}")
            continue
        items = value if isinstance(value, list) else [value]
        text = [v.decode() if isinstance(v, bytes) else v for v in items]
        for item in text:
            if "\n" in item or "{" in item or "}" in item:
                raise ValueError(f"{key}: {item[:40]!r} cannot be written in swanctl.conf")
        lines.append(f"{pad}{key} = {', '.join(text)}")
    return lines


def swanctl_conf(
    connections: Mapping[str, Section],
    *,
    pools: Mapping[str, Section] | None = None,
    secrets: Mapping[str, Section] | None = None,
) -> str:
    """``swanctl.conf`` text for these connections (certificates as file names)."""
    lines = ["# generated by sdbox.network.strongswan: do not edit", "connections {"]
    lines += _render(connections, 1)
    lines.append("}")
    if pools:
        lines += ["pools {", *_render(pools, 1), "}"]
    if secrets:
        lines += ["secrets {", *_render(secrets, 1), "}"]
    return "\n".join(lines) + "\n"
