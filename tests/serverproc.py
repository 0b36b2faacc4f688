"""The server as a subprocess, for the benchmark and the conformance runner.

The server runs as ``python -m broadcast_sync start`` from the working copy,
exactly as a user starts it. Leaving the context manager always stops it:
SIGTERM first, SIGKILL if it does not exit in time.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, TypeVar

#: The working copy: the server is run from it, not from an installed copy.
REPOSITORY = Path(__file__).resolve().parents[1]
#: The server prints this line on stdout once it listens.
READY_PREFIX = "Server started on port "
#: A cold start imports h11 and wsproto; this is far more than it needs.
START_TIMEOUT_SECONDS = 15.0
#: How long a stop waits after SIGTERM before SIGKILL, unless told otherwise.
STOP_TIMEOUT_SECONDS = 10.0

_Server = TypeVar("_Server", bound="ServerProcess")


class ServerError(Exception):
    """The server did not start, died, or did not stop as it should."""


class ServerProcess:
    """One server subprocess, as a context manager that always stops it.

    Args:
        options: Command-line options after ``start``.
        cpu: Pin the server to this CPU with ``taskset``; None: no pinning.
        log_path: Where the server's stderr (its log) goes; None: a
            temporary file.
        stop_timeout: Seconds from SIGTERM to SIGKILL.
        new_session: Run the server in a session of its own, so that Ctrl+C
            reaches only the caller, which stops it.
    """

    def __init__(
        self,
        options: Sequence[str],
        *,
        cpu: int | None = None,
        log_path: Path | None = None,
        stop_timeout: float = STOP_TIMEOUT_SECONDS,
        new_session: bool = False,
    ) -> None:
        self.cpu = cpu
        self.log_path = log_path
        self.stop_timeout = stop_timeout
        self.port = 0
        #: The log, once the server has stopped.
        self.log: list[str] = []
        #: Whether the server exited before it was asked to.
        self.died = False
        #: Whether the server had to be killed: it ignored SIGTERM too long.
        self.killed = False
        #: When SIGTERM was sent, plus the time the server has to exit.
        self._stop_deadline: float | None = None
        self._stop_requested = False
        self.command = [sys.executable, "-m", "broadcast_sync", "start", *options]
        # A file, not a pipe: a chatty log never stalls the server. Read and
        # write, for log_lines(). Closed by stop(), which always runs.
        self._log: IO[bytes] = (
            tempfile.TemporaryFile()  # noqa: SIM115
            if log_path is None
            else log_path.open("w+b")
        )
        pinning = [] if cpu is None else ["taskset", "-c", str(cpu)]
        self.process = subprocess.Popen(
            [*pinning, *self.command],
            cwd=REPOSITORY,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log,
            start_new_session=new_session,
        )

    def __enter__(self: _Server) -> _Server:
        try:
            self.port = self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        """The server's process id (taskset execs the server: same process)."""
        return self.process.pid

    def _wait_ready(self) -> int:
        """Read the ready line and return the port it names."""
        assert self.process.stdout is not None
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        line = b""
        while not line.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            ready, _, _ = select.select(
                [self.process.stdout], [], [], max(remaining, 0)
            )
            if not ready:
                raise ServerError(f"no ready line within {START_TIMEOUT_SECONDS:g} s")
            chunk = os.read(self.process.stdout.fileno(), 1024)
            if not chunk:
                raise ServerError(f"the server exited: {self.log_tail()}")
            line += chunk
        text = line.decode("utf-8", "replace").strip()
        if not text.startswith(READY_PREFIX):
            raise ServerError(f"unexpected output: {text!r}")
        return int(text.removeprefix(READY_PREFIX))

    def check_alive(self) -> None:
        """Raise :class:`ServerError` if the server has exited."""
        if self.process.poll() is not None:
            raise ServerError(
                f"the server exited with {self.process.returncode}: {self.log_tail()}"
            )

    def exited(self) -> bool:
        """Whether the process has exited."""
        return self.process.poll() is not None

    def request_stop(self) -> None:
        """Send SIGTERM, once; record in :attr:`died` an earlier exit."""
        if self._stop_requested:
            return
        self._stop_requested = True
        if self.process.poll() is not None:
            self.died = True
        else:
            self._stop_deadline = time.monotonic() + self.stop_timeout
            self.process.send_signal(signal.SIGTERM)

    def stop_deadline_ns(self) -> int:
        """When :meth:`stop` kills the server, on the ``monotonic_ns`` clock."""
        deadline = self._stop_deadline or time.monotonic() + self.stop_timeout
        return int(deadline * 1e9)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it still runs ``stop_timeout`` later.

        Records in :attr:`died` and :attr:`killed` what went wrong, if
        anything, keeps the log in :attr:`log` and releases the pipe and the
        file.
        """
        if self._log.closed:
            return
        self.request_stop()
        try:
            if self._stop_deadline is not None:
                self.process.wait(max(self._stop_deadline - time.monotonic(), 0))
        except subprocess.TimeoutExpired:
            self.killed = True
        finally:
            # Also reached on Ctrl+C during the wait: never leave it running.
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
        self.log = self.log_lines()
        self._log.close()

    def log_lines(self) -> list[str]:
        """The server's log (stderr) so far."""
        if self._log.closed:
            return self.log
        # pread: the server shares this file's offset, which must not move.
        fd = self._log.fileno()
        data = os.pread(fd, os.fstat(fd).st_size, 0)
        return data.decode("utf-8", "replace").splitlines()

    def log_tail(self, lines: int = 5) -> str:
        """The last lines of the log, for error messages."""
        return " | ".join(self.log_lines()[-lines:]) or "(empty log)"
