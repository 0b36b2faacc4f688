"""The terminal client, ``python -m broadcast_sync connect``, run as a process.

Each test starts the real command against a real server (or a raw TCP
server playing a hostile one), feeds it input through a pipe or a
pseudo-terminal, and watches the chat from another client. Servers are
stopped, killed, frozen and started again on the same port to test
reconnection. The client's pure logic (``clientproto``) is tested directly.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import pty
import queue
import re
import signal
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from broadcast_sync.chatlink import NOT_RESUMED, RESUMED
from broadcast_sync.clientproto import (
    Keepalive,
    Line,
    ReconnectPolicy,
    Welcome,
    chat_target,
    is_client_fault,
    is_transient,
    parse_welcome,
    render,
    text_line,
)
from broadcast_sync.config import Mode, ServerConfig
from broadcast_sync.metrics import Disconnect
from broadcast_sync.server import BroadcastServer
from tests.conftest import UNIT, connect, join, receive, run_server, wait_until
from tests.rawclient import handshake_response
from tests.serverproc import ServerProcess

#: Where ``python -m broadcast_sync`` finds the package.
REPO = Path(__file__).resolve().parent.parent

#: How long any client process may take to do what a test expects.
PROCESS_TIMEOUT = 10 * UNIT

#: Run in the child of a pseudo-terminal: make the terminal the controlling
#: one (so that Ctrl+C sends SIGINT), then become the client.
TTY_LAUNCHER = (
    "import fcntl, os, sys, termios\n"
    "fcntl.ioctl(0, termios.TIOCSCTTY, 0)\n"
    "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])\n"
)

#: Numbers of select() and pselect6() on x86-64, and of pselect6() on arm64.
SELECT_SYSCALLS = {"23", "270", "72"}

#: Numbers of futex() on x86-64 and arm64: where a thread waits for a lock.
FUTEX_SYSCALLS = {"202", "98"}

#: A message printed above the input line: save the cursor, open a line
#: above, print, restore the cursor.
ABOVE_INPUT = re.compile(
    rb"\x1b7[^\x1b]*(?:\x1b\[A)?\x1b\[L(?P<text>[^\r\n\x1b]*)\r\n\x1b8(?:\x1b\[B)?"
)


def client_args(port: int, username: str) -> list[str]:
    """The arguments of ``python -m broadcast_sync connect`` to a local server."""
    return [
        "-m",
        "broadcast_sync",
        "connect",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--username",
        username,
    ]


def client_env(**variables: str) -> dict[str, str]:
    """This environment without the client's variables, plus ``variables``."""
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in ("PORT", "HOST", "USER_NAME")
    }
    env.update(variables)
    return env


def run_piped(
    port: int, text: str, username: str = "bot"
) -> subprocess.CompletedProcess[str]:
    """Run the client with ``text`` as its whole input; wait for it to exit."""
    return subprocess.run(
        [sys.executable, *client_args(port, username)],
        input=text,
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT,
        env=client_env(),
        cwd=REPO,
        check=False,
    )


def _pump(stream: IO[bytes], lines: queue.Queue[bytes]) -> None:
    """Copy ``stream`` to ``lines``, line by line; ``b""`` marks its end."""
    for line in iter(stream.readline, b""):
        lines.put(line)
    lines.put(b"")


