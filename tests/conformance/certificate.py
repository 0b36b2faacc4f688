"""The throwaway certificate of ``--tls``: made at run time, removed after.

A conformance run must depend on no file lying around and leave no private
key behind: each TLS run makes a self-signed certificate for 127.0.0.1 in a
temporary directory, starts the server with it, and removes it afterwards.
EC P-256: generated in milliseconds, and the suite's side handles it (its
pyOpenSSL runs on the OpenSSL 1.1.1 of the ``cryptography`` 3.3.2 wheel).

wstest verifies it as a real client would: the spec names the address it
expects (``hostname``: Twisted's ``optionsForClientTLS``, which checks the
chain and the address in the certificate with ``service_identity``), and
``SSL_CERT_FILE`` makes this certificate its only trust anchor. Without
``hostname`` the fuzzingclient would use ``ClientContextFactory``, which
verifies nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import ipaddress
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tests.conformance.environment import SetupError

#: The address the server listens on, and the only one the certificate is for.
HOST = "127.0.0.1"
#: Long enough for any run; short, in case a copy escapes.
VALIDITY = datetime.timedelta(days=1)
#: Before now by this much: a clock a little behind still accepts it.
BACKDATE = datetime.timedelta(minutes=5)
#: Where OpenSSL, and so wstest's pyOpenSSL, finds its trusted certificates.
TRUST_VARIABLE = "SSL_CERT_FILE"


@dataclasses.dataclass(frozen=True)
class Certificate:
    """A self-signed certificate and its key, as PEM files, for one address."""

    host: str
    certfile: Path
    keyfile: Path

    def server_options(self) -> tuple[str, ...]:
        """The server's options that make it speak TLS with this certificate."""
        return ("--certfile", str(self.certfile), "--keyfile", str(self.keyfile))

    def client_environment(self) -> dict[str, str]:
        """wstest's environment additions: this certificate is all it trusts."""
        return {TRUST_VARIABLE: str(self.certfile)}


@contextlib.contextmanager
def self_signed(host: str = HOST) -> Iterator[Certificate]:
    """A fresh self-signed certificate for the IP address ``host``.

    The directory that holds it, key included, is removed on the way out.

    Raises:
        SetupError: if ``cryptography`` is not installed.
    """
    with tempfile.TemporaryDirectory(prefix="conformance-tls-") as directory:
        yield make_certificate(Path(directory), host)


def make_certificate(directory: Path, host: str = HOST) -> Certificate:
    """Write a self-signed certificate for ``host`` and its key into ``directory``.

    Imported here: only ``--tls`` needs ``cryptography``.

    Raises:
        SetupError: if ``cryptography`` is not installed.
    """
    try:
        from cryptography import x509  # noqa: PLC0415
        from cryptography.hazmat.primitives import (  # noqa: PLC0415
            hashes,
            serialization,
        )
        from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415
        from cryptography.x509.oid import NameOID  # noqa: PLC0415
    except ImportError as exc:
        raise SetupError(
            f"--tls makes its certificate with the cryptography package ({exc}); "
            "install it: .venv/bin/pip install cryptography"
        ) from exc

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.timezone.utc)
    public = key.public_key()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + VALIDITY)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]),
            critical=False,
        )
        # Its own trust anchor: a CA that may sign nothing but itself.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), False)
        .sign(key, hashes.SHA256())
    )
    certfile = directory / "cert.pem"
    keyfile = directory / "key.pem"
    certfile.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    keyfile.touch(mode=0o600)  # private before a byte of the key is in it
    keyfile.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return Certificate(host, certfile, keyfile)
