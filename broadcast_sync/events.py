"""What the room's log holds: events, their offsets and their ids.

Every broadcast (a chat message, a join, a leave, relayed data) is an
:class:`Event`. Appending it to the log gives it an offset, one more than the
event before it, so the offsets are the one order that every client sees. A
log has an epoch, a random string chosen when the log is created; an event's
id names both (Centrifugo's model), so that a client resuming with an id from
another log, one that restarted empty or belongs to another room, is told
that its place cannot be found rather than given the wrong events.
"""

from __future__ import annotations

import dataclasses
import enum
import re
import secrets

#: Random bytes in an epoch: two logs never share one.
EPOCH_BYTES = 6
_EVENT_ID = re.compile(
    rf"(?P<epoch>[0-9a-f]{{{2 * EPOCH_BYTES}}})\.(?P<offset>[1-9][0-9]{{0,17}})"
)


class EventKind(enum.Enum):
    """What an event says."""

    #: A chat message from ``user``.
    MESSAGE = "message"
    #: ``user`` joined the room.
    JOIN = "join"
    #: ``user`` left the room.
    LEAVE = "leave"
    #: A message relayed verbatim (relay mode): text or binary.
    DATA = "data"


@dataclasses.dataclass(frozen=True, slots=True)
class Event:
    """One broadcast, as a node appends it to the log."""

    kind: EventKind
    user: str
    #: Server time, seconds since the Unix epoch.
    ts: float
    #: The text of a message; the payload of relayed data; else empty.
    body: str | bytes = ""


@dataclasses.dataclass(frozen=True, slots=True)
class LoggedEvent:
    """An event with its place in the log."""

    offset: int
    event: Event


@dataclasses.dataclass(frozen=True, slots=True)
class EventId:
    """An event's id: the log's epoch and the event's offset in it.

    Clients treat ids as opaque strings; :func:`str` gives that string.
    """

    epoch: str
    offset: int

    def __str__(self) -> str:
        return f"{self.epoch}.{self.offset}"


def new_epoch() -> str:
    """A fresh random epoch, for a log that starts empty."""
    return secrets.token_hex(EPOCH_BYTES)


def parse_event_id(text: str) -> EventId:
    """The id that ``str(EventId(...))`` gave as ``text``.

    Raises:
        ValueError: if ``text`` is not such an id.
    """
    match = _EVENT_ID.fullmatch(text)
    if match is None:
        raise ValueError(f"not an event id: {text!r}")
    return EventId(match["epoch"], int(match["offset"]))
