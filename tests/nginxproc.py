"""A real nginx as a subprocess, as the reverse proxy in front of a server.

Each :class:`NginxProcess` runs its own ``/usr/sbin/nginx`` (the Debian
package ``nginx``) on 127.0.0.1 and a free port, with a configuration written
to a fresh temporary directory, which also holds its pid file, log and
temporary files: no root needed, nothing of the system's nginx touched, and
nothing left behind. It proxies every path, the page at ``/`` and the
WebSocket at ``/ws``, to the server's port.

The part of the configuration a user would copy, :data:`SITE_TEMPLATE`, is
the one the README gives: :func:`site_config` fills in its two addresses.
The rest (:data:`MAIN_TEMPLATE`) only makes nginx run unprivileged in a test.

Strategy: as with Redis (``tests/redisproc.py``), the port is picked free and
then bound by nginx a moment later; if another process takes it in between,
nginx exits with "Address already in use" and the start is retried on a new
port. The readiness probe asks for a token that only this process's
configuration serves, so an nginx that took the port cannot fool it. nginx
runs as the leader of its own process group: stopping it signals the master,
which stops its workers; if the master must be killed, the whole group is,
so that no orphaned worker keeps the port.

Tests never skip when nginx is missing: :func:`require_nginx` raises, and the
test fails with one line that says what to install.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import string
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

#: The binary of the Debian package; tests/require-services installs it.
NGINX = Path("/usr/sbin/nginx")
#: Loopback only: a test's proxy must not be reachable from other machines.
HOST = "127.0.0.1"
#: The one line a test fails with when nginx is not installed.
MISSING_MESSAGE = (
    f"{NGINX} is missing: install the Debian package nginx (apt-get install nginx)"
)
#: nginx starts in milliseconds; this allows a loaded CI box.
START_TIMEOUT_SECONDS = 10.0
#: On SIGTERM nginx closes its connections and exits at once.
STOP_TIMEOUT_SECONDS = 5.0
#: One readiness probe: short, or a silent listener that took the port would
#: hide nginx's exit; a probe that times out is simply repeated.
READY_PROBE_SECONDS = 0.1
#: Losing the race for a free port is rare; five times in a row is a real fault.
BIND_ATTEMPTS = 5
#: Between two checks of a condition: short next to a start, yet not a spin.
POLL_SECONDS = 0.01
#: Enough of the log to show why nginx failed, short enough for one message.
LOG_TAIL_LINES = 10
#: What nginx logs, before it exits, when its port is taken.
PORT_TAKEN_LOG = "Address already in use"
#: The server name of the readiness probe's own virtual server.
PROBE_HOST = "nginxproc-probe.invalid"
#: The ``proxy_read_timeout`` of the README: longer than the server's ping
#: interval (54 s), so that an idle chat, kept alive by pings, stays open.
PROXY_TIMEOUT = "120s"


class _Template(string.Template):
    """``@name`` placeholders: nginx's own variables start with ``$``."""

    delimiter = "@"


#: The configuration the README gives, to paste into nginx's ``http`` block
#: (``/etc/nginx/conf.d/``); ``@listen``, ``@upstream`` and ``@timeout`` are
#: filled in by :func:`site_config`.
SITE_TEMPLATE = _Template(
    """\
# Connection: upgrade for a WebSocket handshake, close for other requests.
map $http_upgrade $connection_upgrade {
    default upgrade;
    ''      close;
}

server {
    listen @listen;

    location / {
        proxy_pass http://@upstream;

        # WebSocket: pass the upgrade on (nginx drops hop-by-hop headers).
        proxy_http_version 1.1;
        proxy_set_header Upgrade $http_upgrade;
        proxy_set_header Connection $connection_upgrade;

        # The Host the browser asked for: the server's origin check compares
        # it with the page's Origin.
        proxy_set_header Host $http_host;

        # The client's address and scheme, believed by --trusted-proxy.
        # A client's own Forwarded header must go: it would win over these.
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_set_header X-Forwarded-Proto $scheme;
        proxy_set_header Forwarded "";

        # An idle chat carries only the server's pings, every 54 s
        # (--ping-interval) and their pongs: wait longer than that.
        proxy_read_timeout @timeout;
        proxy_send_timeout @timeout;
    }
}
"""
)

