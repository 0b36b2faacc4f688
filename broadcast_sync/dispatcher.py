"""The dispatcher: one thread that fans the log out to this server's clients.

The log hands it events in offset order; sessions hand it their arrivals,
departures and notices. Everything goes through one bounded inbox, so the
dispatcher sees one sequence, and every client gets the events in the log's
order, from exactly where it came in.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import logging
import queue
import threading
import time
from collections.abc import Sequence

from broadcast_sync import frames, messages
from broadcast_sync.events import Event, EventId, EventKind, LoggedEvent
from broadcast_sync.hub import Hub, Member
from broadcast_sync.log import Snapshot
from broadcast_sync.messages import Format
from broadcast_sync.metrics import Disconnect, Metrics

logger = logging.getLogger(__name__)

#: Items the inbox holds before readers wait: a full inbox pushes back on
#: flooding clients through TCP instead of growing without bound. Room for
#: a burst of thousands of joins, whose readers would otherwise wait.
INBOX_SIZE = 16384
#: How often a reader waiting on a full inbox checks that the dispatcher runs.
PUT_RETRY_SECONDS = 0.5
#: What JSON clients are told when the log starts over with a new epoch.
EPOCH_CHANGED = "the chat history was lost; earlier messages cannot be resumed"
#: The most the fan-out may lag (how long a message accepted now would
#: wait, or the age of a flush's oldest event when it is sent) before
#: readers refuse new messages with a notice: past capacity, latency stays
#: bounded at about this, instead of growing with the backlog.
MAX_LAG_SECONDS = 1.0
#: About the most one flush carries, in bytes of frames: a flush late by a
#: second of a busy room would be more than a client's buffers hold (see
#: --max-queue-bytes), and would drop clients that keep up. A larger
#: backlog goes out as several flushes, which the clients read as they come.
MAX_FLUSH_BYTES = 64 * 1024
#: What a frame adds to the name and text of its event, about: the header,
#: ": " in text, the keys and id in JSON.
FRAME_OVERHEAD_BYTES = 64
#: How long a resume may wait for this server to read the event it names:
#: another server logged it a moment ago. A few of the log's round trips.
RESUME_WAIT_SECONDS = 2.0


@dataclasses.dataclass(frozen=True)
class _Add:
    member: Member
    #: Logged events to send before the live ones.
    history: int
    #: Resume after this event instead, once it is delivered here.
    since: EventId | None
    #: Monotonic time after which it resumes, or not, anyway.
    deadline: float

    @property
    def after(self) -> EventId | None:
        return self.since


@dataclasses.dataclass(frozen=True)
class _Events:
    events: Sequence[LoggedEvent]


@dataclasses.dataclass(frozen=True)
class _Restart:
    snapshot: Snapshot


@dataclasses.dataclass(frozen=True)
class _SendTo:
    member: Member
    frame: bytes


@dataclasses.dataclass(frozen=True)
class _Remove:
    member: Member
    close_frame: bytes | None
    #: The member's last logged event: it gets its own messages before it
    #: goes.
    after: EventId | None
    #: Monotonic time after which it goes anyway: the log may be stalled.
    deadline: float


@dataclasses.dataclass(frozen=True)
class _Stop:
    #: The last event this server logged.
    after: EventId | None
    deadline: float


_Item = _Add | _Events | _Restart | _SendTo | _Remove | _Stop


@dataclasses.dataclass
class _Flush:
    """What one flush sends: events in order, and who gets which of them.

    Members of the hub get every event. A client added during the batch
    gets the events from its arrival on, and joins the hub after the
    fan-out; one removed gets the events before its removal, then its close
    frame. So a burst of arrivals costs one fan-out, not one each. A notice
    for one client goes between the events it came between, in the same
    fan-out.
    """

    events: list[LoggedEvent] = dataclasses.field(default_factory=list)
    #: Clients added, with the index of their first event.
    added: dict[Member, int] = dataclasses.field(default_factory=dict)
    #: Clients removed: their first and end event index, and close frame.
    removed: list[tuple[Member, int, int, bytes | None]] = dataclasses.field(
        default_factory=list
    )
    #: Frames for one client each, with the index of the event they precede.
    notices: dict[Member, list[tuple[int, bytes]]] = dataclasses.field(
        default_factory=dict
    )
    #: About how many bytes the events' frames take.
    size: int = 0
    #: Events taken from the inbox, including those delivered before.
    taken: int = 0


class Dispatcher:
    """Fans the log's events out to every member of the hub.

    Strategy: batching. The thread drains its inbox and joins the frames of
    everything it found into one buffer per format, sent with one system
    call per client. A message that finds the dispatcher idle goes out at
    once; when messages arrived during the previous flush (the server is
    under load), the next flush waits until ``batch_window`` after it, so
    that each carries more messages for the same cost. Each event is encoded
    once per format in use.
    """

    def __init__(
        self,
        hub: Hub[Member],
        *,
        history_size: int,
        batch_window: float,
        max_message_chars: int,
        max_message_bytes: int,
        metrics: Metrics,
    ) -> None:
        self._hub = hub
        self._metrics = metrics
        self._batch_window = batch_window
        #: Told to JSON clients in their welcome, so that a page can warn.
        self._max_message_chars = max_message_chars
        self._max_message_bytes = max_message_bytes
        self._inbox: queue.Queue[_Item] = queue.Queue(INBOX_SIZE)
        #: Set when the thread has stopped: puts would never be taken.
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dispatcher")

        # Owned by the dispatcher thread.
        #: The log's epoch and the offset of the last event delivered.
        self._epoch = ""
        self._offset = 0
        #: Who is in the room (on every server), as of ``_offset``.
        self._online: set[str] = set()
        #: The newest events delivered, for history and resume: kept here,
        #: not read from the log, because only here is "the events up to
        #: the last one delivered" known without a race.
        self._history: collections.deque[LoggedEvent] = collections.deque(
            maxlen=history_size
        )
        #: Arrivals and removals waiting for an event to be delivered.
        self._waiting: list[_Add | _Remove] = []
        self._stopping: _Stop | None = None
        #: Seconds the latest flush lagged; 0 once the inbox ran empty.
        #: Written by the dispatcher thread, read by readers (a float).
        self.lag = 0.0
        #: When the oldest event of the flush being sent was logged (server
        #: time); infinity between flushes. Written by the dispatcher
        #: thread, read by readers (a float).
        self._sending_since = float("inf")
        #: Events handed to the dispatcher, and events it fanned out: the
        #: difference is its backlog. One writer each: the log (which hands
        #: them over one call at a time), and the dispatcher thread.
        self._events_in = 0
        self._events_out = 0
        #: Seconds per event of the latest batch that took several flushes:
        #: how fast a backlog goes out. Written by the dispatcher thread.
        self._seconds_per_event = 0.0
        #: Set at the end of the next fan-out, then replaced by a new one:
        #: what busy readers wait for.
        self._fanned_out = threading.Event()

    def start(self) -> None:
        """Start the dispatcher thread."""
        self._thread.start()

    def stop(self, after: EventId | None, deadline: float) -> None:
        """Deliver the events up to ``after``, until the monotonic time
        ``deadline`` at most; then close every member with 1001, and join
        the thread."""
        self._put(_Stop(after, deadline))
        self._thread.join()

    # Called by the log, in order.

    def restart(self, snapshot: Snapshot) -> None:
        """Start over from ``snapshot``: the log is new, or was lost."""
        self._put(_Restart(snapshot))

    def deliver(self, events: Sequence[LoggedEvent]) -> None:
        """Fan out ``events``, which follow everything delivered before."""
        self._events_in += len(events)
        self._put(_Events(events))

    # Called from reader threads.

    def add(
        self, member: Member, *, history: int = 0, since: EventId | None = None
    ) -> None:
        """Start sending events to ``member``.

        A JSON member first gets its welcome. Then the member gets the
        events after ``since``, or else the last ``history`` events, and
        then every event after those: nothing falls between the two, and
        nothing comes twice, because the dispatcher reads the history up to
        the last event it delivered.
        """
        deadline = time.monotonic() + RESUME_WAIT_SECONDS
        self._put(_Add(member, history, since, deadline))

    def send_to(self, member: Member, frame: bytes) -> None:
        """Send an encoded ``frame`` to ``member`` alone, in order."""
        self._put(_SendTo(member, frame))

    def busy(self) -> bool:
        """Whether the fan-out lags more than :data:`MAX_LAG_SECONDS`: a
        message accepted now would wait that long behind the backlog, or
        the latest flush, or the one being sent, is that late already.

        The wait ahead is what bounds the latency: the lag of the flushes
        is only known once events went out, by which time the backlog holds
        a second of the room's messages. Past capacity, each of those takes
        longer than a second to send, and the latency had grown to several.
        """
        backlog = self._events_in - self._events_out
        ahead = backlog * self._seconds_per_event
        sending_for = time.time() - self._sending_since
        return max(ahead, self.lag, sending_for) > MAX_LAG_SECONDS

    def wait_for_fan_out(self, timeout: float) -> None:
        """Wait until the next fan-out is done, or ``timeout`` seconds."""
        self._fanned_out.wait(timeout)

    def remove(
        self,
        member: Member,
        close_frame: bytes | None,
        *,
        after: EventId | None,
        wait: float,
    ) -> None:
        """Stop sending to ``member``, closing it with ``close_frame`` if given.

        It first gets the events up to ``after`` (its own last message),
        unless they take longer than ``wait`` seconds to come.
        """
        self._put(_Remove(member, close_frame, after, time.monotonic() + wait))

    def _put(self, item: _Item) -> None:
        while not self._stopped.is_set():
            try:
                self._inbox.put(item, timeout=PUT_RETRY_SECONDS)
            except queue.Full:
                continue
            return

    # The dispatcher thread.

    def _run(self) -> None:
        last_flush = float("-inf")
        try:
            while True:
                try:
                    # Items arrived during the last flush: under load, batch.
                    items = [self._inbox.get_nowait()]
                except queue.Empty:
                    # Idle until now: caught up, and this item goes out at once.
                    self.lag = 0.0
                    items = self._wait()
                else:
                    pause = last_flush + self._batch_window - time.monotonic()
                    if pause > 0:
                        time.sleep(pause)
                items += self._drain()
                if not self._deliver(items):
                    return
                last_flush = time.monotonic()
        finally:
            self._stopped.set()
            # Nothing will send what came after the end, such as the leaves
            # of clients closed by it. Kept, it held thousands of sessions
            # until the cyclic collector found them, which took 0.6 s of
            # the exit after 10,000 clients.
            self._drain()

    def _wait(self) -> list[_Item]:
        """Wait for an item, or for the first deadline of what is waiting."""
        deadlines = [item.deadline for item in self._waiting]
        if self._stopping is not None:
            deadlines.append(self._stopping.deadline)
        if not deadlines:
            return [self._inbox.get()]
        try:
            return [self._inbox.get(timeout=max(min(deadlines) - time.monotonic(), 0))]
        except queue.Empty:
            return []

    def _drain(self) -> list[_Item]:
        items: list[_Item] = []
        try:
            while True:
                items.append(self._inbox.get_nowait())
        except queue.Empty:
            return items

    def _deliver(self, items: list[_Item]) -> bool:
        """Send ``items`` in order; False once stopped."""
        started = time.monotonic()
        events_before = self._events_out
        behind = False
        flush = _Flush()
        for item in items:
            if self._out_of_time():
                break  # what is left is not sent: the server must go
            if isinstance(item, _Events):
                self._add_events(item.events, flush)
            elif isinstance(item, (_Add, _Remove)):
                self._waiting.append(item)
            elif isinstance(item, _Stop):
                self._stopping = item
            elif isinstance(item, _SendTo):
                # In this fan-out, not one of its own: past capacity, a
                # thousand "server busy" notices cut a flush into a thousand
                # fan-outs, and the server never caught up again.
                notices = flush.notices.setdefault(item.member, [])
                notices.append((len(flush.events), item.frame))
            else:
                # A new epoch: send what came first.
                self._send(flush)
                flush = _Flush()
                self._restart(item.snapshot)
            self._act_when_due(flush)
            if flush.size >= MAX_FLUSH_BYTES:
                behind = True
                self._send(flush)
                flush = _Flush()
        self._act_when_due(flush)  # also when nothing came: deadlines pass
        self._send(flush)
        if behind:
            events = self._events_out - events_before
            self._seconds_per_event = (time.monotonic() - started) / events
        if self._stopping is not None and self._due(self._stopping):
            self._close_all()
            return False
        return True

    def _out_of_time(self) -> bool:
        """Whether the server is stopping, and its deadline has passed."""
        stopping = self._stopping
        return stopping is not None and time.monotonic() >= stopping.deadline

    def _end_waiting(self) -> None:
        """Add and remove at once the members still waiting for an event."""
        flush = _Flush()
        for item in self._waiting:
            if isinstance(item, _Add):
                self._add(item, flush)
            else:
                self._remove(item, flush)
        self._waiting = []
        self._send(flush)

    def _add_events(self, events: Sequence[LoggedEvent], flush: _Flush) -> None:
        flush.taken += len(events)
        for logged in events:
            if logged.offset <= self._offset:
                continue  # read again after a reconnection
            if logged.offset > self._offset + 1:
                logger.warning(
                    "events %d to %d were lost: the log dropped them first",
                    self._offset + 1,
                    logged.offset - 1,
                )
                self._history.clear()  # a history with a hole cannot be replayed
            self._offset = logged.offset
            self._history.append(logged)
            event = logged.event
            if event.kind is EventKind.JOIN:
                self._online.add(event.user)
            elif event.kind is EventKind.LEAVE:
                self._online.discard(event.user)
            flush.events.append(logged)
            flush.size += _frame_size(event)
            if self._waiting:
                self._act_when_due(flush)

    def _add(self, item: _Add, flush: _Flush) -> None:
        member = item.member
        history, resumed = self._replay(item)
        head = []
        if member.format is Format.JSON:
            last_id = EventId(self._epoch, self._offset) if self._offset else None
            users = self._online | {member.name}
            welcome = messages.welcome_json(
                member.name,
                users,
                last_id,
                resumed,
                max_message_chars=self._max_message_chars,
                max_message_bytes=self._max_message_bytes,
            )
            head.append(frames.encode_message(welcome))
        head += encode(history, member.format, self._epoch)
        if head:
            member.send(b"".join(head))
        flush.added[member] = len(flush.events)

    def _replay(self, item: _Add) -> tuple[list[LoggedEvent], bool | None]:
        """The events ``item`` asks for, and whether it resumed (if it asked)."""
        since = item.since
        if since is None:
            return self._read(max(self._offset - item.history, 0)), None
        if since.epoch != self._epoch or since.offset > self._offset:
            return [], False
        events = self._read(since.offset)
        if len(events) != self._offset - since.offset:
            return [], False  # trimmed away: no partial replay
        return events, True

    def _read(self, after: int) -> list[LoggedEvent]:
        """The events after offset ``after`` still in the history."""
        if not self._history:
            return []
        start = max(after + 1 - self._history[0].offset, 0)
        return list(itertools.islice(self._history, start, None))

    def _act_when_due(self, flush: _Flush) -> None:
        """Add and remove the members whose event was delivered, or that can
        wait no longer, in the order they came."""
        if not self._waiting:
            return
        waiting: list[_Add | _Remove] = []
        for item in self._waiting:
            if any(item.member is each.member for each in waiting):
                waiting.append(item)  # after its own arrival
            elif not self._due(item):
                waiting.append(item)
            elif isinstance(item, _Add):
                self._add(item, flush)
            else:
                self._remove(item, flush)
        self._waiting = waiting

    def _due(self, item: _Add | _Remove | _Stop) -> bool:
        """Whether ``item``'s event was delivered (or belongs to a lost log),
        or its deadline passed."""
        after = item.after
        return (
            after is None
            or after.epoch != self._epoch
            or after.offset <= self._offset
            or time.monotonic() >= item.deadline
        )

    def _remove(self, item: _Remove, flush: _Flush) -> None:
        member = item.member
        start = flush.added.pop(member, 0)
        flush.removed.append((member, start, len(flush.events), item.close_frame))
        count = self._hub.remove(member) + len(flush.added)
        # Set before the session asked to leave, and never changed after.
        ending = member.ending
        logger.info(
            "%s (%s) left: %s; %d connected",
            member.name,
            member.address,
            member.end_reason,
            count,
            extra={
                "client": member.address,
                "user": member.name,
                "reason": None if ending is None else ending.value,
                "code": member.end_code,
            },
        )

    def _restart(self, snapshot: Snapshot) -> None:
        if self._epoch and snapshot.epoch != self._epoch:
            logger.warning("the log was lost: new epoch %s", snapshot.epoch)
            data = frames.encode_message(messages.notice(EPOCH_CHANGED, Format.JSON))
            for member in self._hub.members():
                if member.format is Format.JSON:
                    member.send(data)
        self._epoch = snapshot.epoch
        self._offset = snapshot.offset
        self._online = set(snapshot.online)
        self._history.clear()
        self._history.extend(snapshot.history)
        # Their last events belong to the lost log: nothing is left to wait for.
        self._end_waiting()

    def _send(self, flush: _Flush) -> None:
        """Fan ``flush`` out, then let its newcomers in and its leavers go."""
        started = time.monotonic()
        events = flush.events
        notices = flush.notices
        rendered = _Rendered(events, self._epoch)
        deliveries = sent_bytes = 0
        if events:
            self._sending_since = events[0].event.ts
            closed = []
            with self._hub.locked_members() as members:
                for member in members:
                    if notices and member in notices:
                        data = rendered.joined(
                            member.format, notices=notices.pop(member)
                        )
                    else:
                        data = rendered.joined(member.format)
                    if not member.send(data):
                        closed.append(member)
                    sent_bytes += len(data)
                deliveries = len(members) * len(events)
            self._sending_since = float("inf")
            fanned_out, self._fanned_out = self._fanned_out, threading.Event()
            fanned_out.set()
            if closed:
                self._hub.discard(closed)
        for member, start in flush.added.items():
            count = self._hub.add(member)
            logger.info(
                "%s (%s) joined; %d connected",
                member.name,
                member.address,
                count,
                extra={"client": member.address, "user": member.name},
            )
            data = rendered.joined(
                member.format, start, notices=notices.pop(member, ())
            )
            if data:
                member.send(data)
                deliveries += len(events) - start
                sent_bytes += len(data)
        for member, start, end, close_frame in flush.removed:
            data = rendered.joined(
                member.format, start, end, notices=notices.pop(member, ())
            )
            if data:
                member.send(data)
                deliveries += end - start
                sent_bytes += len(data)
            if close_frame is not None:
                member.close(close_frame)
        # Members that got no events: in the hub while none came, or not
        # yet let in (waiting to resume).
        for member, alone in notices.items():
            member.send(b"".join(frame for _, frame in alone))
        self._events_out += flush.taken
        if events:
            seconds = time.monotonic() - started
            # Clocks of other servers may be a little ahead.
            self.lag = max(time.time() - events[0].event.ts, 0.0)
            self._metrics.flushed(
                collections.Counter(logged.event.kind for logged in events),
                deliveries=deliveries,
                sent_bytes=sent_bytes,
                seconds=seconds,
                lag=self.lag,
            )

    def _close_all(self) -> None:
        self._end_waiting()
        members = self._hub.members()
        logger.info("closing %d connections: server shutting down", len(members))
        close_frame = frames.encode_close(frames.GOING_AWAY, "server shutting down")
        for member in members:
            member.close(
                close_frame, Disconnect.SHUTDOWN, "server shutting down (1001)"
            )
        # Nothing more goes to them, and their leaves will not be read.
        self._hub.discard(members)


def encode(events: Sequence[LoggedEvent], format: Format, epoch: str) -> list[bytes]:
    """Each of ``events``, of the log of ``epoch``, as a frame in ``format``."""
    if format is Format.JSON:
        return [
            frames.encode_message(
                messages.event_json(logged.event, EventId(epoch, logged.offset))
            )
            for logged in events
        ]
    return [
        frames.encode_message(messages.event_text(logged.event)) for logged in events
    ]


def _frame_size(event: Event) -> int:
    """About how many bytes ``event``'s frame takes, in either format."""
    return len(event.user) + len(event.body) + FRAME_OVERHEAD_BYTES


