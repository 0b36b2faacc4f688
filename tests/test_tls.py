"""TLS: wss:// and https:// on real servers, with certificates made at test time.

The server runs with a certificate of the test CA (``tests/certs.py``). The
terminal client runs as a process, as a user runs it, and chats with two
independent clients over TLS: websockets' sync client, and the tests'
ChatClient (simple-websocket). Bad certificates, clients that speak the
wrong protocol to a port, and clients that never finish the TLS handshake
each fail cleanly, while the server keeps serving the others.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import logging
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect

from broadcast_sync.chatlink import NOT_RESUMED, RESUMED
from broadcast_sync.config import Mode
from broadcast_sync.metrics import Disconnect
from tests.certs import (  # noqa: F401
    KEY_PASSWORD,
    CertFiles,
    Certificates,
    certs_fixture,
)
from tests.conftest import UNIT, http_exchange, receive_text, run_server, wait_until
from tests.rawclient import SLOW_LINK, new_key, upgrade_request
from tests.serverproc import ServerProcess
from tests.test_client import (
    PROCESS_TIMEOUT,
    REPO,
    TUNED_LAUNCHER,
    PipedClient,
    client_env,
    server_on,
)
from tests.test_slow_clients import (
    flood,
    lockstep,
    slow_options,
)
from tests.test_slow_clients import read_until as read_messages_until
from tests.wsclient import ChatClient

#: How long a message may take to cross the server.
MESSAGE_TIMEOUT = 5 * UNIT
#: The handshake timeout of the servers that must drop silent clients: short,
#: so that the tests are; the slack is what a loaded machine may add.
SHORT_HANDSHAKE = 0.5 * UNIT
DROP_SLACK = 2 * UNIT
#: The environment variable that holds the encrypted key's password.
PASSWORD_VARIABLE = "BROADCAST_TEST_KEY_PASSWORD"


def tls_options(files: CertFiles, **options: Any) -> dict[str, Any]:
    """Server options for TLS with ``files``, and ``options``."""
    return {"certfile": str(files.cert), "keyfile": str(files.key), **options}


def trusting(ca: Path) -> ssl.SSLContext:
    """A client context that trusts ``ca`` alone."""
    return ssl.create_default_context(cafile=str(ca))


def wss_url(port: int, host: str = "127.0.0.1") -> str:
    """The URL of the chat of the local server on ``port``, over TLS."""
    return f"wss://{host}:{port}/ws"


@contextlib.contextmanager
def wss_client(port: int, username: str, ca: Path) -> Iterator[ClientConnection]:
    """A websockets client over TLS, trusting ``ca``; always closed."""
    with ws_connect(
        f"{wss_url(port)}?username={username}",
        ssl=trusting(ca),
        open_timeout=MESSAGE_TIMEOUT,
        close_timeout=MESSAGE_TIMEOUT,
    ) as ws:
        yield ws


def ws_receive(ws: ClientConnection) -> str | bytes:
    """The next message of a websockets client, within the timeout."""
    return ws.recv(timeout=MESSAGE_TIMEOUT)


@contextlib.contextmanager
def wss_join(port: int, username: str, ca: Path) -> Iterator[ClientConnection]:
    """A websockets client over TLS that has read its own join notice."""
    with wss_client(port, username, ca) as ws:
        assert ws_receive(ws) == f"Server: {username} has joined the chat"
        yield ws


def connect_args(url: str, *options: str, username: str = "alice") -> list[str]:
    """The arguments of ``python -m broadcast_sync connect --url``."""
    return ["connect", "--url", url, *options, "--username", username]


@contextlib.contextmanager
def url_client(
    url: str, *options: str, username: str = "alice", settings: str | None = None
) -> Iterator[PipedClient]:
    """The terminal client given ``--url url``, its input a pipe the test
    keeps open; always killed afterwards. ``settings`` change the chat
    link's constants, as in test_client.py."""
    command = ["-m", "broadcast_sync"]
    if settings is not None:
        command = ["-c", TUNED_LAUNCHER, settings]
    client = PipedClient(
        [*command, *connect_args(url, *options, username=username)], client_env()
    )
    try:
        yield client
    finally:
        client.kill()


