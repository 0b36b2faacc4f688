"""The server: accepts connections, does handshakes and owns every thread.

``socketserver.ThreadingTCPServer`` accepts each connection in its own
thread, which does the handshake and then becomes the client's reader.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import socketserver
import threading
import time
from http import HTTPStatus
from types import TracebackType

import h11

from broadcast_sync.config import Mode, ServerConfig
from broadcast_sync.dispatcher import Dispatcher
from broadcast_sync.handshake import (
    WEBSOCKET_PATH,
    Arrival,
    accept_response,
    check_origin,
    parse_arrival,
    parse_request,
)
from broadcast_sync.heartbeat import Heartbeat
from broadcast_sync.http11 import (
    RECEIVE_BYTES,
    HTTPError,
    Response,
    read_request,
    reject_response,
    split_target,
)
from broadcast_sync.hub import Hub, Member
from broadcast_sync.log import EventLog, LogUnavailable, MemoryLog
from broadcast_sync.names import RoomFull
from broadcast_sync.redislog import RedisLog
from broadcast_sync.routes import PAGE_HISTORY, Routes, chat_page
from broadcast_sync.session import Session
from broadcast_sync.validation import InvalidUsername, clean_username

logger = logging.getLogger(__name__)

#: Thread stack size: the server runs two threads per client, and ten
#: thousand clients at the default 8 MiB would reserve 160 GiB of address
#: space. Our deepest call chains use a small fraction of this.
THREAD_STACK_BYTES = 256 * 1024
#: Connections the kernel queues before accept(): clients arrive in bursts.
LISTEN_BACKLOG = 1024
#: After a refused handshake, how long and how much input is read and
#: dropped so that the client gets the answer (see ConnectionHandler._linger).
LINGER_SECONDS = 1.0
LINGER_BYTES = 65536
#: Connections that may be in their handshake beyond max_clients, each
#: holding a thread for at most --handshake-timeout.
MAX_PENDING_HANDSHAKES = 256
#: How often the acceptor checks for shutdown: the delay of stop().
ACCEPT_POLL_SECONDS = 0.1


def format_address(address: tuple[str, int]) -> str:
    """``host:port`` of a peer, for logs."""
    return f"{address[0]}:{address[1]}"


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


def make_routes(config: ServerConfig) -> Routes:
    """The plain HTTP resources that ``config`` asks for: the chat page, or
    none. The page speaks the chat's JSON protocol, which relay mode lacks."""
    if not config.web or config.mode is not Mode.CHAT:
        return Routes({})
    history = min(PAGE_HISTORY, config.history_size)
    return Routes(chat_page(history=history, max_name=config.max_username_chars))


