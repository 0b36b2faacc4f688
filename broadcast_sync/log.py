"""The room's log: one interface, and the in-memory log of a lone server.

Every broadcast is appended to the log, which gives it its offset; each
server reads the log in order and fans it out to its own clients, and keeps
the newest events for history and resume. The names in use belong to the log
too: a leave must be logged and its name freed as one step, or a node that
dies between the two would leave the room wrong.

:class:`MemoryLog` is the whole room when the server runs alone. The Redis
log (``redislog.py``) spreads one room over many processes and hosts.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Sequence
from typing import Protocol

from broadcast_sync.events import Event, EventId, EventKind, LoggedEvent, new_epoch
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
    #: The newest events the log holds, up to ``offset``, oldest first.
    history: Sequence[LoggedEvent] = ()


class Subscriber(Protocol):
    """What a log hands its events to, in order: the dispatcher."""

    def restart(self, snapshot: Snapshot) -> None:
        """Start over from ``snapshot``: first at start, then at a new epoch."""

    def deliver(self, events: Sequence[LoggedEvent]) -> None:
        """Fan out ``events``, which follow everything delivered before."""


class EventLog(Protocol):
    """The room: its ordered events and the names in use."""

    @property
    def appended(self) -> EventId | None:
        """The id of the last event this server appended, if any."""

    def reachable(self) -> bool:
        """Whether the log can be reached now, as far as this server knows."""

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

    def append(self, event: Event) -> EventId:
        """Append ``event`` and return its id.

        Raises:
            LogUnavailable: if the event could not be logged.
        """

    def leave(self, name: str, event: Event | None) -> None:
        """Append the leave ``event`` (if any) and free ``name``, as one step.

        Never fails: while the log cannot be reached, the leave waits, and
        the name stays taken, until it can.
        """


class MemoryLog:
    """The log of a server that is the whole room, in memory.

    An append hands the event to the subscriber while it holds
    ``_append_lock``, so the subscriber gets the events in offset order. The
    subscriber keeps the history: the log is only the order and the names.
    """

    def __init__(self, max_clients: int, max_name_chars: int) -> None:
        self.epoch = new_epoch()
        self._names = NameRegistry(max_clients, max_name_chars)
        self._subscriber: Subscriber | None = None
        #: Guards ``_offset``, and is held until the subscriber has the event.
        self._append_lock = threading.Lock()
        self._offset = 0

    @property
    def appended(self) -> EventId | None:
        """The newest event: every event was appended here."""
        with self._append_lock:
            return EventId(self.epoch, self._offset) if self._offset else None

    def reachable(self) -> bool:
        """Always: the log is in this process."""
        return True

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

    def append(self, event: Event) -> EventId:
        """Give ``event`` the next offset and hand it to the subscriber."""
        with self._append_lock:
            self._offset += 1
            if self._subscriber is not None:
                self._subscriber.deliver([LoggedEvent(self._offset, event)])
            return EventId(self.epoch, self._offset)

    def leave(self, name: str, event: Event | None) -> None:
        """Append the leave event, then free the name."""
        if event is not None:
            assert event.kind is EventKind.LEAVE
            self.append(event)
        self._names.release(name)