def run_url_client(
    url: str, *options: str, text: str = "", username: str = "alice"
) -> subprocess.CompletedProcess[str]:
    """Run the terminal client given ``--url url``, with ``text`` as its
    whole input; wait for it to exit."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "broadcast_sync",
            *connect_args(url, *options, username=username),
        ],
        input=text,
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT,
        env=client_env(),
        cwd=REPO,
        check=False,
    )


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The single line that a failed command wrote on stderr."""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def client_hello() -> bytes:
    """A real TLS ClientHello, as the first flight of a client."""
    tls = ssl.create_default_context().wrap_bio(
        ssl.MemoryBIO(), outgoing := ssl.MemoryBIO(), server_hostname="localhost"
    )
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def reader_threads(local_port: int) -> list[threading.Thread]:
    """The server's thread for the connection from ``local_port``, if alive."""
    name = f"reader 127.0.0.1:{local_port}"
    return [thread for thread in threading.enumerate() if thread.name == name]


def server_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    """What the server logged at ERROR level or above: tracebacks, mostly."""
    return [
        record.getMessage()
        for record in caplog.records
        if record.levelno >= logging.ERROR
    ]


# Chat over wss://


def test_terminal_client_chats_with_a_websockets_client(certs: Certificates) -> None:
    """Over wss://, the terminal client (trusting the test CA) and a
    websockets client chat both ways; end of input leaves with exit 0."""
    with (
        run_server(**tls_options(certs.good)) as server,
        wss_join(server.port, "bob", certs.good.ca) as bob,
        url_client(wss_url(server.port), "--cafile", str(certs.good.ca)) as alice,
    ):
        assert alice.read_line() == (
            f"Connecting to wss://127.0.0.1:{server.port}/ws as alice..."
        )
        assert alice.read_line() == "Server: alice has joined the chat"
        assert ws_receive(bob) == "Server: alice has joined the chat"
        bob.send("hello alice")
        assert ws_receive(bob) == "bob: hello alice"
        assert alice.read_line() == "bob: hello alice"
        alice.send_line("hello bob")
        assert ws_receive(bob) == "alice: hello bob"
        assert alice.read_line() == "alice: hello bob"
        alice.end_input()
        assert alice.wait() == 0
        assert alice.error_output() == ""
        assert ws_receive(bob) == "Server: alice has left the chat"


def test_chat_client_speaks_tls_too(certs: Certificates) -> None:
    """The tests' ChatClient (simple-websocket) connects over wss:// with an
    SSL context, and chats with a websockets client."""
    with (
        run_server(**tls_options(certs.good)) as server,
        wss_join(server.port, "bob", certs.good.ca) as bob,
    ):
        carol = ChatClient.connect(
            f"{wss_url(server.port)}?username=carol",
            ssl_context=trusting(certs.good.ca),
        )
        assert receive_text(carol) == "Server: carol has joined the chat"
        assert ws_receive(bob) == "Server: carol has joined the chat"
        carol.send("hi bob")
        assert ws_receive(bob) == "carol: hi bob"
        bob.send("hi carol")
        assert receive_text(carol) == "carol: hi bob"
        assert receive_text(carol) == "bob: hi carol"
        carol.close()
        assert ws_receive(bob) == "bob: hi carol"
        assert ws_receive(bob) == "Server: carol has left the chat"


def test_host_name_is_checked_against_the_certificate(certs: Certificates) -> None:
    """A URL with a host name (localhost, in the certificate) connects."""
    with run_server(**tls_options(certs.good)) as server:
        result = run_url_client(
            wss_url(server.port, "localhost"),
            "--cafile",
            str(certs.good.ca),
            text="by name\n",
        )
    assert result.returncode == 0, result.stderr
    assert "alice: by name" in result.stdout.splitlines()


def test_a_burst_of_messages_is_shown_at_once(certs: Certificates) -> None:
    """Many messages that arrive together, in several TLS records, are all
    shown at once: none waits, decrypted but unseen, for more bytes (the
    client's next ping is 20 s away)."""
    count = 50
    with (
        run_server(**tls_options(certs.good, rate_limit=0)) as server,
        wss_join(server.port, "bob", certs.good.ca) as bob,
        url_client(wss_url(server.port), "--cafile", str(certs.good.ca)) as alice,
    ):
        assert alice.read_line().startswith("Connecting to ")
        assert alice.read_line() == "Server: alice has joined the chat"
        assert ws_receive(bob) == "Server: alice has joined the chat"
        for index in range(count):
            bob.send(f"burst {index}")
        for index in range(count):
            assert alice.read_line(timeout=2 * UNIT) == f"bob: burst {index}"
        alice.end_input()
        assert alice.wait() == 0
        # Read by bob too: websockets stops reading (and so never sees the
        # server's close frame) while it holds unread messages.
        for index in range(count):
            assert ws_receive(bob) == f"bob: burst {index}"


