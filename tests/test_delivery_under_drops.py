"""No delivery is lost while slow readers are dropped around well-behaved ones.

An issue reported one delivery of 673,300 missing, once, in a run in which
300 slow readers were dropped in one flush while 50 senders chatted. Here
senders chat with jittered pauses while waves of clients that never read
join, fill their outboxes and are dropped with 1008 in the middle of the
chat, and some of them reset their connections while the server writes to
them, so that drops land in the same flushes as chat messages. The
heartbeat pings everyone meanwhile. Every well-behaved client must get every
chat message exactly once, each sender's in its sending order, and all in
the same order; a failure says which message went wrong for whom.

Two of the well-behaved clients read in bursts on a slow link: the server's
socket buffer for them fills, so that their deliveries go through partial
sends, the outbox and the writer thread, the paths where a race would lose
or reorder bytes. The first slow readers sit between well-behaved clients
in the room's order, so that a fan-out drops them right before healthy
members.
"""

from __future__ import annotations

import contextlib
import logging
import random
import re
import select
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence

import pytest
from simple_websocket import ConnectionClosed
from wsproto.events import CloseConnection, Event, TextMessage

from broadcast_sync.server import BroadcastServer
from tests.conftest import (
    UNIT,
    connect,
    receive_text,
    run_concurrently,
    run_server,
    wait_until,
)
from tests.rawclient import SLOW_LINK, RawClient
from tests.wsclient import ChatClient

#: Clients that send and read everything; their streams are checked too.
SENDERS = [f"sender{number}" for number in range(8)]
#: Clients that only read: two at once, two in bursts on a slow link.
LISTENERS = ["fast0", "fast1"]
TRICKLES = ["trickle0", "trickle1"]
#: Characters in each chat message: a few hundred messages fill the server's
#: socket buffer for a client on the slow link.
MESSAGE_CHARS = 1000
#: Mean pause of a sender between two messages: together some 600 KB a
#: second, which fills a slow reader's buffers in well under a second
#: without making the server so late that it refuses messages as busy.
MEAN_PAUSE = 0.0125
#: Messages sent before the first drops: the chat is under way by then.
WARM_UP = 100
#: Slow readers of the first wave, which join before the chat among the
#: well-behaved clients, one before each; then the sizes of later waves.
FIRST_WAVE = len(SENDERS) + len(LISTENERS) + len(TRICKLES)
LATER_WAVES = 3
WAVE_SIZES = (40, 60)
#: The share of slow readers that reset their connection while the server
#: fills it, and the most a reset waits after the one before.
RESET_SHARE = 3
RESET_JITTER = 0.01
#: Messages a bursting reader lets go by between bursts: often more than
#: the server's socket buffer holds for it (some 100), never near the
#: outbox's limit (SERVER_OPTIONS).
BURST_LAG = (50, 220)
#: How long the last messages may take to reach everyone, and a wave to be
#: dropped: generous, as the machine may be busy; a pass takes a fraction.
DELIVERY_TIMEOUT = 10 * UNIT
WAVE_TIMEOUT = 5 * UNIT
#: Messages listed in a failure, per kind and client.
SHOWN = 8

SERVER_OPTIONS = {
    "rate_limit": 0,  # senders are not limited
    "max_message_bytes": MESSAGE_CHARS,
    "max_message_chars": MESSAGE_CHARS,
    "max_clients_per_ip": 0,  # everyone comes from 127.0.0.1
    "handshake_rate": 0,
    # A slow reader is dropped once 256 KB wait for it beyond the ~100 KB
    # of its socket: half a second of chat. A bursting reader lags 200 KB
    # at most; the number of writes never decides.
    "max_queue_bytes": 256 * 1024,
    "queue_size": 10_000,
    # A backstop: the outbox fills long before.
    "write_timeout": 5 * UNIT,
    # Dropped slow readers never read their close frame: give up soon.
    "close_timeout": 0.5 * UNIT,
    # Pings from the heartbeat thread join the stream of every client.
    "ping_interval": 0.1 * UNIT,
}

#: A chat message as broadcast: the sender's name, then the message, which
#: repeats the name.
CHAT = re.compile(r"(sender\d): \1 (\d{5}) \.+")
NOTICE = re.compile(r"Server: \w+ has (joined|left) the chat")

#: A chat message: its sender and its number.
ChatId = tuple[str, int]


def message(sender: str, index: int) -> str:
    """Message ``index`` of ``sender``, as sent."""
    return f"{sender} {index:05d} ".ljust(MESSAGE_CHARS, ".")


def broadcast(sender: str, index: int) -> str:
    """Message ``index`` of ``sender``, as everyone receives it."""
    return f"{sender}: {message(sender, index)}"


