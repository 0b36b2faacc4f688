"""Shared helpers: a real server on an ephemeral port, and real clients."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import simple_websocket

from broadcast_sync.config import ServerConfig
from broadcast_sync.server import BroadcastServer
from tests.redisproc import RedisProcess
from tests.wsclient import ChatClient

#: Seconds; every timeout in the tests is a multiple of it. Raise it with
#: BROADCAST_TEST_UNIT on a slow machine.
UNIT = float(os.environ.get("BROADCAST_TEST_UNIT", "1"))

#: The limits that every welcome of a server with the default options gives.
WELCOME_LIMITS = {
    "max_message_chars": ServerConfig.max_message_chars,
    "max_message_bytes": ServerConfig.max_message_bytes,
}

#: Names of the server's threads, which must all be gone after a test.
SERVER_THREAD_PREFIXES = (
    "reader ",
    "writer ",
    "dispatcher",
    "heartbeat",
    "acceptor",
    "redis reader",
)


@contextlib.contextmanager
def run_server(**options: Any) -> Iterator[BroadcastServer]:
    """Run a server on 127.0.0.1 and an ephemeral port; always stop it."""
    config = ServerConfig(host="127.0.0.1", port=0, **options)
    server = BroadcastServer(config)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def server() -> Iterator[BroadcastServer]:
    """A server with the default options."""
    with run_server() as running:
        yield running


@pytest.fixture
def redis_server() -> Iterator[RedisProcess]:
    """A real, empty redis-server of this test's own, always stopped after it."""
    with RedisProcess(start_timeout=10 * UNIT, stop_timeout=5 * UNIT) as redis:
        yield redis


@pytest.fixture(autouse=True)
def no_threads_left_behind() -> Iterator[None]:
    """Fail a test that leaves a server thread running."""
    yield
    left = [
        thread.name
        for thread in threading.enumerate()
        if thread.name.startswith(SERVER_THREAD_PREFIXES)
    ]
    assert not left, f"threads left running: {left}"


def connect(server: BroadcastServer, username: str | None = None) -> ChatClient:
    """Connect a WebSocket client; ``None`` sends no username."""
    query = "" if username is None else f"?username={username}"
    client: ChatClient = ChatClient.connect(f"ws://127.0.0.1:{server.port}/ws{query}")
    return client


def receive(ws: simple_websocket.Client, timeout: float = 5 * UNIT) -> str | bytes:
    """The next message, or fail after ``timeout`` seconds."""
    message = ws.receive(timeout=timeout)
    assert message is not None, f"no message within {timeout} s"
    return message  # type: ignore[no-any-return]


def join(server: BroadcastServer, username: str) -> ChatClient:
    """Connect and consume the client's own join notice."""
    ws = connect(server, username)
    notice = receive(ws)
    assert isinstance(notice, str)
    assert notice.endswith(" has joined the chat"), notice
    return ws


def http_exchange(port: int, request: bytes, timeout: float = 5 * UNIT) -> bytes:
    """Send raw ``request`` bytes and return everything the server answers."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def receive_text(ws: ChatClient, timeout: float = 5 * UNIT) -> str:
    """The next message, which must be text and come within ``timeout``."""
    message = receive(ws, timeout)
    assert isinstance(message, str), message
    return message


def join_all(server: BroadcastServer, names: Sequence[str]) -> list[ChatClient]:
    """Join ``names`` in turn; each client has read every join notice so far."""
    clients: list[ChatClient] = []
    for name in names:
        newcomer = join(server, name)
        for client in clients:
            assert receive_text(client) == f"Server: {name} has joined the chat"
        clients.append(newcomer)
    return clients


#: How often wait_until polls: for state that announces no change of its own
#: (a log file, Redis, /proc).
POLL_SECONDS = 0.02


def wait_until(
    condition: Callable[[], bool], what: str, timeout: float = 5 * UNIT
) -> None:
    """Poll ``condition`` until it holds; fail, saying ``what``, after
    ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not {what} within {timeout:g} s"
        time.sleep(POLL_SECONDS)


def run_concurrently(tasks: Sequence[Callable[[], None]]) -> None:
    """Run ``tasks`` in threads started together; re-raise their errors."""
    start = threading.Barrier(len(tasks))

    def started(task: Callable[[], None]) -> None:
        start.wait(timeout=5 * UNIT)
        task()

    with ThreadPoolExecutor(len(tasks)) as pool:
        futures = [pool.submit(started, task) for task in tasks]
        for future in futures:
            future.result()
