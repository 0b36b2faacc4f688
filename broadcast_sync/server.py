"""The server: accepts connections, does handshakes and owns every thread.

``socketserver.ThreadingTCPServer`` accepts each connection in its own
thread, which does the handshake and then becomes the client's reader.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import socket
import socketserver
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from types import TracebackType
from typing import NoReturn

import h11

from broadcast_sync import manythreads, nicknames
from broadcast_sync.admission import Admission, address_group
from broadcast_sync.auth import load_secret
from broadcast_sync.config import Mode, ServerConfig
from broadcast_sync.dispatcher import Dispatcher
from broadcast_sync.handshake import (
    WEBSOCKET_PATH,
    Arrival,
    Request,
    accept_response,
    asks_upgrade,
    authenticate,
    check_origin,
    parse_arrival,
    parse_question,
    parse_request,
    upgrade_required,
)
from broadcast_sync.heartbeat import Heartbeat
from broadcast_sync.http11 import (
    RECEIVE_BYTES,
    HTTPError,
    read_request,
    reject_response,
    split_target,
)
from broadcast_sync.hub import Hub, Member
from broadcast_sync.log import EventLog, LogUnavailable, MemoryLog
from broadcast_sync.logs import Throttle
from broadcast_sync.metrics import Metrics
from broadcast_sync.names import RoomFull
from broadcast_sync.probes import Liveness, MetricsPage, Readiness
from broadcast_sync.proxies import forwarded_client, in_networks
from broadcast_sync.redislog import RedisLog
from broadcast_sync.routes import (
    PAGE_HISTORY,
    Resource,
    Routes,
    chat_page,
)
from broadcast_sync.session import Session
from broadcast_sync.transport import (
    NotTLS,
    PlainTransport,
    TLSTransport,
    Transport,
    tls_context,
)
from broadcast_sync.validation import InvalidUsername, clean_username

logger = logging.getLogger(__name__)

#: Connections the kernel queues before accept(): clients arrive in bursts.
LISTEN_BACKLOG = 1024
#: After a refused handshake, how long and how much input is read and
#: dropped so that the client gets the answer (see ConnectionHandler._linger).
LINGER_SECONDS = 1.0
LINGER_BYTES = 65536
#: Connections that may be in their handshake at once, and beyond
#: max_clients, each holding a thread for at most --handshake-timeout: past
#: either, 503 at once, without a thread. So silent sockets (slowloris) from
#: many addresses hold at most this many threads, joined clients apart.
MAX_PENDING_HANDSHAKES = 256
#: How often the acceptor checks for shutdown: the delay of stop().
ACCEPT_POLL_SECONDS = 0.1
#: Sessions that may end at the same time, from the leave to the writer
#: joined; the others wait their turn asleep, without asking for the GIL.
#: When thousands of connections drop at once (a NAT gateway that
#: restarts), thousands of threads wake together. The GIL goes to its
#: waiters in turn, so every step of a teardown under way waits behind all
#: the others, and so does a newcomer's handshake: with 10,000 reset, a gate
#: around the leave alone kept newcomers waiting up to 1.3 s, and one
#: around the whole teardown 0.3 s.
DEPARTURES_AT_ONCE = 8


def format_address(address: tuple[str, int]) -> str:
    """``host:port`` of a peer, for logs."""
    return f"{address[0]}:{address[1]}"


@dataclasses.dataclass(frozen=True)
class Peer:
    """Who is at the other end of a connection, for the log and the limits."""

    #: The client's IP address.
    ip: str
    #: The socket's port, when the socket is the client's own.
    port: int | None = None
    #: The trusted proxy that told us about the client, if any.
    via: Peer | None = None

    @classmethod
    def of(cls, address: tuple[str, int]) -> Peer:
        """The peer of a socket, taken at its word."""
        return cls(address[0], address[1])

    def __str__(self) -> str:
        if self.via is not None:
            return f"{self.ip} (via {self.via})"
        return f"{self.ip}:{self.port}"


def page_host(config: ServerConfig) -> str:
    """The host to show in the page's address: a wildcard is no address, and
    an IPv6 address goes in brackets."""
    if config.host in ("", "0.0.0.0", "::"):
        return "localhost"
    return f"[{config.host}]" if ":" in config.host else config.host


def make_log(config: ServerConfig) -> EventLog:
    """The log that ``config`` asks for: in Redis, or in memory."""
    if config.redis_url is None:
        return MemoryLog(config.max_clients, config.max_username_chars)
    return RedisLog(config)


def auth_secret(config: ServerConfig) -> bytes | None:
    """The secret that signs clients' tokens, if ``config`` names its file.

    Raises:
        AuthSetupFailed: if the file cannot be read, or holds no usable secret.
    """
    if config.auth_secret_file is None:
        return None
    return load_secret(config.auth_secret_file)


def make_routes(
    config: ServerConfig, metrics: Metrics, unready: Callable[[], str | None]
) -> Routes:
    """The plain HTTP resources: the chat page, if ``config`` asks for it (it
    speaks the chat's JSON protocol, which relay mode lacks), and the probes
    for operators."""
    page: dict[str, Resource] = {}
    if config.web and config.mode is Mode.CHAT:
        history = min(PAGE_HISTORY, config.history_size)
        page = chat_page(history=history, max_name=config.max_username_chars)
    probes: dict[str, Resource] = {
        "/healthz": Liveness(),
        "/readyz": Readiness(unready),
        "/metrics": MetricsPage(metrics),
    }
    return Routes(page, probes, config.metrics_allow)


class BroadcastServer(socketserver.ThreadingTCPServer):
    """The broadcast server: call :meth:`start`, then :meth:`stop`.

    Tracks every connection's socket and thread itself (in
    ``_connections``), so that :meth:`stop` can cut and join them.
    """

    allow_reuse_address = True
    request_queue_size = LISTEN_BACKLOG
    block_on_close = False

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.log = make_log(config)
        self.hub: Hub[Member] = Hub()
        self.metrics = Metrics()
        self.metrics.count_clients(self.hub.count)
        if config.redis_url is not None:
            self.metrics.watch_redis(self.log.reachable)
        self.dispatcher = Dispatcher(
            self.hub,
            history_size=config.history_size,
            batch_window=config.batch_window,
            max_message_chars=config.max_message_chars,
            max_message_bytes=config.max_message_bytes,
            metrics=self.metrics,
        )
        self.heartbeat = Heartbeat(self.hub, config)
        self.routes = make_routes(config, self.metrics, self.unready)
        #: None: plain connections.
        self.tls = tls_context(config)
        #: None: anonymous names; else the secret that signs the tokens.
        self.auth_secret = auth_secret(config)
        #: Limits the lines about refused connections, per address.
        self._throttle = Throttle()
        #: Guards ``_connections``, ``_exited`` and ``_handshaking``.
        self._connections_lock = threading.Lock()
        #: Each open socket and the thread serving it.
        self._connections: dict[socket.socket, threading.Thread] = {}
        #: Threads whose socket is closed, still to be joined.
        self._exited: list[threading.Thread] = []
        #: Connections not yet past their handshake (or their one request).
        self._handshaking = 0
        #: Set by :meth:`stop`: handshakes that finish afterwards get 503.
        self._stopping = threading.Event()
        self.departures = threading.BoundedSemaphore(DEPARTURES_AT_ONCE)
        #: Connections and handshake rate per client address.
        self.admission = Admission(config.max_clients_per_ip, config.handshake_rate)
        self._acceptor = threading.Thread(
            target=self.serve_forever, args=(ACCEPT_POLL_SECONDS,), name="acceptor"
        )
        super().__init__((config.host, config.port), ConnectionHandler)

    def server_bind(self) -> None:
        """Bind, sharing the port with the other workers if there are any."""
        if self.config.workers > 1:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()

    @property
    def port(self) -> int:
        """The port the server listens on (useful when asked for port 0)."""
        return int(self.server_address[1])

    def start(self) -> None:
        """Start the dispatcher, the log, the heartbeat and the acceptor.

        Raises:
            LogUnavailable: if the log cannot be reached.
        """
        # Two threads for each connection: its own (the reader) and its writer.
        manythreads.prepare(2 * (self.config.max_clients + MAX_PENDING_HANDSHAKES))
        nicknames.prepare()
        try:
            # Before the dispatcher runs: it only queues what it is handed.
            self.log.start(self.dispatcher)
        except LogUnavailable:
            self.server_close()
            raise
        self.dispatcher.start()
        self.heartbeat.start()
        self._acceptor.start()
        logger.info("listening on %s:%d", self.config.host, self.port)
        if "/" in self.routes.paths:
            scheme = "http" if self.tls is None else "https"
            host = page_host(self.config)
            logger.info("chat page at %s://%s:%d/", scheme, host, self.port)

    def stop(self) -> None:
        """Shut down gracefully and join every thread.

        Delivers what was accepted, sends every client a close frame 1001,
        and waits for them to close: all within ``close_timeout``. Meanwhile
        it still answers: new clients get 503 and ``/readyz`` says why, so
        that a load balancer sees the server go rather than hang. Then it
        stops accepting and cuts the remaining connections.
        """
        self._stopping.set()
        # One close timeout for all of it: the events still due, the close
        # frames, and the clients' replies. With 10,000 clients, half of
        # them reset, delivering their leaves to the other half took the
        # dispatcher's whole timeout, and then the clients had one more.
        deadline = time.monotonic() + self.config.close_timeout
        # Our own clients' last messages may still be on their way back.
        self.dispatcher.stop(self.log.appended, deadline)
        self.heartbeat.stop()
        for thread in self._connection_threads():
            # The acceptor may not have started it yet: it is joined below,
            # once the acceptor is done.
            if thread.is_alive():
                thread.join(max(deadline - time.monotonic(), 0))
        self.shutdown()
        self._acceptor.join()
        with self._connections_lock:
            for sock in self._connections:
                with contextlib.suppress(OSError):  # closed by its peer
                    sock.shutdown(socket.SHUT_RDWR)
        for thread in self._connection_threads():
            thread.join()
        with self._connections_lock:
            self._exited = []
        self.log.stop()  # after the sessions, which logged their leaves
        self.server_close()
        logger.info("stopped")

    def __enter__(self) -> BroadcastServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def stopping(self) -> bool:
        """Whether :meth:`stop` was called."""
        return self._stopping.is_set()

    def note_refusal(self, peer: Peer, error: HTTPError) -> None:
        """Log a connection refused with ``error``."""
        self.note_connection(
            peer,
            f"rejected {peer}: {error.status.value} {error.reason}",
            status=error.status.value,
            reason=error.reason,
        )

    def note_connection(self, peer: Peer, line: str, **fields: object) -> None:
        """Log ``line`` about a connection that never joined, a few lines a
        window at most per address: a client that keeps failing its
        handshakes must not flood the log. ``fields`` go to JSON lines."""
        suppressed = self._throttle.admit(peer.ip, time.monotonic())
        if suppressed is None:
            return
        if suppressed:
            line += f" ({suppressed} more lines about {peer.ip} suppressed)"
            fields["suppressed"] = suppressed
        fields["client"] = str(peer)
        logger.info("%s", line, extra=fields)

    def unready(self) -> str | None:
        """Why the server takes no new clients now, or None if it does."""
        if self.stopping:
            return "shutting down"
        if self.hub.count() >= self.config.max_clients:
            return f"full: {self.config.max_clients} clients"
        if not self.log.reachable():
            return "Redis cannot be reached"
        return None

    def _connection_threads(self) -> list[threading.Thread]:
        with self._connections_lock:
            return [*self._connections.values(), *self._exited]

    def process_request(
        self,
        request: socket.socket,  # type: ignore[override]
        client_address: tuple[str, int],
    ) -> None:
        """Serve the connection in a thread of its own, named and tracked.

        Beyond ``max_clients`` plus ``MAX_PENDING_HANDSHAKES`` open
        connections, refuse it at once, without a thread: silent sockets
        must not exhaust the threads and file descriptors of the process.
        """
        # A daemon thread, though stop() joins it: for each non-daemon
        # thread that starts or ends, CPython's threading module (before
        # 3.13) goes through a lock of every other one. Ten thousand clients
        # cost quadratic time, and ending them all at once held the GIL for
        # minutes.
        group = self.counted_group(client_address[0])
        refusal = None if group is None else self.admission.admit(group)
        if refusal is not None:
            error = HTTPError(HTTPStatus.TOO_MANY_REQUESTS, refusal)
            self._refuse_at_once(request, client_address, error)
            return
        thread = threading.Thread(
            target=self._serve_connection,
            args=(request, client_address, group),
            name=f"reader {format_address(client_address)}",
            daemon=True,
        )
        with self._connections_lock:
            refusal = self._over_capacity()
            if refusal is None:
                self._connections[request] = thread
                self._handshaking += 1
            exited, self._exited = self._exited, []
        if refusal is not None:
            if group is not None:
                self.admission.release(group)
            error = HTTPError(HTTPStatus.SERVICE_UNAVAILABLE, refusal)
            self._refuse_at_once(request, client_address, error)
        else:
            thread.start()
        for done in exited:
            done.join()  # it has finished its work: this returns at once

    def _over_capacity(self) -> str | None:
        """Why one more connection may not be served, if it may not; called
        with ``_connections_lock`` held."""
        if self._handshaking >= MAX_PENDING_HANDSHAKES:
            return f"too many handshakes in progress ({MAX_PENDING_HANDSHAKES})"
        limit = self.config.max_clients + MAX_PENDING_HANDSHAKES
        if len(self._connections) >= limit:
            return f"too many connections ({limit})"
        return None

    def handshake_over(self) -> None:
        """Count a connection's handshake as over (once per connection)."""
        with self._connections_lock:
            self._handshaking -= 1

    def counted_group(self, ip: str) -> str | None:
        """The address group a connection from ``ip`` counts in; None for a
        trusted proxy, whose clients count by their own address once their
        request names it (see ``ConnectionHandler._find_client``)."""
        if in_networks(ip, self.config.trusted_proxies):
            return None
        return address_group(ip)

    def _refuse_at_once(
        self,
        request: socket.socket,
        client_address: tuple[str, int],
        error: HTTPError,
    ) -> None:
        """Answer ``error`` without a thread, best effort, and close."""
        self.note_refusal(Peer.of(client_address), error)
        self.metrics.handshake(error.status)
        response = reject_response(error)
        with contextlib.suppress(OSError):  # best effort: it is closed either way
            request.send(response, socket.MSG_DONTWAIT)
        self.shutdown_request(request)

    def _serve_connection(
        self,
        request: socket.socket,
        client_address: tuple[str, int],
        group: str | None,
    ) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            logger.exception("error serving %s", format_address(client_address))
        finally:
            if group is not None:
                self.admission.release(group)
            # Out of _connections before the socket is closed: stop() cuts
            # open sockets only. Into _exited, so that somebody joins it.
            with self._connections_lock:
                del self._connections[request]
                self._exited.append(threading.current_thread())
            self.shutdown_request(request)


