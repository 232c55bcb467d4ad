"""Self-signed TLS material and the token-signing key, created once per state directory.

``ensure_tls(state_dir)`` makes a local CA (``ca.pem``) and a leaf certificate for
``DNS:localhost``, ``IP:127.0.0.1`` and the rendezvous ("gateway") address ``IP:127.0.0.2``
signed by it (a leaf whose names differ from the wanted ones is made again), and reuses both on later runs
so clients that trust ``ca.pem`` (``NODE_EXTRA_CA_CERTS``, ``ssl.create_default_context(cafile=...)``)
keep working across restarts. ``ensure_signing_key`` does the same for the RSA key
the identity endpoint signs JWTs with. Private keys are written with mode 0600.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


SAN_IPS = ("127.0.0.1", "127.0.0.2")
"""IP addresses in the leaf's SAN: the namespace host and the rendezvous (gateway) host."""


def _san(ips: tuple[str, ...]) -> list[x509.GeneralName]:
    return [x509.DNSName("localhost"), *(x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips)]


def _valid(cert_path: Path, margin_days: int = 2, san: list[x509.GeneralName] | None = None) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (OSError, ValueError):
        return False
    if san is not None:
        try:
            names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            return False
        if set(names) != set(san):
            return False
    return cert.not_valid_after_utc > dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=margin_days)


def ensure_tls(state_dir: Path, ips: tuple[str, ...] = SAN_IPS) -> tuple[Path, Path, Path]:
    """Return ``(ca_cert, server_cert, server_key)`` paths, creating them if missing, expiring, or
    made for other names than ``localhost`` + ``ips``."""
    san = _san(tuple(dict.fromkeys(ips)))
    state_dir.mkdir(parents=True, exist_ok=True)
    ca_cert, ca_key = state_dir / "ca.pem", state_dir / "ca-key.pem"
    cert, key = state_dir / "server.pem", state_dir / "server-key.pem"
    now = dt.datetime.now(dt.timezone.utc)

    if not (ca_key.exists() and _valid(ca_cert, 30)):
        ca_private = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Relay Emulator Local CA")])
        ca = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(ca_private.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_private.public_key()), critical=False)
            .sign(ca_private, hashes.SHA256())
        )
        _write_private(ca_key, _pem_key(ca_private))
        ca_cert.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        if cert.exists():
            cert.unlink()  # the old leaf was signed by the old CA

    if not (key.exists() and _valid(cert, san=san)):
        ca_private = serialization.load_pem_private_key(ca_key.read_bytes(), None)
        ca = x509.load_pem_x509_certificate(ca_cert.read_bytes())
        leaf_private = ec.generate_private_key(ec.SECP256R1())
        leaf = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca.subject)
            .public_key(leaf_private.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            # Under 398 days so strict clients accept it; renewed automatically when close to expiry.
            .not_valid_after(now + dt.timedelta(days=365))
            .add_extension(
                x509.SubjectAlternativeName(san),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.public_key()), critical=False  # type: ignore[arg-type]
            )
            .sign(ca_private, hashes.SHA256())  # type: ignore[arg-type]
        )
        _write_private(key, _pem_key(leaf_private))
        cert.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    return ca_cert.resolve(), cert.resolve(), key.resolve()


def server_ssl_context(cert: Path, key: Path) -> ssl.SSLContext:
    """TLS server context for the relay port (HTTP/1.1 only: WebSocket upgrades need it)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def ensure_signing_key(state_dir: Path) -> rsa.RSAPrivateKey:
    """The RSA key the identity endpoint signs JWTs with; persisted so tokens survive a restart."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / "signing-key.pem"
    if path.exists():
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), None)
            if isinstance(key, rsa.RSAPrivateKey):
                return key
        except ValueError:
            pass
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    _write_private(path, _pem_key(key))
    return key
