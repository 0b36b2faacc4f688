"""One WebSocket connection from the terminal client to the server.

wsproto turns bytes into events and events into bytes; this module moves the
bytes between it and a non-blocking socket, as the server's session does. It
starts no thread: one owner (the chat link's thread) calls everything here.
Every wait is a select() on the socket and on a :class:`Waker`, with a
deadline, so that another thread can always get the owner's attention.
Over TLS (``wss://``), the bytes of the socket pass through a
:class:`~broadcast_sync.tls.MemoryTLS`, and the waits stay the same:
see that module's strategy.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import enum
import errno
import os
import select
import socket
import ssl
import time
from collections.abc import Callable

from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.frame_protocol import CloseReason
from wsproto.utilities import RemoteProtocolError

from broadcast_sync.tls import MemoryTLS, describe_tls_error

#: Bytes read from the socket at a time.
RECEIVE_BYTES = 65536


class HandshakeRejected(Exception):
    """The server refused the connection with an HTTP status."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status} {reason}".strip())
        self.status = status
        self.reason = reason


class Interrupted(Exception):
    """The owner was asked to stop while it waited for the server."""


class Waker:
    """Wakes a thread out of select(): a socket pair, a byte per wake-up.

    Any thread may call :meth:`wake`; the owner waits with :meth:`wait`.
    """

    def __init__(self) -> None:
        self._receiver, self._sender = socket.socketpair()
        self._receiver.setblocking(False)
        self._sender.setblocking(False)

    def wake(self) -> None:
        """Make the waker readable."""
        with contextlib.suppress(BlockingIOError):  # full: readable already
            self._sender.send(b"\0")

    def wait(
        self,
        sock: socket.socket | None,
        *,
        read: bool = True,
        write: bool = False,
        timeout: float,
    ) -> tuple[bool, bool]:
        """Wait until ``sock`` is readable (with ``read``) or writable (with
        ``write``), a wake-up, or ``timeout`` seconds; consume the wake-ups.

        Returns:
            Whether ``sock`` is readable, and whether it is writable.
        """
        waker = self._receiver.fileno()
        fd = -1 if sock is None else sock.fileno()
        readers = [waker, fd] if read and fd >= 0 else [waker]
        writers = [fd] if write and fd >= 0 else []
        readable, writable, _ = select.select(readers, writers, [], max(timeout, 0))
        if waker in readable:
            with contextlib.suppress(BlockingIOError):
                while self._receiver.recv(4096):
                    pass
        return fd in readable, fd in writable

    def close(self) -> None:
        """Release both sockets."""
        self._receiver.close()
        self._sender.close()


class Ending(enum.Enum):
    """How a connection ended."""

    #: The server sent a close frame first, and we answered it.
    SERVER_CLOSED = "server closed"
    #: We sent a close frame: we were leaving.
    CLIENT_CLOSED = "client closed"
    #: No closing handshake: the connection broke, or stopped answering.
    DROPPED = "dropped"
    #: The server broke the protocol; we closed with the code it implies.
    PROTOCOL_ERROR = "protocol error"


@dataclasses.dataclass(frozen=True)
class Closed:
    """The end of a connection: how, and the close code and reason."""

    ending: Ending
    code: int
    reason: str = ""


@dataclasses.dataclass
class _Frame:
    """Bytes to write, and the line they carry if they are a message."""

    data: bytes
    line: str | None = None
    written: int = 0


