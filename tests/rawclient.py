"""A WebSocket client on a bare socket, for frames no library would send.

:class:`RawClient` does a real handshake, then writes frames built by hand
(:func:`frame`) and reads the server's frames with a wsproto client
connection.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import hashlib
import os
import socket
import struct
import time
import urllib.parse
from collections.abc import Sequence
from types import TracebackType

import pytest
from wsproto.connection import Connection, ConnectionType
from wsproto.events import CloseConnection, Event, TextMessage
from wsproto.frame_protocol import Opcode

from tests.conftest import UNIT

#: How long a raw client waits for what it expects from the server.

TIMEOUT = 5 * UNIT
#: RFC 6455, section 1.3: appended to the key to compute the accept value.
ACCEPT_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#: Bits of a frame's first byte.
FIN = 0x80
RSV1, RSV2, RSV3 = 0x40, 0x20, 0x10
#: Bit of a frame's second byte saying that the payload is masked.
MASKED = 0x80


def frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    masked: bool = True,
    length: int | None = None,
) -> bytes:
    """One client frame, built by hand.

    Args:
        opcode: The frame's opcode, valid or not.
        payload: The payload, masked unless ``masked`` is false.
        fin: Whether the frame ends its message.
        rsv: Reserved bits to set (``RSV1 | RSV2 | RSV3``).
        masked: Whether to mask the payload, as a client must.
        length: The payload length announced, if not ``len(payload)``.
    """
    announced = len(payload) if length is None else length
    head = bytearray([(FIN if fin else 0) | rsv | opcode])
    mask_bit = MASKED if masked else 0
    if announced < 126:
        head.append(mask_bit | announced)
    elif announced < 1 << 16:
        head += bytes([mask_bit | 126]) + struct.pack("!H", announced)
    else:
        head += bytes([mask_bit | 127]) + struct.pack("!Q", announced)
    if not masked:
        return bytes(head) + payload
    key = os.urandom(4)
    return bytes(head) + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def text(payload: bytes, *, fin: bool = True) -> bytes:
    """A text frame carrying ``payload`` as is (valid UTF-8 or not)."""
    return frame(Opcode.TEXT, payload, fin=fin)


def continuation(payload: bytes, *, fin: bool = True) -> bytes:
    """A continuation frame."""
    return frame(Opcode.CONTINUATION, payload, fin=fin)


def close_payload(code: int, reason: bytes = b"") -> bytes:
    """The payload of a close frame: the code, then the reason as is."""
    return struct.pack("!H", code) + reason


def new_key() -> str:
    """A fresh Sec-WebSocket-Key: 16 random bytes in base64."""
    return base64.b64encode(os.urandom(16)).decode()


def upgrade_request(port: int, username: str, key: str) -> bytes:
    """A valid WebSocket handshake request for ``username``."""
    query = urllib.parse.urlencode({"username": username})
    return (
        f"GET /ws?{query} HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{port}\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n"
        "\r\n"
    ).encode()


def handshake_response(request_head: bytes) -> bytes:
    """The 101 accepting the upgrade ``request_head``, as a server would send
    it: its Sec-WebSocket-Accept computed as RFC 6455, section 4.2.2, says."""
    headers = {}
    for line in request_head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    key = headers[b"sec-websocket-key"]
    accept = base64.b64encode(hashlib.sha1(key + ACCEPT_GUID).digest())
    return (
        b"HTTP/1.1 101 Switching Protocols\r\n"
        b"Upgrade: websocket\r\n"
        b"Connection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
    )


#: Socket options for a client on a link that takes little: the smallest
#: receive buffer, small segments. The server's socket then holds some
#: 100 KB for the client, not megabytes, and its send buffer fills after
#: some 30 KB.
SLOW_LINK = (
    (socket.SOL_SOCKET, socket.SO_RCVBUF, 1024),
    (socket.IPPROTO_TCP, socket.TCP_MAXSEG, 536),
)


class RawClient:
    """A WebSocket client on a bare socket, which sends bytes as given.

    Args:
        port: The server's port on 127.0.0.1.
        username: The name to ask for.
        socket_options: ``(level, option, value)`` to set before connecting.
        early_data: Bytes sent in the same write as the handshake request.
        source: The local address to connect from, such as ``127.0.0.2``.
    """

    def __init__(
        self,
        port: int,
        username: str,
        *,
        socket_options: Sequence[tuple[int, int, int]] = (),
        early_data: bytes = b"",
        source: str = "",
    ) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        for level, option, value in socket_options:
            self.sock.setsockopt(level, option, value)
        if source:
            self.sock.bind((source, 0))
        self.sock.settimeout(TIMEOUT)
        self._connection = Connection(ConnectionType.CLIENT)
        self._events: collections.deque[Event] = collections.deque()
        self._text_parts: list[str] = []
        try:
            self.sock.connect(("127.0.0.1", port))
            self._handshake(port, username, early_data)
        except BaseException:
            self.sock.close()
            raise

    def _handshake(self, port: int, username: str, early_data: bytes) -> None:
        key = new_key()
        self.sock.sendall(upgrade_request(port, username, key) + early_data)
        response = b""
        while b"\r\n\r\n" not in response:
            chunk = self.sock.recv(4096)
            assert chunk, f"connection closed during the handshake: {response!r}"
            response += chunk
        head, _, rest = response.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 "), head
        accept = base64.b64encode(hashlib.sha1(key.encode() + ACCEPT_GUID).digest())
        assert b"\r\nSec-WebSocket-Accept: " + accept in head, head
        # Frames that came with the response are events already.
        self._connection.receive_data(rest)
        self._events.extend(self._connection.events())

    def __enter__(self) -> RawClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        """Write ``data`` to the socket as is."""
        self.sock.sendall(data)

    def next_event(self, deadline: float | None = None) -> Event:
        """The server's next event, by ``deadline`` (monotonic) or within
        the timeout; text messages come whole."""
        if deadline is None:
            deadline = time.monotonic() + TIMEOUT
        while True:
            while not self._events:
                data = self._receive(deadline, "frame from the server")
                assert data, "the server closed the connection"
                self._connection.receive_data(data)
                self._events.extend(self._connection.events())
            event = self._events.popleft()
            if not isinstance(event, TextMessage):
                return event
            self._text_parts.append(event.data)
            if event.message_finished:
                message = "".join(self._text_parts)
                self._text_parts.clear()
                return TextMessage(data=message)

    def receive_text(self) -> str:
        """The server's next event, which must be a text message."""
        event = self.next_event()
        assert isinstance(event, TextMessage), event
        return event.data

    def events_until_close(self) -> list[Event]:
        """The server's events up to its close frame, which ends the list;
        the close frame must come within the timeout."""
        deadline = time.monotonic() + TIMEOUT
        events = [self.next_event(deadline)]
        while not isinstance(events[-1], CloseConnection):
            events.append(self.next_event(deadline))
        return events

    def receive_close(self) -> CloseConnection:
        """The server's close frame, skipping whatever comes before it."""
        close = self.events_until_close()[-1]
        assert isinstance(close, CloseConnection)
        return close

    def assert_server_closes_tcp(self) -> None:
        """Read and drop what is left; the server must close within the timeout."""
        deadline = time.monotonic() + TIMEOUT
        while self._receive(deadline, "TCP close from the server"):
            pass

    def _receive(self, deadline: float, expected: str) -> bytes:
        remaining = deadline - time.monotonic()
        if remaining > 0:
            self.sock.settimeout(remaining)
            with contextlib.suppress(TimeoutError):
                return self.sock.recv(65536)
        pytest.fail(f"no {expected} in time")