class ConnectionHandler(socketserver.BaseRequestHandler):
    """Reads the connection's request: serves a WebSocket client as a
    :class:`Session` after its handshake, or answers a plain HTTP request."""

    server: BroadcastServer
    request: socket.socket

    def setup(self) -> None:
        """Start the clock of the request, which must end within the handshake
        timeout: whether it is a handshake or a request for the page."""
        self._deadline = time.monotonic() + self.server.config.handshake_timeout
        #: The client: the socket's peer until the request, read, may say
        #: that the peer is a trusted proxy and who is behind it.
        self._peer = Peer.of(self.client_address)
        #: The page's scheme, if a trusted proxy said which.
        self._scheme: str | None = None
        #: Whether the server still counts this connection as handshaking.
        self._handshaking = True
        #: The address group this connection was admitted in, when a trusted
        #: proxy named the client (the acceptor counts the others).
        self._admitted: str | None = None
        tls = self.server.tls
        self._transport: Transport = (
            PlainTransport(self.request)
            if tls is None
            else TLSTransport(self.request, tls)
        )

    def handle(self) -> None:
        """Serve one connection from its request to its end."""
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            self._transport.handshake(self._deadline)
            http_request, trailing_data = read_request(
                self._transport, self._deadline - time.monotonic()
            )
            self._find_client(http_request)
            if split_target(http_request).path != WEBSOCKET_PATH:
                self._answer(http_request)
                return
            if not asks_upgrade(http_request):
                self._explain(http_request)
            name, key, arrival = self._handshake(http_request)
        except HTTPError as exc:
            if isinstance(exc, NotTLS):
                self._transport = PlainTransport(self.request)  # answer in kind
            self.server.metrics.handshake(exc.status)
            self._refuse(exc)
            return
        except TimeoutError:
            if not self._transport.established:  # nothing can be said to it
                self.server.note_connection(
                    self._peer, f"dropped {self._peer}: TLS handshake timed out"
                )
                return
            timeout = HTTPError(HTTPStatus.REQUEST_TIMEOUT, "handshake timed out")
            self.server.note_refusal(self._peer, timeout)
            self.server.metrics.handshake(timeout.status)
            self._send(reject_response(timeout))
            return
        except OSError as exc:
            self.server.note_connection(
                self._peer,
                f"lost {self._peer} during the handshake: {exc}",
                reason=str(exc),
            )
            return
        if not self._send(accept_response(key)):
            self.server.log.release_name(name)
            return
        self.server.metrics.handshake(HTTPStatus.SWITCHING_PROTOCOLS)
        self._end_handshake()
        self.request.settimeout(None)
        session = Session(
            self._transport,
            str(self._peer),
            name,
            config=self.server.config,
            room=self.server.dispatcher,
            log=self.server.log,
            metrics=self.server.metrics,
            arrival=arrival,
            departures=self.server.departures,
            trailing_data=trailing_data,
        )
        session.run()

    def _find_client(self, http_request: h11.Request) -> None:
        """Believe a trusted proxy's word on who the client is, and admit the
        client by its own address.

        Raises:
            HTTPError: 429 if that address may not open another connection.
        """
        trusted = self.server.config.trusted_proxies
        if not in_networks(self._peer.ip, trusted):
            return
        client = forwarded_client(self._peer.ip, http_request.headers, trusted)
        self._peer = Peer(client.address, via=self._peer)
        self._scheme = client.scheme
        group = self.server.counted_group(client.address)
        if group is None:  # no client named, or another proxy
            return
        refusal = self.server.admission.admit(group)
        if refusal is not None:
            raise HTTPError(HTTPStatus.TOO_MANY_REQUESTS, refusal)
        self._admitted = group

    def finish(self) -> None:
        """Give back the client's place in its address's count."""
        self._end_handshake()
        if self._admitted is not None:
            self.server.admission.release(self._admitted)

    def _end_handshake(self) -> None:
        if self._handshaking:
            self._handshaking = False
            self.server.handshake_over()

    def _handshake(self, http_request: h11.Request) -> tuple[str, str, Arrival]:
        """Check the handshake; reserve the client's name.

        Returns:
            The name given to the client, its key and what else it asked for.
        """
        request = parse_request(http_request)
        username, arrival = self._check_arrival(request)
        try:
            name = self.server.log.reserve_name(username)
        except (RoomFull, LogUnavailable) as exc:
            raise HTTPError(HTTPStatus.SERVICE_UNAVAILABLE, str(exc)) from exc
        return name, request.key, arrival

    def _explain(self, http_request: h11.Request) -> NoReturn:
        """Answer a plain GET of /ws as its handshake would have been
        answered: a page asking why its handshake failed (see
        :func:`~broadcast_sync.handshake.parse_question`).

        Raises:
            HTTPError: the handshake's refusal; 426 if there would be none.
        """
        self._check_arrival(parse_question(http_request))
        unready = self.server.unready()
        if unready is not None:
            raise HTTPError(HTTPStatus.SERVICE_UNAVAILABLE, unready)
        raise upgrade_required()

    def _check_arrival(self, request: Request) -> tuple[str, Arrival]:
        """Check what the client asks for, short of its name being free.

        Returns:
            The name it asks for, or with --auth-secret-file the one its
            token is signed for; and what else it asked for.
        """
        config = self.server.config
        check_origin(request, config.allowed_origins, self._scheme)
        arrival = parse_arrival(request, config.mode, config.history_size)
        requested = request.username
        secret = self.server.auth_secret
        if secret is not None:
            # The signed name instead of the one asked for; made unique below,
            # like any: a user may be logged in from two tabs.
            identity = authenticate(request, secret)
            requested = identity.name
            arrival = dataclasses.replace(arrival, expires=identity.expires)
        if requested is None:
            requested = self._peer.ip
        try:
            username = clean_username(requested, config.max_username_chars)
        except InvalidUsername as exc:
            raise HTTPError(HTTPStatus.BAD_REQUEST, str(exc)) from exc
        if self.server.stopping:
            raise HTTPError(HTTPStatus.SERVICE_UNAVAILABLE, "server shutting down")
        return username, arrival

    def _answer(self, http_request: h11.Request) -> None:
        """Answer a plain HTTP request from the routes, then close."""
        try:
            response = self.server.routes.respond(http_request, self._peer.ip)
        except HTTPError as exc:
            self._refuse(exc)
            return
        client = str(self._peer)
        status = response.status.value
        logger.debug(
            "answered %s: %d",
            client,
            status,
            extra={"client": client, "status": status},
        )
        if self._send(response.encode()):
            self._linger()

    def _refuse(self, error: HTTPError) -> None:
        """Answer with ``error``'s status and reason, then close."""
        self.server.note_refusal(self._peer, error)
        if self._send(reject_response(error)):
            self._linger()

    def _linger(self) -> None:
        """Let the client read our answer before the socket is closed.

        Closing with unread input makes the kernel send a reset, which can
        destroy the answer before the client reads it: so half-close, and
        discard what still arrives, within limits (RFC 9112, section 9.6).
        """
        deadline = min(time.monotonic() + LINGER_SECONDS, self._deadline)
        discarded = 0
        closing = self._transport.closing()  # TLS: a close_notify, encrypted
        with contextlib.suppress(OSError):  # timeouts included
            if closing:
                self.request.settimeout(max(deadline - time.monotonic(), 0.001))
                self.request.sendall(closing)
            self.request.shutdown(socket.SHUT_WR)
            while discarded < LINGER_BYTES:
                self.request.settimeout(max(deadline - time.monotonic(), 0.001))
                data = self.request.recv(RECEIVE_BYTES)
                if not data:
                    return
                discarded += len(data)

    def _send(self, data: bytes) -> bool:
        """Send ``data`` whole, through the transport, by the deadline of the
        request."""
        try:
            self.request.settimeout(max(self._deadline - time.monotonic(), 0.001))
            self.request.sendall(self._transport.encode(data))
        except OSError:
            return False
        return True
