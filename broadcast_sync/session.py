"""One client after its handshake: the socket, the reader and the writer.

Strategy: the dispatcher delivers a broadcast with a non-blocking send
straight from its own thread whenever the client has nothing queued. Waking a
writer thread per client per message would cost a GIL hand-off each, which
caps fan-out at a few hundred clients. Only what the socket does not take
goes to the client's bounded outbox, and from then on everything for that
client goes through the outbox, drained by its writer thread, until the
outbox is empty again: so order holds, and a slow client costs the others
nothing. A full outbox, or a write that makes no progress within the write
timeout, drops the client.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import select
import socket
import threading
import time
from typing import TYPE_CHECKING, Protocol

from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import (
    BytesMessage,
    CloseConnection,
    Ping,
    Pong,
    TextMessage,
)
from wsproto.events import Event as ProtocolEvent

from broadcast_sync import frames, messages
from broadcast_sync.assembler import MessageAssembler, MessageTooBig
from broadcast_sync.config import Mode
from broadcast_sync.events import Event, EventId, EventKind
from broadcast_sync.handshake import Arrival
from broadcast_sync.log import EventLog, LogUnavailable
from broadcast_sync.metrics import Disconnect, Metrics
from broadcast_sync.ratelimit import RateLimiter, Verdict
from broadcast_sync.transport import Transport
from broadcast_sync.validation import (
    InvalidMessage,
    check_message,
    escape_controls,
    is_blank,
)

if TYPE_CHECKING:
    from broadcast_sync.config import ServerConfig
    from broadcast_sync.hub import Member

logger = logging.getLogger(__name__)

#: Bytes read from the socket at a time: many chat messages, little memory.
RECEIVE_BYTES = 16384
#: The kernel's buffers of each client's socket (Linux doubles these for its
#: bookkeeping). Left alone, loopback autotuning grew a slow reader's send
#: buffer to 2.8 MB, so that 300 of them pinned 1.16 GB of kernel memory.
#: 128 KiB is several seconds of a busy room for one client.
SEND_BUFFER_BYTES = 128 * 1024
#: A client's input is read as it comes; a flood beyond this waits in the
#: client's own buffers, not ours.
RECEIVE_BUFFER_BYTES = 64 * 1024
#: What a sender is told when its message is refused because the server is
#: over capacity.
BUSY_NOTICE = "message not sent: server busy; try again in a moment"
#: How long a reader that refused messages, the server being busy, pauses,
#: and then the longest it waits for the next fan-out, before it reads on.
BUSY_PAUSE_SECONDS = 0.1
FAN_OUT_WAIT_SECONDS = 1.0
#: Pings and pongs a client may send per message it may send (see
#: --rate-limit): a keepalive needs one every few seconds; a client sending
#: thousands a second took a core. Past it, the client is closed with 1008.
CONTROL_FRAMES_PER_MESSAGE = 4


class Room(Protocol):
    """Where a session arrives, gets its notices and leaves: the dispatcher."""

    def add(
        self, member: Member, *, history: int = 0, since: EventId | None = None
    ) -> None:
        """Start sending events to ``member``."""

    def send_to(self, member: Member, frame: bytes) -> None:
        """Send ``frame`` to ``member`` alone, in order."""

    def busy(self) -> bool:
        """Whether the fan-out is so far behind that messages are refused."""

    def wait_for_fan_out(self, timeout: float) -> None:
        """Wait until the next fan-out is done."""

    def remove(
        self,
        member: Member,
        close_frame: bytes | None,
        *,
        after: EventId | None,
        wait: float,
    ) -> None:
        """Stop sending to ``member`` once it has the events up to ``after``."""


class Session:
    """A connected client, from its handshake until its socket is closed.

    The reader runs in the connection's own thread (:meth:`run`), which
    starts the writer thread and joins it before returning. The dispatcher
    and the heartbeat call :meth:`send`, :meth:`close` and :meth:`abort`.
    The reader appends the client's messages to the log, which hands them
    to the dispatcher.
    """

    def __init__(
        self,
        transport: Transport,
        address: str,
        name: str,
        *,
        config: ServerConfig,
        room: Room,
        log: EventLog,
        metrics: Metrics,
        arrival: Arrival,
        departures: threading.Semaphore,
        trailing_data: bytes = b"",
    ) -> None:
        self.sock = transport.sock
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
        self.address = address
        self.name = name
        self.format = arrival.format
        #: Why the session ended, for the metrics and the log; the first
        #: reason given wins. Written under ``_lock``.
        self.ending: Disconnect | None = None
        self.end_reason = ""
        #: The close code sent or received, if the session ended with one.
        self.end_code: int | None = None
        #: Monotonic time of the last bytes received. Written by the reader,
        #: read by the heartbeat: a float assignment needs no lock.
        self.last_seen = time.monotonic()
        self._config = config
        #: Driven only with ``_lock`` held: one TLS object, several threads.
        self._transport = transport
        #: Plain bytes skip the transport, and its lock on the reader's side.
        self._encrypted = transport.encrypted
        self._room = room
        self._log = log
        self._arrival = arrival
        #: Shared by the server's sessions: bounds how many end at once.
        self._departures = departures

        # Owned by the reader thread.
        self._connection = Connection(
            ConnectionType.SERVER, trailing_data=trailing_data
        )
        self._limiter = RateLimiter(config.rate_limit, config.rate_window)
        self._control_limiter = RateLimiter(
            CONTROL_FRAMES_PER_MESSAGE * config.rate_limit, config.rate_window
        )
        self._assembler = MessageAssembler(config.max_message_bytes)
        self._relay = config.mode is Mode.RELAY
        self._metrics = metrics
        #: Messages of the current batch of frames, and those rate limited.
        self._batch_received = 0
        self._batch_limited = 0
        #: The last event this client logged.
        self._last_id: EventId | None = None
        #: Whether it was told that its messages are refused: server busy.
        self._told_busy = False
        #: Whether a message of the batch being read was refused so.
        self._batch_refused_busy = False
        #: Whether its join was logged, and so its leave must be.
        self._join_logged = False
        self._left = False
        self._close_deadline = float("inf")
        #: Monotonic time at which its signed identity expires (see
        #: :meth:`_receive`); a wall-clock ``exp`` made monotonic once, so
        #: that a clock step cannot stretch or cut the session.
        self._expires = float("inf")
        if arrival.expires is not None:
            self._expires = time.monotonic() + (arrival.expires - time.time())
        self._poller = select.poll()
        self._poller.register(self.sock, select.POLLIN)

        # Guards the outgoing side of the socket, the transport (TLS state
        # is one object for both directions), ``ending`` and the fields
        # below: the dispatcher, the heartbeat, the reader and the writer all
        # send.
        self._lock = threading.Lock()
        #: True while the writer thread owns the outgoing side.
        self._backlog = False
        #: True once a close frame is on its way: nothing may follow it.
        self._closed = False
        #: True once the socket is shut down.
        self._aborted = False
        #: Bytes in the outbox: with its writes, bounded by the config.
        self._queued_bytes = 0
        #: Monotonic time by which the writer must have sent the close frame
        #: queued behind a backlog; the writer reads it without the lock.
        self._close_by = float("inf")
        #: Bytes waiting for the writer; ``None`` wakes it to stop. One place
        #: more than ``queue_size``: a client dropped for a full outbox still
        #: gets its close frame after what is queued.
        self._outbox: queue.Queue[bytes | memoryview | None] = queue.Queue(
            config.queue_size + 1
        )
        # A daemon, like the reader, for the reason in server.py; the
        # reader joins it.
        self._writer = threading.Thread(
            target=self._write_loop, name=f"writer {address}", daemon=True
        )

    # Outgoing side: called from any thread.

    def send(self, data: bytes | memoryview) -> bool:
        """Send ``data`` after everything sent before it, without blocking;
        False once nothing more can be sent."""
        with self._lock:
            if not self._closed:
                self._send_locked(data)
            return not self._closed

    def close(
        self, frame: bytes, why: Disconnect | None = None, reason: str = ""
    ) -> None:
        """Send the close ``frame`` after everything sent before it.

        Nothing is sent after it; once it is written, the server half-closes
        the socket, as RFC 6455 asks of the server (section 7.1.1). ``why``
        and ``reason`` are counted and logged when the session ends, unless
        it has a reason already.
        """
        with self._lock:
            if self._closed:
                return
            if why is not None:
                self._set_end(why, reason)
            self._send_locked(frame)
            self._closed = True
            if self._backlog:
                self._close_by = time.monotonic() + self._config.close_timeout
            else:
                self._shutdown_write()

    def abort(self, why: Disconnect, reason: str, code: int | None = None) -> None:
        """Cut the connection now, sending a close frame ``code`` if it fits.

        Shutting the socket down wakes the reader and the writer from their
        waits for the socket.
        """
        with self._lock:
            self._abort_locked(why, reason, code)

    def _send_locked(self, data: bytes | memoryview) -> None:
        """Send ``data``, and whatever the transport has to send with it."""
        if self._backlog and self._outbox_full(len(data)):
            # Before encrypting: a TLS record made must be sent.
            self._drop_slow_locked()
            return
        if self._encrypted:
            data = self._transport.encode(data)
            if not data:
                return
        if not self._backlog:
            try:
                sent = self.sock.send(data, socket.MSG_DONTWAIT)
            except BlockingIOError:
                sent = 0
            except OSError as exc:
                self._abort_locked(Disconnect.LOST, f"send failed: {exc}")
                return
            if sent == len(data):
                return
            # A view, not a copy: backlogged clients share the flush.
            data = memoryview(data)[sent:]
            self._backlog = True
        self._outbox.put_nowait(data)
        self._queued_bytes += len(data)

    def _outbox_full(self, adding: int) -> bool:
        """Whether ``adding`` more bytes would overfill the outbox, in
        writes or in bytes. (The first write of a backlog always goes in:
        the part of a frame the socket did not take must follow.)"""
        return (
            self._outbox.qsize() >= self._config.queue_size
            or self._queued_bytes + adding > self._config.max_queue_bytes
        )

    def _drop_slow_locked(self) -> None:
        """Drop a client whose outbox is full, with a close frame 1008.

        The close frame takes the outbox's last place, after the writes
        queued, which a partly sent frame may lead. The writer has the
        close timeout to send them; meanwhile the reader is woken to leave
        the room, and nothing more is sent.
        """
        reason = (
            f"too slow: {self._outbox.qsize()} writes, "
            f"{self._queued_bytes} bytes pending"
        )
        self._set_end(Disconnect.SLOW, reason, frames.POLICY_VIOLATION)
        close_frame = frames.encode_close(frames.POLICY_VIOLATION, "too slow")
        if self._encrypted:
            close_frame = self._transport.encode(close_frame)
        self._outbox.put_nowait(close_frame)
        self._queued_bytes += len(close_frame)
        self._closed = True
        self._close_by = time.monotonic() + self._config.close_timeout
        with contextlib.suppress(OSError):  # the peer is gone already
            self.sock.shutdown(socket.SHUT_RD)

    def _abort_locked(
        self, why: Disconnect, reason: str, code: int | None = None
    ) -> None:
        if self._aborted:
            return
        self._set_end(why, reason, code)
        if code is not None and not self._closed and not self._backlog:
            # Best effort: the socket is cut either way.
            with contextlib.suppress(OSError):
                frame = self._transport.encode(frames.encode_close(code, reason))
                self.sock.send(frame, socket.MSG_DONTWAIT)
        self._closed = True
        self._aborted = True
        with contextlib.suppress(OSError):  # the peer is gone already
            self.sock.shutdown(socket.SHUT_RDWR)

    def _shutdown_write(self) -> None:
        closing = self._transport.closing()  # TLS: a close_notify
        with contextlib.suppress(OSError):  # the peer is gone already
            if closing:
                self.sock.send(closing, socket.MSG_DONTWAIT)  # best effort
            self.sock.shutdown(socket.SHUT_WR)

    def _record_end(
        self, why: Disconnect, reason: str, code: int | None = None
    ) -> None:
        with self._lock:
            self._set_end(why, reason, code)

    def _set_end(self, why: Disconnect, reason: str, code: int | None = None) -> None:
        if self.ending is None:
            self.ending = why
            self.end_reason = reason
            self.end_code = code

    # Writer thread.

    def _write_loop(self) -> None:
        poller = select.poll()
        poller.register(self.sock, select.POLLOUT)
        while True:
            data = self._outbox.get()
            if data is None or self._aborted or not self._write_all(data, poller):
                return
            with self._lock:
                self._queued_bytes -= len(data)
                if self._outbox.empty():
                    self._backlog = False
                    if self._closed:  # the close frame was the last write
                        self._shutdown_write()
                        return

    def _write_all(self, data: bytes | memoryview, poller: select.poll) -> bool:
        """Write ``data`` within the write timeout (or by the time the close
        frame is due), or abort the session."""
        view = memoryview(data)
        write_by = time.monotonic() + self._config.write_timeout
        while view:
            # Read each time: a close frame may be queued meanwhile.
            deadline = min(write_by, self._close_by)
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not poller.poll(remaining * 1000):
                self.abort(
                    Disconnect.SLOW, self._stuck(write_by), frames.POLICY_VIOLATION
                )
                return False
            try:
                sent = self.sock.send(view, socket.MSG_DONTWAIT)
            except BlockingIOError:
                continue
            except OSError as exc:
                self.abort(Disconnect.LOST, f"send failed: {exc}")
                return False
            view = view[sent:]
        return True

    def _stuck(self, write_by: float) -> str:
        """Why the writer gives up on a write due by ``write_by``."""
        if self._close_by < write_by:
            return "too slow: the close frame was not sent within the close timeout"
        return f"too slow: no write for {self._config.write_timeout:g} s"

    # Reader: runs in the connection's thread.

    def run(self) -> None:
        """Serve the client until it leaves; returns once both threads are done."""
        self._writer.start()
        arrival = self._arrival
        self._room.add(self, history=arrival.history, since=arrival.since)
        if not self._relay:
            self._log_join()
        try:
            self._read_loop()
        except TimeoutError:
            self._record_end(Disconnect.LOST, "closing handshake timed out")
        except OSError as exc:
            self._lose(f"connection lost: {exc}")
        finally:
            with self._departures:
                writer_stopped = self._depart()
                if writer_stopped:
                    self._end()
            if not writer_stopped:
                # Outside the gate: a close frame behind a backlog may take
                # the writer up to the close timeout.
                self._end()

    def _lose(self, reason: str) -> None:
        """Note that the connection failed: nothing more is sent on it.

        Before the departure gate: the dispatcher then skips this client
        without a system call, and drops it from the fan-out.
        """
        with self._lock:
            self._set_end(Disconnect.LOST, reason)
            self._closed = True

    def _depart(self) -> bool:
        """Cut the connection and stop the writer, unless it is still getting
        a close frame out (it stops by itself then), and leave the room.

        Only the reader wakes its writer, here, behind the departure gate:
        a fan-out that finds thousands of connections reset must not wake
        thousands of writers at once.

        Returns:
            Whether the writer was stopped, rather than left to send.
        """
        with self._lock:
            stopping = not (self._backlog and self._close_by < float("inf"))
            if stopping:
                self._abort_locked(Disconnect.LOST, "connection closed")
                # A full outbox means the writer is sending: it fails on
                # the shut socket.
                with contextlib.suppress(queue.Full):
                    self._outbox.put_nowait(None)
        self._leave()
        return stopping

    def _end(self) -> None:
        """Join the writer, make sure the connection is cut, and count the
        session's end."""
        self._writer.join()
        self.abort(Disconnect.LOST, "connection closed")
        with self._lock:
            ending = self.ending
        assert ending is not None  # set by abort() at the latest
        self._metrics.disconnected(ending)

    def _log_join(self) -> None:
        try:
            self._append(Event(EventKind.JOIN, self.name, time.time()))
        except LogUnavailable as exc:
            self._fail(Disconnect.UNAVAILABLE, frames.TRY_AGAIN_LATER, str(exc))
        else:
            self._join_logged = True

    def _append(self, event: Event) -> None:
        """Log ``event``; the dispatcher fans it out from the log."""
        self._last_id = self._log.append(event)

    def _read_loop(self) -> None:
        # Events first: the handshake may have read the first frames already.
        while self._handle_events():
            data = self._receive()
            if not data:
                self._record_end(
                    Disconnect.LOST, "connection lost without a close frame (1006)"
                )
                return
            self.last_seen = time.monotonic()
            if self._left:  # after leaving, the rest is read and dropped
                continue
            if self._encrypted:
                data = self._decode(data)
            if data:  # else a part of a TLS record: more must come
                self._connection.receive_data(data)

    def _decode(self, data: bytes) -> bytes:
        """The application bytes of the wire bytes ``data``, sending what
        the transport must answer (TLS may have to)."""
        with self._lock:
            decoded = self._transport.decode(data)
            if not self._closed:
                self._send_locked(b"")
        return decoded

    def _handle_events(self) -> bool:
        """Act on the events received so far; False when the connection is done."""
        if self._left:
            return True
        going_on = True
        for event in self._connection.events():
            going_on = self._handle(event)
            if not going_on or self._left:
                break
        # Counted once per batch read, not per message: see metrics.py.
        if self._batch_received:
            self._metrics.received(self._batch_received, self._batch_limited)
            self._batch_received = self._batch_limited = 0
        if self._batch_refused_busy:
            self._batch_refused_busy = False
            self._yield_to_fan_out()
        return going_on

    def _yield_to_fan_out(self) -> None:
        """Pause, then wait for the next fan-out, before reading on: the
        server is busy.

        The dispatcher gives up the GIL at every send, and takes it back
        behind every thread then ready to run. A thousand readers that read
        and refused at full speed made each send wait behind a thousand
        reads: a flush took seconds, the lag grew for good, and every
        message was refused. Waiting for the fan-out alone woke every reader
        at every flush, more often than messages came; hence the pause too.
        What waits meanwhile in the kernel's buffers is refused, or is
        younger than the pause and one fan-out.
        """
        time.sleep(BUSY_PAUSE_SECONDS)
        self._room.wait_for_fan_out(FAN_OUT_WAIT_SECONDS)

    def _receive(self) -> bytes:
        """Wait for data, then read it; after leaving, only until the deadline.

        Waiting in poll() rather than in recv() holds no receive buffer
        while the client is idle: recv() allocates its whole buffer first,
        which would cost every idle connection RECEIVE_BYTES of memory.

        The same wait ends the session when its token expires. Here rather
        than in the heartbeat: the reader wakes on the millisecond, at no
        cost until then, where the heartbeat would have to go through every
        member at each expiry, or only every --ping-interval; and the reader
        owns its client's faults, so the close goes the way of any other
        (:meth:`_fail`: after the events due, with the leave logged). Checked
        after every wait, not only after an idle one: a client that keeps
        sending would never let the wait time out.

        Raises:
            TimeoutError: if the close deadline passes.
        """
        while True:
            readable = self._poller.poll(self._wait_ms())
            if not self._left and time.monotonic() >= self._expires:
                self._fail(Disconnect.AUTH, frames.POLICY_VIOLATION, "token expired")
            elif self._left and not readable:
                raise TimeoutError
            if readable:
                return self.sock.recv(RECEIVE_BYTES)
            # Else the token expired just now, or poll() woke a little early.

    def _wait_ms(self) -> float | None:
        """How long :meth:`_receive` may wait, in milliseconds (None: for
        ever): until the close deadline once left, else until expiry."""
        deadline = self._close_deadline if self._left else self._expires
        if deadline == float("inf"):
            return None
        return max(deadline - time.monotonic(), 0) * 1000

    def _handle(self, event: ProtocolEvent) -> bool:
        """Act on one event; False when the connection is done."""
        if isinstance(event, (TextMessage, BytesMessage)):
            self._on_data(event)
        elif isinstance(event, (Ping, Pong)) and not self._within_control_rate():
            limit = self._control_limiter.limit
            window = self._control_limiter.window
            reason = f"too many pings: at most {limit} every {window:g} s"
            self._fail(Disconnect.RATE, frames.POLICY_VIOLATION, reason)
        elif isinstance(event, Ping):
            self.send(frames.encode_pong(event.payload))
        elif isinstance(event, CloseConnection):
            return self._on_close(event)
        return True

    def _on_close(self, event: CloseConnection) -> bool:
        if self._connection.state is ConnectionState.OPEN:
            # wsproto found a protocol error and reports it as a close.
            self._fail(
                Disconnect.PROTOCOL, event.code, event.reason or "protocol error"
            )
            return True
        with self._lock:
            closing_handshake_done = self._closed
        if closing_handshake_done:
            self._record_end(
                Disconnect.CLIENT_CLOSE,
                f"closed by the server, client replied ({event.code})",
            )
            return False
        reason = event.reason or ""
        shown = f"{event.code}: {escape_controls(reason)}" if reason else event.code
        self._record_end(
            Disconnect.CLIENT_CLOSE, f"closed by the client ({shown})", event.code
        )
        self._leave(frames.encode_close(event.code, reason))
        return True

    def _on_data(self, event: TextMessage | BytesMessage) -> None:
        if isinstance(event, BytesMessage) and not self._relay:
            self._fail(
                Disconnect.PROTOCOL,
                frames.UNSUPPORTED_DATA,
                "binary messages are not accepted",
            )
            return
        try:
            message = self._assembler.add(event.data, event.message_finished)
        except MessageTooBig as exc:
            self._fail(Disconnect.TOO_BIG, frames.MESSAGE_TOO_BIG, str(exc))
            return
        if message is None:
            return
        self._batch_received += 1
        if not self._within_rate():
            return
        if self._relay:
            self._relay_data(message)
        else:
            assert isinstance(message, str)  # binary was refused above
            self._on_chat(message)

    def _within_control_rate(self) -> bool:
        """Count a ping or pong; False once the client sent too many."""
        verdict = self._control_limiter.check(time.monotonic())
        return verdict is Verdict.ALLOW

    def _within_rate(self) -> bool:
        """Count a message against the rate limit; False to drop it."""
        verdict = self._limiter.check(time.monotonic())
        if verdict is Verdict.ALLOW:
            return True
        self._batch_limited += 1
        logger.debug("%s (%s): rate limited, dropped", self.name, self.address)
        if verdict is Verdict.DROP_AND_NOTIFY:
            logger.info(
                "%s (%s): over the rate limit, dropping messages",
                self.name,
                self.address,
                extra=self._log_fields("rate limit"),
            )
            if not self._relay:  # relayed data gets no text mixed in
                self._notify(
                    f"rate limit: at most {self._limiter.limit} messages every "
                    f"{self._limiter.window:g} s; messages dropped"
                )
        return False

    def _on_chat(self, message: str) -> None:
        if is_blank(message):
            return
        try:
            check_message(message, self._config.max_message_chars)
        except InvalidMessage as exc:
            logger.info(
                "%s (%s): %s",
                self.name,
                self.address,
                exc,
                extra=self._log_fields(str(exc)),
            )
            self._notify(str(exc))
            return
        if self._room.busy():
            self._refuse_busy()
            return
        self._told_busy = False
        logger.debug("%s: %s", self.name, message)
        try:
            self._append(Event(EventKind.MESSAGE, self.name, time.time(), message))
        except LogUnavailable as exc:
            logger.info(
                "%s (%s): message not logged: %s",
                self.name,
                self.address,
                exc,
                extra=self._log_fields(str(exc)),
            )
            self._notify(f"message not sent: {exc}")

    def _refuse_busy(self) -> None:
        """Refuse a message while the fan-out is over a second behind: the
        sender hears of it once, until a message of its passes again."""
        self._metrics.refused_busy()
        self._batch_refused_busy = True
        if not self._told_busy:
            self._told_busy = True
            logger.info(
                "%s (%s): server busy, refusing messages",
                self.name,
                self.address,
                extra=self._log_fields("server busy"),
            )
            self._notify(BUSY_NOTICE)

    def _relay_data(self, message: str | bytes) -> None:
        try:
            self._append(Event(EventKind.DATA, self.name, time.time(), message))
        except LogUnavailable as exc:
            # Relayed data gets no text mixed in: the sender sees no echo.
            logger.info(
                "%s (%s): data not logged: %s",
                self.name,
                self.address,
                exc,
                extra=self._log_fields(str(exc)),
            )

    def _log_fields(self, reason: str) -> dict[str, object]:
        """The fields of a JSON log line about this client."""
        return {"client": self.address, "user": self.name, "reason": reason}

    def _notify(self, text: str) -> None:
        """Send a notice to this client alone."""
        notice = frames.encode_message(messages.notice(text, self.format))
        self._room.send_to(self, notice)

    def _fail(self, why: Disconnect, code: int, reason: str) -> None:
        """Close the connection for a fault of the client's."""
        self._record_end(why, f"{reason} ({code})", code)
        self._leave(frames.encode_close(code, reason))

    def _leave(self, close_frame: bytes | None = None) -> None:
        """Leave the room once, handing the close frame to the dispatcher.

        Going through the dispatcher sends the close frame after every event
        up to the client's own last message. Then the leave is logged, which
        frees the name. The reader reads on only until the client closes its
        side, or the close timeout.
        """
        if self._left:
            return
        self._left = True
        close_timeout = self._config.close_timeout
        self._close_deadline = time.monotonic() + close_timeout
        self._room.remove(self, close_frame, after=self._last_id, wait=close_timeout)
        leave = None
        if self._join_logged:
            leave = Event(EventKind.LEAVE, self.name, time.time())
        self._log.leave(self.name, leave)
