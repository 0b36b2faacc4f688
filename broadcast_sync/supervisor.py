"""Running the server: one process, or workers under a supervising parent.

With ``--workers N``, N server processes listen on one port (SO_REUSEPORT:
the kernel spreads the connections over them), so one host uses all its
cores; their shared Redis makes them one room. The parent only supervises:
it forwards SIGINT and SIGTERM, restarts a worker that died, with backoff,
and exits 0 once every worker has stopped cleanly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from types import FrameType

from broadcast_sync.auth import AuthSetupFailed
from broadcast_sync.config import ServerConfig
from broadcast_sync.log import LogUnavailable
from broadcast_sync.logs import LogSettings, configure
from broadcast_sync.server import BroadcastServer
from broadcast_sync.transport import TLSSetupFailed

logger = logging.getLogger(__name__)

#: The line that says the server accepts connections; scripts wait for it.
READY_LINE = "Server started on port {port}"
#: How long a worker may take to start: a cold start imports everything and
#: reaches Redis.
WORKER_START_SECONDS = 30.0
#: After SIGTERM, how long a worker may take beyond its close timeout
#: before it is killed.
WORKER_STOP_GRACE_SECONDS = 10.0
#: Restart backoff: doubled after each death, from the first to the last;
#: back to the first once a worker has run this long.
RESTART_FIRST_SECONDS = 0.5
RESTART_MAX_SECONDS = 30.0
RESTART_RESET_SECONDS = 60.0


class StartFailed(Exception):
    """The server could not start; the message says why, in one line."""


def serve(config: ServerConfig, ready: Callable[[int], None]) -> None:
    """Run one server until SIGINT or SIGTERM, then stop it gracefully.

    Calls ``ready`` with the port once the server accepts connections.

    Raises:
        StartFailed: if it cannot listen, cannot reach its log, or cannot
            use its certificate or its auth secret.
    """
    stop_requested = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop_requested.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    try:
        server = BroadcastServer(config)
    except (TLSSetupFailed, AuthSetupFailed) as exc:
        raise StartFailed(str(exc)) from exc
    except OSError as exc:
        where = f"{config.host}:{config.port}"
        raise StartFailed(f"cannot listen on {where}: {exc}") from exc
    try:
        server.start()
    except LogUnavailable as exc:
        raise StartFailed(str(exc)) from exc
    ready(server.port)
    stop_requested.wait()
    server.stop()


def run_worker(config: ServerConfig, log: LogSettings, ready: Connection) -> None:
    """A worker process: serve, telling the parent when it is ready.

    ``ready`` is a pipe of this worker's own: ("ready", port) or ("failed",
    why) goes through it. Not a queue shared by the workers: a worker killed
    while it held the queue's lock would leave it locked for the others.
    """
    configure(log)
    try:
        serve(config, lambda port: ready.send(("ready", port)))
    except StartFailed as exc:
        ready.send(("failed", str(exc)))
        sys.exit(1)


@dataclasses.dataclass
class _Worker:
    """One slot of the pool and the process in it."""

    number: int
    process: BaseProcess
    #: Where the worker says that it is ready, or why it failed.
    ready: Connection
    started: float
    #: The delay before the next restart of this slot.
    backoff: float = RESTART_FIRST_SECONDS


class Supervisor:
    """Starts ``config.workers`` workers on one port and keeps them running.

    Everything runs in the main thread: a signal handler writes to a pipe
    that the main loop waits on, with the workers' sentinels.
    """

    def __init__(self, config: ServerConfig, log: LogSettings) -> None:
        self._config = config
        self._log = log
        self._context = multiprocessing.get_context("spawn")
        self._workers: list[_Worker] = []
        self._stopping = False
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_write, False)

    def run(self, ready: Callable[[int], None]) -> int:
        """Run the workers until SIGINT or SIGTERM; return the exit status.

        Raises:
            StartFailed: if the port is taken, or a worker failed to start.
        """
        signal.signal(signal.SIGINT, self._request_stop)
        signal.signal(signal.SIGTERM, self._request_stop)
        try:
            with self._reserve_port() as placeholder:
                config = dataclasses.replace(
                    self._config, port=placeholder.getsockname()[1]
                )
                self._config = config
                for number in range(1, config.workers + 1):
                    self._workers.append(self._spawn(number))
                self._wait_all_ready()
                ready(config.port)
                self._supervise()
            return self._stop_all()
        finally:
            os.close(self._wake_read)
            os.close(self._wake_write)

    def _reserve_port(self) -> socket.socket:
        """A socket bound to the port (not listening: it takes no
        connections), so that port 0 becomes one port for every worker."""
        placeholder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # As the workers do (allow_reuse_address): connections of a previous
        # run, in TIME_WAIT, must not keep the port from a restart.
        placeholder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        placeholder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            placeholder.bind((self._config.host, self._config.port))
        except OSError as exc:
            placeholder.close()
            where = f"{self._config.host}:{self._config.port}"
            raise StartFailed(f"cannot listen on {where}: {exc}") from exc
        return placeholder

    def _spawn(self, number: int) -> _Worker:
        ready, told = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=run_worker,
            args=(self._config, self._log, told),
            name=f"worker {number}",
        )
        process.start()
        told.close()  # the worker's end: closed here, EOF once it exits
        logger.info("worker %d started (pid %d)", number, process.pid)
        return _Worker(number, process, ready, time.monotonic())

    def _wait_all_ready(self) -> None:
        deadline = time.monotonic() + WORKER_START_SECONDS
        for worker in self._workers:
            status, detail = self._readiness(worker, deadline)
            if status != "ready":
                self._stop_all()
                raise StartFailed(str(detail))

    def _readiness(self, worker: _Worker, deadline: float) -> tuple[str, int | str]:
        """What ``worker`` says by ``deadline``: ready, or why it failed."""
        if not worker.ready.poll(max(deadline - time.monotonic(), 0)):
            return "failed", f"workers did not start within {WORKER_START_SECONDS:g} s"
        try:
            message: tuple[str, int | str] = worker.ready.recv()
        except EOFError:  # it ended without a word: it crashed
            return "failed", f"worker {worker.number} ended before it was ready"
        return message

    def _supervise(self) -> None:
        """Restart workers that die, until asked to stop."""
        restarts: dict[int, float] = {}  # slot number -> when to restart it
        while not self._stopping:
            # Look before waiting: a worker may have died since the last wait.
            now = time.monotonic()
            for worker in self._workers:
                if worker.number not in restarts and not worker.process.is_alive():
                    restarts[worker.number] = now + self._mourn(worker, now)
            for number, when in list(restarts.items()):
                if when <= now:
                    del restarts[number]
                    self._restart(number)
            alive = [
                w.process.sentinel for w in self._workers if w.number not in restarts
            ]
            timeout = min([when - now for when in restarts.values()], default=None)
            multiprocessing.connection.wait([*alive, self._wake_read], timeout)

    def _mourn(self, worker: _Worker, now: float) -> float:
        """Log a worker's death; return the delay before its restart."""
        if now - worker.started >= RESTART_RESET_SECONDS:
            worker.backoff = RESTART_FIRST_SECONDS
        logger.warning(
            "worker %d (pid %d) %s; restarting in %g s",
            worker.number,
            worker.process.pid,
            _describe_exit(worker.process.exitcode),
            worker.backoff,
        )
        return worker.backoff

    def _restart(self, number: int) -> None:
        index = number - 1
        backoff = min(self._workers[index].backoff * 2, RESTART_MAX_SECONDS)
        self._workers[index].process.close()
        self._workers[index].ready.close()
        self._workers[index] = self._spawn(number)
        self._workers[index].backoff = backoff

    def _request_stop(self, signum: int, frame: FrameType | None) -> None:
        self._stopping = True
        # The pipe is full (the loop is awake already) or closed (it is over).
        with contextlib.suppress(OSError):
            os.write(self._wake_write, b"\0")

    def _stop_all(self) -> int:
        """Forward SIGTERM to every worker and wait; 0 if all stopped cleanly."""
        for worker in self._workers:
            if worker.process.is_alive():
                os.kill(worker.process.pid, signal.SIGTERM)  # type: ignore[arg-type]
        deadline = (
            time.monotonic() + self._config.close_timeout + WORKER_STOP_GRACE_SECONDS
        )
        status = 0
        for worker in self._workers:
            worker.process.join(max(deadline - time.monotonic(), 0))
            if worker.process.is_alive():
                logger.warning("worker %d did not stop: killing it", worker.number)
                worker.process.kill()
                worker.process.join()
            if worker.process.exitcode != 0:
                status = 1
            worker.ready.close()
        logger.info("all workers stopped")
        return status


def _describe_exit(exitcode: int | None) -> str:
    """How a worker ended, from its exit code (negative: a signal's number)."""
    if exitcode is not None and exitcode < 0:
        return f"was killed by {signal.Signals(-exitcode).name}"
    return f"exited with status {exitcode}"
