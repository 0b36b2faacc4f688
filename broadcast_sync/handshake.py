"""The WebSocket opening handshake (RFC 6455, section 4.2).

h11 parses the HTTP request; the checks and the responses are ours. Every
failed check raises :class:`HandshakeError` carrying the HTTP status and the
reason sent back to the client.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import socket
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from http import HTTPStatus

import h11

from broadcast_sync.config import Mode
from broadcast_sync.events import EventId, parse_event_id
from broadcast_sync.messages import Format

#: The path clients connect to.
WEBSOCKET_PATH = "/ws"
#: RFC 6455, section 1.3: appended to the client's key before hashing.
ACCEPT_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#: The only protocol version (RFC 6455, section 4.1).
WEBSOCKET_VERSION = "13"
#: The query parameters the server reads; each may be given once. Others
#: are ignored, as a proxy or a page may add their own.
QUERY_PARAMETERS = ("username", "format", "history", "since")
#: A real handshake is a few hundred bytes; this leaves room for cookies.
MAX_REQUEST_BYTES = 8192
#: Bytes read at a time while waiting for the request.
RECEIVE_BYTES = 4096


class HandshakeError(Exception):
    """A handshake refused with ``status``; ``reason`` is the response body."""

    def __init__(
        self,
        status: HTTPStatus,
        reason: str,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers


@dataclasses.dataclass(frozen=True)
class Request:
    """The parts of a handshake request that the server acts on."""

    key: str
    host: str
    origin: str | None
    #: The query string's parameters, each given at most once.
    parameters: Mapping[str, str]

    @property
    def username(self) -> str | None:
        """The name the client asked for, if any."""
        return self.parameters.get("username")


@dataclasses.dataclass(frozen=True)
class Arrival:
    """What a client asked for in its handshake, besides its name."""

    format: Format = Format.TEXT
    #: Logged events to send before its own join.
    history: int = 0
    #: Resume after this event (JSON only).
    since: EventId | None = None


def read_request(sock: socket.socket, timeout: float) -> tuple[h11.Request, bytes]:
    """Read one HTTP request head from ``sock`` within ``timeout`` seconds.

    The timeout bounds the whole head, not each read, so a client trickling
    bytes cannot hold the connection's thread. Returns the request and the
    bytes that followed it (frames a client sent before our response).

    Raises:
        HandshakeError: if the request is malformed, too large or cut short.
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
            raise HandshakeError(status, f"malformed HTTP request: {exc}") from exc
        if isinstance(event, h11.Request):
            trailing_data = connection.trailing_data[0]
            if received - len(trailing_data) > MAX_REQUEST_BYTES:
                raise _head_too_large()
            return event, trailing_data
        if event is not h11.NEED_DATA:  # pragma: no cover - Request comes first
            raise HandshakeError(HTTPStatus.BAD_REQUEST, "unexpected HTTP event")
        # Read no further than one byte past the limit.
        room = MAX_REQUEST_BYTES + 1 - received
        if room <= 0:
            raise _head_too_large()
        data = _receive_by(sock, deadline, min(RECEIVE_BYTES, room))
        received += len(data)
        connection.receive_data(data)


def _receive_by(sock: socket.socket, deadline: float, size: int) -> bytes:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError
    sock.settimeout(remaining)
    data = sock.recv(size)
    if not data:
        raise HandshakeError(
            HTTPStatus.BAD_REQUEST, "connection closed during the handshake"
        )
    return data


def _head_too_large() -> HandshakeError:
    return HandshakeError(
        HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
        f"request head over {MAX_REQUEST_BYTES} bytes",
    )


def parse_request(request: h11.Request) -> Request:
    """Check that ``request`` is a WebSocket upgrade for our path.

    Raises:
        HandshakeError: 404 for another path, 400 for anything that is not a
            valid upgrade.
    """
    try:
        target = urllib.parse.urlsplit(request.target.decode("ascii", "replace"))
    except ValueError as exc:
        raise _bad_request(f"malformed request target: {exc}") from exc
    if target.path != WEBSOCKET_PATH:
        raise HandshakeError(HTTPStatus.NOT_FOUND, f"no such path: {target.path}")
    headers = _Headers(request.headers)
    if request.method != b"GET":
        raise _bad_request(f"method must be GET, not {request.method.decode()}")
    if request.http_version != b"1.1":
        raise _bad_request("HTTP/1.1 is required")
    if "websocket" not in headers.tokens("upgrade"):
        raise _bad_request("missing Upgrade: websocket header")
    if "upgrade" not in headers.tokens("connection"):
        raise _bad_request("missing Connection: Upgrade header")
    if headers.get("content-length") or headers.get("transfer-encoding"):
        raise _bad_request("a handshake request has no body")
    version = headers.get("sec-websocket-version")
    if version != WEBSOCKET_VERSION:
        raise HandshakeError(
            HTTPStatus.BAD_REQUEST,
            f"unsupported Sec-WebSocket-Version: {version or '(missing)'}",
            (("Sec-WebSocket-Version", WEBSOCKET_VERSION),),
        )
    return Request(
        key=_check_key(headers.get("sec-websocket-key")),
        host=headers.get("host") or "",
        origin=headers.get("origin"),
        parameters=_query_parameters(target.query),
    )


