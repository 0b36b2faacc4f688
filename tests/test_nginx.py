"""A real nginx in front of the server, configured as the README says.

nginx listens on 127.0.0.1 and is the server's one trusted proxy; the
clients behind it connect from 127.0.0.2 (Linux routes all of 127/8 to the
loopback interface), so the server can tell the client's address, which it
must use, from nginx's, which it must not.
"""

from __future__ import annotations

import collections
import contextlib
import ipaddress
import logging
import os
import socket
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Event,
    Message,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)

from broadcast_sync.clientconn import HandshakeRejected
from broadcast_sync.server import BroadcastServer
from tests import nginxproc
from tests.conftest import UNIT, connect, receive_text, run_server
from tests.nginxproc import MISSING_MESSAGE, NginxProcess, require_nginx
from tests.wsclient import ChatClient

#: How long an answer that must come may take.
TIMEOUT = 5 * UNIT
#: nginx's address, the one the server trusts.
PROXY_NETWORK = ipaddress.ip_network("127.0.0.1/32")
#: The client's own address: on the loopback interface, but not nginx's.
CLIENT_ADDRESS = "127.0.0.2"
#: What a client writes into the headers it sends, to pass for someone else.
SPOOFED = "6.6.6.6"
#: For the heartbeat tests: nginx's proxy_read_timeout, and a ping interval
#: well under it, as 54 s (--ping-interval) is under the README's 120 s.
SHORT_PROXY_TIMEOUT = 0.5 * UNIT
FAST_PING = SHORT_PROXY_TIMEOUT / 5
#: The same timeout, as nginx writes it.
NGINX_SHORT_TIMEOUT = f"{round(1000 * SHORT_PROXY_TIMEOUT)}ms"


@contextlib.contextmanager
def nginx_in_front(server: BroadcastServer, **options: Any) -> Iterator[NginxProcess]:
    """nginx proxying to ``server``; a test fails with one line without it."""
    try:
        require_nginx()
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    with NginxProcess(
        server.port, start_timeout=10 * UNIT, stop_timeout=5 * UNIT, **options
    ) as nginx:
        yield nginx


@pytest.fixture(autouse=True)
def no_nginx_left_behind() -> Iterator[None]:
    """Fail a test that leaves an nginx of ours running."""
    yield
    assert not nginx_children(), "nginx left running"


@pytest.fixture
def proxied(
    caplog: pytest.LogCaptureFixture,
) -> Iterator[tuple[BroadcastServer, NginxProcess]]:
    """A server that trusts nginx's address, and nginx in front of it; the
    server's log captured from INFO up."""
    caplog.set_level(logging.INFO, logger="broadcast_sync")
    with (
        run_server(trusted_proxies=(PROXY_NETWORK,)) as server,
        nginx_in_front(server) as nginx,
    ):
        yield server, nginx


