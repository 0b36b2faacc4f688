"""The batch window delays flushes under load only, never an idle server."""

from broadcast_sync.config import Mode
from tests.conftest import UNIT, connect, join, receive, run_server

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