#: What makes nginx run in a test: in the foreground, as this user, with all
#: its files in ``@directory``; ``@site`` is the README's configuration.
MAIN_TEMPLATE = _Template(
    """\
@user
daemon off;
master_process on;
worker_processes 1;
pid @directory/nginx.pid;
error_log stderr notice;

events {
    worker_connections 64;
}

http {
    access_log off;
    client_body_temp_path @directory/client_body;
    proxy_temp_path @directory/proxy;
    fastcgi_temp_path @directory/fastcgi;
    uwsgi_temp_path @directory/uwsgi;
    scgi_temp_path @directory/scgi;

@site
    # The readiness probe: a token only this process serves.
    server {
        listen @listen;
        server_name @probe_host;
        location / {
            return 200 "@token";
        }
    }
}
"""
)


class NginxError(Exception):
    """nginx did not start or stop as it should."""


def require_nginx() -> Path:
    """The path of the ``nginx`` executable.

    Raises:
        RuntimeError: It is not installed; the message says what to install.
    """
    if not os.access(NGINX, os.X_OK):
        raise RuntimeError(MISSING_MESSAGE)
    return NGINX


def site_config(listen: str, upstream: str, *, timeout: str = PROXY_TIMEOUT) -> str:
    """The README's nginx configuration for these addresses.

    Args:
        listen: What nginx listens on, e.g. ``80`` or ``127.0.0.1:8443``.
        upstream: The server's ``HOST:PORT``, e.g. ``127.0.0.1:8080``.
        timeout: How long an upgraded connection may stay silent.
    """
    return SITE_TEMPLATE.substitute(listen=listen, upstream=upstream, timeout=timeout)


