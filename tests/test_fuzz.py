"""Fuzzing the server's input path with hypothesis: handshakes, then frames.

Each test runs one server for all its examples, with a well-behaved watcher
connected throughout: after each example, the watcher's marker must come
back. At the end, only the watcher's connection threads are left beside the
server's fixed threads, the process has as many open files as before, no
thread raised and nothing was logged as an error.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import errno
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http import HTTPStatus

import pytest
from hypothesis import example, given, note, settings
from hypothesis import strategies as st
from wsproto.frame_protocol import Frame, FrameProtocol, Opcode

from broadcast_sync.config import Mode
from broadcast_sync.server import BroadcastServer
from tests.conftest import UNIT, connect, join, receive, run_server
from tests.rawclient import (
    MASKED,
    RSV1,
    RSV2,
    RSV3,
    TIMEOUT,
    close_payload,
    frame,
    new_key,
    upgrade_request,
)
from tests.wsclient import ChatClient

#: Examples per test: the module runs in about five seconds on a shared
#: machine (a few milliseconds an example).
HANDSHAKE_EXAMPLES = 250
FRAME_EXAMPLES = 200
#: Reproducible in CI: the same examples on every run, none saved between runs.
FUZZ_SETTINGS = settings(deadline=None, derandomize=True, database=None)
#: A valid handshake to mutate. Its Host is not checked (no Origin header);
#: a fixed key keeps the examples the same from run to run.
VALID_KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
VALID_REQUEST = upgrade_request(8080, "fuzz", VALID_KEY.decode())
#: Sent after each fuzzed frame stream: a close frame, so that a server
#: that took the stream as valid ends the connection; then zeros, which
#: complete or overflow (1009) any frame left open, then fail (1002) as
#: unmasked frames: a connection always ends with the server's close frame.
END_REASON = "end of the fuzzed frames"
END = frame(Opcode.CLOSE, close_payload(1000, END_REASON.encode())) + bytes(1024)
#: Server threads that live as long as the server.
FIXED_THREADS = {"acceptor", "dispatcher", "heartbeat"}
#: Bytes that mean something in an HTTP request head.
HTTP_TOKENS = (
    b"\r\n",
    b"\r\n\r\n",
    b"\n",
    b": ",
    b" ",
    b",",
    b"\x00",
    b"\xff",
    b"%",
    b"%ff",
    b"//[",
    b"?username=",
    b"&username=x",
    b"Origin: http://[\r\n",
    b"Content-Length: 5\r\n",
)


def with_target(target: bytes) -> bytes:
    """:data:`VALID_REQUEST` asking for ``target`` instead of its own."""
    start, _, rest = VALID_REQUEST.partition(b"\r\n")
    return b" ".join([start.split(b" ")[0], target, b"HTTP/1.1"]) + b"\r\n" + rest


def with_header(header: bytes) -> bytes:
    """:data:`VALID_REQUEST` with one more header line."""
    return VALID_REQUEST.replace(b"\r\n\r\n", b"\r\n" + header + b"\r\n\r\n")


# Handshake requests.

Mutation = Callable[[st.DrawFn, bytes], bytes]


def flip_bit(draw: st.DrawFn, data: bytes) -> bytes:
    """Flip one bit of ``data``."""
    if not data:
        return data
    index = draw(st.integers(0, len(data) - 1))
    bit = draw(st.integers(0, 7))
    return data[:index] + bytes([data[index] ^ 1 << bit]) + data[index + 1 :]


def truncate(draw: st.DrawFn, data: bytes) -> bytes:
    """Cut ``data`` short."""
    return data[: draw(st.integers(0, len(data)))]


def insert(draw: st.DrawFn, data: bytes) -> bytes:
    """Insert random bytes or an HTTP token somewhere in ``data``."""
    index = draw(st.integers(0, len(data)))
    inserted = draw(st.sampled_from(HTTP_TOKENS) | st.binary(min_size=1, max_size=16))
    return data[:index] + inserted + data[index:]


def duplicate_line(draw: st.DrawFn, data: bytes) -> bytes:
    """Repeat one line of ``data`` (a header, usually)."""
    lines = data.split(b"\r\n")
    index = draw(st.integers(0, len(lines) - 1))
    return b"\r\n".join([*lines[: index + 1], *lines[index:]])


def delete_line(draw: st.DrawFn, data: bytes) -> bytes:
    """Drop one line of ``data``."""
    lines = data.split(b"\r\n")
    index = draw(st.integers(0, len(lines) - 1))
    return b"\r\n".join(lines[:index] + lines[index + 1 :])


MUTATIONS: tuple[Mutation, ...] = (
    flip_bit,
    truncate,
    insert,
    duplicate_line,
    delete_line,
)


#: Each part of a handshake request: its valid value, then others, valid or
#: not; ``None`` leaves a header out.
REQUEST_PARTS: dict[str, tuple[bytes | None, ...]] = {
    "method": (b"GET", b"POST", b"get", b"HEAD"),
    "path": (b"/ws", b"/", b"/static/chat.js", b"/ws/", b"//[/ws", b"*"),
    "query": (
        b"?username=fuzz",
        b"",
        b"?username=",
        b"?username=%ff",
        b"?username=%00",
        b"?username=a%3A+b",
        b"?username=a&username=b",
        b"?username=" + b"x" * 51,
    ),
    "version": (b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2"),
    "Host": (b"127.0.0.1:8080", b"", None),
    "Upgrade": (b"websocket", b"WebSocket", b"h2c, websocket", b"", None),
    "Connection": (b"Upgrade", b"keep-alive, upgrade", b"close", None),
    "Sec-WebSocket-Key": (
        VALID_KEY,
        b"",
        VALID_KEY[:-2],
        VALID_KEY + b"AA",
        base64.b64encode(bytes(17)),
        b"\x80" + VALID_KEY[1:],
        None,
    ),
    "Sec-WebSocket-Version": (b"13", b"8", b"13, 8", b"", None),
    "Origin": (
        None,
        b"http://127.0.0.1:8080",
        b"http://other.example",
        b"null",
        b"http://[",
    ),
    "Content-Length": (None, b"0", b"5"),
    "Transfer-Encoding": (None, b"chunked"),
    # Long enough for the head to pass its size limit (431).
    "Cookie": (None, b"c" * 9000),
}


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    """A handshake request with up to three of its parts changed."""
    changed = draw(st.sets(st.sampled_from(list(REQUEST_PARTS)), max_size=3))
    part = {
        name: draw(st.sampled_from(values[1:])) if name in changed else values[0]
        for name, values in REQUEST_PARTS.items()
    }
    start_line = b"%s %s%s %s" % (
        part.pop("method"),
        part.pop("path"),
        part.pop("query"),
        part.pop("version"),
    )
    headers = [
        (name.lower() if draw(st.booleans()) else name).encode() + b": " + value
        for name, value in part.items()
        if value is not None
    ]
    lines = [start_line, *draw(st.permutations(headers)), b"", b""]
    return b"\r\n".join(lines)


@st.composite
def mutated(draw: st.DrawFn, data: st.SearchStrategy[bytes]) -> bytes:
    """Bytes from ``data`` after one to three mutations."""
    result = draw(data)
    for mutation in draw(st.lists(st.sampled_from(MUTATIONS), min_size=1, max_size=3)):
        result = mutation(draw, result)
    return result


#: What a fuzzing client sends in place of a handshake request.
REQUESTS = requests() | mutated(requests()) | st.binary(max_size=512)


# Frames.


@dataclasses.dataclass(frozen=True)
class ClientFrame:
    """A client frame before encoding: faults change one of its fields.

    ``key`` masks the payload (``None``: unmasked); the examples draw it, so
    that a run is the same every time. ``length`` is the payload length
    announced, if not the payload's.
    """

    opcode: int
    payload: bytes
    key: bytes | None
    fin: bool = True
    rsv: int = 0
    length: int | None = None

    def encode(self) -> bytes:
        """The frame's bytes."""
        payload, key = self.payload, self.key
        unmasked = frame(
            self.opcode,
            payload,
            fin=self.fin,
            rsv=self.rsv,
            masked=False,
            length=self.length,
        )
        if key is None:
            return unmasked
        head = bytearray(unmasked[: len(unmasked) - len(payload)])
        head[1] |= MASKED
        return bytes(head) + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