def test_large_messages_cross_both_ways(certs: Certificates) -> None:
    """Messages just under the limit, over several TLS records, go both ways
    whole; one byte more closes the terminal client's connection with 1009."""
    limit = 60_000
    options = {"max_message_bytes": limit, "max_message_chars": limit}
    with (
        run_server(**tls_options(certs.good, **options)) as server,
        wss_join(server.port, "bob", certs.good.ca) as bob,
        url_client(wss_url(server.port), "--cafile", str(certs.good.ca)) as alice,
    ):
        assert alice.read_line().startswith("Connecting to ")
        assert alice.read_line() == "Server: alice has joined the chat"
        assert ws_receive(bob) == "Server: alice has joined the chat"
        from_alice = "a" * (limit - 1)
        alice.send_line(from_alice)
        assert ws_receive(bob) == f"alice: {from_alice}"
        assert alice.read_line() == f"alice: {from_alice}"
        from_bob = "é" * (limit // 2)  # two bytes each: the limit exactly
        bob.send(from_bob)
        assert alice.read_line() == f"bob: {from_bob}"
        alice.send_line("b" * (limit + 1))
        assert alice.wait() == 1
        assert alice.error_output() == (
            "broadcast-server: the server closed the connection "
            f"(1009: message over {limit} bytes)\n"
        )
        assert ws_receive(bob) == f"bob: {from_bob}"
        assert ws_receive(bob) == "Server: alice has left the chat"


def test_relay_mode_carries_64_kib_messages(certs: Certificates) -> None:
    """In relay mode, a 64 KiB binary message and a 64 KiB text message
    cross TLS whole, to a websockets client and to the terminal client."""
    payload = os.urandom(65536)
    text = "t" * 65536
    options = tls_options(certs.good, mode=Mode.RELAY, max_message_bytes=70_000)
    with (
        run_server(**options) as server,
        wss_client(server.port, "sender", certs.good.ca) as sender,
        wss_client(server.port, "receiver", certs.good.ca) as receiver,
        url_client(wss_url(server.port), "--cafile", str(certs.good.ca)) as alice,
    ):
        assert alice.read_line().startswith("Connecting to ")
        alice.send_line("ready")
        assert ws_receive(receiver) == "ready"
        assert ws_receive(sender) == "ready"
        assert alice.read_line() == "ready"
        sender.send(payload)
        assert ws_receive(receiver) == payload
        assert alice.read_line() == "(binary message, 65536 bytes)"
        sender.send(text)
        assert ws_receive(receiver) == text
        assert alice.read_line() == text
        alice.end_input()
        assert alice.wait() == 0
        assert alice.error_output() == ""


def test_clean_close_over_tls(
    certs: Certificates, caplog: pytest.LogCaptureFixture
) -> None:
    """Over TLS, a websockets client and the terminal client each close
    with 1000; the server answers with 1000 and logs both as closed by the
    client."""
    caplog.set_level(logging.INFO, logger="broadcast_sync")
    with run_server(**tls_options(certs.good)) as server:
        with wss_join(server.port, "bob", certs.good.ca) as bob:
            result = run_url_client(
                wss_url(server.port), "--cafile", str(certs.good.ca), text="bye\n"
            )
            assert result.returncode == 0, result.stderr
            assert ws_receive(bob) == "Server: alice has joined the chat"
            assert ws_receive(bob) == "alice: bye"
            assert ws_receive(bob) == "Server: alice has left the chat"
        assert bob.close_code == 1000
        wait_until(
            lambda: "bob (" in caplog.text and " left: " in caplog.text,
            "bob's leaving logged",
        )
    leaves = [
        record.getMessage()
        for record in caplog.records
        if " left: " in record.getMessage()
    ]
    assert len(leaves) == 2, leaves
    assert all("closed by the client (1000)" in leave for leave in leaves), leaves
    assert server_errors(caplog) == []


class SlowTLSReader:
    """A WebSocket client over TLS, on a slow link, that stops reading once
    it has joined."""

    def __init__(self, port: int, username: str, ca: Path) -> None:
        raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        for level, option, value in SLOW_LINK:
            raw.setsockopt(level, option, value)
        raw.settimeout(MESSAGE_TIMEOUT)
        try:
            raw.connect(("127.0.0.1", port))
            self.sock = trusting(ca).wrap_socket(raw, server_hostname="127.0.0.1")
            self.sock.sendall(upgrade_request(port, username, new_key()))
            response = b""
            while b"\r\n\r\n" not in response:
                chunk = self.sock.recv(4096)
                assert chunk, f"closed during the handshake: {response!r}"
                response += chunk
            assert response.startswith(b"HTTP/1.1 101 "), response
        except BaseException:
            raw.close()  # and the TLS socket on it, which shares its descriptor
            raise

    def __enter__(self) -> SlowTLSReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.sock.close()

    def assert_dropped(self) -> None:
        """Read what is left: the server must end the connection in time,
        and every record before the cut must decrypt (the server never
        mixed up the order of its TLS records)."""
        deadline = time.monotonic() + MESSAGE_TIMEOUT
        while True:
            remaining = deadline - time.monotonic()
            assert remaining > 0, "the server did not drop the slow reader"
            self.sock.settimeout(remaining)
            try:
                if not self.sock.recv(65536):
                    return
            except (ssl.SSLEOFError, ConnectionResetError):
                return  # cut in the middle of a record: expected


def test_slow_tls_reader_is_dropped_while_others_carry_on(
    certs: Certificates, caplog: pytest.LogCaptureFixture
) -> None:
    """A TLS client that never reads is dropped (1008) once its outbox is
    full; the others, over TLS too, get every message."""
    caplog.set_level(logging.INFO, logger="broadcast_sync")
    names = ["alice", "bob"]
    seen: dict[str, list[str]] = {name: [] for name in names}
    context = trusting(certs.good.ca)
    with run_server(**tls_options(certs.good, **slow_options(queue_size=4))) as server:
        clients = []
        for name in names:
            client = ChatClient.connect(
                f"{wss_url(server.port)}?username={name}", ssl_context=context
            )
            clients.append(client)
            read_messages_until(client, f"Server: {name} has joined the chat", [])
        alice, bob = clients
        assert receive_text(alice) == "Server: bob has joined the chat"
        with SlowTLSReader(server.port, "slow", certs.good.ca) as slow:
            for client in clients:
                assert receive_text(client) == "Server: slow has joined the chat"
            lockstep(alice, "alice", flood("alice"), seen["alice"])()
            bob.send("end")
            for client, name in zip(clients, names, strict=True):
                read_messages_until(client, "bob: end", seen[name])
            slow.assert_dropped()
        for client in clients:
            client.close()
    assert seen["alice"] == seen["bob"]
    assert "Server: slow has left the chat" in seen["alice"]
    from_alice = [m for m in seen["alice"] if m.startswith("alice: ")]
    assert from_alice == [f"alice: {message}" for message in flood("alice")]
    (slow_left,) = [
        record
        for record in caplog.records
        if record.getMessage().startswith("slow (") and " left: " in record.getMessage()
    ]
    assert "too slow: 4 writes, " in slow_left.getMessage()
    assert getattr(slow_left, "code", None) == 1008
    assert server_errors(caplog) == []


# Reconnection over wss://


def test_reconnects_over_tls_after_a_restart(certs: Certificates) -> None:
    """The terminal client reconnects over TLS to the server restarted on
    the same port, and chats on."""
    with server_on(0, **tls_options(certs.good)) as first:
        port = first.port
        with url_client(wss_url(port), "--cafile", str(certs.good.ca)) as alice:
            assert alice.read_line().startswith("Connecting to ")
            assert alice.read_line() == "Server: alice has joined the chat"
            first.stop()
            assert alice.read_line() == (
                "connection lost (1001: server shutting down); reconnecting"
            )
            with server_on(port, **tls_options(certs.good)):
                assert alice.read_line() == NOT_RESUMED
                assert alice.read_line() == "Server: alice has joined the chat"
                alice.send_line("back")
                assert alice.read_line() == "alice: back"
                alice.end_input()
                assert alice.wait() == 0
                assert alice.error_output() == ""


def test_resumes_over_tls_after_a_dropped_connection(certs: Certificates) -> None:
    """A TLS connection cut without a close frame is lost; the client
    reconnects and resumes after the last event it showed."""
    with (
        run_server(**tls_options(certs.good)) as server,
        wss_join(server.port, "bob", certs.good.ca) as bob,
        url_client(wss_url(server.port), "--cafile", str(certs.good.ca)) as alice,
    ):
        assert alice.read_line().startswith("Connecting to ")
        assert alice.read_line() == "Server: alice has joined the chat"
        assert ws_receive(bob) == "Server: alice has joined the chat"
        (member,) = [each for each in server.hub.members() if each.name == "alice"]
        member.abort(Disconnect.LOST, "test")
        assert alice.read_line() == (
            "connection lost (closed without a close frame); reconnecting"
        )
        assert ws_receive(bob) == "Server: alice has left the chat"
        bob.send("missed")
        assert alice.read_line() == RESUMED
        # Missed while away, or sent once back: shown once either way.
        expected = {"bob: missed", "Server: alice has joined the chat"}
        shown = [alice.read_line()]
        while not expected <= set(shown):
            shown.append(alice.read_line())
        assert shown.count("bob: missed") == 1, shown
        alice.end_input()
        assert alice.wait() == 0


def test_untrusted_certificate_while_reconnecting_is_final(
    certs: Certificates,
) -> None:
    """A server back on the port with a certificate the client does not
    trust ends the client at once, with exit 1: no further attempt."""
    with server_on(0, **tls_options(certs.good)) as first:
        port = first.port
        with url_client(wss_url(port), "--cafile", str(certs.good.ca)) as alice:
            assert alice.read_line().startswith("Connecting to ")
            assert alice.read_line() == "Server: alice has joined the chat"
            first.stop()
            assert alice.read_line().startswith("connection lost (1001")
            with server_on(port, **tls_options(certs.self_signed)):
                assert alice.wait() == 1
            assert alice.error_output() == (
                f"broadcast-server: TLS certificate of 127.0.0.1:{port} not "
                "trusted: self-signed certificate (use --cafile or --insecure)\n"
            )


# Certificates the client does not trust


@dataclasses.dataclass(frozen=True)
class Refusal:
    """A certificate that the terminal client refuses, and why."""

    #: The server's files: a field of Certificates.
    served: str
    #: The host in the URL.
    host: str
    #: The CA that the client trusts: the CA of a field of Certificates, or
    #: None for the system's.
    trusted: str | None
    #: Why, as the client says it.
    reason: str
    #: Whether trusting the right CA would help, and the client says how.
    hint: bool = False


REFUSALS = {
    "system-trust": Refusal(
        "good", "127.0.0.1", None, "unable to get local issuer certificate", True
    ),
    "other-ca": Refusal(
        "good", "127.0.0.1", "other_ca", "unable to get local issuer certificate", True
    ),
    "self-signed": Refusal(
        "self_signed", "127.0.0.1", None, "self-signed certificate", True
    ),
    "expired": Refusal("expired", "127.0.0.1", "good", "certificate has expired"),
    "wrong-address": Refusal(
        "wrong_host",
        "127.0.0.1",
        "good",
        "IP address mismatch, certificate is not valid for '127.0.0.1'",
    ),
    "wrong-name": Refusal(
        "wrong_host",
        "localhost",
        "good",
        "hostname mismatch, certificate is not valid for 'localhost'",
    ),
}


def ca_of(certs: Certificates, name: str) -> Path:
    """The CA file named ``name``: a field of ``certs``, or the CA of one."""
    value = getattr(certs, name)
    return value if isinstance(value, Path) else value.ca


@pytest.mark.parametrize("refusal", REFUSALS.values(), ids=REFUSALS.keys())
def test_untrusted_certificate_is_one_line(
    certs: Certificates, caplog: pytest.LogCaptureFixture, refusal: Refusal
) -> None:
    """A certificate the client does not trust: one line saying whose and
    why (and, when trusting a CA would help, how), exit 1; the server keeps
    serving others."""
    caplog.set_level(logging.INFO, logger="broadcast_sync")
    files: CertFiles = getattr(certs, refusal.served)
    options = []
    if refusal.trusted is not None:
        options = ["--cafile", str(ca_of(certs, refusal.trusted))]
    with run_server(**tls_options(files)) as server:
        url = wss_url(server.port, refusal.host)
        result = run_url_client(url, *options, text="never\n")
        assert result.returncode == 1
        expected = (
            f"broadcast-server: TLS certificate of {refusal.host}:{server.port} "
            f"not trusted: {refusal.reason}"
        )
        if refusal.hint:
            expected += " (use --cafile or --insecure)"
        assert one_error_line(result) == expected
        # Another client, which checks nothing, is served as ever.
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        carol = ChatClient.connect(
            f"{wss_url(server.port)}?username=carol", ssl_context=context
        )
        assert receive_text(carol) == "Server: carol has joined the chat"
        carol.close()
    assert server_errors(caplog) == []


def test_insecure_connects_to_a_self_signed_server(certs: Certificates) -> None:
    """--insecure checks no certificate: a self-signed server is joined."""
    with run_server(**tls_options(certs.self_signed)) as server:
        result = run_url_client(wss_url(server.port), "--insecure", text="risky\n")
    assert result.returncode == 0, result.stderr
    assert "alice: risky" in result.stdout.splitlines()


def test_unusable_ca_file_is_one_line(certs: Certificates, tmp_path: Path) -> None:
    """A CA file that is missing, or holds no certificate: one line, exit 1,
    before connecting."""
    missing = tmp_path / "missing.pem"
    result = run_url_client(wss_url(9), "--cafile", str(missing))
    assert result.returncode == 1
    assert one_error_line(result) == (
        f"broadcast-server: cannot use the CA file {missing}: no such file or directory"
    )
    assert result.stdout == ""
    result = run_url_client(wss_url(9), "--cafile", str(certs.good.key))
    assert result.returncode == 1
    assert one_error_line(result).startswith(
        f"broadcast-server: cannot use the CA file {certs.good.key}: "
    )


# The wrong protocol on a port


def test_plain_http_on_the_tls_port_gets_400(certs: Certificates) -> None:
    """A plain HTTP request on the TLS port gets a plain-text 400 that says
    the port speaks TLS; a TLS client connected meanwhile chats on."""
    with (
        run_server(**tls_options(certs.good)) as server,
        wss_join(server.port, "bob", certs.good.ca) as bob,
    ):
        response = http_exchange(
            server.port, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        )
        assert response.startswith(b"HTTP/1.1 400 "), response
        _, _, body = response.partition(b"\r\n\r\n")
        assert b"TLS" in body, response
        bob.send("still here")
        assert ws_receive(bob) == "bob: still here"


def test_plain_ws_client_on_the_tls_port_is_refused(certs: Certificates) -> None:
    """The terminal client given ws:// for a TLS port: one line with the
    server's 400, which says to use wss://; exit 1."""
    with run_server(**tls_options(certs.good)) as server:
        result = run_url_client(f"ws://127.0.0.1:{server.port}/ws", text="never\n")
    assert result.returncode == 1
    assert one_error_line(result) == (
        "broadcast-server: the server refused the connection: 400 this port "
        "speaks TLS: use https:// or wss://"
    )


def test_tls_client_on_the_plain_port_fails_cleanly(
    certs: Certificates, caplog: pytest.LogCaptureFixture
) -> None:
    """A TLS client on a plain port: an SSLError on its side, a 400 for a
    malformed request logged on the server's, which keeps serving; the
    terminal client says, in one line, that the handshake failed."""
    caplog.set_level(logging.INFO, logger="broadcast_sync")
    with run_server() as server:
        with (
            socket.create_connection(
                ("127.0.0.1", server.port), MESSAGE_TIMEOUT
            ) as raw,
            pytest.raises(ssl.SSLError),
        ):
            trusting(certs.good.ca).wrap_socket(raw, server_hostname="127.0.0.1")
        wait_until(
            lambda: any(
                ": 400 " in record.getMessage() and "rejected " in record.getMessage()
                for record in caplog.records
            ),
            "the malformed request logged as a 400",
        )
        result = run_url_client(wss_url(server.port), "--cafile", str(certs.good.ca))
        assert result.returncode == 1
        assert one_error_line(result) == (
            f"broadcast-server: cannot connect to 127.0.0.1:{server.port}: TLS "
            "handshake failed: wrong version number (is it a plain ws:// server?)"
        )
        carol = ChatClient.connect(f"ws://127.0.0.1:{server.port}/ws?username=carol")
        assert receive_text(carol) == "Server: carol has joined the chat"
        carol.close()
    assert server_errors(caplog) == []


# Clients that never finish the TLS handshake


@pytest.mark.parametrize("sent", ["nothing", "half-a-client-hello"])
def test_unfinished_tls_handshake_is_dropped_in_time(
    certs: Certificates, caplog: pytest.LogCaptureFixture, sent: str
) -> None:
    """A client that opens TCP to the TLS port and sends nothing, or half a
    ClientHello, is dropped within the handshake timeout, its thread gone;
    a TLS client chats on meanwhile."""
    caplog.set_level(logging.INFO, logger="broadcast_sync")
    hello = client_hello()
    data = b"" if sent == "nothing" else hello[: len(hello) // 2]
    options = tls_options(certs.good, handshake_timeout=SHORT_HANDSHAKE)
    with (
        run_server(**options) as server,
        wss_join(server.port, "bob", certs.good.ca) as bob,
        socket.create_connection(("127.0.0.1", server.port), PROCESS_TIMEOUT) as raw,
    ):
        started = time.monotonic()
        raw.sendall(data)
        local_port = raw.getsockname()[1]
        wait_until(lambda: bool(reader_threads(local_port)), "the connection served")
        with contextlib.suppress(ConnectionResetError):
            while raw.recv(4096):
                pass
        elapsed = time.monotonic() - started
        assert elapsed < SHORT_HANDSHAKE + DROP_SLACK, elapsed
        wait_until(lambda: not reader_threads(local_port), "its thread gone")
        bob.send("unaffected")
        assert ws_receive(bob) == "bob: unaffected"
    assert server_errors(caplog) == []
    lines = [record.getMessage() for record in caplog.records]
    dropped = [line for line in lines if "TLS handshake" in line]
    assert dropped == [f"dropped 127.0.0.1:{local_port}: TLS handshake timed out"]


def test_client_tls_handshake_times_out() -> None:
    """A server that accepts TCP but never answers the ClientHello: the
    client gives up at its handshake timeout, in one line, exit 1."""
    timeout = 0.5 * UNIT
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        with url_client(
            wss_url(port), "--insecure", settings=f"HANDSHAKE_TIMEOUT = {timeout}"
        ) as alice:
            assert alice.read_line().startswith("Connecting to ")
            started = time.monotonic()
            assert alice.wait() == 1
            assert time.monotonic() - started < timeout + DROP_SLACK
            assert alice.error_output() == (
                f"broadcast-server: cannot connect to 127.0.0.1:{port}: timed out\n"
            )


def test_interrupt_during_the_tls_handshake() -> None:
    """Ctrl+C while the server has not answered the ClientHello ends the
    client at once, with no traceback."""
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        with url_client(wss_url(port), "--insecure") as alice:
            assert alice.read_line().startswith("Connecting to ")
            alice.process.send_signal(signal.SIGINT)
            status = alice.wait()
            errors = alice.error_output()
    assert "Traceback" not in errors, errors
    assert status in (1, 130), errors


# https://


def test_page_health_and_metrics_over_https(certs: Certificates) -> None:
    """The chat page, /healthz and /metrics are served over https://."""
    with run_server(**tls_options(certs.good)) as server:
        connection = http.client.HTTPSConnection(
            "127.0.0.1",
            server.port,
            timeout=MESSAGE_TIMEOUT,
            context=trusting(certs.good.ca),
        )
        try:
            for path, content_type in [
                ("/", "text/html"),
                ("/healthz", "text/plain"),
                ("/metrics", "text/plain"),
            ]:
                connection.request("GET", path)
                response = connection.getresponse()
                body = response.read()
                assert response.status == 200, (path, body)
                assert response.headers["Content-Type"].startswith(content_type)
                connection.close()  # one request per connection
        finally:
            connection.close()
        assert body


@pytest.mark.parametrize("path", ["/healthz", "/nowhere"])
def test_an_http_answer_over_tls_ends_with_close_notify(
    certs: Certificates, path: str
) -> None:
    """An answer to a plain request, a refusal included, ends the TLS session
    cleanly: a close_notify, then the end of the connection."""
    with (
        run_server(**tls_options(certs.good)) as server,
        trusting(certs.good.ca).wrap_socket(
            socket.create_connection(("127.0.0.1", server.port), MESSAGE_TIMEOUT),
            server_hostname="127.0.0.1",
            suppress_ragged_eofs=False,
        ) as tls,
    ):
        tls.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        answer = b""
        while chunk := tls.recv(4096):  # an unclean end raises SSLEOFError
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 ")


# Starting the server


def start_server(*options: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m broadcast_sync start`` on a free port until it exits,
    with no terminal: a prompt for a password could not wait on one."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "broadcast_sync",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            *options,
        ],
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        cwd=REPO,
        check=False,
    )


def key_options(files: CertFiles, *, password_env: bool = False) -> list[str]:
    """``--certfile`` and ``--keyfile`` of ``files``; with ``password_env``,
    ``--keyfile-password-env`` too."""
    options = ["--certfile", str(files.cert), "--keyfile", str(files.key)]
    if password_env:
        options += ["--keyfile-password-env", PASSWORD_VARIABLE]
    return options


def test_start_refuses_a_missing_certificate(
    certs: Certificates, tmp_path: Path
) -> None:
    """A certificate file that does not exist: one line naming it, exit 1."""
    missing = tmp_path / "missing.pem"
    result = start_server("--certfile", str(missing), "--keyfile", str(certs.good.key))
    assert result.returncode == 1
    line = one_error_line(result)
    assert line.startswith("broadcast-server: "), line
    assert str(missing) in line
    assert "no such file" in line.lower()
    assert result.stdout == ""


def test_start_refuses_a_key_that_does_not_match(certs: Certificates) -> None:
    """A key that is not the certificate's: one line saying so, exit 1."""
    result = start_server(*key_options(certs.mismatched))
    assert result.returncode == 1
    line = one_error_line(result)
    assert str(certs.mismatched.key) in line
    assert "mismatch" in line
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("password", "expected"),
    [("wrong", None), (None, f"{PASSWORD_VARIABLE} is not set")],
    ids=["wrong-password", "variable-not-set"],
)
def test_start_refuses_an_encrypted_key_it_cannot_open(
    certs: Certificates,
    monkeypatch: pytest.MonkeyPatch,
    password: str | None,
    expected: str | None,
) -> None:
    """An encrypted key with the wrong password, or a password variable
    that is not set: one line, exit 1."""
    if password is None:
        monkeypatch.delenv(PASSWORD_VARIABLE, raising=False)
    else:
        monkeypatch.setenv(PASSWORD_VARIABLE, password)
    result = start_server(*key_options(certs.encrypted, password_env=True))
    assert result.returncode == 1
    line = one_error_line(result)
    assert line.startswith("broadcast-server: "), line
    assert expected is None or expected in line, line
    if expected is None:
        assert str(certs.encrypted.key) in line
    assert result.stdout == ""


def test_start_refuses_an_encrypted_key_without_password(
    certs: Certificates,
) -> None:
    """An encrypted key and no --keyfile-password-env: one line that says
    the key needs a password, exit 1, and never a prompt."""
    result = start_server(*key_options(certs.encrypted))
    assert result.returncode == 1
    line = one_error_line(result)
    assert "password" in line, line


def test_start_opens_an_encrypted_key_with_its_password(
    certs: Certificates, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the key's password in the variable named, the server starts and
    serves wss://."""
    monkeypatch.setenv(PASSWORD_VARIABLE, KEY_PASSWORD)
    options = ["--host", "127.0.0.1", "--port", "0"]
    with (
        ServerProcess(
            [*options, *key_options(certs.encrypted, password_env=True)]
        ) as server,
        wss_join(server.port, "bob", certs.encrypted.ca) as bob,
    ):
        bob.send("encrypted key")
        assert ws_receive(bob) == "bob: encrypted key"
