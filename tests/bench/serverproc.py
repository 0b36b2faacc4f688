"""The server under test, as a subprocess pinned to its own core.

The server runs as ``python -m broadcast_sync start`` from the working copy,
exactly as a user starts it, with the options that keep the measurement
about broadcasting: no rate limit, room for 10,000 idle clients, and pings
once an hour so that no pong is ever due during a run. Starting and
stopping it is :mod:`tests.serverproc`'s work; this module adds what the
measurement reads from ``/proc``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from tests import serverproc
from tests.serverproc import REPOSITORY, ServerError

__all__ = [
    "REPOSITORY",
    "SERVER_OPTIONS",
    "STOP_TIMEOUT_SECONDS",
    "ServerError",
    "ServerProcess",
    "choose_cpus",
    "core_times",
]

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


def choose_cpus(pin: bool) -> tuple[int | None, int | None]:
    """``(server CPU, generator CPU)``: two distinct CPUs, or None for no pinning.

    The server is pinned with ``taskset``, so without it nothing is pinned.
    """
    cpus = sorted(os.sched_getaffinity(0))
    if not pin or len(cpus) < 2 or shutil.which("taskset") is None:
        return None, None
    return cpus[0], cpus[1]


class ServerProcess(serverproc.ServerProcess):
    """One benchmark server, optionally pinned to ``cpu``: start, measure, stop."""

    def __init__(self, cpu: int | None = None) -> None:
        super().__init__(SERVER_OPTIONS, cpu=cpu, stop_timeout=STOP_TIMEOUT_SECONDS)

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