#: Sizes of data payloads: small mostly, and either side of max_message_bytes.
SIZES = st.sampled_from([0, 1, 125, 126, 511, 512, 513, 600]) | st.integers(0, 700)


def text_of_size(seed: str, size: int) -> bytes:
    """Valid UTF-8 of at most ``size`` bytes: ``seed`` repeated."""
    return (seed.encode() * size)[:size].decode(errors="ignore").encode()


def binary_of_size(seed: bytes, size: int) -> bytes:
    """``size`` bytes: ``seed`` repeated."""
    return (seed * size)[:size]


#: Payloads by opcode.
PAYLOADS: dict[Opcode, st.SearchStrategy[bytes]] = {
    Opcode.TEXT: st.builds(text_of_size, st.text(min_size=1, max_size=8), SIZES),
    Opcode.BINARY: st.builds(binary_of_size, st.binary(min_size=1, max_size=8), SIZES),
    Opcode.PING: st.binary(max_size=125),
    Opcode.PONG: st.binary(max_size=125),
    Opcode.CLOSE: st.just(b"")
    | st.builds(
        close_payload,
        st.sampled_from([1000, 1001, 1003, 1008, 3000, 4999]) | st.integers(0, 5000),
        st.text(max_size=20).map(str.encode),
    ),
}