def check_origin(request: Request, allowed_origins: tuple[str, ...]) -> None:
    """Refuse a browser's cross-site request.

    With no allowed origins, a browser's Origin must match its Host (same
    origin); a client that sends no Origin (not a browser) is accepted.

    Raises:
        HandshakeError: 403 if the origin is not allowed.
    """
    origin = request.origin
    if origin is None or "*" in allowed_origins:
        return
    if allowed_origins:
        allowed = origin.lower() in (each.lower() for each in allowed_origins)
    else:
        try:
            netloc = urllib.parse.urlsplit(origin).netloc
        except ValueError:
            netloc = ""  # a malformed origin matches no host
        allowed = bool(netloc) and netloc.lower() == request.host.lower()
    if not allowed:
        raise HandshakeError(HTTPStatus.FORBIDDEN, f"origin not allowed: {origin}")


def accept_response(key: str) -> bytes:
    """The 101 response that completes the handshake for ``key``."""
    digest = hashlib.sha1((key + ACCEPT_GUID).encode("ascii")).digest()
    accept = base64.b64encode(digest).decode("ascii")
    return _response_head(
        HTTPStatus.SWITCHING_PROTOCOLS,
        (
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Accept", accept),
        ),
    )


def reject_response(error: HandshakeError) -> bytes:
    """The response refusing a handshake: its status and a plain-text reason."""
    body = (error.reason + "\n").encode("utf-8")
    headers = (
        *error.headers,
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Content-Length", str(len(body))),
        ("Connection", "close"),
    )
    return _response_head(error.status, headers) + body


def _response_head(status: HTTPStatus, headers: tuple[tuple[str, str], ...]) -> bytes:
    lines = [f"HTTP/1.1 {status.value} {status.phrase}"]
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _bad_request(reason: str) -> HandshakeError:
    return HandshakeError(HTTPStatus.BAD_REQUEST, reason)


def _check_key(key: str | None) -> str:
    if key is None:
        raise _bad_request("missing Sec-WebSocket-Key header")
    try:
        raw = base64.b64decode(key, validate=True)
    except ValueError:  # binascii.Error, or characters outside ASCII
        raw = b""
    if len(raw) != 16:
        raise _bad_request("Sec-WebSocket-Key must be 16 bytes in base64")
    return key


def _query_parameters(query: str) -> dict[str, str]:
    try:
        parameters = urllib.parse.parse_qs(
            query, keep_blank_values=True, strict_parsing=False, errors="strict"
        )
    except UnicodeDecodeError as exc:
        raise _bad_request("the query string is not valid UTF-8") from exc
    for name in QUERY_PARAMETERS:
        if len(parameters.get(name, ())) > 1:
            raise _bad_request(f"{name} given more than once")
    return {name: values[0] for name, values in parameters.items()}


def parse_arrival(request: Request, mode: Mode, history_size: int) -> Arrival:
    """What the client asks for besides its name: ``format``, ``history``
    and ``since``.

    Raises:
        HandshakeError: 400 for a value that is not valid, or not in ``mode``.
    """
    parameters = request.parameters
    try:
        format = Format(parameters.get("format", Format.TEXT.value))
    except ValueError:
        raise _bad_request(f"unknown format: {parameters['format']!r}") from None
    if format is Format.JSON and mode is Mode.RELAY:
        raise _bad_request("format=json is for chat mode; relay mode relays as is")
    return Arrival(
        format=format,
        history=_history_parameter(parameters.get("history"), history_size),
        since=_since_parameter(parameters.get("since"), format),
    )


def _history_parameter(text: str | None, history_size: int) -> int:
    if text is None:
        return 0
    if not (text.isascii() and text.isdigit()) or int(text) > history_size:
        raise _bad_request(
            f"history must be a whole number from 0 to {history_size}: {text!r}"
        )
    return int(text)


def _since_parameter(text: str | None, format: Format) -> EventId | None:
    if text is None:
        return None
    if format is not Format.JSON:
        raise _bad_request("since needs format=json, which tells whether it resumed")
    try:
        return parse_event_id(text)
    except ValueError:
        raise _bad_request(f"since is not an event id: {text!r}") from None


class _Headers:
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
