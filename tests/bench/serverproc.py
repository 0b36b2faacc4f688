"""The server under test, as a subprocess pinned to its own core.

The server runs as ``python -m broadcast_sync start`` from the working copy,
exactly as a user starts it, with the options that keep the measurement
about broadcasting: no rate limit, room for 10,000 idle clients, and pings
once an hour so that no pong is ever due during a run.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO

#: The working copy: the server is run from it, not from an installed copy.
REPOSITORY = Path(__file__).resolve().parents[2]
#: The server prints this line on stdout once it listens.
READY_PREFIX = "Server started on port "
#: A cold start imports h11 and wsproto; this is far more than it needs.
START_TIMEOUT_SECONDS = 15.0
#: A graceful stop takes well under a second once the clients close (they
#: do on the close frame); a server still busy after this is killed.
STOP_TIMEOUT_SECONDS = 6.0
#: Options of every run. Chat mode: ``NAME: MESSAGE`` and join notices, which
#: the byte counts rely on. Pings every hour keep pongs out of the
#: measurement; no rate limit, since the load is the point; room for the idle
#: scenario.
SERVER_OPTIONS = (
    "--host",
    "127.0.0.1",
    "--port",
    "0",
    "--mode",
    "chat",
    "--rate-limit",
    "0",
    "--max-clients",
    "12000",
    "--log-level",
    "warning",
    "--ping-interval",
    "3600",
    "--pong-timeout",
    "3600",
)
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def core_times(cpu: int) -> tuple[float, float]:
    """Seconds CPU ``cpu`` spent on tasks, and on interrupts.

    Tasks: user, nice, system and steal time. Interrupts (irq and softirq)
    are apart: loopback TCP is processed in softirqs, charged to no task,
    and those of our own traffic are part of our load, not other people's.
    """
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{cpu} "):
            fields = [int(field) for field in line.split()[1:]]
            user, nice, system, _, _, irq, softirq, steal = fields[:8]
            tasks = user + nice + system + steal
            return tasks / CLOCK_TICKS, (irq + softirq) / CLOCK_TICKS
    raise ServerError(f"no CPU {cpu} in /proc/stat")


class ServerError(Exception):
    """The server did not start, or died."""


def choose_cpus(pin: bool) -> tuple[int | None, int | None]:
    """``(server CPU, generator CPU)``: two distinct CPUs, or None for no pinning.

    The server is pinned with ``taskset``, so without it nothing is pinned.
    """
    cpus = sorted(os.sched_getaffinity(0))
    if not pin or len(cpus) < 2 or shutil.which("taskset") is None:
        return None, None
    return cpus[0], cpus[1]


class ServerProcess:
    """One server subprocess: start it, measure it, stop it.

    Use as a context manager: leaving the block always stops the process,
    with SIGTERM first and SIGKILL if it does not exit in time.
    """

    def __init__(self, cpu: int | None = None) -> None:
        self.cpu = cpu
        self.port = 0
        #: The server's stderr (its log), kept in a file so that a chatty
        #: log can never fill a pipe and stall the server.
        # Closed by stop(), which always runs: see __enter__ and __exit__.
        self._log: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115
        #: The log, once the server has stopped.
        self.log: list[str] = []
        #: Whether the server had to be killed: it ignored SIGTERM too long.
        self.killed = False
        #: When SIGTERM was sent, plus the time the server has to exit.
        self._stop_deadline: float | None = None
        command = [sys.executable, "-m", "broadcast_sync", "start", *SERVER_OPTIONS]
        if cpu is not None:
            command = ["taskset", "-c", str(cpu), *command]
        self.process = subprocess.Popen(
            command,
            cwd=REPOSITORY,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log,
        )

    def __enter__(self) -> ServerProcess:
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
        assert self.process.stdout is not None
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        line = b""
        while not line.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            ready, _, _ = select.select(
                [self.process.stdout], [], [], max(remaining, 0)
            )
            if not ready:
                raise ServerError(f"no ready line within {START_TIMEOUT_SECONDS} s")
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

    def cpu_times(self) -> tuple[float, float]:
        """``(user, system)`` CPU seconds used so far, all threads."""
        stat = Path(f"/proc/{self.pid}/stat").read_text()
        # Fields after the command name, which may contain spaces.
        fields = stat[stat.rindex(")") + 2 :].split()
        return int(fields[11]) / CLOCK_TICKS, int(fields[12]) / CLOCK_TICKS

    def rss_bytes(self) -> int:
        """Resident set size (VmRSS)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise ServerError("no VmRSS in /proc/PID/status")

    def thread_count(self) -> int:
        """Threads in the server process."""
        return len(os.listdir(f"/proc/{self.pid}/task"))

    def request_stop(self) -> None:
        """Send SIGTERM (once): the server closes every client with 1001, exits."""
        if self.process.poll() is None and self._stop_deadline is None:
            self._stop_deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
            self.process.send_signal(signal.SIGTERM)

    def exited(self) -> bool:
        """Whether the process has exited."""
        return self.process.poll() is not None

    def stop_deadline_ns(self) -> int:
        """When :meth:`stop` kills the server, on the ``monotonic_ns`` clock."""
        deadline = self._stop_deadline or time.monotonic() + STOP_TIMEOUT_SECONDS
        return int(deadline * 1e9)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it still runs ``STOP_TIMEOUT_SECONDS`` later.

        Keeps the log in :attr:`log` and releases the pipe and the file.
        """
        self.request_stop()
        try:
            remaining = (self._stop_deadline or 0) - time.monotonic()
            self.process.wait(max(remaining, 0))
        except subprocess.TimeoutExpired:
            self.killed = True
        finally:
            # Also reached on Ctrl+C during the wait: never leave it running.
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
        if not self._log.closed:
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
