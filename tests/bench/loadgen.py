"""The load generator: many WebSocket clients in one thread, on one epoll.

Strategy: a pure-Python client that parses every frame would saturate long
before the server does (a room of 1,000 is a million deliveries a second),
and a thread per client would spend the generator's core on GIL hand-offs.
So the generator is one process, one thread and one ``select.epoll`` over
every socket, and most clients do almost nothing: they ``recv_into`` one
shared buffer and add up bytes. Every broadcast frame has the same length
(see :mod:`tests.bench.wire`), so bytes count messages exactly once the
join notices are accounted for (:meth:`LoadGenerator.mark` takes a baseline
after the room has settled). A few sampled clients, spread across the room,
decode every frame and check latency and order (:mod:`tests.bench.tracking`).

Handshakes are pipelined: up to :data:`HANDSHAKES_IN_FLIGHT` at a time, each
finished by the same event loop that drains the clients already in the
room, so that nobody falls behind on join notices while others connect.

TLS (``--tls``) is a subclass, :class:`TLSLoadGenerator`, with a loop of its
own: the plain loop is not touched, so a plain run pays nothing for it.
Each TLS client is an ``ssl.SSLObject`` over two ``ssl.MemoryBIO``s
(:class:`TLSChannel`), driven by the same non-blocking loop: what a socket
reads is fed in and decrypted, what a client sends is encrypted and sent
raw. An ``ssl.SSLSocket`` would not do: it may hold decrypted bytes that
epoll cannot see, and its handshake wants a blocking socket or retries.
Clients count decrypted bytes, so every count is the plain run's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import resource
import select
import socket
import ssl
import struct
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterator
from types import TracebackType
from typing import cast

from tests.bench import wire
from tests.bench.tracking import ReceiverLog, Tracker

#: Connections opened but not yet answered: well under the server's listen
#: backlog (1024), so connect() never waits for a SYN retry.
HANDSHAKES_IN_FLIGHT = 256
#: One read takes everything a client has been sent in a flush, and more.
RECEIVE_BYTES = 256 * 1024
#: Events taken from epoll per call.
MAX_EVENTS = 4096
#: The loop looks at its stop condition at least this often.
MAX_POLL_SECONDS = 0.05
#: connect() to loopback is immediate unless something is very wrong.
CONNECT_TIMEOUT_SECONDS = 10.0
#: A handshake response head is a few hundred bytes.
MAX_HEAD_BYTES = 8192

#: A pacer sends what is due at ``now_ns`` and returns when it wants to run next.
Pacer = Callable[[int], int]


class State(enum.Enum):
    """Where a client is in its life."""

    HANDSHAKE = "handshake"
    OPEN = "open"
    CLOSED = "closed"


class Client:
    """One connection of the generator."""

    __slots__ = (
        "baseline",
        "fd",
        "handshake",
        "head",
        "index",
        "log",
        "name",
        "outgoing",
        "received",
        "sock",
        "state",
        "status",
        "tls",
    )

    def __init__(
        self, index: int, sock: socket.socket, handshake: wire.Handshake
    ) -> None:
        self.index = index
        self.name = wire.client_name(index)
        self.sock = sock
        self.fd = sock.fileno()
        self.state = State.HANDSHAKE
        self.handshake = handshake
        self.head = b""
        #: The handshake's HTTP status; 0 for no valid response, None for
        #: none yet or a failed connect().
        self.status: int | None = None
        #: Bytes received after the handshake response.
        self.received = 0
        #: ``received`` when :meth:`LoadGenerator.mark` was last called.
        self.baseline = 0
        #: Bytes the socket did not take yet.
        self.outgoing = b""
        #: Set on sampled clients only: they decode every frame.
        self.log: tuple[wire.FrameDecoder, ReceiverLog] | None = None
        #: The TLS session, with ``--tls``.
        self.tls: TLSChannel | None = None

    def messages_since_mark(self, leaves: int = 0) -> int:
        """Chat messages received since the mark, after ``leaves`` leave notices."""
        chat_bytes = self.received - self.baseline - leaves * wire.LEAVE_FRAME_BYTES
        return chat_bytes // wire.CHAT_FRAME_BYTES


@dataclasses.dataclass
class ConnectOutcome:
    """How connecting a batch of clients went."""

    accepted: int = 0
    #: Refused handshakes by HTTP status (0: not a valid response).
    refused: Counter[int] = dataclasses.field(default_factory=Counter)
    #: connect() errors, by exception name.
    failed: Counter[str] = dataclasses.field(default_factory=Counter)
    #: Handshakes still unanswered when the time was up.
    unanswered: int = 0
    #: Clients not even tried before the time was up.
    not_tried: int = 0
    seconds: float = 0.0

    @property
    def left_out(self) -> int:
        """Clients that did not get in, for whatever reason."""
        return (
            sum(self.refused.values())
            + sum(self.failed.values())
            + self.unanswered
            + self.not_tried
        )


class LoadGenerator:
    """Clients of one server, driven by one event loop.

    Use as a context manager: leaving the block closes every socket.
    """

    #: The clients' TLS context; None: plain TCP.
    context: ssl.SSLContext | None = None

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.clients: list[Client] = []
        self.tracker = Tracker()
        #: Clients the server disconnected while we were not closing.
        self.dropped: list[Client] = []
        #: Set before stopping the server: disconnections are then expected.
        self.closing = False
        #: Bytes received by all clients, for cheap "has everything come" checks.
        self.total_received = 0
        self.masker = wire.Masker()
        self._epoll = select.epoll()
        self._by_fd: dict[int, Client] = {}
        self._buffer = bytearray(RECEIVE_BYTES)
        self._handshaking = 0
        #: TLS failures by reason, such as a certificate not verified (TLS only).
        self.tls_errors: Counter[str] = Counter()

    def __enter__(self) -> LoadGenerator:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close every socket and the epoll object."""
        for client in self._by_fd.values():
            client.sock.close()
            client.state = State.CLOSED
        self._by_fd.clear()
        self._epoll.close()

    # Connecting

    def connect(
        self, count: int, *, sampled: Collection[int] = (), timeout: float = 60.0
    ) -> ConnectOutcome:
        """Connect ``count`` more clients, pipelining their handshakes.

        Args:
            count: Clients to add; their indices follow the existing ones.
            sampled: Indices of clients that decode every frame.
            timeout: Seconds for the whole batch; handshakes unanswered by
                then are given up.
        """
        outcome = ConnectOutcome()
        started = time.monotonic()
        deadline_ns = time.monotonic_ns() + int(timeout * 1e9)
        first = len(self.clients)
        pending = iter(range(first, first + count))
        exhausted = False
        failures: Counter[str] = Counter()
        while True:
            while not exhausted and self._handshaking < HANDSHAKES_IN_FLIGHT:
                index = next(pending, None)
                if index is None:
                    exhausted = True
                else:
                    self._open(index, index in sampled, failures)
            if exhausted and not self._handshaking:
                break
            if time.monotonic_ns() >= deadline_ns:
                break
            self._poll(MAX_POLL_SECONDS)
        for client in self.clients[first:]:
            if client.state is State.HANDSHAKE:
                self._discard(client)
                outcome.unanswered += 1
            elif client.status == 101:
                outcome.accepted += 1
            elif client.status is not None:
                outcome.refused[client.status] += 1
        outcome.failed.update(failures)
        outcome.not_tried = first + count - len(self.clients)
        outcome.seconds = time.monotonic() - started
        return outcome

    def _open(self, index: int, sampled: bool, failures: Counter[str]) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(CONNECT_TIMEOUT_SECONDS)
        handshake = wire.Handshake.for_client(
            self.host, self.port, wire.client_name(index)
        )
        client = Client(index, sock, handshake)
        self.clients.append(client)
        try:
            sock.connect((self.host, self.port))
            sock.sendall(self._opening(client))
        except OSError as exc:
            failures[type(exc).__name__] += 1
            client.state = State.CLOSED
            sock.close()
            return
        sock.setblocking(False)
        if sampled:
            client.log = (wire.FrameDecoder(), ReceiverLog())
        self._by_fd[client.fd] = client
        self._epoll.register(client.fd, select.EPOLLIN)
        self._handshaking += 1

    def _opening(self, client: Client) -> bytes:
        """The first bytes a new client sends: its upgrade request."""
        return client.handshake.request

    # The event loop

    def run(
        self,
        until_ns: int,
        pacer: Pacer | None = None,
        done: Callable[[], bool] | None = None,
    ) -> bool:
        """Serve every socket until ``until_ns`` or until ``done()`` is true.

        Args:
            until_ns: A ``time.monotonic_ns()`` deadline.
            pacer: Called before each wait to send what is due.
            done: Checked before each wait.

        Returns:
            Whether ``done()`` became true (False: the deadline passed).
        """
        while True:
            now = time.monotonic_ns()
            if done is not None and done():
                return True
            if now >= until_ns:
                return False
            wake = until_ns if pacer is None else min(pacer(now), until_ns)
            timeout = (wake - time.monotonic_ns()) / 1e9
            self._poll(min(max(timeout, 0.0), MAX_POLL_SECONDS))

    def _poll(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds, then handle every ready socket."""
        buffer = self._buffer
        by_fd = self._by_fd
        received = 0
        for fd, mask in self._epoll.poll(timeout, MAX_EVENTS):
            client = by_fd.get(fd)
            if client is None:
                continue
            if mask & select.EPOLLOUT:
                self._flush(client)
            if client.state is not State.OPEN:
                if client.state is State.HANDSHAKE:
                    self._on_handshake_data(client)
                continue
            # The common case, kept inline: drain and count.
            try:
                size = client.sock.recv_into(buffer)
            except BlockingIOError:
                continue
            except OSError:
                size = 0
            if not size:
                self._on_disconnect(client)
                continue
            client.received += size
            received += size
            if client.log is not None:
                self._decode(client, bytes(buffer[:size]))
        self.total_received += received

    def _decode(self, client: Client, data: bytes) -> None:
        assert client.log is not None
        now = time.monotonic_ns()
        decoder, log = client.log
        self.tracker.on_frames(log, decoder.feed(data), now)

    def _on_handshake_data(self, client: Client) -> None:
        try:
            data = client.sock.recv(MAX_HEAD_BYTES)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._discard(client)
            return
        self._on_head_bytes(client, data)

    def _on_head_bytes(self, client: Client, data: bytes) -> None:
        """Take ``data`` of the response; on its end, open or close the client."""
        client.head += data
        head, found, rest = client.head.partition(wire.HEAD_END)
        if not found:
            if len(client.head) > MAX_HEAD_BYTES:
                self._discard(client)
            return
        self._handshaking -= 1
        client.head = b""
        client.status = client.handshake.check_response(head)
        if client.status != 101:
            self._close(client)
            return
        client.state = State.OPEN
        if rest:
            # Frames that came with the response (the join notice, often).
            client.received += len(rest)
            self.total_received += len(rest)
            if client.log is not None:
                self._decode(client, rest)

    def _discard(self, client: Client) -> None:
        """Give up on a handshake: no valid response."""
        self._handshaking -= 1
        client.status = 0
        self._close(client)

    def _on_disconnect(self, client: Client) -> None:
        if not self.closing:
            self.dropped.append(client)
        self._close(client)

    def _close(self, client: Client) -> None:
        client.state = State.CLOSED
        with contextlib.suppress(KeyError, OSError):
            self._epoll.unregister(client.fd)
        self._by_fd.pop(client.fd, None)
        client.sock.close()

    def reset_all(self, every: int = 1) -> None:
        """Reset every ``every``-th open connection at once, as a NAT gateway
        that restarts would: an RST, with no close frame and no FIN."""
        abort = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST
        for client in list(self.open_clients())[::every]:
            client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, abort)
            self._close(client)

    # Sending

    def send(self, client: Client, data: bytes) -> None:
        """Send ``data`` on ``client`` after anything it has not sent yet."""
        if client.state is State.OPEN:
            self._transmit(client, data)

    def _transmit(self, client: Client, data: bytes) -> None:
        """Send wire bytes after anything not sent yet."""
        if client.outgoing:
            client.outgoing += data
            return
        try:
            sent = client.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self._fail(client)
            return
        if sent < len(data):
            client.outgoing = data[sent:]
            self._epoll.modify(client.fd, select.EPOLLIN | select.EPOLLOUT)

    def _flush(self, client: Client) -> None:
        try:
            sent = client.sock.send(client.outgoing)
        except BlockingIOError:
            return
        except OSError:
            self._fail(client)
            return
        client.outgoing = client.outgoing[sent:]
        if not client.outgoing:
            self._epoll.modify(client.fd, select.EPOLLIN)

    def _fail(self, client: Client) -> None:
        """Give the client up: its socket failed."""
        self._on_disconnect(client)

    # Counting

    def open_clients(self) -> Iterator[Client]:
        """The clients still connected."""
        return (client for client in self.clients if client.state is State.OPEN)

    def mark(self) -> None:
        """Take every client's byte count as the baseline of later counts."""
        for client in self.clients:
            client.baseline = client.received

    def received_since_mark(self) -> int:
        """Bytes received by connected clients since :meth:`mark`."""
        return sum(client.received - client.baseline for client in self.open_clients())


class TLSChannel:
    """One client's TLS: an SSL object over two memory buffers.

    TLS becomes a function from bytes to bytes: the event loop feeds
    :attr:`incoming` what the socket read, and sends what :attr:`outgoing`
    holds on the socket as it would plain bytes.
    """

    __slots__ = ("established", "incoming", "outgoing", "read_into", "tls")

    def __init__(self, context: ssl.SSLContext, host: str) -> None:
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_hostname=host)
        #: ``read(size, buffer)``: plaintext into ``buffer``, its length back
        #: (typeshed says bytes, but with a buffer it is a count).
        self.read_into = cast(Callable[[int, bytearray], int], self.tls.read)
        #: Whether the TLS handshake is complete.
        self.established = False

    def handshake(self) -> bytes:
        """Take the handshake as far as it goes; the bytes to send for it.

        Raises:
            ssl.SSLError: The handshake failed (a certificate not verified).
        """
        try:
            self.tls.do_handshake()
        except ssl.SSLWantReadError:
            pass
        else:
            self.established = True
        return self.outgoing.read()

    def encrypt(self, data: bytes) -> bytes:
        """The records that carry ``data``."""
        self.tls.write(data)
        return self.outgoing.read()

    def decrypt(self, data: bytes) -> bytes:
        """Feed ``data``; the plaintext of every complete record so far.

        For the handshake's response only: the event loop decrypts into a
        shared buffer instead.

        Raises:
            ssl.SSLError: A record did not decrypt.
        """
        self.incoming.write(data)
        chunks = []
        while self.incoming.pending:
            try:
                chunk = self.tls.read(RECEIVE_BYTES)
            except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


