"""Test certificates and PSK files, made by the lab itself (the
``cryptography`` package), in QEMU's file names, for livemig and QEMU alike."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

_NOW = datetime.datetime.now(datetime.UTC)


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "GB"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "livemig tests"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


class Ca:
    def __init__(self, common: str = "livemig test CA") -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = _name(common)
        self.cert = (x509.CertificateBuilder().subject_name(self.name).issuer_name(self.name)
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(_NOW - datetime.timedelta(days=1))
                     .not_valid_after(_NOW + datetime.timedelta(days=30))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
                     .add_extension(x509.KeyUsage(False, False, False, False, False, True, True,
                                                  False, False), True)
                     .sign(self.key, hashes.SHA256()))

    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(self, common: str, hosts: list[str], client: bool) -> tuple[bytes, bytes]:
        key = ec.generate_private_key(ec.SECP256R1())
        names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        usage = x509.ExtendedKeyUsageOID.CLIENT_AUTH if client else \
            x509.ExtendedKeyUsageOID.SERVER_AUTH
        builder = (x509.CertificateBuilder().subject_name(_name(common)).issuer_name(self.name)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(_NOW - datetime.timedelta(days=1))
                   .not_valid_after(_NOW + datetime.timedelta(days=30))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
                   .add_extension(x509.ExtendedKeyUsage([usage]), False))
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), False)
        cert = builder.sign(self.key, hashes.SHA256())
        return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)


def x509_dirs(root: Path, server_hosts: list[str] | None = None,
              client_common: str = "livemig-client", client_ca: Ca | None = None,
              with_client_cert: bool = True) -> tuple[Path, Path]:
    """A server dir and a client dir in QEMU's layout. ``client_ca``: the CA
    that signs the client's certificate (another CA: one the server distrusts)."""
    ca = Ca()
    server, client = root / "server", root / "client"
    for d in (server, client):
        d.mkdir(parents=True, exist_ok=True)
        (d / "ca-cert.pem").write_bytes(ca.pem())
    cert, key = ca.issue("livemig-server", server_hosts or ["localhost", "127.0.0.1"], False)
    (server / "server-cert.pem").write_bytes(cert)
    (server / "server-key.pem").write_bytes(key)
    if with_client_cert:
        cert, key = (client_ca or ca).issue(client_common, [], True)
        (client / "client-cert.pem").write_bytes(cert)
        (client / "client-key.pem").write_bytes(key)
    return server, client


def client_dn(common: str = "livemig-client") -> str:
    """The client certificate's subject as both QEMU and livemig print it."""
    return f"C=GB,O=livemig tests,CN={common}"


def psk_dir(root: Path, name: str, key_hex: str, username: str = "qemu") -> Path:
    d = root / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "keys.psk").write_text(f"{username}:{key_hex}\n")
    return d
