"""The WebSocket opening handshake (RFC 6455, section 4.2).

The server reads the request (:func:`~broadcast_sync.http11.read_request`)
and hands one for :data:`WEBSOCKET_PATH` over to the checks here. Every
failed check raises :class:`~broadcast_sync.http11.HTTPError` carrying the
HTTP status and the reason sent back to the client.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import urllib.parse
from collections.abc import Mapping
from http import HTTPStatus

import h11

from broadcast_sync.auth import Identity, InvalidToken, verify
from broadcast_sync.config import Mode
from broadcast_sync.events import EventId, parse_event_id
from broadcast_sync.http11 import HTTPError, RequestHeaders, response_head, split_target
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
#: The query parameter that carries a signed identity (--auth-secret-file),
#: for browsers, whose WebSocket API cannot send an Authorization header.
TOKEN_PARAMETER = "token"
#: The scheme of an Authorization header carrying one (RFC 6750, section 2.1).
BEARER = "bearer"


@dataclasses.dataclass(frozen=True)
class Request:
    """The parts of a handshake request that the server acts on."""

    key: str
    host: str
    origin: str | None
    #: The query string's parameters, each given at most once.
    parameters: Mapping[str, str]
    #: Every token given, in the query and in Authorization: Bearer headers.
    #: Read only with --auth-secret-file; otherwise ignored, like any
    #: parameter the server does not read.
    tokens: tuple[str, ...] = ()

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
    #: When its signed identity expires, in seconds since the Unix epoch
    #: (with --auth-secret-file): the session ends then, with 1008.
    expires: float | None = None


def parse_request(request: h11.Request) -> Request:
    """Check that ``request`` (for :data:`WEBSOCKET_PATH`) is a valid upgrade.

    Raises:
        HTTPError: 400 for anything that is not a valid upgrade.
    """
    headers = RequestHeaders(request.headers)
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
        raise HTTPError(
            HTTPStatus.BAD_REQUEST,
            f"unsupported Sec-WebSocket-Version: {version or '(missing)'}",
            (("Sec-WebSocket-Version", WEBSOCKET_VERSION),),
        )
    return _parts(request, key=_check_key(headers.get("sec-websocket-key")))


def asks_upgrade(request: h11.Request) -> bool:
    """Whether ``request`` asks for an upgrade at all, however badly."""
    return RequestHeaders(request.headers).get("upgrade") is not None


def parse_question(request: h11.Request) -> Request:
    """The parts of a request for :data:`WEBSOCKET_PATH` that asks for no
    upgrade: a page asking why its handshake was refused.

    A browser does not tell a page why; so the page asks again, with the same
    query, as a plain GET. The server checks it as it would a handshake, and
    answers what was wrong, or 426 (Upgrade Required) if nothing was.

    Raises:
        HTTPError: 400 for a method other than GET, or a malformed query.
    """
    if request.method != b"GET":
        raise _bad_request(f"method must be GET, not {request.method.decode()}")
    return _parts(request, key="")  # no key: it is no handshake


def upgrade_required() -> HTTPError:
    """426: the answer to a question about a handshake that would succeed."""
    return HTTPError(
        HTTPStatus.UPGRADE_REQUIRED,
        "nothing wrong with this request, but it asks for no WebSocket upgrade",
        # RFC 9110, section 7.8: an Upgrade header goes with this option.
        (("Upgrade", "websocket"), ("Connection", "Upgrade")),
    )


def _parts(request: h11.Request, key: str) -> Request:
    target = split_target(request)
    headers = RequestHeaders(request.headers)
    query = _parse_query(target.query)
    return Request(
        key=key,
        host=headers.get("host") or "",
        origin=headers.get("origin"),
        parameters=_single_parameters(query),
        tokens=_tokens(query, headers),
    )


def authenticate(request: Request, secret: bytes) -> Identity:
    """Who the request's token, signed with ``secret``, says the client is.

    Raises:
        HTTPError: 401 for a missing, doubled, malformed, badly signed or
            expired token.
    """
    if not request.tokens:
        raise _unauthorized(
            "a token is required: give it as ?token= or Authorization: Bearer",
            challenge="Bearer",
        )
    if len(request.tokens) > 1:
        raise _unauthorized("token given more than once")
    try:
        return verify(request.tokens[0], secret)
    except InvalidToken as exc:
        raise _unauthorized(str(exc)) from exc


def _unauthorized(
    reason: str, challenge: str = 'Bearer error="invalid_token"'
) -> HTTPError:
    """401, with the challenge that RFC 9110 (section 15.5.2) requires."""
    return HTTPError(
        HTTPStatus.UNAUTHORIZED, reason, (("WWW-Authenticate", challenge),)
    )


def _tokens(query: Mapping[str, list[str]], headers: RequestHeaders) -> tuple[str, ...]:
    """The tokens in ``query`` and in a Bearer Authorization header; another
    scheme (a proxy's Basic, say) is not ours and is ignored."""
    tokens = list(query.get(TOKEN_PARAMETER, ()))
    scheme, _, credentials = (headers.get("authorization") or "").partition(" ")
    if scheme.lower() == BEARER:
        tokens.append(credentials.strip())
    return tuple(tokens)


def check_origin(
    request: Request, allowed_origins: tuple[str, ...], scheme: str | None = None
) -> None:
    """Refuse a browser's cross-site request.

    With no allowed origins, a browser's Origin must match its Host (same
    origin), and its scheme too when it is known (``scheme``, from a
    trusted proxy); a client that sends no Origin (not a browser) is
    accepted.

    Raises:
        HTTPError: 403 if the origin is not allowed.
    """
    origin = request.origin
    if origin is None or "*" in allowed_origins:
        return
    if allowed_origins:
        allowed = origin.lower() in (each.lower() for each in allowed_origins)
    else:
        try:
            parts = urllib.parse.urlsplit(origin)
        except ValueError:
            parts = urllib.parse.SplitResult("", "", "", "", "")  # matches nothing
        allowed = (
            bool(parts.netloc)
            and parts.netloc.lower() == request.host.lower()
            and scheme in (None, parts.scheme.lower())
        )
    if not allowed:
        raise HTTPError(HTTPStatus.FORBIDDEN, f"origin not allowed: {origin}")


def accept_response(key: str) -> bytes:
    """The 101 response that completes the handshake for ``key``."""
    digest = hashlib.sha1((key + ACCEPT_GUID).encode("ascii")).digest()
    accept = base64.b64encode(digest).decode("ascii")
    return response_head(
        HTTPStatus.SWITCHING_PROTOCOLS,
        (
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Accept", accept),
        ),
    )


def _bad_request(reason: str) -> HTTPError:
    return HTTPError(HTTPStatus.BAD_REQUEST, reason)


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


def _parse_query(query: str) -> dict[str, list[str]]:
    """Every parameter of ``query`` with all its values.

    Raises:
        HTTPError: 400 if the query string is not valid UTF-8.
    """
    try:
        return urllib.parse.parse_qs(
            query, keep_blank_values=True, strict_parsing=False, errors="strict"
        )
    except UnicodeDecodeError as exc:
        raise _bad_request("the query string is not valid UTF-8") from exc


def _single_parameters(parameters: Mapping[str, list[str]]) -> dict[str, str]:
    """The first value of each parameter; those the server reads may be
    given once only.

    Raises:
        HTTPError: 400 for a parameter of ours given more than once.
    """
    for name in QUERY_PARAMETERS:
        if len(parameters.get(name, ())) > 1:
            raise _bad_request(f"{name} given more than once")
    return {name: values[0] for name, values in parameters.items()}


def parse_arrival(request: Request, mode: Mode, history_size: int) -> Arrival:
    """What the client asks for besides its name: ``format``, ``history``
    and ``since``.

    Raises:
        HTTPError: 400 for a value that is not valid, or not in ``mode``.
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