class PipedClient:
    """A client process whose input is a pipe the test keeps open."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=REPO,
        )
        assert self.process.stdout is not None
        assert self.process.stderr is not None
        self.stdout: queue.Queue[bytes] = queue.Queue()
        self.stderr: queue.Queue[bytes] = queue.Queue()
        self._pumps = [
            threading.Thread(
                target=_pump, args=(stream, lines), name=f"test {name} pump"
            )
            for name, stream, lines in [
                ("stdout", self.process.stdout, self.stdout),
                ("stderr", self.process.stderr, self.stderr),
            ]
        ]
        for pump in self._pumps:
            pump.start()

    def read_line(self, timeout: float = PROCESS_TIMEOUT) -> str:
        """The next line the client printed, without its newline."""
        try:
            line = self.stdout.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"the client printed no line within {timeout} s")
        assert line, "the client's output ended"
        return line.decode().rstrip("\n")

    def send_line(self, line: str) -> None:
        """Type one line of input."""
        assert self.process.stdin is not None
        self.process.stdin.write(line.encode() + b"\n")
        self.process.stdin.flush()

    def end_input(self) -> None:
        """Close the client's input, as at the end of a piped file."""
        assert self.process.stdin is not None
        self.process.stdin.close()

    def wait(self) -> int:
        """Wait for the client to exit; its exit status."""
        return self.process.wait(timeout=PROCESS_TIMEOUT)

    def error_output(self) -> str:
        """Everything the client wrote on stderr (once it has exited)."""
        self._pumps[1].join(PROCESS_TIMEOUT)
        chunks = []
        while chunk := self.stderr.get_nowait():
            chunks.append(chunk)
        return b"".join(chunks).decode()

    def kill(self) -> None:
        """Kill the process if it still runs; join the pumps; close the pipes."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=PROCESS_TIMEOUT)
        for pump in self._pumps:
            pump.join(PROCESS_TIMEOUT)
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


@contextlib.contextmanager
def piped_client(
    port: int | None, username: str = "bot", env: dict[str, str] | None = None
) -> Iterator[PipedClient]:
    """Start a client whose input stays open; always kill it afterwards.

    With ``port`` None, the client is given no options at all.
    """
    args = ["-m", "broadcast_sync", "connect"]
    if port is not None:
        args = client_args(port, username)
    client = PipedClient(args, client_env() if env is None else env)
    try:
        yield client
    finally:
        client.kill()


class TerminalClient:
    """A client process in a pseudo-terminal, as a user would run it."""

    def __init__(self, port: int, username: str) -> None:
        self._master, slave = pty.openpty()
        # 24 rows of 80 columns, like a default terminal window.
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-c", TTY_LAUNCHER, *client_args(port, username)],
                stdin=slave,
                stdout=slave,
                stderr=slave,
                start_new_session=True,
                # No user's readline settings; a common terminal.
                env=client_env(TERM="xterm", INPUTRC=os.devnull),
                cwd=REPO,
            )
        finally:
            os.close(slave)
        self._output = bytearray()
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, name="test pty reader")
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self._master, 4096)
            except OSError:  # EIO: the child closed the terminal
                data = b""
            with self._changed:
                self._output += data
                self._changed.notify_all()
            if not data:
                return

    @property
    def output(self) -> bytes:
        """Everything the client wrote to the terminal so far."""
        with self._changed:
            return bytes(self._output)

    def wait_for(self, expected: bytes, start: int = 0) -> int:
        """Wait until ``expected`` appears after ``start``; the index past it."""
        with self._changed:
            found = self._changed.wait_for(
                lambda: expected in self._output[start:], PROCESS_TIMEOUT
            )
            assert found, f"{expected!r} not shown; output: {bytes(self._output)!r}"
            return self._output.index(expected, start) + len(expected)

    def wait_for_prompt(self, count: int = 1) -> int:
        """Wait until the client has shown its prompt ``count`` times; the
        length of the output then.

        Messages printed above the input line are left out first: one may
        come just before the prompt, or between its ``>`` and its space.
        """

        def prompt_shown() -> bool:
            return ABOVE_INPUT.sub(b"", self._output).count(b"\r\n>") >= count

        with self._changed:
            found = self._changed.wait_for(prompt_shown, PROCESS_TIMEOUT)
            assert found, f"prompt not shown {count} times: {bytes(self._output)!r}"
            return len(self._output)

    def wait_until_reading(self) -> None:
        """Wait until the client's main thread waits for a key.

        CPython's readline looks for signals only when its select() on the
        terminal is interrupted: a Ctrl+C that arrives after the prompt is
        shown but before that select() waits for the next key. No event
        tells when the client got there, so poll what the kernel shows.
        """
        pid = self.process.pid
        syscall = Path(f"/proc/{pid}/task/{pid}/syscall")
        deadline = time.monotonic() + PROCESS_TIMEOUT
        while True:
            number, first_argument, *_ = [*syscall.read_text().split(), "", ""]
            if number in SELECT_SYSCALLS and first_argument == "0x1":  # fd 0
                return
            assert time.monotonic() < deadline, "the client never read a key"
            time.sleep(0.001)

    def type(self, keys: bytes) -> None:
        """Press ``keys`` on the terminal."""
        os.write(self._master, keys)

    def wait(self) -> int:
        """Wait for the client to exit; its exit status."""
        try:
            return self.process.wait(timeout=PROCESS_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the client did not exit; output: {self.output!r}")

    def kill(self) -> None:
        """Kill the process if it still runs; close the terminal."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=PROCESS_TIMEOUT)
        self._reader.join(PROCESS_TIMEOUT)
        os.close(self._master)


@contextlib.contextmanager
def terminal_client(port: int, username: str = "tty") -> Iterator[TerminalClient]:
    """Start a client in a pseudo-terminal; always kill it afterwards."""
    client = TerminalClient(port, username)
    try:
        yield client
    finally:
        client.kill()


#: Runs the client with some of the chat link's constants changed by the
#: Python statements in argv[1] (a shorter reconnection policy, say), then
#: the command line that follows.
TUNED_LAUNCHER = (
    "import sys\n"
    "from broadcast_sync import chatlink, cli\n"
    "exec(sys.argv[1], vars(chatlink))\n"
    "cli.main(sys.argv[2:])\n"
)


@contextlib.contextmanager
def tuned_client(
    port: int, settings: str, username: str = "bot"
) -> Iterator[PipedClient]:
    """A piped client whose chat link runs with ``settings``, assignments to
    its constants; always killed afterwards."""
    args = ["-c", TUNED_LAUNCHER, settings, *client_args(port, username)[2:]]
    client = PipedClient(args, client_env())
    try:
        yield client
    finally:
        client.kill()


def read_until(client: PipedClient, last: str) -> list[str]:
    """Read the client's lines up to ``last``; the lines before it."""
    lines = []
    while (line := client.read_line()) != last:
        lines.append(line)
    return lines


def remaining_lines(client: PipedClient) -> list[str]:
    """The lines the client printed that the test has not read (once the
    client is killed and its pumps are done)."""
    lines = []
    while line := client.stdout.get_nowait():
        lines.append(line.decode().rstrip("\n"))
    return lines


def wait_until_joining(pid: int) -> None:
    """Wait until the client's main thread waits for a lock: done with its
    input, it waits for the chat link to end.

    Nothing the client prints tells when it has read the end of its input,
    so poll what the kernel shows (as TerminalClient.wait_until_reading).
    """
    syscall = Path(f"/proc/{pid}/task/{pid}/syscall")
    deadline = time.monotonic() + PROCESS_TIMEOUT
    while syscall.read_text().split()[0] not in FUTEX_SYSCALLS:
        assert time.monotonic() < deadline, "the client never finished its input"
        time.sleep(0.001)


@contextlib.contextmanager
def server_on(port: int, **options: Any) -> Iterator[BroadcastServer]:
    """A server on 127.0.0.1:``port`` (0: a free one), which a test may stop
    and start again on the same port; always stopped."""
    server = BroadcastServer(ServerConfig(host="127.0.0.1", port=port, **options))
    server.start()
    try:
        yield server
    finally:
        if not server.stopping:
            server.stop()


