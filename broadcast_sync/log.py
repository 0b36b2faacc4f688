"""The room's log: one interface, and the in-memory log of a lone server.

Every broadcast is appended to the log, which gives it its offset; each
server reads the log in order and fans it out to its own clients. The names
in use belong to the log too: a leave must be logged and its name freed as
one step, or a node that dies between the two would leave the room wrong.

:class:`MemoryLog` is the whole room when the server runs alone. The Redis
log (``redislog.py``) spreads one room over many processes and hosts.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import threading
from collections.abc import Sequence
from typing import Protocol

from broadcast_sync.events import Event, EventKind, LoggedEvent, new_epoch
from broadcast_sync.names import NameRegistry


class LogUnavailable(Exception):
    """The log cannot be reached now; the message says why."""


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """Where a log stands: the state a reader starts from."""

    epoch: str
    #: The offset of the newest event; 0 for an empty log.
    offset: int
    #: Who is in the room at that offset.
    online: frozenset[str]


class Subscriber(Protocol):
    """What a log hands its events to, in order: the dispatcher."""

    def restart(self, snapshot: Snapshot) -> None:
        """Start over from ``snapshot``: first at start, then at a new epoch."""

    def deliver(self, events: Sequence[LoggedEvent]) -> None:
        """Fan out ``events``, which follow everything delivered before."""


class EventLog(Protocol):
    """The room: its ordered events and the names in use."""

    @property
    def appended(self) -> int:
        """The offset of the last event this server appended; 0 for none."""

    def start(self, subscriber: Subscriber) -> None:
        """Hand ``subscriber`` a snapshot, then every event appended after it.

        Raises:
            LogUnavailable: if the log cannot be reached.
        """

    def stop(self) -> None:
        """Stop handing events over and release what the log holds."""

    def reserve_name(self, requested: str) -> str:
        """Reserve ``requested``, or its first free variant, and return it.

        Raises:
            RoomFull: if this server is full, or no variant is free.
            LogUnavailable: if the log cannot be reached.
        """

    def release_name(self, name: str) -> None:
        """Free a name whose client never joined."""

    def append(self, event: Event) -> int:
        """Append ``event`` and return its offset.

        Raises:
            LogUnavailable: if the event could not be logged.
        """

    def leave(self, name: str, event: Event | None) -> None:
        """Append the leave ``event`` (if any) and free ``name``, as one step.

        Never fails: while the log cannot be reached, the leave waits, and
        the name stays taken, until it can.
        """

    def read(self, after: int, upto: int, epoch: str) -> list[LoggedEvent]:
        """The events from offset ``after`` (excluded) to ``upto`` that the
        log of ``epoch`` still holds, in order; none if the log has another
        epoch now.

        Offsets have no gaps, so the result is whole when it holds
        ``upto - after`` events.

        Raises:
            LogUnavailable: if the log cannot be reached.
        """


class MemoryLog:
    """The log of a server that is the whole room: a ring in memory.

    Strategy: an append hands the event to the subscriber while it holds
    ``_append_lock``, so the subscriber gets events in offset order. Readers
    of the ring take only ``_ring_lock``, so the dispatcher can read history
    while an appender waits for room in its inbox.
    """

    def __init__(self, history_size: int, max_clients: int, max_name_chars: int):
        self.epoch = new_epoch()
        self._names = NameRegistry(max_clients, max_name_chars)
        self._subscriber: Subscriber | None = None
        #: Held from giving an event its offset until the subscriber has it.
        #: Taken before ``_ring_lock``.
        self._append_lock = threading.Lock()
        #: Guards ``_ring`` and ``_offset``.
        self._ring_lock = threading.Lock()
        self._ring: collections.deque[LoggedEvent] = collections.deque(
            maxlen=history_size
        )
        self._offset = 0

    @property
    def appended(self) -> int:
        """The newest offset: every event was appended here."""
        with self._ring_lock:
            return self._offset

    def start(self, subscriber: Subscriber) -> None:
        """Start the subscriber on an empty log."""
        self._subscriber = subscriber
        subscriber.restart(Snapshot(self.epoch, 0, frozenset()))

    def stop(self) -> None:
        """Nothing to release: the log lives and dies with the process."""

    def reserve_name(self, requested: str) -> str:
        """Reserve a name in this process."""
        return self._names.reserve(requested)

    def release_name(self, name: str) -> None:
        """Free a name in this process."""
        self._names.release(name)

    def append(self, event: Event) -> int:
        """Append ``event`` to the ring and hand it to the subscriber."""
        with self._append_lock:
            with self._ring_lock:
                self._offset += 1
                logged = LoggedEvent(self._offset, event)
                self._ring.append(logged)
            if self._subscriber is not None:
                self._subscriber.deliver([logged])
            return logged.offset

    def leave(self, name: str, event: Event | None) -> None:
        """Append the leave event, then free the name."""
        if event is not None:
            assert event.kind is EventKind.LEAVE
            self.append(event)
        self._names.release(name)

    def read(self, after: int, upto: int, epoch: str) -> list[LoggedEvent]:
        """The events of ``(after, upto]`` still in the ring."""
        with self._ring_lock:
            if not self._ring or epoch != self.epoch:
                return []
            first = self._ring[0].offset
            start = max(after + 1 - first, 0)
            end = max(upto + 1 - first, 0)
            return list(itertools.islice(self._ring, start, end))
