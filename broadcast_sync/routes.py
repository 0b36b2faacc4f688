"""Plain HTTP on the WebSocket port: the chat page and its files.

A request for the WebSocket path is a handshake; the server answers every
other request with :meth:`Routes.respond`, which looks its path up in a
table of resources. The chat page is one set of them; health checks and
metrics are other resources, added to the same table.

Strategy: the page's files are read once, at startup, from the package's
``web`` folder (package data, so they come with the wheel), and served from
memory. Only paths in the table exist, so no request can name a file on
disk. Each file has an ``ETag`` and ``Cache-Control: no-cache``: a browser
asks again each time and gets a bodiless 304 while the file is unchanged,
and a new version of the server is never hidden behind a stale cache.
"""

from __future__ import annotations

import dataclasses
import hashlib
import string
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from importlib import resources
from typing import Protocol

import h11

from broadcast_sync.config import Network
from broadcast_sync.http11 import (
    Headers,
    HTTPError,
    RequestHeaders,
    Response,
    http_date,
    split_target,
)
from broadcast_sync.proxies import in_networks

#: The methods every resource answers; others get 405.
METHODS = (b"GET", b"HEAD")
#: The page's own files and WebSocket, nothing else: no inline script or
#: style, no eval, no other host, and no framing by another site.
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)
#: Sent with every file of the page.
SECURITY_HEADERS: Headers = (
    ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    # frame-ancestors, for browsers that predate it.
    ("X-Frame-Options", "DENY"),
)
#: Revalidate every time: cheap with the ETag, and never stale.
CACHE_CONTROL = "no-cache"
#: Messages of the room a page shows when it joins, if the log keeps them.
PAGE_HISTORY = 50


class Resource(Protocol):
    """What a path serves to ``GET`` (and to ``HEAD``, without the body)."""

    def get(self, request: h11.Request) -> Response:
        """The response to a ``GET`` of this resource."""


class StaticFile:
    """A file served from memory, with its ``ETag``."""

    def __init__(self, body: bytes, content_type: str) -> None:
        self.body = body
        self.content_type = content_type
        #: A strong validator: it changes whenever the body does.
        self.etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'

    def get(self, request: h11.Request) -> Response:
        """The file, or 304 if the client's copy has the same ``ETag``."""
        headers: Headers = (
            ("Date", http_date()),
            ("ETag", self.etag),
            ("Cache-Control", CACHE_CONTROL),
            *SECURITY_HEADERS,
        )
        if_none_match = RequestHeaders(request.headers).get("if-none-match")
        if if_none_match is not None and etag_matches(if_none_match, self.etag):
            return Response(
                HTTPStatus.NOT_MODIFIED, (*headers, ("Connection", "close"))
            )
        return Response(
            HTTPStatus.OK,
            (
                *headers,
                ("Content-Type", self.content_type),
                ("Content-Length", str(len(self.body))),
                ("Connection", "close"),
            ),
            self.body,
        )


def etag_matches(if_none_match: str, etag: str) -> bool:
    """Whether ``If-None-Match`` names ``etag``, by weak comparison
    (RFC 9110, section 13.1.2)."""
    if if_none_match.strip() == "*":
        return True
    tags = (tag.strip().removeprefix("W/") for tag in if_none_match.split(","))
    return etag.removeprefix("W/") in tags


class Routes:
    """The server's plain HTTP resources, by path.

    Public resources answer anybody. Restricted ones (health and metrics)
    answer only clients whose address is in ``allowed``, and 403 others.
    """

    def __init__(
        self,
        public: Mapping[str, Resource],
        restricted: Mapping[str, Resource],
        allowed: Sequence[Network],
    ) -> None:
        self._public = dict(public)
        self._restricted = dict(restricted)
        self._allowed = tuple(allowed)

    @property
    def paths(self) -> frozenset[str]:
        """The paths served."""
        return frozenset(self._public) | frozenset(self._restricted)

    def respond(self, request: h11.Request, client: str) -> Response:
        """The response to ``request`` from address ``client``, which is not a
        WebSocket handshake.

        ``HEAD`` gets the headers of ``GET``, ``Content-Length`` included,
        and no body.

        Raises:
            HTTPError: 404 for a path that is not served, 403 for a
                restricted one that ``client`` may not read, 405 for a method
                other than ``GET`` and ``HEAD``.
        """
        path = split_target(request).path
        resource = self._public.get(path)
        if resource is None:
            resource = self._restricted.get(path)
            if resource is None:
                raise HTTPError(HTTPStatus.NOT_FOUND, f"no such path: {path}")
            if not in_networks(client, self._allowed):
                raise HTTPError(
                    HTTPStatus.FORBIDDEN, f"{path} is not served to {client}"
                )
        if request.method not in METHODS:
            raise HTTPError(
                HTTPStatus.METHOD_NOT_ALLOWED,
                f"method not allowed: {request.method.decode('latin-1')}",
                (("Allow", ", ".join(method.decode() for method in METHODS)),),
            )
        response = resource.get(request)
        if request.method == b"HEAD":
            return dataclasses.replace(response, body=b"")
        return response


def chat_page(*, history: int, max_name: int) -> dict[str, Resource]:
    """The chat page and its files, by path, read from the package.

    Args:
        history: Messages the page asks for on joining.
        max_name: The longest name the server accepts.
    """
    folder = resources.files("broadcast_sync") / "web"
    index = string.Template((folder / "index.html").read_text("utf-8"))
    html = index.substitute(history=history, max_name=max_name)
    return {
        "/": StaticFile(html.encode("utf-8"), "text/html; charset=utf-8"),
        "/static/chat.js": StaticFile(
            (folder / "chat.js").read_bytes(), "text/javascript; charset=utf-8"
        ),
        "/static/chat.css": StaticFile(
            (folder / "chat.css").read_bytes(), "text/css; charset=utf-8"
        ),
        "/static/icon.svg": StaticFile(
            (folder / "icon.svg").read_bytes(), "image/svg+xml"
        ),
    }
