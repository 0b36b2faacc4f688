"""The room as a log, end to end: JSON frames, ``history``, ``since``.

Real servers in memory mode and real clients. A JSON client that stays
connected is the reference: it gets every logged event after its own
welcome, so what another client is replayed can be compared with what it
got live, frame for frame.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import random
import threading
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from broadcast_sync.config import Mode
from broadcast_sync.events import EventId, parse_event_id
from broadcast_sync.server import BroadcastServer
from tests.conftest import (
    UNIT,
    WELCOME_LIMITS,
    http_exchange,
    join,
    receive,
    receive_text,
    run_server,
)
from tests.rawclient import new_key
from tests.wsclient import ChatClient

#: Messages a sender of the race test sends before it waits for their echo.
SENDER_BURST = 20
#: The keys of each kind of frame a JSON client gets.
EVENT_KEYS = {
    "message": {"type", "id", "ts", "user", "text"},
    "join": {"type", "id", "ts", "user"},
    "leave": {"type", "id", "ts", "user"},
    "notice": {"type", "text"},
}


def url(server: BroadcastServer, query: str) -> str:
    """The server's WebSocket URL with ``query`` as is."""
    return f"ws://127.0.0.1:{server.port}/ws?{query}"


def open_client(
    stack: contextlib.ExitStack,
    server: BroadcastServer,
    username: str,
    **parameters: str | int,
) -> ChatClient:
    """Connect ``username`` with the query ``parameters``; ``stack`` closes it."""
    query = urllib.parse.urlencode({"username": username, **parameters})
    ws: ChatClient = ChatClient.connect(url(server, query))
    return stack.enter_context(contextlib.closing(ws))


def open_json(
    stack: contextlib.ExitStack,
    server: BroadcastServer,
    username: str,
    **parameters: str | int,
) -> ChatClient:
    """Connect a JSON client; ``stack`` closes it."""
    return open_client(stack, server, username, format="json", **parameters)


def decode(frame: str) -> dict[str, Any]:
    """A JSON frame as a dict, checked to be one object."""
    value = json.loads(frame)
    assert isinstance(value, dict), frame
    return value


def receive_json(ws: ChatClient) -> dict[str, Any]:
    """The next frame, which must be one JSON object."""
    return decode(receive_text(ws))


def receive_welcome(ws: ChatClient) -> dict[str, Any]:
    """The first frame of a JSON client, which must be its welcome."""
    welcome = receive_json(ws)
    assert welcome["type"] == "welcome", welcome
    return welcome


def offset(event_id: str) -> int:
    """The offset in an event id."""
    return parse_event_id(event_id).offset


def assert_event(frame: str, kind: str, user: str, text: str | None = None) -> None:
    """``frame`` is a logged event of ``kind`` by ``user``, with exactly the
    keys of its kind."""
    event = decode(frame)
    assert set(event) == EVENT_KEYS[kind], event
    assert (event["type"], event["user"]) == (kind, user), event
    if text is not None:
        assert event["text"] == text, event


def assert_same_sequence(actual: Sequence[str], expected: Sequence[str]) -> None:
    """The two sequences are equal; else say where they first differ."""
    if list(actual) == list(expected):
        return
    index = next(
        (i for i, (a, e) in enumerate(zip(actual, expected, strict=False)) if a != e),
        min(len(actual), len(expected)),
    )
    pytest.fail(
        f"sequences differ at {index} (got {len(actual)}, expected {len(expected)}):"
        f"\n  got      {list(actual[index : index + 3])}"
        f"\n  expected {list(expected[index : index + 3])}"
    )


