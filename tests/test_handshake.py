"""Every outcome of the opening handshake, on real sockets with raw HTTP."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import select
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from wsproto.connection import Connection, ConnectionType
from wsproto.events import CloseConnection, Event, TextMessage

from broadcast_sync.clientconn import HandshakeRejected
from broadcast_sync.server import MAX_PENDING_HANDSHAKES, BroadcastServer
from tests.conftest import (
    UNIT,
    connect,
    http_exchange,
    join,
    receive,
    receive_text,
    run_server,
    wait_until,
)

#: The example of RFC 6455, section 1.3: a client's key and the server's answer.
SAMPLE_KEY = "dGhlIHNhbXBsZSBub25jZQ=="
SAMPLE_ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def upgrade_request(
    target: str = "/ws?username=alice",
    *,
    start: str = "GET {target} HTTP/1.1",
    headers: dict[str, str | None] | None = None,
    body: bytes = b"",
) -> bytes:
    """The bytes of a valid upgrade request, with ``headers`` changed.

    A header given as ``None`` is left out.
    """
    fields: dict[str, str | None] = {
        "Host": "127.0.0.1",
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": SAMPLE_KEY,
        "Sec-WebSocket-Version": "13",
        **(headers or {}),
    }
    lines = [start.format(target=target)]
    lines += [f"{name}: {value}" for name, value in fields.items() if value is not None]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@dataclasses.dataclass(frozen=True)
class Response:
    """An HTTP response head and body, as the server sent them."""

    status: int
    phrase: str
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        """The body, which holds the reason of a refusal, as text."""
        return self.body.decode("utf-8")


def parse_response(data: bytes) -> Response:
    """Split a response into status, headers (lower-cased names) and body."""
    head, separator, body = data.partition(b"\r\n\r\n")
    assert separator, f"no complete response head in {data!r}"
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    version, status, phrase = status_line.split(" ", 2)
    assert version == "HTTP/1.1", status_line
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(": ")
        headers[name.lower()] = value
    return Response(int(status), phrase, headers, body)


def refusal(port: int, request: bytes) -> Response:
    """Send ``request``, read the whole answer and check it is a refusal."""
    response = parse_response(http_exchange(port, request))
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert response.headers["connection"] == "close"
    assert int(response.headers["content-length"]) == len(response.body)
    assert response.body.endswith(b"\n")
    return response


class RawClient:
    """A client socket that sends raw bytes and speaks WebSocket afterwards."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=2 * UNIT)
        self.websocket = Connection(ConnectionType.CLIENT)
        self._buffer = b""
        self._events: collections.deque[Event] = collections.deque()

    def send(self, data: bytes) -> None:
        """Send raw bytes."""
        self.sock.sendall(data)

    def read_response(self) -> Response:
        """Read a response head; bytes after it are WebSocket frames."""
        while b"\r\n\r\n" not in self._buffer:
            data = self.sock.recv(4096)
            assert data, f"connection closed after {self._buffer!r}"
            self._buffer += data
        head, _, rest = self._buffer.partition(b"\r\n\r\n")
        self.websocket.receive_data(rest)
        return parse_response(head + b"\r\n\r\n")

    def next_event(self) -> Event:
        """The next WebSocket event from the server."""
        self._events.extend(self.websocket.events())
        while not self._events:
            data = self.sock.recv(65536)
            self.websocket.receive_data(data or None)
            self._events.extend(self.websocket.events())
        return self._events.popleft()

    def next_text(self) -> str:
        """The next text message from the server."""
        event = self.next_event()
        assert isinstance(event, TextMessage), event
        return event.data

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()


@contextlib.contextmanager
def raw_client(port: int) -> Iterator[RawClient]:
    """A :class:`RawClient` whose socket is always closed."""
    client = RawClient(port)
    try:
        yield client
    finally:
        client.close()


def upgrade(port: int, request: bytes) -> Response:
    """Send ``request`` and return the response head, then hang up."""
    with raw_client(port) as client:
        client.send(request)
        return client.read_response()


def masked_text_frame(text: str) -> bytes:
    """A client's (masked) text frame."""
    return Connection(ConnectionType.CLIENT).send(TextMessage(data=text))


def reader_thread_name(sock: socket.socket) -> str:
    """The name of the server thread serving the client ``sock``."""
    host, port = sock.getsockname()[:2]
    return f"reader {host}:{port}"


def assert_thread_ends(name: str) -> None:
    """The server thread called ``name``, if it still runs, ends soon."""
    for thread in threading.enumerate():
        if thread.name == name:
            thread.join(5 * UNIT)
            assert not thread.is_alive(), f"{name} still running"


