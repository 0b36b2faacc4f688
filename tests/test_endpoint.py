"""Where the terminal client connects: ``--url``, ``--host`` and ``--port``.

The parsing of a URL is pure logic, tested directly; the options are tested
through the command line, and a URL's path through a real server.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from broadcast_sync.cli import main
from broadcast_sync.endpoint import Endpoint, parse_url
from broadcast_sync.server import BroadcastServer
from tests.test_client import PROCESS_TIMEOUT, REPO, client_env

#: URLs and the endpoints they name.
VALID_URLS = [
    ("ws://127.0.0.1:8080/ws", Endpoint("127.0.0.1", 8080)),
    ("wss://chat.example.com/ws", Endpoint("chat.example.com", 443, secure=True)),
    ("ws://chat.example.com", Endpoint("chat.example.com", 80)),
    ("WSS://Chat.Example.com:8443", Endpoint("chat.example.com", 8443, secure=True)),
    ("wss://[::1]:8443/ws", Endpoint("::1", 8443, secure=True)),
    (
        "wss://example.com/chat/ws",
        Endpoint("example.com", 443, "/chat/ws", secure=True),
    ),
    ("ws://h/a%20b", Endpoint("h", 80, "/a%20b")),
]

#: Text that names no endpoint, and what the error says.
INVALID_URLS = [
    ("http://127.0.0.1:8080/ws", "not a ws:// or wss:// URL"),
    ("127.0.0.1:8080", "not a ws:// or wss:// URL"),
    ("ws:///ws", "no host in"),
    ("ws://user:secret@h/ws", "a user name or password"),
    ("ws://h/ws?username=bob", "no query or fragment"),
    ("ws://h/ws?", "no query or fragment"),
    ("ws://h/ws#top", "no query or fragment"),
    ("ws://h:0/ws", "invalid port"),
    ("ws://h:65536/ws", "invalid port"),
    ("ws://h:http/ws", "invalid port"),
    ("ws://h/a b", "percent-encode"),
    ("ws://h/caf\u00e9", "percent-encode"),
]


@pytest.mark.parametrize(
    ("text", "expected"), VALID_URLS, ids=[u for u, _ in VALID_URLS]
)
def test_parse_url(text: str, expected: Endpoint) -> None:
    """A ws:// or wss:// URL gives its host, port (80 or 443 by default),
    path (/ws by default) and whether it is TLS."""
    assert parse_url(text) == expected


@pytest.mark.parametrize(
    ("text", "message"), INVALID_URLS, ids=[u for u, _ in INVALID_URLS]
)
def test_parse_url_refuses(text: str, message: str) -> None:
    """Anything but ws[s]://HOST[:PORT][/PATH] is refused, saying why."""
    with pytest.raises(ValueError, match=message):
        parse_url(text)


def test_endpoint_shows_as_given() -> None:
    """A plain endpoint on /ws shows as HOST:PORT, like --host and --port;
    any other as its URL; an IPv6 address is in brackets."""
    assert Endpoint("h", 8080).shown == "h:8080"
    assert Endpoint("h", 443, secure=True).shown == "wss://h:443/ws"
    assert Endpoint("h", 80, "/chat").shown == "ws://h:80/chat"
    assert Endpoint("::1", 8443, secure=True).address == "[::1]:8443"


def test_target_puts_the_query_on_the_path() -> None:
    """The chat's request target keeps its query, on the endpoint's path."""
    endpoint = Endpoint("h", 80, "/chat/ws")
    assert endpoint.target("/ws?username=bob&format=json") == (
        "/chat/ws?username=bob&format=json"
    )


# The options


#: Command lines that misuse the options, and the error message.
USAGE_ERRORS = [
    (["--url", "http://h/ws"], "argument --url: not a ws:// or wss:// URL"),
    (["--url", "ws://h/ws", "--host", "h"], "--url: not allowed with argument --host"),
    (["--url", "ws://h/ws", "--port", "80"], "--url: not allowed with argument --port"),
    (["--cafile", "ca.pem"], "argument --cafile: only for a wss:// --url"),
    (["--url", "ws://h/ws", "--insecure"], "--insecure: only for a wss:// --url"),
    (
        ["--url", "wss://h/ws", "--cafile", "ca.pem", "--insecure"],
        "argument --insecure: not allowed with argument --cafile",
    ),
]


@pytest.mark.parametrize(
    ("argv", "message"), USAGE_ERRORS, ids=[" ".join(a) for a, _ in USAGE_ERRORS]
)
def test_misused_options_are_usage_errors(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """--url excludes --host and --port; --cafile and --insecure need a
    wss:// URL, and exclude each other: exit 2, saying so."""
    with pytest.raises(SystemExit) as exit_info:
        main(["connect", *argv])
    assert exit_info.value.code == 2
    errors = capsys.readouterr().err
    assert errors.startswith("usage: broadcast-server connect")
    assert message in errors.splitlines()[-1]


def run_connect(
    *options: str, text: str, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run ``connect`` with ``options``, ``text`` as input, and ``env``."""
    return subprocess.run(
        [sys.executable, "-m", "broadcast_sync", "connect", *options],
        input=text,
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT,
        env=client_env(**env),
        cwd=REPO,
        check=False,
    )


def test_url_wins_over_the_environment(server: BroadcastServer) -> None:
    """--url is used even with HOST and PORT set (an invalid PORT too):
    the variables are only defaults of --host and --port."""
    result = run_connect(
        "--url",
        f"ws://127.0.0.1:{server.port}",
        "--username",
        "bot",
        text="by url\n",
        HOST="192.0.2.1",
        PORT="http",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"Connecting to 127.0.0.1:{server.port} as bot...",
        "Server: bot has joined the chat",
        "bot: by url",
    ]


def test_url_path_is_the_request_path(server: BroadcastServer) -> None:
    """The URL's path is the one requested: a path the server does not serve
    is refused with its 404, in one line."""
    result = run_connect(
        "--url", f"ws://127.0.0.1:{server.port}/chat", "--username", "bot", text=""
    )
    assert result.returncode == 1
    assert (
        result.stdout == f"Connecting to ws://127.0.0.1:{server.port}/chat as bot...\n"
    )
    assert result.stderr == (
        "broadcast-server: the server refused the connection: 404 no such path: /chat\n"
    )
