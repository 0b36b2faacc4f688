"""Per-address admission: how many connections one client address may hold,
and how fast it may open new ones, so that no address can take the server.

Addresses are counted by group: an IPv4 address is a group of its own; an
IPv6 address belongs to its /64, since one subscriber gets a whole /64 and
may pick any of its 2**64 addresses for each connection.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import threading
import time

from broadcast_sync.ratelimit import RateLimiter, Verdict

#: A group unseen this long, with no connection open, is forgotten: its
#: handshake rate has fully recovered by then.
FORGET_SECONDS = 2.0
#: Groups kept before the forgotten ones are swept out.
SWEEP_AT = 4096


def address_group(ip: str) -> str:
    """The group ``ip`` is counted in: itself for IPv4 (also when mapped
    into IPv6), its /64 network for IPv6."""
    address = ipaddress.ip_address(ip)
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


@dataclasses.dataclass
class _Group:
    """One address group's open connections and its handshake rate."""

    handshakes: RateLimiter
    connections: int = 0
    last_seen: float = 0.0


class Admission:
    """Admits connections by address group, under one lock.

    Args:
        max_connections: Connections one group may hold open at once, in
            their handshake or joined; 0 for no limit.
        handshake_rate: New connections one group may open per second, and
            at once; 0 for no limit.
    """

    def __init__(self, max_connections: int, handshake_rate: int) -> None:
        self.max_connections = max_connections
        self.handshake_rate = handshake_rate
        #: Guards ``_groups``.
        self._lock = threading.Lock()
        self._groups: dict[str, _Group] = {}

    def admit(self, group: str) -> str | None:
        """Count a new connection of ``group``; or, if it may not open one,
        return why (and count nothing)."""
        now = time.monotonic()
        with self._lock:
            if len(self._groups) >= SWEEP_AT:
                self._sweep(now)
            state = self._groups.get(group)
            if state is None:
                limiter = RateLimiter(self.handshake_rate, 1.0)
                state = self._groups[group] = _Group(limiter)
            state.last_seen = now
            if self.max_connections and state.connections >= self.max_connections:
                return (
                    f"too many connections from your address ({self.max_connections})"
                )
            if state.handshakes.check(now) is not Verdict.ALLOW:
                return (
                    "too many new connections from your address "
                    f"(at most {self.handshake_rate} a second)"
                )
            state.connections += 1
            return None

    def release(self, group: str) -> None:
        """Count the end of a connection :meth:`admit` admitted."""
        with self._lock:
            state = self._groups[group]
            state.connections -= 1
            state.last_seen = time.monotonic()

    def _sweep(self, now: float) -> None:
        forgotten = [
            group
            for group, state in self._groups.items()
            if not state.connections and now - state.last_seen > FORGET_SECONDS
        ]
        for group in forgotten:
            del self._groups[group]