# Success


def test_accepts_the_rfc_sample_key(server: BroadcastServer) -> None:
    """A valid upgrade gets 101 with the accept value of RFC 6455, section 1.3."""
    with raw_client(server.port) as client:
        client.send(upgrade_request())
        response = client.read_response()
        assert (response.status, response.phrase) == (101, "Switching Protocols")
        assert response.headers == {
            "upgrade": "websocket",
            "connection": "Upgrade",
            "sec-websocket-accept": SAMPLE_ACCEPT,
        }
        assert client.next_text() == "Server: alice has joined the chat"


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({"Upgrade": "WebSocket"}, id="upgrade-case"),
        pytest.param({"Connection": "keep-alive, Upgrade"}, id="connection-list"),
        pytest.param({"Connection": "upgrade"}, id="connection-case"),
        pytest.param({"User-Agent": "test", "Cookie": "a=b"}, id="extra-headers"),
    ],
)
def test_accepts_header_variants(
    server: BroadcastServer, headers: dict[str, str | None]
) -> None:
    """Header tokens match whatever their case or company; extra headers pass."""
    assert upgrade(server.port, upgrade_request(headers=headers)).status == 101


# Refusals


@pytest.mark.parametrize("path", ["/chat", "/ws/", "/ws/extra", "/WS"])
def test_other_paths_are_404(server: BroadcastServer, path: str) -> None:
    """Only /ws upgrades; any other path is 404 with the path in the reason."""
    response = refusal(server.port, upgrade_request(path))
    assert (response.status, response.phrase) == (404, "Not Found")
    assert response.text == f"no such path: {path}\n"


@pytest.mark.parametrize(
    ("request_", "reason"),
    [
        pytest.param(
            upgrade_request(start="POST {target} HTTP/1.1"),
            "method must be GET, not POST",
            id="method",
        ),
        pytest.param(
            upgrade_request(start="GET {target} HTTP/1.0"),
            "HTTP/1.1 is required",
            id="http-1.0",
        ),
        pytest.param(
            upgrade_request(headers={"Upgrade": "h2c"}),
            "missing Upgrade: websocket header",
            id="wrong-upgrade",
        ),
        pytest.param(
            upgrade_request(headers={"Connection": None}),
            "missing Connection: Upgrade header",
            id="no-connection",
        ),
        pytest.param(
            upgrade_request(headers={"Connection": "keep-alive"}),
            "missing Connection: Upgrade header",
            id="connection-without-upgrade",
        ),
        pytest.param(
            upgrade_request(headers={"Sec-WebSocket-Key": None}),
            "missing Sec-WebSocket-Key header",
            id="no-key",
        ),
        pytest.param(
            upgrade_request(headers={"Sec-WebSocket-Key": "not base64!"}),
            "Sec-WebSocket-Key must be 16 bytes in base64",
            id="key-not-base64",
        ),
        pytest.param(
            upgrade_request(headers={"Sec-WebSocket-Key": "AAAAAAAAAAAAAAAAAAAA"}),
            "Sec-WebSocket-Key must be 16 bytes in base64",
            id="key-not-16-bytes",
        ),
        pytest.param(
            upgrade_request(headers={"Content-Length": "5"}, body=b"hello"),
            "a handshake request has no body",
            id="body",
        ),
        pytest.param(
            upgrade_request("/ws?username="),
            "username is empty",
            id="username-empty",
        ),
        pytest.param(
            upgrade_request("/ws?username=+%20%09"),
            "username is empty",
            id="username-whitespace",
        ),
        pytest.param(
            upgrade_request("/ws?username=" + "a" * 51),
            "username is longer than 50 characters (51)",
            id="username-too-long",
        ),
        pytest.param(
            upgrade_request("/ws?username=a%1Bb"),
            "username contains control characters",
            id="username-escape",
        ),
        pytest.param(
            upgrade_request("/ws?username=a%7Fb"),
            "username contains control characters",
            id="username-del",
        ),
        pytest.param(
            upgrade_request("/ws?username=a%C2%9Bb"),
            "username contains control characters",
            id="username-c1",
        ),
        pytest.param(
            upgrade_request("/ws?username=a&username=b"),
            "username given more than once",
            id="username-twice",
        ),
        pytest.param(
            upgrade_request("/ws?username=%FF"),
            "the query string is not valid UTF-8",
            id="username-not-utf8",
        ),
    ],
)
def test_bad_requests_are_400(
    server: BroadcastServer, request_: bytes, reason: str
) -> None:
    """A request that is not a valid upgrade is 400 with the precise reason."""
    response = refusal(server.port, request_)
    assert (response.status, response.phrase) == (400, "Bad Request")
    assert response.text == reason + "\n"


