"""The server under test: ``python -m broadcast_sync start`` in relay mode.

Relay mode broadcasts every message verbatim to every client, the sender
included, so to the fuzzingclient's lone connection the server is the echo
server it expects. The server runs from the working copy as a user starts
it, in a session of its own so that Ctrl+C reaches only the runner, which
stops it: SIGTERM, then SIGKILL if it does not exit in time. Given a
certificate, it speaks TLS on the same port, and the suite connects to
``wss://``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tests import serverproc
from tests.certs import CertFiles
from tests.serverproc import ServerError

__all__ = [
    "SERVER_OPTIONS",
    "STOP_TIMEOUT_SECONDS",
    "ServerError",
    "ServerProcess",
    "websocket_url",
]

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
    # The fuzzing client opens one connection per case, hundreds a second.
    "--handshake-rate",
    "0",
    # Every connection's end and its reason, for diagnosis.
    "--log-level",
    "info",
)
#: What the log says when the server hit an error of its own.
ERROR_MARKERS = (" ERROR ", " CRITICAL ", "Traceback (most recent call last)")


def websocket_url(port: int, tls: bool) -> str:
    """The URL of the server's WebSocket endpoint: ``wss://`` over TLS."""
    scheme = "wss" if tls else "ws"
    return f"{scheme}://127.0.0.1:{port}/ws"


class ServerProcess(serverproc.ServerProcess):
    """The server in relay mode, logging to ``log_path``, in its own session;
    over TLS with ``certificate``, if one is given."""

    def __init__(
        self,
        log_path: Path,
        extra_options: Sequence[str] = (),
        certificate: CertFiles | None = None,
    ) -> None:
        tls_options = (
            ("--certfile", str(certificate.cert), "--keyfile", str(certificate.key))
            if certificate
            else ()
        )
        super().__init__(
            [*SERVER_OPTIONS, *tls_options, *extra_options],
            log_path=log_path,
            stop_timeout=STOP_TIMEOUT_SECONDS,
            new_session=True,
        )
        self.tls = certificate is not None

    @property
    def url(self) -> str:
        """The WebSocket URL the suite connects to."""
        return websocket_url(self.port, self.tls)

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