class ClientConnection:
    """A WebSocket connection to the server, as its client.

    Open it with :meth:`open`. Then its owner waits for :attr:`sock` to be
    readable (and writable while :attr:`wants_write`), calls :meth:`read`
    and :meth:`flush`, and takes the messages with :meth:`take_messages`,
    until :attr:`eof`; then :meth:`close_socket`.
    """

    def __init__(
        self, sock: socket.socket, ws: WSConnection, tls: MemoryTLS | None = None
    ) -> None:
        self.sock = sock
        self._ws = ws
        #: The connection's TLS, which every byte passes through; None: plain.
        self._tls = tls
        #: How the connection ended, once it did (the closing handshake may
        #: still have to reach the end of the socket).
        self.closed: Closed | None = None
        #: True once the server has closed the socket, or it broke.
        self.eof = False
        #: Monotonic time of the last bytes received.
        self.last_received = time.monotonic()
        self._outgoing: collections.deque[_Frame] = collections.deque()
        #: Fragments of the message being received.
        self._fragments: list[str | bytes] = []
        #: Set once we sent a close frame.
        self._close_sent = False
        #: Why the connection broke, when it did without a close frame.
        self._broken = ""

    @classmethod
    def open(
        cls,
        host: str,
        port: int,
        target: str,
        *,
        tls: ssl.SSLContext | None = None,
        timeout: float,
        waker: Waker,
        should_stop: Callable[[], bool],
    ) -> ClientConnection:
        """Connect to ``host:port`` and do the handshake for ``target``.

        Args:
            tls: Speak TLS, with this context, before the handshake.
            timeout: Seconds that connecting, TLS and the handshake may take.
            waker: Wakes the wait to check ``should_stop``.
            should_stop: Whether to give up at once, raising Interrupted.

        Raises:
            HandshakeRejected: if the server answers with an HTTP status.
            Interrupted: if ``should_stop`` said so.
            ssl.SSLCertVerificationError: if the server's certificate is not
                trusted.
            OSError: if the connection fails, times out (TimeoutError), or
                the answer is not a TLS or WebSocket handshake
                (ConnectionError).
        """
        deadline = time.monotonic() + timeout

        def wait(sock: socket.socket, *, write: bool) -> None:
            _wait(sock, write=write, deadline=deadline, waker=waker, stop=should_stop)

        sock = _connect(host, port, wait)
        try:
            secure = None
            if tls is not None:
                secure = MemoryTLS(tls, server_side=False, server_hostname=host)
                _tls_handshake(sock, secure, wait)
            connection = cls(sock, WSConnection(ConnectionType.CLIENT), secure)
            connection._handshake(_host_header(host, port), target, wait)
        except BaseException:
            sock.close()
            raise
        return connection

    def _handshake(self, host: str, target: str, wait: Callable[..., None]) -> None:
        self._queue(self._ws.send(Request(host=host, target=target)))
        self.flush()
        while self.wants_write and not self.eof:
            wait(self.sock, write=True)
            self.flush()
        if self.eof:
            raise ConnectionError(self._broken)
        status = 0
        body = b""
        while True:
            wait(self.sock, write=False)
            data = self._receive()
            if data == b"":
                continue
            try:
                self._ws.receive_data(data)
                for event in self._ws.events():
                    if isinstance(event, AcceptConnection):
                        # Frames sent with the response wait in wsproto for
                        # take_messages().
                        self.last_received = time.monotonic()
                        return
                    if isinstance(event, RejectConnection):
                        status = event.status_code
                        if not event.has_body:
                            raise HandshakeRejected(status, "")
                    elif isinstance(event, RejectData):
                        body += event.data
                        if event.body_finished:
                            text = body.decode("utf-8", "replace").strip()
                            raise HandshakeRejected(status, text)
            except RemoteProtocolError as exc:
                raise ConnectionError(f"not a WebSocket handshake: {exc}") from None
            if data is None:
                raise ConnectionError(
                    "the server closed the connection during the handshake"
                )

    @property
    def wants_write(self) -> bool:
        """Whether bytes wait for the socket to take them."""
        return bool(self._outgoing)

    def send_text(self, line: str) -> bool:
        """Queue ``line`` as a text message; False once closing."""
        if self._ws.state is not ConnectionState.OPEN:
            return False
        self._queue(self._ws.send(TextMessage(data=line)), line)
        return True

    def ping(self) -> None:
        """Queue a ping: the server's pong, or anything, proves it is there."""
        if self._ws.state is ConnectionState.OPEN:
            self._queue(self._ws.send(Ping()))

    def close(self, code: int = CloseReason.NORMAL_CLOSURE) -> None:
        """Start the closing handshake, after what is queued."""
        if self._ws.state is ConnectionState.OPEN:
            self._close_sent = True
            self._queue(self._ws.send(CloseConnection(code=code)))

    def abort(self, reason: str) -> None:
        """End the connection now, without a closing handshake; then
        :meth:`take_messages` reports it."""
        self._break(reason)
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    def unsent_lines(self) -> list[str]:
        """The lines queued but not written whole: the server never got them."""
        return [frame.line for frame in self._outgoing if frame.line is not None]

    def flush(self) -> None:
        """Write what the socket takes now."""
        while self._outgoing and not self.eof:
            frame = self._outgoing[0]
            try:
                frame.written += self.sock.send(frame.data[frame.written :])
            except BlockingIOError:
                return
            except OSError as exc:
                self._break(describe_error(exc))
                return
            if frame.written == len(frame.data):
                self._outgoing.popleft()

    def read(self) -> None:
        """Read what the socket has; :meth:`take_messages` gives the result."""
        try:
            data = self._receive()
        except OSError as exc:  # ssl.SSLError included
            self._break(describe_error(exc))
            return
        if data is None:
            self._break("closed without a close frame")
            return
        if data and self._ws.state is not ConnectionState.CLOSED:
            self._ws.receive_data(data)
        # Else a part of a TLS record, or what follows the closing
        # handshake: dropped.

    def _receive(self) -> bytes | None:
        """The application bytes that the socket has: b"" if none yet (none
        came, or only a part of a TLS record), None at its end.

        Raises:
            OSError: if reading fails (ssl.SSLError: TLS failed).
        """
        try:
            data = self.sock.recv(RECEIVE_BYTES)
        except BlockingIOError:
            return b""
        if not data:
            return None
        self.last_received = time.monotonic()
        if self._tls is None:
            return data
        plain = self._tls.decode(data)
        # Reading may give the SSL object something to answer (a key update).
        if answer := self._tls.output():
            self._outgoing.append(_Frame(answer))
        return plain

    def take_messages(self) -> list[str | bytes]:
        """The messages received whole; pings answered, closes handled."""
        messages: list[str | bytes] = []
        for event in self._ws.events():
            if isinstance(event, (TextMessage, BytesMessage)):
                data = event.data
                self._fragments.append(data if isinstance(data, str) else bytes(data))
                if event.message_finished:
                    messages.append(_joined(self._fragments))
                    self._fragments = []
            elif isinstance(event, Ping):
                if self._ws.state is ConnectionState.OPEN:
                    self._queue(self._ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                self._on_close(event)
        return messages

    def close_socket(self) -> None:
        """Close the socket: the connection is over."""
        self.sock.close()

    def _on_close(self, event: CloseConnection) -> None:
        if self.closed is not None:
            return
        reason = event.reason or ""
        if self._close_sent:
            ending = Ending.CLIENT_CLOSED
        elif self._broken:
            ending, reason = Ending.DROPPED, self._broken
        elif self._ws.state is ConnectionState.REMOTE_CLOSING:
            ending = Ending.SERVER_CLOSED
            # RFC 6455, section 5.5.1: answer, echoing the code.
            self._queue(self._ws.send(CloseConnection(event.code)))
        else:  # still open: wsproto found a protocol error in a frame
            ending = Ending.PROTOCOL_ERROR
            self._queue(self._ws.send(CloseConnection(event.code, reason)))
        self.closed = Closed(ending, event.code, reason)

    def _break(self, reason: str) -> None:
        """The socket is done: end of file, an error, or no answer.

        Unless the closing handshake is over, wsproto reports it as a close
        (1006) to :meth:`take_messages`, after the messages before it.
        """
        self.eof = True
        if self._broken:
            return
        self._broken = reason
        if self._ws.state is not ConnectionState.CLOSED:
            self._ws.receive_data(None)

    def _queue(self, data: bytes, line: str | None = None) -> None:
        """Queue ``data`` for the socket, encrypted first over TLS: frames
        are encrypted in the order they are queued, which is the order in
        which they must be written."""
        if self._tls is not None:
            data = self._tls.encode(data)
        self._outgoing.append(_Frame(data, line))


def _wait(
    sock: socket.socket,
    *,
    write: bool,
    deadline: float,
    waker: Waker,
    stop: Callable[[], bool],
) -> None:
    """Wait until ``sock`` is readable (or writable); wake-ups check ``stop``.

    Raises:
        Interrupted: if ``stop()`` is true.
        TimeoutError: at ``deadline``.
    """
    while not stop():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(errno.ETIMEDOUT, "timed out")
        if any(waker.wait(sock, read=not write, write=write, timeout=remaining)):
            return
    raise Interrupted


def _connect(host: str, port: int, wait: Callable[..., None]) -> socket.socket:
    """A socket connected to ``host:port``: each of its addresses in turn.

    The name lookup has no timeout of ours: the resolver's own (resolv.conf)
    bounds it, and an address needs none.
    """
    error: OSError = OSError(f"no address for {host}")
    for family, kind, protocol, _, address in socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM
    ):
        sock = socket.socket(family, kind, protocol)
        try:
            sock.setblocking(False)
            code = sock.connect_ex(address)
            if code in (errno.EINPROGRESS, errno.EAGAIN):
                wait(sock, write=True)
                code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                raise OSError(code, os.strerror(code))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except TimeoutError:
            sock.close()
            raise  # the deadline is for all the addresses
        except OSError as exc:
            sock.close()
            error = exc
            continue
        except BaseException:
            sock.close()
            raise
        return sock
    raise error


