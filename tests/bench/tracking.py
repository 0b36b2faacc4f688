"""What the sampled receivers check: latency, order and what they received.

Pure bookkeeping, no sockets: the load generator feeds it the frames that
its sampled receivers decode, with the time each read returned.
"""

from __future__ import annotations

import math

from tests.bench import wire

#: Before any measurement window is opened, no latency is recorded.
NEVER = 2**63


class ReceiverLog:
    """One sampled receiver's view: the last sequence number seen per sender."""

    __slots__ = ("chats", "close_code", "last_seq", "notices")

    def __init__(self) -> None:
        self.last_seq: dict[int, int] = {}
        self.chats = 0
        self.notices = 0
        #: The close code the server sent, if it sent one.
        self.close_code: int | None = None


class Tracker:
    """Latency, order and counts over all sampled receivers.

    Latency is recorded for messages sent inside the measurement window
    (from :attr:`window_start_ns` on); order and counts for all of them.
    """

    def __init__(self) -> None:
        self.window_start_ns = NEVER
        self.window_end_ns = NEVER
        self.latencies_ns: list[int] = []
        #: With latencies, when each message was sent: set to a list to keep.
        self.send_times_ns: list[int] | None = None
        #: Messages that arrived after a later message of the same sender.
        self.out_of_order = 0
        #: Frames that are neither chat, server notice nor close.
        self.unexpected = 0

    def open_window(self, start_ns: int, end_ns: int = NEVER) -> None:
        """Record the latency of messages sent from ``start_ns`` until ``end_ns``."""
        self.window_start_ns = start_ns
        self.window_end_ns = end_ns

    def on_frames(
        self, log: ReceiverLog, frames: list[tuple[int, bytes]], now_ns: int
    ) -> None:
        """Account for ``frames`` received by ``log``'s receiver at ``now_ns``."""
        for opcode, payload in frames:
            if opcode != wire.TEXT:
                if opcode == wire.CLOSE and len(payload) >= 2:
                    log.close_code = int.from_bytes(payload[:2], "big")
                elif opcode != wire.CLOSE:
                    self.unexpected += 1
                continue
            chat = wire.parse_chat(payload)
            if chat is None:
                log.notices += 1
                continue
            sender, seq, sent_ns = chat
            log.chats += 1
            if seq <= log.last_seq.get(sender, -1):
                self.out_of_order += 1
            else:
                log.last_seq[sender] = seq
            if self.window_start_ns <= sent_ns < self.window_end_ns:
                self.latencies_ns.append(now_ns - sent_ns)
                if self.send_times_ns is not None:
                    self.send_times_ns.append(sent_ns)


def percentile(ordered: list[int], fraction: float) -> int:
    """Nearest-rank percentile of an ascending list (``fraction`` in 0..1]."""
    if not ordered:
        raise ValueError("no values")
    rank = max(math.ceil(fraction * len(ordered)), 1)
    return ordered[rank - 1]
