"""The redis-server test helper (tests/redisproc.py), on real processes."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import redisproc
from tests.conftest import UNIT
from tests.redisproc import MISSING_MESSAGE, RedisError, RedisProcess

#: A Redis with no data starts and stops in milliseconds; this allows a slow box.
START_TIMEOUT = 10 * UNIT
STOP_TIMEOUT = 5 * UNIT
#: A running Redis answers in microseconds: silence this long means it does not.
SILENCE = 0.2 * UNIT
#: How long an answer that must come may take.
ANSWER = 5 * UNIT
#: The script that `make test` runs first.
REQUIRE_SERVICES = Path(__file__).resolve().parent / "require-services"


def redis_process() -> RedisProcess:
    """A Redis helper with this suite's timeouts, not started yet."""
    return RedisProcess(start_timeout=START_TIMEOUT, stop_timeout=STOP_TIMEOUT)


def redis_children() -> list[int]:
    """The ids of this process's redis-server children, reaped or not."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # It exited while we looked.
            continue
        command, _, rest = text.partition(" (")[2].rpartition(") ")
        if command == "redis-server" and int(rest.split()[1]) == os.getpid():
            children.append(int(stat.parent.name))
    return children


def gone(pid: int) -> bool:
    """Whether no process ``pid`` exists (not even as a zombie)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.fixture(autouse=True)
def no_redis_left_behind() -> Iterator[None]:
    """Fail a test that leaves a redis-server of ours running."""
    yield
    assert not redis_children(), "redis-server left running"


def test_starts_and_answers_ping() -> None:
    """A started Redis answers PING on 127.0.0.1 at the port in its URL."""
    with redis_process() as redis:
        assert redis.port > 0
        assert redis.url == f"redis://127.0.0.1:{redis.port}/0"
        assert redis.ping(ANSWER)
        assert redis.command("PING", timeout=ANSWER) == "PONG"


def test_restart_keeps_the_port_and_comes_back_empty() -> None:
    """Restart runs a new process on the same port, without the old data."""
    with redis_process() as redis:
        assert redis.command("SET", "key", "value", timeout=ANSWER) == "OK"
        assert redis.command("GET", "key", timeout=ANSWER) == b"value"
        port, pid = redis.port, redis.pid
        redis.restart()
        assert (redis.port, gone(pid)) == (port, True)
        assert redis.pid != pid
        assert redis.command("GET", "key", timeout=ANSWER) is None
        assert redis.command("DBSIZE", timeout=ANSWER) == 0


def test_pause_silences_it_until_resume() -> None:
    """A paused Redis accepts but does not answer; resumed, it answers again."""
    with redis_process() as redis:
        redis.pause()
        assert not redis.ping(SILENCE)
        redis.resume()
        assert redis.ping(ANSWER)


def test_stop_leaves_no_process() -> None:
    """Stop ends and reaps the process, and the port refuses connections."""
    redis = redis_process()
    redis.start()
    pid = redis.pid
    redis.stop()
    assert gone(pid)
    assert not redis.ping(ANSWER)
    with pytest.raises(RedisError, match="not running"):
        _ = redis.pid


def test_leaving_the_context_stops_a_paused_process() -> None:
    """The context manager stops Redis even when it was left paused."""
    with redis_process() as redis:
        pid = redis.pid
        redis.pause()
    assert gone(pid)


def test_kill_then_start_brings_it_back_on_the_port() -> None:
    """After a SIGKILL, as after a crash, start runs Redis again on its port."""
    with redis_process() as redis:
        port, pid = redis.port, redis.pid
        redis.kill()
        assert gone(pid)
        redis.start()
        assert redis.port == port
        assert redis.ping(ANSWER)


def test_a_port_taken_before_redis_binds_it_is_replaced(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Losing the race for the free port makes the start try another port."""
    free_port = redisproc._free_port
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken: int = holder.getsockname()[1]
        ports = [taken]
        monkeypatch.setattr(
            redisproc, "_free_port", lambda: ports.pop() if ports else free_port()
        )
        with redis_process() as redis:
            assert redis.port != taken
            assert redis.ping(ANSWER)


def test_restart_fails_loudly_when_the_port_was_taken() -> None:
    """A restart cannot move to another port: a taken one is an error."""
    with redis_process() as redis, socket.socket() as holder:
        redis.stop()
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("127.0.0.1", redis.port))
        holder.listen()
        with pytest.raises(RedisError, match=f"port {redis.port} was taken"):
            redis.start()


def test_missing_redis_server_fails_with_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Without redis-server on PATH, starting fails with what to install."""
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RuntimeError) as raised:
        redis_process().start()
    assert str(raised.value) == MISSING_MESSAGE


def test_require_services_says_what_is_missing(tmp_path: Path) -> None:
    """The script run by `make test` fails with one line if it cannot install."""
    bash = shutil.which("bash")
    assert bash is not None
    result = subprocess.run(
        [bash, str(REQUIRE_SERVICES)],
        env={"PATH": str(tmp_path)},  # Neither redis-server nor apt-get.
        capture_output=True,
        text=True,
        timeout=ANSWER,
        check=False,
    )
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == (
        "make test: redis-server is missing; install the Debian package "
        "redis-server (apt-get install redis-server)\n"
    )