@contextlib.contextmanager
def closed_port() -> Iterator[int]:
    """A port on 127.0.0.1 that is bound, so not reused, but not listening."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


class HostileServer:
    """A raw TCP server that accepts one WebSocket client and sends it
    ``payload`` as a text frame, then answers its close frame.

    By default the payload goes out once the client has sent a message, so
    that it surely comes after the handshake; with ``with_response`` it
    goes in the same write as the 101 response. With ``closes_first``, a
    close frame with that code and reason follows the payload in the same
    write.
    """

    def __init__(
        self,
        payload: bytes,
        *,
        with_response: bool = False,
        closes_first: tuple[int, bytes] | None = None,
    ) -> None:
        self._payload = payload
        self._with_response = with_response
        self._closes_first = closes_first
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(PROCESS_TIMEOUT)
        self.port: int = self._listener.getsockname()[1]
        #: The client's frames, (opcode, payload), until it hung up.
        self.received: list[tuple[int, bytes]] = []
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._serve, name="test raw server")

    def __enter__(self) -> HostileServer:
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        self._thread.join(PROCESS_TIMEOUT)
        self._listener.close()
        assert not self._thread.is_alive()
        if self.error is not None and exc_type is None:
            raise self.error

    def _serve(self) -> None:
        try:
            sock, _ = self._listener.accept()
            with sock:
                sock.settimeout(PROCESS_TIMEOUT)
                self._exchange(sock)
        except EOFError:
            pass  # the client hung up: the test checks what it received
        except BaseException as exc:  # reported to the test by __exit__
            self.error = exc

    def _exchange(self, sock: socket.socket) -> None:
        request = b""
        while b"\r\n\r\n" not in request:
            chunk = sock.recv(4096)
            assert chunk, "the client closed during the handshake"
            request += chunk
        # FIN + text opcode, no mask, a payload shorter than 126 bytes.
        frame = bytes([0x81, len(self._payload)]) + self._payload
        response = handshake_response(request)
        if not self._with_response:
            sock.sendall(response)
            self.received.append(read_client_frame(sock))
            response = b""
        if self._closes_first is not None:
            frame += close_frame(*self._closes_first)
        sock.sendall(response + frame)
        opcode = 0
        while opcode != 0x8:
            opcode, payload = read_client_frame(sock)
            self.received.append((opcode, payload))
        if self._closes_first is None:
            sock.sendall(close_frame(1000))


def close_frame(code: int, reason: bytes = b"") -> bytes:
    """An unmasked close frame, as a server sends it."""
    payload = code.to_bytes(2, "big") + reason
    return bytes([0x88, len(payload)]) + payload


def read_client_frame(sock: socket.socket) -> tuple[int, bytes]:
    """Read one short masked frame from a client: its opcode and payload."""
    first, second = read_exactly(sock, 2)
    length = second & 0x7F
    assert second & 0x80, "client frames are masked"
    assert length < 126, "only short frames are expected"
    mask = read_exactly(sock, 4)
    masked = read_exactly(sock, length)
    return first & 0x0F, bytes(byte ^ mask[i % 4] for i, byte in enumerate(masked))


def read_exactly(sock: socket.socket, size: int) -> bytes:
    """Read ``size`` bytes.

    Raises:
        EOFError: if the connection ends first.
    """
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


# Piped input


def test_piped_line_is_sent(server: BroadcastServer) -> None:
    """A piped line is sent under the username, and the client exits 0."""
    watcher = join(server, "watcher")
    result = run_piped(server.port, "hi\n")
    assert result.returncode == 0, result.stderr
    first_line = result.stdout.splitlines()[0]
    assert first_line == f"Connecting to 127.0.0.1:{server.port} as bot..."
    assert receive(watcher) == "Server: bot has joined the chat"
    assert receive(watcher) == "bot: hi"
    assert receive(watcher) == "Server: bot has left the chat"
    watcher.close()


def test_piped_lines_are_sent_in_order(server: BroadcastServer) -> None:
    """Several piped lines are all delivered, in the order they came."""
    watcher = join(server, "watcher")
    result = run_piped(server.port, "one\ntwo\nthree\n")
    assert result.returncode == 0, result.stderr
    assert receive(watcher) == "Server: bot has joined the chat"
    assert [receive(watcher) for _ in range(3)] == [
        "bot: one",
        "bot: two",
        "bot: three",
    ]
    assert receive(watcher) == "Server: bot has left the chat"
    watcher.close()


def test_empty_lines_are_not_sent() -> None:
    """Empty and blank lines are not sent: with one message allowed per
    minute, the line after them still gets through."""
    with run_server(rate_limit=1, rate_window=60.0) as server:
        watcher = join(server, "watcher")
        result = run_piped(server.port, "\n   \nhi\n\n")
        assert result.returncode == 0, result.stderr
        assert receive(watcher) == "Server: bot has joined the chat"
        assert receive(watcher) == "bot: hi"
        assert receive(watcher) == "Server: bot has left the chat"
        watcher.close()


def test_last_line_without_newline_is_sent(server: BroadcastServer) -> None:
    """Input that ends without a newline still sends its last line."""
    watcher = join(server, "watcher")
    result = run_piped(server.port, "one\ntwo")
    assert result.returncode == 0, result.stderr
    assert receive(watcher) == "Server: bot has joined the chat"
    assert [receive(watcher) for _ in range(2)] == ["bot: one", "bot: two"]
    watcher.close()


def test_crlf_line_endings_are_stripped(server: BroadcastServer) -> None:
    """A line ending in CRLF is sent without the CR (which the server would
    reject as a control character)."""
    watcher = join(server, "watcher")
    result = run_piped(server.port, "hi\r\n")
    assert result.returncode == 0, result.stderr
    assert receive(watcher) == "Server: bot has joined the chat"
    assert receive(watcher) == "bot: hi"
    watcher.close()


def test_received_messages_are_printed(server: BroadcastServer) -> None:
    """Every message received is printed on a line of its own."""
    watcher = join(server, "watcher")
    with piped_client(server.port) as client:
        assert receive(watcher) == "Server: bot has joined the chat"
        watcher.send("hello bot")
        assert client.read_line() == f"Connecting to 127.0.0.1:{server.port} as bot..."
        assert client.read_line() == "Server: bot has joined the chat"
        assert client.read_line() == "watcher: hello bot"
        client.send_line("hello watcher")
        assert client.read_line() == "bot: hello watcher"
        client.end_input()
        assert client.wait() == 0
        assert client.error_output() == ""
    watcher.close()


def test_binary_message_is_described() -> None:
    """A binary message (relay mode) is printed as its size, not its bytes."""
    with run_server(mode=Mode.RELAY) as server:
        watcher = connect(server, "watcher")
        with piped_client(server.port) as client:
            assert client.read_line().startswith("Connecting to ")
            client.send_line("ready")
            assert receive(watcher) == "ready"
            assert client.read_line() == "ready"
            watcher.send(b"\x1b\x00\x07")
            assert client.read_line() == "(binary message, 3 bytes)"
            client.end_input()
            assert client.wait() == 0
        watcher.close()


def test_end_of_input_closes_with_1000(
    server: BroadcastServer, caplog: pytest.LogCaptureFixture
) -> None:
    """At the end of its input the client closes with 1000, and the server
    announces and logs its leaving."""
    caplog.set_level(logging.INFO, logger="broadcast_sync")
    watcher = join(server, "watcher")
    with piped_client(server.port) as client:
        assert receive(watcher) == "Server: bot has joined the chat"
        client.end_input()
        assert receive(watcher) == "Server: bot has left the chat"
        assert client.wait() == 0
    leaves = [
        record.getMessage()
        for record in caplog.records
        if record.getMessage().startswith("bot (") and " left: " in record.getMessage()
    ]
    assert len(leaves) == 1, leaves
    assert "closed by the client (1000)" in leaves[0]
    watcher.close()


def test_environment_gives_the_defaults(server: BroadcastServer) -> None:
    """Without options, HOST, PORT and USER_NAME say where and who to be."""
    watcher = join(server, "watcher")
    env = client_env(HOST="127.0.0.1", PORT=str(server.port), USER_NAME="envbot")
    with piped_client(None, env=env) as client:
        assert client.read_line() == (
            f"Connecting to 127.0.0.1:{server.port} as envbot..."
        )
        assert receive(watcher) == "Server: envbot has joined the chat"
        client.send_line("from the environment")
        assert receive(watcher) == "envbot: from the environment"
        client.end_input()
        assert client.wait() == 0
    watcher.close()


def test_options_override_the_environment(server: BroadcastServer) -> None:
    """Options win over HOST, PORT and USER_NAME."""
    watcher = join(server, "watcher")
    with closed_port() as wrong_port:
        env = client_env(HOST="192.0.2.1", PORT=str(wrong_port), USER_NAME="envbot")
        with piped_client(server.port, "optbot", env) as client:
            assert receive(watcher) == "Server: optbot has joined the chat"
            client.end_input()
            assert client.wait() == 0
    watcher.close()


# In a terminal


def test_terminal_prints_above_the_line_being_typed(server: BroadcastServer) -> None:
    """In a terminal, the prompt is "> ", an incoming message goes above the
    input line, and what was typed so far stays and is sent whole."""
    watcher = join(server, "watcher")
    with terminal_client(server.port) as client:
        prompt_end = client.wait_for_prompt()
        assert receive(watcher) == "Server: tty has joined the chat"
        client.type(b"hel")
        typed_end = client.wait_for(b"hel", prompt_end)
        watcher.send("incoming")
        assert receive(watcher) == "watcher: incoming"
        client.wait_for(b"watcher: incoming", typed_end)
        client.type(b"lo\r")
        assert receive(watcher) == "tty: hello"
        client.wait_for_prompt(count=2)
        client.type(b"\x04")
        assert client.wait() == 0
        assert receive(watcher) == "Server: tty has left the chat"
        output = client.output
    shown = [match["text"] for match in ABOVE_INPUT.finditer(output)]
    assert b"watcher: incoming" in shown, output
    # Without the lines printed above, the input line reads as typed.
    assert b"\r\n> hello" in ABOVE_INPUT.sub(b"", output), output
    watcher.close()


@pytest.mark.parametrize(
    ("key", "name"),
    [(b"\x03", "Ctrl+C"), (b"\x04", "Ctrl+D")],
    ids=["ctrl-c", "ctrl-d"],
)
def test_terminal_key_leaves_cleanly(
    server: BroadcastServer, caplog: pytest.LogCaptureFixture, key: bytes, name: str
) -> None:
    """Ctrl+C, or Ctrl+D at the start of a line, leaves with 1000 and exit 0."""
    caplog.set_level(logging.INFO, logger="broadcast_sync")
    watcher = join(server, "watcher")
    with terminal_client(server.port) as client:
        client.wait_for_prompt()
        assert receive(watcher) == "Server: tty has joined the chat"
        client.wait_until_reading()
        client.type(key)
        assert client.wait() == 0, f"{name}: {client.output!r}"
        assert receive(watcher) == "Server: tty has left the chat"
        assert b"Traceback" not in client.output
    assert any(
        "closed by the client (1000)" in record.getMessage()
        for record in caplog.records
    )
    watcher.close()


# A hostile server


def test_control_characters_received_are_escaped() -> None:
    """Control characters from the server are printed as \\xNN, so they
    cannot drive the terminal."""
    hostile = HostileServer(b"\x1b[31mred\x07")
    with hostile, piped_client(hostile.port) as client:
        assert client.read_line().startswith("Connecting to ")
        client.send_line("go")
        assert client.read_line() == "\\x1b[31mred\\x07"
        client.end_input()
        assert client.wait() == 0
        client.kill()
        rest = b""
        while line := client.stdout.get_nowait():
            rest += line
        assert b"\x1b" not in rest
        assert b"\x07" not in rest
    assert hostile.received == [(0x1, b"go"), (0x8, (1000).to_bytes(2, "big"))]


def test_terminal_escapes_control_characters() -> None:
    """In a terminal too, a received ESC is shown as text, never sent raw."""
    hostile = HostileServer(b"\x1b[2Jgone")
    with hostile, terminal_client(hostile.port) as client:
        start = client.wait_for_prompt()
        client.type(b"go\r")
        end = client.wait_for(b"\\x1b[2Jgone", start)
        assert b"\x1b[2J" not in client.output[start:end]
        client.wait_for_prompt(count=2)
        client.type(b"\x04")
        assert client.wait() == 0


def test_message_sent_with_the_handshake_response_is_shown() -> None:
    """A message in the same packet as the 101 response is printed at once,
    not held back until more data arrives."""
    hostile = HostileServer(b"welcome", with_response=True)
    with hostile, piped_client(hostile.port) as client:
        assert client.read_line().startswith("Connecting to ")
        assert client.read_line(timeout=2 * UNIT) == "welcome"
        client.end_input()
        assert client.wait() == 0


# Errors


def test_close_sent_with_the_handshake_response() -> None:
    """A message and a close frame (1008) in the packet of the 101 response:
    the message is printed, then the close reported, with no traceback."""
    hostile = HostileServer(b"bye", with_response=True, closes_first=(1008, b"slow"))
    with hostile, piped_client(hostile.port) as client:
        assert client.read_line().startswith("Connecting to ")
        assert client.wait() == 1
        errors = client.error_output()
        assert "Traceback" not in errors, errors
        assert client.read_line() == "bye"
        assert errors == (
            "broadcast-server: the server closed the connection (1008: slow)\n"
        )


def test_connection_refused() -> None:
    """Nothing listening: one line on stderr, exit status 1, no traceback."""
    with closed_port() as port:
        result = run_piped(port, "")
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("broadcast-server: "), lines
    assert "refused" in lines[0]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("options", "occupied", "username", "expected"),
    [
        ({}, False, "bad\x01name", "400 username contains control characters"),
        ({"max_username_chars": 3}, False, "toolong", "400 username is longer than 3"),
        ({"max_clients": 1}, True, "bot", "503 the server is full (1 clients)"),
    ],
    ids=["control-character", "too-long", "full"],
)
def test_rejected_handshake(
    options: dict[str, Any], occupied: bool, username: str, expected: str
) -> None:
    """A refused handshake prints the server's status and reason; exit 1."""
    with run_server(**options) as server:
        first = join(server, "first") if occupied else None
        result = run_piped(server.port, "never sent\n", username)
        if first is not None:
            first.close()
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("broadcast-server: the server refused the connection")
    assert expected in lines[0]


