"""The network-free core, tested without sockets or threads."""

from __future__ import annotations

import io
import random
from http import HTTPStatus

import h11
import pytest
from wsproto.frame_protocol import FrameProtocol

from broadcast_sync.frames import encode_close, encode_message
from broadcast_sync.handshake import (
    Request,
    accept_response,
    check_origin,
    parse_request,
)
from broadcast_sync.http11 import HTTPError, reject_response
from broadcast_sync.hub import Hub
from broadcast_sync.names import NameRegistry, RoomFull
from broadcast_sync.ratelimit import RateLimiter, Verdict
from broadcast_sync.terminal import Console
from broadcast_sync.validation import (
    InvalidMessage,
    InvalidUsername,
    check_message,
    clean_username,
    escape_controls,
    has_control_characters,
    is_blank,
)

#: The example of RFC 6455, section 1.3: a client's key and the server's answer.
SAMPLE_KEY = "dGhlIHNhbXBsZSBub25jZQ=="
SAMPLE_ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="

# validation.py


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("\x00", True),
        ("\x1b[2J", True),
        ("tab\there", True),
        ("new\nline", True),
        ("\x1f", True),
        ("DEL\x7f", True),
        ("C1 \x80", True),
        ("CSI \x9b", True),
        ("C1 \x9f", True),
        ("plain text", False),
        ("", False),
        ("Zoë and 日本", False),
        ("no-break\xa0space", False),
        ("\xa0", False),
        ("~", False),
    ],
)
def test_has_control_characters(text: str, expected: bool) -> None:
    """C0, DEL and C1 count as control characters; printable text does not."""
    assert has_control_characters(text) is expected


@pytest.mark.parametrize(
    ("requested", "expected"),
    [
        ("alice", "alice"),
        ("  alice\t ", "alice"),
        ("Zoë", "Zoë"),
        ("a" * 10, "a" * 10),
        ("  " + "a" * 10 + "  ", "a" * 10),
        ("first last", "first last"),
    ],
)
def test_clean_username_accepts(requested: str, expected: str) -> None:
    """A valid name is returned trimmed; the limit counts the trimmed name."""
    assert clean_username(requested, max_chars=10) == expected


@pytest.mark.parametrize(
    ("requested", "reason"),
    [
        ("", "username is empty"),
        ("   \t ", "username is empty"),
        ("a" * 11, "username is longer than 10 characters (11)"),
        ("bo\x00b", "username contains control characters"),
        ("bo\x1bb", "username contains control characters"),
        ("bo\x7fb", "username contains control characters"),
        ("bo\x85b", "username contains control characters"),
    ],
)
def test_clean_username_refuses(requested: str, reason: str) -> None:
    """An empty, too long or control-laden name is refused with its reason."""
    with pytest.raises(InvalidUsername) as caught:
        clean_username(requested, max_chars=10)
    assert str(caught.value) == reason


@pytest.mark.parametrize("message", ["hello", "x" * 5, "Zoë!!", "日本語です"])
def test_check_message_accepts(message: str) -> None:
    """A message of printable characters within the limit passes."""
    check_message(message, max_chars=5)


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ("x" * 6, "message not sent: it is 6 characters long, the limit is 5"),
        ("a\x1bb", "message not sent: it contains control characters"),
        ("a\x7f", "message not sent: it contains control characters"),
        ("a\x9b", "message not sent: it contains control characters"),
        ("a\tb", "message not sent: it contains control characters"),
    ],
)
def test_check_message_refuses(message: str, reason: str) -> None:
    """A too long or control-laden message is refused with its reason."""
    with pytest.raises(InvalidMessage) as caught:
        check_message(message, max_chars=5)
    assert str(caught.value) == reason


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("", True),
        (" ", True),
        (" \t\n\r ", True),
        ("\u3000", True),
        ("a", False),
        ("  a  ", False),
        (".", False),
    ],
)
def test_is_blank(message: str, expected: bool) -> None:
    """Empty and whitespace-only messages are blank; anything else is not."""
    assert is_blank(message) is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("plain", "plain"),
        ("a\x1b[2Jb", "a\\x1b[2Jb"),
        ("\x00\x07", "\\x00\\x07"),
        ("line\n", "line\\x0a"),
        ("del\x7f", "del\\x7f"),
        ("csi\x9b", "csi\\x9b"),
        ("Zoë\xa0日本", "Zoë\xa0日本"),
    ],
)
def test_escape_controls(text: str, expected: str) -> None:
    """Control characters become visible ``\\xNN``; other text is untouched."""
    assert escape_controls(text) == expected


