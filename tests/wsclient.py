"""A WebSocket client for the tests: simple-websocket's, made strict.

The terminal client has a connection of its own (``clientconn.py``); the
tests talk to the server through this one, an independent implementation.
"""

from __future__ import annotations

import contextlib
import socket

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

from broadcast_sync.clientconn import HandshakeRejected

#: How long the server may take to answer the handshake.
HANDSHAKE_TIMEOUT = 10.0
#: How long the server may take to answer our close frame.
CLOSE_TIMEOUT = 5.0


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
