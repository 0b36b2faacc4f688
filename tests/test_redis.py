"""The room in Redis: many nodes, one order, one set of names, and outages.

Every test runs a real redis-server (the ``redis_server`` fixture), real
servers (in-process, or a subprocess where one must die or fail to start)
and real clients on real sockets.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest

from broadcast_sync import redislog
from broadcast_sync.clientconn import HandshakeRejected
from broadcast_sync.dispatcher import EPOCH_CHANGED
from broadcast_sync.events import LoggedEvent
from broadcast_sync.nicknames import name_keys
from broadcast_sync.server import BroadcastServer
from tests.conftest import (
    UNIT,
    receive_text,
    run_concurrently,
    run_server,
    wait_until,
)
from tests.redisproc import RedisProcess
from tests.serverproc import REPOSITORY, ServerProcess
from tests.wsclient import ChatClient

#: A JSON frame, decoded.
Json = dict[str, Any]

#: How a text client is told that its message was not sent; a reason follows.
NOT_SENT = "Server: message not sent: "
#: What the Redis log logs when it loses Redis, and when it has it back.
LOST_LOG = "lost Redis at "
BACK_LOG = " is back"
#: What JSON clients get when the log was lost.
EPOCH_NOTICE = {"type": "notice", "text": EPOCH_CHANGED}


# Helpers.


@contextlib.contextmanager
def run_nodes(
    redis: RedisProcess, count: int = 2, **options: Any
) -> Iterator[list[BroadcastServer]]:
    """``count`` in-process servers in one room of ``redis``; always stopped."""
    with contextlib.ExitStack() as stack:
        yield [
            stack.enter_context(run_server(redis_url=redis.url, **options))
            for _ in range(count)
        ]


def open_client(port: int, **parameters: str | int) -> ChatClient:
    """Connect a client to ``port`` with the query ``parameters``."""
    query = urllib.parse.urlencode(parameters)
    client: ChatClient = ChatClient.connect(f"ws://127.0.0.1:{port}/ws?{query}")
    return client


def closing(stack: contextlib.ExitStack, client: ChatClient) -> ChatClient:
    """``client``, closed when ``stack`` unwinds."""
    stack.callback(client.close)
    return client


def receive_json(ws: ChatClient, timeout: float = 5 * UNIT) -> Json:
    """The next message, a JSON object."""
    decoded: Json = json.loads(receive_text(ws, timeout))
    return decoded


def join_json(
    stack: contextlib.ExitStack, port: int, name: str, **parameters: str | int
) -> tuple[ChatClient, Json]:
    """Connect a JSON client, closed with ``stack``; return it and its welcome."""
    ws = closing(stack, open_client(port, username=name, format="json", **parameters))
    welcome = receive_json(ws)
    assert welcome["type"] == "welcome", welcome
    return ws, welcome


def join_text(stack: contextlib.ExitStack, port: int, name: str) -> ChatClient:
    """Connect a text client, closed with ``stack``; read up to its join.

    Events may come first: a client gets every event after the last one its
    node delivered, and a node may not have read the newest ones yet.
    """
    ws = closing(stack, open_client(port, username=name))
    notice = f"Server: {name} has joined the chat"
    receive_until(ws, lambda message: message == notice)
    return ws


def join_in_turn(
    stack: contextlib.ExitStack, arrivals: Sequence[tuple[int, str]]
) -> list[ChatClient]:
    """Join each ``(port, name)`` in turn; every client, on whichever node,
    has read every join notice so far."""
    clients: list[ChatClient] = []
    for port, name in arrivals:
        newcomer = join_text(stack, port, name)
        for client in clients:
            assert receive_text(client) == f"Server: {name} has joined the chat"
        clients.append(newcomer)
    return clients


def receive_until(
    ws: ChatClient, done: Callable[[str], bool], timeout: float = 5 * UNIT
) -> list[str]:
    """Messages up to the first for which ``done`` holds, within ``timeout``."""
    deadline = time.monotonic() + timeout
    messages: list[str] = []
    while not messages or not done(messages[-1]):
        messages.append(receive_text(ws, max(deadline - time.monotonic(), 0)))
    return messages


def events_until(
    ws: ChatClient, done: Callable[[Json], bool], timeout: float = 5 * UNIT
) -> list[Json]:
    """JSON frames up to the first for which ``done`` holds."""
    frames = receive_until(ws, lambda text: done(json.loads(text)), timeout)
    return [json.loads(text) for text in frames]


def events_of(
    ws: ChatClient, kind: str, users: set[str], timeout: float = 5 * UNIT
) -> list[str]:
    """Receive until ``ws`` got a ``kind`` event of each of ``users``; their
    users, in order."""
    found: list[str] = []

    def done(event: Json) -> bool:
        if event["type"] == kind:
            found.append(event["user"])
        return set(found) >= users

    events_until(ws, done, timeout)
    return found


def drain(ws: ChatClient) -> list[str]:
    """The messages ``ws`` has received and not read yet."""
    messages: list[str] = []
    while (message := ws.receive(timeout=0)) is not None:
        assert isinstance(message, str)
        messages.append(message)
    return messages


def offset(event_id: str) -> int:
    """The offset in an event id."""
    return int(event_id.rpartition(".")[2])


def epoch(event_id: str) -> str:
    """The epoch in an event id."""
    return event_id.rpartition(".")[0]


def redis_log_count(caplog: pytest.LogCaptureFixture, text: str) -> int:
    """How many records of the Redis log contain ``text``."""
    return sum(
        text in record.getMessage()
        for record in caplog.records
        if record.name == redislog.__name__
    )


def wait_until_back(caplog: pytest.LogCaptureFixture, nodes: int) -> None:
    """Wait until ``nodes`` nodes logged that Redis is back."""
    wait_until(
        lambda: redis_log_count(caplog, BACK_LOG) >= nodes,
        f"{nodes} nodes back",
        10 * UNIT,
    )


def rejected_status(port: int, name: str) -> int:
    """The HTTP status of a handshake that must be refused."""
    with pytest.raises(HandshakeRejected) as refused:
        open_client(port, username=name).close()
    return refused.value.status


class Chatter:
    """A text client that says things and keeps everything it receives."""

    def __init__(self, ws: ChatClient, name: str) -> None:
        self.ws = ws
        self.name = name
        #: Every message received, in order.
        self.seen: list[str] = []

    def say(self, text: str, outcomes: dict[str, bool]) -> None:
        """Send ``text``; note in ``outcomes``, under its chat line, whether
        it was echoed (True) or not sent (False)."""
        self.ws.send(text)
        line = f"{self.name}: {text}"
        received = receive_until(
            self.ws, lambda message: message == line or message.startswith(NOT_SENT)
        )
        self.seen += received
        outcomes[line] = received[-1] == line

    def read_until(self, line: str) -> None:
        """Receive until ``line``, unless it came already."""
        if line not in self.seen:
            self.seen += receive_until(self.ws, lambda message: message == line)


def chat_for(
    duration: float, chatters: Sequence[Chatter], outcomes: dict[str, bool]
) -> None:
    """Each of ``chatters`` says something in turn, a few times a second,
    for ``duration`` seconds."""
    began = time.monotonic()
    number = 0
    paced = threading.Event()  # never set: a pause between rounds
    while time.monotonic() - began < duration:
        for chatter in chatters:
            chatter.say(f"during {number}", outcomes)
        number += 1
        paced.wait(0.2 * UNIT)


@pytest.fixture
def unreachable_redis_url() -> Iterator[str]:
    """A Redis URL whose port refuses connections: bound, never listening."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        yield f"redis://127.0.0.1:{taken.getsockname()[1]}/0"