def refusal(server: BroadcastServer, query: str) -> tuple[int, str]:
    """The status and reason of a handshake with ``query``, on a raw socket
    that is closed at once (a refused client lingering would slow the test)."""
    response = http_exchange(
        server.port,
        (
            f"GET /ws?{query} HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{server.port}\r\n"
            "Upgrade: websocket\r\n"
            "Connection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {new_key()}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode(),
    )
    head, _, body = response.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, body.decode()


@contextlib.contextmanager
def room_with_history(
    **options: Any,
) -> Iterator[tuple[BroadcastServer, contextlib.ExitStack, ChatClient, list[str]]]:
    """A server whose log holds six events, all seen by a JSON client, alice.

    Yields the server, a stack closing clients, alice, and the frames alice
    got: her own join, bob's join, ``bob: one``, ``alice: two``, then carol's
    join and leave. bob stays connected, in text format.
    """
    with run_server(**options) as server, contextlib.ExitStack() as stack:
        alice = open_json(stack, server, "alice")
        receive_welcome(alice)
        seen = [receive_text(alice)]  # her join, logged before bob's
        bob = stack.enter_context(contextlib.closing(join(server, "bob")))
        bob.send("one")
        assert receive_text(bob) == "bob: one"
        alice.send("two")
        assert receive_text(bob) == "alice: two"
        carol = join(server, "carol")
        carol.close()
        seen += [receive_text(alice) for _ in range(5)]
        yield server, stack, alice, seen


#: The six events of room_with_history, as a text client sees them.
HISTORY_TEXT = [
    "Server: alice has joined the chat",
    "Server: bob has joined the chat",
    "bob: one",
    "alice: two",
    "Server: carol has joined the chat",
    "Server: carol has left the chat",
]


# The JSON protocol.


def test_json_welcome_on_an_empty_log_then_own_join() -> None:
    """The first client's welcome lists only itself, with a null last_id;
    its own join follows, with id offset 1."""
    with run_server() as server, contextlib.ExitStack() as stack:
        before = time.time()
        alice = open_json(stack, server, "alice")
        assert receive_json(alice) == {
            "type": "welcome",
            "user": "alice",
            "users": ["alice"],
            "last_id": None,
            **WELCOME_LIMITS,
        }
        frame = receive_text(alice)
        after = time.time()
        assert_event(frame, "join", "alice")
        event = decode(frame)
        assert offset(event["id"]) == 1
        assert isinstance(event["ts"], float)
        assert before <= event["ts"] <= after


def test_json_welcome_lists_everyone_sorted_and_the_newest_id() -> None:
    """The welcome names the client as assigned, everyone online sorted, and
    the id of the newest logged event."""
    with run_server() as server, contextlib.ExitStack() as stack:
        zed = open_json(stack, server, "zed")
        receive_welcome(zed)
        assert_event(receive_text(zed), "join", "zed")
        stack.enter_context(contextlib.closing(join(server, "bob"))).send("hello")
        assert_event(receive_text(zed), "join", "bob")
        newest = receive_json(zed)
        assert (newest["type"], newest["text"]) == ("message", "hello")

        amy = open_json(stack, server, "amy")
        assert receive_json(amy) == {
            "type": "welcome",
            "user": "amy",
            "users": ["amy", "bob", "zed"],
            "last_id": newest["id"],
            **WELCOME_LIMITS,
        }
        own_join = receive_text(amy)
        assert receive_text(zed) == own_join
        assert offset(decode(own_join)["id"]) == offset(newest["id"]) + 1

        second_zed = open_json(stack, server, "zed")
        welcome = receive_welcome(second_zed)
        assert welcome["user"] == "zed_1"
        assert welcome["users"] == ["amy", "bob", "zed", "zed_1"]
        assert welcome["last_id"] == decode(own_join)["id"]


def test_json_events_have_their_shape_increasing_ids_and_a_server_time() -> None:
    """Messages, joins and leaves carry exactly their keys; ids of one epoch
    with consecutive offsets; ts a float taken while they were sent."""
    with run_server() as server, contextlib.ExitStack() as stack:
        before = time.time()
        alice = open_json(stack, server, "alice")
        receive_welcome(alice)
        frames = [receive_text(alice)]
        bob = open_json(stack, server, "bob")
        receive_welcome(bob)
        frames.append(receive_text(alice))  # bob's join, logged before his "hi"
        bob.send("hi")
        alice.send('héllo ✓ {"json": true}')
        frames += [receive_text(alice) for _ in range(2)]
        bob.close()
        frames.append(receive_text(alice))
        after = time.time()

    assert_event(frames[0], "join", "alice")
    assert_event(frames[1], "join", "bob")
    # The two messages may be logged in either order.
    messages = sorted(decode(frame)["user"] for frame in frames[2:4])
    assert messages == ["alice", "bob"]
    for frame in frames[2:4]:
        user = decode(frame)["user"]
        text = "hi" if user == "bob" else 'héllo ✓ {"json": true}'
        assert_event(frame, "message", user, text)
    assert_event(frames[4], "leave", "bob")
    ids = [parse_event_id(decode(frame)["id"]) for frame in frames]
    assert len({event_id.epoch for event_id in ids}) == 1
    assert [event_id.offset for event_id in ids] == [1, 2, 3, 4, 5]
    for frame in frames:
        ts = decode(frame)["ts"]
        assert isinstance(ts, float)
        assert before <= ts <= after


def test_json_notices_are_sent_to_one_client_without_an_id_and_never_logged() -> None:
    """A too-long message and the rate limit get JSON notices, to the sender
    alone; they are not in the history, and move no last_id."""
    with (
        run_server(max_message_chars=10, rate_limit=3, rate_window=60 * UNIT) as server,
        contextlib.ExitStack() as stack,
    ):
        alice = open_json(stack, server, "alice")
        receive_welcome(alice)
        logged = [receive_text(alice)]  # her join, logged before bob's
        bob = stack.enter_context(contextlib.closing(join(server, "bob")))
        logged.append(receive_text(alice))

        alice.send("x" * 11)
        too_long = receive_json(alice)
        assert set(too_long) == EVENT_KEYS["notice"]
        assert too_long["type"] == "notice"
        assert too_long["text"] == (
            "message not sent: it is 11 characters long, the limit is 10"
        )
        for text in ["a", "b", "c", "d"]:  # "a" and "b" fill the limit of 3
            alice.send(text)
        logged += [receive_text(alice) for _ in range(2)]
        assert [decode(frame)["text"] for frame in logged[2:]] == ["a", "b"]
        rate = receive_json(alice)
        assert set(rate) == EVENT_KEYS["notice"]
        assert rate["type"] == "notice"
        assert rate["text"].startswith(
            f"rate limit: at most 3 messages every {60 * UNIT:g} s"
        )
        bob.send("after")
        logged.append(receive_text(alice))
        assert_event(logged[-1], "message", "bob", "after")
        assert [receive_text(bob) for _ in range(3)] == [
            "alice: a",
            "alice: b",
            "bob: after",
        ]

        carol = open_json(stack, server, "carol", history=1000)
        welcome = receive_welcome(carol)
        assert welcome["last_id"] == decode(logged[-1])["id"]
        assert_same_sequence([receive_text(carol) for _ in logged], logged)
        assert_event(receive_text(carol), "join", "carol")


# history=K


@pytest.mark.parametrize("count", [0, 1, 3, 6, 1000])
def test_text_history_is_the_last_events_as_lines_then_own_join(count: int) -> None:
    """A text client with history=K gets the last K logged events as the
    lines a live client gets, then its own join, then live messages."""
    with room_with_history() as (server, stack, alice, _):
        dave = open_client(stack, server, "dave", history=count)
        expected = HISTORY_TEXT[len(HISTORY_TEXT) - min(count, 6) :]
        assert [receive_text(dave) for _ in expected] == expected
        assert receive_text(dave) == "Server: dave has joined the chat"
        assert_event(receive_text(alice), "join", "dave")
        alice.send("live")
        assert receive_text(dave) == "alice: live"


@pytest.mark.parametrize("count", [0, 1, 3, 6, 1000])
def test_json_history_is_the_last_events_as_sent_live_then_own_join(
    count: int,
) -> None:
    """A JSON client with history=K gets its welcome, the last K events, each
    frame the same as a live client got, then its own join."""
    with room_with_history() as (server, stack, alice, seen):
        dave = open_json(stack, server, "dave", history=count)
        assert receive_json(dave) == {
            "type": "welcome",
            "user": "dave",
            "users": ["alice", "bob", "dave"],
            "last_id": decode(seen[-1])["id"],
            **WELCOME_LIMITS,
        }
        expected = seen[len(seen) - min(count, 6) :]
        assert_same_sequence([receive_text(dave) for _ in expected], expected)
        own_join = receive_text(dave)
        assert_event(own_join, "join", "dave")
        assert receive_text(alice) == own_join
        alice.send("live")
        assert receive_text(dave) == receive_text(alice)


def test_history_of_a_small_ring_is_its_last_events() -> None:
    """history=history_size is accepted and gives the ring's events, the
    oldest ones trimmed away."""
    with room_with_history(history_size=5) as (server, stack, _, seen):
        dave = open_json(stack, server, "dave", history=5)
        receive_welcome(dave)
        assert_same_sequence([receive_text(dave) for _ in range(5)], seen[1:])
        assert_event(receive_text(dave), "join", "dave")


def test_relay_history_replays_data_verbatim() -> None:
    """In relay mode, history=K replays the last K messages as sent, text
    and binary, then live ones."""
    with run_server(mode=Mode.RELAY) as server, contextlib.ExitStack() as stack:
        alice = open_client(stack, server, "alice")
        alice.send("text one")
        alice.send(b"\x00\x01binary")
        alice.send("text two")
        assert [receive(alice) for _ in range(3)] == [
            "text one",
            b"\x00\x01binary",
            "text two",
        ]
        bob = open_client(stack, server, "bob", history=2)
        assert [receive(bob) for _ in range(2)] == [b"\x00\x01binary", "text two"]
        alice.send("live")
        assert receive(bob) == "live"


# since=ID


def test_resume_after_a_disconnect_replays_exactly_what_was_missed() -> None:
    """A client back with since=its last id gets resumed true, then the
    events it missed (its own leave included), then its new join."""
    with room_with_history() as (server, stack, alice, _):
        dave = open_json(stack, server, "dave")
        receive_welcome(dave)
        last_id = decode(receive_text(dave))["id"]  # its own join
        assert_event(receive_text(alice), "join", "dave")
        dave.close()
        missed = [receive_text(alice)]
        assert_event(missed[0], "leave", "dave")
        alice.send("while dave was away")
        missed.append(receive_text(alice))
        assert_event(missed[1], "message", "alice", "while dave was away")

        dave = open_json(stack, server, "dave", since=last_id)
        welcome = receive_welcome(dave)
        assert welcome["resumed"] is True
        assert welcome["last_id"] == decode(missed[-1])["id"]
        assert_same_sequence([receive_text(dave) for _ in missed], missed)
        own_join = receive_text(dave)
        assert receive_text(alice) == own_join
        # "dave", unless the name was still being freed: then "dave_1".
        assert_event(own_join, "join", welcome["user"])


def test_resume_from_the_newest_id_replays_nothing() -> None:
    """since=the newest id: resumed true, nothing replayed, history ignored;
    the client's own join and live messages follow."""
    with room_with_history() as (server, stack, alice, seen):
        newest = decode(seen[-1])["id"]
        dave = open_json(stack, server, "dave", since=newest, history=1000)
        assert receive_json(dave) == {
            "type": "welcome",
            "user": "dave",
            "users": ["alice", "bob", "dave"],
            "last_id": newest,
            "resumed": True,
            **WELCOME_LIMITS,
        }
        own_join = receive_text(dave)
        assert_event(own_join, "join", "dave")
        assert offset(decode(own_join)["id"]) == offset(newest) + 1
        assert receive_text(alice) == own_join
        alice.send("live")
        assert receive_text(dave) == receive_text(alice)


@pytest.mark.parametrize("start", [0, 1, 2, 4])
def test_resume_from_an_older_id_replays_exactly_the_events_after_it(
    start: int,
) -> None:
    """since=an older id: resumed true, the events after it exactly as sent
    live, history ignored, then the client's own join."""
    with room_with_history() as (server, stack, alice, seen):
        since = decode(seen[start])["id"]
        dave = open_json(stack, server, "dave", since=since, history=1)
        welcome = receive_welcome(dave)
        assert (welcome["resumed"], welcome["last_id"]) == (
            True,
            decode(seen[-1])["id"],
        )
        expected = seen[start + 1 :]
        assert_same_sequence([receive_text(dave) for _ in expected], expected)
        own_join = receive_text(dave)
        assert_event(own_join, "join", "dave")
        assert receive_text(alice) == own_join


def test_resume_from_a_trimmed_id_is_refused_without_replay() -> None:
    """With a ring of 3 holding offsets 4 to 6, since offset 2 (offset 3 is
    gone): resumed false, no partial replay, history ignored."""
    with room_with_history(history_size=3) as (server, stack, alice, seen):
        # alice saw every event from offset 1: seen[i] has offset i + 1.
        dave = open_json(stack, server, "dave", since=decode(seen[1])["id"], history=3)
        welcome = receive_welcome(dave)
        assert (welcome["resumed"], welcome["last_id"]) == (
            False,
            decode(seen[-1])["id"],
        )
        own_join = receive_text(dave)  # nothing replayed before it
        assert_event(own_join, "join", "dave")
        assert receive_text(alice) == own_join


def test_resume_from_the_oldest_replayable_id_replays_the_whole_ring() -> None:
    """With a ring of 5 holding offsets 2 to 6, since offset 1 needs exactly
    the 5 events held: resumed true, all 5 replayed."""
    with room_with_history(history_size=5) as (server, stack, alice, seen):
        dave = open_json(stack, server, "dave", since=decode(seen[0])["id"])
        welcome = receive_welcome(dave)
        assert (welcome["resumed"], welcome["last_id"]) == (
            True,
            decode(seen[-1])["id"],
        )
        assert_same_sequence([receive_text(dave) for _ in range(5)], seen[1:])
        own_join = receive_text(dave)
        assert_event(own_join, "join", "dave")
        assert receive_text(alice) == own_join


def test_resume_with_an_id_of_another_server_is_refused() -> None:
    """An id from another log (another epoch), though its offset exists
    here: resumed false and no replay."""
    with run_server() as other, contextlib.ExitStack() as stack:
        stranger = open_json(stack, other, "stranger")
        receive_welcome(stranger)
        foreign = decode(receive_text(stranger))["id"]
        assert offset(foreign) == 1
        with room_with_history() as (server, inner_stack, alice, seen):
            assert (
                parse_event_id(foreign).epoch
                != parse_event_id(decode(seen[0])["id"]).epoch
            )
            dave = open_json(inner_stack, server, "dave", since=foreign)
            welcome = receive_welcome(dave)
            assert (welcome["resumed"], welcome["last_id"]) == (
                False,
                decode(seen[-1])["id"],
            )
            own_join = receive_text(dave)
            assert_event(own_join, "join", "dave")
            assert receive_text(alice) == own_join


def test_resume_with_an_id_newer_than_the_log_is_refused() -> None:
    """An id of this epoch far past the newest event, which never comes:
    after the wait for it, resumed false, no replay, then live events."""
    with room_with_history() as (server, stack, alice, seen):
        newest = parse_event_id(decode(seen[-1])["id"])
        future = EventId(newest.epoch, newest.offset + 1000)
        dave = open_json(stack, server, "dave", since=str(future))
        welcome = receive_welcome(dave)
        assert welcome["resumed"] is False
        assert parse_event_id(welcome["last_id"]).offset > newest.offset
        alice.send("after the wait")
        assert_event(receive_text(dave), "message", "alice", "after the wait")


class Traffic:
    """Text clients that send numbered messages until the block ends.

    Each sends a burst, then waits for the echo of its last message: the
    traffic never stops while the block runs, and never outruns the server.
    """

    def __init__(self, senders: Sequence[ChatClient]) -> None:
        self._stop = threading.Event()
        self._failures: list[BaseException] = []
        self._threads = [
            threading.Thread(
                target=self._send, args=(ws, f"sender{number}"), name=f"sender{number}"
            )
            for number, ws in enumerate(senders)
        ]

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()
        if exc_type is None:  # else the test's own failure says more
            assert not self._failures, self._failures

    def _send(self, ws: ChatClient, name: str) -> None:
        count = 0
        try:
            while not self._stop.is_set():
                for _ in range(SENDER_BURST):
                    ws.send(f"{name} #{count}")
                    count += 1
                echo = f"{name}: {name} #{count - 1}"
                while receive_text(ws) != echo:
                    pass
        except BaseException as exc:  # reported by the test's thread
            self._failures.append(exc)


@dataclasses.dataclass
class Resumer:
    """A JSON client that leaves and resumes, and what it got in all."""

    server: BroadcastServer
    #: Every event received, over all its connections.
    received: list[str] = dataclasses.field(default_factory=list)
    #: The newest id when it first came: it gets every event after it.
    first_last_id: str = ""
    #: Events replayed to it, over all its resumes.
    replayed: int = 0

    def connect(self, live: int) -> None:
        """Connect (resuming after the last event received, if any), read
        the replay and ``live`` events more, then leave."""
        since = {"since": self.last_id} if self.received else {}
        query = urllib.parse.urlencode(
            {"username": "resumer", "format": "json", **since}
        )
        with contextlib.closing(ChatClient.connect(url(self.server, query))) as ws:
            welcome = receive_welcome(ws)
            if self.received:
                assert welcome["resumed"] is True, welcome
                replayed = offset(welcome["last_id"]) - offset(self.last_id)
            else:
                self.first_last_id = welcome["last_id"]
                replayed = 0
            self.replayed += replayed
            self.received += [receive_text(ws) for _ in range(replayed + live)]

    @property
    def last_id(self) -> str:
        """The id of the last event received."""
        return str(decode(self.received[-1])["id"])


def test_resume_under_concurrent_traffic_has_no_gap_and_no_duplicate() -> None:
    """A client that leaves and resumes again and again while others send
    gets, over all its connections, exactly the sequence a client that never
    left got: nothing missing, nothing twice, same order."""
    rng = random.Random(6455)
    with (
        run_server(rate_limit=0, history_size=100_000) as server,
        contextlib.ExitStack() as stack,
    ):
        witness = open_json(stack, server, "witness")
        receive_welcome(witness)
        senders = [
            stack.enter_context(contextlib.closing(join(server, f"sender{number}")))
            for number in range(4)
        ]
        resumer = Resumer(server)
        with Traffic(senders):
            for _ in range(15):
                resumer.connect(live=rng.randint(1, 30))
        # Once the traffic has stopped, a last resume replays the rest.
        resumer.connect(live=0)
        newest = offset(resumer.last_id)
        seen_by_witness = [receive_text(witness)]
        while offset(decode(seen_by_witness[-1])["id"]) < newest:
            seen_by_witness.append(receive_text(witness))

    ids = [decode(frame)["id"] for frame in seen_by_witness]
    offsets = [offset(event_id) for event_id in ids]
    assert offsets == list(range(offsets[0], offsets[0] + len(offsets)))
    assert resumer.replayed > 0  # the resumes did replay, under traffic
    expected = seen_by_witness[ids.index(resumer.first_last_id) + 1 :]
    assert_same_sequence(resumer.received, expected)


# Refused handshakes.


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        pytest.param("format=xml", "unknown format", id="unknown format"),
        pytest.param("format=JSON", "unknown format", id="format in capitals"),
        pytest.param("format=", "unknown format", id="empty format"),
        pytest.param("history=6", "history must be", id="history over the size"),
        pytest.param("history=-1", "history must be", id="negative history"),
        pytest.param("history=abc", "history must be", id="history not a number"),
        pytest.param("history=1.5", "history must be", id="fractional history"),
        pytest.param("history=", "history must be", id="empty history"),
        pytest.param("history=%2B1", "history must be", id="history with a sign"),
        pytest.param("history=%201", "history must be", id="history with a space"),
        pytest.param("history=%D9%A3", "history must be", id="non-ASCII digit"),
        pytest.param("since=SINCE", "since needs format=json", id="since in text"),
        pytest.param(
            "format=text&since=SINCE", "since needs format=json", id="since format=text"
        ),
        pytest.param("format=json&since=", "not an event id", id="empty since"),
        pytest.param("format=json&since=abc", "not an event id", id="since garbage"),
        pytest.param(
            "format=json&since=EPOCH.0", "not an event id", id="since offset 0"
        ),
        pytest.param(
            "format=json&since=EPOCH.01", "not an event id", id="since leading zero"
        ),
        pytest.param(
            "format=json&since=EPOCH.-1", "not an event id", id="since negative"
        ),
        pytest.param(
            "format=json&since=EPOCH", "not an event id", id="since no offset"
        ),
        pytest.param(
            "format=json&since=EPOCH.1%20", "not an event id", id="since trailing space"
        ),
        pytest.param(
            "format=json&since=EPOCH.1234567890123456789",
            "not an event id",
            id="since offset too long",
        ),
        pytest.param(
            "format=json&since=ABCDEF012345.1", "not an event id", id="since capitals"
        ),
        pytest.param(
            "format=json&since=abcdef01234.1", "not an event id", id="since short epoch"
        ),
        pytest.param(
            "format=json&since=SINCE&since=SINCE",
            "since given more than once",
            id="since twice",
        ),
        pytest.param(
            "history=1&history=1", "history given more than once", id="history twice"
        ),
        pytest.param(
            "format=json&format=json", "format given more than once", id="format twice"
        ),
    ],
)
def test_bad_arrival_parameters_get_400(query: str, reason: str) -> None:
    """A bad format, history or since, or one given twice, is refused with
    400 and a reason; the name stays free."""
    with run_server(history_size=5) as server, contextlib.ExitStack() as stack:
        alice = open_json(stack, server, "alice")
        receive_welcome(alice)
        since = decode(receive_text(alice))["id"]
        epoch = parse_event_id(since).epoch
        query = query.replace("SINCE", since).replace("EPOCH", epoch)
        status, body = refusal(server, f"username=bob&{query}")
        assert status == 400, body
        assert reason in body, body
        bob = open_client(stack, server, "bob")
        assert receive_text(bob) == "Server: bob has joined the chat"


def test_json_in_relay_mode_gets_400() -> None:
    """Relay mode relays data as is: format=json is refused with 400."""
    with run_server(mode=Mode.RELAY) as server:
        status, body = refusal(server, "username=alice&format=json")
        assert status == 400, body
        assert "relay" in body, body
