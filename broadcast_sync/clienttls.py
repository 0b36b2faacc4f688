"""TLS for the terminal client: whom it trusts, and what it says when it
does not.

The connection itself runs TLS as bytes to bytes (:mod:`broadcast_sync.tls`),
as the server does: the client waits in select() on its raw socket, which
an ``SSLSocket`` could hold decrypted bytes from.
"""

from __future__ import annotations

import ssl

from broadcast_sync.tls import describe_tls_error

#: Verification errors that trusting the right CA would fix (OpenSSL's
#: X509_V_ERR_* codes): the server's own CA is not the system's.
UNKNOWN_ISSUER_CODES = frozenset(
    {
        2,  # unable to get issuer certificate
        18,  # self-signed certificate
        19,  # self-signed certificate in certificate chain
        20,  # unable to get local issuer certificate
        21,  # unable to verify the first certificate
    }
)


class UnusableCAFile(Exception):
    """The CA file cannot be read, or holds no certificate; the message
    says which file, and why."""


def client_context(
    *, cafile: str | None = None, insecure: bool = False
) -> ssl.SSLContext:
    """The client's TLS context: TLS 1.2 or newer, the server's certificate
    checked against the system's CAs, or against ``cafile``'s alone, unless
    ``insecure``.

    Raises:
        UnusableCAFile: if ``cafile`` cannot be used.
    """
    if insecure:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        try:
            context = ssl.create_default_context(cafile=cafile)
        except ssl.SSLError as exc:  # not PEM, or no certificate in it
            reason = describe_tls_error(exc)
            raise UnusableCAFile(f"cannot use the CA file {cafile}: {reason}") from exc
        except OSError as exc:
            reason = (exc.strerror or str(exc)).lower()
            raise UnusableCAFile(f"cannot use the CA file {cafile}: {reason}") from exc
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def untrusted_certificate(where: str, exc: ssl.SSLCertVerificationError) -> str:
    """The line that says the certificate of ``where`` is not trusted, why,
    and, when trusting its CA would help, how."""
    hint = ""
    if exc.verify_code in UNKNOWN_ISSUER_CODES:
        hint = " (use --cafile or --insecure)"
    return f"TLS certificate of {where} not trusted: {describe_tls_error(exc)}{hint}"
