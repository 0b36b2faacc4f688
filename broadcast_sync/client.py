"""The terminal client: ``broadcast-server connect``.

The main thread reads lines and sends them; a receiver thread prints what
arrives. simple-websocket runs its own thread that reads the socket.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import sys
import threading
import urllib.parse
from collections.abc import Iterator
from types import FrameType

import simple_websocket
from simple_websocket.errors import SimpleWebsocketError
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    RejectConnection,
    RejectData,
    Request,
)
from wsproto.frame_protocol import CloseReason
from wsproto.utilities import LocalProtocolError

from broadcast_sync.terminal import PROMPT, Console
from broadcast_sync.validation import escape_controls

#: How long the server may take to answer the handshake.
HANDSHAKE_TIMEOUT = 10.0
#: How long the server may take to answer our close frame.
CLOSE_TIMEOUT = 5.0


class HandshakeRejected(Exception):
    """The server refused the connection with an HTTP status."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status} {reason}".strip())
        self.status = status
        self.reason = reason


class ChatClient(simple_websocket.Client):  # type: ignore[misc]
    """simple-websocket's client, with a few changes.

    A refused handshake raises :class:`HandshakeRejected` with the server's
    reason; frames that arrive with the handshake's response are not left
    waiting; a close from the server is answered (RFC 6455, section 5.5.1);
    and :meth:`close` waits for the server's close frame before it closes
    the socket, so that nothing sent just before is lost.
    """

    def handshake(self) -> None:
        """Send the upgrade request and wait for the server's answer."""
        self.sock.settimeout(HANDSHAKE_TIMEOUT)
        self.sock.sendall(self.ws.send(Request(host=self.host, target=self.path)))
        status = 0
        body = b""
        while True:
            data = self.sock.recv(self.receive_bytes)
            self.ws.receive_data(data or None)
            for event in self.ws.events():
                if isinstance(event, AcceptConnection):
                    self.sock.settimeout(None)
                    self.connected = True
                    return
                if isinstance(event, RejectConnection):
                    status = event.status_code
                    if not event.has_body:
                        raise HandshakeRejected(status, "")
                elif isinstance(event, RejectData):
                    body += event.data
                    if event.body_finished:
                        raise HandshakeRejected(
                            status, body.decode("utf-8", "replace").strip()
                        )
            if not data:
                raise ConnectionError(
                    "the server closed the connection during the handshake"
                )

    def _thread(self) -> None:
        # Frames that came with the handshake's response are in wsproto's
        # buffer already: simple-websocket would only see them with more data.
        self.connected = self._handle_events()
        super()._thread()

    def _handle_events(self) -> bool:
        keep_going: bool = super()._handle_events()
        if self.ws.state is ConnectionState.REMOTE_CLOSING:
            # simple-websocket answers a close only on the server side.
            with contextlib.suppress(OSError, LocalProtocolError):
                self.sock.sendall(self.ws.send(CloseConnection(self.close_reason)))
        return keep_going

    def close(self, reason: int | None = None, message: str | None = None) -> None:
        """Send a close frame, wait for the server's, then close the socket."""
        if not self.connected:
            self.thread.join(CLOSE_TIMEOUT)  # it may be answering the server
        else:
            frame = self.ws.send(
                CloseConnection(reason or CloseReason.NORMAL_CLOSURE, message)
            )
            with contextlib.suppress(OSError):
                self.sock.sendall(frame)
            # simple-websocket's thread ends when the server's close arrives.
            self.thread.join(CLOSE_TIMEOUT)
            if self.thread.is_alive():
                with contextlib.suppress(OSError):
                    self.sock.shutdown(socket.SHUT_RDWR)
                self.thread.join()
        self.sock.close()


def chat_url(host: str, port: int, username: str) -> str:
    """The server's WebSocket URL for ``username``."""
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    query = urllib.parse.urlencode({"username": username})
    return f"ws://{host}:{port}/ws?{query}"


class _Session:
    """What the two threads of the client share.

    ``leaving`` is set by the main thread before it closes; ``lost`` by the
    receiver when the server closed first. Both are written once.
    """

    def __init__(self, ws: ChatClient, console: Console) -> None:
        self.ws = ws
        self.console = console
        self.leaving = False
        self.lost: str | None = None


def run_client(host: str, port: int, username: str) -> int:
    """Chat until end of input, Ctrl+C, or the server closes; return the exit status."""
    where = escape_controls(f"{host}:{port} as {username}")
    print(f"Connecting to {where}...", flush=True)
    try:
        ws = ChatClient.connect(chat_url(host, port, username))
    except HandshakeRejected as exc:
        return _fail(f"the server refused the connection: {exc}")
    except (OSError, SimpleWebsocketError) as exc:
        return _fail(f"cannot connect to {host}:{port}: {_describe(exc)}")
    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    session = _Session(ws, Console(sys.stdout, interactive))
    receiver = threading.Thread(target=_receive_loop, args=(session,), name="receiver")

    def interrupt(signum: int, frame: FrameType | None) -> None:
        # Ctrl+C, or the receiver waking us: from leaving on, closing goes on.
        if not session.leaving:
            raise KeyboardInterrupt

    previous_handler = signal.signal(signal.SIGINT, interrupt)
    try:
        receiver.start()
        _send_lines(session, _input_lines(interactive))
    except KeyboardInterrupt:
        if interactive:
            print()
    session.leaving = True
    ws.close()
    receiver.join()
    signal.signal(signal.SIGINT, previous_handler)
    if session.lost is not None:
        return _fail(session.lost)
    return 0


def _input_lines(interactive: bool) -> Iterator[str]:
    if not interactive:
        for line in sys.stdin:
            yield line.rstrip("\r\n")
        return
    import readline  # noqa: F401, PLC0415  (line editing and history for input())

    while True:
        try:
            yield input(PROMPT)
        except EOFError:
            print()
            return


def _send_lines(session: _Session, lines: Iterator[str]) -> None:
    for line in lines:
        if line.strip():
            try:
                session.ws.send(line)
            except (simple_websocket.ConnectionClosed, OSError):
                return  # the receiver reports why


def _receive_loop(session: _Session) -> None:
    try:
        while True:
            message = session.ws.receive()
            if isinstance(message, bytes):
                message = f"(binary message, {len(message)} bytes)"
            session.console.show(message)
    except simple_websocket.ConnectionClosed as exc:
        if not session.leaving:
            session.lost = _close_description(exc)
            # Wake the main thread from its blocking read of the input.
            signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)


def _close_description(exc: simple_websocket.ConnectionClosed) -> str:
    code = int(exc.reason)
    if code in (CloseReason.NO_STATUS_RCVD, CloseReason.ABNORMAL_CLOSURE):
        return "the server closed the connection"
    message = f": {exc.message}" if exc.message else ""
    return f"the server closed the connection ({code}{message})"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__


def _fail(message: str) -> int:
    print(f"broadcast-server: {message}", file=sys.stderr)
    return 1
