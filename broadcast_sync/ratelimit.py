"""Per-client message rate limiting."""

from __future__ import annotations

import enum


class Verdict(enum.Enum):
    """What to do with one message."""

    #: Broadcast it.
    ALLOW = "allow"
    #: Drop it and tell the sender, at most once per window.
    DROP_AND_NOTIFY = "drop and notify"
    #: Drop it silently: the sender was told within the window already.
    DROP = "drop"


class RateLimiter:
    """Allows ``limit`` messages per ``window`` seconds: a token bucket.

    The bucket holds ``limit`` tokens and refills at ``limit / window`` a
    second; each message takes one. A client that sends at the rate, with
    the jitter of a real network, never runs dry, and an idle client gets
    its whole burst back. (Fixed windows that open with the first message
    after the last one ended let jitter put one message too many into some
    windows: an honest client at exactly the rate lost about one in ten.)

    Owned by one client's reader thread, so it needs no lock. Slotted: every
    client has two, and ten thousand clients add up.
    """

    __slots__ = ("_notified", "_refilled", "_tokens", "limit", "window")

    def __init__(self, limit: int, window: float) -> None:
        """``limit`` of 0 disables the limiter."""
        self.limit = limit
        self.window = window
        self._tokens = float(limit)
        #: Monotonic time of the last refill, and of the last notice.
        self._refilled = float("-inf")
        self._notified = float("-inf")

    def check(self, now: float) -> Verdict:
        """Count one message arriving at ``now`` (monotonic seconds)."""
        if self.limit <= 0:
            return Verdict.ALLOW
        refill = (now - self._refilled) * self.limit / self.window
        self._tokens = min(self._tokens + refill, self.limit)
        self._refilled = now
        if self._tokens >= 1:
            self._tokens -= 1
            return Verdict.ALLOW
        if now - self._notified < self.window:
            return Verdict.DROP
        self._notified = now
        return Verdict.DROP_AND_NOTIFY