def test_console_prints_escaped_lines() -> None:
    """Outside a terminal, each message is one line, its controls escaped."""
    stream = io.StringIO()
    console = Console(stream, interactive=False)
    console.show("a\x1b[2Jb")
    console.show("second")
    assert stream.getvalue() == "a\\x1b[2Jb\nsecond\n"


def test_console_prints_above_the_input_line() -> None:
    """In a terminal, a message goes above the line being typed, escaped."""
    stream = io.StringIO()
    Console(stream, interactive=True).show("hi\x07")
    assert stream.getvalue() == "\x1b7\n\x1b[A\x1b[Lhi\\x07\n\x1b8\x1b[B"


# ratelimit.py


def test_rate_limiter_allows_a_burst_then_notifies_once_then_drops() -> None:
    """A burst of N passes, the next is dropped with a notice, later ones
    silently."""
    limiter = RateLimiter(limit=3, window=1.0)
    verdicts = [limiter.check(now) for now in (0.0, 0.01, 0.02, 0.03, 0.04, 0.05)]
    assert verdicts == [
        Verdict.ALLOW,
        Verdict.ALLOW,
        Verdict.ALLOW,
        Verdict.DROP_AND_NOTIFY,
        Verdict.DROP,
        Verdict.DROP,
    ]


def test_rate_limiter_refills_at_the_rate() -> None:
    """Tokens come back at limit/window a second: one every 0.5 s here."""
    limiter = RateLimiter(limit=2, window=1.0)
    assert [limiter.check(now) for now in (0.0, 0.0, 0.1)] == [
        Verdict.ALLOW,
        Verdict.ALLOW,
        Verdict.DROP_AND_NOTIFY,
    ]
    assert limiter.check(0.45) is Verdict.DROP  # 0.9 token: not yet
    assert limiter.check(0.55) is Verdict.ALLOW  # a whole one, then 0.1 left
    assert limiter.check(0.6) is Verdict.DROP
    assert limiter.check(10.0) is Verdict.ALLOW  # idle: the whole burst back
    assert limiter.check(10.0) is Verdict.ALLOW
    assert limiter.check(10.0) is Verdict.DROP_AND_NOTIFY  # a window later


def test_rate_limiter_notifies_at_most_once_per_window() -> None:
    """A client that keeps flooding hears of it once a window, not once a
    message nor once per message let through."""
    limiter = RateLimiter(limit=5, window=1.0)
    verdicts = [limiter.check(index / 50) for index in range(150)]  # 3 s at 50/s
    assert verdicts.count(Verdict.DROP_AND_NOTIFY) == 3
    # The burst, then 5 a second: 5 + 2.98 * 5, less what is not whole yet.
    assert verdicts.count(Verdict.ALLOW) == 19


def jittered_arrivals(rate: float, seconds: float, seed: int) -> list[float]:
    """Arrival times of a client sending ``rate`` messages a second on a
    clock, each delayed or advanced by up to 20 % of the period."""
    period = 1 / rate
    jitter = random.Random(seed)
    count = int(seconds * rate)
    return sorted(
        index * period + jitter.uniform(-0.2, 0.2) * period for index in range(count)
    )


@pytest.mark.parametrize("seed", range(20))
def test_rate_limiter_never_limits_a_client_at_the_rate(seed: int) -> None:
    """At exactly the default rate (5 a second), with ±20 % jitter, for 60 s:
    never limited. At 1.5 times the rate: limited."""
    honest, flooder = RateLimiter(limit=5, window=1.0), RateLimiter(5, 1.0)
    honest_verdicts = {honest.check(t) for t in jittered_arrivals(5, 60, seed)}
    flooder_verdicts = [flooder.check(t) for t in jittered_arrivals(7.5, 60, seed)]
    assert honest_verdicts == {Verdict.ALLOW}
    assert Verdict.DROP_AND_NOTIFY in flooder_verdicts
    # It still gets the rate through, and no more.
    assert 300 <= flooder_verdicts.count(Verdict.ALLOW) <= 305


def test_rate_limit_zero_disables() -> None:
    """A limit of 0 allows every message, however many arrive at once."""
    limiter = RateLimiter(limit=0, window=1.0)
    assert {limiter.check(0.0) for _ in range(1000)} == {Verdict.ALLOW}


# names.py and hub.py


def test_reserve_returns_a_free_name() -> None:
    """A free name is reserved as asked."""
    names = NameRegistry(max_clients=10, max_name_chars=10)
    assert names.reserve("alice") == "alice"
    assert names.reserve("bob") == "bob"


