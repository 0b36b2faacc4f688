"""Relay mode: every message broadcast verbatim, with its opcode, and no notices.

A client is in the room once its own first message came back: the server
adds a client to the room before it reads the client's first frame. Each
such marker is also the first thing every client receives after a join,
which proves that no join notice was sent; a marker sent after a client
left proves the same of leave notices. :func:`read_frame` reads the
server's frames as they are on the wire, to tell one frame from fragments.
"""

from __future__ import annotations

import json
import logging
import socket
import struct
from collections.abc import Iterator, Sequence

import pytest
import simple_websocket
from wsproto.events import CloseConnection, Ping
from wsproto.frame_protocol import Opcode

from broadcast_sync.config import Mode
from broadcast_sync.server import BroadcastServer
from tests.conftest import UNIT, connect, receive, run_concurrently, run_server
from tests.rawclient import SLOW_LINK, RawClient, continuation, frame, text
from tests.wsclient import ChatClient

#: Bytes in each message of a flood, and messages each flooder sends.
FLOOD_BYTES = 4000
FLOOD_MESSAGES = 32
#: Bytes a message may have on the servers below (the default).
MAX_BYTES = 512


@pytest.fixture
def relay() -> Iterator[BroadcastServer]:
    """A relay server whose short close timeout keeps failing tests short."""
    with run_server(mode=Mode.RELAY, close_timeout=2 * UNIT) as server:
        yield server


def enter(server: BroadcastServer, name: str) -> ChatClient:
    """Connect ``name``; return once it is in the room.

    Its marker must be the first thing it receives: no join notice.
    """
    ws = connect(server, name)
    marker = f"marker: {name} is in"
    ws.send(marker)
    assert receive(ws) == marker
    return ws


def enter_all(server: BroadcastServer, names: Sequence[str]) -> list[ChatClient]:
    """Enter ``names`` in turn; each newcomer's marker is the next thing
    every client in the room receives, not a join notice."""
    clients: list[ChatClient] = []
    for name in names:
        newcomer = enter(server, name)
        for client in clients:
            assert receive(client) == f"marker: {name} is in"
        clients.append(newcomer)
    return clients


def assert_next_is_marker(clients: Sequence[ChatClient], marker: str) -> None:
    """``clients[0]`` sends ``marker``; it is what every client receives next."""
    clients[0].send(marker)
    for ws in clients:
        assert receive(ws) == marker


def close_and_drain(ws: ChatClient) -> list[str | bytes]:
    """Close ``ws`` and return what it received before the server's close."""
    ws.close()
    received: list[str | bytes] = []
    while True:
        try:
            received.append(receive(ws))
        except simple_websocket.ConnectionClosed:
            return received


def receive_exactly(sock: socket.socket, size: int) -> bytes:
    """``size`` bytes from ``sock``, which must come within its timeout."""
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, f"connection closed after {data!r}"
        data += chunk
    return data


def read_frame(sock: socket.socket) -> tuple[bool, int, bytes]:
    """The server's next frame as it is on the wire: FIN, opcode, payload."""
    first, second = receive_exactly(sock, 2)
    assert not second & 0x80, "a server frame must not be masked"
    length = second & 0x7F
    if length == 126:
        (length,) = struct.unpack("!H", receive_exactly(sock, 2))
    elif length == 127:
        (length,) = struct.unpack("!Q", receive_exactly(sock, 8))
    return bool(first & 0x80), first & 0x0F, receive_exactly(sock, length)


def enter_raw(server: BroadcastServer, name: str) -> RawClient:
    """A raw client in the room, its marker read as one frame."""
    raw = RawClient(server.port, name)
    try:
        marker = f"marker: {name} is in".encode()
        raw.send(text(marker))
        assert read_frame(raw.sock) == (True, Opcode.TEXT, marker)
    except BaseException:
        raw.sock.close()
        raise
    return raw