@st.composite
def client_messages(draw: st.DrawFn) -> list[ClientFrame]:
    """A valid message: a control frame, or a data message in fragments
    with pings between them."""
    opcode = draw(st.sampled_from(list(PAYLOADS)))
    payload = draw(PAYLOADS[opcode])
    keys = st.binary(min_size=4, max_size=4)
    if opcode.iscontrol():
        return [ClientFrame(opcode, payload, draw(keys))]
    cuts = sorted(draw(st.lists(st.integers(0, len(payload)), max_size=3)))
    pieces = [
        payload[a:b] for a, b in zip([0, *cuts], [*cuts, len(payload)], strict=True)
    ]
    message: list[ClientFrame] = []
    for index, piece in enumerate(pieces):
        last = index == len(pieces) - 1
        fragment_opcode = opcode if index == 0 else Opcode.CONTINUATION
        message.append(ClientFrame(fragment_opcode, piece, draw(keys), fin=last))
        if not last and draw(st.booleans()):
            message.append(ClientFrame(Opcode.PING, b"amid", draw(keys)))
    return message


#: Faults: each makes one frame wrong in one way, or drops it.
Fault = Callable[[st.DrawFn, ClientFrame], "ClientFrame | None"]
FAULTS: tuple[Fault, ...] = (
    lambda draw, f: dataclasses.replace(f, opcode=draw(st.integers(0, 15))),
    lambda draw, f: dataclasses.replace(
        f, rsv=draw(st.sampled_from([RSV1, RSV2, RSV3]))
    ),
    lambda draw, f: dataclasses.replace(f, key=None),
    lambda draw, f: dataclasses.replace(f, fin=not f.fin),
    lambda draw, f: dataclasses.replace(f, payload=draw(st.binary(max_size=64))),
    lambda draw, f: dataclasses.replace(
        f,
        length=draw(
            st.integers(0, 600)
            | st.sampled_from([125, 126, 127, (1 << 16) - 1, 1 << 16, 1 << 63])
        ),
    ),
    lambda draw, f: None,
)


@st.composite
def frame_streams(draw: st.DrawFn) -> bytes:
    """Valid messages, then none to two faults."""
    messages = draw(st.lists(client_messages(), min_size=1, max_size=3))
    stream = [each for message in messages for each in message]
    for fault in draw(st.lists(st.sampled_from(FAULTS), max_size=2)):
        if stream:
            index = draw(st.integers(0, len(stream) - 1))
            faulty = fault(draw, stream[index])
            stream[index : index + 1] = [] if faulty is None else [faulty]
    return b"".join(each.encode() for each in stream)


@st.composite
def flipped(draw: st.DrawFn, data: st.SearchStrategy[bytes]) -> bytes:
    """Bytes from ``data`` with one to three bits flipped."""
    result = draw(data)
    for _ in range(draw(st.integers(1, 3))):
        result = flip_bit(draw, result)
    return result


#: What a fuzzing client sends after its handshake.
FRAME_STREAMS = frame_streams() | flipped(frame_streams()) | st.binary(max_size=300)


# Checks.


class Watcher:
    """A well-behaved client that must get each of its markers back."""

    def __init__(self, server: BroadcastServer) -> None:
        if server.config.mode is Mode.CHAT:
            self.ws: ChatClient = join(server, "watcher")
            self._echo_prefix = "watcher: "
        else:
            self.ws = connect(server, "watcher")
            self._echo_prefix = ""
        host, port = self.ws.sock.getsockname()[:2]
        self.threads = {f"reader {host}:{port}", f"writer {host}:{port}"}
        self._markers = 0
        self.check()

    def check(self) -> None:
        """Send a marker; it must come back, after whatever others sent."""
        self._markers += 1
        marker = f"watcher marker {self._markers}"
        self.ws.send(marker)
        deadline = time.monotonic() + 5 * UNIT
        while receive(self.ws, deadline - time.monotonic()) != (
            self._echo_prefix + marker
        ):
            pass


