"""What the terminal client makes of the server: pure logic, no sockets.

The client asks for the JSON protocol (``format=json``), which gives every
logged event an id to resume from, and prints each event as the line the
text protocol would have sent: ``NAME: MESSAGE``, ``Server: NAME has joined
the chat``, and so on. A server that speaks only text (the Go original, a
relay-mode server, anything that ignores ``format=json``) is told apart by its
first frame, which is not a JSON welcome; its frames are printed as they come.

Here also: which ends of a connection are worth reconnecting after, how long
to wait between two attempts, and when to ping a quiet server.
"""

from __future__ import annotations

import dataclasses
import json
import urllib.parse

from broadcast_sync.handshake import WEBSOCKET_PATH
from broadcast_sync.messages import chat_line, joined, left, server_notice

#: Close codes that blame the client itself: a protocol error (1002), binary
#: data (1003), invalid UTF-8 (1007), reading too slowly (1008), a message too
#: big (1009). Connecting again would only end the same way.
CLIENT_FAULT_CODES = frozenset({1002, 1003, 1007, 1008, 1009})


@dataclasses.dataclass(frozen=True)
class Welcome:
    """The first frame of a JSON connection."""

    #: The name the server gave us (``bob_1`` when ``bob`` was taken).
    user: str
    #: The id of the last event in the log when we arrived; None if empty.
    last_id: str | None
    #: Whether the server resumed after ``since``; None if we did not ask.
    resumed: bool | None


@dataclasses.dataclass(frozen=True)
class Line:
    """A frame as the user sees it."""

    text: str
    #: The id of the logged event shown, to resume after it; None for a
    #: notice, or a frame of the text protocol.
    event_id: str | None = None


def chat_target(username: str, *, json_format: bool, since: str | None) -> str:
    """The request target for ``username``: ``/ws?username=...``.

    ``since`` asks to resume after that event, and needs ``json_format``.
    """
    parameters = {"username": username}
    if json_format:
        parameters["format"] = "json"
        if since is not None:
            parameters["since"] = since
    return f"{WEBSOCKET_PATH}?{urllib.parse.urlencode(parameters)}"


def parse_welcome(frame: str | bytes) -> Welcome | None:
    """The welcome that ``frame`` is, or None: then the server speaks text."""
    fields = _json_object(frame)
    if fields is None or fields.get("type") != "welcome":
        return None
    user = fields.get("user")
    last_id = fields.get("last_id")
    resumed = fields.get("resumed")
    if (
        not isinstance(user, str)
        or not isinstance(last_id, (str, type(None)))
        or not isinstance(resumed, (bool, type(None)))
    ):
        return None
    return Welcome(user, last_id, resumed)


def render(frame: str | bytes) -> Line:
    """The line for a frame of the JSON protocol, after the welcome.

    A frame that is not an event we know (not JSON, another type, a field
    missing) is shown as it came: never an error, and nothing hidden.
    """
    if isinstance(frame, bytes):
        return text_line(frame)
    fields = _json_object(frame)
    if fields is None:
        return Line(frame)
    kind = fields.get("type")
    text = fields.get("text")
    if kind == "notice" and isinstance(text, str):
        return Line(server_notice(text))
    user = fields.get("user")
    event_id = fields.get("id")
    if isinstance(user, str) and isinstance(event_id, str):
        if kind == "message" and isinstance(text, str):
            return Line(chat_line(user, text), event_id)
        if kind == "join":
            return Line(joined(user), event_id)
        if kind == "leave":
            return Line(left(user), event_id)
    return Line(frame)


def text_line(frame: str | bytes) -> Line:
    """The line for a frame of the text protocol: as it came."""
    if isinstance(frame, bytes):
        return Line(f"(binary message, {len(frame)} bytes)")
    return Line(frame)


def is_client_fault(code: int) -> bool:
    """Whether a close ``code`` from the server blames the client."""
    return code in CLIENT_FAULT_CODES


def is_transient(status: int) -> bool:
    """Whether a refused handshake may succeed later: a 5xx status.

    A server shutting down, full, or behind a proxy whose backend is
    restarting answers 5xx; a 4xx says the request itself is refused.
    """
    return 500 <= status <= 599


@dataclasses.dataclass(frozen=True)
class ReconnectPolicy:
    """When to try again after losing the connection, and when to stop."""

    #: The first wait: a server restart takes about this long.
    first_delay: float = 0.5
    #: The longest wait between two attempts.
    longest_delay: float = 10.0
    #: Failed attempts in a row before giving up: about a minute of trying.
    attempts: int = 12

    def delay(self, failures: int, fraction: float) -> float:
        """Seconds to wait before the next attempt, after ``failures``
        failed ones; ``fraction`` is random, from 0 to 1.

        Exponential, with "equal jitter": a point in the upper half of the
        window, so that the clients of a server that restarts do not all
        come back at the same instant, and none sooner than the first delay.
        """
        ceiling = min(self.longest_delay, self.first_delay * 2.0 ** min(failures, 32))
        return max(self.first_delay, ceiling * (1 + fraction) / 2)


class Keepalive:
    """When to ping a quiet server, and when to give it up for gone.

    A connection can break without a word (a cut network, a frozen server):
    only a ping that gets no answer finds it. Any bytes from the server,
    not only its pong, prove that it is there.
    """

    def __init__(self, ping_after: float, pong_timeout: float) -> None:
        #: Quiet seconds before a ping.
        self.ping_after = ping_after
        #: Seconds the server has to answer it.
        self.pong_timeout = pong_timeout
        #: When the unanswered ping went out; None if none is.
        self._ping_sent: float | None = None

    def due(self, last_received: float) -> float:
        """When to call :meth:`ping`, given when the server last spoke."""
        if self._ping_sent is not None and last_received >= self._ping_sent:
            self._ping_sent = None  # answered
        if self._ping_sent is None:
            return last_received + self.ping_after
        return self._ping_sent + self.pong_timeout

    def ping(self, now: float) -> bool:
        """At the time :meth:`due` gave: True to send a ping; False if the
        last one got no answer, and the server is gone."""
        if self._ping_sent is not None:
            return False
        self._ping_sent = now
        return True


def _json_object(frame: str | bytes) -> dict[str, object] | None:
    if not isinstance(frame, str):
        return None
    try:
        value = json.loads(frame)
    except (ValueError, RecursionError):  # not JSON, or nested too deep
        return None
    return value if isinstance(value, dict) else None
