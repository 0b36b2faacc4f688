"""A real redis-server as a subprocess, for the tests that use Redis.

Each :class:`RedisProcess` runs its own ``redis-server`` on 127.0.0.1 and a
free port, in a fresh temporary directory, with persistence off: it starts
empty and leaves nothing behind. Tests can stop it, kill it, pause it and
restart it on the same port, to see what the code under test does when Redis
goes away and comes back.

Strategy: Redis cannot listen on port 0 and report the port, so a free port
is picked first (bind to port 0, note the port, close), and Redis binds it a
moment later. Another process can take the port in between; then Redis exits
with "Address already in use" and the start is retried on a new port. The
readiness probe also checks that the server answering PING is this process,
not another Redis that took the port (possible on :meth:`RedisProcess.restart`,
when the port is free for a moment).

The module speaks RESP itself (:meth:`RedisProcess.ping`,
:meth:`RedisProcess.command`), so it needs no Redis client library. It is
for Linux: waits for :meth:`~RedisProcess.pause` and
:meth:`~RedisProcess.resume` read the process state in ``/proc``.

Tests never skip when ``redis-server`` is missing: :func:`require_redis_server`
fails them with one line that says what to install.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import IO, TypeAlias

#: Loopback only: a test's Redis must not be reachable from other machines.
HOST = "127.0.0.1"
#: The one line a test fails with when redis-server is not installed.
MISSING_MESSAGE = (
    "redis-server is not installed: install the Debian package redis-server "
    "(apt-get install redis-server)"
)
#: Redis answers within milliseconds of starting; this allows a loaded CI box.
START_TIMEOUT_SECONDS = 10.0
#: With nothing to save, Redis exits at once on SIGTERM; longer means it hung.
STOP_TIMEOUT_SECONDS = 5.0
#: SIGSTOP and SIGCONT act within microseconds; longer means something is stuck.
SIGNAL_TIMEOUT_SECONDS = 5.0
#: A running Redis answers PING in microseconds; one probe waits no longer.
PROBE_TIMEOUT_SECONDS = 1.0
#: One readiness probe: short, or a silent listener that took the port would
#: hide Redis's exit; a probe that times out is simply repeated.
READY_PROBE_SECONDS = 0.1
#: Losing the race for a free port is rare; five times in a row is a real fault.
BIND_ATTEMPTS = 5
#: Between two checks of a condition: short next to a start, yet not a spin.
POLL_SECONDS = 0.01
#: Enough of the log to show why Redis failed, short enough for one message.
LOG_TAIL_LINES = 10
#: What Redis logs, before it exits, when its port is taken.
PORT_TAKEN_LOG = "Address already in use"

#: A decoded RESP reply: simple string, integer, bulk string, array or nil.
Reply: TypeAlias = "str | int | bytes | list[Reply] | None"


class RedisError(Exception):
    """redis-server did not start, stop or answer as it should."""


class RedisReplyError(Exception):
    """Redis answered a command with an error reply (``-ERR ...``)."""


def require_redis_server() -> str:
    """The path of the ``redis-server`` executable.

    Returns:
        The path found on ``PATH``.

    Raises:
        RuntimeError: It is not installed; the message says what to install.
    """
    path = shutil.which("redis-server")
    if path is None:
        raise RuntimeError(MISSING_MESSAGE)
    return path


class RedisProcess:
    """One ``redis-server`` subprocess; as a context manager, always stopped.

    Not thread-safe: one test owns it. Timeouts are in seconds; tests pass
    multiples of their time unit, so that slow machines can scale them.

    Args:
        start_timeout: How long a start waits for Redis to answer PING.
        stop_timeout: Seconds from SIGTERM to SIGKILL in :meth:`stop`.

    Example::

        with RedisProcess(start_timeout=10 * UNIT) as redis:
            redis.command("SET", "key", "value")
            redis.restart()  # The same port, and empty again.
    """

    def __init__(
        self,
        *,
        start_timeout: float = START_TIMEOUT_SECONDS,
        stop_timeout: float = STOP_TIMEOUT_SECONDS,
    ) -> None:
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        #: The port, chosen by the first start and kept by restarts; 0 before.
        self.port = 0
        #: The running process, or None before a start and after a stop.
        self._process: subprocess.Popen[bytes] | None = None
        #: The running process's directory: its working directory and log.
        self._directory: Path | None = None
        #: The log of the last process that ended, kept for error messages.
        self._last_log = ""

    def __enter__(self) -> RedisProcess:
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
    def url(self) -> str:
        """The URL of database 0, as Redis clients take it."""
        return f"redis://{HOST}:{self.port}/0"

    @property
    def pid(self) -> int:
        """The process id of the running ``redis-server``.

        Raises:
            RedisError: It is not running.
        """
        return self._running().pid

    def start(self) -> None:
        """Start ``redis-server`` and wait until it answers PING.

        The first start picks a free port; a start after :meth:`stop` or
        :meth:`kill` uses the same port again.

        Raises:
            RuntimeError: ``redis-server`` is not installed.
            RedisError: It is already running, or did not answer in time (the
                message ends with its log), or its port stayed taken.
        """
        if self._process is not None:
            raise RedisError(f"redis-server is already running on port {self.port}")
        executable = require_redis_server()
        if self.port:
            if not self._launch(executable):
                raise RedisError(
                    f"port {self.port} was taken while redis-server was "
                    f"stopped: {self.log_tail()}"
                )
            return
        try:
            for _ in range(BIND_ATTEMPTS):
                self.port = _free_port()
                if self._launch(executable):
                    return
            raise RedisError(
                f"no free port after {BIND_ATTEMPTS} attempts: {self.log_tail()}"
            )
        except BaseException:
            self.port = 0  # Not started: the next start picks a port again.
            raise

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it still runs ``stop_timeout`` later.

        Resumes a paused process first, or it could not act on SIGTERM.
        Does nothing if it is not running.
        """
        process = self._process
        if process is None:
            return
        try:
            if process.poll() is None:
                process.send_signal(signal.SIGCONT)
                process.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(self.stop_timeout)
        finally:
            # Also reached on Ctrl+C during the wait: never leave it running.
            self._end()

    def kill(self) -> None:
        """SIGKILL, as a crash would: no shutdown of its own.

        Does nothing if it is not running.
        """
        if self._process is not None:
            self._end()

    def restart(self) -> None:
        """Stop, then start a new, empty ``redis-server`` on the same port.

        Raises:
            RedisError: As :meth:`start` does.
        """
        self.stop()
        self.start()

    def pause(self) -> None:
        """SIGSTOP: Redis still accepts connections, but answers nothing.

        Returns once the process is stopped.

        Raises:
            RedisError: It is not running, or did not stop in time.
        """
        self._running().send_signal(signal.SIGSTOP)
        self._wait_for(lambda: self._state() == "T", "stop on SIGSTOP")

    def resume(self) -> None:
        """SIGCONT: a paused Redis answers again, in order.

        Returns once the process runs again.

        Raises:
            RedisError: It is not running, or did not resume in time.
        """
        self._running().send_signal(signal.SIGCONT)
        self._wait_for(lambda: self._state() != "T", "resume on SIGCONT")

    def ping(self, timeout: float = PROBE_TIMEOUT_SECONDS) -> bool:
        """Whether Redis answers an inline PING with ``+PONG`` within ``timeout``.

        Refused connections, timeouts and other answers all count as no.
        """
        try:
            with socket.create_connection((HOST, self.port), timeout) as sock:
                sock.sendall(b"PING\r\n")
                with sock.makefile("rb") as stream:
                    return stream.readline() == b"+PONG\r\n"
        except OSError:
            return False

    def command(
        self, *args: str | bytes, timeout: float = PROBE_TIMEOUT_SECONDS
    ) -> Reply:
        """Send one command on a new connection and return the decoded reply.

        Args:
            args: The command and its arguments, e.g. ``"SET", "key", "value"``.
            timeout: For the connection and for each read.

        Returns:
            A simple string as ``str``, a bulk string as ``bytes``, an integer,
            ``None`` for nil, or a list of those for an array.

        Raises:
            RedisReplyError: Redis answered with an error.
            OSError: The connection failed or timed out.
        """
        with socket.create_connection((HOST, self.port), timeout) as sock:
            sock.sendall(_encode(args))
            with sock.makefile("rb") as stream:
                return _read_reply(stream)

    def log_tail(self) -> str:
        """The last lines of the current (or last) process's log."""
        lines = self._log().splitlines()[-LOG_TAIL_LINES:]
        return " | ".join(lines) or "(empty log)"

    def _launch(self, executable: str) -> bool:
        """Run ``redis-server`` on :attr:`port` and wait until it answers.

        Returns:
            True once it answers; False if it exited because the port is taken.

        Raises:
            RedisError: It exited for another reason, or did not answer in time.
        """
        directory = Path(tempfile.mkdtemp(prefix=f"redis-{self.port}-"))
        self._directory = directory
        command = [
            executable,
            "--bind", HOST,
            "--port", str(self.port),
            "--dir", str(directory),
            "--save", "",
            "--appendonly", "no",
            "--protected-mode", "no",
            "--daemonize", "no",
            "--logfile", "",
        ]  # fmt: skip
        try:
            # The log (Redis's stdout) goes to a file: a pipe nobody reads
            # could fill and stall Redis. The child has its own descriptor.
            with (directory / "redis.log").open("wb") as log:
                self._process = subprocess.Popen(
                    command,
                    cwd=directory,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            ready = self._wait_ready()
        except BaseException:
            self._end()
            raise
        if not ready:
            taken = PORT_TAKEN_LOG in self._log()
            self._end()
            if not taken:
                raise RedisError(f"redis-server exited: {self.log_tail()}")
        return ready

    def _wait_ready(self) -> bool:
        """Wait until this process answers PING; False if it exits first.

        Raises:
            RedisError: No answer within ``start_timeout``.
        """
        process = self._running()
        deadline = time.monotonic() + self.start_timeout
        while process.poll() is None:
            # Another Redis may hold the port: the answer must come from ours.
            if self.ping(READY_PROBE_SECONDS) and self._server_pid() == process.pid:
                return True
            if time.monotonic() >= deadline:
                raise RedisError(
                    f"redis-server did not answer PING on port {self.port} "
                    f"within {self.start_timeout:g} s: {self.log_tail()}"
                )
            # Not a sleep: returns as soon as the process exits.
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(POLL_SECONDS)
        return False

    def _server_pid(self) -> int | None:
        """The process id that the Redis on our port reports, if it answers."""
        try:
            info = self.command("INFO", "server", timeout=READY_PROBE_SECONDS)
        except (OSError, RedisReplyError):
            return None
        if not isinstance(info, bytes):
            return None
        found = re.search(rb"^process_id:(\d+)", info, re.MULTILINE)
        return int(found[1]) if found else None

    def _end(self) -> None:
        """Kill the process if it still runs, reap it, keep its log, clean up."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()
        self._last_log = self._log()
        if self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)
            self._directory = None

    def _running(self) -> subprocess.Popen[bytes]:
        """The running process.

        Raises:
            RedisError: There is none.
        """
        if self._process is None:
            raise RedisError("redis-server is not running")
        return self._process

    def _state(self) -> str:
        """The process state letter from ``/proc`` (``T``: stopped)."""
        stat = Path(f"/proc/{self.pid}/stat").read_text()
        # "pid (comm) state ...": comm may hold spaces and parentheses.
        return stat.rpartition(")")[2].split()[0]

    def _wait_for(self, condition: Callable[[], bool], what: str) -> None:
        """Poll ``condition`` until it holds.

        Raises:
            RedisError: It did not hold within the signal timeout, or the
                process exited.
        """
        process = self._running()
        deadline = time.monotonic() + SIGNAL_TIMEOUT_SECONDS
        while not condition():
            if process.poll() is not None:
                raise RedisError(f"redis-server exited: {self.log_tail()}")
            if time.monotonic() >= deadline:
                raise RedisError(
                    f"redis-server did not {what} within {SIGNAL_TIMEOUT_SECONDS:g} s"
                )
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(POLL_SECONDS)

    def _log(self) -> str:
        """The running process's log, or that of the last one that ended."""
        if self._directory is None:
            return self._last_log
        try:
            data = (self._directory / "redis.log").read_bytes()
        except OSError:
            return self._last_log
        return data.decode("utf-8", "replace")


def _free_port() -> int:
    """A TCP port on :data:`HOST` that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
    return port


def _encode(args: tuple[str | bytes, ...]) -> bytes:
    """A command as a RESP array of bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg.encode() if isinstance(arg, str) else arg
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def _read_reply(stream: IO[bytes]) -> Reply:
    """Read and decode one RESP2 reply.

    Raises:
        RedisReplyError: An error reply.
        RedisError: A truncated or unknown reply.
        OSError: The read failed or timed out.
    """
    line = stream.readline()
    if not line.endswith(b"\r\n"):
        raise RedisError(f"truncated reply: {line!r}")
    kind, body = line[:1], line[1:-2]
    if kind == b"+":
        return body.decode()
    if kind == b"-":
        raise RedisReplyError(body.decode())
    if kind == b":":
        return int(body)
    if kind == b"$":
        length = int(body)
        if length < 0:
            return None
        data = stream.read(length + 2)
        if len(data) != length + 2:
            raise RedisError(f"truncated bulk string: {data!r}")
        return data[:-2]
    if kind == b"*":
        count = int(body)
        return None if count < 0 else [_read_reply(stream) for _ in range(count)]
    raise RedisError(f"unknown reply: {line!r}")
