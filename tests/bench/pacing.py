"""Pacers: what the clients send, and when.

A pacer is called by the event loop before each wait with the current
time; it sends whatever is due and returns when it next needs to run. Each
message is built when it is sent, so its timestamp is its real send time.
"""

from __future__ import annotations

import random
import time

from tests.bench import wire
from tests.bench.loadgen import Client, LoadGenerator

#: Returned by a pacer with nothing more to send: "wake me for events only".
IDLE = 2**63


class RoomPacer:
    """Every sender sends one message per ``period_ns``, phases evenly spread.

    Message ``m`` is due at ``start + m * period / senders``, from sender
    ``m % senders``, with sequence number ``m // senders``: the room's
    offered load is smooth, not a burst every second.
    """

    def __init__(
        self,
        generator: LoadGenerator,
        senders: list[Client],
        start_ns: int,
        period_ns: int = 1_000_000_000,
    ) -> None:
        self._generator = generator
        self._senders = senders
        self._start_ns = start_ns
        self._period_ns = period_ns
        #: No message due at or after this time is sent.
        self.stop_ns = IDLE
        #: Messages sent so far; also the number of the next one.
        self.sent = 0
        #: How late each message was sent: the generator's lag.
        self.lags_ns: list[int] = []

    def due_ns(self, number: int) -> int:
        """When message ``number`` is due."""
        return self._start_ns + number * self._period_ns // len(self._senders)

    def __call__(self, now_ns: int) -> int:
        """Send every message due by ``now_ns``; return the next due time."""
        count = len(self._senders)
        masker = self._generator.masker
        send = self._generator.send
        lags = self.lags_ns
        while True:
            due = self.due_ns(self.sent)
            if due >= self.stop_ns:
                return IDLE
            if due > now_ns:
                return due
            sender = self._senders[self.sent % count]
            sent_ns = time.monotonic_ns()
            payload = wire.chat_payload(sender.index, self.sent // count, sent_ns)
            send(sender, masker.text_frame(payload))
            lags.append(sent_ns - due)
            self.sent += 1


class FloodPacer:
    """One sender keeps ``window`` messages sent but not yet echoed back to it.

    The sender receives only its own messages (nobody else speaks), so its
    byte count since the mark tells how many have come back.
    """

    def __init__(self, generator: LoadGenerator, sender: Client, window: int) -> None:
        self._generator = generator
        self._sender = sender
        self._window = window
        self.stop_ns = IDLE
        self.sent = 0

    def __call__(self, now_ns: int) -> int:
        """Top the window up; the next echo (an event) is the next occasion."""
        if now_ns >= self.stop_ns:
            return IDLE
        echoed = self._sender.messages_since_mark()
        masker = self._generator.masker
        while self.sent - echoed < self._window:
            payload = wire.chat_payload(
                self._sender.index, self.sent, time.monotonic_ns()
            )
            self._generator.send(self._sender, masker.text_frame(payload))
            self.sent += 1
        return IDLE


class LonePacer:
    """One message at a time, a random gap after the previous one arrived.

    Clients take turns to send; the next message waits until every client
    has received the previous one and the gap has passed.
    """

    def __init__(
        self,
        generator: LoadGenerator,
        clients: list[Client],
        messages: int,
        gap_ns: tuple[int, int],
        seed: int = 0,
    ) -> None:
        self._generator = generator
        self._clients = clients
        self._messages = messages
        self._gap_ns = gap_ns
        self._random = random.Random(seed)
        self._next_ns = 0
        self.sent = 0

    def delivered(self) -> bool:
        """Whether every client has received every message sent so far."""
        return all(
            client.messages_since_mark() >= self.sent for client in self._clients
        )

    def finished(self) -> bool:
        """Whether every message was sent and received."""
        return self.sent == self._messages and self.delivered()

    def __call__(self, now_ns: int) -> int:
        """Send the next message once the previous one is in and the gap passed."""
        if self.sent == self._messages or not self.delivered():
            return IDLE
        if self._next_ns == 0:
            self._next_ns = now_ns + self._random.randint(*self._gap_ns)
        if now_ns < self._next_ns:
            return self._next_ns
        sender = self._clients[self.sent % len(self._clients)]
        payload = wire.chat_payload(sender.index, self.sent, time.monotonic_ns())
        self._generator.send(sender, self._generator.masker.text_frame(payload))
        self.sent += 1
        self._next_ns = 0
        return IDLE
