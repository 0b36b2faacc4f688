"""The command line: ``broadcast-server start`` and ``broadcast-server connect``."""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from broadcast_sync import __version__
from broadcast_sync.client import run_client
from broadcast_sync.config import Mode, Network, ServerConfig
from broadcast_sync.endpoint import Endpoint, parse_url
from broadcast_sync.logs import LogFormat, LogSettings, configure
from broadcast_sync.proxies import parse_network
from broadcast_sync.supervisor import READY_LINE, StartFailed, Supervisor, serve

DEFAULT_PORT = 8080
DEFAULTS = ServerConfig()


def build_parser() -> argparse.ArgumentParser:
    """The parser of the whole command line (also read by argparse-manpage)."""
    parser = argparse.ArgumentParser(
        prog="broadcast-server",
        description=(
            "A WebSocket broadcast (chat) server and its terminal client. "
            "Clients connect to ws://HOST:PORT/ws?username=NAME; every message "
            "a client sends reaches every connected client as 'NAME: MESSAGE'."
        ),
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {__version__}"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_start(commands)
    _add_connect(commands)
    return parser


def _add_start(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    start = commands.add_parser(
        "start",
        help="run the broadcast server",
        description="Run the broadcast server until SIGINT or SIGTERM.",
    )
    start.add_argument(
        "--host",
        default=DEFAULTS.host,
        help="address to listen on (default: %(default)s)",
    )
    start.add_argument(
        "--port",
        type=port,
        default=os.environ.get("PORT", str(DEFAULT_PORT)),
        help="port to listen on (default: $PORT, else 8080)",
    )
    start.add_argument(
        "--mode",
        choices=[mode.value for mode in Mode],
        default=DEFAULTS.mode.value,
        help=(
            "chat: text messages broadcast as 'NAME: MESSAGE', with join and "
            "leave notices; relay: text and binary messages broadcast verbatim, "
            "no notices (default: %(default)s)"
        ),
    )
    start.add_argument(
        "--no-web",
        action="store_false",
        dest="web",
        help=(
            "serve no chat page: / is 404 (default: the page is at "
            "http://HOST:PORT/ in chat mode)"
        ),
    )
    start.add_argument(
        "--allowed-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        dest="allowed_origins",
        help=(
            "browser origin allowed to connect, such as https://chat.example.com; "
            "repeat for several, '*' allows any (default: the page's own origin; "
            "clients that send no Origin are always allowed)"
        ),
    )
    start.add_argument(
        "--trusted-proxy",
        type=network,
        action="append",
        metavar="CIDR",
        dest="trusted_proxies",
        help=(
            "reverse proxy whose Forwarded or X-Forwarded-For and "
            "X-Forwarded-Proto headers say who the client is, such as "
            "127.0.0.1; repeat for several (default: none, the headers are "
            "ignored)"
        ),
    )
    tls = start.add_argument_group("TLS")
    tls.add_argument(
        "--certfile",
        metavar="PEM",
        help=(
            "certificate chain (PEM) for wss:// and https://, with the key "
            "unless --keyfile is given (default: none, plain ws:// and http://)"
        ),
    )
    tls.add_argument(
        "--keyfile",
        metavar="PEM",
        help="private key (PEM) of the certificate, if not in --certfile",
    )
    tls.add_argument(
        "--keyfile-password-env",
        metavar="VAR",
        help="environment variable holding the key's password, if it has one",
    )
    identities = start.add_argument_group("signed identities")
    identities.add_argument(
        "--auth-secret-file",
        metavar="PATH",
        help=(
            "require a JSON Web Token signed with HS256 and the secret in this "
            "file (less one trailing newline; 32 bytes at least), as ?token= "
            "or Authorization: Bearer; its sub is the user's name and its exp "
            "ends the connection with 1008 (default: none, names are anonymous, "
            "as ?username= asks)"
        ),
    )
    operations = start.add_argument_group("health and metrics")
    operations.add_argument(
        "--metrics-allow",
        type=network,
        action="append",
        metavar="CIDR",
        dest="metrics_allow",
        help=(
            "addresses that may read /healthz, /readyz and /metrics, such as "
            "10.0.0.0/8; repeat for several; others get 403 (default: "
            "loopback only, 127.0.0.0/8 and ::1)"
        ),
    )
    room = start.add_argument_group("the room's log")
    room.add_argument(
        "--history-size",
        type=non_negative_int,
        default=DEFAULTS.history_size,
        metavar="N",
        help=("logged events kept for ?history= and ?since= (default: %(default)s)"),
    )
    room.add_argument(
        "--redis",
        metavar="URL",
        dest="redis_url",
        help=(
            "keep the log and the names in Redis, redis://[:PASSWORD@]HOST:PORT/DB "
            "or rediss:// for TLS: every server using the same Redis and prefix "
            "is one room (default: the log is in memory, this server alone)"
        ),
    )
    room.add_argument(
        "--workers",
        type=positive_int,
        default=DEFAULTS.workers,
        metavar="N",
        help=(
            "server processes sharing the port and, through --redis, the room: "
            "one per core; a parent restarts any that dies (default: %(default)s)"
        ),
    )
    room.add_argument(
        "--redis-prefix",
        default=DEFAULTS.redis_prefix,
        metavar="PREFIX",
        help="prefix of the room's Redis keys: one prefix, one room "
        "(default: %(default)s)",
    )
    limits = start.add_argument_group("limits")
    limits.add_argument(
        "--rate-limit",
        type=non_negative_int,
        default=DEFAULTS.rate_limit,
        metavar="N",
        help="messages a client may send per window, on average, and at once "
        "after a pause (a token bucket); 0 disables (default: %(default)s)",
    )
    limits.add_argument(
        "--rate-window",
        type=positive_float,
        default=DEFAULTS.rate_window,
        metavar="SECONDS",
        help="length of the rate window (default: %(default)s)",
    )
    limits.add_argument(
        "--max-message-bytes",
        type=positive_int,
        default=DEFAULTS.max_message_bytes,
        metavar="BYTES",
        help="larger messages close the connection with 1009 (default: %(default)s)",
    )
    limits.add_argument(
        "--max-message-chars",
        type=positive_int,
        default=DEFAULTS.max_message_chars,
        metavar="CHARS",
        help="longer messages are dropped with a notice (default: %(default)s)",
    )
    limits.add_argument(
        "--max-username-chars",
        type=positive_int,
        default=DEFAULTS.max_username_chars,
        metavar="CHARS",
        help="longest username accepted (default: %(default)s)",
    )
    limits.add_argument(
        "--queue-size",
        type=positive_int,
        default=DEFAULTS.queue_size,
        metavar="WRITES",
        help=(
            "writes a slow client may have pending (one per broadcast batch) "
            "before it is dropped (default: %(default)s)"
        ),
    )
    limits.add_argument(
        "--max-queue-bytes",
        type=positive_int,
        default=DEFAULTS.max_queue_bytes,
        metavar="BYTES",
        help="bytes a slow client may have pending before it is dropped "
        "(default: %(default)s)",
    )
    limits.add_argument(
        "--max-clients",
        type=positive_int,
        default=DEFAULTS.max_clients,
        metavar="N",
        help="further handshakes get 503; per process (default: %(default)s)",
    )
    limits.add_argument(
        "--max-clients-per-ip",
        type=non_negative_int,
        default=DEFAULTS.max_clients_per_ip,
        metavar="N",
        help="connections one address may hold, in their handshake or joined "
        "(an IPv6 address counts as its /64); further ones get 429; 0 disables "
        "(default: %(default)s)",
    )
    limits.add_argument(
        "--handshake-rate",
        type=non_negative_int,
        default=DEFAULTS.handshake_rate,
        metavar="N",
        help="new connections one address may open per second, and at once; "
        "further ones get 429; 0 disables (default: %(default)s)",
    )
    timing = start.add_argument_group("timing")
    timing.add_argument(
        "--ping-interval",
        type=positive_float,
        default=DEFAULTS.ping_interval,
        metavar="SECONDS",
        help="time between pings to each client (default: %(default)s)",
    )
    timing.add_argument(
        "--pong-timeout",
        type=positive_float,
        default=DEFAULTS.pong_timeout,
        metavar="SECONDS",
        help="a client silent this long (no pong) is dropped (default: %(default)s)",
    )
    timing.add_argument(
        "--write-timeout",
        type=positive_float,
        default=DEFAULTS.write_timeout,
        metavar="SECONDS",
        help="a client taking no data this long is dropped (default: %(default)s)",
    )
    timing.add_argument(
        "--batch-window",
        type=non_negative_float,
        default=DEFAULTS.batch_window,
        metavar="SECONDS",
        help=(
            "under load, the least time between two broadcast flushes; an idle "
            "server sends at once; 0 flushes every time (default: %(default)s)"
        ),
    )
    timing.add_argument(
        "--handshake-timeout",
        type=positive_float,
        default=DEFAULTS.handshake_timeout,
        metavar="SECONDS",
        help="a handshake not received within this is refused with 408 "
        "(default: %(default)s)",
    )
    timing.add_argument(
        "--close-timeout",
        type=positive_float,
        default=DEFAULTS.close_timeout,
        metavar="SECONDS",
        help="how long a closing handshake may take before the connection is "
        "cut; on SIGTERM, how long the server may take to deliver what it "
        "accepted and close every connection (default: %(default)s)",
    )
    start.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        default="info",
        help="messages are logged at debug level only (default: %(default)s)",
    )
    start.add_argument(
        "--log-format",
        choices=[each.value for each in LogFormat],
        default=LogFormat.TEXT.value,
        help=(
            "text: lines for people; json: one object per line, with ts, "
            "level, logger, message and the fields client, user, reason, code "
            "and status where they apply (default: %(default)s)"
        ),
    )
    start.set_defaults(run=_start)


def _add_connect(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    connect = commands.add_parser(
        "connect",
        help="join a server's chat from the terminal",
        description=(
            "Join a server's chat: print every message received, send every line "
            "typed. Ctrl+C or end of input leaves the chat. Name the server with "
            "--host and --port, or with --url, which also says whether to use "
            "TLS (wss://)."
        ),
    )

    def url(text: str) -> Endpoint:
        try:
            return parse_url(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    connect.add_argument(
        "--url",
        type=url,
        help=(
            "server to connect to, as ws://HOST[:PORT][/PATH], or wss://... for "
            "TLS; the port defaults to 80 for ws://, 443 for wss://, the path "
            "to /ws; not allowed with --host or --port (default: "
            "ws://HOST:PORT/ws from those)"
        ),
    )
    # No defaults here: --url excludes these only when they are given.
    connect.add_argument(
        "--host",
        help="server to connect to (default: $HOST, else localhost)",
    )
    connect.add_argument(
        "--port",
        type=port,
        help="server port (default: $PORT, else 8080)",
    )
    connect.add_argument(
        "--username",
        default=os.environ.get("USER_NAME", "anonymous"),
        help="name shown to others (default: $USER_NAME, else anonymous)",
    )
    tls = connect.add_argument_group("TLS", "With a wss:// --url.")
    trust = tls.add_mutually_exclusive_group()
    trust.add_argument(
        "--cafile",
        metavar="PEM",
        help=(
            "trust the certificate authorities in this PEM file, and only "
            "them, to vouch for the server's certificate (default: the "
            "system's)"
        ),
    )
    trust.add_argument(
        "--insecure",
        action="store_true",
        help=(
            "check no certificate: anyone on the way can read and change the "
            "chat; for self-signed test servers only"
        ),
    )
    connect.set_defaults(run=_connect, usage_error=connect.error)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the command line and exit with its status."""
    args = build_parser().parse_args(argv)
    run: Callable[[argparse.Namespace], int] = args.run
    sys.exit(run(args))


def _start(args: argparse.Namespace) -> int:
    config = _server_config(args)
    if config.workers > 1 and config.redis_url is None:
        build_parser().error(
            "--workers needs --redis: the workers share the room there"
        )
    log = LogSettings(
        level=args.log_level.upper(),
        format=LogFormat(args.log_format),
        workers=config.workers > 1,
    )
    configure(log)
    try:
        if config.workers == 1:
            serve(config, _print_ready)
            return 0
        return Supervisor(config, log).run(_print_ready)
    except StartFailed as exc:
        print(f"broadcast-server: {exc}", file=sys.stderr)
        return 1


def _server_config(args: argparse.Namespace) -> ServerConfig:
    """The server's settings from the options of ``start``, named as its fields."""
    values = {
        field.name: getattr(args, field.name)
        for field in dataclasses.fields(ServerConfig)
    }
    values["mode"] = Mode(args.mode)
    values["allowed_origins"] = tuple(args.allowed_origins)
    # None when not given: argparse would append to a default list.
    for name in ("metrics_allow", "trusted_proxies"):
        given = getattr(args, name)
        values[name] = getattr(DEFAULTS, name) if given is None else tuple(given)
    return ServerConfig(**values)


def _print_ready(port: int) -> None:
    print(READY_LINE.format(port=port), flush=True)


def _connect(args: argparse.Namespace) -> int:
    usage_error: Callable[[str], NoReturn] = args.usage_error
    endpoint: Endpoint | None = args.url
    if endpoint is None:
        port_number = args.port
        if port_number is None:
            try:
                port_number = port(os.environ.get("PORT", str(DEFAULT_PORT)))
            except argparse.ArgumentTypeError as exc:
                usage_error(f"argument --port: {exc}")
        host = args.host
        if host is None:
            host = os.environ.get("HOST", "localhost")
        endpoint = Endpoint(host, port_number)
    else:
        for option in ("host", "port"):
            if getattr(args, option) is not None:
                usage_error(f"argument --url: not allowed with argument --{option}")
    if not endpoint.secure:
        for option in ("cafile", "insecure"):
            if getattr(args, option):
                usage_error(f"argument --{option}: only for a wss:// --url")
    try:
        return run_client(
            endpoint, args.username, cafile=args.cafile, insecure=args.insecure
        )
    except KeyboardInterrupt:  # while connecting
        return 130


# Argument types, also used by the benchmark and conformance tools.


def port(text: str) -> int:
    """A TCP port number; 0 asks for any free port."""
    number = _integer(text)
    if not 0 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"port must be between 0 and 65535: {text}")
    return number


def network(text: str) -> Network:
    """An address block such as 10.0.0.0/8; a lone address is a block of one."""
    try:
        return parse_network(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def positive_int(text: str) -> int:
    """An integer above 0."""
    value = _integer(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer: {text}")
    return value


def non_negative_int(text: str) -> int:
    """An integer of 0 or more."""
    value = _integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more: {text}")
    return value


def positive_float(text: str) -> float:
    """A finite number above 0."""
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number: {text}")
    return value


def non_negative_float(text: str) -> float:
    """A finite number of 0 or more."""
    value = _number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more: {text}")
    return value


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text}") from None


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"not a finite number: {text}")
    return value
