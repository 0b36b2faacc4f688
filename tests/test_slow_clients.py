"""Clients that cannot keep up, stay silent or come one too many.

A client that never reads is a :class:`RawClient` on a slow link: a small
receive buffer and a small maximum segment size. Linux sizes the server's
send buffer from the segment size, so such a client stops taking data after
some 30 KB instead of several MB, and the tests stay light.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence

import pytest
from wsproto.events import CloseConnection, Ping, TextMessage

from broadcast_sync.server import DEPARTURES_AT_ONCE
from tests.conftest import (
    UNIT,
    http_exchange,
    join,
    join_all,
    receive_text,
    run_concurrently,
    run_server,
)
from tests.rawclient import SLOW_LINK, RawClient, new_key, upgrade_request
from tests.wsclient import ChatClient

#: Characters in each message of a flood.
MESSAGE_CHARS = 4000
#: Messages each flooding client sends: 256 KB in all, many times what the
#: kernel holds for a client on the slow link.
FLOOD_MESSAGES = 32
#: How long a well-behaved client may wait for its own message to come back.
#: The write timeout of the servers below is longer: a server that waited
#: on the slow client would fail the test.
ROUND_TRIP = 2 * UNIT


def slow_options(**options: float) -> dict[str, float]:
    """Server options for floods of big messages."""
    return {
        "rate_limit": 0,
        "max_message_bytes": MESSAGE_CHARS,
        "max_message_chars": MESSAGE_CHARS,
        "close_timeout": 1 * UNIT,
        **options,
    }


def lockstep(
    ws: ChatClient, name: str, messages: Sequence[str], seen: list[str]
) -> Callable[[], None]:
    """A task that sends each message once the previous one came back.

    Each message is then fanned out on its own, one write per client, which
    is what fills a slow client's outbox. Everything received goes to ``seen``.
    """

    def send_all() -> None:
        for message in messages:
            ws.send(message)
            echo = f"{name}: {message}"
            while (received := receive_text(ws, ROUND_TRIP)) != echo:
                seen.append(received)
            seen.append(echo)

    return send_all


def read_until(ws: ChatClient, last: str, seen: list[str]) -> None:
    """Append what ``ws`` receives to ``seen``, up to and including ``last``."""
    while not seen or seen[-1] != last:
        seen.append(receive_text(ws))


def flood(name: str) -> list[str]:
    """The messages ``name`` floods the room with."""
    return [
        f"{index} {name}".ljust(MESSAGE_CHARS, ".") for index in range(FLOOD_MESSAGES)
    ]


def test_full_outbox_drops_a_client_that_never_reads(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A never-reading client is dropped once its outbox is full; others get all."""
    caplog.set_level(logging.INFO, logger="broadcast_sync")
    names = ["alice", "bob", "carol"]
    seen: dict[str, list[str]] = {name: [] for name in names}
    with run_server(**slow_options(queue_size=4)) as server:
        clients = join_all(server, names)
        with RawClient(server.port, "slow", socket_options=SLOW_LINK) as slow:
            for ws in clients:
                assert receive_text(ws) == "Server: slow has joined the chat"
            run_concurrently(
                [
                    lockstep(clients[0], "alice", flood("alice"), seen["alice"]),
                    lockstep(clients[1], "bob", flood("bob"), seen["bob"]),
                ]
            )
            clients[2].send("end")
            for ws, name in zip(clients, names, strict=True):
                read_until(ws, "carol: end", seen[name])
            slow.assert_server_closes_tcp()
        for ws in clients:
            ws.close()
    assert seen["alice"] == seen["bob"] == seen["carol"]
    assert "Server: slow has left the chat" in seen["alice"]
    for name in ("alice", "bob"):
        from_sender = [m for m in seen["alice"] if m.startswith(f"{name}: ")]
        assert from_sender == [f"{name}: {message}" for message in flood(name)]
    assert "left: too slow: 4 writes, " in caplog.text


def test_client_dropped_for_a_full_outbox_still_gets_its_close_frame() -> None:
    """A client dropped for a full outbox gets what was queued for it, then
    its close frame 1008, then the end of the stream, once it reads again
    (within the close timeout), as RFC 6455 and the README promise."""
    leave = "Server: slow has left the chat"
    seen: list[str] = []
    with run_server(**slow_options(queue_size=4, close_timeout=5 * UNIT)) as server:
        (alice,) = join_all(server, ["alice"])
        with RawClient(server.port, "slow", socket_options=SLOW_LINK) as slow:
            assert receive_text(alice) == "Server: slow has joined the chat"
            for message in flood("alice") * 4:
                alice.send(message)
                while (received := receive_text(alice, ROUND_TRIP)) != (
                    f"alice: {message}"
                ):
                    seen.append(received)
                seen.append(received)
                if leave in seen:
                    break
            assert leave in seen, "the slow client was never dropped"
            events = slow.events_until_close()
            slow.assert_server_closes_tcp()
    close = events.pop()
    assert isinstance(close, CloseConnection)
    assert (close.code, close.reason) == (1008, "too slow")
    texts = [event.data for event in events if isinstance(event, TextMessage)]
    assert len(texts) == len(events)
    assert texts[0] == "Server: slow has joined the chat"
    assert texts[1:] == seen[: len(texts) - 1]


