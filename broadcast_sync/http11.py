"""HTTP/1.1 on the server's port: reading a request head, writing a response.

Every connection starts with one request, read here. h11 parses it; the
responses are built here, one per connection: after it the server closes
the connection (``Connection: close``), since each connection holds a
thread. The WebSocket handshake (:mod:`~broadcast_sync.handshake`) and the
plain routes (:mod:`~broadcast_sync.routes`) both raise :class:`HTTPError`
for a request they refuse.
"""

from __future__ import annotations

import dataclasses
import email.utils
import time
import urllib.parse
from collections.abc import Sequence
from http import HTTPStatus
from typing import Protocol

import h11

#: A real request is a few hundred bytes; this leaves room for cookies.
MAX_REQUEST_BYTES = 8192
#: Bytes read at a time while waiting for the request.
RECEIVE_BYTES = 4096

Headers = tuple[tuple[str, str], ...]


class HTTPError(Exception):
    """A request refused with ``status``; ``reason`` is the response body."""

    def __init__(self, status: HTTPStatus, reason: str, headers: Headers = ()) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers


@dataclasses.dataclass(frozen=True)
class Response:
    """A response to send as is: its status, its headers and its body."""

    status: HTTPStatus
    headers: Headers
    body: bytes = b""

    def encode(self) -> bytes:
        """The bytes of the whole response."""
        return response_head(self.status, self.headers) + self.body


class Receiver(Protocol):
    """Where a request comes from: a connection's transport."""

    def receive_by(self, deadline: float, size: int) -> bytes:
        """Bytes, waiting for them until ``deadline``; b"" at the end.

        Raises:
            TimeoutError: if none come in time.
        """


def read_request(receiver: Receiver, timeout: float) -> tuple[h11.Request, bytes]:
    """Read one HTTP request head from ``receiver`` within ``timeout`` seconds.

    The timeout bounds the whole head, not each read, so a client trickling
    bytes cannot hold the connection's thread. Returns the request and the
    bytes that followed it (frames a client sent before our response).

    Raises:
        HTTPError: if the request is malformed, too large or cut short.
        TimeoutError: if the head does not arrive in time.
    """
    connection = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_BYTES)
    deadline = time.monotonic() + timeout
    received = 0
    while True:
        try:
            event = connection.next_event()
        except h11.RemoteProtocolError as exc:
            status = HTTPStatus(exc.error_status_hint)
            raise HTTPError(status, f"malformed HTTP request: {exc}") from exc
        if isinstance(event, h11.Request):
            trailing_data = connection.trailing_data[0]
            if received - len(trailing_data) > MAX_REQUEST_BYTES:
                raise _head_too_large()
            return event, trailing_data
        if event is not h11.NEED_DATA:  # pragma: no cover - Request comes first
            raise HTTPError(HTTPStatus.BAD_REQUEST, "unexpected HTTP event")
        # Read no further than one byte past the limit.
        room = MAX_REQUEST_BYTES + 1 - received
        if room <= 0:
            raise _head_too_large()
        data = receiver.receive_by(deadline, min(RECEIVE_BYTES, room))
        if not data:
            raise HTTPError(
                HTTPStatus.BAD_REQUEST, "connection closed during the handshake"
            )
        received += len(data)
        connection.receive_data(data)


def _head_too_large() -> HTTPError:
    return HTTPError(
        HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
        f"request head over {MAX_REQUEST_BYTES} bytes",
    )


def split_target(request: h11.Request) -> urllib.parse.SplitResult:
    """The request's target, split into its path and its query.

    Raises:
        HTTPError: 400 if the target cannot be parsed.
    """
    try:
        return urllib.parse.urlsplit(request.target.decode("ascii", "replace"))
    except ValueError as exc:
        raise HTTPError(
            HTTPStatus.BAD_REQUEST, f"malformed request target: {exc}"
        ) from exc


def reject_response(error: HTTPError) -> bytes:
    """The response refusing a request: its status and a plain-text reason."""
    body = (error.reason + "\n").encode("utf-8")
    headers = (
        *error.headers,
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Content-Length", str(len(body))),
        ("Connection", "close"),
    )
    return response_head(error.status, headers) + body


def response_head(status: HTTPStatus, headers: Headers) -> bytes:
    """The status line and ``headers`` of a response, up to its body."""
    lines = [f"HTTP/1.1 {status.value} {status.phrase}"]
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def http_date() -> str:
    """The current time as the ``Date`` header wants it (RFC 9110, 5.6.7)."""
    return email.utils.formatdate(usegmt=True)


class RequestHeaders:
    """Case-insensitive access to h11's header list."""

    def __init__(self, headers: Sequence[tuple[bytes, bytes]]) -> None:
        self._headers = headers

    def get(self, name: str) -> str | None:
        """The value of ``name``, its repeats joined with commas."""
        values = [v.decode("latin-1") for n, v in self._headers if n == name.encode()]
        return ", ".join(values) if values else None

    def tokens(self, name: str) -> set[str]:
        """The lower-cased comma-separated tokens of ``name``."""
        value = self.get(name) or ""
        return {token.strip().lower() for token in value.split(",")}
