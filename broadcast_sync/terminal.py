"""Terminal output for the client: safe text, and lines that spare the input.

Modelled on python-websockets' ``cli.py``.
"""

from __future__ import annotations

import threading
from typing import TextIO

from broadcast_sync.validation import escape_controls

# Written around an incoming line when the user may be typing: save the
# cursor, open a blank line above the input line, print there, and put the
# cursor back where it was, one line lower.
_ABOVE_INPUT_BEFORE = "\x1b7\n\x1b[A\x1b[L"
_ABOVE_INPUT_AFTER = "\n\x1b8\x1b[B"

#: Shown where the user types.
PROMPT = "> "


class Console:
    """Prints incoming messages, one per line.

    In a terminal, each line goes above the line being typed, which stays
    as it was. ``_lock`` keeps lines printed by two threads whole.
    """

    def __init__(self, stream: TextIO, interactive: bool) -> None:
        self._stream = stream
        self.interactive = interactive
        self._lock = threading.Lock()

    def show(self, text: str) -> None:
        """Print one message, its control characters and bidi controls
        escaped: nothing in it moves the cursor, starts a line, or reorders
        text in a terminal that lays out right-to-left text."""
        line = escape_controls(text)
        if self.interactive:
            line = _ABOVE_INPUT_BEFORE + line + _ABOVE_INPUT_AFTER
        else:
            line += "\n"
        with self._lock:
            self._stream.write(line)
            self._stream.flush()
