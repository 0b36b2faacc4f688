"""Health, readiness and metrics over HTTP: real servers, real sockets.

The contract: ``/healthz``, ``/readyz`` and ``/metrics`` answer only
addresses in ``metrics_allow`` (the peer's address, loopback by default)
and 403 others; ``/readyz`` says why the server takes no clients; and the
counters of ``/metrics`` move with what clients do, one registry per server.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import h11
import prometheus_client
import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from wsproto.frame_protocol import Opcode

from broadcast_sync.config import ServerConfig
from broadcast_sync.metrics import Disconnect
from broadcast_sync.server import BroadcastServer
from tests.conftest import (
    UNIT,
    http_exchange,
    join,
    join_all,
    receive_text,
    run_server,
    wait_until,
)
from tests.rawclient import SLOW_LINK, RawClient, frame, text
from tests.redisproc import RedisProcess
from tests.test_handshake import Response, parse_response, upgrade_request
from tests.test_web_http import fetch, get, page_request

#: Labels of one sample, as the parser gives them.
Labels = Mapping[str, str]

#: The operators' resources, restricted to ``metrics_allow``.
PROBE_PATHS = ("/healthz", "/readyz", "/metrics")
#: What the probes answer in, besides /metrics.
PLAIN_TEXT = "text/plain; charset=utf-8"
#: The server's own families and their types.
BROADCAST_FAMILIES = {
    "broadcast_clients": "gauge",
    "broadcast_handshakes": "counter",
    "broadcast_messages_received": "counter",
    "broadcast_events": "counter",
    "broadcast_deliveries": "counter",
    "broadcast_sent_bytes": "counter",
    "broadcast_disconnects": "counter",
    "broadcast_rate_limited": "counter",
    "broadcast_fanout_seconds": "histogram",
    "broadcast_dispatch_lag_seconds": "gauge",
}
#: The samples the tests read.
CLIENTS = "broadcast_clients"
HANDSHAKES = "broadcast_handshakes_total"
RECEIVED = "broadcast_messages_received_total"
EVENTS = "broadcast_events_total"
DELIVERIES = "broadcast_deliveries_total"
SENT_BYTES = "broadcast_sent_bytes_total"
DISCONNECTS = "broadcast_disconnects_total"
RATE_LIMITED = "broadcast_rate_limited_total"
FANOUT_COUNT = "broadcast_fanout_seconds_count"
LAG = "broadcast_dispatch_lag_seconds"
REDIS_UP = "broadcast_redis_up"
#: How long a counter may take to catch up with what a client saw.
SETTLE = 2 * UNIT
#: Characters of each message of a flood.
FLOOD_CHARS = 4000
#: A network that holds no address of this host.
ELSEWHERE = (ipaddress.ip_network("10.0.0.0/8"),)


# Helpers.


def families_in(exposition: str) -> list[Metric]:
    """The metric families of an exposition in Prometheus's text format."""
    return list(text_string_to_metric_families(exposition))


def scrape(port: int) -> list[Metric]:
    """GET /metrics from 127.0.0.1 and parse it."""
    response = get(port, "/metrics")
    assert response.status == 200, response
    return families_in(response.text)


def value_in(families: Iterable[Metric], name: str, labels: Labels) -> float:
    """The value of sample ``name`` with exactly ``labels``.

    A labelled counter has no sample until it is first counted: that is 0.
    A name that no family starts with is a typo, and fails.
    """
    families = list(families)
    assert any(name.startswith(family.name) for family in families), name
    for family in families:
        for each in family.samples:
            if each.name == name and each.labels == labels:
                return float(each.value)
    return 0.0


def sample(port: int, name: str, labels: Labels | None = None) -> float:
    """The value of sample ``name`` with exactly ``labels``, scraped now."""
    return value_in(scrape(port), name, labels or {})


def by_label(families: Iterable[Metric], name: str, label: str) -> dict[str, float]:
    """Every sample ``name`` in ``families``, by the value of its ``label``."""
    return {
        each.labels[label]: float(each.value)
        for family in families
        for each in family.samples
        if each.name == name
    }


def in_process(server: BroadcastServer) -> list[Metric]:
    """``server``'s metrics read from its registry, not over HTTP."""
    return families_in(server.metrics.exposition().decode())


def delta(after: Mapping[str, float], before: Mapping[str, float]) -> dict[str, float]:
    """The changes from ``before`` to ``after``, leaving out the unchanged."""
    keys = set(after) | set(before)
    changes = {key: after.get(key, 0.0) - before.get(key, 0.0) for key in keys}
    return {key: change for key, change in changes.items() if change}


