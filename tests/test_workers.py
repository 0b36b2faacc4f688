"""--workers: server processes on one port, one room through Redis."""

from __future__ import annotations

import functools
import os
import re
import signal
import subprocess
import sys

from tests.conftest import UNIT, receive_text, run_concurrently, wait_until
from tests.redisproc import RedisProcess
from tests.serverproc import REPOSITORY, ServerProcess
from tests.wsclient import ChatClient

#: Clients spread by the kernel over two workers: with this many, the chance
#: that all land on one worker is 2 in 2**16.
CLIENTS = 16
MESSAGES_PER_SENDER = 20
#: "worker N started (pid P)" in the parent's log.
STARTED = re.compile(r"worker (\d) started \(pid (\d+)\)")


def workers(redis: RedisProcess) -> ServerProcess:
    """Two workers on one port, sharing ``redis``."""
    return ServerProcess(
        ["--port", "0", "--workers", "2", "--redis", redis.url, "--rate-limit", "0"]
    )


def connect_to(port: int, name: str) -> ChatClient:
    """A client of the workers' port, its own join notice read."""
    client: ChatClient = ChatClient.connect(f"ws://127.0.0.1:{port}/ws?username={name}")
    assert receive_text(client) == f"Server: {name} has joined the chat"
    return client


def wait_for_log(server: ServerProcess, pattern: str, count: int = 1) -> list[str]:
    """The log lines matching ``pattern``, once there are ``count`` of them."""

    def matching() -> list[str]:
        return [line for line in server.log_lines() if re.search(pattern, line)]

    wait_until(lambda: len(matching()) >= count, f"{count} x {pattern!r}", 20 * UNIT)
    return matching()


def test_clients_of_both_workers_see_one_sequence(redis_server: RedisProcess) -> None:
    """Clients spread over two workers all see every message in one order."""
    with workers(redis_server) as server:
        clients = [connect_to(server.port, f"user{n}") for n in range(CLIENTS)]
        senders = clients[:4]

        def send_all(sender: ChatClient, number: int) -> None:
            for index in range(MESSAGES_PER_SENDER):
                sender.send(f"{number}.{index}")

        run_concurrently(
            [functools.partial(send_all, s, n) for n, s in enumerate(senders)]
        )
        expected_count = len(senders) * MESSAGES_PER_SENDER
        sequences = []
        for client in clients:
            received: list[str] = []
            while len(received) < expected_count:
                line = receive_text(client)
                if not line.startswith("Server: "):
                    received.append(line)
            sequences.append(received)
        assert all(sequence == sequences[0] for sequence in sequences)
        for client in clients:
            client.close()
        joins = wait_for_log(server, r" joined; ", CLIENTS)
    assert {line.split()[3] for line in joins} == {"worker"}
    assert {line.split()[4] for line in joins} == {"1", "2"}, "one worker got all"


def test_killed_worker_is_restarted(redis_server: RedisProcess) -> None:
    """A worker killed with SIGKILL is restarted; the parent then stops cleanly."""
    with workers(redis_server) as server:
        started = wait_for_log(server, STARTED.pattern, 2)
        match = STARTED.search(started[0])
        assert match is not None
        number, pid = match[1], int(match[2])
        os.kill(pid, signal.SIGKILL)
        wait_for_log(server, rf"worker {number} \(pid {pid}\) was killed by SIGKILL")
        restarted = wait_for_log(server, STARTED.pattern, 3)[-1]
        assert f"worker {number} started" in restarted
        wait_for_log(server, r"listening on", 3)
        clients = [connect_to(server.port, f"user{n}") for n in range(4)]
        for client in clients:
            client.close()
    assert server.process.returncode == 0
    assert not server.killed
    assert any("all workers stopped" in line for line in server.log)


def test_sigint_stops_every_worker(redis_server: RedisProcess) -> None:
    """SIGINT to the parent stops the workers gracefully, and it exits 0."""
    with workers(redis_server) as server:
        alice = connect_to(server.port, "alice")
        server.process.send_signal(signal.SIGINT)
        assert server.process.wait(20 * UNIT) == 0
        alice.close()
    assert sum("broadcast_sync.server: stopped" in line for line in server.log) == 2


def test_workers_need_redis() -> None:
    """--workers 2 without --redis is a usage error (exit 2)."""
    result = subprocess.run(
        [sys.executable, "-m", "broadcast_sync", "start", "--workers", "2"],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=30 * UNIT,
        check=False,
    )
    assert result.returncode == 2
    assert "--workers needs --redis" in result.stderr