def plain_get(target: str) -> bytes:
    """A GET of ``target`` that asks for no upgrade, as a page's fetch()."""
    return f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("/ws?username=a%1Bb", "username contains control characters"),
        (
            "/ws?username=a%EE%80%80",
            "username contains a private-use character (U+E000)",
        ),
        ("/ws?username=a&username=b", "username given more than once"),
        ("/ws?username=alice&format=xml", "unknown format: 'xml'"),
    ],
)
def test_a_plain_get_of_ws_gets_what_its_handshake_would(
    server: BroadcastServer, target: str, reason: str
) -> None:
    """Browsers do not tell a page why its handshake failed: the page asks
    again without the upgrade, and gets the handshake's refusal."""
    assert refusal(server.port, upgrade_request(target)).text == reason + "\n"
    response = refusal(server.port, plain_get(target))
    assert (response.status, response.text) == (400, reason + "\n")


def test_a_plain_get_of_ws_with_nothing_wrong_is_426(server: BroadcastServer) -> None:
    """RFC 9110, section 15.5.22: 426 names the protocol to upgrade to. The
    name asked for is not taken: a question reserves nothing."""
    response = refusal(server.port, plain_get("/ws?username=bob"))
    assert (response.status, response.phrase) == (426, "Upgrade Required")
    assert response.headers["upgrade"] == "websocket"
    with contextlib.closing(connect(server, "bob")) as bob:
        assert receive_text(bob) == "Server: bob has joined the chat"


def test_a_plain_post_of_ws_is_400(server: BroadcastServer) -> None:
    request = b"POST /ws?username=alice HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    response = refusal(server.port, request)
    assert (response.status, response.text) == (400, "method must be GET, not POST\n")


@pytest.mark.parametrize("version", [None, "8", "13, 8", "14"])
def test_wrong_version_is_400_naming_13(
    server: BroadcastServer, version: str | None
) -> None:
    """A missing or other version is 400 with ``Sec-WebSocket-Version: 13``."""
    request = upgrade_request(headers={"Sec-WebSocket-Version": version})
    response = refusal(server.port, request)
    assert response.status == 400
    assert response.headers["sec-websocket-version"] == "13"
    assert (
        response.text
        == f"unsupported Sec-WebSocket-Version: {version or '(missing)'}\n"
    )


@pytest.mark.parametrize(
    ("request_", "reason"),
    [
        pytest.param(
            b"GARBAGE\r\n\r\n",
            "illegal request line",
            id="request-line",
        ),
        pytest.param(
            b"GET /ws HTTP/1.1\r\nHost 127.0.0.1\r\n\r\n",
            "illegal header line",
            id="header-line",
        ),
        pytest.param(
            upgrade_request(headers={"Host": None}),
            "Missing mandatory Host: header",
            id="no-host",
        ),
    ],
)
def test_malformed_http_is_400(
    server: BroadcastServer, request_: bytes, reason: str
) -> None:
    """Bytes that are not HTTP get 400 with h11's diagnosis."""
    response = refusal(server.port, request_)
    assert response.status == 400
    assert response.text.startswith(f"malformed HTTP request: {reason}")


def test_oversized_request_head_is_431(server: BroadcastServer) -> None:
    """A request head still incomplete past 8192 bytes is 431."""
    start = b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Filler: "
    # 8193 bytes: the server has read them all when it refuses, so closing
    # its socket cannot reset the connection before the response arrives.
    request = start + b"a" * (8193 - len(start))
    response = refusal(server.port, request)
    assert (response.status, response.phrase) == (
        431,
        "Request Header Fields Too Large",
    )
    assert response.text == "malformed HTTP request: Receive buffer too long\n"


def test_complete_oversized_request_head_is_431(server: BroadcastServer) -> None:
    """A request head over 8192 bytes is 431 even when it arrives whole."""
    request = upgrade_request(headers={"X-Filler": "a" * 9000})
    # Only the status line is read: a server refusing before it has read the
    # whole request may reset the connection after its response.
    assert upgrade(server.port, request).status == 431


def test_connection_closed_during_handshake(server: BroadcastServer) -> None:
    """A client hanging up mid-request costs no thread and no name."""
    with raw_client(server.port) as client:
        client.send(upgrade_request()[:20])
        client.sock.shutdown(socket.SHUT_WR)
        thread_name = reader_thread_name(client.sock)
        response = parse_response(client.sock.recv(4096))
    assert response.status == 400
    assert response.text == "connection closed during the handshake\n"
    assert_thread_ends(thread_name)


