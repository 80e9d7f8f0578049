"""Certificates and a password file for a broker run from mosquitto/prod.conf, made on the spot.

A private CA signs the broker's certificate (for 127.0.0.1 and localhost) and a client
certificate; a second, unrelated CA signs a client certificate the broker must refuse.
Passwords are hashed by mosquitto's own `mosquitto_passwd`.
"""

from __future__ import annotations

import datetime
import ipaddress
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from deploy.servers import find_binary

Issuer = tuple[ec.EllipticCurvePrivateKey, x509.Certificate]


@dataclass(frozen=True)
class KeyPair:
    """A certificate and its private key, as PEM files."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    """The CA the broker and its clients trust, what it signed, and a client cert it did not."""

    ca: Path
    server: KeyPair
    client: KeyPair
    stranger: KeyPair  # signed by another CA


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _sign(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: Issuer | None,
    extensions: list[tuple[x509.ExtensionType, bool]],
) -> x509.Certificate:
    """A certificate for `key`, signed by `issuer` (self-signed without one), valid for a day."""
    signer_key, signer = issuer if issuer else (key, None)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(signer.subject if signer else _name(subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer_key.public_key()),
            critical=False,
        )
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(signer_key, hashes.SHA256())


def _ca(common_name: str) -> Issuer:
    key = ec.generate_private_key(ec.SECP256R1())
    usage = x509.KeyUsage(
        digital_signature=False,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )
    cert = _sign(
        common_name,
        key,
        None,
        [(x509.BasicConstraints(ca=True, path_length=0), True), (usage, True)],
    )
    return key, cert


def _leaf(
    directory: Path,
    name: str,
    common_name: str,
    issuer: Issuer,
    purpose: x509.ObjectIdentifier,
    alt_names: list[x509.GeneralName] | None = None,
) -> KeyPair:
    """A key and a certificate signed by `issuer` for one purpose (server or client)."""
    key = ec.generate_private_key(ec.SECP256R1())
    extensions: list[tuple[x509.ExtensionType, bool]] = [
        (x509.BasicConstraints(ca=False, path_length=None), True),
        (x509.ExtendedKeyUsage([purpose]), False),
    ]
    if alt_names:
        extensions.append((x509.SubjectAlternativeName(alt_names), False))
    pair = KeyPair(directory / f"{name}.crt", directory / f"{name}.key")
    pair.cert.write_bytes(
        _sign(common_name, key, issuer, extensions).public_bytes(serialization.Encoding.PEM)
    )
    pair.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    pair.key.chmod(0o600)
    return pair


def make_pki(directory: Path, client_name: str) -> Pki:
    """A CA, the broker's certificate for 127.0.0.1 and localhost, a client certificate for
    `client_name`, and one for the same name from a CA nobody trusts."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = _ca("fedsaga test CA")
    ca_file = directory / "ca.crt"
    ca_file.write_bytes(ca[1].public_bytes(serialization.Encoding.PEM))
    server_names: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ]
    return Pki(
        ca=ca_file,
        server=_leaf(
            directory, "server", "localhost", ca, ExtendedKeyUsageOID.SERVER_AUTH, server_names
        ),
        client=_leaf(directory, "client", client_name, ca, ExtendedKeyUsageOID.CLIENT_AUTH),
        stranger=_leaf(
            directory,
            "stranger",
            client_name,
            _ca("someone else's CA"),
            ExtendedKeyUsageOID.CLIENT_AUTH,
        ),
    )


def password_file(path: Path, passwords: Mapping[str, str]) -> Path:
    """A mosquitto password file for `passwords` (user -> password), hashed by
    `mosquitto_passwd -U` in place."""
    path.write_text("".join(f"{user}:{password}\n" for user, password in passwords.items()))
    path.chmod(0o600)
    subprocess.run([find_binary("mosquitto_passwd"), "-U", str(path)], check=True)
    return path
