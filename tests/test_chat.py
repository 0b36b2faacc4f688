"""Chat between real clients: delivery, one global order, notices, limits."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Sequence

import pytest
import simple_websocket
from wsproto.events import CloseConnection, Pong, TextMessage
from wsproto.frame_protocol import Opcode

from broadcast_sync.dispatcher import MAX_LAG_SECONDS
from broadcast_sync.session import BUSY_NOTICE
from tests.conftest import (
    UNIT,
    connect,
    join,
    join_all,
    receive_text,
    run_concurrently,
    run_server,
    wait_until,
)
from tests.rawclient import RawClient, close_payload, frame, text
from tests.wsclient import ChatClient


def close_and_drain(ws: ChatClient) -> list[str]:
    """Close ``ws`` and return what it received before the server's close."""
    ws.close()
    messages: list[str] = []
    while True:
        try:
            messages.append(receive_text(ws))
        except simple_websocket.ConnectionClosed:
            return messages


def sender(ws: ChatClient, messages: Sequence[str]) -> Callable[[], None]:
    """A task that sends ``messages`` in turn."""

    def send_all() -> None:
        for message in messages:
            ws.send(message)

    return send_all


def test_every_client_sees_every_message_in_one_order() -> None:
    """Concurrent senders: all clients, senders included, get the same sequence."""
    names = [f"user{number}" for number in range(5)]
    per_sender = 20
    sent = {
        name: [f"{name} says {index}" for index in range(per_sender)] for name in names
    }
    with run_server(rate_limit=0) as server:
        clients = join_all(server, names)

        run_concurrently(
            [sender(ws, sent[name]) for ws, name in zip(clients, names, strict=True)]
        )
        total = len(names) * per_sender
        sequences = [[receive_text(ws) for _ in range(total)] for ws in clients]
        for ws in clients:
            ws.close()
    for sequence in sequences[1:]:
        assert sequence == sequences[0]
    for name in names:
        from_sender = [m for m in sequences[0] if m.startswith(f"{name}: ")]
        assert from_sender == [f"{name}: {message}" for message in sent[name]]


@pytest.mark.parametrize(
    ("requested", "assigned"),
    [
        pytest.param("alice", "alice_1", id="taken name"),
        pytest.param("Server", "Server_1", id="reserved name"),
        pytest.param("carol", "carol", id="free name"),
    ],
)
def test_join_and_leave_notices_reach_everyone(requested: str, assigned: str) -> None:
    """Joins and leaves are announced to all with the name the server gave."""
    with run_server() as server:
        alice, bob = join_all(server, ["alice", "bob"])
        newcomer = connect(server, requested)
        for ws in (newcomer, alice, bob):
            assert receive_text(ws) == f"Server: {assigned} has joined the chat"
        newcomer.send("hi")
        for ws in (newcomer, alice, bob):
            assert receive_text(ws) == f"{assigned}: hi"
        assert close_and_drain(newcomer) == []
        for ws in (alice, bob):
            assert receive_text(ws) == f"Server: {assigned} has left the chat"
        alice.close()
        assert receive_text(bob) == "Server: alice has left the chat"
        bob.close()


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        pytest.param("x" * 11, "it is 11 characters long, the limit is 10", id="long"),
        pytest.param("\x1b[31mred", "control characters", id="escape"),
        pytest.param("a\x9bb", "control characters", id="C1 CSI"),
        pytest.param("two\nlines", "control characters", id="newline"),
        pytest.param("a\tb", "control characters", id="tab"),
        pytest.param("nul\x00", "control characters", id="NUL"),
        pytest.param("del\x7f", "control characters", id="DEL"),
    ],
)
def test_rejected_message_gets_a_notice_to_the_sender_only(
    message: str, reason: str
) -> None:
    """A message too long or with control characters: a notice, no broadcast."""
    with run_server(max_message_chars=10) as server:
        alice, bob = join_all(server, ["alice", "bob"])
        alice.send(message)
        notice = receive_text(alice)
        assert notice.startswith("Server: message not sent"), notice
        assert reason in notice
        # The marker comes after the rejected message: if that had been
        # broadcast, bob would get it first.
        alice.send("marker")
        assert receive_text(alice) == "alice: marker"
        assert receive_text(bob) == "alice: marker"
        alice.close()
        bob.close()


@pytest.mark.parametrize(
    "message",
    [
        pytest.param("x" * 10, id="ascii"),
        pytest.param("é" * 10, id="two-byte"),
        pytest.param("\U0001f642" * 10, id="four-byte"),
    ],
)
def test_message_of_max_chars_is_broadcast(message: str) -> None:
    """The limit counts characters, not bytes, and allows exactly max chars."""
    with run_server(max_message_chars=10) as server:
        alice, bob = join_all(server, ["alice", "bob"])
        alice.send(message)
        assert receive_text(alice) == f"alice: {message}"
        assert receive_text(bob) == f"alice: {message}"
        alice.close()
        bob.close()