class ProxiedClient:
    """A WebSocket client from its own loopback address, with the headers of
    its choice: a client behind nginx.

    (``tests/rawclient.py`` always connects from 127.0.0.1 and asks for a
    username; this one binds its source address and may ask for none.)
    It answers pings, and counts them.

    Raises:
        HandshakeRejected: The handshake was refused.
    """

    def __init__(
        self,
        port: int,
        *,
        query: str = "",
        headers: Sequence[tuple[str, str]] = (),
        source: str = CLIENT_ADDRESS,
    ) -> None:
        self.sock = socket.create_connection(
            (nginxproc.HOST, port), TIMEOUT, source_address=(source, 0)
        )
        self._connection = WSConnection(ConnectionType.CLIENT)
        self._events: collections.deque[Event] = collections.deque()
        self._text_parts: list[str] = []
        #: Pings answered so far: the server's heartbeat, through nginx.
        self.pings = 0
        try:
            self._handshake(port, query, headers)
        except BaseException:
            self.sock.close()
            raise

    def _handshake(
        self, port: int, query: str, headers: Sequence[tuple[str, str]]
    ) -> None:
        request = Request(
            host=f"{nginxproc.HOST}:{port}",
            target=f"/ws{query}",
            extra_headers=[(name.encode(), value.encode()) for name, value in headers],
        )
        self.sock.sendall(self._connection.send(request))
        deadline = time.monotonic() + TIMEOUT
        status, body = 0, b""
        while True:
            event = self._next_event(deadline)
            if isinstance(event, AcceptConnection):
                return
            if isinstance(event, RejectConnection):
                status = event.status_code
                if not event.has_body:
                    raise HandshakeRejected(status, "")
            elif isinstance(event, RejectData):
                body += event.data
                if event.body_finished:
                    raise HandshakeRejected(status, body.decode().strip())

    def __enter__(self) -> ProxiedClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def send_text(self, text: str) -> None:
        """Send one text message."""
        self.sock.sendall(self._connection.send(Message(data=text)))

    def receive_text(self) -> str:
        """The next text message, whole; pings are answered on the way."""
        deadline = time.monotonic() + TIMEOUT
        while True:
            event = self._next_event(deadline)
            if isinstance(event, TextMessage):
                self._text_parts.append(event.data)
                if event.message_finished:
                    text = "".join(self._text_parts)
                    self._text_parts.clear()
                    return text
            else:
                assert isinstance(event, Ping), f"expected a message: {event}"

    def receive_pings(self, count: int, timeout: float) -> None:
        """Answer pings until ``count`` came, within ``timeout``."""
        deadline = time.monotonic() + timeout
        while self.pings < count:
            event = self._next_event(deadline)
            assert isinstance(event, Ping), f"expected a ping: {event}"

    def assert_closed_by_peer(self, timeout: float) -> None:
        """nginx (or the server) must close the TCP connection in time."""
        deadline = time.monotonic() + timeout
        while self._receive(deadline, "TCP close"):
            pass

    def close(self) -> None:
        """Close cleanly if the connection is open, then close the socket."""
        with contextlib.suppress(OSError, AssertionError):
            if self._connection.state is ConnectionState.OPEN:
                self.sock.sendall(self._connection.send(CloseConnection(code=1000)))
                deadline = time.monotonic() + TIMEOUT
                while not isinstance(self._next_event(deadline), CloseConnection):
                    pass
        self.sock.close()

    def _next_event(self, deadline: float) -> Event:
        """The next event from the server; a ping is answered before it is
        returned."""
        while not self._events:
            data = self._receive(deadline, "frame from the server")
            assert data, "the connection was closed"
            self._connection.receive_data(data)
            self._events.extend(self._connection.events())
        event = self._events.popleft()
        if isinstance(event, Ping):
            self.pings += 1
            self.sock.sendall(self._connection.send(event.response()))
        return event

    def _receive(self, deadline: float, expected: str) -> bytes:
        remaining = deadline - time.monotonic()
        if remaining > 0:
            self.sock.settimeout(remaining)
            with contextlib.suppress(TimeoutError):
                return self.sock.recv(65536)
        pytest.fail(f"no {expected} in time")


def server_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    """What the server (any of its modules) logged."""
    return [
        record.getMessage()
        for record in caplog.records
        if record.name.startswith("broadcast_sync.")
    ]


# The client's address


def test_client_is_named_for_its_own_address(
    proxied: tuple[BroadcastServer, NginxProcess],
) -> None:
    """Without a username, a client behind nginx is named for its own
    address, not nginx's."""
    _, nginx = proxied
    with ProxiedClient(nginx.port) as client:
        assert client.receive_text() == f"Server: {CLIENT_ADDRESS} has joined the chat"


def test_arrival_is_logged_with_the_client_address(
    proxied: tuple[BroadcastServer, NginxProcess], caplog: pytest.LogCaptureFixture
) -> None:
    """The server logs a client behind nginx with the client's own address."""
    _, nginx = proxied
    with ProxiedClient(nginx.port, query="?username=alice") as client:
        assert client.receive_text() == "Server: alice has joined the chat"
    joined = [line for line in server_lines(caplog) if " joined" in line]
    assert len(joined) == 1, server_lines(caplog)
    assert CLIENT_ADDRESS in joined[0], joined


