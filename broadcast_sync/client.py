"""The terminal client: ``broadcast-server connect``.

The main thread reads the user's lines and hands them to the chat link
(``chatlink.py``), whose thread connects, reconnects, sends them and prints
what arrives. Ctrl+C stops whichever of the two is waiting.

Also here: :class:`ChatClient`, a simple-websocket client that the tests and
tools use to talk to the server.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from types import FrameType

import simple_websocket
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

from broadcast_sync.chatlink import CLOSE_TIMEOUT, HANDSHAKE_TIMEOUT, ChatLink
from broadcast_sync.clientconn import HandshakeRejected
from broadcast_sync.terminal import PROMPT, Console
from broadcast_sync.validation import escape_controls

__all__ = ["ChatClient", "HandshakeRejected", "run_client"]


class ChatClient(simple_websocket.Client):  # type: ignore[misc]
    """simple-websocket's client, with a few changes; the tests and tools
    use it (the terminal client has its own connection, ``clientconn.py``).

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


def run_client(host: str, port: int, username: str) -> int:
    """Chat until end of input or Ctrl+C, or until the link gives up;
    return the exit status."""
    where = escape_controls(f"{host}:{port} as {username}")
    print(f"Connecting to {where}...", flush=True)
    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    main_thread = threading.get_ident()
    # True while the main thread may be blocked in its input, which only a
    # signal interrupts. Written by the main thread, read by the link's.
    reading = True

    def wake_main() -> None:
        if reading:
            signal.pthread_kill(main_thread, signal.SIGINT)

    link = ChatLink(
        host, port, username, Console(sys.stdout, interactive), on_end=wake_main
    )

    def interrupt(signum: int, frame: FrameType | None) -> None:
        # Ctrl+C, or the link waking us. Raise once, to stop reading; after
        # that, the link is asked to stop (a no-op once it has).
        nonlocal reading
        if reading:
            reading = False
            raise KeyboardInterrupt
        link.interrupt()

    # SIGINT is held until the link's thread runs: a Ctrl+C must find it
    # started, to stop it; and the thread inherits the mask, so the signal
    # goes to the main thread, whose handler it is.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    previous_handler = signal.signal(signal.SIGINT, interrupt)
    prompted = False
    try:
        try:
            link.start()
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
            if link.wait_started():
                prompted = interactive
                for line in _input_lines(interactive):
                    if line.strip():
                        link.send(line)
                link.finish()
            reading = False
        except KeyboardInterrupt:
            if prompted:
                print()  # below the prompt
            link.interrupt()
        outcome = link.join()
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        signal.signal(signal.SIGINT, previous_handler)
    if outcome.error is not None:
        _warn(outcome.error)
    for line in outcome.unsent:
        _warn(f"not sent: {line}")
    return outcome.status


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


def _warn(message: str) -> None:
    print(f"broadcast-server: {escape_controls(message)}", file=sys.stderr)
