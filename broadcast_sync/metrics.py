"""The server's Prometheus metrics, served at ``/metrics``.

Strategy: metrics must cost the fan-out almost nothing. Each counter of
prometheus-client takes a lock per increment, so nothing here is counted
per delivery: the dispatcher reports once per flush (events by type,
deliveries, bytes, the flush's duration and lag), a reader once per batch
of frames read from its socket, and the rest once per connection. Labelled
children are looked up once, here, not on every increment.
"""

from __future__ import annotations

import enum
from collections import Counter as Tally
from collections.abc import Callable
from http import HTTPStatus

import prometheus_client
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
)

from broadcast_sync.events import EventKind

#: Flushes take from tens of microseconds (a few members) to tens of
#: milliseconds (thousands of members under load).
FANOUT_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    1.0,
)


class Disconnect(enum.Enum):
    """Why a client's connection ended: a fixed set, the metrics' labels."""

    #: The client closed the connection with a close frame.
    CLIENT_CLOSE = "client_close"
    #: The connection broke, or ended without a close frame.
    LOST = "lost"
    #: The client did not read fast enough (outbox full, or no write).
    SLOW = "slow"
    #: A message over --max-message-bytes (1009).
    TOO_BIG = "too_big"
    #: A frame that breaks RFC 6455, or binary data in chat mode.
    PROTOCOL = "protocol"
    #: No pong (or any data) within --pong-timeout.
    PONG_TIMEOUT = "pong_timeout"
    #: The server stopped (1001).
    SHUTDOWN = "shutdown"
    #: The log (Redis) could not be reached (1013).
    UNAVAILABLE = "unavailable"
    #: Too many pings and pongs (1008).
    RATE = "rate"
    #: The token of its signed identity expired (1008, with --auth-secret-file).
    AUTH = "auth"


class Metrics:
    """Every metric of one server, in a registry of its own.

    A registry per server, not the library's global one, so that servers
    started side by side (tests, workers) count apart.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        for collector in (
            prometheus_client.ProcessCollector,
            prometheus_client.PlatformCollector,
            prometheus_client.GCCollector,
        ):
            collector(registry=registry)
        self._clients = Gauge(
            "broadcast_clients", "Clients in the room on this server", registry=registry
        )
        self._handshakes = Counter(
            "broadcast_handshakes",
            "Handshakes by the HTTP status answered: requests on the WebSocket "
            "path, and requests refused before their path was read",
            ["status"],
            registry=registry,
        )
        self._received = Counter(
            "broadcast_messages_received",
            "Data messages received from clients, accepted or not",
            registry=registry,
        )
        events = Counter(
            "broadcast_events",
            "Events of the room fanned out by this server, by type",
            ["type"],
            registry=registry,
        )
        #: Relayed data counts as a message.
        self._events = {
            kind: events.labels(
                EventKind.MESSAGE.value if kind is EventKind.DATA else kind.value
            )
            for kind in EventKind
        }
        self._deliveries = Counter(
            "broadcast_deliveries",
            "Events handed to clients: one per event per client",
            registry=registry,
        )
        self._sent_bytes = Counter(
            "broadcast_sent_bytes",
            "Bytes of fanned-out events handed to clients' sockets",
            registry=registry,
        )
        disconnects = Counter(
            "broadcast_disconnects",
            "Connections of clients in the room that ended, by reason",
            ["reason"],
            registry=registry,
        )
        self._disconnects = {
            reason: disconnects.labels(reason.value) for reason in Disconnect
        }
        self._rate_limited = Counter(
            "broadcast_rate_limited",
            "Messages dropped by the rate limit",
            registry=registry,
        )
        self._busy = Counter(
            "broadcast_busy_refused",
            "Messages refused, with a notice, while the fan-out lagged over a "
            "second: the server past its capacity",
            registry=registry,
        )
        self._fanout = Histogram(
            "broadcast_fanout_seconds",
            "Time to fan one flush out to every client",
            buckets=FANOUT_BUCKETS,
            registry=registry,
        )
        self._lag = Gauge(
            "broadcast_dispatch_lag_seconds",
            "Age of the oldest event of the latest flush when it was fanned out",
            registry=registry,
        )
        self._redis_up: Gauge | None = None

    def count_clients(self, count: Callable[[], int]) -> None:
        """Read the number of clients from ``count`` at each scrape."""
        self._clients.set_function(count)

    def watch_redis(self, reachable: Callable[[], bool]) -> None:
        """Add ``broadcast_redis_up``, read from ``reachable`` at each scrape."""
        self._redis_up = Gauge(
            "broadcast_redis_up",
            "1 while Redis can be reached, else 0",
            registry=self.registry,
        )
        self._redis_up.set_function(lambda: float(reachable()))

    def handshake(self, status: HTTPStatus) -> None:
        """Count one request on the WebSocket path and its answer."""
        self._handshakes.labels(str(status.value)).inc()

    def received(self, messages: int, rate_limited: int) -> None:
        """Count a reader's batch of messages, and those the limit dropped."""
        if messages:
            self._received.inc(messages)
        if rate_limited:
            self._rate_limited.inc(rate_limited)

    def refused_busy(self) -> None:
        """Count one message refused because the server is over capacity:
        only then, so per message."""
        self._busy.inc()

    def disconnected(self, reason: Disconnect) -> None:
        """Count one client's end."""
        self._disconnects[reason].inc()

    def flushed(
        self,
        kinds: Tally[EventKind],
        *,
        deliveries: int,
        sent_bytes: int,
        seconds: float,
        lag: float,
    ) -> None:
        """Count one flush of the dispatcher."""
        for kind, count in kinds.items():
            self._events[kind].inc(count)
        if deliveries:
            self._deliveries.inc(deliveries)
            self._sent_bytes.inc(sent_bytes)
        self._fanout.observe(seconds)
        self._lag.set(lag)

    def exposition(self) -> bytes:
        """Every metric, in Prometheus's text format."""
        return prometheus_client.generate_latest(self.registry)
