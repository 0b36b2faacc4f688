"""Where the terminal client connects: a ``ws://`` or ``wss://`` URL.

Pure logic, no sockets. ``--host`` and ``--port`` make the plain endpoint
``ws://HOST:PORT/ws``; ``--url`` also gives the scheme (TLS or not) and the
path, which differs from ``/ws`` behind a reverse proxy that serves the chat
under a path of its own.
"""

from __future__ import annotations

import dataclasses
import urllib.parse

from broadcast_sync.handshake import WEBSOCKET_PATH

#: The port of each scheme when the URL names none (RFC 6455, section 3).
DEFAULT_PORTS = {"ws": 80, "wss": 443}
#: The path may hold printable ASCII from "!" to "~" only: a request target
#: has no spaces (RFC 9112, section 3.2), and the rest is percent-encoded.
FIRST_PATH_CHARACTER = "!"


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """A server's WebSocket endpoint."""

    host: str
    port: int
    #: The path of the request target; the client adds its own query.
    path: str = WEBSOCKET_PATH
    #: Whether to speak TLS (``wss://``).
    secure: bool = False

    @property
    def address(self) -> str:
        """``HOST:PORT``, an IPv6 address in brackets: as in a Host header."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def url(self) -> str:
        """The endpoint as a URL: ``wss://HOST:PORT/PATH``."""
        return f"{'wss' if self.secure else 'ws'}://{self.address}{self.path}"

    @property
    def shown(self) -> str:
        """How the user is told where the client connects: ``HOST:PORT`` for
        the plain default path, as ``--host`` and ``--port`` say it; else
        the whole URL, so that TLS or another path shows."""
        if not self.secure and self.path == WEBSOCKET_PATH:
            return self.address
        return self.url

    def target(self, chat_target: str) -> str:
        """``chat_target`` (``/ws?username=...``) on this endpoint's path."""
        _, _, query = chat_target.partition("?")
        return f"{self.path}?{query}" if query else self.path


def parse_url(text: str) -> Endpoint:
    """The endpoint that ``text``, ``ws[s]://HOST[:PORT][/PATH]``, names.

    The path defaults to ``/ws``; the port to 80 for ``ws://``, 443 for
    ``wss://``.

    Raises:
        ValueError: if ``text`` is not such a URL; the message says why.
    """
    parts = urllib.parse.urlsplit(text.strip())
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise ValueError(f"not a ws:// or wss:// URL: {text}")
    if not parts.hostname:
        raise ValueError(f"no host in {text}")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"a user name or password in the URL is not supported: {text}")
    if parts.query or parts.fragment or text.rstrip().endswith(("?", "#")):
        # The client sends its own query: username, format, since.
        raise ValueError(f"the URL may have no query or fragment: {text}")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"invalid port in {text}") from None
    if port == 0:
        raise ValueError(f"invalid port in {text}")
    path = parts.path or WEBSOCKET_PATH
    if not all(FIRST_PATH_CHARACTER <= character <= "~" for character in path):
        raise ValueError(f"percent-encode spaces and other characters in {text}")
    return Endpoint(
        host=parts.hostname,
        port=DEFAULT_PORTS[scheme] if port is None else port,
        path=path,
        secure=scheme == "wss",
    )
