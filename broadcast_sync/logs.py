"""The server's log: lines of text or JSON objects, and a throttle for lines
that a client could repeat at will.

Log calls give their structured fields (``client``, ``user``, ``reason``,
``code``, ``status``) as ``extra``: text lines ignore them, since the message
says the same in words; JSON objects carry them as fields of their own.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import threading

from pythonjsonlogger.json import JsonFormatter

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: With workers, each line says which process wrote it.
WORKER_TEXT_FORMAT = "%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s"
#: The fields of every JSON line, besides the time (``ts``) and the extras.
JSON_FIELDS = ("levelname", "name", "message")
JSON_RENAMED = {"levelname": "level", "name": "logger"}

#: Lines about one address that get through in a window; the rest are
#: counted, and the count is told in the next line that gets through.
THROTTLE_LINES = 5
THROTTLE_WINDOW_SECONDS = 10.0
#: Addresses tracked at once: a scan from many addresses costs bounded
#: memory; past this, the oldest windows are forgotten.
THROTTLE_ADDRESSES = 4096


class LogFormat(enum.Enum):
    """How each log line is written."""

    #: For people: time, level, logger and message.
    TEXT = "text"
    #: For machines: one JSON object per line.
    JSON = "json"


@dataclasses.dataclass(frozen=True)
class LogSettings:
    """How the server logs; handed to each worker process, so kept plain."""

    level: str = "INFO"
    format: LogFormat = LogFormat.TEXT
    #: Name the process in each line: there are several.
    workers: bool = False


def configure(settings: LogSettings) -> None:
    """Send the process's log to stderr, as ``settings`` ask."""
    handler = logging.StreamHandler()
    handler.setFormatter(_formatter(settings))
    logging.basicConfig(level=settings.level, handlers=[handler])


def _formatter(settings: LogSettings) -> logging.Formatter:
    if settings.format is LogFormat.TEXT:
        return logging.Formatter(
            WORKER_TEXT_FORMAT if settings.workers else TEXT_FORMAT
        )
    fields = JSON_FIELDS + (("processName",) if settings.workers else ())
    return JsonFormatter(
        list(fields),
        rename_fields={**JSON_RENAMED, "processName": "process"},
        timestamp="ts",
        json_ensure_ascii=False,
    )


@dataclasses.dataclass
class _Window:
    """One address's lines in its current window."""

    ends: float
    admitted: int = 1
    suppressed: int = 0


class Throttle:
    """Lets through at most ``lines`` lines per ``window`` seconds about one
    address, and counts the others.

    Shared by every connection's thread: ``_lock`` guards ``_windows``.
    """

    def __init__(
        self,
        lines: int = THROTTLE_LINES,
        window: float = THROTTLE_WINDOW_SECONDS,
        addresses: int = THROTTLE_ADDRESSES,
    ) -> None:
        self._lines = lines
        self._window = window
        self._addresses = addresses
        self._lock = threading.Lock()
        #: Each address's window, the oldest first.
        self._windows: dict[str, _Window] = {}

    def admit(self, address: str, now: float) -> int | None:
        """Whether a line about ``address`` at ``now`` (monotonic seconds)
        goes out: None to drop it, else how many were dropped before it."""
        with self._lock:
            window = self._windows.get(address)
            if window is None or now >= window.ends:
                self._windows.pop(address, None)
                self._forget_oldest()
                self._windows[address] = _Window(now + self._window)
                return 0 if window is None else window.suppressed
            if window.admitted < self._lines:
                window.admitted += 1
                return 0
            window.suppressed += 1
            return None

    def _forget_oldest(self) -> None:
        while len(self._windows) >= self._addresses:
            del self._windows[next(iter(self._windows))]
