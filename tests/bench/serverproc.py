"""The server under test, as a subprocess pinned to its own core; and Redis.

The server runs as ``python -m broadcast_sync start`` from the working copy,
exactly as a user starts it, with the options that keep the measurement
about broadcasting: no rate limit, room for 10,000 idle clients, and pings
once an hour so that no pong is ever due during a run. Starting and
stopping it is :mod:`tests.serverproc`'s work; this module adds what the
measurement reads from ``/proc``, and the benchmark's own ``redis-server``
(:func:`redis_for_bench`) for ``--redis``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

from tests import serverproc
from tests.redisproc import RedisProcess
from tests.serverproc import REPOSITORY, ServerError

__all__ = [
    "REPOSITORY",
    "SERVER_OPTIONS",
    "STOP_TIMEOUT_SECONDS",
    "ServerError",
    "ServerProcess",
    "choose_cpus",
    "core_times",
    "pin_process",
    "process_cpu_seconds",
    "redis_for_bench",
    "run_time_ns",
]

#: A graceful stop takes well under a second with a room of clients, which
#: close on the close frame; with the idle scenario's 10,000, 8 to 10 s
#: (8.6 s in memory, 10.1 s with Redis, where each leave is one script
#: call; 2026-11-26). A server still busy after this is killed.
STOP_TIMEOUT_SECONDS = 15.0
#: Options of every run. Chat mode: ``NAME: MESSAGE`` and join notices, which
#: the byte counts rely on. Pings every hour keep pongs out of the
#: measurement; no rate limit, since the load is the point; room for the idle
#: scenario, whose clients all come from one address.
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
    "--max-clients-per-ip",
    "0",
    "--handshake-rate",
    "0",
    "--log-level",
    "warning",
    "--ping-interval",
    "3600",
    "--pong-timeout",
    "3600",
)
#: A scrape of /metrics on a busy server waits its turn for the interpreter.
METRICS_TIMEOUT_SECONDS = 10.0
#: An empty Redis starts in milliseconds; this allows a loaded machine.
REDIS_START_SECONDS = 10.0
REDIS_STOP_SECONDS = 5.0
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


def choose_cpus(pin: bool) -> tuple[int | None, int | None]:
    """``(server CPU, generator CPU)``: two distinct CPUs, or None for no pinning.

    The server is pinned with ``taskset``, so without it nothing is pinned.
    """
    cpus = sorted(os.sched_getaffinity(0))
    if not pin or len(cpus) < 2 or shutil.which("taskset") is None:
        return None, None
    return cpus[0], cpus[1]


def process_cpu_seconds(pid: int) -> tuple[float, float]:
    """``(user, system)`` CPU seconds of process ``pid`` so far, all threads.

    From ``/proc/PID/stat`` (utime and stime): clock ticks, so a hundredth
    of a second at best; fine over a scenario of seconds.
    """
    stat = Path(f"/proc/{pid}/stat").read_text()
    # Fields after the command name, which may contain spaces.
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[11]) / CLOCK_TICKS, int(fields[12]) / CLOCK_TICKS


def run_time_ns(pid: int) -> int:
    """Nanoseconds on a CPU of the live threads of process ``pid``.

    From each thread's ``schedstat``: precise enough for a single resume
    (milliseconds), where ``/proc/PID/stat`` counts in clock ticks. Threads
    that ended are no longer counted, so only compare two readings between
    which no thread of interest ended.
    """
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # the thread ended meanwhile
            total += int((task / "schedstat").read_text().split()[0])
    return total


def pin_process(pid: int, cpu: int) -> None:
    """Pin every thread of ``pid`` to ``cpu``, as ``taskset -a -c CPU -p PID``."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(int(task.name), {cpu})


def _children(pid: int) -> list[int]:
    """The ids of ``pid``'s child processes."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            found += [int(child) for child in (task / "children").read_text().split()]
    return found


@contextlib.contextmanager
def redis_for_bench(cpu: int | None) -> Iterator[RedisProcess]:
    """A fresh, empty ``redis-server`` of the benchmark's own, on ``cpu``.

    It runs on the generator's core: the server keeps its core to itself,
    and Redis's CPU use is measured and shown apart (``redis CPU``). Always
    stopped on the way out.

    Raises:
        RuntimeError: ``redis-server`` is not installed.
        tests.redisproc.RedisError: it did not start.
    """
    with RedisProcess(
        start_timeout=REDIS_START_SECONDS, stop_timeout=REDIS_STOP_SECONDS
    ) as redis:
        if cpu is not None:
            pin_process(redis.pid, cpu)
        yield redis


class ServerProcess(serverproc.ServerProcess):
    """One benchmark server, optionally pinned to ``cpu``: start, measure, stop.

    Args:
        cpu: Pin the server (and its workers, which inherit it) to this CPU.
        redis: Run the server with ``--redis`` on this Redis, and measure it.
        options: Options after :data:`SERVER_OPTIONS`, which they override.
    """

    def __init__(
        self,
        cpu: int | None = None,
        *,
        redis: RedisProcess | None = None,
        options: Sequence[str] = (),
    ) -> None:
        redis_options = () if redis is None else ("--redis", redis.url)
        super().__init__(
            (*SERVER_OPTIONS, *redis_options, *options),
            cpu=cpu,
            stop_timeout=STOP_TIMEOUT_SECONDS,
        )
        #: The Redis the server uses, if any: not owned, only measured.
        self.redis = redis

    def cpu_times(self) -> tuple[float, float]:
        """``(user, system)`` CPU seconds used so far, all threads.

        With ``--workers``, those of the workers too (the parent's children).
        """
        user, system = process_cpu_seconds(self.pid)
        for child in _children(self.pid):
            with contextlib.suppress(OSError):  # it ended meanwhile
                child_user, child_system = process_cpu_seconds(child)
                user += child_user
                system += child_system
        return user, system

    def redis_cpu_seconds(self) -> float | None:
        """Redis's CPU seconds so far, user and system; None without Redis."""
        if self.redis is None:
            return None
        user, system = process_cpu_seconds(self.redis.pid)
        return user + system

    def rss_bytes(self) -> int:
        """Resident set size (VmRSS)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise ServerError("no VmRSS in /proc/PID/status")

    def thread_count(self) -> int:
        """Threads in the server process."""
        return len(os.listdir(f"/proc/{self.pid}/task"))

    def descriptor_count(self) -> int:
        """File descriptors open in the server process."""
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def metrics(self) -> dict[str, float]:
        """The server's ``/metrics``, by sample name (labels and all)."""
        url = f"http://127.0.0.1:{self.port}/metrics"
        with urllib.request.urlopen(url, timeout=METRICS_TIMEOUT_SECONDS) as response:
            text = response.read().decode()
        samples = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                samples[name] = float(value)
        return samples
