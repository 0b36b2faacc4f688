"""How bytes cross a client's connection: as they are, or through TLS.

The session sends on one connection from several threads, with
``MSG_DONTWAIT``, and its reader waits in ``poll()`` on the raw socket: so
TLS is bytes to bytes (:mod:`broadcast_sync.tls`), encrypted and decrypted
under the session's lock, and the ciphertext goes out exactly as plain
bytes do. The cost: encryption is per client, so a broadcast is encrypted
once per member.

A transport has two lives. During the handshake, one thread owns it and
reads with a deadline (:meth:`Transport.receive_by`). Afterwards, the
session calls :meth:`Transport.encode` and :meth:`Transport.decode`, always
holding its lock.
"""

from __future__ import annotations

import os
import socket
import ssl
import time
from collections.abc import Callable
from http import HTTPStatus
from typing import Protocol

from broadcast_sync.config import ServerConfig
from broadcast_sync.http11 import HTTPError
from broadcast_sync.tls import MemoryTLS, describe_tls_error

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

    @property
    def established(self) -> bool:
        """Whether the transport's own handshake is done, so that the client
        can be answered."""

    @property
    def encrypted(self) -> bool:
        """Whether the wire bytes differ from the application bytes: if not,
        :meth:`encode` and :meth:`decode` can be skipped on the hot paths."""

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

    def encode(self, data: bytes | memoryview) -> bytes:
        """The wire bytes that carry ``data``, with anything else the
        transport has to send; ``data`` may be empty."""

    def decode(self, data: bytes) -> bytes:
        """The application bytes in the wire bytes ``data``."""

    def closing(self) -> bytes:
        """The wire bytes that end the transport, sent before the socket's
        write side is shut."""


class PlainTransport:
    """Bytes as they are."""

    #: There is no handshake of its own to wait for.
    established = True
    encrypted = False

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def handshake(self, deadline: float) -> None:
        """Nothing to do."""

    def receive_by(self, deadline: float, size: int) -> bytes:
        """What the socket has, waiting for it until ``deadline``."""
        self.sock.settimeout(_remaining(deadline))
        return self.sock.recv(size)

    def encode(self, data: bytes | memoryview) -> bytes:
        """``data`` itself (as bytes: a bytes object is not copied)."""
        return bytes(data)

    def decode(self, data: bytes) -> bytes:
        """``data`` itself."""
        return data

    def closing(self) -> bytes:
        """Nothing: the socket's shutdown says it all."""
        return b""


class TLSTransport:
    """TLS over memory buffers (see :mod:`broadcast_sync.tls`)."""

    encrypted = True

    def __init__(self, sock: socket.socket, context: ssl.SSLContext) -> None:
        self.sock = sock
        self._tls = MemoryTLS(context, server_side=True)
        #: Whether the TLS handshake is done: before it, nothing can be
        #: said to the client, not even a refusal.
        self.established = False

    def handshake(self, deadline: float) -> None:
        """The TLS handshake, answering each flight of the client's.

        A plain HTTP request is answered with 400 in plain text, as nginx
        does, so that a user who typed http:// learns why.
        """
        try:
            while not self._tls.handshake():
                self._flush(deadline)
                self._tls.feed(self._receive(deadline))
        except ssl.SSLError as exc:
            if exc.reason == "HTTP_REQUEST":
                raise NotTLS from exc
            raise
        self._flush(deadline)  # its last flight, and session tickets
        self.established = True

    def receive_by(self, deadline: float, size: int) -> bytes:
        """Decrypted bytes, reading the socket until ``deadline`` for them."""
        while True:
            data = self._tls.decode(b"")
            if data:
                return data
            data = self._receive(deadline)
            if not data:
                return b""
            self._tls.feed(data)

    def encode(self, data: bytes | memoryview) -> bytes:
        """``data`` encrypted, after whatever TLS had to send."""
        return self._tls.encode(data)

    def decode(self, data: bytes) -> bytes:
        """Every complete record of ``data`` and what came before, decrypted."""
        return self._tls.decode(data)

    def closing(self) -> bytes:
        """A close_notify alert."""
        return self._tls.close()

    def _receive(self, deadline: float) -> bytes:
        self.sock.settimeout(_remaining(deadline))
        return self.sock.recv(RECEIVE_BYTES)

    def _flush(self, deadline: float) -> None:
        data = self._tls.output()
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
    password = _key_password(config)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_COMPRESSION
    files = config.certfile + (f" and {config.keyfile}" if config.keyfile else "")
    try:
        context.load_cert_chain(config.certfile, config.keyfile, password)
    except ssl.SSLError as exc:
        raise TLSSetupFailed(f"cannot use {files}: {describe_tls_error(exc)}") from exc
    except OSError as exc:
        reason = (exc.strerror or str(exc)).lower()
        raise TLSSetupFailed(f"cannot read {files}: {reason}") from exc
    return context


def _key_password(config: ServerConfig) -> Callable[[], str]:
    """What OpenSSL calls for the key's password, if the key has one.

    A function rather than a string: with no password given, OpenSSL would
    ask for one on the terminal, and a server must not wait there.
    """
    variable = config.keyfile_password_env

    def password() -> str:
        if variable is None:
            raise TLSSetupFailed(
                f"the key in {config.keyfile or config.certfile} is encrypted: "
                "give its password with --keyfile-password-env"
            )
        value = os.environ.get(variable)
        if value is None:
            raise TLSSetupFailed(f"the key's password variable {variable} is not set")
        return value

    return password
