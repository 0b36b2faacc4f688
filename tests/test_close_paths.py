"""Closing handshakes that the peer never finishes.

A closing handshake takes both sides. Each test here plays a side that
never does its part, on real sockets, and times the other side: a client
must give up on a server that never answers its close frame, and the
server must end its side of TCP right after its own close frame, without
waiting for a client that never answers it.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import TracebackType

import pytest
from wsproto.connection import Connection, ConnectionType
from wsproto.events import CloseConnection, Event
from wsproto.frame_protocol import Opcode

from broadcast_sync.chatlink import CLOSE_TIMEOUT as TERMINAL_CLOSE_TIMEOUT
from tests.conftest import UNIT, run_server
from tests.rawclient import RawClient, close_payload, frame, handshake_response
from tests.wsclient import CLOSE_TIMEOUT as WSCLIENT_CLOSE_TIMEOUT
from tests.wsclient import ChatClient

#: Where ``python -m broadcast_sync`` finds the package under test.
REPO = Path(__file__).resolve().parent.parent

#: What a client may take on top of its close timeout: a client process
#: starts Python first, and the machine may be busy.
MARGIN = 5 * UNIT

#: How long the silent server waits for a client or its bytes: longer than
#: any close timeout plus its margin, so that only a failed test hits it.
SILENT_TIMEOUT = max(TERMINAL_CLOSE_TIMEOUT, WSCLIENT_CLOSE_TIMEOUT) + 2 * MARGIN

#: The server's close timeout: far longer than the wait for the half-close,
#: so that a server waiting it out cannot pass for one that half-closed.
SERVER_CLOSE_TIMEOUT = 30 * UNIT

#: How soon after its close frame the server must have ended its side.
HALF_CLOSE_WAIT = 2 * UNIT


class SilentServer:
    """A WebSocket server for one client that never closes: it accepts the
    handshake, then reads and drops every frame, answering none, and keeps
    TCP open until the client hangs up.

    Its thread records the client's frames (:attr:`events`), which the
    test reads once :attr:`hung_up` is set.
    """

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(SILENT_TIMEOUT)
        self.port: int = self._listener.getsockname()[1]
        #: Set once the 101 is sent.
        self.handshaken = threading.Event()
        #: Set once the client has closed TCP.
        self.hung_up = threading.Event()
        #: The client's frames, as wsproto events: written by the server's
        #: thread, read by the test once hung_up is set.
        self.events: list[Event] = []
        #: What failed in the server's thread; raised by __exit__.
        self.error: BaseException | None = None
        # Guards _connection and _leaving: __exit__ cuts the connection to
        # wake the thread, which may be just accepting it.
        self._lock = threading.Lock()
        self._connection: socket.socket | None = None
        self._leaving = False
        self._thread = threading.Thread(target=self._serve, name="test silent server")

    def __enter__(self) -> SilentServer:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.cut()
        self._thread.join(SILENT_TIMEOUT)
        self._listener.close()
        assert not self._thread.is_alive(), "the silent server's thread still runs"
        if self.error is not None and exc_type is None:
            raise self.error

    def cut(self) -> None:
        """Stop serving: cut the connection, or stop waiting for one.

        After a failure the client may still be connected, or may never
        have come: shutting the sockets down wakes the thread from its
        recv() or accept(), and a client stuck in its own recv() sees the
        end of the connection.
        """
        with self._lock:
            self._leaving = True
            connection = self._connection
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        if connection is not None:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def _serve(self) -> None:
        try:
            connection, _ = self._listener.accept()
        except OSError as exc:
            with self._lock:
                if not self._leaving:  # else cut() woke us: no client came
                    self.error = exc
            return
        with connection:
            with self._lock:
                if self._leaving:
                    return
                self._connection = connection
            try:
                connection.settimeout(SILENT_TIMEOUT)
                self._exchange(connection)
            except BaseException as exc:  # reported to the test by __exit__
                self.error = exc

    def _exchange(self, connection: socket.socket) -> None:
        request = b""
        while b"\r\n\r\n" not in request:
            chunk = connection.recv(4096)
            if not chunk:
                raise ConnectionError("the client hung up during the handshake")
            request += chunk
        head, _, rest = request.partition(b"\r\n\r\n")
        connection.sendall(handshake_response(head))
        self.handshaken.set()
        # wsproto answers no close frame by itself: reading is all it does.
        protocol = Connection(ConnectionType.SERVER)
        protocol.receive_data(rest)
        while True:
            self.events.extend(protocol.events())
            data = connection.recv(65536)
            if not data:
                break
            protocol.receive_data(data)
        self.hung_up.set()


# The client gives up on a close frame that gets no answer.


def test_terminal_client_exits_when_its_close_goes_unanswered() -> None:
    """The terminal client whose close frame gets no answer waits out its
    close timeout, then hangs up and exits 0, instead of waiting for ever."""
    limit = TERMINAL_CLOSE_TIMEOUT + MARGIN
    with SilentServer() as silent:
        args = ["connect", "--host", "127.0.0.1", "--port", str(silent.port)]
        with subprocess.Popen(
            [sys.executable, "-m", "broadcast_sync", *args, "--username", "leaver"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
        ) as process:
            try:
                assert silent.handshaken.wait(MARGIN), "the client never connected"
                started = time.monotonic()
                # The end of its input tells the client to leave.
                _, errors = process.communicate(timeout=limit)
                took = time.monotonic() - started
            except subprocess.TimeoutExpired:
                pytest.fail(f"the client still ran {limit:g} s after its input ended")
            finally:
                if process.poll() is None:
                    process.kill()
                    process.communicate()
        assert process.returncode == 0, errors
        assert errors == ""
        # It waited for the answer first, as long as it promises to.
        assert took >= TERMINAL_CLOSE_TIMEOUT, took
        assert silent.hung_up.wait(MARGIN), "the client never closed TCP"
        assert silent.events == [CloseConnection(code=1000, reason="")]


def test_wsclient_close_returns_when_unanswered() -> None:
    """The tests' own client (tests/wsclient.py), whose close frame gets no
    answer, shuts its socket down after its close timeout: that wakes its
    reading thread, so close() returns instead of hanging a failing test."""
    with SilentServer() as silent:
        client = ChatClient.connect(f"ws://127.0.0.1:{silent.port}/ws")
        # A daemon: should close() hang, the test fails instead of hanging
        # too, and cutting the connection below wakes it.
        closer = threading.Thread(target=client.close, name="test closer", daemon=True)
        started = time.monotonic()
        closer.start()
        try:
            closer.join(WSCLIENT_CLOSE_TIMEOUT + MARGIN)
            assert not closer.is_alive(), "close() never returned"
            assert time.monotonic() - started >= WSCLIENT_CLOSE_TIMEOUT
            assert silent.hung_up.wait(MARGIN), "the client never closed TCP"
            assert silent.events == [CloseConnection(code=1000, reason="")]
        finally:
            if closer.is_alive():
                silent.cut()
            closer.join(MARGIN)


# The server half-closes right after its close frame.


@pytest.mark.parametrize(
    ("data", "code"),
    [
        pytest.param(frame(Opcode.BINARY, b"data"), 1003, id="binary in chat mode"),
        pytest.param(frame(Opcode.TEXT, b"hi", masked=False), 1002, id="unmasked"),
        pytest.param(
            frame(Opcode.CLOSE, close_payload(1000)), 1000, id="client close echoed"
        ),
    ],
)
def test_server_half_closes_after_its_close_frame(data: bytes, code: int) -> None:
    """Right after its close frame the server ends its side of TCP (RFC 6455,
    section 7.1.1): a client that never answers sees the end at once, not
    after the close timeout."""
    with (
        run_server(close_timeout=SERVER_CLOSE_TIMEOUT) as server,
        RawClient(server.port, "mute") as mute,
    ):
        mute.send(data)
        assert mute.receive_close().code == code
        mute.sock.settimeout(HALF_CLOSE_WAIT)
        try:
            after = mute.sock.recv(65536)
        except TimeoutError:
            pytest.fail(f"no end of the connection {HALF_CLOSE_WAIT:g} s after close")
        assert after == b"", f"sent after its close frame: {after!r}"
