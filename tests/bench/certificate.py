"""The certificate of ``--tls``: made at run time, deleted after.

A benchmark must not depend on files lying around, nor leave a private key
behind: each TLS run takes a fresh server certificate of a fresh test CA
from :mod:`tests.certs`, in a temporary directory removed afterwards. The
generator trusts that CA alone and checks the address in the certificate,
so it verifies, and pays, as a real client does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ssl
from collections.abc import Iterator
from pathlib import Path

from tests.certs import CertFiles, make_certificates, throwaway


@dataclasses.dataclass(frozen=True)
class Certificate:
    """A server's certificate and key, and the CA that vouches for it."""

    files: CertFiles

    def server_options(self) -> tuple[str, ...]:
        """The server's options that make it speak TLS with this certificate."""
        return ("--certfile", str(self.files.cert), "--keyfile", str(self.files.key))

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts the certificate's CA alone, address
        checked."""
        context = ssl.create_default_context(cafile=str(self.files.ca))
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return context


@contextlib.contextmanager
def run_certificate() -> Iterator[Certificate]:
    """A fresh certificate for the run; its directory, key included, is
    removed on the way out."""
    with throwaway("bench-tls-") as files:
        yield Certificate(files)


def make_certificate(directory: Path) -> Certificate:
    """A fresh certificate, written into ``directory``."""
    return Certificate(make_certificates(directory).good)