class NginxProcess:
    """One nginx in front of ``upstream_port``; as a context manager, always
    stopped.

    Not thread-safe: one test owns it. Timeouts are in seconds; tests pass
    multiples of their time unit, so that slow machines can scale them.

    Args:
        upstream_port: The server's port on 127.0.0.1.
        proxy_timeout: nginx's ``proxy_read_timeout``, as nginx writes it.
        start_timeout: How long a start waits for nginx to answer.
        stop_timeout: Seconds from SIGTERM to SIGKILL in :meth:`stop`.

    Example::

        with run_server() as server, NginxProcess(server.port) as nginx:
            ChatClient.connect(nginx.url("ws", "/ws"))
    """

    def __init__(
        self,
        upstream_port: int,
        *,
        proxy_timeout: str = PROXY_TIMEOUT,
        start_timeout: float = START_TIMEOUT_SECONDS,
        stop_timeout: float = STOP_TIMEOUT_SECONDS,
    ) -> None:
        self.upstream_port = upstream_port
        self.proxy_timeout = proxy_timeout
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        #: The port nginx listens on; 0 before a start and after a stop.
        self.port = 0
        #: The running master process, or None.
        self._process: subprocess.Popen[bytes] | None = None
        #: Its directory: configuration, pid file, log and temporary files.
        self._directory: Path | None = None
        #: What this process's probe server answers.
        self._token = ""
        #: The log of the last process that ended, kept for error messages.
        self._last_log = ""

    def __enter__(self) -> NginxProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def url(self, scheme: str = "http", path: str = "/") -> str:
        """The URL of ``path`` through nginx, e.g. ``url("ws", "/ws")``."""
        return f"{scheme}://{HOST}:{self.port}{path}"

    @property
    def pid(self) -> int:
        """The process id of nginx's master process.

        Raises:
            NginxError: It is not running.
        """
        if self._process is None:
            raise NginxError("nginx is not running")
        return self._process.pid

    def start(self) -> None:
        """Start nginx on a free port and wait until it answers.

        Raises:
            RuntimeError: nginx is not installed.
            NginxError: It is already running, or exited, or did not answer in
                time (the message ends with its log), or no port stayed free.
        """
        if self._process is not None:
            raise NginxError(f"nginx is already running on port {self.port}")
        executable = require_nginx()
        for _ in range(BIND_ATTEMPTS):
            self.port = _free_port()
            if self._launch(executable):
                return
        self.port = 0
        raise NginxError(
            f"no free port after {BIND_ATTEMPTS} attempts: {self.log_tail()}"
        )

    def stop(self) -> None:
        """SIGTERM (nginx's fast shutdown), then SIGKILL to its whole process
        group if it still runs ``stop_timeout`` later.

        Does nothing if it is not running.
        """
        process = self._process
        if process is None:
            return
        try:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(self.stop_timeout)
        finally:
            # Also reached on Ctrl+C during the wait: never leave it running.
            self._end()

    def log_tail(self) -> str:
        """The last lines of the current (or last) process's log."""
        lines = self._log().splitlines()[-LOG_TAIL_LINES:]
        return " | ".join(lines) or "(empty log)"

    def _launch(self, executable: Path) -> bool:
        """Run nginx on :attr:`port` and wait until it answers.

        Returns:
            True once it answers; False if its port is taken (it is then
            stopped).

        Raises:
            NginxError: It exited for another reason, or did not answer in time.
        """
        directory = Path(tempfile.mkdtemp(prefix=f"nginx-{self.port}-"))
        self._directory = directory
        self._token = secrets.token_hex(16)
        listen = f"{HOST}:{self.port}"
        site = site_config(
            listen, f"{HOST}:{self.upstream_port}", timeout=self.proxy_timeout
        )
        config = MAIN_TEMPLATE.substitute(
            # As root, the master would run its workers as "nobody", who
            # cannot enter this directory (mode 0700); unprivileged, nginx
            # warns that the directive is ignored, so leave it out.
            user="user root;" if os.geteuid() == 0 else "",
            directory=directory,
            site=site,
            listen=listen,
            probe_host=PROBE_HOST,
            token=self._token,
        )
        (directory / "nginx.conf").write_text(config)
        command = [
            str(executable),
            "-p", str(directory),
            "-c", str(directory / "nginx.conf"),
            "-e", "stderr",
        ]  # fmt: skip
        try:
            # The log (nginx's stderr) goes to a file: a pipe nobody reads
            # could fill and stall nginx. The child has its own descriptor.
            with (directory / "nginx.log").open("wb") as log:
                self._process = subprocess.Popen(
                    command,
                    cwd=directory,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # Its own group, for _end.
                )
            ready = self._wait_ready()
        except BaseException:
            self._end()
            raise
        if not ready:
            taken = PORT_TAKEN_LOG in self._log()
            self._end()
            if not taken:
                raise NginxError(f"nginx exited: {self.log_tail()}")
        return ready

    def _wait_ready(self) -> bool:
        """Wait until this process answers the probe; False if it exits first
        or finds its port taken.

        Raises:
            NginxError: No answer within ``start_timeout``.
        """
        process = self._process
        assert process is not None
        deadline = time.monotonic() + self.start_timeout
        while process.poll() is None:
            if self._probe():
                return True
            # nginx retries a taken port for 2.5 s before it exits: no need.
            if PORT_TAKEN_LOG in self._log():
                return False
            if time.monotonic() >= deadline:
                raise NginxError(
                    f"nginx did not answer on port {self.port} within "
                    f"{self.start_timeout:g} s: {self.log_tail()}"
                )
            # Not a sleep: returns as soon as the process exits.
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(POLL_SECONDS)
        return False

    def _probe(self) -> bool:
        """Whether our nginx, and not another process, answers on our port."""
        request = f"GET / HTTP/1.0\r\nHost: {PROBE_HOST}\r\n\r\n".encode()
        try:
            with socket.create_connection(
                (HOST, self.port), READY_PROBE_SECONDS
            ) as sock:
                sock.sendall(request)
                response = b""
                while chunk := sock.recv(4096):
                    response += chunk
        except OSError:
            return False
        return response.startswith(b"HTTP/1.1 200 ") and response.endswith(
            self._token.encode()
        )

    def _end(self) -> None:
        """Kill nginx's process group if it still runs, reap the master, keep
        its log, clean up."""
        process, self._process = self._process, None
        if process is not None:
            if process.poll() is None:
                # The master is not reaped yet, so its id still names its group.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        self._last_log = self._log()
        if self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)
            self._directory = None
        self.port = 0

    def _log(self) -> str:
        """The running process's log, or that of the last one that ended."""
        if self._directory is None:
            return self._last_log
        try:
            data = (self._directory / "nginx.log").read_bytes()
        except OSError:
            return self._last_log
        return data.decode("utf-8", "replace")


def _free_port() -> int:
    """A TCP port on :data:`HOST` that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
    return port
