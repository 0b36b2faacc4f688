"""How the dispatcher batches: the batch window delays flushes under load
only, never an idle server; a notice rides in its batch's fan-out; a backlog
goes out in flushes of a bounded size."""

import contextlib
import time
from collections.abc import Iterator

from broadcast_sync.config import Mode
from broadcast_sync.dispatcher import MAX_FLUSH_BYTES
from broadcast_sync.server import BroadcastServer
from tests.conftest import (
    UNIT,
    connect,
    join,
    join_all,
    receive,
    receive_text,
    run_server,
)
from tests.wsclient import ChatClient

#: Far longer than any receive timeout: a flush that waited for the window
#: would fail the test.
LONG_WINDOW = 60.0


def test_lone_messages_are_not_held_for_the_window() -> None:
    """Messages sent one at a time, each after the previous echo, go out at once."""
    with run_server(batch_window=LONG_WINDOW, rate_limit=0) as server:
        alice = join(server, "alice")
        for number in range(5):
            alice.send(f"message {number}")
            assert receive(alice, 5 * UNIT) == f"alice: message {number}"
        alice.close()


def test_relay_echo_right_after_join_is_not_held() -> None:
    """A client's first message, right after its join, is not held either."""
    with run_server(batch_window=LONG_WINDOW, mode=Mode.RELAY) as server:
        client = connect(server)
        for number in range(3):
            client.send(f"ping {number}")
            assert receive(client, 5 * UNIT) == f"ping {number}"
        client.close()


def fan_outs(server: BroadcastServer) -> float:
    """How many flushes the dispatcher has fanned out."""
    count = server.metrics.registry.get_sample_value("broadcast_fanout_seconds_count")
    return count or 0.0


@contextlib.contextmanager
def held_fan_out(server: BroadcastServer, first: ChatClient) -> Iterator[None]:
    """Hold the dispatcher in a fan-out of ``first``'s message "held" while
    the block runs: what comes meanwhile waits for one batch."""
    with server.hub.lock:
        first.send("held")
        # Time for the dispatcher to take it, and wait for the hub.
        time.sleep(0.2 * UNIT)
        yield
        # Time for the readers to hand the messages over. (The metrics
        # that count them cannot be read here: they count the clients
        # under the hub's lock.)
        time.sleep(0.2 * UNIT)


def test_a_notice_goes_out_between_its_events_in_one_fan_out() -> None:
    """A notice to one client rides in the flush it came in, between the
    events it came between. Past capacity, a thousand "server busy" notices
    had cut each flush into a thousand fan-outs."""
    with run_server(rate_limit=0) as server:
        alice, bob = join_all(server, ["alice", "bob"])
        before = fan_outs(server)
        with held_fan_out(server, alice):
            alice.send("before")
            alice.send("bell \x07")  # refused, with a notice to alice alone
            alice.send("after")
        seen = [receive_text(alice) for _ in range(4)]
        assert seen[:2] == ["alice: held", "alice: before"]
        assert seen[2].startswith("Server: message not sent")
        assert seen[3] == "alice: after"
        for expected in ("held", "before", "after"):
            assert receive_text(bob) == f"alice: {expected}"
        assert fan_outs(server) - before == 2  # "held", then the rest
        alice.close()
        bob.close()


def test_a_backlog_goes_out_in_flushes_a_client_can_hold() -> None:
    """A backlog bigger than a flush may carry goes out as several, in
    order: one write of a second's backlog of a busy room was more than a
    client's buffers hold, and dropped clients that kept up."""
    count = 3 * MAX_FLUSH_BYTES // 400
    with run_server(rate_limit=0) as server:
        alice, bob = join_all(server, ["alice", "bob"])
        before = fan_outs(server)
        with held_fan_out(server, alice):
            for number in range(count):
                alice.send(f"{number:03} " + "x" * 396)
        for client in (alice, bob):
            assert receive_text(client) == "alice: held"
            for number in range(count):
                assert receive_text(client).startswith(f"alice: {number:03} ")
        assert fan_outs(server) - before >= 4  # "held", then at least 3
        alice.close()
        bob.close()