class TLSLoadGenerator(LoadGenerator):
    """:class:`LoadGenerator` whose clients speak TLS, verified with ``context``.

    Its own loop (:meth:`_poll`) decrypts into a second shared buffer and
    counts plaintext bytes, so counts and checks are the plain generator's.
    """

    def __init__(self, host: str, port: int, context: ssl.SSLContext) -> None:
        super().__init__(host, port)
        self.context = context
        self._tls_context = context
        self._view = memoryview(self._buffer)
        self._plain = bytearray(RECEIVE_BYTES)

    def _opening(self, client: Client) -> bytes:
        """The ClientHello: the upgrade request waits for the handshake."""
        client.tls = TLSChannel(self._tls_context, self.host)
        return client.tls.handshake()

    def _poll(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds, then handle every ready socket."""
        buffer = self._buffer
        view = self._view
        plain = self._plain
        by_fd = self._by_fd
        received = 0
        for fd, mask in self._epoll.poll(timeout, MAX_EVENTS):
            client = by_fd.get(fd)
            if client is None:
                continue
            if mask & select.EPOLLOUT:
                self._flush(client)
            if client.state is not State.OPEN:
                if client.state is State.HANDSHAKE:
                    self._on_handshake_data(client)
                continue
            try:
                size = client.sock.recv_into(buffer)
            except BlockingIOError:
                continue
            except OSError:
                size = 0
            if not size:
                self._on_disconnect(client)
                continue
            channel = client.tls
            assert channel is not None
            incoming = channel.incoming
            incoming.write(view[:size])
            read_into = channel.read_into
            # One record per read; what is left in ``incoming`` once they
            # are out is a partial record (want read) or nothing at all,
            # which spares an exception per read in the common case.
            try:
                while incoming.pending:
                    count = read_into(RECEIVE_BYTES, plain)
                    if not count:
                        break
                    client.received += count
                    received += count
                    if client.log is not None:
                        self._decode(client, bytes(plain[:count]))
            except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                pass  # zero return: the close_notify; the end of stream follows
            except ssl.SSLError as exc:
                self._tls_failed(client, exc)
        self.total_received += received

    def _on_handshake_data(self, client: Client) -> None:
        """The TLS handshake, then the upgrade request and response through it."""
        try:
            data = client.sock.recv(MAX_HEAD_BYTES)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._discard(client)
            return
        channel = client.tls
        assert channel is not None
        try:
            if not channel.established:
                channel.incoming.write(data)
                data = b""
                out = channel.handshake()
                if channel.established:
                    # The client's Finished and the request: one write.
                    out += channel.encrypt(client.handshake.request)
                if out:
                    self._transmit(client, out)
                if not channel.established:
                    return
            plaintext = channel.decrypt(data)
        except ssl.SSLError as exc:
            self._tls_failed(client, exc)
            return
        if plaintext and client.state is State.HANDSHAKE:
            self._on_head_bytes(client, plaintext)

    def _tls_failed(self, client: Client, exc: ssl.SSLError) -> None:
        self.tls_errors[exc.reason or type(exc).__name__] += 1
        self._fail(client)

    def _fail(self, client: Client) -> None:
        """Give the client up: a failed handshake, or a drop once open."""
        if client.state is State.HANDSHAKE:
            self._discard(client)
        elif client.state is State.OPEN:
            self._on_disconnect(client)

    def send(self, client: Client, data: bytes) -> None:
        """Encrypt ``data`` now, so records keep their order; send them."""
        if client.state is not State.OPEN:
            return
        channel = client.tls
        assert channel is not None
        try:
            records = channel.encrypt(data)
        except ssl.SSLError as exc:
            self._tls_failed(client, exc)
            return
        self._transmit(client, records)


def join_notice_bytes(members: int) -> int:
    """Bytes of join notices a room of ``members`` sends in all.

    Whatever order they join in, the k-th member to join receives its own
    notice and those of everyone after it: members * (members + 1) / 2.
    """
    return members * (members + 1) // 2 * wire.JOIN_FRAME_BYTES


def cpu_seconds() -> float:
    """CPU time the generator (this process) has used, user and system."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