def settle(
    read: Callable[[], Any], expected: Any, what: str, timeout: float = SETTLE
) -> None:
    """Wait until ``read()`` equals ``expected``; fail with its last value."""
    seen: list[Any] = []

    def reached() -> bool:
        seen.append(read())
        return bool(seen[-1] == expected)

    with contextlib.suppress(AssertionError):
        wait_until(reached, what, timeout)
    assert seen[-1] == expected, f"{what}: {seen[-1]!r}, expected {expected!r}"


def settle_sample(port: int, name: str, labels: Labels | None, expected: float) -> None:
    """Wait until sample ``name`` with ``labels`` is ``expected``."""
    settle(lambda: sample(port, name, labels), expected, f"{name}{labels or ''}")


def readiness(port: int) -> tuple[int, bytes]:
    """The status and body of GET /readyz."""
    response = get(port, "/readyz")
    return response.status, response.body


def exchange_from(source: str, port: int, request: bytes) -> Response:
    """Send ``request`` to 127.0.0.1 from address ``source``; parse the answer."""
    with socket.create_connection(
        ("127.0.0.1", port), timeout=5 * UNIT, source_address=(source, 0)
    ) as sock:
        assert sock.getsockname()[0] == source
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return parse_response(b"".join(chunks))


def assert_probe_headers(response: Response, content_type: str) -> None:
    """``response`` is a 200 of a probe: fresh, typed, sized, closing."""
    assert (response.status, response.phrase) == (200, "OK")
    headers = response.headers
    assert headers["content-type"] == content_type
    assert headers["cache-control"] == "no-store"
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["connection"] == "close"
    assert int(headers["content-length"]) > 0


@contextlib.contextmanager
def stopping_server(close_timeout: float) -> Iterator[BroadcastServer]:
    """A server stopping in another thread, held up by a client that never
    answers its close frame: until the block ends, or ``close_timeout``."""
    config = ServerConfig(host="127.0.0.1", port=0, close_timeout=close_timeout)
    server = BroadcastServer(config)
    server.start()
    stopper = threading.Thread(target=server.stop, name="test stopper")
    try:
        with RawClient(server.port, "mute") as mute:
            assert mute.receive_text() == "Server: mute has joined the chat"
            stopper.start()
            wait_until(lambda: server.stopping, "stopping")
            yield server
    finally:
        if stopper.ident is None:
            server.stop()
        else:
            stopper.join()


# The probes.


@pytest.mark.parametrize(
    ("path", "body"), [("/healthz", b"ok\n"), ("/readyz", b"ready\n")]
)
def test_probe_get(server: BroadcastServer, path: str, body: bytes) -> None:
    """GET of a probe is 200 with its one-line answer, plain text, never cached."""
    response = get(server.port, path)
    assert_probe_headers(response, PLAIN_TEXT)
    assert response.body == body
    assert int(response.headers["content-length"]) == len(body)


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/healthz", PLAIN_TEXT),
        ("/readyz", PLAIN_TEXT),
        ("/metrics", prometheus_client.CONTENT_TYPE_LATEST),
    ],
)
def test_probe_head(server: BroadcastServer, path: str, content_type: str) -> None:
    """HEAD of a probe has the headers of GET and no body."""
    response = fetch(server.port, page_request(path, method="HEAD"))
    assert_probe_headers(response, content_type)
    assert response.body == b""


def test_readyz_is_503_while_full() -> None:
    """/readyz is 503 ``full: 1 clients`` with max_clients=1 taken, 200 after."""
    with run_server(max_clients=1) as server:
        alice = join(server, "alice")
        response = get(server.port, "/readyz")
        assert (response.status, response.text) == (503, "full: 1 clients\n")
        assert response.headers["content-type"] == PLAIN_TEXT
        assert response.headers["cache-control"] == "no-store"
        alice.close()
        assert readiness(server.port) == (200, b"ready\n")


def test_unready_while_stopping() -> None:
    """While stop() waits for a client, the readiness resource says
    ``shutting down`` (asked in-process: the acceptor is gone by then)."""
    with stopping_server(close_timeout=1 * UNIT) as server:
        assert server.unready() == "shutting down"
        request = h11.Request(method="GET", target="/readyz", headers=[("Host", "x")])
        response = server.routes.respond(request, "127.0.0.1")
        assert (response.status, response.body) == (503, b"shutting down\n")