# Origins


@pytest.mark.parametrize(
    ("allowed_origins", "origin", "status"),
    [
        pytest.param((), None, 101, id="default-no-origin"),
        pytest.param((), "http://127.0.0.1:{port}", 101, id="default-same-origin"),
        pytest.param((), "http://evil.example", 403, id="default-cross-origin"),
        pytest.param((), "http://127.0.0.1:1", 403, id="default-other-port"),
        pytest.param(("https://chat.example",), None, 101, id="list-no-origin"),
        pytest.param(
            ("https://chat.example",), "https://chat.example", 101, id="list-listed"
        ),
        pytest.param(
            ("https://a.example", "https://chat.example"),
            "https://chat.example",
            101,
            id="list-second",
        ),
        pytest.param(
            ("https://chat.example",), "https://evil.example", 403, id="list-unlisted"
        ),
        pytest.param(
            ("https://chat.example",),
            "http://127.0.0.1:{port}",
            403,
            id="list-replaces-same-origin",
        ),
        pytest.param(("*",), "https://evil.example", 101, id="star-any"),
        pytest.param(("*",), None, 101, id="star-no-origin"),
    ],
)
def test_origin_rules(
    allowed_origins: tuple[str, ...], origin: str | None, status: int
) -> None:
    """Origins are checked against --allowed-origin, or the Host by default."""
    with run_server(allowed_origins=allowed_origins) as server:
        if origin is not None:
            origin = origin.format(port=server.port)
        request = upgrade_request(
            headers={"Host": f"127.0.0.1:{server.port}", "Origin": origin}
        )
        if status == 101:
            assert upgrade(server.port, request).status == 101
        else:
            response = refusal(server.port, request)
            assert (response.status, response.phrase) == (403, "Forbidden")
            assert response.text == f"origin not allowed: {origin}\n"


# Names


def test_no_username_uses_the_ip_address(server: BroadcastServer) -> None:
    """A client that gives no username is named after its IP address."""
    anonymous = connect(server)
    try:
        assert receive(anonymous) == "Server: 127.0.0.1 has joined the chat"
        anonymous.send("hi")
        assert receive(anonymous) == "127.0.0.1: hi"
    finally:
        anonymous.close()


def test_username_is_trimmed_and_decoded(server: BroadcastServer) -> None:
    """The name is percent-decoded and trimmed of surrounding whitespace."""
    client = connect(server, "%20Zo%C3%AB+Smith%09")
    try:
        assert receive(client) == "Server: Zoë Smith has joined the chat"
    finally:
        client.close()


@pytest.mark.parametrize(
    ("max_chars", "requested", "expected"),
    [
        pytest.param(50, "alice", ["alice", "alice_1", "alice_2"], id="suffixes"),
        pytest.param(5, "alice", ["alice", "ali_1", "ali_2"], id="at-the-limit"),
        pytest.param(50, "Server", ["Server_1", "Server_2", "Server_3"], id="reserved"),
    ],
)
def test_taken_names_get_suffixes(
    max_chars: int, requested: str, expected: list[str]
) -> None:
    """A taken or reserved name gets ``_1``, ``_2``, within max_username_chars."""
    with run_server(max_username_chars=max_chars) as server:
        clients = []
        try:
            for name in expected:
                client = connect(server, requested)
                clients.append(client)
                assert receive(client) == f"Server: {name} has joined the chat"
            clients[-1].send("hi")
            assert receive(clients[-1]) == f"{expected[-1]}: hi"
        finally:
            for client in clients:
                client.close()


def test_released_name_can_be_taken_again(server: BroadcastServer) -> None:
    """Once a client has left, its exact name is free for the next one."""
    join(server, "alice").close()
    again = join(server, "alice")
    again.close()


# Limits


def test_max_clients_is_503() -> None:
    """Past --max-clients, a handshake is 503 with the reason, until one leaves."""
    with run_server(max_clients=1) as server:
        alice = join(server, "alice")
        try:
            response = refusal(server.port, upgrade_request("/ws?username=bob"))
            assert (response.status, response.phrase) == (503, "Service Unavailable")
            assert response.text == "the server is full (1 clients)\n"
            with pytest.raises(HandshakeRejected) as caught:
                connect(server, "carol")
            assert caught.value.status == 503
        finally:
            # Returns once the server's close frame arrived, which it sends
            # after freeing the name.
            alice.close()
        join(server, "bob").close()