def test_taken_name_gets_suffixes() -> None:
    """The second and third "alice" become ``alice_1`` and ``alice_2``."""
    registry = NameRegistry(max_clients=10, max_name_chars=10)
    names = [registry.reserve("alice") for _ in range(3)]
    assert names == ["alice", "alice_1", "alice_2"]


def test_released_name_is_reused() -> None:
    """A released name, and the lowest free suffix, are given again."""
    names = NameRegistry(max_clients=10, max_name_chars=10)
    for _ in range(3):
        names.reserve("alice")
    names.release("alice_1")
    assert names.reserve("alice") == "alice_1"
    names.release("alice")
    assert names.reserve("alice") == "alice"


def test_server_name_is_reserved() -> None:
    """No user gets the name "Server", even when it is free."""
    names = NameRegistry(max_clients=10, max_name_chars=10)
    assert names.reserve("Server") == "Server_1"
    assert names.reserve("Server") == "Server_2"


def test_suffix_stays_within_max_chars() -> None:
    """A taken name at the limit is shortened to make room for its suffix."""
    registry = NameRegistry(max_clients=20, max_name_chars=5)
    names = [registry.reserve("alice") for _ in range(12)]
    assert names == [
        "alice",
        *(f"ali_{number}" for number in range(1, 10)),
        "al_10",
        "al_11",
    ]
    assert all(len(name) <= 5 for name in names)


def test_room_full_when_max_names_reserved() -> None:
    """Past max_clients names, reserving fails until one is released."""
    names = NameRegistry(max_clients=2, max_name_chars=10)
    names.reserve("alice")
    names.reserve("bob")
    with pytest.raises(RoomFull, match=r"^the server is full \(2 clients\)$"):
        names.reserve("carol")
    names.release("bob")
    assert names.reserve("carol") == "carol"


def test_members_added_and_removed_with_counts() -> None:
    """add and remove return the member count; members are told apart by
    identity, so two with one name can be members at once."""
    hub: Hub[object] = Hub()
    alice, alice_again = object(), object()
    assert hub.add(alice) == 1
    assert hub.add(alice_again) == 2
    assert hub.members() == [alice, alice_again]
    with hub.locked_members() as members:
        assert list(members) == [alice, alice_again]
    assert hub.remove(alice) == 1
    assert hub.remove(alice) == 1  # a second removal changes nothing
    assert hub.members() == [alice_again]
    assert hub.remove(alice_again) == 0
    assert hub.members() == []


# handshake.py


def make_request(
    target: str = "/ws?username=alice",
    *,
    method: str = "GET",
    http_version: str = "1.1",
    headers: dict[str, str | None] | None = None,
) -> h11.Request:
    """A valid upgrade request for the sample key, with ``headers`` changed.

    A header given as ``None`` is left out.
    """
    fields: dict[str, str | None] = {
        "Host": "chat.example:8080",
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": SAMPLE_KEY,
        "Sec-WebSocket-Version": "13",
        **(headers or {}),
    }
    return h11.Request(
        method=method,
        target=target,
        http_version=http_version,
        headers=[(name, value) for name, value in fields.items() if value is not None],
    )


def test_other_query_parameters_are_ignored_even_twice() -> None:
    """Parameters the server does not read may come more than once (a proxy
    or a page may add them); only its own must be unique."""
    request = parse_request(make_request("/ws?x=1&username=bob&x=2"))
    assert request.username == "bob"


def test_parse_request_reads_the_parts() -> None:
    """A valid upgrade yields its key, host, origin and username."""
    request = make_request(headers={"Origin": "http://chat.example:8080"})
    assert parse_request(request) == Request(
        key=SAMPLE_KEY,
        host="chat.example:8080",
        origin="http://chat.example:8080",
        parameters={"username": "alice"},
    )


@pytest.mark.parametrize(
    ("target", "username"),
    [
        ("/ws", None),
        ("/ws?room=1", None),
        ("/ws?username=", ""),
        ("/ws?username", ""),
        ("/ws?username=Zo%C3%AB", "Zoë"),
        ("/ws?username=first+last", "first last"),
        ("/ws?username=a%26b&x=1", "a&b"),
    ],
)
def test_parse_request_username(target: str, username: str | None) -> None:
    """The username comes percent-decoded from the query; it may be absent."""
    assert parse_request(make_request(target)).username == username


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Upgrade": "WebSocket"}, SAMPLE_KEY),
        ({"Connection": "keep-alive, Upgrade"}, SAMPLE_KEY),
        ({"Connection": "upgrade"}, SAMPLE_KEY),
    ],
)
def test_parse_request_tokens_case_insensitive(
    headers: dict[str, str | None], expected: str
) -> None:
    """Upgrade and Connection tokens match without regard to case or company."""
    assert parse_request(make_request(headers=headers)).key == expected


