"""Graceful shutdown: accepted messages delivered, then 1001, then every thread joined.

The first tests run the real command in a child process and stop it with a
signal; the others call :meth:`BroadcastServer.stop` in this process.
"""

from __future__ import annotations

import collections
import contextlib
import pathlib
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
import simple_websocket
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Event,
    Ping,
    Pong,
    Request,
    TextMessage,
)

from broadcast_sync.server import BroadcastServer
from tests.conftest import SERVER_THREAD_PREFIXES, UNIT, join, receive, run_server
from tests.wsclient import ChatClient

#: The directory holding the ``broadcast_sync`` package.
PROJECT_ROOT = pathlib.Path(__file__).resolve().parent.parent
#: The reason the server gives in its close frame when it shuts down.
SHUTDOWN_REASON = "server shutting down"


class RawClient:
    """A WebSocket client on wsproto that shows every event, in order.

    It can prove that the server has read what it sent: the server reads a
    client's frames in order and answers a ping at once, so when the pong
    arrives, every message sent before the ping is in the dispatcher's hands.
    """

    def __init__(self, port: int, username: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5 * UNIT)
        self.ws = WSConnection(ConnectionType.CLIENT)
        #: Every text message received, in order.
        self.texts: list[str] = []
        self._events: collections.deque[Event] = collections.deque()
        target = f"/ws?username={username}"
        self._send(Request(host=f"127.0.0.1:{port}", target=target))
        accept = self._next_event()
        assert isinstance(accept, AcceptConnection), accept
        assert self._next_event() == TextMessage(
            f"Server: {username} has joined the chat"
        )

    def send_text(self, text: str) -> None:
        """Send a chat message."""
        self._send(TextMessage(text))

    def sync(self) -> None:
        """Return once the server has read everything sent so far."""
        self._send(Ping(b"sync"))
        while (event := self._next_event()) != Pong(b"sync"):
            self._keep(event)

    def read_until_close(self) -> CloseConnection:
        """Read up to the server's close frame, answer it and hang up."""
        while not isinstance(event := self._next_event(), CloseConnection):
            self._keep(event)
        self._send(event.response())
        self.sock.close()
        return event

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()

    def _keep(self, event: Event) -> None:
        assert isinstance(event, TextMessage), event
        self.texts.append(event.data)

    def _send(self, event: Event) -> None:
        self.sock.sendall(self.ws.send(event))

    def _next_event(self) -> Event:
        while not self._events:
            data = self.sock.recv(65536)
            self.ws.receive_data(data or None)
            self._events.extend(self.ws.events())
            if not data and not self._events:
                raise AssertionError("connection closed with no close frame")
        return self._events.popleft()


@contextlib.contextmanager
def raw_client(port: int, username: str) -> Iterator[RawClient]:
    """A joined :class:`RawClient` whose socket is always closed."""
    client = RawClient(port, username)
    try:
        yield client
    finally:
        client.close()


@contextlib.contextmanager
def chat_client(port: int, username: str) -> Iterator[ChatClient]:
    """A joined :class:`ChatClient` that is always closed."""
    client: ChatClient = ChatClient.connect(
        f"ws://127.0.0.1:{port}/ws?username={username}"
    )
    try:
        assert receive(client) == f"Server: {username} has joined the chat"
        yield client
    finally:
        client.close()


def assert_closed_going_away(client: ChatClient) -> None:
    """The client has read every message and the server closed it with 1001."""
    with pytest.raises(simple_websocket.ConnectionClosed) as caught:
        client.receive(timeout=5 * UNIT)
    assert (caught.value.reason, caught.value.message) == (1001, SHUTDOWN_REASON)


def server_threads() -> list[str]:
    """The names of the server threads still running."""
    return [
        thread.name
        for thread in threading.enumerate()
        if thread.name.startswith(SERVER_THREAD_PREFIXES)
    ]


# The real process, stopped by a signal.


@contextlib.contextmanager
def server_process(log: pathlib.Path) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """Run ``python -m broadcast_sync start`` on a free port; always end it.

    Yields the process and its port, read from its first line of output. Its
    log goes to ``log``.
    """
    command = [sys.executable, "-m", "broadcast_sync", "start"]
    command += ["--host", "127.0.0.1", "--port", "0", "--log-level", "debug"]
    with log.open("w") as stderr:
        process = subprocess.Popen(
            command, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=stderr, text=True
        )
    try:
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], 10 * UNIT)
        line = process.stdout.readline() if ready else ""
        match = re.fullmatch(r"Server started on port (\d+)\n", line)
        assert match, f"unexpected first line {line!r}; log:\n{log.read_text()}"
        yield process, int(match[1])
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        assert process.stdout is not None
        process.stdout.close()


