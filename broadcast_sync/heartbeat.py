"""The heartbeat: one timer thread that pings clients and drops silent ones."""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from broadcast_sync import frames
from broadcast_sync.hub import Hub, Member
from broadcast_sync.metrics import Disconnect

if TYPE_CHECKING:
    from broadcast_sync.config import ServerConfig

logger = logging.getLogger(__name__)


class Heartbeat:
    """Pings every member each ``ping_interval`` and drops any member from
    which nothing (a pong or any other frame) arrived for ``pong_timeout``.

    The thread sleeps until the next ping or the earliest deadline, whichever
    comes first, so a dead client is dropped on time whatever the interval.
    """

    def __init__(self, hub: Hub[Member], config: ServerConfig) -> None:
        self._hub = hub
        self._ping_interval = config.ping_interval
        self._pong_timeout = config.pong_timeout
        #: Set by :meth:`stop`; the thread waits on it, so it wakes at once.
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat")

    def start(self) -> None:
        """Start the heartbeat thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop the heartbeat thread and join it."""
        self._stopping.set()
        self._thread.join()

    def _run(self) -> None:
        ping = frames.encode_ping()
        next_ping = time.monotonic() + self._ping_interval
        while True:
            now = time.monotonic()
            members = self._hub.members()
            if now >= next_ping:
                for member in members:
                    member.send(ping)
                next_ping = now + self._ping_interval
            wake = min([next_ping, *self._drop_silent(members, now)])
            if self._stopping.wait(wake - now):
                return

    def _drop_silent(self, members: list[Member], now: float) -> list[float]:
        """Drop the members silent for too long; return the others' deadlines."""
        deadlines = []
        for member in members:
            deadline = member.last_seen + self._pong_timeout
            if deadline > now:
                deadlines.append(deadline)
                continue
            logger.info(
                "%s (%s): no pong for %g s, dropping",
                member.name,
                member.address,
                self._pong_timeout,
            )
            member.abort(
                Disconnect.PONG_TIMEOUT,
                f"no pong for {self._pong_timeout:g} s",
                frames.INTERNAL_ERROR,
            )
        return deadlines
