"""The members of the room on this server: the clients that get broadcasts."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Collection, Hashable, Iterator
from typing import Generic, Protocol, TypeVar

from broadcast_sync.messages import Format
from broadcast_sync.metrics import Disconnect


class Member(Hashable, Protocol):
    """A client as the dispatcher and the heartbeat see it."""

    @property
    def name(self) -> str: ...

    @property
    def address(self) -> str: ...

    @property
    def format(self) -> Format: ...

    @property
    def ending(self) -> Disconnect | None:
        """Why the client left, once it has: the label of the metrics."""

    @property
    def end_reason(self) -> str:
        """Why the client left, in words, for the log."""

    @property
    def end_code(self) -> int | None:
        """The close code the client left with, if any, for the log."""

    @property
    def last_seen(self) -> float:
        """Monotonic time of the last bytes received from the client."""

    def send(self, data: bytes | memoryview) -> bool:
        """Send ``data`` after what was sent before, without blocking;
        False once the client takes nothing more (closed, or lost)."""

    def close(
        self, frame: bytes, why: Disconnect | None = None, reason: str = ""
    ) -> None:
        """Send the close ``frame`` after what was sent before."""

    def abort(self, why: Disconnect, reason: str, code: int | None = None) -> None:
        """Cut the connection now, with a close frame ``code`` if it fits."""


MemberT = TypeVar("MemberT", bound=Hashable)


class Hub(Generic[MemberT]):
    """The registry of members.

    Only the dispatcher adds and removes members, and it fans out while
    holding ``lock``, so a member is never added in the middle of a fan-out.
    Members are told apart by identity, not by name: a client that is
    leaving and a newcomer that took its freed name can both be here.
    """

    def __init__(self) -> None:
        #: Guards ``_members``. Taken before a member's own lock: the
        #: dispatcher sends to each member while holding it.
        self.lock = threading.Lock()
        #: Members in the order they joined (a dict as an ordered set).
        self._members: dict[MemberT, None] = {}

    def add(self, member: MemberT) -> int:
        """Start broadcasting to ``member``; return the member count."""
        with self.lock:
            self._members[member] = None
            return len(self._members)

    def remove(self, member: MemberT) -> int:
        """Stop broadcasting to ``member``; return the member count."""
        with self.lock:
            self._members.pop(member, None)
            return len(self._members)

    @contextlib.contextmanager
    def locked_members(self) -> Iterator[Collection[MemberT]]:
        """Hold ``lock`` while the caller goes through the members."""
        with self.lock:
            yield self._members.keys()

    def discard(self, members: Collection[MemberT]) -> None:
        """Stop broadcasting to ``members`` before they leave: they are
        closed, and a fan-out to thousands of closed clients costs."""
        with self.lock:
            for member in members:
                self._members.pop(member, None)

    def count(self) -> int:
        """How many members there are."""
        with self.lock:
            return len(self._members)

    def members(self) -> list[MemberT]:
        """A snapshot of the members, for work done without the lock."""
        with self.lock:
            return list(self._members)
