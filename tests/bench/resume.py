"""The resume scenario's clients: blocking, one socket each, no event loop.

The resume scenario is about one client at a time catching up, not about
many clients at once, so its clients are plain blocking sockets: a JSON
client (``format=json``) that notes the id of the last event it saw, leaves,
and comes back with ``since=ID``, and a text client that sends the events
it missed. Their frames are timed as they arrive, and parsed only after the
timing, so that the time measured is the server's and the wire's.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import socket
import ssl
import time
from collections.abc import Iterator
from typing import Any

from tests.bench import wire

#: Bytes per ``recv``: a replay of a thousand events is about 150 KB.
RECEIVE_BYTES = 256 * 1024
#: Seconds a blocking read may wait before the scenario gives up.
READ_TIMEOUT_SECONDS = 10.0


class ResumeError(Exception):
    """The server did not answer as the scenario expects."""


@dataclasses.dataclass
class Frame:
    """A frame from the server and the monotonic time its read returned."""

    opcode: int
    payload: bytes
    received_ns: int

    def json(self) -> dict[str, Any]:
        """The payload as a JSON object."""
        value = json.loads(self.payload)
        if not isinstance(value, dict):
            raise ResumeError(f"not a JSON object: {self.payload!r}")
        return value


class BlockingClient:
    """One WebSocket client on a blocking socket.

    Args:
        host: The server's address.
        port: The server's port.
        name: The username it asks for.
        query: More of the query string, such as ``&format=json``.
        masker: Masks its frames; shared by the scenario's clients.
        tls: Speak TLS with this context (``--tls``): a blocking
            ``ssl.SSLSocket``, whose handshake is done before the upgrade
            request is sent, and so before :attr:`sent_ns`.
        timeout: Seconds any one wait on the socket may take.

    Attributes:
        sent_ns: When the handshake request was sent.
        response_ns: When the 101 response was read.
    """

    def __init__(
        self,
        host: str,
        port: int,
        name: str,
        query: str,
        masker: wire.Masker,
        *,
        tls: ssl.SSLContext | None = None,
        timeout: float = READ_TIMEOUT_SECONDS,
    ) -> None:
        self.name = name
        self._masker = masker
        self._decoder = wire.FrameDecoder()
        self._frames: collections.deque[Frame] = collections.deque()
        handshake = wire.Handshake.for_client(host, port, name, query)
        self._sock = socket.create_connection((host, port), timeout)
        try:
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if tls is not None:
                self._sock = tls.wrap_socket(self._sock, server_hostname=host)
            self.sent_ns = time.monotonic_ns()
            self._sock.sendall(handshake.request)
            head = b""
            while wire.HEAD_END not in head:
                data = self._sock.recv(RECEIVE_BYTES)
                if not data:
                    raise ResumeError("the server closed during the handshake")
                head += data
            self.response_ns = time.monotonic_ns()
            head, _, rest = head.partition(wire.HEAD_END)
            status = handshake.check_response(head)
            if status != 101:
                raise ResumeError(f"handshake refused: {status}")
            self._take(rest, self.response_ns)
        except BaseException:
            self._sock.close()
            raise

    def __enter__(self) -> BlockingClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._sock.close()

    def frames(self) -> Iterator[Frame]:
        """Every frame, as it comes; ends when the server closes.

        Raises:
            TimeoutError: Nothing came for :data:`READ_TIMEOUT_SECONDS`.
        """
        while True:
            while self._frames:
                yield self._frames.popleft()
            if not self._read():
                return

    def receive(self, count: int) -> list[Frame]:
        """The next ``count`` frames.

        Only WebSocket framing happens between reads, no JSON parsing, so
        that the time measured is the server's and the wire's.

        Raises:
            ResumeError: The server closed first.
        """
        while len(self._frames) < count:
            if not self._read():
                raise ResumeError(f"closed after {len(self._frames)} of {count}")
        return [self._frames.popleft() for _ in range(count)]

    def receive_until(self, payload: bytes) -> Frame:
        """Read frames until one carries ``payload``; return it.

        Raises:
            ResumeError: The server closed first.
        """
        for frame in self.frames():
            if frame.payload == payload:
                return frame
        raise ResumeError(f"closed before {payload!r}")

    def send_texts(self, payloads: list[bytes]) -> None:
        """Send one text frame per payload, all in one write."""
        frames = [self._masker.text_frame(payload) for payload in payloads]
        self._sock.sendall(b"".join(frames))

    def close(self) -> None:
        """Close cleanly: a close frame, then wait for the server's end of stream.

        Raises:
            ResumeError: The server did not close in time.
        """
        with contextlib.suppress(OSError):
            self._sock.sendall(self._masker.close_frame())
        try:
            for _ in self.frames():
                pass  # the rest, the close frame, then end of stream
        except TimeoutError as exc:
            raise ResumeError("the server did not close the connection") from exc
        finally:
            self._sock.close()

    def _read(self) -> bool:
        """Read once and decode; False at the end of the stream."""
        data = self._sock.recv(RECEIVE_BYTES)
        if data:
            self._take(data, time.monotonic_ns())
        return bool(data)

    def _take(self, data: bytes, now_ns: int) -> None:
        self._frames.extend(
            Frame(opcode, payload, now_ns)
            for opcode, payload in self._decoder.feed(data)
        )


def sender_text(round_number: int, index: int) -> bytes:
    """The text of message ``index`` of round ``round_number``."""
    return f"resume round {round_number:04d} message {index:05d}".encode()


@dataclasses.dataclass
class Replay:
    """One resume, timed."""

    #: From sending the handshake to the 101 response.
    response_ms: float
    #: From sending the handshake to the first replayed frame (the welcome,
    #: which the server writes with the whole replay at once): the server's
    #: work, plus two trips over loopback.
    first_frame_ms: float
    #: From sending the handshake to the last replayed event.
    last_event_ms: float
    #: CPU time of the server (and of Redis) during the resume.
    server_cpu_ms: float
    redis_cpu_ms: float | None


def check_replay(
    frames: list[Frame],
    *,
    since: str,
    resumer: str,
    sender: str,
    round_number: int,
    messages: int,
) -> None:
    """Check that ``frames`` are the welcome and exactly the events missed.

    Those are the resumer's own leave, then ``messages`` messages of
    ``sender``, with consecutive ids after ``since``.

    Raises:
        ResumeError: Something is missing, extra, or out of place.
    """
    welcome = frames[0].json()
    if welcome.get("type") != "welcome" or welcome.get("resumed") is not True:
        raise ResumeError(f"not resumed: {welcome}")
    epoch, _, offset = since.partition(".")
    events = [frame.json() for frame in frames[1:]]
    expected_ids = [f"{epoch}.{int(offset) + n}" for n in range(1, len(events) + 1)]
    ids = [event.get("id") for event in events]
    if ids != expected_ids:
        raise ResumeError(f"ids {ids[:3]}... are not those after {since}")
    leave, *chats = events
    if (leave.get("type"), leave.get("user")) != ("leave", resumer):
        raise ResumeError(f"expected the leave of {resumer} first: {leave}")
    texts = [(chat.get("type"), chat.get("user"), chat.get("text")) for chat in chats]
    expected = [
        ("message", sender, sender_text(round_number, index).decode())
        for index in range(messages)
    ]
    if texts != expected:
        raise ResumeError("the replayed messages are not those sent, in order")