def test_interrupt_while_connecting() -> None:
    """Ctrl+C while the server has not answered the handshake ends the
    client with an error status, and no traceback."""
    silent = socket.create_server(("127.0.0.1", 0))  # never answers
    with silent, piped_client(silent.getsockname()[1]) as client:
        assert client.read_line().startswith("Connecting to ")
        client.process.send_signal(signal.SIGINT)
        status = client.wait()
        errors = client.error_output()
    assert "Traceback" not in errors, errors
    assert status in (1, 130), errors


def test_server_going_away_is_a_lost_connection() -> None:
    """A server shutting down (1001) is a lost connection: the client says so,
    reconnects to the new server (a new log: messages may be missing)."""
    with server_on(0) as first:
        port = first.port
        with piped_client(port) as client:
            assert client.read_line().startswith("Connecting to ")
            assert client.read_line() == "Server: bot has joined the chat"
            first.stop()
            assert client.read_line() == (
                "connection lost (1001: server shutting down); reconnecting"
            )
            with server_on(port):
                assert client.read_line() == NOT_RESUMED
                assert client.read_line() == "Server: bot has joined the chat"
                client.send_line("back")
                assert client.read_line() == "bot: back"
                client.end_input()
                assert client.wait() == 0
            assert client.error_output() == ""


