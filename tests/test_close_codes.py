"""Close codes: what the server answers to frames no library would send.

A :class:`RawClient` does a real handshake on a bare socket, then writes
frames built by hand (:func:`frame`) and reads the server's frames with a
wsproto client connection. Each faulty client is watched by a well-behaved
one, which must see it leave and must keep chatting.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from wsproto.events import Pong, TextMessage
from wsproto.frame_protocol import Opcode

from broadcast_sync.server import BroadcastServer
from tests.conftest import UNIT, join, receive, run_server

#: How long a raw client waits for what it expects from the server.
from tests.rawclient import (
    RSV1,
    RSV2,
    RSV3,
    RawClient,
    close_payload,
    continuation,
    frame,
    text,
)


@pytest.fixture
def watched() -> Iterator[BroadcastServer]:
    """A server whose short close timeout keeps failing tests short."""
    with run_server(close_timeout=2 * UNIT) as server:
        yield server


def _faults() -> list[object]:
    """The faulty frames and the close code each one earns."""
    too_big = [
        pytest.param(text(b"x" * 513), 1009, id="one frame over max bytes"),
        pytest.param(
            text(b"x" * 200, fin=False)
            + continuation(b"x" * 200, fin=False)
            + continuation(b"x" * 200),
            1009,
            id="fragments adding up to over max bytes",
        ),
        pytest.param(
            frame(Opcode.TEXT, b"x" * 600, length=1 << 20),
            1009,
            id="closed before a huge announced frame is complete",
        ),
    ]
    bad_utf8 = [
        pytest.param(text(b"\xff"), 1007, id="invalid utf-8"),
        pytest.param(text(b"ok \xed\xa0\x80"), 1007, id="utf-8 surrogate"),
        pytest.param(text("café".encode()[:-1]), 1007, id="utf-8 cut short"),
        pytest.param(
            text(b"valid ", fin=False) + continuation(b"\xc3\x28"),
            1007,
            id="invalid utf-8 in a later fragment",
        ),
        pytest.param(
            frame(Opcode.CLOSE, close_payload(1000, b"\xffbye")),
            1007,
            id="close reason invalid utf-8",
        ),
    ]
    binary = [
        pytest.param(frame(Opcode.BINARY, b"data"), 1003, id="binary"),
        pytest.param(
            frame(Opcode.BINARY, b"da", fin=False) + continuation(b"ta"),
            1003,
            id="fragmented binary",
        ),
    ]
    protocol = [
        pytest.param(frame(Opcode.TEXT, b"hi", masked=False), 1002, id="unmasked"),
        *(
            pytest.param(frame(Opcode.TEXT, b"hi", rsv=bit), 1002, id=f"rsv {bit:#x}")
            for bit in (RSV1, RSV2, RSV3)
        ),
        *(
            pytest.param(frame(op, b"hi"), 1002, id=f"reserved opcode {op:#x}")
            for op in (0x3, 0x7, 0xB, 0xF)
        ),
        pytest.param(frame(Opcode.PING, b"x" * 126), 1002, id="ping over 125 bytes"),
        pytest.param(frame(Opcode.PING, b"x", fin=False), 1002, id="fragmented ping"),
        pytest.param(continuation(b"x"), 1002, id="continuation without a start"),
        pytest.param(
            text(b"a", fin=False) + text(b"b"),
            1002,
            id="new message inside a fragmented one",
        ),
        pytest.param(frame(Opcode.CLOSE, b"\x03"), 1002, id="close with 1 byte"),
        *(
            pytest.param(
                frame(Opcode.CLOSE, close_payload(code)), 1002, id=f"close code {code}"
            )
            for code in (0, 999, 1004, 1005, 1006, 1015, 2999, 5000)
        ),
    ]
    return [*too_big, *bad_utf8, *binary, *protocol]


@pytest.mark.parametrize(("data", "code"), _faults())
def test_faulty_client_is_closed_with_code(
    watched: BroadcastServer, data: bytes, code: int
) -> None:
    """A faulty frame earns its close code and a TCP close; others chat on."""
    watcher = join(watched, "watcher")
    with RawClient(watched.port, "faulty") as faulty:
        assert receive(watcher) == "Server: faulty has joined the chat"
        faulty.send(data)
        assert faulty.receive_close().code == code
        faulty.assert_server_closes_tcp()
    assert receive(watcher) == "Server: faulty has left the chat"
    watcher.send("still here")
    assert receive(watcher) == "watcher: still here"
    watcher.close()


@pytest.mark.parametrize(
    ("payload", "codes"),
    [
        pytest.param(close_payload(1000), {1000}, id="1000"),
        pytest.param(close_payload(1000, b"bye"), {1000}, id="1000 with a reason"),
        pytest.param(close_payload(1001), {1001}, id="1001"),
        pytest.param(close_payload(4000, "à+".encode()), {4000}, id="4000"),
        # No code: the reply may carry none either (1005) or 1000.
        pytest.param(b"", {1000, 1005}, id="no code"),
    ],
)
def test_client_close_is_echoed(
    watched: BroadcastServer, payload: bytes, codes: set[int]
) -> None:
    """The server answers a client's close with its code, then closes TCP."""
    watcher = join(watched, "watcher")
    with RawClient(watched.port, "leaver") as leaver:
        assert receive(watcher) == "Server: leaver has joined the chat"
        # What follows a close frame is not for the room.
        leaver.send(frame(Opcode.CLOSE, payload) + text(b"after the close"))
        assert leaver.receive_close().code in codes
        leaver.assert_server_closes_tcp()
    assert receive(watcher) == "Server: leaver has left the chat"
    watcher.send("marker")
    assert receive(watcher) == "watcher: marker"
    watcher.close()


def test_control_frames_between_fragments(watched: BroadcastServer) -> None:
    """A ping amid a fragmented message gets its pong; the message arrives."""
    watcher = join(watched, "watcher")
    with RawClient(watched.port, "pinger") as pinger:
        assert pinger.receive_text() == "Server: pinger has joined the chat"
        assert receive(watcher) == "Server: pinger has joined the chat"
        pinger.send(
            text(b"hel", fin=False)
            + frame(Opcode.PING, b"amid")
            + continuation(b"l", fin=False)
            + frame(Opcode.PONG, b"unasked")
            + continuation(b"o")
        )
        events = [pinger.next_event(), pinger.next_event()]
        assert Pong(payload=b"amid") in events
        assert TextMessage(data="pinger: hello") in events
        assert receive(watcher) == "pinger: hello"
    assert receive(watcher) == "Server: pinger has left the chat"
    watcher.close()


def test_message_of_exactly_max_bytes_in_fragments(watched: BroadcastServer) -> None:
    """A message of exactly max_message_bytes, cut mid-character, is delivered."""
    message = "é" * (watched.config.max_message_bytes // 2)
    data = message.encode()
    assert len(data) == watched.config.max_message_bytes
    watcher = join(watched, "watcher")
    with RawClient(watched.port, "tester") as tester:
        assert receive(watcher) == "Server: tester has joined the chat"
        tester.send(
            text(data[:171], fin=False)
            + continuation(data[171:343], fin=False)
            + continuation(data[343:])
        )
        assert receive(watcher) == f"tester: {message}"
    assert receive(watcher) == "Server: tester has left the chat"
    watcher.close()
