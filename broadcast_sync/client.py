"""The terminal client: ``broadcast-server connect``.

The main thread reads the user's lines and hands them to the chat link
(``chatlink.py``), whose thread connects, reconnects, sends them and prints
what arrives. Ctrl+C stops whichever of the two is waiting.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType

from broadcast_sync.chatlink import ChatLink
from broadcast_sync.terminal import PROMPT, Console
from broadcast_sync.validation import escape_controls


def run_client(host: str, port: int, username: str) -> int:
    """Chat until end of input or Ctrl+C, or until the link gives up;
    return the exit status."""
    where = escape_controls(f"{host}:{port} as {username}")
    print(f"Connecting to {where}...", flush=True)
    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    main_thread = threading.get_ident()
    # True while the main thread may be blocked in its input, which only a
    # signal interrupts. Written by the main thread, read by the link's.
    reading = True

    def wake_main() -> None:
        if reading:
            signal.pthread_kill(main_thread, signal.SIGINT)

    link = ChatLink(
        host, port, username, Console(sys.stdout, interactive), on_end=wake_main
    )

    def interrupt(signum: int, frame: FrameType | None) -> None:
        # Ctrl+C, or the link waking us. Raise once, to stop reading; after
        # that, the link is asked to stop (a no-op once it has).
        nonlocal reading
        if reading:
            reading = False
            raise KeyboardInterrupt
        link.interrupt()

    # SIGINT is held until the link's thread runs: a Ctrl+C must find it
    # started, to stop it; and the thread inherits the mask, so the signal
    # goes to the main thread, whose handler it is.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    previous_handler = signal.signal(signal.SIGINT, interrupt)
    prompted = False
    try:
        try:
            link.start()
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
            if link.wait_started():
                prompted = interactive
                for line in _input_lines(interactive):
                    if line.strip():
                        link.send(line)
                link.finish()
            reading = False
        except KeyboardInterrupt:
            if prompted:
                print()  # below the prompt
            link.interrupt()
        outcome = link.join()
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        signal.signal(signal.SIGINT, previous_handler)
    if outcome.error is not None:
        _warn(outcome.error)
    for line in outcome.unsent:
        _warn(f"not sent: {line}")
    return outcome.status


def _input_lines(interactive: bool) -> Iterator[str]:
    if not interactive:
        for line in sys.stdin:
            yield line.rstrip("\r\n")
        return
    import readline  # noqa: F401, PLC0415  (line editing and history for input())

    while True:
        try:
            yield input(PROMPT)
        except EOFError:
            print()
            return


def _warn(message: str) -> None:
    print(f"broadcast-server: {escape_controls(message)}", file=sys.stderr)