@pytest.mark.parametrize("blank", ["", " ", " \t \n ", "\u3000"])
def test_blank_message_is_ignored(blank: str) -> None:
    """Blank messages are neither broadcast nor answered with a notice."""
    with run_server() as server:
        alice, bob = join_all(server, ["alice", "bob"])
        alice.send(blank)
        alice.send("marker")
        assert receive_text(alice) == "alice: marker"
        assert receive_text(bob) == "alice: marker"
        alice.close()
        bob.close()


@pytest.mark.parametrize(
    ("rate_limit", "sent", "broadcast"),
    [
        pytest.param(3, 8, 3, id="burst over the limit"),
        pytest.param(3, 3, 3, id="burst at the limit"),
        pytest.param(0, 30, 30, id="disabled"),
    ],
)
def test_rate_limit(rate_limit: int, sent: int, broadcast: int) -> None:
    """The first messages of a window pass; the rest drop with ONE notice."""
    messages = [f"m{index}" for index in range(sent)]
    expected = [f"alice: {message}" for message in messages[:broadcast]]
    with run_server(rate_limit=rate_limit, rate_window=5.0) as server:
        alice, bob = join_all(server, ["alice", "bob"])
        for message in messages:
            alice.send(message)
        # The server reads alice's close after her messages, so once it
        # answers, alice got everything the server had for her.
        received = close_and_drain(alice)
        from_bob = [receive_text(bob) for _ in range(broadcast + 1)]
        bob.close()
    assert from_bob == [*expected, "Server: alice has left the chat"]
    if sent == broadcast:
        assert received == expected
    else:
        assert received[:-1] == expected
        assert received[-1].startswith("Server: rate limit: at most 3 messages")


#: How long the paced senders below send: long enough for the jitter of
#: every message to have had its chance.
PACED_SECONDS = 10


def paced_sender(ws: ChatClient, rate: float, seed: int) -> Callable[[], None]:
    """A task sending ``rate`` messages a second for :data:`PACED_SECONDS`, on
    a clock, each up to 20 % of the period early or late, as a network's
    jitter would have them arrive."""
    period = 1 / rate
    jitter = random.Random(seed)

    def send_all() -> None:
        started = time.monotonic()
        for index in range(int(PACED_SECONDS * rate)):
            due = started + (index + jitter.uniform(-0.2, 0.2)) * period
            time.sleep(max(due - time.monotonic(), 0))
            ws.send(f"m{index}")

    return send_all


def test_rate_limit_spares_a_client_at_the_rate() -> None:
    """At the default limit (5 messages a second), a client sending at
    exactly that rate with ±20 % jitter is never limited; one sending at
    1.5 times the rate is, and still gets the rate through."""
    with run_server(rate_limit=5, rate_window=1.0) as server:
        honest, flooder = join_all(server, ["honest", "flooder"])
        run_concurrently(
            [paced_sender(honest, 5, seed=1), paced_sender(flooder, 7.5, seed=2)]
        )
        from_honest = close_and_drain(honest)
        from_flooder = close_and_drain(flooder)
    notice = "Server: rate limit: at most 5 messages every 1 s; messages dropped"
    sent = PACED_SECONDS * 5
    assert [line for line in from_honest if line.startswith("honest: ")] == [
        f"honest: m{index}" for index in range(sent)
    ]
    assert notice not in from_honest
    assert notice in from_flooder
    passed = [line for line in from_flooder if line.startswith("flooder: ")]
    assert sent <= len(passed) <= sent + 5  # the rate, and one burst


def test_message_sent_just_before_close_is_delivered() -> None:
    """A client that sends and closes at once gets its message to all, itself too."""
    with run_server() as server:
        alice, bob = join_all(server, ["alice", "bob"])
        alice.send("bye")
        assert close_and_drain(alice) == ["alice: bye"]
        assert receive_text(bob) == "alice: bye"
        assert receive_text(bob) == "Server: alice has left the chat"
        bob.close()


def test_message_sent_with_close_frame_comes_before_the_close_reply() -> None:
    """A message and a close in one write: the message, then the close reply."""
    with run_server() as server:
        bob = join(server, "bob")
        with RawClient(server.port, "alice") as alice:
            assert alice.receive_text() == "Server: alice has joined the chat"
            alice.send(text(b"bye") + frame(Opcode.CLOSE, close_payload(1000)))
            assert alice.next_event() == TextMessage(data="alice: bye")
            close = alice.next_event()
            assert isinstance(close, CloseConnection)
            assert close.code == 1000
        assert receive_text(bob) == "Server: alice has joined the chat"
        assert receive_text(bob) == "alice: bye"
        assert receive_text(bob) == "Server: alice has left the chat"
        bob.close()