@pytest.mark.parametrize(
    "signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"]
)
def test_signal_stops_the_process_gracefully(
    signum: signal.Signals, tmp_path: pathlib.Path
) -> None:
    """On SIGTERM or SIGINT the server delivers, closes with 1001 and exits 0."""
    log = tmp_path / "server.log"
    with server_process(log) as (process, port), raw_client(port, "alice") as alice:
        with chat_client(port, "bob") as bob:
            alice.send_text("hello")
            alice.sync()
            process.send_signal(signum)

            close = alice.read_until_close()
            assert (close.code, close.reason) == (1001, SHUTDOWN_REASON)
            assert alice.texts == ["Server: bob has joined the chat", "alice: hello"]
            assert receive(bob) == "alice: hello"
            assert_closed_going_away(bob)
        try:
            status = process.wait(10 * UNIT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running 10 s after {signum.name}")
        assert status == 0, log.read_text()
    assert "stopped" in log.read_text()


# In this process: BroadcastServer.stop().


def test_stop_closes_every_client_with_1001_and_joins_threads() -> None:
    """stop() sends 1001 to every client, then joins every server thread."""
    with run_server() as server:
        clients = [join(server, name) for name in ("alice", "bob", "carol")]
        try:
            started = time.monotonic()
            server.stop()
            elapsed = time.monotonic() - started
            assert server_threads() == []
            # Clients that hang up at once do not make stop() wait.
            assert elapsed < server.config.close_timeout
            alice, bob = clients[:2]
            assert receive(alice) == "Server: bob has joined the chat"
            for client in (alice, bob):
                assert receive(client) == "Server: carol has joined the chat"
            for client in clients:
                assert_closed_going_away(client)
                assert client.close_reason == 1001
        finally:
            for client in clients:
                client.close()


def test_message_accepted_just_before_stop_arrives_before_1001() -> None:
    """A message the server read before stop() reaches everybody, then 1001."""
    # The broadcast of "last words" waits for the batch window, so stop()
    # most likely comes while it is still in the dispatcher's inbox.
    with run_server(batch_window=0.3 * UNIT) as server:
        with (
            raw_client(server.port, "alice") as alice,
            chat_client(server.port, "bob") as bob,
        ):
            alice.send_text("last words")
            alice.sync()
            stopper = threading.Thread(target=server.stop, name="test stopper")
            stopper.start()
            try:
                close = alice.read_until_close()
                assert close.code == 1001
                assert alice.texts == [
                    "Server: bob has joined the chat",
                    "alice: last words",
                ]
                assert receive(bob) == "alice: last words"
                assert_closed_going_away(bob)
            finally:
                stopper.join(10 * UNIT)
            assert not stopper.is_alive()
        assert server_threads() == []


def test_client_ignoring_the_close_is_cut_after_close_timeout() -> None:
    """stop() waits close_timeout for a client's answer, then cuts it."""
    close_timeout = 0.3 * UNIT
    with (
        run_server(close_timeout=close_timeout) as server,
        raw_client(server.port, "alice") as alice,
    ):
        started = time.monotonic()
        server.stop()
        elapsed = time.monotonic() - started
        assert close_timeout <= elapsed < close_timeout + 2 * UNIT
        assert server_threads() == []
        # The close frame was sent before the cut.
        close = alice.read_until_close()
        assert (close.code, close.reason) == (1001, SHUTDOWN_REASON)


def test_handshake_finishing_during_shutdown_is_503(server: BroadcastServer) -> None:
    """A handshake completed after stop() began is refused with 503."""
    request = (
        b"GET /ws?username=late HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", server.port), 5 * UNIT) as late:
        late.sendall(request[:30])
        # The acceptor takes connections in order: once alice is in, the
        # late connection has its thread, waiting for the rest.
        with chat_client(server.port, "alice") as alice:
            stopper = threading.Thread(target=server.stop, name="test stopper")
            stopper.start()
            try:
                assert_closed_going_away(alice)  # so stop() has begun
                late.sendall(request[30:])
                response = b"".join(iter(lambda: late.recv(4096), b""))
            finally:
                stopper.join(10 * UNIT)
            assert not stopper.is_alive()
    assert response.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert response.endswith(b"\r\n\r\nserver shutting down\n")
