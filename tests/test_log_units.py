"""The log without sockets: ids, rendering, the memory ring, the dispatcher.

The dispatcher runs in its real thread on a real :class:`MemoryLog`; its
members are fakes that record the bytes they are sent, which a small frame
parser of our own (not the encoder's library) turns back into frames.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import random
import struct
import threading
import time
from collections.abc import Iterator, Sequence
from http import HTTPStatus
from typing import Any

import pytest

from broadcast_sync import frames
from broadcast_sync.config import Mode, ServerConfig
from broadcast_sync.dispatcher import EPOCH_CHANGED, RESUME_WAIT_SECONDS, Dispatcher
from broadcast_sync.events import (
    EPOCH_BYTES,
    Event,
    EventId,
    EventKind,
    LoggedEvent,
    new_epoch,
    parse_event_id,
)
from broadcast_sync.handshake import Arrival, Request, parse_arrival
from broadcast_sync.http11 import HTTPError
from broadcast_sync.hub import Hub, Member
from broadcast_sync.log import MemoryLog, Snapshot
from broadcast_sync.messages import (
    Format,
    chat_line,
    event_json,
    event_text,
    joined,
    left,
    notice,
    server_notice,
    welcome_json,
)
from broadcast_sync.metrics import Disconnect, Metrics
from broadcast_sync.names import RoomFull
from tests.conftest import UNIT, WELCOME_LIMITS

#: An epoch as new_epoch() makes them.
EPOCH = "0123456789ab"
#: Opcodes of the frames the server sends (RFC 6455, section 5.2).
TEXT_OPCODE, BINARY_OPCODE, CLOSE_OPCODE = 0x1, 0x2, 0x8


# events.py


@pytest.mark.parametrize(
    ("event_id", "text"),
    [
        (EventId(EPOCH, 1), "0123456789ab.1"),
        (EventId("ffffffffffff", 42), "ffffffffffff.42"),
        (EventId(EPOCH, 10**17), f"{EPOCH}.1{'0' * 17}"),
    ],
)
def test_event_id_round_trips_through_its_string(event_id: EventId, text: str) -> None:
    """str() gives ``EPOCH.OFFSET``, and parse_event_id reads it back."""
    assert str(event_id) == text
    assert parse_event_id(text) == event_id


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("", id="empty"),
        pytest.param(EPOCH, id="no offset"),
        pytest.param(f"{EPOCH}.", id="empty offset"),
        pytest.param(f"{EPOCH}.0", id="offset 0"),
        pytest.param(f"{EPOCH}.01", id="leading zero"),
        pytest.param(f"{EPOCH}.-1", id="negative"),
        pytest.param(f"{EPOCH}.+1", id="sign"),
        pytest.param(f"{EPOCH}.1.5", id="fraction"),
        pytest.param(f"{EPOCH}.1{'0' * 18}", id="19 digits"),
        pytest.param(f"{EPOCH}.1 ", id="trailing space"),
        pytest.param(f" {EPOCH}.1", id="leading space"),
        pytest.param(f"{EPOCH}.1\n", id="trailing newline"),
        pytest.param(f"{EPOCH}.\u0661", id="non-ASCII digit"),
        pytest.param("0123456789AB.1", id="capital hex"),
        pytest.param("0123456789a.1", id="short epoch"),
        pytest.param("0123456789abc.1", id="long epoch"),
        pytest.param("0123456789ag.1", id="not hex"),
        pytest.param(f"{EPOCH}:1", id="wrong separator"),
    ],
)
def test_parse_event_id_refuses(text: str) -> None:
    """Anything but a lower-case hex epoch, a dot and an offset from 1 with
    at most 18 digits is not an id."""
    with pytest.raises(ValueError, match="not an event id"):
        parse_event_id(text)


def test_new_epoch_is_fresh_hex_of_the_id_format() -> None:
    """Epochs are random hex of EPOCH_BYTES bytes, usable in ids."""
    epochs = {new_epoch() for _ in range(100)}
    assert len(epochs) == 100
    for epoch in epochs:
        assert len(epoch) == 2 * EPOCH_BYTES
        assert parse_event_id(f"{epoch}.1") == EventId(epoch, 1)


# messages.py


def test_text_lines_are_the_original_protocol() -> None:
    """Chat lines and the server's notices, byte for byte."""
    assert chat_line("alice", "hi: there") == "alice: hi: there"
    assert server_notice("rate limit") == "Server: rate limit"
    assert joined("bob") == "Server: bob has joined the chat"
    assert left("bob") == "Server: bob has left the chat"
    assert notice("message not sent: x", Format.TEXT) == "Server: message not sent: x"


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (Event(EventKind.MESSAGE, "alice", 1.0, "hi"), "alice: hi"),
        (Event(EventKind.JOIN, "bob", 1.0), "Server: bob has joined the chat"),
        (Event(EventKind.LEAVE, "bob", 1.0), "Server: bob has left the chat"),
        (Event(EventKind.DATA, "carol", 1.0, "as is"), "as is"),
        (Event(EventKind.DATA, "carol", 1.0, b"\x00\xff"), b"\x00\xff"),
    ],
)
def test_event_text(event: Event, expected: str | bytes) -> None:
    """A text client gets lines; relayed data as it came, text or binary."""
    assert event_text(event) == expected