@pytest.mark.parametrize(
    ("request_", "status", "reason"),
    [
        pytest.param(
            make_request(method="POST"),
            HTTPStatus.BAD_REQUEST,
            "method must be GET, not POST",
            id="method",
        ),
        pytest.param(
            make_request(http_version="1.0"),
            HTTPStatus.BAD_REQUEST,
            "HTTP/1.1 is required",
            id="http-1.0",
        ),
        pytest.param(
            make_request(headers={"Upgrade": None}),
            HTTPStatus.BAD_REQUEST,
            "missing Upgrade: websocket header",
            id="no-upgrade",
        ),
        pytest.param(
            make_request(headers={"Upgrade": "h2c"}),
            HTTPStatus.BAD_REQUEST,
            "missing Upgrade: websocket header",
            id="wrong-upgrade",
        ),
        pytest.param(
            make_request(headers={"Connection": "keep-alive"}),
            HTTPStatus.BAD_REQUEST,
            "missing Connection: Upgrade header",
            id="no-connection-upgrade",
        ),
        pytest.param(
            make_request(headers={"Content-Length": "3"}),
            HTTPStatus.BAD_REQUEST,
            "a handshake request has no body",
            id="body",
        ),
        pytest.param(
            make_request(headers={"Sec-WebSocket-Version": "8"}),
            HTTPStatus.BAD_REQUEST,
            "unsupported Sec-WebSocket-Version: 8",
            id="version-8",
        ),
        pytest.param(
            make_request(headers={"Sec-WebSocket-Version": None}),
            HTTPStatus.BAD_REQUEST,
            "unsupported Sec-WebSocket-Version: (missing)",
            id="no-version",
        ),
        pytest.param(
            make_request(headers={"Sec-WebSocket-Key": None}),
            HTTPStatus.BAD_REQUEST,
            "missing Sec-WebSocket-Key header",
            id="no-key",
        ),
        pytest.param(
            make_request(headers={"Sec-WebSocket-Key": "not base64!"}),
            HTTPStatus.BAD_REQUEST,
            "Sec-WebSocket-Key must be 16 bytes in base64",
            id="key-not-base64",
        ),
        pytest.param(
            make_request(headers={"Sec-WebSocket-Key": "AAAAAAAAAAAAAAAAAAAA"}),
            HTTPStatus.BAD_REQUEST,
            "Sec-WebSocket-Key must be 16 bytes in base64",
            id="key-15-bytes",
        ),
        pytest.param(
            make_request("/ws?username=a&username=b"),
            HTTPStatus.BAD_REQUEST,
            "username given more than once",
            id="username-twice",
        ),
        pytest.param(
            make_request("/ws?username=%FF"),
            HTTPStatus.BAD_REQUEST,
            "the query string is not valid UTF-8",
            id="username-not-utf8",
        ),
    ],
)
def test_parse_request_refuses(
    request_: h11.Request, status: HTTPStatus, reason: str
) -> None:
    """Each way of not being an upgrade to /ws has its status and reason."""
    with pytest.raises(HTTPError) as caught:
        parse_request(request_)
    assert (caught.value.status, caught.value.reason) == (status, reason)


def test_version_refusal_names_the_supported_version() -> None:
    """A wrong version is answered with ``Sec-WebSocket-Version: 13``."""
    request = make_request(headers={"Sec-WebSocket-Version": "8"})
    with pytest.raises(HTTPError) as caught:
        parse_request(request)
    assert caught.value.headers == (("Sec-WebSocket-Version", "13"),)


def origin_request(origin: str | None, host: str = "chat.example:8080") -> Request:
    """A parsed request from ``host`` with ``origin``."""
    return Request(key=SAMPLE_KEY, host=host, origin=origin, parameters={})


@pytest.mark.parametrize(
    ("origin", "allowed_origins"),
    [
        (None, ()),
        (None, ("https://chat.example",)),
        ("http://chat.example:8080", ()),
        ("https://CHAT.example:8080", ()),
        ("https://chat.example", ("https://chat.example",)),
        ("https://Chat.Example", ("https://chat.example",)),
        ("https://b.example", ("https://a.example", "https://b.example")),
        ("https://evil.example", ("*",)),
        ("null", ("*",)),
    ],
)
def test_check_origin_allows(
    origin: str | None, allowed_origins: tuple[str, ...]
) -> None:
    """No Origin, the same origin by default, a listed origin, or '*' pass."""
    check_origin(origin_request(origin), allowed_origins)


