"""The server's settings, each default with the reason for its value."""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
from typing import TypeAlias

#: An address block, as in --metrics-allow and --trusted-proxy.
Network: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network
#: Loopback only: the server's own host.
LOOPBACK: tuple[Network, ...] = (
    ipaddress.ip_network("127.0.0.0/8"),
    ipaddress.ip_network("::1/128"),
)


class Mode(enum.Enum):
    """What the server does with a message."""

    #: Text only, broadcast as ``NAME: MESSAGE``, with join and leave notices.
    CHAT = "chat"
    #: Text and binary messages broadcast verbatim; no notices.
    RELAY = "relay"


@dataclasses.dataclass(frozen=True, kw_only=True)
class ServerConfig:
    """Everything the server can be told on the command line."""

    host: str = "0.0.0.0"
    port: int = 8080
    mode: Mode = Mode.CHAT

    # The log
    # Events kept for history and resume: a few minutes of a busy room, so a
    # client that lost its connection for a while catches up.
    history_size: int = 1000
    # None: the room is this process alone, its log in memory.
    redis_url: str | None = None
    # One prefix, one room: rooms sharing a Redis never see each other.
    redis_prefix: str = "broadcast-sync"
    # Server processes on one port (SO_REUSEPORT), one room through Redis:
    # one process runs Python on one core at a time.
    workers: int = 1

    # TLS
    # None: plain ws:// and http://. A PEM certificate chain, and its key
    # unless the same file holds it, for wss:// and https://.
    certfile: str | None = None
    keyfile: str | None = None
    # The environment variable holding the key's password, if it has one:
    # a password on the command line would show in the process list.
    keyfile_password_env: str | None = None

    # The chat page at /, on the port of /ws: a browser is all a user needs.
    web: bool = True

    # Health and metrics
    # /healthz, /readyz and /metrics tell an attacker how the server fares:
    # only these clients may read them.
    metrics_allow: tuple[Network, ...] = LOOPBACK

    # Signed identities
    # None: anonymous names, as clients ask. A file holding the secret that a
    # site with logins signs its users' tokens with (HS256): a file, not the
    # command line, which would show the secret in the process list.
    auth_secret_file: str | None = None

    # Proxies whose Forwarded or X-Forwarded-For header names the client.
    trusted_proxies: tuple[Network, ...] = ()

    # Origins
    # Empty: browsers must be same-origin; "*" in the tuple allows any origin.
    allowed_origins: tuple[str, ...] = ()

    # Limits
    # Five messages a second is brisk typing; more is a script or a flood.
    rate_limit: int = 5
    rate_window: float = 1.0
    # A chat line, not a file.
    max_message_bytes: int = 512
    max_message_chars: int = 500
    max_username_chars: int = 50
    # Pending writes (one per broadcast batch) a slow client may have before
    # it is dropped: a few seconds of traffic under load.
    queue_size: int = 256
    # And bytes: with the kernel's 256 KiB send buffer, half a megabyte per
    # slow client at most; 10,000 of them, 5 GB.
    max_queue_bytes: int = 256 * 1024
    # Each client costs two threads and one file descriptor; the process may
    # open 20,000 files, so 10,000 clients leaves room for the rest.
    max_clients: int = 10_000
    # No address may take the server. An office or a school behind one NAT
    # rarely has more people in one chat; 0 disables.
    max_clients_per_ip: int = 100
    # New connections per address per second, and at once. A page load is
    # five (the page, its script, style and icon, the WebSocket); a whole
    # office reconnecting after a restart is spread by the clients' backoff.
    handshake_rate: int = 20

    # Timeouts
    # Just under a minute, like gorilla/websocket's chat: fewer pings than
    # idle timeouts of common proxies (60 s).
    ping_interval: float = 54.0
    pong_timeout: float = 60.0
    # A client that accepts no data for this long is not reading at all.
    write_timeout: float = 10.0
    # A browser or client sends its whole handshake at once; a socket silent
    # this long holds a thread for nothing.
    handshake_timeout: float = 5.0
    # How long a closing handshake may take before the socket is cut.
    close_timeout: float = 3.0

    # Batching
    # Under load, a flush waits this long after the previous one, so that one
    # system call per client carries many messages; an idle server sends at
    # once. 10 ms adds at most 10 ms of latency.
    batch_window: float = 0.010