def test_event_json_of_a_message_exactly() -> None:
    """A message is one compact object in a fixed key order, non-ASCII kept."""
    event = Event(EventKind.MESSAGE, "zoë", 1700000000.25, 'héllo "✓"')
    assert event_json(event, EventId(EPOCH, 7)) == (
        '{"type":"message","id":"0123456789ab.7","ts":1700000000.25,'
        '"user":"zoë","text":"héllo \\"✓\\""}'
    )


@pytest.mark.parametrize("kind", [EventKind.JOIN, EventKind.LEAVE])
def test_event_json_of_a_join_or_leave_has_no_text(kind: EventKind) -> None:
    """Joins and leaves carry type, id, ts and user only."""
    event = Event(kind, "bob", 12.5)
    assert json.loads(event_json(event, EventId(EPOCH, 3))) == {
        "type": kind.value,
        "id": "0123456789ab.3",
        "ts": 12.5,
        "user": "bob",
    }


def test_json_notice_has_no_id() -> None:
    """A notice to one client is its type and text, nothing else."""
    assert notice("rate limit: slow down", Format.JSON) == (
        '{"type":"notice","text":"rate limit: slow down"}'
    )


@pytest.mark.parametrize(
    ("last_id", "resumed", "extra"),
    [
        (None, None, {}),
        (EventId(EPOCH, 9), None, {}),
        (EventId(EPOCH, 9), True, {"resumed": True}),
        (None, False, {"resumed": False}),
    ],
)
def test_welcome_json(
    last_id: EventId | None, resumed: bool | None, extra: dict[str, bool]
) -> None:
    """The welcome sorts the users, gives last_id or null and the message
    limit, and says whether the client resumed only when it asked to."""
    welcome = welcome_json(
        "bob",
        {"zed", "bob", "amy"},
        last_id,
        resumed,
        max_message_chars=42,
        max_message_bytes=99,
    )
    assert json.loads(welcome) == {
        "type": "welcome",
        "user": "bob",
        "users": ["amy", "bob", "zed"],
        "last_id": None if last_id is None else str(last_id),
        "max_message_chars": 42,
        "max_message_bytes": 99,
        **extra,
    }
    assert welcome.startswith('{"type":"welcome",')


# handshake.parse_arrival


def arrival(parameters: dict[str, str], mode: Mode = Mode.CHAT) -> Arrival:
    """What parse_arrival makes of query ``parameters``, with a ring of 5."""
    request = Request(key="", host="", origin=None, parameters=parameters)
    return parse_arrival(request, mode, 5)


@pytest.mark.parametrize(
    ("parameters", "expected"),
    [
        ({}, Arrival()),
        ({"format": "text"}, Arrival()),
        ({"format": "json"}, Arrival(format=Format.JSON)),
        ({"history": "0"}, Arrival()),
        ({"history": "5"}, Arrival(history=5)),
        (
            {"format": "json", "since": f"{EPOCH}.3", "history": "2"},
            Arrival(Format.JSON, 2, EventId(EPOCH, 3)),
        ),
    ],
)
def test_parse_arrival_accepts(parameters: dict[str, str], expected: Arrival) -> None:
    """format, history up to history_size, and since with JSON."""
    assert arrival(parameters) == expected


@pytest.mark.parametrize(
    ("mode", "parameters", "reason"),
    [
        (Mode.CHAT, {"format": "xml"}, "unknown format: 'xml'"),
        (Mode.CHAT, {"format": ""}, "unknown format"),
        (Mode.RELAY, {"format": "json"}, "relay mode"),
        (Mode.CHAT, {"history": "6"}, "history must be a whole number from 0 to 5"),
        (Mode.CHAT, {"history": "-1"}, "history must be"),
        (Mode.CHAT, {"history": "1e3"}, "history must be"),
        (Mode.CHAT, {"history": "²"}, "history must be"),
        (Mode.CHAT, {"history": ""}, "history must be"),
        (Mode.CHAT, {"since": f"{EPOCH}.1"}, "since needs format=json"),
        (Mode.CHAT, {"format": "json", "since": "1"}, "since is not an event id"),
        (Mode.RELAY, {"since": f"{EPOCH}.1"}, "since needs format=json"),
    ],
)
def test_parse_arrival_refuses(
    mode: Mode, parameters: dict[str, str], reason: str
) -> None:
    """A bad format, history or since is a 400 with its reason."""
    with pytest.raises(HTTPError) as caught:
        arrival(parameters, mode)
    assert caught.value.status is HTTPStatus.BAD_REQUEST
    assert reason in caught.value.reason


