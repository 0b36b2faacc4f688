"""Pacers: what the clients send, and when.

A pacer is called by the event loop before each wait with the current
time; it sends whatever is due and returns when it next needs to run. Each
message is built when it is sent, so its timestamp is its real send time.
"""

from __future__ import annotations

import dataclasses
import heapq
import random
import time

from tests.bench import wire
from tests.bench.loadgen import Client, LoadGenerator

#: Returned by a pacer with nothing more to send: "wake me for events only".
IDLE = 2**63


@dataclasses.dataclass(frozen=True)
class Spike:
    """From ``start_ns`` to ``end_ns``, every sender sends ``factor`` times
    as often."""

    start_ns: int
    end_ns: int
    factor: float

    def factor_at(self, now_ns: int) -> float:
        """The rate's multiplier at ``now_ns``."""
        return self.factor if self.start_ns <= now_ns < self.end_ns else 1.0


class RoomPacer:
    """Every sender sends one message per ``period_ns``, on its own clock,
    each message up to ``jitter`` of a period early or late.

    Senders' phases are spread evenly over the first period, so the room's
    load is not a burst every second; the jitter makes it as uneven as real
    clients on real networks. A :class:`Spike` multiplies the rate for a
    while. A sender's messages never swap places: the jitter is under half
    a period.
    """

    def __init__(
        self,
        generator: LoadGenerator,
        senders: list[Client],
        start_ns: int,
        period_ns: int = 1_000_000_000,
        *,
        jitter: float = 0.2,
        spike: Spike | None = None,
        seed: int = 0,
    ) -> None:
        self._generator = generator
        self._senders = senders
        self._period_ns = period_ns
        self._jitter = jitter
        self._spike = spike
        #: Multiplies the rate, spike or not: see :meth:`restart`.
        self._factor = 1.0
        self._random = random.Random(seed)
        #: (when due, sender's position, its nominal time, its sequence number)
        self._due: list[tuple[int, int, int, int]] = []
        for position in range(len(senders)):
            nominal = start_ns + position * period_ns // len(senders)
            heapq.heappush(self._due, (self._jittered(nominal), position, nominal, 0))
        #: No message due at or after this time is sent.
        self.stop_ns = IDLE
        #: Messages sent so far.
        self.sent = 0
        #: How late each message was sent: the generator's lag.
        self.lags_ns: list[int] = []

    def restart(self, start_ns: int, factor: float) -> None:
        """Send ``factor`` times as often from ``start_ns`` on, phases spread
        again; each sender goes on from its last sequence number."""
        self._factor = factor
        period_ns = self._period_at(start_ns)
        count = len(self._senders)
        due = []
        for _, position, _, seq in self._due:
            nominal = start_ns + position * period_ns // count
            due.append((self._jittered(nominal), position, nominal, seq))
        heapq.heapify(due)
        self._due = due
        self.stop_ns = IDLE

    def _period_at(self, nominal_ns: int) -> int:
        factor = self._factor
        if self._spike is not None:
            factor *= self._spike.factor_at(nominal_ns)
        return int(self._period_ns / factor)

    def _jittered(self, nominal_ns: int) -> int:
        spread = self._jitter * self._period_at(nominal_ns)
        return nominal_ns + int(self._random.uniform(-spread, spread))

    def __call__(self, now_ns: int) -> int:
        """Send every message due by ``now_ns``; return the next due time."""
        masker = self._generator.masker
        send = self._generator.send
        due_list = self._due
        while due_list:
            due, position, nominal, seq = due_list[0]
            if due >= self.stop_ns:
                return IDLE
            if due > now_ns:
                return due
            sender = self._senders[position]
            sent_ns = time.monotonic_ns()
            payload = wire.chat_payload(sender.index, seq, sent_ns)
            send(sender, masker.text_frame(payload))
            self.lags_ns.append(sent_ns - due)
            self.sent += 1
            following = nominal + self._period_at(nominal)
            heapq.heapreplace(
                due_list, (self._jittered(following), position, following, seq + 1)
            )
        return IDLE


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