@pytest.mark.parametrize("code", [1008, 1009])
def test_server_closing_first_gets_an_answer(code: int) -> None:
    """A close first from the server (1008, 1009: the client's fault) is
    answered (RFC 6455, 5.5.1) and reported: exit 1, no reconnection."""
    hostile = HostileServer(b"bye", closes_first=(code, b"your fault"))
    with hostile, piped_client(hostile.port) as client:
        client.send_line("go")
        assert client.read_line().startswith("Connecting to ")
        assert client.read_line() == "bye"
        assert client.wait() == 1
        errors = client.error_output()
        assert errors == (
            f"broadcast-server: the server closed the connection ({code}: your fault)\n"
        )
        client.kill()
        assert remaining_lines(client) == []
    assert hostile.received[0] == (0x1, b"go")
    assert hostile.received[1:] == [(0x8, code.to_bytes(2, "big"))], (
        "the client did not answer the server's close frame"
    )


# The JSON protocol, rendered as text lines (no sockets)


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        (
            '{"type":"message","id":"e.7","ts":1.5,"user":"alice","text":"hi"}',
            Line("alice: hi", "e.7"),
        ),
        (
            '{"type":"join","id":"e.8","ts":1.5,"user":"bob"}',
            Line("Server: bob has joined the chat", "e.8"),
        ),
        (
            '{"type":"leave","id":"e.9","ts":1.5,"user":"bob"}',
            Line("Server: bob has left the chat", "e.9"),
        ),
        ('{"type":"notice","text":"rate limit"}', Line("Server: rate limit")),
        (
            '{"type":"message","id":"e.1","user":"a","text":"\\u001b[2J"}',
            Line("a: \x1b[2J", "e.1"),
        ),
    ],
    ids=["message", "join", "leave", "notice", "control-character"],
)
def test_render_gives_the_text_protocols_lines(frame: str, expected: Line) -> None:
    """Each JSON event becomes the line the text protocol sends, with its id
    (control characters are left to the console, which escapes them)."""
    assert render(frame) == expected