def start_with_redis(url: str) -> subprocess.CompletedProcess[str]:
    """Run ``start --redis URL`` as a user would, until it exits."""
    return subprocess.run(
        [sys.executable, "-m", "broadcast_sync", "start", "--port=0", f"--redis={url}"],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=15 * UNIT,
        check=False,
    )


# One room over many nodes.


@pytest.mark.parametrize("history_size", [1000, 0])
def test_one_order_across_nodes(redis_server: RedisProcess, history_size: int) -> None:
    """Clients of two nodes receive one identical sequence while clients on
    both nodes send at once, whether the log keeps a history or not."""
    names = [f"user{number}" for number in range(6)]
    per_sender = 30

    def sender(ws: ChatClient, name: str) -> Callable[[], None]:
        def send_all() -> None:
            for number in range(per_sender):
                ws.send(f"{name} says {number}")

        return send_all

    with (
        run_nodes(redis_server, history_size=history_size, rate_limit=0) as nodes,
        contextlib.ExitStack() as stack,
    ):
        arrivals = [(nodes[i % 2].port, name) for i, name in enumerate(names)]
        clients = join_in_turn(stack, arrivals)
        run_concurrently(
            [sender(ws, name) for ws, name in zip(clients, names, strict=True)]
        )
        total = len(names) * per_sender
        sequences = [[receive_text(ws) for _ in range(total)] for ws in clients]

    expected = {
        f"{name}: {name} says {number}"
        for name in names
        for number in range(per_sender)
    }
    assert set(sequences[0]) == expected
    for sequence in sequences[1:]:
        assert sequence == sequences[0]
    for name in names:  # and each sender's in the order sent
        own = [line for line in sequences[0] if line.startswith(f"{name}: ")]
        assert own == [f"{name}: {name} says {n}" for n in range(per_sender)]