def shown(ids: Iterable[ChatId]) -> str:
    """``ids`` for a failure message, the first few of them."""
    listed = list(ids)
    head = ", ".join(f"{sender}#{index}" for sender, index in listed[:SHOWN])
    return head + (f" and {len(listed) - SHOWN} more" if len(listed) > SHOWN else "")


class Chat:
    """How far the senders got: readers pace themselves on it, and the
    check knows what everyone must have received."""

    def __init__(self, senders: Sequence[str]) -> None:
        #: Guards ``_sent`` and ``_finished``; notified at each change.
        self._changed = threading.Condition()
        self._sent = dict.fromkeys(senders, 0)
        self._finished = 0
        #: Set once the senders are to stop; each pauses on it.
        self.stopping = threading.Event()

    def stop(self) -> None:
        """Ask the senders to stop."""
        self.stopping.set()

    def sent_one(self, sender: str) -> None:
        """Count a message sent by ``sender``."""
        with self._changed:
            self._sent[sender] += 1
            self._changed.notify_all()

    def finish(self) -> None:
        """Note that a sender stopped for good."""
        with self._changed:
            self._finished += 1
            self._changed.notify_all()

    def total(self) -> int:
        """Messages sent so far."""
        with self._changed:
            return sum(self._sent.values())

    def wait_for_more(self, messages: int) -> bool:
        """Wait until ``messages`` more are sent: True, or the chat ended:
        False."""
        with self._changed:
            target = sum(self._sent.values()) + messages
            self._changed.wait_for(
                lambda: self._over() or sum(self._sent.values()) >= target,
                timeout=DELIVERY_TIMEOUT,
            )
            return not self._over()

    def sent(self) -> dict[str, int]:
        """How many messages each sender sent; final once the chat is over."""
        with self._changed:
            return dict(self._sent)

    def last_messages(self) -> set[str]:
        """Each sender's last message, as received: it comes after the rest."""
        return {
            broadcast(sender, count - 1)
            for sender, count in self.sent().items()
            if count
        }

    def _over(self) -> bool:
        return self._finished == len(self._sent)