def test_parse_arrival_relay_mode_takes_history() -> None:
    """Relay mode replays history too, in text format."""
    assert arrival({"history": "3"}, Mode.RELAY) == Arrival(history=3)


# log.MemoryLog


def message(text: str, user: str = "alice") -> Event:
    """A chat message event."""
    return Event(EventKind.MESSAGE, user, time.time(), text)


def texts_of(logged: Sequence[LoggedEvent]) -> list[str | bytes]:
    """The bodies of ``logged``."""
    return [each.event.body for each in logged]


@dataclasses.dataclass
class RecordingSubscriber:
    """A subscriber that records what the log hands it."""

    snapshots: list[Snapshot] = dataclasses.field(default_factory=list)
    delivered: list[LoggedEvent] = dataclasses.field(default_factory=list)

    def restart(self, snapshot: Snapshot) -> None:
        self.snapshots.append(snapshot)

    def deliver(self, events: Sequence[LoggedEvent]) -> None:
        self.delivered.extend(events)


def new_log() -> MemoryLog:
    """A memory log with room for many names."""
    return MemoryLog(max_clients=10, max_name_chars=20)


def test_memory_log_appends_with_consecutive_offsets() -> None:
    """Offsets start at 1 and go up by one; appended follows; the subscriber
    gets each event with its offset."""
    log = new_log()
    subscriber = RecordingSubscriber()
    log.start(subscriber)
    assert log.appended is None
    appended = [log.append(message(str(n))) for n in range(3)]
    assert appended == [EventId(log.epoch, offset) for offset in (1, 2, 3)]
    assert log.appended == EventId(log.epoch, 3)
    assert [each.offset for each in subscriber.delivered] == [1, 2, 3]
    assert texts_of(subscriber.delivered) == ["0", "1", "2"]


def test_memory_log_leave_logs_then_frees_the_name() -> None:
    """leave appends the leave event and frees the name; without an event
    (never joined) it only frees the name."""
    log = new_log()
    subscriber = RecordingSubscriber()
    log.start(subscriber)
    assert log.reserve_name("alice") == "alice"
    assert log.reserve_name("alice") == "alice_1"
    log.leave("alice", Event(EventKind.LEAVE, "alice", 1.0))
    assert log.appended == EventId(log.epoch, 1)
    assert subscriber.delivered[0].event.kind is EventKind.LEAVE
    assert log.reserve_name("alice") == "alice"
    log.leave("alice_1", None)
    assert log.appended == EventId(log.epoch, 1)
    assert log.reserve_name("alice") == "alice_1"
    log.release_name("alice_1")
    assert log.reserve_name("alice") == "alice_1"


def test_memory_log_names_are_limited_by_max_clients() -> None:
    """Past max_clients names, reserve raises RoomFull."""
    log = MemoryLog(max_clients=1, max_name_chars=20)
    log.reserve_name("alice")
    with pytest.raises(RoomFull):
        log.reserve_name("bob")


def test_memory_log_starts_its_subscriber_empty_then_delivers_in_order() -> None:
    """start hands an empty snapshot of the log's epoch, then each append."""
    log = new_log()
    subscriber = RecordingSubscriber()
    log.start(subscriber)
    assert subscriber.snapshots == [Snapshot(log.epoch, 0, frozenset())]
    log.append(message("a"))
    assert [each.offset for each in subscriber.delivered] == [1]


