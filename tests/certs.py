"""Certificates for the TLS tests, made once per test run with ``cryptography``.

A test CA signs a server certificate for ``localhost``, ``127.0.0.1`` and
``::1``; the broken variants (expired, for another host, self-signed, a key
that does not match, a key under a password) are made beside it, so that
each failure the client or the server must report has a file to cause it.
Keys are EC P-256: a few milliseconds each, where RSA would take a second.
Import the fixture where it is needed (``certs_fixture  # noqa: F401``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import ipaddress
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: The password of :attr:`Certificates.encrypted`'s key.
KEY_PASSWORD = "correct horse battery staple"
#: The names that the good server certificate is for.
SERVER_NAMES = ("localhost", "127.0.0.1", "::1")
#: The only name that :attr:`Certificates.wrong_host` is for.
OTHER_HOST = "chat.example.invalid"
#: How long the valid certificates last: far beyond any test run.
VALIDITY = datetime.timedelta(days=30)


@dataclasses.dataclass(frozen=True)
class CertFiles:
    """A server's certificate and key, and the CA that a client must trust
    to accept it, as PEM files."""

    ca: Path
    cert: Path
    key: Path


@dataclasses.dataclass(frozen=True)
class Certificates:
    """Every certificate the TLS tests use."""

    #: Signed by the test CA, for :data:`SERVER_NAMES`, valid now.
    good: CertFiles
    #: As ``good``, but its key is encrypted with :data:`KEY_PASSWORD`.
    encrypted: CertFiles
    #: Signed by the test CA, for :data:`SERVER_NAMES`, expired yesterday.
    expired: CertFiles
    #: Signed by the test CA, valid, but only for :data:`OTHER_HOST`.
    wrong_host: CertFiles
    #: Signed by its own key, for :data:`SERVER_NAMES`; its ``ca`` is itself.
    self_signed: CertFiles
    #: ``good``'s certificate with a key of its own: they do not match.
    mismatched: CertFiles
    #: A CA that signed none of these: trusting it alone trusts none.
    other_ca: Path


@dataclasses.dataclass(frozen=True)
class _Issuer:
    name: x509.Name
    key: ec.EllipticCurvePrivateKey


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _ca(common_name: str, now: datetime.datetime) -> tuple[_Issuer, x509.Certificate]:
    """A self-signed CA, allowed to sign server certificates only."""
    key = _new_key()
    name = _name(common_name)
    public = key.public_key()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), False)
        .sign(key, hashes.SHA256())
    )
    return _Issuer(name, key), certificate


def _server_certificate(
    key: ec.EllipticCurvePrivateKey,
    issuer: _Issuer | None,
    names: tuple[str, ...],
    not_before: datetime.datetime,
    not_after: datetime.datetime,
) -> x509.Certificate:
    """A certificate for ``names`` (DNS names and IP addresses), signed by
    ``issuer``, or by ``key`` itself if None."""
    subject = _name(names[0])
    signer = issuer or _Issuer(subject, key)
    alternatives: list[x509.GeneralName] = []
    for name in names:
        try:
            alternatives.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alternatives.append(x509.DNSName(name))
    public = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(signer.name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName(alternatives), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.key.public_key()),
            critical=False,
        )
        .sign(signer.key, hashes.SHA256())
    )


def _write_certificate(path: Path, certificate: x509.Certificate) -> Path:
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return path


def _write_key(
    path: Path, key: ec.EllipticCurvePrivateKey, password: str | None = None
) -> Path:
    encryption: serialization.KeySerializationEncryption = (
        serialization.NoEncryption()
        if password is None
        else serialization.BestAvailableEncryption(password.encode())
    )
    path.touch(mode=0o600)  # private before a byte of the key is in it
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
        )
    )
    return path


def make_certificates(directory: Path) -> Certificates:
    """Make every certificate of :class:`Certificates` in ``directory``."""
    now = datetime.datetime.now(datetime.timezone.utc)
    valid = (now - datetime.timedelta(days=1), now + VALIDITY)
    issuer, ca_certificate = _ca("broadcast-sync test CA", now)
    ca = _write_certificate(directory / "ca.pem", ca_certificate)
    _, other_ca_certificate = _ca("another test CA", now)
    other_ca = _write_certificate(directory / "other-ca.pem", other_ca_certificate)

    def signed(
        stem: str,
        key: ec.EllipticCurvePrivateKey | None = None,
        names: tuple[str, ...] = SERVER_NAMES,
        period: tuple[datetime.datetime, datetime.datetime] = valid,
    ) -> CertFiles:
        key = key or _new_key()
        certificate = _server_certificate(key, issuer, names, *period)
        return CertFiles(
            ca,
            _write_certificate(directory / f"{stem}.pem", certificate),
            _write_key(directory / f"{stem}-key.pem", key),
        )

    good_key = _new_key()
    good = signed("server", good_key)
    encrypted = CertFiles(
        ca,
        good.cert,
        _write_key(directory / "server-key-encrypted.pem", good_key, KEY_PASSWORD),
    )
    expired = signed(
        "expired", period=(now - 2 * VALIDITY, now - datetime.timedelta(days=1))
    )
    self_key = _new_key()
    self_cert = _write_certificate(
        directory / "self-signed.pem",
        _server_certificate(self_key, None, SERVER_NAMES, *valid),
    )
    return Certificates(
        good=good,
        encrypted=encrypted,
        expired=expired,
        wrong_host=signed("wrong-host", names=(OTHER_HOST,)),
        self_signed=CertFiles(
            self_cert,
            self_cert,
            _write_key(directory / "self-signed-key.pem", self_key),
        ),
        mismatched=CertFiles(
            ca, good.cert, _write_key(directory / "stranger-key.pem", _new_key())
        ),
        other_ca=other_ca,
    )


@contextlib.contextmanager
def throwaway(prefix: str) -> Iterator[CertFiles]:
    """A server certificate of a fresh test CA, in a temporary directory
    that is removed, keys included, on the way out: for a benchmark or a
    conformance run, which must leave no key behind."""
    with tempfile.TemporaryDirectory(prefix=prefix) as directory:
        yield make_certificates(Path(directory)).good


@pytest.fixture(scope="session", name="certs")
def certs_fixture(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    """The test certificates, made once for the whole test run."""
    return make_certificates(tmp_path_factory.mktemp("certs"))