def test_readyz_answers_503_while_stopping() -> None:
    """While stop() waits for a client, /readyz still answers: 503
    ``shutting down``."""
    with stopping_server(close_timeout=1 * UNIT) as server:
        answer = http_exchange(server.port, page_request("/readyz"), 0.5 * UNIT)
        response = parse_response(answer)
        assert (response.status, response.text) == (503, "shutting down\n")


def test_a_new_client_is_refused_with_503_while_stopping() -> None:
    """While stop() waits for a client, a new WebSocket client is answered
    at once: 503 ``server shutting down``, not a connection left hanging."""
    with stopping_server(close_timeout=1 * UNIT) as server:
        answer = http_exchange(server.port, upgrade_request(), 0.5 * UNIT)
        response = parse_response(answer)
        assert (response.status, response.text) == (503, "server shutting down\n")


def test_readyz_and_redis_up_follow_redis(redis_server: RedisProcess) -> None:
    """With Redis, /readyz is 503 ``Redis cannot be reached`` and
    broadcast_redis_up 0 while it is stopped; both recover once it is back."""
    with run_server(redis_url=redis_server.url) as server:
        port = server.port
        assert readiness(port) == (200, b"ready\n")
        assert sample(port, REDIS_UP) == 1
        redis_server.stop()
        try:
            settle(
                lambda: readiness(port),
                (503, b"Redis cannot be reached\n"),
                "unready without Redis",
            )
            assert sample(port, REDIS_UP) == 0
        finally:
            redis_server.start()
        settle(lambda: readiness(port), (200, b"ready\n"), "ready again", 5 * UNIT)
        assert sample(port, REDIS_UP) == 1


# Access.


@pytest.mark.parametrize("path", PROBE_PATHS)
def test_probes_refuse_addresses_outside_metrics_allow(path: str) -> None:
    """A probe asked from outside metrics_allow is 403 with the reason; the
    chat page stays public."""
    with run_server(metrics_allow=ELSEWHERE) as server:
        response = get(server.port, path)
        assert (response.status, response.phrase) == (403, "Forbidden")
        assert response.text == f"{path} is not served to 127.0.0.1\n"
        assert response.headers["content-type"] == PLAIN_TEXT
        assert get(server.port, "/").status == 200


@pytest.mark.parametrize(("source", "status"), [("127.0.0.2", 200), ("127.0.0.1", 403)])
@pytest.mark.parametrize("path", PROBE_PATHS)
def test_access_follows_the_peer_address(path: str, source: str, status: int) -> None:
    """With metrics_allow=127.0.0.2/32, a request from 127.0.0.2 is served and
    one from 127.0.0.1 is refused: the check uses the peer's address."""
    allowed = (ipaddress.ip_network("127.0.0.2/32"),)
    with run_server(metrics_allow=allowed) as server:
        response = exchange_from(source, server.port, page_request(path))
        assert response.status == status, response


# The metrics page.


def test_metrics_page_is_prometheus_text(server: BroadcastServer) -> None:
    """/metrics is Prometheus's text format: the process collectors' families
    and every broadcast family with its type, and no broadcast_redis_up
    without Redis."""
    response = get(server.port, "/metrics")
    assert_probe_headers(response, prometheus_client.CONTENT_TYPE_LATEST)
    types = {family.name: family.type for family in families_in(response.text)}
    assert {"process_cpu_seconds", "process_resident_memory_bytes"} & set(types)
    assert "python_info" in types
    assert "python_gc_objects_collected" in types
    assert {name: types.get(name) for name in BROADCAST_FAMILIES} == (
        BROADCAST_FAMILIES
    )
    assert REDIS_UP not in types


def test_redis_up_is_1_with_redis(redis_server: RedisProcess) -> None:
    """broadcast_redis_up is a gauge, 1 while Redis answers."""
    with run_server(redis_url=redis_server.url) as server:
        types = {family.name: family.type for family in scrape(server.port)}
        assert types[REDIS_UP] == "gauge"
        assert sample(server.port, REDIS_UP) == 1


# Handshakes.


def two_joins(server: BroadcastServer) -> None:
    """Two clients join, then leave."""
    for ws in join_all(server, ["alice", "bob"]):
        ws.close()


def bad_version(server: BroadcastServer) -> None:
    """A handshake of the wrong WebSocket version: 400."""
    request = upgrade_request(headers={"Sec-WebSocket-Version": "12"})
    assert parse_response(http_exchange(server.port, request)).status == 400


def silence(server: BroadcastServer) -> None:
    """A connection that sends nothing: 408 after the handshake timeout."""
    assert parse_response(http_exchange(server.port, b"")).status == 408