def test_silent_handshake_is_408() -> None:
    """A client that sends nothing gets 408 after handshake_timeout; no thread stays."""
    with (
        run_server(handshake_timeout=0.3 * UNIT) as server,
        raw_client(server.port) as client,
    ):
        started = time.monotonic()
        response = parse_response(client.sock.recv(4096))
        elapsed = time.monotonic() - started
        assert (response.status, response.phrase) == (408, "Request Timeout")
        assert response.text == "handshake timed out\n"
        assert 0.2 * UNIT <= elapsed < 2 * UNIT
        assert client.sock.recv(4096) == b""  # then the server hangs up
        assert_thread_ends(reader_thread_name(client.sock))


def test_incomplete_handshake_is_408() -> None:
    """A client that stops mid-request gets 408 after handshake_timeout."""
    with (
        run_server(handshake_timeout=0.3 * UNIT) as server,
        raw_client(server.port) as client,
    ):
        client.send(upgrade_request()[:40])
        response = parse_response(client.sock.recv(4096))
        assert response.status == 408


def test_trickled_handshake_is_408() -> None:
    """A client sending its request a byte at a time is cut at handshake_timeout.

    handshake_timeout bounds the whole handshake, not each read: otherwise a
    client keeps a thread for as long as it likes (slowloris).
    """
    request = upgrade_request()
    with (
        run_server(handshake_timeout=0.3 * UNIT) as server,
        raw_client(server.port) as client,
    ):
        deadline = time.monotonic() + 1.5 * UNIT
        answered = False
        for byte in request:
            client.send(bytes([byte]))
            readable, _, _ = select.select([client.sock], [], [], 0.1 * UNIT)
            answered = bool(readable)
            if answered or time.monotonic() > deadline:
                break
        assert answered, "still no answer 1.5 s into a trickled handshake"
        assert parse_response(client.sock.recv(4096)).status == 408


# Frames sent with the request


def test_frames_sent_with_the_request_are_processed(server: BroadcastServer) -> None:
    """A text frame in the same packet as the handshake is broadcast."""
    with raw_client(server.port) as client:
        client.send(upgrade_request() + masked_text_frame("hello"))
        assert client.read_response().status == 101
        assert client.next_text() == "Server: alice has joined the chat"
        assert client.next_text() == "alice: hello"


def test_frames_sent_with_the_request_then_close(server: BroadcastServer) -> None:
    """Handshake, message and close in one packet: the message, then the close."""
    closing = Connection(ConnectionType.CLIENT)
    frames = closing.send(TextMessage(data="bye")) + closing.send(
        CloseConnection(code=1000)
    )
    with raw_client(server.port) as client:
        client.send(upgrade_request() + frames)
        assert client.read_response().status == 101
        assert client.next_text() == "Server: alice has joined the chat"
        assert client.next_text() == "alice: bye"
        close = client.next_event()
        assert isinstance(close, CloseConnection)
        assert close.code == 1000


def test_handshakes_in_progress_have_their_own_cap() -> None:
    """Past MAX_PENDING_HANDSHAKES silent connections, 503 without a thread,
    though the room is far from full; a joined client is unaffected, and
    once the silent ones go, handshakes pass again."""
    with (
        run_server(
            max_clients_per_ip=0,  # every connection comes from 127.0.0.1
            handshake_rate=0,
            handshake_timeout=30,
            close_timeout=0.1,
        ) as server,
        contextlib.ExitStack() as silent,
    ):
        alice = join(server, "alice")
        for _ in range(MAX_PENDING_HANDSHAKES):
            silent.enter_context(socket.create_connection(("127.0.0.1", server.port)))
        wait_until(
            lambda: len(reader_threads()) == MAX_PENDING_HANDSHAKES + 1,
            "every silent connection served",
            timeout=10 * UNIT,
        )
        # Nothing sent: a request the server never reads could turn its close
        # into a reset that destroys the answer.
        response = parse_response(http_exchange(server.port, b""))
        assert response.status == 503
        expected = f"too many handshakes in progress ({MAX_PENDING_HANDSHAKES})\n"
        assert response.text == expected
        assert len(reader_threads()) == MAX_PENDING_HANDSHAKES + 1
        alice.send("still here")
        assert receive_text(alice) == "alice: still here"
        silent.close()
        wait_until(
            lambda: len(reader_threads()) == 1,
            "the silent connections gone",
            timeout=10 * UNIT,
        )
        bob = join(server, "bob")
        assert receive_text(alice) == "Server: bob has joined the chat"
        bob.close()
        alice.close()


def reader_threads() -> list[threading.Thread]:
    """The server's connection threads in this process."""
    return [t for t in threading.enumerate() if t.name.startswith("reader ")]