@pytest.mark.parametrize(
    "frame",
    [
        "alice: hi",
        '{"type":"welcome"',
        "[1, 2]",
        '{"type":"cursor","x":1}',
        '{"type":"message","id":"e.1","user":"alice"}',
        '{"type":"join","id":7,"user":"bob"}',
        '{"type":"notice"}',
        "[" * 100_000,
    ],
    ids=[
        "text",
        "broken-json",
        "array",
        "unknown-type",
        "no-text",
        "id-not-a-string",
        "notice-no-text",
        "deep-nesting",
    ],
)
def test_render_shows_other_frames_as_they_came(frame: str) -> None:
    """A frame that is not an event the client knows is shown as it came:
    no error, nothing hidden, no id to resume from."""
    assert render(frame) == Line(frame)


def test_binary_frames_are_described() -> None:
    """A binary frame is shown as its size, in either protocol."""
    assert render(b"\x00\x01") == Line("(binary message, 2 bytes)")
    assert text_line(b"\x00\x01") == Line("(binary message, 2 bytes)")
    assert text_line('{"type":"join"}') == Line('{"type":"join"}')


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        (
            '{"type":"welcome","user":"bob_1","users":["bob_1"],"last_id":null}',
            Welcome("bob_1", None, None),
        ),
        (
            '{"type":"welcome","user":"bob","users":[],"last_id":"e.4","resumed":true}',
            Welcome("bob", "e.4", True),
        ),
        ('{"type":"welcome","user":"bob","last_id":"e.4","resumed":"yes"}', None),
        ('{"type":"welcome","user":5,"last_id":null}', None),
        ('{"type":"welcome","user":"bob","last_id":4}', None),
        ('{"type":"join","id":"e.1","user":"bob"}', None),
        ("Server: bob has joined the chat", None),
        (b"\x00", None),
    ],
    ids=[
        "welcome",
        "resumed",
        "resumed-not-bool",
        "user-not-string",
        "last-id-not-string",
        "join",
        "text",
        "binary",
    ],
)
def test_parse_welcome(frame: str | bytes, expected: Welcome | None) -> None:
    """Only a well-formed welcome says that the server speaks JSON."""
    assert parse_welcome(frame) == expected


def test_chat_target() -> None:
    """The request target asks for JSON and resumes when it can; ``since``
    needs JSON; the username is escaped."""
    assert chat_target("bob", json_format=True, since=None) == (
        "/ws?username=bob&format=json"
    )
    assert chat_target("b&b", json_format=True, since="e.4") == (
        "/ws?username=b%26b&format=json&since=e.4"
    )
    assert chat_target("bob", json_format=False, since="e.4") == "/ws?username=bob"


def test_backoff_grows_with_jitter_from_half_a_second_to_ten() -> None:
    """Waits start at 0.5 s, roughly double, never pass 10 s, and spread
    over the upper half of their window."""
    policy = ReconnectPolicy()
    assert policy.delay(0, 0.0) == policy.delay(0, 1.0) == 0.5
    assert [policy.delay(n, 1.0) for n in range(7)] == [
        0.5,
        1.0,
        2.0,
        4.0,
        8.0,
        10.0,
        10.0,
    ]
    assert [policy.delay(n, 0.0) for n in range(7)] == [
        0.5,
        0.5,
        1.0,
        2.0,
        4.0,
        5.0,
        5.0,
    ]
    assert policy.delay(10_000, 0.5) == 7.5


def test_keepalive_pings_a_quiet_server_and_gives_up_on_a_silent_one() -> None:
    """A ping goes out after ``ping_after`` quiet seconds; any bytes from the
    server answer it; none within ``pong_timeout``, and the server is gone."""
    keepalive = Keepalive(ping_after=20.0, pong_timeout=10.0)
    assert keepalive.due(100.0) == 120.0
    assert keepalive.ping(120.0)
    assert keepalive.due(100.0) == 130.0
    assert keepalive.due(125.0) == 145.0  # the server spoke: answered
    assert keepalive.ping(145.0)
    assert keepalive.due(125.0) == 155.0
    assert not keepalive.ping(155.0)


def test_what_is_worth_retrying() -> None:
    """Close codes that blame the client, and 4xx statuses, are final; 5xx
    statuses may pass."""
    assert [code for code in range(1000, 1016) if is_client_fault(code)] == [
        1002,
        1003,
        1007,
        1008,
        1009,
    ]
    assert is_transient(503)
    assert is_transient(502)
    assert not is_transient(400)
    assert not is_transient(404)


# Reconnection