def test_names_unique_across_nodes(redis_server: RedisProcess) -> None:
    """Ten racing handshakes for bob over two nodes get bob, bob_1..bob_9;
    Server stays reserved; the welcome lists the users of both nodes."""
    with run_nodes(redis_server) as nodes, contextlib.ExitStack() as stack:
        servers = [join_json(stack, node.port, "Server")[1]["user"] for node in nodes]
        assert servers == ["Server_1", "Server_2"]
        watchers = [join_json(stack, node.port, "watcher")[0] for node in nodes]

        lock = threading.Lock()
        bobs: list[ChatClient] = []
        names: list[str] = []

        def arrive(node: BroadcastServer) -> Callable[[], None]:
            def handshake() -> None:
                ws = open_client(node.port, username="bob", format="json")
                with lock:
                    bobs.append(ws)
                name = receive_json(ws)["user"]
                with lock:
                    names.append(name)

            return handshake

        try:
            run_concurrently([arrive(nodes[i % 2]) for i in range(10)])
        finally:
            for ws in bobs:
                stack.callback(ws.close)

        assert sorted(names) == sorted(["bob", *(f"bob_{n}" for n in range(1, 10))])
        # Once a node has delivered every join, a newcomer there sees everybody.
        for watcher in watchers:
            events_of(watcher, "join", set(names))
        everybody = {"Server_1", "Server_2", "watcher", "watcher_1", *names}
        for node, newcomer in zip(nodes, ["carol", "dave"], strict=True):
            welcome = join_json(stack, node.port, newcomer)[1]
            assert set(welcome["users"]) == everybody | {newcomer}
            everybody.add(newcomer)

        # Redis holds the keys of each name (nicknames.name_keys), no more.
        held = redis_server.command("HKEYS", "broadcast-sync:names")
        assert isinstance(held, list)
        keys = {key.encode() for name in everybody for key in name_keys(name)}
        assert len(held) == len(keys)
        assert {key for key in held if isinstance(key, bytes)} == keys


def test_two_prefixes_are_two_rooms(redis_server: RedisProcess) -> None:
    """Two prefixes on one Redis are two rooms: separate names and messages."""
    with (
        run_server(redis_url=redis_server.url, redis_prefix="room-a") as a,
        run_server(redis_url=redis_server.url, redis_prefix="room-b") as b,
        contextlib.ExitStack() as stack,
    ):
        ann = join_text(stack, a.port, "sam")
        ben = join_text(stack, b.port, "sam")  # not sam_1: another room
        ann.send("in room a")
        ben.send("in room b")
        assert receive_text(ann) == "sam: in room a"
        assert receive_text(ben) == "sam: in room b"
        assert join_json(stack, b.port, "watcher")[1]["users"] == ["sam", "watcher"]
        assert ann.receive(timeout=0.2 * UNIT) is None  # nothing from room b


# A node dies.


