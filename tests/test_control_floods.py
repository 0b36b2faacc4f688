"""Pings and pongs count: a client that floods them is closed with 1008,
and the others do not notice."""

from __future__ import annotations

import logging
import threading
import time

import pytest
from wsproto.events import CloseConnection, Pong
from wsproto.frame_protocol import Opcode

from tests.conftest import UNIT, join_all, receive_text, run_server
from tests.rawclient import RawClient, frame

#: Pings per batch of the flooder: one write, many frames.
PINGS_PER_WRITE = 100


def flood_until_closed(client: RawClient, opcode: Opcode) -> float:
    """Send ``opcode`` frames as fast as the socket takes them until the
    server closes; the seconds that took."""
    data = frame(opcode, b"flood") * PINGS_PER_WRITE
    started = time.monotonic()
    try:
        while time.monotonic() - started < 10 * UNIT:
            client.send(data)
    except OSError:  # the server shut the connection: expected
        pass
    return time.monotonic() - started


@pytest.mark.parametrize("opcode", [Opcode.PING, Opcode.PONG], ids=["ping", "pong"])
def test_control_frame_flood_is_closed_with_1008(
    opcode: Opcode, caplog: pytest.LogCaptureFixture
) -> None:
    """A client flooding pings (or unasked pongs) is dropped within a
    second with 1008, while another client chats on undisturbed."""
    caplog.set_level(logging.INFO, logger="broadcast_sync")
    with run_server(close_timeout=0.5 * UNIT) as server:
        (alice,) = join_all(server, ["alice"])
        with RawClient(server.port, "flooder") as flooder:
            assert receive_text(alice) == "Server: flooder has joined the chat"
            flooding = threading.Thread(
                target=flood_until_closed, args=(flooder, opcode), name="flooder"
            )
            started = time.monotonic()
            flooding.start()
            alice.send("still here")
            arrivals = {}
            for _ in range(2):  # in either order: the flooder goes fast
                arrivals[receive_text(alice)] = time.monotonic() - started
            round_trip = arrivals["alice: still here"]
            left_after = arrivals["Server: flooder has left the chat"]
            flooding.join()
            events = flooder.events_until_close()
        alice.close()
    close = events[-1]
    assert isinstance(close, CloseConnection)
    assert close.code == 1008
    assert close.reason == "too many pings: at most 20 every 1 s"
    # The pongs it was owed are capped by the same allowance.
    assert sum(isinstance(event, Pong) for event in events) <= 20
    assert left_after < 1 * UNIT
    assert round_trip < 0.5 * UNIT
    assert "flooder (127.0.0.1:" in caplog.text
    assert "left: too many pings" in caplog.text


def test_keepalive_pings_are_answered() -> None:
    """A client pinging now and then, as keepalives do, gets every pong."""
    with run_server() as server, RawClient(server.port, "keeper") as keeper:
        for index in range(15):
            keeper.send(frame(Opcode.PING, str(index).encode()))
            event = keeper.next_event()
            while not isinstance(event, Pong):
                event = keeper.next_event()
            assert event.payload == str(index).encode()
            time.sleep(0.1)
