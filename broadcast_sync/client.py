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
from broadcast_sync.clienttls import UnusableCAFile, client_context
from broadcast_sync.endpoint import Endpoint
from broadcast_sync.terminal import PROMPT, Console
from broadcast_sync.validation import escape_controls


def run_client(
    endpoint: Endpoint,
    username: str,
    *,
    cafile: str | None = None,
    insecure: bool = False,
) -> int:
    """Chat until end of input or Ctrl+C, or until the link gives up;
    return the exit status.

    Args:
        cafile: Over TLS, trust the CAs in this PEM file, not the system's.
        insecure: Over TLS, check no certificate at all.
    """
    tls = None
    if endpoint.secure:
        try:
            tls = client_context(cafile=cafile, insecure=insecure)
        except UnusableCAFile as exc:
            _warn(str(exc))
            return 1
    where = escape_controls(f"{endpoint.shown} as {username}")
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
        endpoint,
        username,
        Console(sys.stdout, interactive),
        tls=tls,
        on_end=wake_main,
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
