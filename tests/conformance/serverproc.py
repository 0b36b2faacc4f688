"""The server under test: ``python -m broadcast_sync start`` in relay mode.

Relay mode broadcasts every message verbatim to every client, the sender
included, so to the fuzzingclient's lone connection the server is the echo
server it expects. The server runs from the working copy as a user starts
it, in a session of its own so that Ctrl+C reaches only the runner, which
stops it: SIGTERM, then SIGKILL if it does not exit in time.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

from tests.conformance.environment import REPOSITORY

#: The server prints this line on stdout once it listens.
READY_PREFIX = "Server started on port "
#: A cold start imports h11 and wsproto; this is far more than it needs.
START_TIMEOUT_SECONDS = 15.0
#: A graceful stop with no client left takes well under a second; one with
#: a client left waits at most the close timeout (3 s) for it.
STOP_TIMEOUT_SECONDS = 10.0
#: The options of every run, besides those given on the command line.
SERVER_OPTIONS = (
    # An echo server to a lone client.
    "--mode",
    "relay",
    "--host",
    "127.0.0.1",
    "--port",
    "0",
    # Cases 9.1.6 and 9.2.6 send 16 MiB messages.
    "--max-message-bytes",
    "16777216",
    # Cases 9.7 and 9.8 send a thousand messages as fast as they are echoed.
    "--rate-limit",
    "0",
    # Every connection's end and its reason, for diagnosis.
    "--log-level",
    "info",
)
#: What the log says when the server hit an error of its own.
ERROR_MARKERS = (" ERROR ", " CRITICAL ", "Traceback (most recent call last)")


class ServerError(Exception):
    """The server did not start, or did not stop as it should."""


class ServerProcess:
    """One server subprocess, as a context manager that always stops it."""

    def __init__(self, log_path: Path, extra_options: Sequence[str] = ()) -> None:
        self.log_path = log_path
        self.port = 0
        #: Whether the server had to be killed: it ignored SIGTERM too long.
        self.killed = False
        #: Whether the server exited before it was asked to.
        self.died = False
        self._stopped = False
        self.command = [
            sys.executable,
            "-m",
            "broadcast_sync",
            "start",
            *SERVER_OPTIONS,
            *extra_options,
        ]
        # A file, not a pipe: a chatty log never stalls the server.
        self._log: IO[bytes] = log_path.open("wb")
        self.process = subprocess.Popen(
            self.command,
            cwd=REPOSITORY,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log,
            start_new_session=True,
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
    def url(self) -> str:
        """The WebSocket URL the suite connects to."""
        return f"ws://127.0.0.1:{self.port}/ws"

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
                raise ServerError(f"no ready line within {START_TIMEOUT_SECONDS:g} s")
            chunk = os.read(self.process.stdout.fileno(), 1024)
            if not chunk:
                raise ServerError(f"the server exited: {self.log_tail()}")
            line += chunk
        text = line.decode("utf-8", "replace").strip()
        if not text.startswith(READY_PREFIX):
            raise ServerError(f"unexpected output: {text!r}")
        return int(text.removeprefix(READY_PREFIX))

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it still runs after ``STOP_TIMEOUT_SECONDS``.

        Records in :attr:`died` and :attr:`killed` what went wrong, if anything.
        """
        if self._stopped:
            return
        self._stopped = True
        if self.process.poll() is not None:
            self.died = True
        else:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                self.killed = True
            finally:
                # Also reached on Ctrl+C during the wait: never leave it running.
                if self.process.poll() is None:
                    self.process.kill()
                    self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
        self._log.close()

    def problems(self) -> list[str]:
        """What went wrong with the server itself, once it has stopped."""
        found = []
        if self.died:
            found.append(
                f"the server exited during the run with status "
                f"{self.process.returncode}: {self.log_tail()}"
            )
        elif self.killed:
            found.append(
                f"the server ignored SIGTERM for {STOP_TIMEOUT_SECONDS:g} s "
                "and was killed"
            )
        elif self.process.returncode != 0:
            found.append(f"the server exited with status {self.process.returncode}")
        errors = [
            line
            for line in self.log_lines()
            if any(marker in line for marker in ERROR_MARKERS)
        ]
        if errors:
            shown = "\n  ".join(errors[:10])
            found.append(f"the server logged {len(errors)} error(s):\n  {shown}")
        return found

    def log_lines(self) -> list[str]:
        """The server's log (stderr) so far."""
        return self.log_path.read_text("utf-8", "replace").splitlines()

    def log_tail(self, lines: int = 5) -> str:
        """The last lines of the log, for error messages."""
        return " | ".join(self.log_lines()[-lines:]) or "(empty log)"