def test_memory_log_delivers_concurrent_appends_in_offset_order() -> None:
    """Appends from many threads reach the subscriber in offset order, each
    once."""
    log = new_log()
    subscriber = RecordingSubscriber()
    log.start(subscriber)
    threads_count, per_thread = 8, 500

    def append_many() -> None:
        for n in range(per_thread):
            log.append(message(str(n)))

    threads = [threading.Thread(target=append_many) for _ in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    total = threads_count * per_thread
    assert [each.offset for each in subscriber.delivered] == list(range(1, total + 1))


# dispatcher.py, with fake members


@dataclasses.dataclass(frozen=True)
class Frame:
    """One frame the server sent."""

    opcode: int
    payload: bytes

    @property
    def text(self) -> str:
        """The payload of a text frame."""
        assert self.opcode == TEXT_OPCODE, self
        return self.payload.decode()

    @property
    def json(self) -> dict[str, Any]:
        """The payload of a text frame, as a JSON object."""
        value = json.loads(self.text)
        assert isinstance(value, dict)
        return value

    @property
    def close_code(self) -> int:
        """The code of a close frame."""
        assert self.opcode == CLOSE_OPCODE, self
        code: int = struct.unpack("!H", self.payload[:2])[0]
        return code


def parse_frames(data: bytes) -> tuple[list[Frame], bytes]:
    """The whole server frames at the start of ``data``, and the rest.

    Server frames are unmasked; the server never fragments.
    """
    parsed: list[Frame] = []
    position = 0
    while len(data) - position >= 2:
        first, second = data[position], data[position + 1]
        assert first & 0x80, "the server never fragments"
        assert not first & 0x70, "no reserved bits"
        assert not second & 0x80, "server frames are not masked"
        length, head = second & 0x7F, 2
        if length == 126:
            head = 4
            if len(data) - position < head:
                break
            length = struct.unpack_from("!H", data, position + 2)[0]
        elif length == 127:
            head = 10
            if len(data) - position < head:
                break
            length = struct.unpack_from("!Q", data, position + 2)[0]
        if len(data) - position < head + length:
            break
        start = position + head
        parsed.append(Frame(first & 0x0F, data[start : start + length]))
        position = start + length
    return parsed, data[position:]


def test_parse_frames_reads_back_what_the_server_encodes() -> None:
    """The test's parser agrees with frames.py, at every length form."""
    data = b"".join(
        [
            frames.encode_message("hi"),
            frames.encode_message("x" * 200),
            frames.encode_message("y" * 70_000),
            frames.encode_message(b"\x00"),
            frames.encode_close(1001, "bye"),
        ]
    )
    parsed, rest = parse_frames(data + data[:3])
    assert rest == data[:3]
    assert [(frame.opcode, len(frame.payload)) for frame in parsed] == [
        (TEXT_OPCODE, 2),
        (TEXT_OPCODE, 200),
        (TEXT_OPCODE, 70_000),
        (BINARY_OPCODE, 1),
        (CLOSE_OPCODE, 5),
    ]
    assert parsed[-1].close_code == 1001


class FakeMember:
    """A member that records the bytes it is sent, for the test to parse.

    :meth:`close_gate` makes its next :meth:`send` block until the test
    opens the gate, so that the dispatcher stops mid fan-out while the test
    fills its inbox. Like a session, it drops what comes after its close
    frame, and notes that it came.
    """

    def __init__(self, name: str, format: Format = Format.JSON) -> None:
        self.name = name
        self.address = f"fake {name}"
        self.format = format
        self.ending: Disconnect | None = None
        self.end_reason = ""
        self.end_code: int | None = None
        self.last_seen = 0.0
        #: Guards the fields below; notified on every change.
        self._changed = threading.Condition()
        self._frames: list[Frame] = []
        self._pending = b""
        self.closed = False
        self.sent_after_close = False
        self.aborted = False
        self._gate: threading.Event | None = None
        self.blocked = threading.Event()

    def send(self, data: bytes | memoryview) -> bool:
        """Record ``data``; first wait for the gate, if one is set."""
        gate, self._gate = self._gate, None
        if gate is not None:
            self.blocked.set()
            assert gate.wait(5 * UNIT), "the gate was never opened"
        with self._changed:
            if self.closed:
                self.sent_after_close = True
                return False
            parsed, self._pending = parse_frames(self._pending + bytes(data))
            self._frames += parsed
            self._changed.notify_all()
            return True

    def close(
        self, frame: bytes, why: Disconnect | None = None, reason: str = ""
    ) -> None:
        """Record the close frame."""
        self.send(frame)
        with self._changed:
            self.closed = True
            self._changed.notify_all()

    def abort(self, why: Disconnect, reason: str, code: int | None = None) -> None:
        """Record the abort."""
        with self._changed:
            self.aborted = True
            self._changed.notify_all()

    def close_gate(self) -> threading.Event:
        """Make the next send wait for the returned event."""
        gate = threading.Event()
        self._gate = gate
        return gate

    def frames(self, count: int) -> list[Frame]:
        """The first ``count`` frames, once they came."""
        with self._changed:
            came = self._changed.wait_for(
                lambda: len(self._frames) >= count, timeout=5 * UNIT
            )
            assert came, f"{self.name}: {len(self._frames)} of {count} frames"
            assert not self._pending
            return list(self._frames)

    def until(self, offset: int) -> list[Frame]:
        """The frames up to the JSON event at ``offset``, once it came."""

        def came() -> bool:
            offsets = offsets_of(self._frames[-1:])
            return bool(offsets) and offsets[-1] >= offset

        with self._changed:
            assert self._changed.wait_for(came, timeout=5 * UNIT), (
                f"{self.name}: offset {offset} never came: {offsets_of(self._frames)}"
            )
            return list(self._frames)

    def last_offset(self) -> int:
        """The offset of the last event received so far; 0 for none."""
        with self._changed:
            offsets = offsets_of(self._frames[-1:])
            return offsets[-1] if offsets else 0

    def wait_closed(self, timeout: float = 5 * UNIT) -> None:
        """Wait for the close frame."""
        with self._changed:
            assert self._changed.wait_for(lambda: self.closed, timeout=timeout), (
                f"{self.name} not closed within {timeout} s"
            )


@dataclasses.dataclass
class Room:
    """A running dispatcher on a memory log, with helpers to drive it."""

    dispatcher: Dispatcher
    log: MemoryLog
    hub: Hub[Member]

    def add(self, member: FakeMember, **options: Any) -> FakeMember:
        """Add ``member`` to the room, with history or since options."""
        self.dispatcher.add(member, **options)
        return member

    def say(self, text: str, user: str = "alice") -> int:
        """Log a message; return its offset."""
        return self.log.append(message(text, user)).offset

    def event_id(self, offset: int) -> EventId:
        """The id of the event at ``offset``."""
        return EventId(self.log.epoch, offset)

    def offset(self) -> int:
        """The offset of the newest event appended; 0 for none."""
        appended = self.log.appended
        return 0 if appended is None else appended.offset


@contextlib.contextmanager
def running_room(
    history_size: int = 100, log: MemoryLog | None = None
) -> Iterator[Room]:
    """A dispatcher thread (batch window 0) fed by a memory log; always
    stopped and joined."""
    hub: Hub[Member] = Hub()
    if log is None:
        log = new_log()
    dispatcher = Dispatcher(
        hub,
        history_size=history_size,
        batch_window=0,
        max_message_chars=ServerConfig.max_message_chars,
        max_message_bytes=ServerConfig.max_message_bytes,
        metrics=Metrics(),
    )
    dispatcher.start()
    try:
        log.start(dispatcher)
        yield Room(dispatcher, log, hub)
    finally:
        # Events logged before are ahead of the stop in the inbox: no need
        # to wait for an offset (a test may have moved the epoch under it).
        dispatcher.stop(None, time.monotonic() + 5 * UNIT)


def offsets_of(received: Sequence[Frame]) -> list[int]:
    """The offsets of the logged events among JSON frames."""
    return [
        parse_event_id(frame.json["id"]).offset
        for frame in received
        if frame.opcode == TEXT_OPCODE and "id" in frame.json
    ]


def test_json_member_gets_its_welcome_then_live_events() -> None:
    """On an empty log: welcome with itself only and a null last_id; then
    each event as the JSON of messages.py, with the log's id."""
    with running_room() as room:
        alice = room.add(FakeMember("alice"))
        event = Event(EventKind.JOIN, "alice", 5.5)
        room.log.append(event)
        room.say("hi")
        welcome, join, said = alice.frames(3)
        assert welcome.text == welcome_json(
            "alice", ["alice"], None, None, **WELCOME_LIMITS
        )
        assert join.text == event_json(event, room.event_id(1))
        assert said.json["text"] == "hi"
        assert said.json["id"] == str(room.event_id(2))


def test_text_member_gets_lines_and_no_welcome() -> None:
    """A text member gets nothing on arrival, then the text lines."""
    with running_room() as room:
        alice = room.add(FakeMember("alice", Format.TEXT))
        room.log.append(Event(EventKind.JOIN, "alice", 1.0))
        room.say("hi")
        room.log.append(Event(EventKind.LEAVE, "bob", 1.0))
        assert [frame.text for frame in alice.frames(3)] == [
            "Server: alice has joined the chat",
            "alice: hi",
            "Server: bob has left the chat",
        ]


def test_welcome_lists_who_is_online_by_the_joins_and_leaves() -> None:
    """The welcome's users follow the logged joins and leaves, with the
    newcomer once even if its join is logged already."""
    with running_room() as room:
        for kind, user in [
            (EventKind.JOIN, "zed"),
            (EventKind.JOIN, "amy"),
            (EventKind.JOIN, "bob"),
            (EventKind.LEAVE, "amy"),
        ]:
            room.log.append(Event(kind, user, 1.0))
        bob = room.add(FakeMember("bob"))
        assert bob.frames(1)[0].json == {
            "type": "welcome",
            "user": "bob",
            "users": ["bob", "zed"],
            "last_id": str(room.event_id(4)),
            **WELCOME_LIMITS,
        }


@pytest.mark.parametrize(
    ("history", "expected"),
    [(0, []), (1, [5]), (3, [3, 4, 5]), (5, [1, 2, 3, 4, 5]), (100, [1, 2, 3, 4, 5])],
)
def test_history_is_the_last_events_before_live_ones(
    history: int, expected: list[int]
) -> None:
    """history=K: the last K events delivered, after the welcome, then the
    live events; nothing twice."""
    with running_room() as room:
        for n in range(5):
            room.say(str(n))
        alice = room.add(FakeMember("alice"), history=history)
        room.say("live")
        received = alice.until(6)
        assert received[0].json["last_id"] == str(room.event_id(5))
        assert "resumed" not in received[0].json
        assert offsets_of(received) == [*expected, 6]


def test_text_history_is_rendered_as_live_lines() -> None:
    """A text member's history is the same bytes a live text member got."""
    with running_room() as room:
        live = room.add(FakeMember("live", Format.TEXT))
        room.log.append(Event(EventKind.JOIN, "bob", 1.0))
        room.say("one", "bob")
        room.log.append(Event(EventKind.LEAVE, "bob", 1.0))
        late = room.add(FakeMember("late", Format.TEXT), history=3)
        assert late.frames(3) == live.frames(3)


@pytest.mark.parametrize(
    ("since", "resumed", "expected"),
    [
        pytest.param(5, True, [], id="newest"),
        pytest.param(4, True, [5], id="one behind"),
        pytest.param(1, True, [2, 3, 4, 5], id="oldest"),
    ],
)
def test_since_replays_exactly_after_it_or_nothing(
    since: int, resumed: bool, expected: list[int]
) -> None:
    """since=ID: resumed true with the events after ID, or false with none;
    history is ignored either way."""
    with running_room() as room:
        for n in range(5):
            room.say(str(n))
        alice = room.add(FakeMember("alice"), since=room.event_id(since), history=100)
        room.say("live")
        received = alice.until(6)
        assert received[0].json["resumed"] is resumed
        assert received[0].json["last_id"] == str(room.event_id(5))
        assert offsets_of(received) == [*expected, 6]


def test_since_an_event_not_delivered_yet_waits_for_it() -> None:
    """since=ID of an event this server has not delivered yet (another server
    logged it a moment ago) waits for it, then resumes after it."""
    with running_room() as room:
        room.say("one")
        alice = room.add(FakeMember("alice"), since=room.event_id(2))
        room.say("two")
        room.say("three")
        received = alice.until(3)
        assert received[0].json["resumed"] is True
        assert received[0].json["last_id"] == str(room.event_id(2))
        assert offsets_of(received) == [3]


def test_since_an_event_that_never_comes_is_not_resumed() -> None:
    """since=ID of an event that does not come within RESUME_WAIT_SECONDS
    answers resumed false, and live events follow."""
    with running_room() as room:
        room.say("one")
        started = time.monotonic()
        alice = room.add(FakeMember("alice"), since=room.event_id(99))
        welcome = alice.frames(1)[0].json  # 5 units: more than the wait
        assert time.monotonic() - started >= RESUME_WAIT_SECONDS
        assert welcome["resumed"] is False
        assert welcome["last_id"] == str(room.event_id(1))
        room.say("two")
        assert offsets_of(alice.until(2)) == [2]


def test_since_of_another_epoch_is_not_resumed() -> None:
    """An id of another log, with an offset this log has: resumed false."""
    with running_room() as room:
        for n in range(5):
            room.say(str(n))
        other_epoch = "ffffffffffff" if room.log.epoch != "ffffffffffff" else EPOCH
        alice = room.add(FakeMember("alice"), since=EventId(other_epoch, 1))
        room.say("live")
        received = alice.until(6)
        assert received[0].json["resumed"] is False
        assert offsets_of(received) == [6]


def test_since_trimmed_from_the_ring_is_not_resumed() -> None:
    """With a ring of 3 holding 3 to 5: since 2 resumes (3 events), since 1
    does not (offset 2 is gone), and replays nothing."""
    with running_room(history_size=3) as room:
        for n in range(5):
            room.say(str(n))
        kept = room.add(FakeMember("kept"), since=room.event_id(2))
        lost = room.add(FakeMember("lost"), since=room.event_id(1), history=3)
        # Both welcomed before the next append, which would trim the ring.
        kept.frames(1)
        lost.frames(1)
        room.say("live")
        received = kept.until(6)
        assert received[0].json["resumed"] is True
        assert offsets_of(received) == [3, 4, 5, 6]
        received = lost.until(6)
        assert received[0].json["resumed"] is False
        assert offsets_of(received) == [6]


def test_a_hole_in_the_delivered_events_is_never_replayed() -> None:
    """After events the log dropped before delivering them (a hole in the
    offsets), ids from before the hole do not resume, and history starts
    after it; live events still flow."""
    with running_room() as room:
        room.say("one")
        room.dispatcher.deliver([LoggedEvent(5, message("five"))])
        history = room.add(FakeMember("history"), history=5)
        resume = room.add(FakeMember("resume"), since=room.event_id(1))
        newest = room.add(FakeMember("newest"), since=room.event_id(5))
        room.dispatcher.deliver([LoggedEvent(6, message("live"))])
        assert offsets_of(history.until(6)) == [5, 6]
        received = resume.until(6)
        assert received[0].json["resumed"] is False
        assert offsets_of(received) == [6]
        received = newest.until(6)
        assert received[0].json["resumed"] is True
        assert offsets_of(received) == [6]


def test_notice_goes_to_one_member_in_order_with_events() -> None:
    """send_to reaches its member alone, between the events around it."""
    with running_room() as room:
        alice = room.add(FakeMember("alice"))
        bob = room.add(FakeMember("bob", Format.TEXT))
        room.say("before")
        room.dispatcher.send_to(
            alice, frames.encode_message(notice("slow down", Format.JSON))
        )
        room.say("after")
        received = alice.frames(4)
        assert received[2].json == {"type": "notice", "text": "slow down"}
        assert [frame.json.get("text") for frame in received[1:]] == [
            "before",
            "slow down",
            "after",
        ]
        assert [frame.text for frame in bob.frames(2)] == [
            "alice: before",
            "alice: after",
        ]


def test_remove_waits_for_the_members_last_event_then_closes() -> None:
    """A member removed with after=N gets the events up to N, then its close
    frame, and nothing after."""
    with running_room() as room:
        alice = room.add(FakeMember("alice", Format.TEXT))
        bob = room.add(FakeMember("bob", Format.TEXT))
        room.say("one")
        close_frame = frames.encode_close(1000)
        room.dispatcher.remove(
            alice, close_frame, after=room.event_id(room.offset() + 1), wait=5 * UNIT
        )
        room.say("two")  # the one alice waits for
        room.say("three")
        assert [frame.text for frame in bob.frames(3)] == [
            "alice: one",
            "alice: two",
            "alice: three",
        ]
        alice.wait_closed()
        received = alice.frames(3)
        assert [frame.opcode for frame in received] == [
            TEXT_OPCODE,
            TEXT_OPCODE,
            CLOSE_OPCODE,
        ]
        assert received[1].text == "alice: two"
        assert received[2].close_code == 1000
        assert not alice.sent_after_close


def test_remove_goes_at_its_deadline_if_the_event_never_comes() -> None:
    """A member waiting for an event that never comes is closed at its
    deadline anyway."""
    with running_room() as room:
        alice = room.add(FakeMember("alice", Format.TEXT))
        room.dispatcher.remove(
            alice, frames.encode_close(1000), after=room.event_id(99), wait=0.05 * UNIT
        )
        alice.wait_closed(timeout=UNIT)
        assert [frame.opcode for frame in alice.frames(1)] == [CLOSE_OPCODE]
        assert alice not in room.hub.members()


def test_stop_closes_every_member_with_1001() -> None:
    """Stopping delivers what was logged, then closes each member with 1001."""
    alice = FakeMember("alice")
    bob = FakeMember("bob", Format.TEXT)
    with running_room() as room:
        room.add(alice)
        room.add(bob)
        room.say("last")
    for member, count in [(alice, 3), (bob, 2)]:
        received = member.frames(count)
        assert member.closed
        assert received[-1].close_code == 1001
        assert received[-2].opcode == TEXT_OPCODE


def test_an_event_delivered_again_is_sent_once() -> None:
    """An event the dispatcher has (a log read again) is skipped."""
    with running_room() as room:
        alice = room.add(FakeMember("alice"))
        room.say("one")
        room.dispatcher.deliver([LoggedEvent(1, message("one"))])
        room.say("two")
        assert offsets_of(alice.frames(3)) == [1, 2]


def test_new_epoch_notifies_json_members_and_old_ids_do_not_resume() -> None:
    """A restart with a new epoch tells JSON members (not text ones) that the
    history was lost; an id of the old epoch then does not resume."""
    with running_room() as room:
        alice = room.add(FakeMember("alice"))
        bob = room.add(FakeMember("bob", Format.TEXT))
        room.say("old")
        new = "ffffffffffff" if room.log.epoch != "ffffffffffff" else EPOCH
        room.dispatcher.restart(Snapshot(new, 0, frozenset({"alice", "bob"})))
        room.dispatcher.send_to(bob, frames.encode_message("marker"))
        assert alice.frames(3)[2].json == {"type": "notice", "text": EPOCH_CHANGED}
        assert [frame.text for frame in bob.frames(2)] == ["alice: old", "marker"]
        carol = room.add(FakeMember("carol"), since=room.event_id(1))
        assert carol.frames(1)[0].json == {
            "type": "welcome",
            "user": "carol",
            "users": ["alice", "bob", "carol"],
            "last_id": None,
            "resumed": False,
            **WELCOME_LIMITS,
        }


def test_one_batch_sends_each_member_its_own_part() -> None:
    """Items drained in one batch: a newcomer gets its replay up to its
    arrival and the batch's events after it, a leaver those before its
    removal and its close frame, members all of them, each once."""
    with running_room() as room:
        gate = room.add(FakeMember("gate", Format.TEXT))
        leaver = room.add(FakeMember("leaver", Format.TEXT))
        room.say("e1")
        gate.frames(1)
        leaver.frames(1)
        # The dispatcher stops in the fan-out of e2, holding the hub's lock.
        opened = gate.close_gate()
        room.say("e2")
        assert gate.blocked.wait(5 * UNIT)
        room.say("e3")
        resumer = room.add(FakeMember("resumer"), since=room.event_id(1))
        room.say("e4")
        newcomer = room.add(FakeMember("newcomer", Format.TEXT), history=1)
        room.dispatcher.remove(
            leaver, frames.encode_close(1000), after=room.event_id(3), wait=UNIT
        )
        room.say("e5")
        opened.set()

        received = resumer.frames(5)
        assert received[0].json["resumed"] is True
        assert received[0].json["last_id"] == str(room.event_id(3))
        assert [frame.json["text"] for frame in received[1:]] == [
            "e2",
            "e3",
            "e4",
            "e5",
        ]
        assert [frame.text for frame in newcomer.frames(2)] == [
            "alice: e4",
            "alice: e5",
        ]
        leaver.wait_closed()
        received = leaver.frames(5)
        assert [frame.text for frame in received[:4]] == [
            "alice: e1",
            "alice: e2",
            "alice: e3",
            "alice: e4",
        ]
        assert received[4].close_code == 1000
        assert [frame.text for frame in gate.frames(5)] == [
            f"alice: e{n}" for n in range(1, 6)
        ]
        room.say("e6")
        assert len(resumer.frames(6)) == 6
        assert len(newcomer.frames(3)) == 3
        assert len(leaver.frames(5)) == 5
        assert not leaver.sent_after_close


def test_history_size_counts_from_the_last_delivered_event() -> None:
    """An event appended but not yet delivered does not shrink the history:
    with a ring of 3, history=3 and since the 3rd newest delivered id still
    get 3 events."""
    with running_room(history_size=3) as room:
        gate = room.add(FakeMember("gate", Format.TEXT))
        for n in range(1, 5):
            room.say(f"e{n}")
        gate.frames(4)
        opened = gate.close_gate()
        room.say("e5")
        assert gate.blocked.wait(5 * UNIT)  # e5 is appended, not delivered
        history = room.add(FakeMember("history"), history=3)
        resume = room.add(FakeMember("resume"), since=room.event_id(2))
        room.say("e6")  # like a newcomer's own join, logged before it is added
        opened.set()

        received = history.until(6)
        assert received[0].json["last_id"] == str(room.event_id(5))
        assert offsets_of(received) == [3, 4, 5, 6]
        received = resume.until(6)
        assert received[0].json["resumed"] is True
        assert offsets_of(received) == [3, 4, 5, 6]


def test_resumes_and_histories_racing_appends_have_no_gap_or_duplicate() -> None:
    """Members added with since or history while another thread appends get
    a contiguous run of offsets to the end: the replay meets the live events
    exactly, however the arrival falls among the appends."""
    total, burst, arrivals = 3000, 10, 30
    rng = random.Random(1)
    with running_room(history_size=total) as room:
        witness = room.add(FakeMember("witness"))

        def append_all() -> None:
            # Bursts paced by their delivery: the appends last as long as
            # the dispatcher takes, so the arrivals fall among them.
            for start in range(0, total, burst):
                for n in range(start, start + burst):
                    room.say(str(n))
                witness.until(start + burst)

        appender = threading.Thread(target=append_all, name="appender")
        added: list[tuple[FakeMember, int | None, int]] = []
        appender.start()
        try:
            for number in range(arrivals):
                witness.until(number * total // (arrivals + 5) + 1)
                delivered = witness.last_offset()  # an id a client could have
                member = FakeMember(f"member{number}")
                if number % 2:
                    resume_after = rng.randint(max(delivered - 100, 1), delivered)
                    room.add(member, since=room.event_id(resume_after))
                    added.append((member, resume_after, 0))
                else:
                    history = rng.randint(0, 100)
                    room.add(member, history=history)
                    added.append((member, None, history))
        finally:
            appender.join()
        for member, since, history in added:
            received = member.until(total)
            welcome = received[0].json
            if since is None:
                newest = welcome["last_id"]
                newest_offset = 0 if newest is None else parse_event_id(newest).offset
                first = max(newest_offset - history, 0) + 1
            else:
                assert welcome["resumed"] is True, (member.name, welcome)
                first = since + 1
            assert offsets_of(received) == list(range(first, total + 1)), member.name