def test_resume_after_a_dropped_connection_has_no_duplicates(
    server: BroadcastServer,
) -> None:
    """After a dropped connection, the client resumes in the same log: it
    prints "reconnected", then each missed event once, and nothing again."""
    watcher = join(server, "watcher")
    with piped_client(server.port) as client:
        assert client.read_line().startswith("Connecting to ")
        assert client.read_line() == "Server: bot has joined the chat"
        assert receive(watcher) == "Server: bot has joined the chat"
        watcher.send("before")
        assert client.read_line() == "watcher: before"
        (bot,) = [member for member in server.hub.members() if member.name == "bot"]
        bot.abort(Disconnect.LOST, "test")
        assert client.read_line() == (
            "connection lost (closed without a close frame); reconnecting"
        )
        assert receive(watcher) == "watcher: before"
        assert receive(watcher) == "Server: bot has left the chat"
        watcher.send("missed 1")
        watcher.send("missed 2")
        assert client.read_line() == RESUMED
        shown = read_until(client, "watcher: missed 2")
        shown += read_until(client, "Server: bot has joined the chat")
        assert shown.count("Server: bot has left the chat") == 1, shown
        assert "watcher: before" not in shown
        assert "watcher: missed 1" in shown
        client.send_line("back")
        assert client.read_line() == "bot: back"
        client.end_input()
        assert client.wait() == 0
        assert client.error_output() == ""
        client.kill()
        assert "watcher: missed 2" not in remaining_lines(client)
    watcher.close()


def test_lines_typed_while_disconnected_are_sent_in_order() -> None:
    """Lines piped while the server is down are sent, in order, once the
    client has reconnected to the server that came back."""
    with server_on(0) as first:
        port = first.port
        with piped_client(port) as client:
            assert client.read_line().startswith("Connecting to ")
            assert client.read_line() == "Server: bot has joined the chat"
            first.stop()
            assert client.read_line().startswith("connection lost (1001")
            for line in ("one", "two", "three"):
                client.send_line(line)
            with server_on(port):
                assert client.read_line() == NOT_RESUMED
                assert client.read_line() == "Server: bot has joined the chat"
                assert [client.read_line() for _ in range(3)] == [
                    "bot: one",
                    "bot: two",
                    "bot: three",
                ]
                client.end_input()
                assert client.wait() == 0


def test_reconnects_after_the_server_process_is_killed() -> None:
    """A server process killed outright (no close frame) is a lost
    connection too: the client reconnects to the new process on the port."""
    with ServerProcess(["--host", "127.0.0.1", "--port", "0"]) as first:
        port = first.port
        with piped_client(port) as client:
            assert client.read_line().startswith("Connecting to ")
            assert client.read_line() == "Server: bot has joined the chat"
            first.process.kill()
            lost = client.read_line()
            assert lost.startswith("connection lost ("), lost
            assert lost.endswith("); reconnecting"), lost
            with ServerProcess(["--host", "127.0.0.1", "--port", str(port)]):
                assert client.read_line() == NOT_RESUMED
                assert client.read_line() == "Server: bot has joined the chat"
                client.send_line("still here")
                assert client.read_line() == "bot: still here"
                client.end_input()
                assert client.wait() == 0
                assert client.error_output() == ""


def test_ping_finds_a_frozen_server_and_resumes_when_it_thaws() -> None:
    """A server that stops answering (SIGSTOP) is found by the client's
    ping; once the server runs again, the client resumes in its log."""
    settings = f"PING_AFTER = {0.2 * UNIT}\nPONG_TIMEOUT = {0.5 * UNIT}"
    with (
        ServerProcess(["--host", "127.0.0.1", "--port", "0"]) as server,
        tuned_client(server.port, settings) as client,
    ):
        assert client.read_line().startswith("Connecting to ")
        assert client.read_line() == "Server: bot has joined the chat"
        os.kill(server.pid, signal.SIGSTOP)
        try:
            assert client.read_line() == (
                f"connection lost (no answer within {0.5 * UNIT:g} s); reconnecting"
            )
        finally:
            os.kill(server.pid, signal.SIGCONT)
        assert client.read_line() == RESUMED
        client.send_line("thawed")
        shown = read_until(client, "bot: thawed")
        assert shown.count("Server: bot has left the chat") <= 1, shown
        client.end_input()
        assert client.wait() == 0


def test_gives_up_and_reports_the_lines_not_sent() -> None:
    """With no server back, the client gives up after the policy's attempts,
    exits 1, and lists the lines it could not send, in order."""
    settings = (
        f"RECONNECT_POLICY = ReconnectPolicy(first_delay={UNIT}, "
        f"longest_delay={UNIT}, attempts=2)"
    )
    with server_on(0) as server, tuned_client(server.port, settings) as client:
        assert client.read_line().startswith("Connecting to ")
        assert client.read_line() == "Server: bot has joined the chat"
        server.stop()
        assert client.read_line().startswith("connection lost (1001")
        client.send_line("lost one")
        client.send_line("lost two")
        assert client.wait() == 1
        assert client.error_output().splitlines() == [
            f"broadcast-server: cannot reconnect to 127.0.0.1:{server.port}: "
            "connection refused (gave up after 2 attempts)",
            "broadcast-server: not sent: lost one",
            "broadcast-server: not sent: lost two",
        ]


def test_ctrl_c_while_waiting_to_reconnect_exits_0() -> None:
    """Ctrl+C (SIGINT) during the wait between two attempts ends the client
    at once, with exit status 0, and no traceback."""
    settings = (
        f"RECONNECT_POLICY = ReconnectPolicy(first_delay={60 * UNIT}, "
        f"longest_delay={60 * UNIT})"
    )
    with server_on(0) as server, tuned_client(server.port, settings) as client:
        assert client.read_line().startswith("Connecting to ")
        assert client.read_line() == "Server: bot has joined the chat"
        server.stop()
        assert client.read_line().startswith("connection lost (1001")
        client.process.send_signal(signal.SIGINT)
        assert client.wait() == 0
        assert client.error_output() == ""


