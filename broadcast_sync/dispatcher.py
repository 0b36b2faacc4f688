"""The dispatcher: one thread that puts every message in one order.

Readers hand it joins, broadcast frames, notices and leaves through a bounded
inbox; it fans each batch out to every member of the room, so every client
sees the same order.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from typing import TYPE_CHECKING

from broadcast_sync import frames, messages
from broadcast_sync.hub import Hub

if TYPE_CHECKING:
    from broadcast_sync.session import Session

logger = logging.getLogger(__name__)

#: Items the inbox holds before readers wait: a full inbox pushes back on
#: flooding clients through TCP instead of growing without bound. Room for
#: a burst of thousands of joins, whose readers would otherwise wait.
INBOX_SIZE = 16384
#: How often a reader waiting on a full inbox checks that the dispatcher runs.
PUT_RETRY_SECONDS = 0.5


@dataclasses.dataclass(frozen=True)
class _Join:
    session: Session


@dataclasses.dataclass(frozen=True)
class _Broadcast:
    frame: bytes


@dataclasses.dataclass(frozen=True)
class _SendTo:
    session: Session
    frame: bytes


@dataclasses.dataclass(frozen=True)
class _Leave:
    session: Session
    close_frame: bytes | None


@dataclasses.dataclass(frozen=True)
class _Stop:
    pass


_Item = _Join | _Broadcast | _SendTo | _Leave | _Stop


@dataclasses.dataclass
class _Flush:
    """What one flush sends: frames in order, and who gets which of them.

    Members of the hub get every frame. A client that joined during the
    batch gets the frames from its own join notice on, and joins the hub
    after the fan-out; one that left gets the frames before its leave, then
    its close frame. So a burst of joins costs one fan-out, not one each.
    """

    frames: list[bytes] = dataclasses.field(default_factory=list)
    #: Clients that joined, with the index of their first frame.
    joined: dict[Session, int] = dataclasses.field(default_factory=dict)
    #: Clients that left: their first and end frame index, and close frame.
    left: list[tuple[Session, int, int, bytes | None]] = dataclasses.field(
        default_factory=list
    )


class Dispatcher:
    """Orders frames and fans them out to every member of the hub.

    Strategy: batching. The thread drains its inbox and joins the frames of
    everything it found into one buffer, sent with one system call per
    client. A message that finds the dispatcher idle goes out at once; when
    messages arrived during the previous flush (the server is under load),
    the next flush waits until ``batch_window`` after it, so that each
    carries more messages for the same cost.
    """

    def __init__(
        self, hub: Hub[Session], *, batch_window: float, announce: bool
    ) -> None:
        """``announce``: broadcast join and leave notices (chat mode)."""
        self._hub = hub
        self._batch_window = batch_window
        self._announce = announce
        self._inbox: queue.Queue[_Item] = queue.Queue(INBOX_SIZE)
        #: Set when the thread has stopped: puts would never be taken.
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dispatcher")

    def start(self) -> None:
        """Start the dispatcher thread."""
        self._thread.start()

    def stop(self) -> None:
        """Deliver what was accepted, close every member with 1001, and join."""
        self._put(_Stop())
        self._thread.join()

    # Called from reader threads.

    def join(self, session: Session) -> None:
        """Add ``session`` to the room."""
        self._put(_Join(session))

    def broadcast(self, frame: bytes) -> None:
        """Send an encoded ``frame`` to every member."""
        self._put(_Broadcast(frame))

    def send_to(self, session: Session, frame: bytes) -> None:
        """Send an encoded ``frame`` to ``session`` alone, in order."""
        self._put(_SendTo(session, frame))

    def leave(self, session: Session, close_frame: bytes | None) -> None:
        """Remove ``session``, closing it with ``close_frame`` if given."""
        self._put(_Leave(session, close_frame))

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
                    # Idle until now: this item goes out at once.
                    items = [self._inbox.get()]
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

    def _drain(self) -> list[_Item]:
        items: list[_Item] = []
        try:
            while True:
                items.append(self._inbox.get_nowait())
        except queue.Empty:
            return items

    def _deliver(self, items: list[_Item]) -> bool:
        """Send ``items`` in order; False once told to stop."""
        flush = _Flush()
        for item in items:
            if isinstance(item, _Broadcast):
                flush.frames.append(item.frame)
            elif isinstance(item, _Join):
                flush.joined[item.session] = len(flush.frames)
                flush.frames += self._notice(messages.joined(item.session.name))
            elif isinstance(item, _Leave):
                self._remove(item.session, item.close_frame, flush)
            else:
                # A frame for one client, or the end: send what came first.
                self._send(flush)
                flush = _Flush()
                if isinstance(item, _SendTo):
                    item.session.send(item.frame)
                else:
                    self._close_all()
                    return False
        self._send(flush)
        return True

    def _remove(
        self, session: Session, close_frame: bytes | None, flush: _Flush
    ) -> None:
        start = flush.joined.pop(session, 0)
        end = len(flush.frames)
        flush.left.append((session, start, end, close_frame))
        count = self._hub.remove_member(session) + len(flush.joined)
        logger.info(
            "%s (%s) left: %s; %d connected",
            session.name,
            session.address,
            session.end_reason,
            count,
        )
        flush.frames += self._notice(messages.left(session.name))

    def _send(self, flush: _Flush) -> None:
        """Fan ``flush`` out, then let its newcomers in and its leavers go."""
        batch = flush.frames
        if batch:
            data = b"".join(batch)
            with self._hub.locked_members() as members:
                for member in members:
                    member.send(data)
        for session, start in flush.joined.items():
            count = self._hub.add_member(session)
            logger.info(
                "%s (%s) joined; %d connected", session.name, session.address, count
            )
            if start < len(batch):
                session.send(b"".join(batch[start:]))
        for session, start, end, close_frame in flush.left:
            if start < end:
                session.send(b"".join(batch[start:end]))
            if close_frame is not None:
                session.close(close_frame)

    def _notice(self, text: str) -> list[bytes]:
        return [frames.encode_message(text)] if self._announce else []

    def _close_all(self) -> None:
        members = self._hub.members()
        logger.info("closing %d connections: server shutting down", len(members))
        close_frame = frames.encode_close(frames.GOING_AWAY, "server shutting down")
        for member in members:
            member.close(close_frame, "server shutting down (1001)")