@pytest.mark.parametrize(
    ("origin", "allowed_origins"),
    [
        ("http://evil.example", ()),
        ("http://chat.example:9090", ()),
        ("null", ()),
        ("https://evil.example", ("https://chat.example",)),
        # A list replaces the same-origin rule.
        ("http://chat.example:8080", ("https://other.example",)),
    ],
)
def test_check_origin_refuses(origin: str, allowed_origins: tuple[str, ...]) -> None:
    """A cross-origin request, or one not in the list, is refused with 403."""
    with pytest.raises(HTTPError) as caught:
        check_origin(origin_request(origin), allowed_origins)
    assert caught.value.status is HTTPStatus.FORBIDDEN
    assert caught.value.reason == f"origin not allowed: {origin}"


def test_accept_response_for_the_rfc_sample_key() -> None:
    """The 101 response carries the accept value of RFC 6455, section 1.3."""
    assert accept_response(SAMPLE_KEY) == (
        b"HTTP/1.1 101 Switching Protocols\r\n"
        b"Upgrade: websocket\r\n"
        b"Connection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + SAMPLE_ACCEPT.encode() + b"\r\n"
        b"\r\n"
    )


def test_reject_response_format() -> None:
    """A refusal has its status, extra headers, a plain-text body and closes."""
    error = HTTPError(HTTPStatus.BAD_REQUEST, "bad", (("Sec-WebSocket-Version", "13"),))
    assert reject_response(error) == (
        b"HTTP/1.1 400 Bad Request\r\n"
        b"Sec-WebSocket-Version: 13\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: 4\r\n"
        b"Connection: close\r\n"
        b"\r\n"
        b"bad\n"
    )


def test_reject_response_counts_body_bytes() -> None:
    """Content-Length counts the UTF-8 bytes of the reason, not its characters."""
    response = reject_response(HTTPError(HTTPStatus.NOT_FOUND, "no such path: é"))
    head, body = response.split(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 404 Not Found\r\n")
    assert b"\r\nContent-Length: 17\r\n" in head + b"\r\n"
    assert body == "no such path: é\n".encode()


# frames.py


@pytest.mark.parametrize(
    ("code", "reason", "expected"),
    [
        (1000, "", b"\x88\x02\x03\xe8"),
        (1001, "bye", b"\x88\x05\x03\xe9bye"),
        (1008, "too slow", b"\x88\x0a\x03\xf0too slow"),
    ],
)
def test_encode_close(code: int, reason: str, expected: bytes) -> None:
    """A close frame is unmasked: opcode 8, the code, then the reason."""
    assert encode_close(code, reason) == expected


def test_encode_close_truncates_long_reason_on_a_character() -> None:
    """A reason too long for a control frame is cut to 125 bytes, whole chars."""
    frame = encode_close(1001, "é" * 100)
    assert frame[:2] == b"\x88\x7c"  # 124 bytes: 2 for the code, 61 "é"
    assert frame[4:].decode("utf-8") == "é" * 61


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ("hi", b"\x81\x02hi"),
        ("", b"\x81\x00"),
        ("é", b"\x81\x02\xc3\xa9"),
        (b"abc", b"\x82\x03abc"),
        ("x" * 125, b"\x81\x7d" + b"x" * 125),
        ("x" * 200, b"\x81\x7e\x00\xc8" + b"x" * 200),
        ("x" * 70000, b"\x81\x7f" + (70000).to_bytes(8, "big") + b"x" * 70000),
    ],
)
def test_encode_message(data: str | bytes, expected: bytes) -> None:
    """Text and binary messages are single unmasked frames with their length."""
    assert encode_message(data) == expected


@pytest.mark.parametrize("length", [0, 1, 125, 126, 127, 65535, 65536, 70000])
@pytest.mark.parametrize("kind", [str, bytes])
def test_encode_message_matches_wsproto(length: int, kind: type) -> None:
    """The hand-built data frames are byte for byte wsproto's, at every
    boundary of the length field."""
    data: str | bytes = "é" * (length // 2) + "x" * (length % 2)
    if kind is bytes:
        data = b"\xff" * length
    wsproto_frame = FrameProtocol(client=False, extensions=[]).send_data(data, True)
    assert encode_message(data) == bytes(wsproto_frame)
