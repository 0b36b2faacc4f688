"""Per-address limits: no address can take the server.

Loopback gives every test more than one address: a client bound to
127.0.0.2 is another address to the server on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator

import pytest

from broadcast_sync.admission import Admission, address_group
from broadcast_sync.proxies import parse_network
from tests.conftest import UNIT, run_server, wait_until
from tests.rawclient import RawClient, new_key, upgrade_request

OTHER_ADDRESS = "127.0.0.2"


def handshake_status(
    port: int, *, source: str = "", headers: str = ""
) -> tuple[int, bytes]:
    """Open a connection from ``source``, ask for the WebSocket with extra
    ``headers``; the status and the body of the answer."""
    request = upgrade_request(port, "someone", new_key())
    if headers:
        request = request.replace(b"\r\n\r\n", f"\r\n{headers}\r\n\r\n".encode())
    with socket.socket() as sock:
        sock.settimeout(5 * UNIT)
        if source:
            sock.bind((source, 0))
        sock.connect(("127.0.0.1", port))
        sock.sendall(request)
        answer = b""
        while b"\r\n\r\n" not in answer and (chunk := sock.recv(4096)):
            answer += chunk
        if not answer.startswith(b"HTTP/1.1 101"):
            while chunk := sock.recv(4096):
                answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


# Address groups


@pytest.mark.parametrize(
    ("address", "group"),
    [
        ("203.0.113.7", "203.0.113.7"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff::1", "2001:db8:1:2::/64"),
        ("::ffff:203.0.113.7", "203.0.113.7"),
    ],
)
def test_ipv6_addresses_count_by_their_64(address: str, group: str) -> None:
    """An IPv6 client may pick any address of its /64: they count as one."""
    assert address_group(address) == group


def test_admission_counts_connections_and_gives_them_back() -> None:
    """Past the maximum an address is refused, with why, until one ends."""
    admission = Admission(max_connections=2, handshake_rate=0)
    assert admission.admit("a") is None
    assert admission.admit("a") is None
    assert admission.admit("a") == "too many connections from your address (2)"
    assert admission.admit("b") is None
    admission.release("a")
    assert admission.admit("a") is None


def test_admission_limits_new_connections_per_second() -> None:
    """A burst of the rate passes; more in the same second are refused."""
    admission = Admission(max_connections=0, handshake_rate=3)
    verdicts = [admission.admit("a") for _ in range(4)]
    assert verdicts[:3] == [None, None, None]
    assert verdicts[3] == (
        "too many new connections from your address (at most 3 a second)"
    )
    assert admission.admit("b") is None


# Through a real server


def test_one_address_at_its_maximum_leaves_room_for_others() -> None:
    """An address holding its maximum gets 429 for one more; another address
    still joins, and at once."""
    with run_server(max_clients_per_ip=3, handshake_rate=0) as server:
        clients = [RawClient(server.port, f"user{index}") for index in range(3)]
        try:
            status, body = handshake_status(server.port)
            assert status == 429
            assert body == b"too many connections from your address (3)\n"
            started = time.monotonic()
            with RawClient(server.port, "other", source=OTHER_ADDRESS) as other:
                assert other.receive_text() == "Server: other has joined the chat"
                assert time.monotonic() - started < 0.1 * UNIT
        finally:
            for client in clients:
                client.sock.close()


def test_a_burst_from_one_address_does_not_starve_others() -> None:
    """Past its handshake rate an address gets 429; another does not."""
    with run_server(handshake_rate=3) as server:
        statuses = [handshake_status(server.port)[0] for _ in range(4)]
        assert statuses == [101, 101, 101, 429]
        assert handshake_status(server.port, source=OTHER_ADDRESS)[0] == 101


def test_an_address_gets_its_place_back_when_a_client_leaves() -> None:
    """The count follows connections: one closed frees its place."""
    with run_server(max_clients_per_ip=1, handshake_rate=0) as server:
        with RawClient(server.port, "first"):
            assert handshake_status(server.port)[0] == 429

        wait_until(
            lambda: handshake_status(server.port)[0] == 101, "the place given back"
        )


@contextlib.contextmanager
def held_connection(port: int, headers: str) -> Iterator[socket.socket]:
    """A WebSocket connection with extra ``headers``, held open."""
    request = upgrade_request(port, "held", new_key())
    with socket.create_connection(("127.0.0.1", port), timeout=5 * UNIT) as sock:
        sock.sendall(request.replace(b"\r\n\r\n", f"\r\n{headers}\r\n\r\n".encode()))
        assert sock.recv(4096).startswith(b"HTTP/1.1 101")
        yield sock


def test_behind_a_trusted_proxy_the_forwarded_address_counts() -> None:
    """Clients behind a trusted proxy count by their own address; the proxy
    itself is not limited."""
    proxy = (parse_network("127.0.0.0/8"),)
    first, second = "X-Forwarded-For: 203.0.113.5", "X-Forwarded-For: 203.0.113.6"
    with (
        run_server(trusted_proxies=proxy, max_clients_per_ip=1) as server,
        RawClient(server.port, "own"),  # the proxy's own connection
        held_connection(server.port, first),
    ):
        assert handshake_status(server.port, headers=first)[0] == 429
        assert handshake_status(server.port, headers=second)[0] == 101


def test_limits_off() -> None:
    """0 turns both limits off."""
    with run_server(max_clients_per_ip=0, handshake_rate=0) as server:
        clients = [RawClient(server.port, f"user{index}") for index in range(30)]
        for client in clients:
            client.sock.close()
        with RawClient(server.port, "last") as last:
            assert last.receive_text() == "Server: last has joined the chat"