class _Rendered:
    """The frames of one flush, encoded once per format, and only if used.

    Each format's frames are joined into one buffer, which every member
    gets whole. A client that joined or left during the flush gets a slice
    of it, a view rather than a copy: a thousand leavers in a flush of a
    thousand events cost a thousand views, not a million frames joined.
    """

    def __init__(self, events: Sequence[LoggedEvent], epoch: str) -> None:
        self._events = events
        self._epoch = epoch
        self._whole: dict[Format, bytes] = {}
        #: Where each event's frame starts in the buffer, then where it ends.
        self._offsets: dict[Format, list[int]] = {}

    def joined(
        self,
        format: Format,
        start: int = 0,
        end: int | None = None,
        notices: Sequence[tuple[int, bytes]] = (),
    ) -> bytes | memoryview:
        """The frames of events ``start`` to ``end`` in ``format``, as one
        buffer, with ``notices`` (frames, each with the index of the event it
        precedes) in their places."""
        whole = self._whole.get(format)
        if whole is None:
            whole = self._render(format)
        if end is None:
            end = len(self._events)
        if notices:
            return self._with_notices(format, start, end, notices)
        if start == 0 and end == len(self._events):
            return whole
        offsets = self._offsets[format]
        return memoryview(whole)[offsets[start] : offsets[end]]

    def _with_notices(
        self, format: Format, start: int, end: int, notices: Sequence[tuple[int, bytes]]
    ) -> bytes:
        """The frames of events ``start`` to ``end``, ``notices`` among them."""
        parts: list[bytes | memoryview] = []
        for before, frame in notices:
            place = min(max(before, start), end)
            parts += [self.joined(format, start, place), frame]
            start = place
        parts.append(self.joined(format, start, end))
        return b"".join(parts)

    def _render(self, format: Format) -> bytes:
        encoded = encode(self._events, format, self._epoch)
        lengths = (len(frame) for frame in encoded)
        self._offsets[format] = list(itertools.accumulate(lengths, initial=0))
        whole = self._whole[format] = b"".join(encoded)
        return whole