def one_too_many(server: BroadcastServer) -> None:
    """A handshake while the one place is taken: 503."""
    alice = join(server, "alice")
    request = upgrade_request("/ws?username=bob")
    assert parse_response(http_exchange(server.port, request)).status == 503
    alice.close()


def plain_get(path: str, status: int) -> Callable[[BroadcastServer], None]:
    """A plain GET of ``path``, answered ``status``."""

    def request(server: BroadcastServer) -> None:
        assert get(server.port, path).status == status

    return request


@pytest.mark.parametrize(
    ("options", "provoke", "expected"),
    [
        pytest.param({}, two_joins, {"101": 2}, id="join"),
        pytest.param({}, bad_version, {"400": 1}, id="bad"),
        pytest.param(
            {"handshake_timeout": 0.2 * UNIT}, silence, {"408": 1}, id="silent"
        ),
        pytest.param({"max_clients": 1}, one_too_many, {"101": 1, "503": 1}, id="full"),
        pytest.param({}, plain_get("/", 200), {}, id="page"),
        pytest.param({}, plain_get("/nope", 404), {}, id="other-path"),
        pytest.param({}, plain_get("/healthz", 200), {}, id="probe"),
        pytest.param(
            {"metrics_allow": ELSEWHERE},
            plain_get("/healthz", 403),
            {},
            id="forbidden-probe",
        ),
    ],
)
def test_handshakes_are_counted_by_status(
    options: dict[str, Any],
    provoke: Callable[[BroadcastServer], None],
    expected: dict[str, float],
) -> None:
    """broadcast_handshakes_total counts requests on /ws by the status
    answered; plain requests are not handshakes."""
    with run_server(**options) as server:
        # From the registry: the case of 403 may not read /metrics.
        before = by_label(in_process(server), HANDSHAKES, "status")
        provoke(server)
        settle(
            lambda: delta(by_label(in_process(server), HANDSHAKES, "status"), before),
            expected,
            "handshakes counted",
        )


# The chat's counters.


def test_chat_counters() -> None:
    """Joins, three messages to two clients and a leave move clients,
    received, events, deliveries, bytes, the fan-out histogram and the lag."""
    messages = ["one", "two", "three"]
    with run_server() as server:
        port = server.port
        assert sample(port, CLIENTS) == 0
        alice, bob = join_all(server, ["alice", "bob"])
        assert sample(port, CLIENTS) == 2
        settle_sample(port, EVENTS, {"type": "join"}, 2)
        # alice's join to alice, then bob's to both.
        settle_sample(port, DELIVERIES, None, 3)
        families = scrape(port)
        sent_bytes = value_in(families, SENT_BYTES, {})
        fanouts = value_in(families, FANOUT_COUNT, {})
        assert value_in(families, RECEIVED, {}) == 0
        assert value_in(families, EVENTS, {"type": "message"}) == 0

        for message in messages:
            alice.send(message)
        for ws in (alice, bob):
            for message in messages:
                assert receive_text(ws) == f"alice: {message}"
        settle_sample(port, RECEIVED, None, 3)
        settle_sample(port, EVENTS, {"type": "message"}, 3)
        settle_sample(port, DELIVERIES, None, 3 + 6)
        families = scrape(port)
        assert value_in(families, SENT_BYTES, {}) > sent_bytes
        assert value_in(families, FANOUT_COUNT, {}) > fanouts
        assert value_in(families, LAG, {}) >= 0

        bob.close()
        assert receive_text(alice) == "Server: bob has left the chat"
        settle_sample(port, EVENTS, {"type": "leave"}, 1)
        assert sample(port, CLIENTS) == 1
        alice.close()


def test_rate_limited_messages_are_counted() -> None:
    """With rate_limit=2, five quick messages count five received, three
    rate limited and two message events."""
    with run_server(rate_limit=2, rate_window=10 * UNIT) as server:
        alice = join(server, "alice")
        for index in range(5):
            alice.send(f"message {index}")
        settle_sample(server.port, RECEIVED, None, 5)
        settle_sample(server.port, RATE_LIMITED, None, 3)
        settle_sample(server.port, EVENTS, {"type": "message"}, 2)
        alice.close()


# Disconnects.


def clean_close(server: BroadcastServer, stack: contextlib.ExitStack) -> None:
    """A client closes with a close frame."""
    join(server, "alice").close()


