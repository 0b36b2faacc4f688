"""What the chat sends: events as text lines or JSON objects, and notices.

A text client gets ``NAME: MESSAGE`` lines and the server's notices as
``Server: ...`` lines. A JSON client (``format=json``) gets one object per
frame: logged events with their ``id`` and ``ts``, notices to it alone, and a
``welcome`` first. Nothing here knows about sockets or frames.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable

from broadcast_sync.events import Event, EventId, EventKind

#: The name on the server's own notices; no user may take it.
SERVER_NAME = "Server"
#: Between the name and the text of a chat line.
NAME_SEPARATOR = ": "


class Format(enum.Enum):
    """How a client wants what the server sends."""

    #: ``NAME: MESSAGE`` lines, as the Go original sends them.
    TEXT = "text"
    #: One JSON object per frame, with ids for resuming.
    JSON = "json"


def chat_line(name: str, text: str) -> str:
    """A user's message as everybody sees it."""
    return f"{name}{NAME_SEPARATOR}{text}"


def server_notice(text: str) -> str:
    """A message from the server itself."""
    return chat_line(SERVER_NAME, text)


def joined(name: str) -> str:
    """The notice that ``name`` joined."""
    return server_notice(f"{name} has joined the chat")


def left(name: str) -> str:
    """The notice that ``name`` left."""
    return server_notice(f"{name} has left the chat")


def event_text(event: Event) -> str | bytes:
    """What a text client gets for ``event``: a line, or relayed data as is."""
    if event.kind is EventKind.MESSAGE:
        assert isinstance(event.body, str)
        return chat_line(event.user, event.body)
    if event.kind is EventKind.JOIN:
        return joined(event.user)
    if event.kind is EventKind.LEAVE:
        return left(event.user)
    return event.body


def event_json(event: Event, event_id: EventId) -> str:
    """What a JSON client gets for a logged chat ``event``."""
    fields: dict[str, object] = {
        "type": event.kind.value,
        "id": str(event_id),
        "ts": event.ts,
        "user": event.user,
    }
    if event.kind is EventKind.MESSAGE:
        fields["text"] = event.body
    return _json(fields)


def notice(text: str, format: Format) -> str:
    """A notice from the server to one client, never logged."""
    if format is Format.JSON:
        return _json({"type": "notice", "text": text})
    return server_notice(text)


def welcome_json(
    user: str,
    users: Iterable[str],
    last_id: EventId | None,
    resumed: bool | None,
    *,
    max_message_chars: int,
    max_message_bytes: int,
) -> str:
    """A JSON client's first frame: its name, who is online, where the log is,
    and the longest message it may send (in characters and in UTF-8 bytes).

    ``resumed`` is ``None`` when the client did not ask to resume.
    """
    fields: dict[str, object] = {
        "type": "welcome",
        "user": user,
        "users": sorted(users),
        "last_id": None if last_id is None else str(last_id),
        "max_message_chars": max_message_chars,
        "max_message_bytes": max_message_bytes,
    }
    if resumed is not None:
        fields["resumed"] = resumed
    return _json(fields)


def _json(fields: dict[str, object]) -> str:
    return json.dumps(fields, ensure_ascii=False, separators=(",", ":"))
