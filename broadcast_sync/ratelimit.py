"""Per-client message rate limiting."""

from __future__ import annotations

import enum


class Verdict(enum.Enum):
    """What to do with one message."""

    #: Broadcast it.
    ALLOW = "allow"
    #: Drop it and tell the sender, once per window.
    DROP_AND_NOTIFY = "drop and notify"
    #: Drop it silently: the sender was told in this window already.
    DROP = "drop"


class RateLimiter:
    """Allows ``limit`` messages per ``window`` seconds, in fixed windows.

    A window opens with the first message after the previous one ended, so an
    idle client always gets its full allowance back. Owned by one client's
    reader thread, so it needs no lock.
    """

    def __init__(self, limit: int, window: float) -> None:
        """``limit`` of 0 disables the limiter."""
        self.limit = limit
        self.window = window
        self._window_end = float("-inf")
        self._count = 0
        self._notified = False

    def check(self, now: float) -> Verdict:
        """Count one message arriving at ``now`` (monotonic seconds)."""
        if self.limit <= 0:
            return Verdict.ALLOW
        if now >= self._window_end:
            self._window_end = now + self.window
            self._count = 0
            self._notified = False
        self._count += 1
        if self._count <= self.limit:
            return Verdict.ALLOW
        if self._notified:
            return Verdict.DROP
        self._notified = True
        return Verdict.DROP_AND_NOTIFY