def test_killed_node_users_leave_once(redis_server: RedisProcess) -> None:
    """The users of a SIGKILLed node get one leave each on the surviving
    nodes within 45 s, and their names are free again."""
    options = ["--host", "127.0.0.1", "--port", "0", "--redis", redis_server.url]
    doomed_users = {"kim", "ken"}
    with (
        run_nodes(redis_server) as (a, b),
        ServerProcess(options) as doomed,
        contextlib.ExitStack() as stack,
    ):
        watcher = join_json(stack, a.port, "watcher")[0]
        viewer = join_text(stack, b.port, "viewer")
        for name in sorted(doomed_users):
            join_text(stack, doomed.port, name)
            assert receive_text(viewer) == f"Server: {name} has joined the chat"
        events_of(watcher, "join", doomed_users)

        os.kill(doomed.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        doomed.process.wait(5 * UNIT)

        deadline = 45 * UNIT
        assert sorted(events_of(watcher, "leave", doomed_users, deadline)) == sorted(
            doomed_users
        )
        assert time.monotonic() - killed_at <= deadline
        notices = [receive_text(viewer) for _ in doomed_users]
        assert sorted(notices) == sorted(
            f"Server: {name} has left the chat" for name in doomed_users
        )
        # Both survivors look for dead nodes again meanwhile: no second leave.
        assert watcher.receive(timeout=(redislog.REFRESH_SECONDS + 1) * UNIT) is None
        assert viewer.receive(timeout=0.1 * UNIT) is None

        assert join_json(stack, a.port, "kim")[1]["user"] == "kim"
        assert join_json(stack, b.port, "ken")[1]["user"] == "ken"


# Redis goes away.


@pytest.mark.parametrize("outage", ["stopped", "frozen"])
def test_redis_outage(
    redis_server: RedisProcess,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    outage: str,
) -> None:
    """While Redis is stopped or frozen, connections stay open, handshakes get
    503 and unlogged messages get a notice and never an echo; afterwards chat
    works, nothing echoed is lost, nobody is taken for gone, and each node
    logged one line per change."""
    caplog.set_level(logging.INFO, logger="broadcast_sync")
    # Node keys that expire during the freeze: the nodes must not take each
    # other for dead when they get back.
    monkeypatch.setattr(redislog, "NODE_TTL_SECONDS", 2.0)
    monkeypatch.setattr(redislog, "REFRESH_SECONDS", 0.5)
    frozen = outage == "frozen"
    # Stopped, Redis refuses at once: still long enough for several retries.
    duration = (5.0 if frozen else 2.0) * UNIT
    outcomes: dict[str, bool] = {}
    with (
        run_nodes(redis_server, rate_limit=0) as (a, b),
        contextlib.ExitStack() as stack,
    ):
        alice_ws, bob_ws = join_in_turn(stack, [(a.port, "alice"), (b.port, "bob")])
        alice, bob = Chatter(alice_ws, "alice"), Chatter(bob_ws, "bob")
        alice.say("before", outcomes)
        bob.read_until("alice: before")

        if frozen:
            redis_server.pause()
        else:
            redis_server.stop()
        try:
            chat_for(duration, [alice, bob], outcomes)
            assert rejected_status(a.port, "newcomer") == 503
            assert rejected_status(b.port, "newcomer") == 503
        finally:
            if frozen:
                redis_server.resume()
            else:
                redis_server.start()

        wait_until_back(caplog, 2)
        alice.say("after", outcomes)
        bob.say("after", outcomes)
        alice.read_until("bob: after")
        bob.read_until("alice: after")
        # Her name is still hers, even in a Redis that came back empty.
        assert join_json(stack, b.port, "alice")[1]["user"] == "alice_1"
        historian = closing(stack, open_client(b.port, username="hi", history=100))
        history = receive_until(
            historian, lambda line: line == "Server: hi has joined the chat"
        )

    during = [line for line in outcomes if " during " in line]
    assert during
    assert not any(outcomes[line] for line in during)
    assert outcomes["alice: before"]
    assert outcomes["alice: after"]
    assert outcomes["bob: after"]
    echoed = [line for line, ok in outcomes.items() if ok]
    for chatter in (alice, bob):
        assert not set(during) & set(chatter.seen), chatter.name
        assert [line for line in chatter.seen if line in echoed] == echoed
        assert not [line for line in chatter.seen if line.endswith(" left the chat")]
    # The same data, or a new log from the first event after the outage.
    kept = echoed if frozen else ["alice: after", "bob: after"]
    assert [line for line in history if line in outcomes] == kept
    assert redis_log_count(caplog, LOST_LOG) == 2
    assert redis_log_count(caplog, BACK_LOG) == 2


def test_partitioned_node_catches_up(
    redis_server: RedisProcess, caplog: pytest.LogCaptureFixture
) -> None:
    """A node cut off from Redis while another node's clients chat gets every
    message logged meanwhile when it is back, more than the history holds,
    and logs one line when cut off and one when back."""
    caplog.set_level(logging.INFO, logger="broadcast_sync")
    # Node A reaches Redis as a user of its own, which can be shut out.
    redis_server.command("ACL", "SETUSER", "a", "on", ">a", "~*", "&*", "+@all")
    url_a = redis_server.url.replace("redis://", "redis://a:a@")
    options = {"history_size": 3, "rate_limit": 0}
    outcomes: dict[str, bool] = {}
    with (
        run_server(redis_url=url_a, **options) as a,
        run_server(redis_url=redis_server.url, **options) as b,
        contextlib.ExitStack() as stack,
    ):
        alice_ws, bob_ws = join_in_turn(stack, [(a.port, "alice"), (b.port, "bob")])
        alice, bob = Chatter(alice_ws, "alice"), Chatter(bob_ws, "bob")

        redis_server.command("ACL", "SETUSER", "a", "off")
        redis_server.command("CLIENT", "KILL", "USER", "a")
        wait_until(lambda: redis_log_count(caplog, LOST_LOG) == 1, "cut off", 5 * UNIT)
        alice.say("cut off", outcomes)
        assert rejected_status(a.port, "newcomer") == 503
        for number in range(10):
            bob.say(f"meanwhile {number}", outcomes)
        redis_server.command("ACL", "SETUSER", "a", "on")

        wait_until_back(caplog, 1)
        alice.say("back", outcomes)
        bob.read_until("alice: back")

    meanwhile = [f"bob: meanwhile {number}" for number in range(10)]
    assert outcomes == {
        "alice: cut off": False,
        **dict.fromkeys(meanwhile, True),
        "alice: back": True,
    }
    for chatter in (alice, bob):
        assert [line for line in chatter.seen if line in outcomes] == [
            *meanwhile,
            "alice: back",
        ]
    assert redis_log_count(caplog, LOST_LOG) == 1
    assert redis_log_count(caplog, BACK_LOG) == 1


def test_redis_lost_its_data(
    redis_server: RedisProcess, caplog: pytest.LogCaptureFixture
) -> None:
    """When Redis comes back empty, is flushed, or comes back from an older
    copy, JSON clients get a notice, old ids resume no more, and chat goes
    on, nothing lost in the new log."""
    caplog.set_level(logging.INFO, logger="broadcast_sync")
    # Short: the clients that leave at the end spoke in a lost log (see
    # test_leave_after_the_log_was_lost_is_prompt).
    close_timeout = 0.5 * UNIT
    with (
        run_nodes(redis_server, close_timeout=close_timeout, rate_limit=0) as (a, b),
        contextlib.ExitStack() as stack,
    ):
        jo = join_json(stack, a.port, "jo")[0]
        jay = join_json(stack, b.port, "jay")[0]
        events_of(jo, "join", {"jay"})

        def say(text: str) -> list[list[Json]]:
            """jo says ``text``: what each of jo and jay got up to it."""
            jo.send(text)
            return [
                events_until(ws, lambda event: event.get("text") == text)
                for ws in (jo, jay)
            ]

        old_id = say("one")[0][-1]["id"]
        redis_server.restart()  # no persistence: empty
        for ws in (jo, jay):
            assert receive_json(ws, 10 * UNIT) == EPOCH_NOTICE
        wait_until_back(caplog, 2)
        for events in say("two"):
            assert epoch(events[-1]["id"]) != epoch(old_id)
        assert join_json(stack, b.port, "kay", since=old_id)[1]["resumed"] is False
        events_of(jo, "join", {"kay"})  # logged before the flush, not after

        # Flushed under the nodes' feet: the first message of the new log,
        # logged before the nodes see that the log changed, reaches everyone.
        assert redis_server.command("FLUSHALL") == "OK"
        for events in say("three"):
            assert EPOCH_NOTICE in events
            assert offset(events[-1]["id"]) == 1

        # As if restored from a copy that missed the last two events: their
        # offsets must not name new events.
        say("four")
        old_id = say("five")[0][-1]["id"]
        assert offset(old_id) == 3
        assert redis_server.command("HSET", "broadcast-sync:meta", "offset", "1") == 0
        assert redis_server.command("XDEL", "broadcast-sync:log", "2-0", "3-0") == 2
        for ws in (jo, jay):
            assert receive_json(ws) == EPOCH_NOTICE
        for events in say("six"):
            assert epoch(events[-1]["id"]) != epoch(old_id)
        assert join_json(stack, b.port, "lou", since=old_id)[1]["resumed"] is False


def test_leave_after_the_log_was_lost_is_prompt(redis_server: RedisProcess) -> None:
    """A client that spoke before Redis lost its data gets the server's close
    frame at once when it leaves."""
    with (
        run_server(redis_url=redis_server.url, close_timeout=5 * UNIT) as node,
        contextlib.ExitStack() as stack,
    ):
        jo = join_json(stack, node.port, "jo")[0]
        jo.send("one")
        events_until(jo, lambda event: event.get("text") == "one")
        assert redis_server.command("FLUSHALL") == "OK"
        assert receive_json(jo) == EPOCH_NOTICE
        began = time.monotonic()
        jo.close()
        assert time.monotonic() - began < 2.5 * UNIT  # half the close timeout


def test_users_are_back_online_after_redis_lost_its_data(
    redis_server: RedisProcess, caplog: pytest.LogCaptureFixture
) -> None:
    """After Redis came back empty, a node's users are online again: a
    newcomer's welcome lists them, and their leaves are logged."""
    caplog.set_level(logging.INFO, logger="broadcast_sync")
    with (
        run_nodes(redis_server, rate_limit=0) as (a, b),
        contextlib.ExitStack() as stack,
    ):
        ann = join_json(stack, a.port, "ann")[0]
        ben = join_text(stack, b.port, "ben")
        events_of(ann, "join", {"ben"})
        redis_server.restart()  # no persistence: empty
        assert receive_json(ann, 10 * UNIT) == EPOCH_NOTICE
        wait_until_back(caplog, 2)
        cat = join_json(stack, a.port, "cat")[1]
        assert {"ann", "cat"} <= set(cat["users"])
        ann.close()
        receive_until(ben, lambda line: line == "Server: ann has left the chat")


# Startup.


def test_unreachable_redis_at_startup_exits_1(unreachable_redis_url: str) -> None:
    """start with an unreachable Redis says so on stderr and exits 1."""
    result = start_with_redis(unreachable_redis_url)
    assert result.returncode == 1
    assert result.stdout == ""
    where = unreachable_redis_url.removeprefix("redis://").removesuffix("/0")
    assert result.stderr.splitlines()[-1].startswith(
        f"broadcast-server: cannot reach Redis at {where}: "
    )
    assert "Traceback" not in result.stderr


def test_unreachable_redis_at_startup_is_one_line(unreachable_redis_url: str) -> None:
    """start with an unreachable Redis prints exactly one line on stderr."""
    result = start_with_redis(unreachable_redis_url)
    assert len(result.stderr.splitlines()) == 1, result.stderr


# History and resume.


def test_history_and_resume(redis_server: RedisProcess) -> None:
    """history=K and since=ID work across nodes as in memory mode: the last
    K events, a replay after ID when all of it is kept, else resumed false."""
    size = 5
    with (
        run_nodes(redis_server, history_size=size, rate_limit=0) as (a, b),
        contextlib.ExitStack() as stack,
    ):
        ann = join_json(stack, a.port, "ann")[0]
        bea = join_json(stack, b.port, "bea")[0]
        events_of(ann, "join", {"bea"})
        for number in range(8):
            ann.send(f"m{number}")
        # The ids as ann, on node A, got them.
        sent = events_until(ann, lambda event: event.get("text") == "m7")
        ids = [event["id"] for event in sent if event["type"] == "message"]
        events_until(bea, lambda event: event.get("text") == "m7")
        #: The newest events, in order, as bea on node B got them.
        log = list(ids)

        def arrive(name: str, **parameters: str | int) -> tuple[Json, list[str]]:
            """A JSON client on node B: its welcome, and the ids before its join."""
            ws, welcome = join_json(stack, b.port, name, **parameters)
            events = events_until(ws, lambda event: event.get("user") == name)
            log.append(events[-1]["id"])
            events_until(bea, lambda event: event.get("user") == name)
            return welcome, [event["id"] for event in events[:-1]]

        texter = closing(stack, open_client(b.port, username="tex", history=3))
        assert receive_until(texter, lambda line: line.startswith("Server: ")) == [
            "ann: m5",
            "ann: m6",
            "ann: m7",
            "Server: tex has joined the chat",
        ]
        log.append(
            events_until(bea, lambda event: event.get("user") == "tex")[-1]["id"]
        )

        welcome, replay = arrive("newest", since=log[-1])
        assert (welcome["resumed"], replay) == (True, [])
        since = ids[-2]  # from node A
        expected = log[log.index(since) + 1 :]
        welcome, replay = arrive("older", since=since)
        assert (welcome["resumed"], replay) == (True, expected)
        # The oldest id that surely can resume, then the newest that cannot.
        # (The id before the first can, unless the newcomer's own join, which
        # races with its arrival, is logged first: as in memory mode.)
        expected = log[-size + 1 :]
        welcome, replay = arrive("edge", since=log[-size])
        assert (welcome["resumed"], replay) == (True, expected)
        welcome, replay = arrive("trimmed", since=log[-size - 2])
        assert (welcome["resumed"], replay) == (False, [])


def test_resume_racing_with_traffic(redis_server: RedisProcess) -> None:
    """Resumes on one node while clients of both nodes send: a whole replay
    then every live event, or resumed false and every live event; no gap."""
    size = 20
    with (
        run_nodes(redis_server, history_size=size, rate_limit=0) as nodes,
        contextlib.ExitStack() as stack,
    ):
        watcher = join_json(stack, nodes[1].port, "watcher")[0]
        talkers = [
            join_json(stack, nodes[number % 2].port, f"talker{number}")[0]
            for number in range(3)
        ]
        stop = threading.Event()
        errors: list[BaseException] = []

        def talk(ws: ChatClient) -> Callable[[], None]:
            def send() -> None:
                number = 0
                while not stop.wait(0.02 * UNIT):
                    ws.send(f"tick {number}")
                    number += 1

            return send

        def traffic() -> None:
            try:
                run_concurrently([talk(ws) for ws in talkers])
            except BaseException as exc:
                errors.append(exc)
                raise

        talking = threading.Thread(target=traffic)
        talking.start()
        results: list[tuple[int, bool]] = []
        try:
            seen = [e["id"] for e in events_until(watcher, lambda e: "text" in e)]
            for back in [1, 3, 10, 19, 21, 40, 1, 2]:

                def caught_up(back: int = back) -> bool:
                    seen.extend(json.loads(text)["id"] for text in drain(watcher))
                    return len(seen) > back

                wait_until(caught_up, "enough traffic", 5 * UNIT)
                since = seen[-1 - back]
                ws = open_client(
                    nodes[1].port, username="r", format="json", since=since
                )
                try:
                    welcome = receive_json(ws)
                    received = [receive_json(ws)["id"] for _ in range(2 * size)]
                finally:
                    ws.close()
                start = since if welcome["resumed"] else welcome["last_id"]
                assert [offset(i) for i in received] == list(
                    range(offset(start) + 1, offset(start) + 1 + 2 * size)
                ), (back, welcome)
                results.append((back, welcome["resumed"]))
        finally:
            stop.set()
            talking.join()
    assert not errors
    assert all(not resumed for back, resumed in results if back > size), results
    assert any(resumed for back, resumed in results if back <= 2), results


def test_resume_on_a_node_lagging_behind(
    redis_server: RedisProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A resume on node B with the id of an event that node B has not read
    yet (its reader lags) still resumes."""
    with run_nodes(redis_server) as (a, b), contextlib.ExitStack() as stack:
        ann = join_json(stack, a.port, "ann")[0]
        events_of(ann, "join", {"ann"})
        deliver = b.dispatcher.deliver
        caught_up = threading.Event()

        def deliver_late(events: Sequence[LoggedEvent]) -> None:
            caught_up.wait(2 * UNIT)
            deliver(events)

        monkeypatch.setattr(b.dispatcher, "deliver", deliver_late)
        # Node B catches up while cy's resume waits for it.
        catch_up = threading.Timer(0.5 * UNIT, caught_up.set)
        try:
            ann.send("hello")
            hello = events_until(ann, lambda event: event.get("text") == "hello")
            catch_up.start()
            welcome = join_json(stack, b.port, "cy", since=hello[-1]["id"])[1]
        finally:
            caught_up.set()
            catch_up.cancel()
            catch_up.join()
        assert welcome["resumed"] is True