@pytest.mark.parametrize(
    "header",
    [("X-Forwarded-For", SPOOFED), ("Forwarded", f"for={SPOOFED}")],
    ids=["X-Forwarded-For", "Forwarded"],
)
def test_spoofed_headers_are_not_taken(
    proxied: tuple[BroadcastServer, NginxProcess],
    caplog: pytest.LogCaptureFixture,
    header: tuple[str, str],
) -> None:
    """An address a client writes in its own forwarding headers is ignored:
    nginx appends the real one to X-Forwarded-For, and drops Forwarded."""
    _, nginx = proxied
    with ProxiedClient(nginx.port, headers=[header]) as client:
        assert client.receive_text() == f"Server: {CLIENT_ADDRESS} has joined the chat"
    assert not any(SPOOFED in line for line in server_lines(caplog))


def test_refusal_is_logged_with_the_client_address(
    proxied: tuple[BroadcastServer, NginxProcess], caplog: pytest.LogCaptureFixture
) -> None:
    """A handshake refused behind nginx is logged with the client's address."""
    _, nginx = proxied
    with pytest.raises(HandshakeRejected) as refused:
        ProxiedClient(nginx.port, headers=[("Origin", "https://evil.example")])
    assert refused.value.status == 403
    lines = [line for line in server_lines(caplog) if "403" in line]
    assert lines, server_lines(caplog)
    assert all(CLIENT_ADDRESS in line for line in lines), lines


def test_untrusted_peer_headers_are_ignored() -> None:
    """Straight to the server, from an address it does not trust, forwarding
    headers count for nothing."""
    with (
        run_server(trusted_proxies=(PROXY_NETWORK,)) as server,
        ProxiedClient(
            server.port,
            headers=[("X-Forwarded-For", SPOOFED), ("Forwarded", f"for={SPOOFED}")],
        ) as client,
    ):
        assert client.receive_text() == f"Server: {CLIENT_ADDRESS} has joined the chat"


# Through nginx, as a user would


def test_page_loads_through_nginx(
    proxied: tuple[BroadcastServer, NginxProcess],
) -> None:
    """The chat page at / comes through nginx."""
    _, nginx = proxied
    with urllib.request.urlopen(nginx.url(), timeout=TIMEOUT) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/html")
        assert b"<html" in response.read().lower()


@pytest.mark.parametrize(
    ("scheme", "headers", "accepted"),
    [
        pytest.param("http", [], True, id="same origin"),
        pytest.param("https", [], False, id="https page, http proxy"),
        pytest.param(
            "https",
            [("X-Forwarded-Proto", "https")],
            False,
            id="client's X-Forwarded-Proto replaced",
        ),
    ],
)
def test_origin_check_through_nginx(
    proxied: tuple[BroadcastServer, NginxProcess],
    scheme: str,
    headers: list[tuple[str, str]],
    accepted: bool,
) -> None:
    """A page loaded from nginx may open the WebSocket: nginx passes on the
    Host the browser asked for, and the scheme it served (``http`` here),
    which the origin check compares with the page's Origin."""
    _, nginx = proxied
    origin = nginx.url(scheme).rstrip("/")
    fields = [("Origin", origin), *headers]
    if not accepted:
        with pytest.raises(HandshakeRejected) as refused:
            ProxiedClient(nginx.port, query="?username=web", headers=fields)
        assert refused.value.status == 403
        return
    with ProxiedClient(nginx.port, query="?username=web", headers=fields) as client:
        assert client.receive_text() == "Server: web has joined the chat"


def test_messages_flow_both_ways_through_nginx(
    proxied: tuple[BroadcastServer, NginxProcess],
) -> None:
    """A client behind nginx and one connected directly chat both ways."""
    server, nginx = proxied
    with ProxiedClient(nginx.port, query="?username=alice") as alice:
        assert alice.receive_text() == "Server: alice has joined the chat"
        bob: ChatClient = connect(server, "bob")
        try:
            assert receive_text(bob) == "Server: bob has joined the chat"
            assert alice.receive_text() == "Server: bob has joined the chat"
            alice.send_text("hi bob")
            assert receive_text(bob) == "alice: hi bob"
            assert alice.receive_text() == "alice: hi bob"
            bob.send("hello alice")
            assert alice.receive_text() == "bob: hello alice"
            assert receive_text(bob) == "bob: hello alice"
        finally:
            bob.close()