def test_message_sent_before_dropping_tcp_is_delivered() -> None:
    """A client that sends, then drops TCP without a close frame, is heard."""
    with run_server() as server:
        bob = join(server, "bob")
        with RawClient(server.port, "alice") as alice:
            alice.send(text(b"bye"))
        assert receive_text(bob) == "Server: alice has joined the chat"
        assert receive_text(bob) == "alice: bye"
        assert receive_text(bob) == "Server: alice has left the chat"
        bob.close()


def test_message_sent_with_the_handshake_is_delivered() -> None:
    """A frame sent in the same write as the handshake request is not lost."""
    with run_server() as server:
        bob = join(server, "bob")
        with RawClient(server.port, "alice", early_data=text(b"early")) as alice:
            assert alice.receive_text() == "Server: alice has joined the chat"
            assert alice.receive_text() == "alice: early"
        assert receive_text(bob) == "Server: alice has joined the chat"
        assert receive_text(bob) == "alice: early"
        assert receive_text(bob) == "Server: alice has left the chat"
        bob.close()


@pytest.mark.parametrize(
    "payload", [b"", b"are you there?", bytes(range(125))], ids=["empty", "text", "125"]
)
def test_client_ping_gets_a_pong(payload: bytes) -> None:
    """A client's ping is answered with a pong carrying the same payload."""
    with run_server() as server, RawClient(server.port, "alice") as alice:
        assert alice.receive_text() == "Server: alice has joined the chat"
        alice.send(frame(Opcode.PING, payload))
        assert alice.next_event() == Pong(payload=payload)


def test_one_order_across_join_and_leave() -> None:
    """A client joining and leaving mid-chat sees exactly its slice of the order."""
    # Senders keep sending while a newcomer joins and leaves. Everyone present
    # throughout sees the same sequence, notices included; the newcomer sees
    # exactly what lies between its join notice and its leave notice.
    names = ["user0", "user1", "user2"]
    per_batch = 10
    joined, left = threading.Event(), threading.Event()
    with run_server(rate_limit=0) as server:
        clients = join_all(server, names)

        def batch_sender(ws: ChatClient, name: str) -> Callable[[], None]:
            def send_batches() -> None:
                for batch, gate in enumerate([None, joined, left]):
                    if gate is not None:
                        assert gate.wait(5 * UNIT)
                    for index in range(per_batch):
                        ws.send(f"{name} batch {batch} message {index}")

            return send_batches

        seen_by_newcomer: list[str] = []

        def newcomer_recording() -> None:
            try:
                ws = connect(server, "newcomer")
                # Its join notice comes first; once it came, whatever the
                # senders send next is in its slice.
                seen_by_newcomer.append(receive_text(ws))
                joined.set()
                while True:
                    message = receive_text(ws)
                    seen_by_newcomer.append(message)
                    if message.startswith("user"):
                        break
                seen_by_newcomer.extend(close_and_drain(ws))
            finally:  # on failure too, so that the senders stop waiting
                joined.set()
                left.set()

        run_concurrently(
            [
                *(
                    batch_sender(ws, name)
                    for ws, name in zip(clients, names, strict=True)
                ),
                newcomer_recording,
            ]
        )
        total = len(names) * per_batch * 3 + 2  # and the newcomer's notices
        sequences = [[receive_text(ws) for _ in range(total)] for ws in clients]
        for ws in clients:
            ws.close()
    for sequence in sequences[1:]:
        assert sequence == sequences[0]
    start = sequences[0].index("Server: newcomer has joined the chat")
    end = sequences[0].index("Server: newcomer has left the chat")
    assert seen_by_newcomer == sequences[0][start:end]
    assert any(message.startswith("user") for message in seen_by_newcomer)


def test_messages_are_refused_with_a_notice_while_the_server_is_busy() -> None:
    """While the fan-out lags over a second (past capacity), a message is
    refused with one notice, not broadcast; once the dispatcher has caught
    up (its inbox ran empty), messages pass again."""
    with run_server() as server:
        alice, bob = join_all(server, ["alice", "bob"])
        # What the dispatcher sets when a flush lags; poked here, since a
        # real overload takes more than a test can afford. First let it
        # reach its wait for the next item, which clears the lag.
        time.sleep(0.1 * UNIT)
        server.dispatcher.lag = MAX_LAG_SECONDS + 1
        alice.send("refused")
        assert receive_text(alice) == f"Server: {BUSY_NOTICE}"
        # The notice went through the dispatcher, which then found its inbox
        # empty: caught up.
        wait_until(lambda: not server.dispatcher.busy(), "the lag back to 0")
        alice.send("passed")
        assert receive_text(alice) == "alice: passed"
        assert receive_text(bob) == "alice: passed"
        alice.close()
        bob.close()