def test_terminal_shows_the_lost_connection_and_ctrl_c_leaves() -> None:
    """In a terminal, the lost connection is shown above the input line, and
    Ctrl+C while the client tries to reconnect leaves with status 0."""
    with server_on(0) as server, terminal_client(server.port) as client:
        client.wait_for_prompt()
        client.wait_for(b"Server: tty has joined the chat")
        server.stop()
        client.wait_for(b"connection lost (1001: server shutting down); reconnecting")
        client.wait_until_reading()
        client.type(b"\x03")
        assert client.wait() == 0, client.output
        output = client.output
    shown = [match["text"] for match in ABOVE_INPUT.finditer(output)]
    assert b"connection lost (1001: server shutting down); reconnecting" in shown
    assert b"Traceback" not in output


def test_ctrl_c_after_end_of_input_while_waiting_exits_0() -> None:
    """At the end of its input, a client with lines still to send waits to
    reconnect; Ctrl+C then ends it with 0, listing the lines not sent."""
    settings = (
        f"RECONNECT_POLICY = ReconnectPolicy(first_delay={60 * UNIT}, "
        f"longest_delay={60 * UNIT})"
    )
    with server_on(0) as server, tuned_client(server.port, settings) as client:
        assert client.read_line().startswith("Connecting to ")
        assert client.read_line() == "Server: bot has joined the chat"
        server.stop()
        assert client.read_line().startswith("connection lost (1001")
        client.send_line("pending")
        client.end_input()
        # Nothing shows that the client has read its input: wait for it to
        # stop reading, blocked in its join of the link.
        wait_until_joining(client.process.pid)
        client.process.send_signal(signal.SIGINT)
        assert client.wait() == 0
        assert client.error_output() == "broadcast-server: not sent: pending\n"


def test_refusal_while_reconnecting_is_final() -> None:
    """A server back on the port that refuses the client (400) ends it with
    exit 1 and the server's reason, with no further attempt."""
    with server_on(0) as first:
        port = first.port
        with piped_client(port) as client:
            assert client.read_line().startswith("Connecting to ")
            assert client.read_line() == "Server: bot has joined the chat"
            first.stop()
            assert client.read_line().startswith("connection lost (1001")
            with server_on(port, max_username_chars=2):
                assert client.wait() == 1
            assert client.error_output() == (
                "broadcast-server: the server refused the connection: 400 "
                "username is longer than 2 characters (3)\n"
            )


def test_a_full_server_is_retried_while_reconnecting(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """While reconnecting, a 503 (a full server, or one shutting down) is one
    more failed attempt: the client gets in once there is room."""
    caplog.set_level(logging.INFO, logger="broadcast_sync")
    settings = (
        f"RECONNECT_POLICY = ReconnectPolicy(first_delay={UNIT}, longest_delay={UNIT})"
    )
    with server_on(0) as first:
        port = first.port
        with tuned_client(port, settings) as client:
            assert client.read_line().startswith("Connecting to ")
            assert client.read_line() == "Server: bot has joined the chat"
            first.stop()
            assert client.read_line().startswith("connection lost (1001")
            with server_on(port, max_clients=1) as second:
                occupant = join(second, "occupant")
                wait_until(
                    lambda: any(
                        ": 503 the server is full" in record.getMessage()
                        for record in caplog.records
                    ),
                    "refused as full",
                    PROCESS_TIMEOUT,
                )
                occupant.close()
                assert client.read_line() == NOT_RESUMED
                assert client.read_line() == "Server: bot has joined the chat"
                client.end_input()
                assert client.wait() == 0


def test_relay_server_is_spoken_to_in_text_and_reconnected() -> None:
    """Relay mode refuses format=json (400): the client speaks text, prints
    frames as they come, and reconnects after a restart, without resuming."""
    with server_on(0, mode=Mode.RELAY) as first:
        port = first.port
        watcher = connect(first, "watcher")
        with piped_client(port) as client:
            assert client.read_line().startswith("Connecting to ")
            client.send_line('{"type":"welcome","user":"x","last_id":null}')
            assert client.read_line() == '{"type":"welcome","user":"x","last_id":null}'
            watcher.send(b"\x00\x01")
            assert client.read_line() == "(binary message, 2 bytes)"
            first.stop()
            assert client.read_line() == (
                "connection lost (1001: server shutting down); reconnecting"
            )
            with server_on(port, mode=Mode.RELAY):
                assert client.read_line() == NOT_RESUMED
                client.send_line("again")
                assert client.read_line() == "again"
                client.end_input()
                assert client.wait() == 0
                assert client.error_output() == ""
        watcher.close()


@pytest.mark.parametrize(
    "payload",
    [
        b"Server: bot has joined the chat",
        b'{"type":"welcome"',
        b'{"type":"welcome","user":5}',
        b'{"type":"cursor","x":1}',
    ],
    ids=["text", "broken-json", "bad-welcome", "other-json"],
)
def test_server_that_ignores_format_json(payload: bytes) -> None:
    """A server that answers format=json with text frames is spoken to in
    text: its frames are printed as they came, never a JSON error."""
    hostile = HostileServer(payload)
    with hostile, piped_client(hostile.port) as client:
        assert client.read_line().startswith("Connecting to ")
        client.send_line("go")
        assert client.read_line() == payload.decode()
        client.end_input()
        assert client.wait() == 0
        assert client.error_output() == ""
    assert hostile.received == [(0x1, b"go"), (0x8, (1000).to_bytes(2, "big"))]


def test_message_too_big_is_not_retried() -> None:
    """A line over the server's byte limit gets a 1009 close: the client's
    own fault, so it exits 1 without reconnecting."""
    with (
        run_server(max_message_bytes=16) as server,
        piped_client(server.port) as client,
    ):
        assert client.read_line().startswith("Connecting to ")
        assert client.read_line() == "Server: bot has joined the chat"
        client.send_line("x" * 17)
        assert client.wait() == 1
        assert client.error_output() == (
            "broadcast-server: the server closed the connection "
            "(1009: message over 16 bytes)\n"
        )
        client.kill()
        assert remaining_lines(client) == []