def open_files() -> int:
    """The number of file descriptors this process (client and server) has."""
    return len(os.listdir("/proc/self/fd"))


def server_threads() -> list[threading.Thread]:
    """The server's threads now running."""
    return [
        thread
        for thread in threading.enumerate()
        if thread.name.startswith(("reader ", "writer "))
        or thread.name in FIXED_THREADS
    ]


@contextlib.contextmanager
def fuzzed_server(
    caplog: pytest.LogCaptureFixture,
    recwarn: pytest.WarningsRecorder,
    mode: Mode = Mode.CHAT,
) -> Iterator[tuple[BroadcastServer, Watcher]]:
    """A server and its watcher; checks that fuzzing left nothing behind.

    A socket that the server forgets is closed when it is garbage collected,
    with a ResourceWarning: ``recwarn`` catches those, the count of open
    files catches sockets still referenced.
    """
    errors: list[threading.ExceptHookArgs] = []
    previous_hook = threading.excepthook
    threading.excepthook = errors.append
    caplog.set_level(logging.WARNING, logger="broadcast_sync")
    try:
        # No rate limit: the watcher sends a marker after every example. No
        # batch window: examples are many, and each waits on a few flushes.
        # No handshake rate: every example is a new connection from 127.0.0.1.
        options = {
            "rate_limit": 0,
            "handshake_rate": 0,
            "batch_window": 0.0,
            "close_timeout": 2 * UNIT,
        }
        with run_server(mode=mode, **options) as server:
            watcher = Watcher(server)
            files_before = open_files()
            yield server, watcher
            watcher.check()
            for thread in server_threads():
                if thread.name not in FIXED_THREADS | watcher.threads:
                    thread.join(5 * UNIT)
            left = {thread.name for thread in server_threads()}
            assert left == FIXED_THREADS | watcher.threads
            assert open_files() == files_before
            watcher.ws.close()
    finally:
        threading.excepthook = previous_hook
    assert not errors, [
        f"{e.thread}: {e.exc_type.__name__}: {e.exc_value}" for e in errors
    ]
    failures = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert not failures, failures
    leaks = [str(w.message) for w in recwarn if w.category is ResourceWarning]
    assert not leaks, leaks


def receive_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes; within the timeout."""
    deadline = time.monotonic() + TIMEOUT
    chunks: list[bytes] = []
    while True:
        sock.settimeout(max(deadline - time.monotonic(), 0.001))
        chunk = sock.recv(65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def send_request(port: int, request: bytes) -> bytes:
    """Send ``request``, shut our side, and return the whole answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        try:
            sock.sendall(request)
            sock.shutdown(socket.SHUT_WR)
            return receive_all(sock)
        except OSError as exc:
            if isinstance(exc, ConnectionError) or exc.errno == errno.ENOTCONN:
                # The server closed with our bytes unread: its kernel reset
                # the connection, and its answer may be lost with it.
                raise AssertionError(f"the server reset the connection: {exc}") from exc
            raise


def check_response(response: bytes) -> HTTPStatus:
    """Check that ``response`` is a well-formed answer to a handshake, or to
    a request for the page."""
    head, separator, body = response.partition(b"\r\n\r\n")
    assert separator, f"no complete response head: {response!r}"
    status_line, *header_lines = head.split(b"\r\n")
    match = re.fullmatch(rb"HTTP/1\.1 (\d{3}) ([A-Za-z -]+)", status_line)
    assert match, status_line
    status = HTTPStatus(int(match[1]))
    assert match[2].decode() == status.phrase
    headers = {}
    for line in header_lines:
        name, colon, value = line.partition(b": ")
        assert colon, line
        headers[name.lower()] = value
    if status is HTTPStatus.SWITCHING_PROTOCOLS:
        assert headers[b"upgrade"] == b"websocket"
        assert len(base64.b64decode(headers[b"sec-websocket-accept"])) == 20
    else:
        # The server shut its side: it never waits for a closed socket.
        assert status is not HTTPStatus.REQUEST_TIMEOUT
        # 200: the chat page, for a request to "/".
        assert status is HTTPStatus.OK or 400 <= status < 600, status
        assert headers[b"connection"] == b"close"
        assert int(headers[b"content-length"]) == len(body)
    return status