def test_outbox_bytes_bound_drops_a_client_that_never_reads(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Past --max-queue-bytes pending, a never-reading client is dropped,
    however few writes that is; the others get everything."""
    caplog.set_level(logging.INFO, logger="broadcast_sync")
    seen: list[str] = []
    options = slow_options(queue_size=10_000, max_queue_bytes=3 * MESSAGE_CHARS)
    with run_server(**options) as server:
        (alice,) = join_all(server, ["alice"])
        with RawClient(server.port, "slow", socket_options=SLOW_LINK) as slow:
            assert receive_text(alice) == "Server: slow has joined the chat"
            lockstep(alice, "alice", flood("alice"), seen)()
            slow.assert_server_closes_tcp()
        alice.close()
    assert "Server: slow has left the chat" in seen
    from_alice = [m for m in seen if m.startswith("alice: ")]
    assert from_alice == [f"alice: {message}" for message in flood("alice")]
    (line,) = [line for line in caplog.text.splitlines() if "left: too slow" in line]
    pending = int(line.split(" writes, ")[1].split(" bytes")[0])
    assert pending <= 3 * MESSAGE_CHARS + 2 * MESSAGE_CHARS  # and one batch


def test_write_timeout_drops_a_client_that_never_reads(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A never-reading client is dropped after write_timeout; the others chat on."""
    caplog.set_level(logging.INFO, logger="broadcast_sync")
    write_timeout = 0.3 * UNIT
    seen: dict[str, list[str]] = {"alice": [], "bob": []}
    with run_server(
        **slow_options(queue_size=10_000, write_timeout=write_timeout)
    ) as server:
        alice, bob = join_all(server, ["alice", "bob"])
        with RawClient(server.port, "slow", socket_options=SLOW_LINK) as slow:
            assert receive_text(alice) == "Server: slow has joined the chat"
            assert receive_text(bob) == "Server: slow has joined the chat"
            lockstep(alice, "alice", flood("alice"), seen["alice"])()
            leave = "Server: slow has left the chat"
            if leave not in seen["alice"]:
                read_until(alice, leave, seen["alice"])
            alice.send("end")
            read_until(alice, "alice: end", seen["alice"])
            read_until(bob, "alice: end", seen["bob"])
            slow.assert_server_closes_tcp()
        alice.close()
        bob.close()
    assert seen["alice"] == seen["bob"]
    assert f"left: too slow: no write for {write_timeout:g} s" in caplog.text


def test_heartbeat_drops_a_client_that_never_answers_pings() -> None:
    """Silent clients are closed with 1011; a client answering pings stays."""
    with run_server(ping_interval=0.1 * UNIT, pong_timeout=0.4 * UNIT) as server:
        alice = join(server, "alice")
        # Two silent clients in turn: alice outlives two pong timeouts.
        for name in ("mute1", "mute2"):
            with RawClient(server.port, name) as mute:
                events = mute.events_until_close()
                assert any(isinstance(event, Ping) for event in events)
                close = events[-1]
                assert isinstance(close, CloseConnection)
                assert close.code == 1011
                mute.assert_server_closes_tcp()
            assert receive_text(alice) == f"Server: {name} has joined the chat"
            assert receive_text(alice) == f"Server: {name} has left the chat"
        alice.send("still here")
        assert receive_text(alice) == "alice: still here"
        alice.close()


def test_handshake_over_max_clients_gets_503() -> None:
    """With max_clients connected, a handshake gets 503 until one leaves."""
    with run_server(max_clients=2) as server:
        alice, bob = join_all(server, ["alice", "bob"])
        response = http_exchange(
            server.port, upgrade_request(server.port, "carol", new_key())
        )
        assert response.startswith(b"HTTP/1.1 503 "), response
        bob.close()
        assert receive_text(alice) == "Server: bob has left the chat"
        carol = join(server, "carol")
        assert receive_text(alice) == "Server: carol has joined the chat"
        carol.close()
        alice.close()


def test_close_frames_stuck_behind_backlogs_hold_up_no_departure() -> None:
    """Slow clients, as many as may end at once, are dropped, and their
    close frames wait behind backlogs they never read; meanwhile another
    client's connection drops, and its leave is announced at once, not
    after the close timeout.

    Ending sessions pass a gate, a few at a time (DEPARTURES_AT_ONCE); a
    session whose writer is still sending must not keep its place in it.
    """
    slow_names = [f"slow{index}" for index in range(DEPARTURES_AT_ONCE)]
    options = slow_options(queue_size=16, close_timeout=10 * UNIT)
    with run_server(**options) as server:
        (alice,) = join_all(server, ["alice"])
        with contextlib.ExitStack() as stack:
            bob = stack.enter_context(RawClient(server.port, "bob"))
            for name in slow_names:
                stack.enter_context(
                    RawClient(server.port, name, socket_options=SLOW_LINK)
                )
            seen: list[str] = []
            read_until(alice, f"Server: {slow_names[-1]} has joined the chat", seen)
            leaves = {f"Server: {name} has left the chat" for name in slow_names}
            for message in flood("alice") * 4:
                alice.send(message)
                read_until(alice, f"alice: {message}", seen)
                if leaves <= set(seen):
                    break
            assert leaves <= set(seen), "the slow clients were never all dropped"
            bob.sock.close()  # no close frame: its reader ends the session
            started = time.monotonic()
            read_until(alice, "Server: bob has left the chat", seen)
            assert time.monotonic() - started < ROUND_TRIP
        alice.close()