class Received:
    """What one well-behaved client received, in order."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.texts: list[str] = []
        #: The same, for quick lookups.
        self.seen: set[str] = set()
        #: What went wrong with the connection, if anything did.
        self.error = ""

    def add(self, text: str) -> None:
        """Note one text message received."""
        self.texts.append(text)
        self.seen.add(text)


class Listener:
    """A well-behaved client that reads at once (simple-websocket's thread).

    Only one thread at a time collects: the wave task during the chat, the
    test's thread after it.
    """

    def __init__(self, ws: ChatClient, name: str) -> None:
        self.ws = ws
        self.received = Received(name)

    def collect(self) -> None:
        """Take what arrived since the last call."""
        try:
            while (text := self.ws.receive(timeout=0)) is not None:
                assert isinstance(text, str), text
                self.received.add(text)
        except ConnectionClosed:
            self.received.error = (
                f"closed by the server: {self.ws.close_reason} {self.ws.close_message}"
            )

    def done(self, last: set[str]) -> bool:
        """Whether every last message arrived, or nothing more will."""
        self.collect()
        return last <= self.received.seen or bool(self.received.error)


class StreamEnded(Exception):
    """A well-behaved client's stream ended: dropped, or found broken by
    wsproto, which reports a broken stream as a close."""


class Trickle:
    """A well-behaved client on a slow link that reads in bursts.

    Between bursts it lets :data:`BURST_LAG` messages go by: the server's
    socket buffer for it fills, the rest of a write goes to its outbox, and
    the writer thread sends it, while the dispatcher and the heartbeat send
    more. Once the chat is over it reads until every sender's last message.
    """

    def __init__(self, port: int, name: str, chat: Chat) -> None:
        self.received = Received(name)
        self._raw = RawClient(port, name, socket_options=SLOW_LINK)
        self._chat = chat
        self._rng = random.Random(name)
        self._thread = threading.Thread(target=self._run, name=f"reading {name}")

    def start(self) -> None:
        """Wait until the client is in the room, then start reading."""
        while join_notice(self.received.name) not in self.received.seen:
            self._take(self._raw.next_event())
        self._thread.start()

    def close(self) -> None:
        """Wait for the reading to end, if it started, then close the socket."""
        if self._thread.ident is not None:
            self._thread.join(2 * DELIVERY_TIMEOUT)
        self._raw.sock.close()

    def done(self, last: set[str]) -> bool:
        """Whether the reading is over (it ends by itself)."""
        return not self._thread.is_alive()

    def _run(self) -> None:
        try:
            while self._chat.wait_for_more(self._rng.randint(*BURST_LAG)):
                self._read_burst()
            self._read_until(self._chat.last_messages())
        except StreamEnded as exc:
            self.received.error = str(exc)
        except BaseException as exc:  # pytest.fail() raises BaseException too
            self.received.error = f"{type(exc).__name__}: {exc}"

    def _read_burst(self) -> None:
        """Read what is there; the events of the last read may wait."""
        while select.select([self._raw.sock], [], [], 0)[0]:
            self._take(self._raw.next_event())

    def _read_until(self, last: set[str]) -> None:
        deadline = time.monotonic() + DELIVERY_TIMEOUT
        while not last <= self.received.seen:
            self._take(self._raw.next_event(deadline))

    def _take(self, event: Event) -> None:
        if isinstance(event, CloseConnection):
            raise StreamEnded(f"stream ended: close {event.code} {event.reason}")
        if isinstance(event, TextMessage):
            self.received.add(event.data)


Reader = Listener | Trickle


def join_listener(server: BroadcastServer, name: str) -> ChatClient:
    """Connect ``name`` and wait until it is in the room: until its own join
    notice, which may follow those of slow readers that joined just before.
    It must keep its name, which the check parses."""
    ws = connect(server, name)
    while receive_text(ws) != join_notice(name):
        pass
    return ws


def join_notice(name: str) -> str:
    """What everyone receives when ``name`` joins."""
    return f"Server: {name} has joined the chat"


def chatter(ws: ChatClient, name: str, chat: Chat) -> Callable[[], None]:
    """A task that sends numbered messages with jittered pauses until the
    chat stops."""
    rng = random.Random(name)

    def send_all() -> None:
        try:
            index = 0
            while not chat.stopping.is_set():
                ws.send(message(name, index))
                chat.sent_one(name)
                index += 1
                chat.stopping.wait(rng.uniform(0, 2 * MEAN_PAUSE))
        finally:
            chat.finish()

    return send_all


def reset(client: RawClient) -> None:
    """Close with SO_LINGER 0: the server's next send fails, mid-flush."""
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.sock.close()


def wait_for(condition: Callable[[], bool], what: str, timeout: float) -> bool:
    """Wait until ``condition`` holds, or ``timeout``; say which.

    For waits whose failure the caller describes better than a timeout:
    which messages are missing, for whom.
    """
    with contextlib.suppress(AssertionError):
        wait_until(condition, what, timeout)
    return condition()


def drop_wave(
    slow: Sequence[RawClient], names: Sequence[str], witness: Listener, wave: str
) -> list[str]:
    """Reset some of ``slow`` while the server fills them, and wait until
    every one of them has left: the server drops the others. Return those
    still in the room after the wave timeout."""
    rng = random.Random(wave)
    for client in rng.sample(list(slow), len(slow) // RESET_SHARE):
        time.sleep(rng.uniform(0, RESET_JITTER))  # over several flushes
        reset(client)

    def staying() -> list[str]:
        witness.collect()
        seen = witness.received.seen
        return [name for name in names if leave_notice(name) not in seen]

    wait_for(lambda: not staying(), f"{wave} dropped", WAVE_TIMEOUT)
    return staying()


def leave_notice(name: str) -> str:
    """What everyone receives when ``name`` leaves."""
    return f"Server: {name} has left the chat"


def wave_names(wave: int, size: int) -> list[str]:
    """The names of the slow readers of ``wave``."""
    return [f"slow{wave}x{number:02d}" for number in range(size)]


def waves(
    port: int,
    first: Sequence[RawClient],
    witness: Listener,
    chat: Chat,
    faults: list[str],
) -> Callable[[], None]:
    """A task that drops the first wave of slow readers once the chat is
    under way, then later waves, one at a time, then ends the chat.

    A wave not dropped in time ends it early, noted in ``faults``: what
    the well-behaved clients missed says more.
    """
    rng = random.Random("waves")

    def drop_all() -> None:
        wait_until(lambda: chat.total() >= WARM_UP, "the chat under way")
        staying = drop_wave(first, wave_names(0, len(first)), witness, "wave 0")
        for wave in range(1, LATER_WAVES + 1):
            if staying:
                break
            names = wave_names(wave, rng.randint(*WAVE_SIZES))
            with contextlib.ExitStack() as stack:
                slow = [
                    stack.enter_context(RawClient(port, name, socket_options=SLOW_LINK))
                    for name in names
                ]
                staying = drop_wave(slow, names, witness, f"wave {wave}")
        if staying:
            faults.append(
                f"{witness.received.name}: no leave notice, after "
                f"{WAVE_TIMEOUT:g} s, of {', '.join(staying)}"
            )

    def drop_all_then_stop() -> None:
        try:
            drop_all()
        finally:
            chat.stop()

    return drop_all_then_stop


def chat_ids(received: Received) -> tuple[list[ChatId], list[str]]:
    """The chat messages received, in order, and the texts that are
    neither a chat message whole nor a join or leave notice."""
    ids: list[ChatId] = []
    unexpected: list[str] = []
    for text in received.texts:
        match = CHAT.fullmatch(text)
        if match and text == broadcast(match[1], int(match[2])):
            ids.append((match[1], int(match[2])))
        elif not NOTICE.fullmatch(text):
            unexpected.append(text)
    return ids, unexpected


def sender_order(ids: Sequence[ChatId]) -> list[str]:
    """Where a sender's messages came out of its sending order."""
    latest: dict[str, int] = {}
    found = []
    for sender, index in ids:
        if index < latest.get(sender, -1):
            found.append(f"{sender}#{index} came after {sender}#{latest[sender]}")
        latest[sender] = max(index, latest.get(sender, -1))
    return found[:SHOWN]


def order_against(ids: Sequence[ChatId], reference: Received) -> str:
    """Where ``ids`` and what ``reference`` got first differ in the order
    of the messages both got; empty if nowhere."""
    theirs_all = chat_ids(reference)[0]
    common = set(ids) & set(theirs_all)
    mine = [each for each in dict.fromkeys(ids) if each in common]
    theirs = [each for each in dict.fromkeys(theirs_all) if each in common]
    for position, (got, wanted) in enumerate(zip(mine, theirs, strict=True)):
        if got != wanted:
            return (
                f"order differs from {reference.name}'s at message {position}: "
                f"{shown([got])} where {reference.name} got {shown([wanted])}"
            )
    return ""


def check(received: Received, sent: dict[str, int], reference: Received) -> list[str]:
    """What is wrong with what ``received`` got, given what was ``sent``
    and the order in which ``reference`` got it."""
    ids, unexpected = chat_ids(received)
    counts = Counter(ids)
    expected = {
        (sender, index) for sender, count in sent.items() for index in range(count)
    }
    found = []
    if missing := sorted(expected - counts.keys()):
        found.append(f"missing {len(missing)} of {len(expected)}: {shown(missing)}")
    if duplicated := sorted(each for each, count in counts.items() if count > 1):
        found.append(f"got twice or more: {shown(duplicated)}")
    if never_sent := sorted(counts.keys() - expected):
        found.append(f"never sent: {shown(never_sent)}")
    found += sender_order(ids)
    if received is not reference and (differs := order_against(ids, reference)):
        found.append(differs)
    if unexpected:
        found.append(f"unexpected texts: {[text[:40] for text in unexpected[:SHOWN]]}")
    if received.error:
        found.append(received.error)
    return [f"{received.name}: {fault}" for fault in found]


def join_well_behaved(
    server: BroadcastServer, chat: Chat, stack: contextlib.ExitStack
) -> tuple[list[Reader], list[RawClient]]:
    """Join the well-behaved clients, each after a slow reader of the first
    wave: a fan-out that drops one reaches a healthy member next."""
    first = iter(wave_names(0, FIRST_WAVE))
    first_wave: list[RawClient] = []
    readers: list[Reader] = []
    for name in [*SENDERS, *LISTENERS, *TRICKLES]:
        slow = RawClient(server.port, next(first), socket_options=SLOW_LINK)
        first_wave.append(stack.enter_context(slow))
        if name in TRICKLES:
            trickle = Trickle(server.port, name, chat)
            stack.callback(trickle.close)
            trickle.start()
            readers.append(trickle)
        else:
            ws = join_listener(server, name)
            stack.callback(ws.close)
            readers.append(Listener(ws, name))
    return readers, first_wave


def test_no_delivery_lost_while_slow_readers_are_dropped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Every well-behaved client gets every chat message once, in one order
    for all, while waves of slow readers around it are dropped or reset."""
    caplog.set_level(logging.INFO, logger="broadcast_sync")
    chat = Chat(SENDERS)
    faults: list[str] = []
    with run_server(**SERVER_OPTIONS) as server, contextlib.ExitStack() as stack:
        readers, first_wave = join_well_behaved(server, chat, stack)
        listeners = [reader for reader in readers if isinstance(reader, Listener)]
        senders = listeners[: len(SENDERS)]
        witness = listeners[len(SENDERS)]  # fast0
        run_concurrently(
            [
                *(chatter(each.ws, each.received.name, chat) for each in senders),
                waves(server.port, first_wave, witness, chat, faults),
            ]
        )
        last = chat.last_messages()

        def everyone_done() -> bool:
            # Not all() over a generator: every listener collects each time.
            done = [reader.done(last) for reader in readers]
            return all(done)

        wait_for(everyone_done, "every message delivered", DELIVERY_TIMEOUT)
        for reader in readers:
            if isinstance(reader, Trickle):
                reader.close()
        reference = readers[0].received
        for reader in readers:
            faults += check(reader.received, chat.sent(), reference)
    assert not faults, "\n".join(faults)
    assert "left: too slow: " in caplog.text, "no slow reader was dropped"