class BroadcastServer(socketserver.ThreadingTCPServer):
    """The broadcast server: call :meth:`start`, then :meth:`stop`.

    Tracks every connection's socket and thread itself (in
    ``_connections``), so that :meth:`stop` can cut and join them.
    """

    allow_reuse_address = True
    request_queue_size = LISTEN_BACKLOG
    daemon_threads = False
    block_on_close = False

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.log = make_log(config)
        self.hub: Hub[Member] = Hub()
        self.dispatcher = Dispatcher(
            self.hub,
            history_size=config.history_size,
            batch_window=config.batch_window,
            max_message_chars=config.max_message_chars,
            max_message_bytes=config.max_message_bytes,
        )
        self.heartbeat = Heartbeat(self.hub, config)
        self.routes = make_routes(config)
        #: Guards ``_connections`` and ``_exited``.
        self._connections_lock = threading.Lock()
        #: Each open socket and the thread serving it.
        self._connections: dict[socket.socket, threading.Thread] = {}
        #: Threads whose socket is closed, still to be joined.
        self._exited: list[threading.Thread] = []
        #: Set by :meth:`stop`: handshakes that finish afterwards get 503.
        self._stopping = threading.Event()
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
        threading.stack_size(THREAD_STACK_BYTES)
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
            logger.info("chat page at http://%s:%d/", page_host(self.config), self.port)

    def stop(self) -> None:
        """Shut down gracefully and join every thread.

        Stops accepting, delivers what was accepted, sends every client a
        close frame 1001, waits up to ``close_timeout`` for them to close,
        then cuts the remaining connections.
        """
        self._stopping.set()
        self.shutdown()
        self._acceptor.join()
        # Our own clients' last messages may still be on their way back.
        self.dispatcher.stop(self.log.appended, self.config.close_timeout)
        self.heartbeat.stop()
        deadline = time.monotonic() + self.config.close_timeout
        for thread in self._connection_threads():
            thread.join(max(deadline - time.monotonic(), 0))
        with self._connections_lock:
            for sock in self._connections:
                with contextlib.suppress(OSError):  # closed by its peer
                    sock.shutdown(socket.SHUT_RDWR)
        for thread in self._connection_threads():
            thread.join()
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
        thread = threading.Thread(
            target=self._serve_connection,
            args=(request, client_address),
            name=f"reader {format_address(client_address)}",
        )
        limit = self.config.max_clients + MAX_PENDING_HANDSHAKES
        with self._connections_lock:
            full = len(self._connections) >= limit
            if not full:
                self._connections[request] = thread
            exited, self._exited = self._exited, []
        if full:
            self._refuse_at_once(request, client_address, limit)
        else:
            thread.start()
        for done in exited:
            done.join()  # it has finished its work: this returns at once

    def _refuse_at_once(
        self, request: socket.socket, client_address: tuple[str, int], limit: int
    ) -> None:
        reason = f"too many connections ({limit})"
        logger.info("rejected %s: 503 %s", format_address(client_address), reason)
        response = reject_response(HTTPError(HTTPStatus.SERVICE_UNAVAILABLE, reason))
        with contextlib.suppress(OSError):  # best effort: it is closed either way
            request.send(response, socket.MSG_DONTWAIT)
        self.shutdown_request(request)

    def _serve_connection(
        self, request: socket.socket, client_address: tuple[str, int]
    ) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            logger.exception("error serving %s", format_address(client_address))
        finally:
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

    def handle(self) -> None:
        """Serve one connection from its request to its end."""
        address = format_address(self.client_address)
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            http_request, trailing_data = read_request(
                self.request, self._deadline - time.monotonic()
            )
            if split_target(http_request).path != WEBSOCKET_PATH:
                self._answer(self.server.routes.respond(http_request))
                return
            name, key, arrival = self._handshake(http_request)
        except HTTPError as exc:
            logger.info("rejected %s: %d %s", address, exc.status.value, exc.reason)
            if self._send(reject_response(exc)):
                self._linger()
            return
        except TimeoutError:
            logger.info("rejected %s: handshake timed out", address)
            timeout = HTTPError(HTTPStatus.REQUEST_TIMEOUT, "handshake timed out")
            self._send(reject_response(timeout))
            return
        except OSError as exc:
            logger.info("lost %s during the handshake: %s", address, exc)
            return
        if not self._send(accept_response(key)):
            self.server.log.release_name(name)
            return
        self.request.settimeout(None)
        session = Session(
            self.request,
            address,
            name,
            config=self.server.config,
            room=self.server.dispatcher,
            log=self.server.log,
            arrival=arrival,
            trailing_data=trailing_data,
        )
        session.run()

    def _handshake(self, http_request: h11.Request) -> tuple[str, str, Arrival]:
        """Check the handshake; reserve the client's name.

        Returns:
            The name given to the client, its key and what else it asked for.
        """
        config = self.server.config
        request = parse_request(http_request)
        check_origin(request, config.allowed_origins)
        arrival = parse_arrival(request, config.mode, config.history_size)
        requested = request.username
        if requested is None:
            requested = self.client_address[0]
        try:
            username = clean_username(requested, config.max_username_chars)
        except InvalidUsername as exc:
            raise HTTPError(HTTPStatus.BAD_REQUEST, str(exc)) from exc
        if self.server.stopping:
            raise HTTPError(HTTPStatus.SERVICE_UNAVAILABLE, "server shutting down")
        try:
            name = self.server.log.reserve_name(username)
        except (RoomFull, LogUnavailable) as exc:
            raise HTTPError(HTTPStatus.SERVICE_UNAVAILABLE, str(exc)) from exc
        return name, request.key, arrival

    def _answer(self, response: Response) -> None:
        """Send ``response`` to a plain HTTP request, then close."""
        logger.debug(
            "answered %s: %d", format_address(self.client_address), response.status
        )
        if self._send(response.encode()):
            self._linger()

    def _linger(self) -> None:
        """Let the client read our answer before the socket is closed.

        Closing with unread input makes the kernel send a reset, which can
        destroy the answer before the client reads it: so half-close, and
        discard what still arrives, within limits (RFC 9112, section 9.6).
        """
        deadline = min(time.monotonic() + LINGER_SECONDS, self._deadline)
        discarded = 0
        with contextlib.suppress(OSError):  # timeouts included
            self.request.shutdown(socket.SHUT_WR)
            while discarded < LINGER_BYTES:
                self.request.settimeout(max(deadline - time.monotonic(), 0.001))
                data = self.request.recv(RECEIVE_BYTES)
                if not data:
                    return
                discarded += len(data)

    def _send(self, data: bytes) -> bool:
        """Send ``data`` whole, by the deadline of the request."""
        try:
            self.request.settimeout(max(self._deadline - time.monotonic(), 0.001))
            self.request.sendall(data)
        except OSError:
            return False
        return True