def open_websocket(port: int) -> tuple[socket.socket, bytes]:
    """A socket after a valid handshake, and the frames that came with the 101."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    try:
        sock.sendall(upgrade_request(port, "fuzz", new_key()))
        response = b""
        while b"\r\n\r\n" not in response:
            chunk = sock.recv(4096)
            assert chunk, response
            response += chunk
    except BaseException:
        sock.close()
        raise
    head, _, rest = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 "), head
    return sock, rest


def frames_until_close(sock: socket.socket, early: bytes) -> list[Frame]:
    """The server's frames up to its close frame, checked by wsproto as a
    client would; then the server must close TCP and send nothing more."""
    protocol = FrameProtocol(client=True, extensions=[])
    protocol.receive_bytes(early)
    received: list[Frame] = []
    deadline = time.monotonic() + TIMEOUT
    while True:
        # Raises ParseFailed on anything a client must refuse.
        received += protocol.received_frames()
        if any(each.opcode is Opcode.CLOSE for each in received):
            break
        sock.settimeout(max(deadline - time.monotonic(), 0.001))
        chunk = sock.recv(65536)
        assert chunk, f"TCP closed without a close frame after {received}"
        protocol.receive_bytes(chunk)
    assert received[-1].opcode is Opcode.CLOSE, f"frames after the close: {received}"
    sock.shutdown(socket.SHUT_WR)
    assert receive_all(sock) == b"", "data after the close frame"
    return received


# Tests.


def test_fuzzed_handshakes(
    caplog: pytest.LogCaptureFixture, recwarn: pytest.WarningsRecorder
) -> None:
    """Any request bytes get a well-formed HTTP answer; the server goes on."""
    statuses: set[HTTPStatus] = set()
    with fuzzed_server(caplog, recwarn) as (server, watcher):

        @settings(FUZZ_SETTINGS, max_examples=HANDSHAKE_EXAMPLES)
        @given(REQUESTS)
        # Seeds: one request for each answer.
        @example(VALID_REQUEST)
        @example(b"")
        @example(with_target(b"/"))
        @example(with_target(b"/chat"))
        @example(with_header(b"Origin: http://other.example"))
        @example(with_header(b"Cookie: " + b"c" * 9000))
        # Regressions: each made the server drop the connection unanswered.
        @example(with_target(b"//[/ws"))
        @example(with_header(b"Origin: http://["))
        @example(VALID_REQUEST.replace(b"Key: ", b"Key: \x80"))
        def exchange(request: bytes) -> None:
            response = send_request(server.port, request)
            note(f"response: {response!r}")
            statuses.add(check_response(response))
            watcher.check()

        exchange()
    # The checks saw every answer.
    assert {101, 200, 400, 403, 404, 431} <= statuses, statuses


@pytest.mark.parametrize("mode", list(Mode))
def test_fuzzed_frames(
    caplog: pytest.LogCaptureFixture, recwarn: pytest.WarningsRecorder, mode: Mode
) -> None:
    """Any bytes after a handshake get valid frames, then a valid close frame
    at the latest after a close of ours; the server goes on."""
    outcomes: set[int | str] = set()
    with fuzzed_server(caplog, recwarn, mode) as (server, watcher):

        @settings(FUZZ_SETTINGS, max_examples=FRAME_EXAMPLES)
        @given(FRAME_STREAMS)
        # Seeds: one stream for each outcome.
        @example(b"")
        @example(ClientFrame(Opcode.TEXT, b"hi", key=b"mask").encode())
        @example(ClientFrame(Opcode.TEXT, b"hi", key=None).encode())
        @example(ClientFrame(Opcode.TEXT, b"\xff", key=b"mask").encode())
        @example(ClientFrame(Opcode.TEXT, bytes(513), key=b"mask").encode())
        @example(ClientFrame(Opcode.BINARY, b"hi", key=b"mask").encode())
        def exchange(data: bytes) -> None:
            sock, early = open_websocket(server.port)
            with sock:
                sock.sendall(data + END)
                received = frames_until_close(sock, early)
            note(f"received: {received}")
            close = received[-1].payload
            assert isinstance(close, tuple)
            code, reason = close
            outcomes.add("went on" if reason == END_REASON else code)
            watcher.check()

        exchange()
    # The checks saw every outcome.
    expected = {"went on", 1002, 1007, 1009}
    if mode is Mode.CHAT:
        expected.add(1003)
    assert expected <= outcomes, outcomes