@pytest.mark.parametrize(
    "message",
    [
        pytest.param("hello", id="text"),
        pytest.param("héllo ☃ 🎉", id="non-ascii text"),
        pytest.param(bytes(range(256)), id="binary, every byte value"),
        pytest.param(b"", id="empty binary"),
        pytest.param("", id="empty text"),
        pytest.param("  \t ", id="blank text"),
        pytest.param("\x1b[31mred\x1b[0m\nline two\r\n\x00\x7f", id="control chars"),
        pytest.param("x" * 505, id="over max chars, within max bytes"),
        pytest.param("é" * (MAX_BYTES // 2), id="exactly max bytes, text"),
        pytest.param(bytes(MAX_BYTES), id="exactly max bytes, binary"),
    ],
)
def test_message_is_relayed_verbatim_to_everyone(
    relay: BroadcastServer, message: str | bytes
) -> None:
    """Any message within max bytes reaches all, sender included, as sent."""
    assert relay.config.max_message_bytes == MAX_BYTES
    assert relay.config.max_message_chars == 500
    clients = enter_all(relay, ["alice", "bob"])
    clients[0].send(message)
    for ws in clients:
        received = receive(ws)
        assert type(received) is type(message)
        assert received == message
    assert_next_is_marker(clients[::-1], "marker: nothing else")
    for ws in clients:
        ws.close()


def test_no_join_or_leave_notices(relay: BroadcastServer) -> None:
    """Nobody is told of joins or leaves: after each, a marker comes next."""
    alice, bob, carol = enter_all(relay, ["alice", "bob", "carol"])
    bob.close()
    # bob's close frame came after his leave was handled: a leave notice
    # would be on its way to alice and carol ahead of the marker.
    assert_next_is_marker([alice, carol], "marker: bob is gone")
    carol.close()
    assert_next_is_marker([alice], "marker: carol is gone")
    alice.close()


def test_json_protocol_round_trip(relay: BroadcastServer) -> None:
    """Clients exchange JSON objects through the relay, as the README shows."""
    alice, bob = enter_all(relay, ["alice", "bob"])
    cursor = {"type": "cursor", "x": 1, "y": 2, "user": "alice"}
    alice.send(json.dumps(cursor))
    assert json.loads(receive(alice)) == cursor
    assert json.loads(receive(bob)) == cursor
    reply = {"type": "chat", "text": "héllo\n", "tags": ["a", "b"], "seen": None}
    bob.send(json.dumps(reply))
    assert json.loads(receive(alice)) == reply
    assert json.loads(receive(bob)) == reply
    alice.close()
    bob.close()


@pytest.mark.parametrize(
    ("opcode", "fragments"),
    [
        pytest.param(Opcode.TEXT, ["hé".encode(), "llo ☃".encode()], id="text"),
        # The cut falls inside "é": fragments need not be valid UTF-8 alone.
        pytest.param(Opcode.TEXT, [b"h\xc3", b"\xa9llo", b""], id="text cut in a char"),
        pytest.param(Opcode.BINARY, [b"\x00\x01", b"\xff", b"\xfe"], id="binary"),
        pytest.param(
            Opcode.BINARY, [bytes(200), bytes(200), bytes(112)], id="binary max bytes"
        ),
    ],
)
def test_fragmented_message_is_relayed_as_one_frame(
    relay: BroadcastServer, opcode: Opcode, fragments: list[bytes]
) -> None:
    """Fragments, with a ping amid them, are relayed as one unfragmented frame."""
    with enter_raw(relay, "receiver") as receiver, enter_raw(relay, "sender") as sender:
        assert read_frame(receiver.sock) == (True, Opcode.TEXT, b"marker: sender is in")
        first, *rest = fragments
        data = frame(opcode, first, fin=False) + frame(Opcode.PING, b"amid")
        for index, fragment in enumerate(rest, start=1):
            data += continuation(fragment, fin=index == len(rest))
        sender.send(data)
        message = b"".join(fragments)
        assert read_frame(sender.sock) == (True, Opcode.PONG, b"amid")
        for raw in (sender, receiver):
            assert read_frame(raw.sock) == (True, opcode, message)
        # Nothing else came: the next frame is the next message.
        receiver.send(text(b"marker: end"))
        for raw in (sender, receiver):
            assert read_frame(raw.sock) == (True, Opcode.TEXT, b"marker: end")


@pytest.mark.parametrize(
    ("data", "code"),
    [
        pytest.param(text(b"\xff"), 1007, id="invalid utf-8"),
        pytest.param(
            text(b"valid ", fin=False) + continuation(b"\xc3\x28"),
            1007,
            id="invalid utf-8 in a later fragment",
        ),
        pytest.param(text(b"x" * (MAX_BYTES + 1)), 1009, id="text over max bytes"),
        pytest.param(
            frame(Opcode.BINARY, bytes(MAX_BYTES + 1)), 1009, id="binary over max bytes"
        ),
        pytest.param(
            frame(Opcode.BINARY, bytes(300), fin=False) + continuation(bytes(300)),
            1009,
            id="binary fragments over max bytes",
        ),
    ],
)
def test_faulty_message_closes_the_sender_only(
    relay: BroadcastServer, data: bytes, code: int
) -> None:
    """Invalid UTF-8 and oversized messages earn their close code; others go on."""
    watcher = enter(relay, "watcher")
    with RawClient(relay.port, "faulty") as faulty:
        faulty.send(data)
        assert faulty.receive_close().code == code
        faulty.assert_server_closes_tcp()
    # Nothing of the faulty message, and no leave notice, comes first.
    assert_next_is_marker([watcher], "marker: after the fault")
    watcher.close()


def test_rate_limit_drops_silently() -> None:
    """Over rate_limit, messages are dropped with no notice in the relayed data."""
    with run_server(mode=Mode.RELAY, rate_limit=2, rate_window=5 * UNIT) as server:
        alice, bob = enter_all(server, ["alice", "bob"])
        # alice's marker was her first message in the window: one more passes.
        for message in ("second", "third", b"fourth"):
            alice.send(message)
        # Whatever the server relayed of alice's comes before its close frame.
        assert close_and_drain(alice) == ["second"]
        assert receive(bob) == "second"
        assert_next_is_marker([bob], "marker: nothing else")
        bob.close()


def lockstep(ws: ChatClient, messages: Sequence[bytes], seen: list[bytes]) -> None:
    """Send each message once the previous one came back; record all received."""
    for message in messages:
        ws.send(message)
        while (received := receive(ws, 2 * UNIT)) != message:
            assert isinstance(received, bytes), received
            seen.append(received)
        seen.append(message)


def read_until(ws: ChatClient, last: bytes, seen: list[bytes]) -> None:
    """Append what ``ws`` receives to ``seen``, up to and including ``last``."""
    while not seen or seen[-1] != last:
        received = receive(ws)
        assert isinstance(received, bytes), received
        seen.append(received)


def flood(name: str) -> list[bytes]:
    """The binary messages ``name`` floods the room with."""
    return [
        f"{index} {name}".encode().ljust(FLOOD_BYTES, b"\0")
        for index in range(FLOOD_MESSAGES)
    ]


def test_full_outbox_drops_a_client_that_never_reads(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A never-reading client is dropped once its outbox is full; others get all."""
    caplog.set_level(logging.INFO, logger="broadcast_sync")
    seen: dict[str, list[bytes]] = {"alice": [], "bob": []}
    with run_server(
        mode=Mode.RELAY,
        rate_limit=0,
        max_message_bytes=FLOOD_BYTES,
        queue_size=4,
        close_timeout=1 * UNIT,
    ) as server:
        alice, bob = enter_all(server, ["alice", "bob"])
        with RawClient(server.port, "slow", socket_options=SLOW_LINK) as slow:
            slow.send(text(b"marker: slow is in"))
            assert slow.receive_text() == "marker: slow is in"
            for ws in (alice, bob):
                assert receive(ws) == "marker: slow is in"
            run_concurrently(
                [
                    lambda: lockstep(alice, flood("alice"), seen["alice"]),
                    lambda: lockstep(bob, flood("bob"), seen["bob"]),
                ]
            )
            alice.send(b"end")
            for ws, name in ((alice, "alice"), (bob, "bob")):
                read_until(ws, b"end", seen[name])
            slow.assert_server_closes_tcp()
        alice.close()
        bob.close()
    assert seen["alice"] == seen["bob"]
    assert sorted(seen["alice"]) == sorted([*flood("alice"), *flood("bob"), b"end"])
    assert "left: too slow: 4 writes, " in caplog.text


def test_heartbeat_drops_a_client_that_never_answers_pings() -> None:
    """A client that never answers pings is closed with 1011; others stay."""
    with run_server(
        mode=Mode.RELAY, ping_interval=0.1 * UNIT, pong_timeout=0.4 * UNIT
    ) as server:
        alice = enter(server, "alice")
        with RawClient(server.port, "mute") as mute:
            mute.send(text(b"marker: mute is in"))
            events = mute.events_until_close()
            assert any(isinstance(event, Ping) for event in events)
            close = events[-1]
            assert isinstance(close, CloseConnection)
            assert close.code == 1011
            mute.assert_server_closes_tcp()
        assert receive(alice) == "marker: mute is in"
        assert_next_is_marker([alice], "marker: still here")
        alice.close()
