"""How bytes cross a client's connection: as they are, or through TLS.

Strategy: TLS runs on an ``ssl.SSLObject`` over two ``ssl.MemoryBIO``s per
client, not on an ``ssl.SSLSocket``. The session's fast path needs three
things that an ``SSLSocket`` refuses: the dispatcher sends with
``MSG_DONTWAIT``, which it rejects; the reader waits in ``poll()`` on the
raw descriptor, and ``SSLSocket`` may hold decrypted bytes that ``poll()``
cannot see; and several threads send on one connection, while one SSL object
must never be driven by two threads at once. Over memory BIOs, TLS becomes
a function from bytes to bytes, like wsproto: the session encrypts under its
own lock and sends the ciphertext on the raw socket exactly as it sends
plain bytes, and the reader decrypts what it read under the same lock,
reading out every complete record, so nothing waits unseen. The cost:
encryption is per client, so a broadcast is encrypted once per member.

A transport has two lives. During the handshake, one thread owns it and
reads with a deadline (:meth:`Transport.receive_by`). Afterwards, the
session calls :meth:`Transport.encode` and :meth:`Transport.decode`, always
holding its lock.
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import time
from http import HTTPStatus
from typing import Protocol

from broadcast_sync.config import ServerConfig
from broadcast_sync.http11 import HTTPError

#: Plaintext read out of the SSL object at a time: one TLS record's worth.
RECORD_BYTES = 16384
#: Raw bytes read at a time during the handshake.
RECEIVE_BYTES = 4096


class TLSSetupFailed(Exception):
    """The certificate or key cannot be used; the message says why."""


class NotTLS(HTTPError):
    """A plain HTTP request on the TLS port: to be answered in plain text."""

    def __init__(self) -> None:
        super().__init__(
            HTTPStatus.BAD_REQUEST, "this port speaks TLS: use https:// or wss://"
        )


class Transport(Protocol):
    """The bytes of one connection, between its socket and wsproto."""

    @property
    def sock(self) -> socket.socket:
        """The connection's socket, which carries the wire bytes."""

    def handshake(self, deadline: float) -> None:
        """Complete the transport's own handshake by ``deadline``.

        Raises:
            TimeoutError: if it takes longer.
            NotTLS: if the client speaks plain HTTP to a TLS port.
            OSError: if it fails otherwise (``ssl.SSLError`` included).
        """

    def receive_by(self, deadline: float, size: int) -> bytes:
        """Application bytes, waiting for them until ``deadline``; b"" once
        the client has closed.

        Raises:
            TimeoutError: if none come in time.
        """

    def encode(self, data: bytes) -> bytes:
        """The wire bytes that carry ``data``, with anything else the
        transport has to send; ``data`` may be empty."""

    def decode(self, data: bytes) -> bytes:
        """The application bytes in the wire bytes ``data``."""

    def closing(self) -> bytes:
        """The wire bytes that end the transport, sent before the socket's
        write side is shut."""


class PlainTransport:
    """Bytes as they are."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def handshake(self, deadline: float) -> None:
        """Nothing to do."""

    def receive_by(self, deadline: float, size: int) -> bytes:
        """What the socket has, waiting for it until ``deadline``."""
        self.sock.settimeout(_remaining(deadline))
        return self.sock.recv(size)

    def encode(self, data: bytes) -> bytes:
        """``data`` itself."""
        return data

    def decode(self, data: bytes) -> bytes:
        """``data`` itself."""
        return data

    def closing(self) -> bytes:
        """Nothing: the socket's shutdown says it all."""
        return b""


class TLSTransport:
    """TLS on an SSL object over memory buffers (see the module's strategy)."""

    def __init__(self, sock: socket.socket, context: ssl.SSLContext) -> None:
        self.sock = sock
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_side=True)

    def handshake(self, deadline: float) -> None:
        """The TLS handshake, answering each flight of the client's.

        A plain HTTP request is answered with 400 in plain text, as nginx
        does, so that a user who typed http:// learns why.
        """
        while True:
            try:
                self._tls.do_handshake()
            except ssl.SSLWantReadError:
                self._flush(deadline)
                self._feed(deadline)
            except ssl.SSLError as exc:
                if exc.reason == "HTTP_REQUEST":
                    raise NotTLS from exc
                raise
            else:
                self._flush(deadline)  # its last flight, and session tickets
                return

    def receive_by(self, deadline: float, size: int) -> bytes:
        """Decrypted bytes, reading the socket until ``deadline`` for them."""
        while True:
            data = self.decode(b"")
            if data:
                return data
            if not self._feed(deadline):
                return b""

    def encode(self, data: bytes) -> bytes:
        """``data`` encrypted, after whatever the SSL object had to send."""
        if data:
            self._tls.write(data)
        return self._outgoing.read()

    def decode(self, data: bytes) -> bytes:
        """Every complete record of ``data`` and what came before, decrypted."""
        if data:
            self._incoming.write(data)
        chunks = []
        while True:
            try:
                chunk = self._tls.read(RECORD_BYTES)
            except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                # Zero return: the client's close_notify. The socket's end
                # follows, and the reader acts on that.
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)

    def closing(self) -> bytes:
        """A close_notify alert."""
        # SSLWantReadError: it waits for the client's close_notify; we do not.
        with contextlib.suppress(ssl.SSLError):
            self._tls.unwrap()
        return self._outgoing.read()

    def _feed(self, deadline: float) -> bool:
        """Read wire bytes into the SSL object; False at the end of input."""
        self.sock.settimeout(_remaining(deadline))
        data = self.sock.recv(RECEIVE_BYTES)
        if data:
            self._incoming.write(data)
        else:
            self._incoming.write_eof()
        return bool(data)

    def _flush(self, deadline: float) -> None:
        data = self._outgoing.read()
        if data:
            self.sock.settimeout(_remaining(deadline))
            self.sock.sendall(data)


def _remaining(deadline: float) -> float:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError
    return remaining


def tls_context(config: ServerConfig) -> ssl.SSLContext | None:
    """The server's TLS context, if ``config`` has a certificate.

    TLS 1.2 at least, the server's order of ciphers, no compression.

    Raises:
        TLSSetupFailed: if the certificate, the key or its password cannot
            be used.
    """
    if config.certfile is None:
        return None
    password = None
    if config.keyfile_password_env is not None:
        password = os.environ.get(config.keyfile_password_env)
        if password is None:
            raise TLSSetupFailed(
                f"the key's password variable {config.keyfile_password_env} is not set"
            )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_COMPRESSION
    try:
        context.load_cert_chain(config.certfile, config.keyfile, password)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        raise TLSSetupFailed(
            f"cannot use the certificate {config.certfile}"
            + (f" and the key {config.keyfile}" if config.keyfile else "")
            + f": {exc}"
        ) from exc
    return context