def _tls_handshake(
    sock: socket.socket, tls: MemoryTLS, wait: Callable[..., None]
) -> None:
    """Do the TLS handshake on ``sock``, waiting for it with ``wait``.

    Raises:
        ssl.SSLCertVerificationError: if the server's certificate is not
            trusted.
        ConnectionError: if the handshake fails otherwise.
        TimeoutError, Interrupted: as ``wait``.
    """
    while True:
        try:
            done = tls.handshake()
        except ssl.SSLCertVerificationError:
            # Best effort: tell the server why, with the alert OpenSSL made.
            with contextlib.suppress(OSError):
                sock.send(tls.output())
            raise
        except ssl.SSLError as exc:
            with contextlib.suppress(OSError):
                sock.send(tls.output())
            raise ConnectionError(f"TLS handshake failed: {_tls_failure(exc)}") from exc
        _send_whole(sock, tls.output(), wait)
        if done:
            return
        wait(sock, write=False)
        try:
            data = sock.recv(RECEIVE_BYTES)
        except BlockingIOError:
            continue
        if not data:
            raise ConnectionError(
                "the server closed the connection during the TLS handshake"
            )
        tls.feed(data)


def _tls_failure(exc: ssl.SSLError) -> str:
    """Why a TLS handshake failed, with a hint when the server answered in
    plain text: no TLS server at all."""
    reason = describe_tls_error(exc)
    if exc.reason in ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE"):
        reason += " (is it a plain ws:// server?)"
    return reason


def _send_whole(sock: socket.socket, data: bytes, wait: Callable[..., None]) -> None:
    """Send all of ``data``, waiting with ``wait`` while the socket is full."""
    sent = 0
    while sent < len(data):
        try:
            sent += sock.send(data[sent:])
        except BlockingIOError:
            wait(sock, write=True)


def _host_header(host: str, port: int) -> str:
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    return f"{host}:{port}"


def _joined(fragments: list[str | bytes]) -> str | bytes:
    if fragments and isinstance(fragments[0], bytes):
        return b"".join(f for f in fragments if isinstance(f, bytes))
    return "".join(f for f in fragments if isinstance(f, str))


def describe_error(exc: OSError) -> str:
    """What went wrong, in a few words: ``connection refused``."""
    if isinstance(exc, ssl.SSLError):
        return f"TLS error: {describe_tls_error(exc)}"
    if exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__
