"""TLS as a function of bytes, for the server and the terminal client alike.

Strategy: TLS runs on an ``ssl.SSLObject`` over two ``ssl.MemoryBIO``s,
not on an ``ssl.SSLSocket``. Both sides wait on their raw socket (the
server in ``poll()``, the client in ``select()``), and an ``SSLSocket`` may
hold decrypted bytes that such a wait cannot see; its non-blocking calls
refuse send flags and raise their own errors; and one SSL object must never
be driven by two threads at once, while the server sends on one connection
from several. Over memory buffers, TLS becomes bytes in, bytes out, like
wsproto: its owner moves the wire bytes itself, and each decryption reads
out every complete record, so nothing waits unseen.
"""

from __future__ import annotations

import contextlib
import re
import ssl

#: Plaintext read out of the SSL object at a time: one TLS record's worth.
RECORD_BYTES = 16384
#: OpenSSL's decoration of a message: "[SSL: CODE] " before, and
#: " (_ssl.c:1006)" after.
_OPENSSL_DECORATION = re.compile(r"^\[[^\]]*\]\s*|\s*\(_ssl\.c:\d+\)$")


class MemoryTLS:
    """One connection's TLS over memory buffers (see the module's strategy).

    Its owner sends :meth:`output` (or what :meth:`encode` returns) on the
    socket, and hands the socket's bytes to :meth:`feed` during the
    handshake, to :meth:`decode` afterwards. Not thread-safe: its owner
    serializes the calls.
    """

    def __init__(
        self,
        context: ssl.SSLContext,
        *,
        server_side: bool,
        server_hostname: str | None = None,
    ) -> None:
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        # A client checks the host name against the certificate (an IP
        # address against its IP addresses), and sends it in SNI unless it
        # is an address.
        self._tls = context.wrap_bio(
            self._incoming,
            self._outgoing,
            server_side=server_side,
            server_hostname=server_hostname,
        )

    def handshake(self) -> bool:
        """Take the handshake as far as the bytes fed so far allow; True once
        it is complete. Either way, :meth:`output` has what to send.

        Raises:
            ssl.SSLError: if it fails (``ssl.SSLCertVerificationError`` for a
                certificate that is not trusted).
        """
        try:
            self._tls.do_handshake()
        except ssl.SSLWantReadError:
            return False
        return True

    def feed(self, data: bytes) -> None:
        """Take wire bytes; b"" says that the peer closed."""
        if data:
            self._incoming.write(data)
        else:
            self._incoming.write_eof()

    def output(self) -> bytes:
        """The wire bytes the SSL object has to send (handshake flights,
        alerts, session tickets)."""
        return self._outgoing.read()

    def encode(self, data: bytes | memoryview) -> bytes:
        """``data`` encrypted, after whatever the SSL object had to send;
        ``data`` may be empty."""
        if data:
            self._tls.write(data)
        return self._outgoing.read()

    def decode(self, data: bytes) -> bytes:
        """The plaintext of every complete record of ``data`` and of what
        came before it; a part of a record waits for the rest.

        Raises:
            ssl.SSLError: if a record is corrupt, or the peer sent an alert.
        """
        if data:
            self._incoming.write(data)
        chunks = []
        while True:
            try:
                chunk = self._tls.read(RECORD_BYTES)
            except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                # Zero return: the peer's close_notify. The end of the
                # socket follows, and the owner acts on that.
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)

    def close(self) -> bytes:
        """A close_notify alert, to send before shutting the socket."""
        # SSLWantReadError: it waits for the peer's close_notify; we do not.
        with contextlib.suppress(ssl.SSLError):
            self._tls.unwrap()
        return self._outgoing.read()


def describe_tls_error(exc: ssl.SSLError) -> str:
    """What OpenSSL says, without its decoration: ``wrong version number``."""
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        message = str(exc.verify_message)
    else:
        message = _OPENSSL_DECORATION.sub("", str(exc.args[1] if exc.args[1:] else exc))
    message = message.strip().rstrip(".")
    if not message:
        return type(exc).__name__
    if message[1:2].islower():  # "Hostname mismatch", not "IP address mismatch"
        message = message[0].lower() + message[1:]
    return message
