"""The chat link: keeps the terminal client in the chat.

One thread, "chat link", owns the connection and goes through these states
(each is one method below):

    connecting ─▶ chatting ─▶ leaving ─▶ done
        │            │  ▲
        │       lost │  │ reconnected
        │            ▼  │
        │          waiting (backoff) ⇄ connecting again ─▶ done (gave up,
        │                                                  or refused)
        └─▶ done: the first connection failed (never retried)

The main thread reads the user's lines and hands them over with
:meth:`ChatLink.send`; the end of input (:meth:`~ChatLink.finish`) and
Ctrl+C (:meth:`~ChatLink.interrupt`) are requests that the link acts on as
soon as its :class:`~broadcast_sync.clientconn.Waker` wakes it. Lines sent
while disconnected wait in the outbox and go out, in order, once the link
has reconnected.

Strategy: the link asks for the JSON protocol, whose events carry ids, and
prints each event as the text protocol's line. After losing the connection
it reconnects with ``since`` set to the id of the last event it printed, so
the server sends exactly the events it missed; if the server cannot (it
restarted, or the events are gone), the user is told that some may be
missing. A server that speaks only text is detected (a 400 to
``format=json``, or a first frame that is not a welcome) and then spoken to
in text, with no resume.

Over ``wss://`` all of this runs through TLS, which every connection does
again. A certificate that is not trusted ends the link, even while it
reconnects: like a refusal, it would not change by trying again, and the
server may not be the one the user trusted.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import math
import random
import ssl
import threading
import time
from collections.abc import Callable
from http import HTTPStatus

from wsproto.frame_protocol import CloseReason

from broadcast_sync.clientconn import (
    ClientConnection,
    Closed,
    Ending,
    HandshakeRejected,
    Interrupted,
    Waker,
    describe_error,
)
from broadcast_sync.clientproto import (
    Keepalive,
    ReconnectPolicy,
    Welcome,
    chat_target,
    is_client_fault,
    is_transient,
    parse_welcome,
    render,
    text_line,
)
from broadcast_sync.clienttls import untrusted_certificate
from broadcast_sync.endpoint import Endpoint
from broadcast_sync.terminal import Console

#: Connecting, TLS and the handshake, together, may take this long.
HANDSHAKE_TIMEOUT = 10.0
#: How long the server may take to answer our close frame and hang up.
CLOSE_TIMEOUT = 5.0
#: Seconds without a byte from the server before we ping it, so that a
#: connection that broke silently (a cut network, a frozen server) is found.
PING_AFTER = 20.0
#: Seconds the server then has to answer.
PONG_TIMEOUT = 10.0
#: Lines kept while disconnected before the input waits: piped input stops
#: being read rather than filling memory.
OUTBOX_LINES = 1000
#: When to reconnect and when to give up; a test can shorten it.
RECONNECT_POLICY = ReconnectPolicy()
#: The exit status after Ctrl+C while connecting the first time (128 +
#: SIGINT, as a shell reports it); once in the chat, Ctrl+C leaves with 0.
INTERRUPTED_STATUS = 130

#: Printed after reconnecting, when the missed events follow.
RESUMED = "reconnected"
#: Printed after reconnecting, when the server could not resume.
NOT_RESUMED = "reconnected; some messages may be missing"


class Phase(enum.Enum):
    """How far the link got, as the main thread needs to know it."""

    #: Connecting the first time: the user's input is not read yet.
    CONNECTING = "connecting"
    #: Connected once: lines are taken, through any reconnection.
    STARTED = "started"
    #: Finished: :attr:`ChatLink.outcome` says how.
    DONE = "done"


class Request(enum.IntEnum):
    """What the main thread asked for; a greater request wins."""

    #: Keep chatting.
    NONE = 0
    #: The input ended: leave once every line is sent.
    FINISH = 1
    #: Ctrl+C: leave now.
    INTERRUPT = 2


@dataclasses.dataclass(frozen=True)
class Outcome:
    """How the client ended: its exit status, and what to tell the user."""

    status: int
    #: Printed on stderr; None when the user left.
    error: str | None = None
    #: Lines the server never got.
    unsent: tuple[str, ...] = ()


class ChatLink:
    """Keeps the client connected; call :meth:`start`, then :meth:`join`.

    Args:
        tls: The TLS context of a ``wss://`` endpoint; None for ``ws://``.
        on_end: Called by the link's thread when it ends on its own (to wake
            the main thread from reading its input).
        policy: When to reconnect and give up (default: RECONNECT_POLICY).
    """

    def __init__(
        self,
        endpoint: Endpoint,
        username: str,
        console: Console,
        *,
        tls: ssl.SSLContext | None = None,
        on_end: Callable[[], None],
        policy: ReconnectPolicy | None = None,
    ) -> None:
        if endpoint.secure != (tls is not None):
            raise ValueError("a TLS context is for a wss:// endpoint, and only it")
        self._endpoint = endpoint
        self._tls = tls
        self._username = username
        self._console = console
        self._on_end = on_end
        self._policy = policy or RECONNECT_POLICY
        self._waker = Waker()
        self._thread = threading.Thread(target=self._run, name="chat link")

        # Shared by the main thread and the link; guarded by ``_changed``.
        self._changed = threading.Condition()
        #: Lines to send, oldest first: the main thread appends, the link takes.
        self._outbox: collections.deque[str] = collections.deque()
        #: Written by the main thread.
        self._request = Request.NONE
        #: Written by the link.
        self._phase = Phase.CONNECTING
        #: Written by the link, with the phase DONE.
        self._outcome: Outcome | None = None

        # Owned by the link's thread.
        #: Whether to ask for JSON: False once the server refused or ignored it.
        self._json = True
        #: The id of the last event printed, to resume after it.
        self._last_id: str | None = None
        #: True until the first frame of a JSON connection has come.
        self._awaiting_welcome = False
        #: True from a lost connection until the next one says "reconnected".
        self._reconnecting = False

    # Called by the main thread.

    def start(self) -> None:
        """Start connecting."""
        self._thread.start()

    def wait_started(self) -> bool:
        """Wait for the first connection; False if the link ended instead."""
        with self._changed:
            self._changed.wait_for(lambda: self._phase is not Phase.CONNECTING)
            return self._phase is Phase.STARTED

    def send(self, line: str) -> None:
        """Send ``line`` as soon as connected; wait while the outbox is full."""
        with self._changed:
            self._changed.wait_for(
                lambda: len(self._outbox) < OUTBOX_LINES or self._phase is Phase.DONE
            )
            self._outbox.append(line)
        self._waker.wake()

    def finish(self) -> None:
        """The input ended: leave once every line is sent."""
        self._ask(Request.FINISH)

    def interrupt(self) -> None:
        """Leave now (Ctrl+C), even while waiting to reconnect."""
        self._ask(Request.INTERRUPT)

    def join(self) -> Outcome:
        """Wait for the link to end; how it ended, and the lines not sent."""
        self._thread.join()
        self._waker.close()
        with self._changed:
            assert self._outcome is not None
            return dataclasses.replace(self._outcome, unsent=tuple(self._outbox))

    def _ask(self, request: Request) -> None:
        with self._changed:
            if self._phase is Phase.DONE:
                return  # its waker may be closed already
            self._request = max(self._request, request)
        self._waker.wake()

    # The link's thread.

    def _run(self) -> None:
        outcome = Outcome(1, "the client failed")  # replaced unless a bug raised
        try:
            outcome = self._converse()
        finally:
            with self._changed:
                self._phase = Phase.DONE
                self._outcome = outcome
                self._changed.notify_all()
            self._on_end()

    def _converse(self) -> Outcome:
        """Connect, chat, and reconnect each time the connection is lost."""
        try:
            connection = self._connect()
        except Interrupted:
            return Outcome(INTERRUPTED_STATUS)
        except HandshakeRejected as exc:
            return Outcome(1, f"the server refused the connection: {exc}")
        except ssl.SSLCertVerificationError as exc:
            return Outcome(1, untrusted_certificate(self._endpoint.address, exc))
        except OSError as exc:
            where = self._endpoint.address
            return Outcome(1, f"cannot connect to {where}: {describe_error(exc)}")
        with self._changed:
            self._phase = Phase.STARTED
            self._changed.notify_all()
        while True:
            closed = self._chat(connection)
            outcome = self._outcome_of(closed)
            if outcome is not None:
                return outcome
            self._console.show(f"connection lost ({_why(closed)}); reconnecting")
            reconnected = self._reconnect()
            if isinstance(reconnected, Outcome):
                return reconnected
            connection = reconnected

    def _outcome_of(self, closed: Closed) -> Outcome | None:
        """How the client ends after ``closed``; None: reconnect."""
        if closed.ending is Ending.PROTOCOL_ERROR:
            return Outcome(1, f"the server broke the protocol ({_why(closed)})")
        if closed.ending is not Ending.DROPPED and is_client_fault(closed.code):
            # Even as we were leaving: the server says it refused something.
            return Outcome(1, f"the server closed the connection ({_why(closed)})")
        if closed.ending is Ending.CLIENT_CLOSED or self._user_left():
            return Outcome(0)
        return None

    def _connect(self) -> ClientConnection:
        """Connect, in JSON if the server speaks it, resuming if we can.

        Raises:
            HandshakeRejected, Interrupted, ssl.SSLCertVerificationError,
            OSError: as ClientConnection.open.
        """
        try:
            connection = self._open()
        except HandshakeRejected as exc:
            if not (self._json and exc.status == HTTPStatus.BAD_REQUEST):
                raise
            # Relay mode, or a server that knows no format=json: speak text.
            self._json = False
            connection = self._open()
        self._awaiting_welcome = self._json
        if not self._json:
            self._announce(resumed=False)
        return connection

    def _open(self) -> ClientConnection:
        target = chat_target(
            self._username, json_format=self._json, since=self._last_id
        )
        return ClientConnection.open(
            self._endpoint.host,
            self._endpoint.port,
            self._endpoint.target(target),
            tls=self._tls,
            timeout=HANDSHAKE_TIMEOUT,
            waker=self._waker,
            should_stop=self._interrupted,
        )

    def _chat(self, connection: ClientConnection) -> Closed:
        """Send lines and show messages until the connection ends."""
        close_by = math.inf  # once closing: when to stop waiting for the server
        keepalive = Keepalive(PING_AFTER, PONG_TIMEOUT)
        while True:
            # First: frames may have come with the handshake's response.
            self._show(connection.take_messages())
            if connection.eof:
                break
            now = time.monotonic()
            if close_by == math.inf:
                if connection.closed is not None:  # the server closed first
                    close_by = now + CLOSE_TIMEOUT
                elif self._user_left():
                    connection.close()
                    close_by = now + CLOSE_TIMEOUT
                else:
                    self._hand_over(connection)
            connection.flush()
            if close_by != math.inf:
                if now >= close_by:
                    break
                due = close_by
            else:
                due = keepalive.due(connection.last_received)
                if now >= due:
                    if not keepalive.ping(now):
                        connection.abort(f"no answer within {PONG_TIMEOUT:g} s")
                        continue
                    connection.ping()
                    connection.flush()
                    due = keepalive.due(connection.last_received)
            self._wait(connection, due - now)
        connection.close_socket()
        self._requeue(connection.unsent_lines())
        if connection.closed is None:  # our close frame got no answer in time
            return Closed(Ending.CLIENT_CLOSED, CloseReason.ABNORMAL_CLOSURE)
        return connection.closed

    def _wait(self, connection: ClientConnection, timeout: float) -> None:
        """Wait for the socket, or a wake-up, for at most ``timeout``."""
        readable, _ = self._waker.wait(
            connection.sock, write=connection.wants_write, timeout=timeout
        )
        if readable:
            connection.read()

    def _hand_over(self, connection: ClientConnection) -> None:
        """Move lines from the outbox to the connection, as the socket takes
        them."""
        while not connection.wants_write:
            with self._changed:
                if not self._outbox:
                    return
                line = self._outbox.popleft()
                self._changed.notify_all()  # room for one more
            if not connection.send_text(line):
                self._requeue([line])
                return
            connection.flush()

    def _requeue(self, lines: list[str]) -> None:
        """Put ``lines``, which never reached the server, back in front."""
        with self._changed:
            self._outbox.extendleft(reversed(lines))

    def _show(self, messages: list[str | bytes]) -> None:
        for message in messages:
            if self._awaiting_welcome:
                self._awaiting_welcome = False
                welcome = parse_welcome(message)
                if welcome is not None:
                    self._welcome(welcome)
                    continue
                # The server ignores format=json: this and the rest are text.
                self._json = False
                self._announce(resumed=False)
            line = render(message) if self._json else text_line(message)
            if line.event_id is not None:
                self._last_id = line.event_id
            self._console.show(line.text)

    def _welcome(self, welcome: Welcome) -> None:
        self._announce(resumed=welcome.resumed is True)
        if not welcome.resumed:
            # The events from here on are the ones to resume after.
            self._last_id = welcome.last_id

    def _announce(self, *, resumed: bool) -> None:
        """Say that the link reconnected, if it did."""
        if self._reconnecting:
            self._reconnecting = False
            self._console.show(RESUMED if resumed else NOT_RESUMED)

    def _reconnect(self) -> ClientConnection | Outcome:
        """Wait, then try to connect, until it works or the policy gives up."""
        self._reconnecting = True
        failures = 0
        while True:
            if not self._pause(self._policy.delay(failures, random.random())):
                return Outcome(0)
            try:
                return self._connect()
            except Interrupted:
                return Outcome(0)
            except HandshakeRejected as exc:
                if not is_transient(exc.status):
                    return Outcome(1, f"the server refused the connection: {exc}")
                error = str(exc)
            except ssl.SSLCertVerificationError as exc:
                # Final, as a refusal: the server is not the one we trusted.
                return Outcome(1, untrusted_certificate(self._endpoint.address, exc))
            except OSError as exc:
                error = describe_error(exc)
            failures += 1
            if failures >= self._policy.attempts:
                where = self._endpoint.address
                return Outcome(
                    1,
                    f"cannot reconnect to {where}: {error} "
                    f"(gave up after {failures} attempts)",
                )

    def _pause(self, delay: float) -> bool:
        """Wait ``delay`` seconds; False if the user left meanwhile."""
        deadline = time.monotonic() + delay
        while not (self._interrupted() or self._user_left()):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return True
            self._waker.wait(None, timeout=remaining)
        return False

    def _interrupted(self) -> bool:
        with self._changed:
            return self._request is Request.INTERRUPT

    def _user_left(self) -> bool:
        """Whether the user left: Ctrl+C, or the input ended and the link
        has taken every line."""
        with self._changed:
            return self._request is Request.INTERRUPT or (
                self._request is Request.FINISH and not self._outbox
            )


def _why(closed: Closed) -> str:
    """What a lost connection's close code, or the failure, says."""
    if closed.ending is Ending.DROPPED:
        return closed.reason
    if closed.reason:
        return f"{closed.code}: {closed.reason}"
    return str(closed.code)