def lost(server: BroadcastServer, stack: contextlib.ExitStack) -> None:
    """A client closes its socket without a close frame."""
    with RawClient(server.port, "alice") as raw:
        assert raw.receive_text() == "Server: alice has joined the chat"


def closed_for(data: bytes, code: int) -> Callable[..., None]:
    """A client sends ``data`` and is closed with ``code``."""

    def provoke(server: BroadcastServer, stack: contextlib.ExitStack) -> None:
        with RawClient(server.port, "alice") as raw:
            assert raw.receive_text() == "Server: alice has joined the chat"
            raw.send(data)
            assert raw.receive_close().code == code

    return provoke


def never_reads(server: BroadcastServer, stack: contextlib.ExitStack) -> None:
    """A client that never reads, while another floods the room."""
    alice = join(server, "alice")
    stack.callback(alice.close)
    slow = stack.enter_context(RawClient(server.port, "slow", socket_options=SLOW_LINK))
    assert receive_text(alice) == "Server: slow has joined the chat"
    left = "Server: slow has left the chat"
    for index in range(256):
        message = f"{index} ".ljust(FLOOD_CHARS, ".")
        alice.send(message)
        while (received := receive_text(alice)) != f"alice: {message}":
            if received == left:
                slow.assert_server_closes_tcp()
                return
    pytest.fail("the slow client was never dropped")


def never_answers(server: BroadcastServer, stack: contextlib.ExitStack) -> None:
    """A client that answers no ping and sends nothing."""
    with RawClient(server.port, "mute") as mute:
        assert mute.receive_close().code == 1011


@pytest.mark.parametrize(
    ("options", "provoke", "reason"),
    [
        pytest.param({}, clean_close, Disconnect.CLIENT_CLOSE, id="client_close"),
        pytest.param({}, lost, Disconnect.LOST, id="lost"),
        pytest.param(
            {}, closed_for(text(b"x" * 513), 1009), Disconnect.TOO_BIG, id="too_big"
        ),
        pytest.param(
            {},
            closed_for(frame(Opcode.BINARY, b"x"), 1003),
            Disconnect.PROTOCOL,
            id="binary",
        ),
        pytest.param(
            {},
            closed_for(frame(Opcode.TEXT, b"x", masked=False), 1002),
            Disconnect.PROTOCOL,
            id="unmasked",
        ),
        pytest.param(
            {
                "queue_size": 2,
                "write_timeout": 0.2 * UNIT,
                "rate_limit": 0,
                "max_message_bytes": FLOOD_CHARS,
                "max_message_chars": FLOOD_CHARS,
            },
            never_reads,
            Disconnect.SLOW,
            id="slow",
        ),
        pytest.param(
            {"ping_interval": 0.1 * UNIT, "pong_timeout": 0.3 * UNIT},
            never_answers,
            Disconnect.PONG_TIMEOUT,
            id="pong_timeout",
        ),
    ],
)
def test_disconnects_are_counted_by_reason(
    options: dict[str, Any],
    provoke: Callable[[BroadcastServer, contextlib.ExitStack], None],
    reason: Disconnect,
) -> None:
    """broadcast_disconnects_total counts each end once, under its reason."""
    with run_server(**options) as server, contextlib.ExitStack() as stack:
        before = by_label(scrape(server.port), DISCONNECTS, "reason")
        assert set(before) == {each.value for each in Disconnect}
        provoke(server, stack)
        settle(
            lambda: delta(by_label(scrape(server.port), DISCONNECTS, "reason"), before),
            {reason.value: 1},
            "disconnects counted",
        )


def test_shutdown_is_counted() -> None:
    """A client still connected when the server stops counts as shutdown."""
    with run_server() as server:
        alice = join(server, "alice")
    alice.close()
    disconnects = by_label(in_process(server), DISCONNECTS, "reason")
    assert delta(disconnects, {}) == {Disconnect.SHUTDOWN.value: 1}


# Registries.


def test_servers_count_apart() -> None:
    """Two servers in one process have registries of their own."""
    with run_server() as first, run_server() as second:
        alice = join(first, "alice")
        alice.send("hello")
        assert receive_text(alice) == "alice: hello"
        settle_sample(first.port, RECEIVED, None, 1)
        assert sample(first.port, CLIENTS) == 1
        assert sample(first.port, HANDSHAKES, {"status": "101"}) == 1
        assert sample(second.port, CLIENTS) == 0
        assert sample(second.port, HANDSHAKES, {"status": "101"}) == 0
        assert sample(second.port, RECEIVED) == 0
        assert sample(second.port, EVENTS, {"type": "join"}) == 0
        alice.close()