def test_chat_client_through_nginx(
    proxied: tuple[BroadcastServer, NginxProcess],
) -> None:
    """The tests' usual client works through nginx too."""
    _, nginx = proxied
    ws = ChatClient.connect(nginx.url("ws", "/ws?username=carol"))
    try:
        assert receive_text(ws) == "Server: carol has joined the chat"
        ws.send("echo")
        assert receive_text(ws) == "carol: echo"
    finally:
        ws.close()


# Timeouts: the server's pings keep an idle chat open


def test_pings_keep_an_idle_connection_open() -> None:
    """nginx cuts a connection silent for proxy_read_timeout; pings more
    often than that keep an idle chat open."""
    with (
        run_server(trusted_proxies=(PROXY_NETWORK,), ping_interval=FAST_PING) as server,
        nginx_in_front(server, proxy_timeout=NGINX_SHORT_TIMEOUT) as nginx,
        ProxiedClient(nginx.port, query="?username=idle") as client,
    ):
        assert client.receive_text() == "Server: idle has joined the chat"
        # Ten pings: twice nginx's timeout, with no message either way.
        client.receive_pings(10, timeout=10 * FAST_PING + TIMEOUT)
        client.send_text("still here")
        assert client.receive_text() == "idle: still here"


def test_without_pings_nginx_cuts_an_idle_connection() -> None:
    """The control: with pings rarer than proxy_read_timeout, nginx closes
    the idle connection, as the README warns."""
    with (
        run_server(trusted_proxies=(PROXY_NETWORK,)) as server,
        nginx_in_front(server, proxy_timeout=NGINX_SHORT_TIMEOUT) as nginx,
        ProxiedClient(nginx.port, query="?username=idle") as client,
    ):
        assert client.receive_text() == "Server: idle has joined the chat"
        client.assert_closed_by_peer(timeout=TIMEOUT)
        assert client.pings == 0


# The nginx helper itself


def nginx_children() -> list[int]:
    """The ids of this process's nginx children (masters), reaped or not."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # It exited while we looked.
            continue
        command, _, rest = text.partition(" (")[2].rpartition(") ")
        if command == "nginx" and int(rest.split()[1]) == os.getpid():
            children.append(int(stat.parent.name))
    return children


def nginx_family(master: int) -> list[int]:
    """The ids of the processes in ``master``'s process group."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # It exited while we looked.
            continue
        fields = text.rpartition(")")[2].split()
        if int(fields[2]) == master:  # pgrp
            members.append(int(stat.parent.name))
    return members


def test_stop_leaves_no_nginx_process() -> None:
    """Stopping nginx ends its master and its workers, and frees the port."""
    with run_server() as server, nginx_in_front(server) as nginx:
        master, port = nginx.pid, nginx.port
        assert len(nginx_family(master)) >= 2  # A master and its worker.
    assert nginx_family(master) == []
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((nginxproc.HOST, port), TIMEOUT).close()


def test_a_port_taken_before_nginx_binds_it_is_replaced(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Losing the race for the free port makes the start try another port."""
    free_port = nginxproc._free_port
    with socket.socket() as holder:
        holder.bind((nginxproc.HOST, 0))
        holder.listen()
        taken: int = holder.getsockname()[1]
        ports = [taken]
        monkeypatch.setattr(
            nginxproc, "_free_port", lambda: ports.pop() if ports else free_port()
        )
        with run_server() as server, nginx_in_front(server) as nginx:
            assert nginx.port != taken
            with urllib.request.urlopen(nginx.url(), timeout=TIMEOUT) as response:
                assert response.status == 200


def test_missing_nginx_fails_with_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Without nginx, a test fails (never skips) with one line that names the
    package to install."""
    monkeypatch.setattr(nginxproc, "NGINX", tmp_path / "nginx")
    with pytest.raises(RuntimeError) as raised:
        NginxProcess(1).start()
    assert str(raised.value) == MISSING_MESSAGE
    with (
        run_server() as server,
        pytest.raises(pytest.fail.Exception) as failed,
        nginx_in_front(server),
    ):
        pass  # pragma: no cover - never reached
    assert (failed.value.msg, failed.value.pytrace) == (MISSING_MESSAGE, False)
    assert MISSING_MESSAGE == (
        "/usr/sbin/nginx is missing: install the Debian package nginx "
        "(apt-get install nginx)"
    )
