"""The chat page over plain HTTP, on the port of /ws: real sockets, raw bytes.

The contract is the HTTP part of the chat page's specification: four paths
served with validators and security headers, 304, 404 and 405, nothing in
relay mode or with ``web=False``, every exchange bounded by the handshake
timeout.
"""

from __future__ import annotations

import contextlib
import email.utils
import html.parser
import importlib.resources
import logging
import re
import select
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from broadcast_sync.config import Mode
from broadcast_sync.server import BroadcastServer
from tests.conftest import UNIT, http_exchange, join, run_server
from tests.test_handshake import (
    Response,
    parse_response,
    reader_thread_name,
    refusal,
    upgrade_request,
)
from tests.test_history import open_json, receive_welcome

#: The paths of the page and their exact Content-Type.
PAGES = {
    "/": "text/html; charset=utf-8",
    "/static/chat.js": "text/javascript; charset=utf-8",
    "/static/chat.css": "text/css; charset=utf-8",
    "/static/icon.svg": "image/svg+xml",
}
#: The package data file behind each static path.
ASSET_FILES = {
    "/static/chat.js": "chat.js",
    "/static/chat.css": "chat.css",
    "/static/icon.svg": "icon.svg",
}
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
#: Headers on every 200 and 304 of the page.
SECURITY_HEADERS = {
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "content-security-policy": CSP,
}
#: A strong entity tag (RFC 9110, section 8.8.3): quoted, no ``W/``.
STRONG_ETAG = re.compile(r'"[\x21\x23-\x7e\x80-\xff]*"')
#: How much later than its deadline the server may act, on a loaded machine.
SLACK = 1.5 * UNIT
#: The handshake timeout of the timing tests.
SHORT_TIMEOUT = 0.5 * UNIT
#: The headers of upgrade_request that a plain page request leaves out.
NOT_AN_UPGRADE: dict[str, str | None] = {
    "Upgrade": None,
    "Connection": None,
    "Sec-WebSocket-Key": None,
    "Sec-WebSocket-Version": None,
}
#: What a browser sends with a page request (besides Host).
BROWSER_HEADERS = {
    "User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Chrome/130.0",
    "Accept": "text/html,application/xhtml+xml,*/*;q=0.8",
    "Accept-Encoding": "gzip, deflate, br",
    "Accept-Language": "en-GB,en;q=0.9",
    "Connection": "keep-alive",
}


def page_request(
    target: str = "/",
    method: str = "GET",
    headers: Mapping[str, str] | None = None,
    body: bytes = b"",
) -> bytes:
    """The bytes of a plain HTTP/1.1 request (not an upgrade) with ``headers``."""
    fields: dict[str, str | None] = {**NOT_AN_UPGRADE, **(headers or {})}
    if body:
        fields["Content-Length"] = str(len(body))
    return upgrade_request(
        target, start=f"{method} {{target}} HTTP/1.1", headers=fields, body=body
    )


def fetch(port: int, request: bytes) -> Response:
    """Send ``request``, read the answer up to the server's close, parse it."""
    return parse_response(http_exchange(port, request))


def get(port: int, target: str, headers: Mapping[str, str] | None = None) -> Response:
    """GET ``target``."""
    return fetch(port, page_request(target, headers=headers))


def assert_served(response: Response, content_type: str) -> None:
    """``response`` is a 200 of the page with every header of the contract."""
    assert (response.status, response.phrase) == (200, "OK")
    headers = response.headers
    assert headers["content-type"] == content_type
    assert int(headers["content-length"]) == len(response.body)
    assert STRONG_ETAG.fullmatch(headers["etag"]), headers["etag"]
    assert headers["cache-control"] == "no-cache"
    assert headers["connection"] == "close"
    assert_imf_date(headers["date"])
    for name, value in SECURITY_HEADERS.items():
        assert headers.get(name) == value, name


def assert_imf_date(value: str) -> None:
    """``value`` is an HTTP date in the IMF-fixdate form (RFC 9110, 5.6.7)."""
    parsed = email.utils.parsedate_to_datetime(value)
    assert email.utils.format_datetime(parsed, usegmt=True) == value


class PageParser(html.parser.HTMLParser):
    """Every element of a page with its attributes, and its scripts' text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.script_text = ""
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        """Record the element; a script's content follows."""
        self.elements.append((tag, dict(attrs)))
        if tag == "script":
            self._in_script = True

    def handle_endtag(self, tag: str) -> None:
        """A script ends."""
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        """Keep text inside a script."""
        if self._in_script:
            self.script_text += data

    def all(self, tag: str) -> list[dict[str, str | None]]:
        """The attributes of every ``tag`` element, in order."""
        return [attrs for name, attrs in self.elements if name == tag]


def parse_page(body: bytes) -> PageParser:
    """The elements of an HTML page given as UTF-8 bytes."""
    parser = PageParser()
    parser.feed(body.decode("utf-8"))
    parser.close()
    return parser


def html_attributes(port: int) -> dict[str, str | None]:
    """The attributes of the ``<html>`` element of the page that ``port`` serves."""
    response = get(port, "/")
    assert response.status == 200
    (attributes,) = parse_page(response.body).all("html")
    return attributes


def same_origin_path(reference: str | None) -> str:
    """The path that a reference of the page at ``/`` points to, on its origin."""
    assert reference, "an empty reference"
    parts = urllib.parse.urlsplit(urllib.parse.urljoin("/", reference))
    assert not parts.scheme, reference
    assert not parts.netloc, reference
    return parts.path


def package_file(name: str) -> bytes:
    """A file of the page, as the package holds it."""
    return (importlib.resources.files("broadcast_sync") / "web" / name).read_bytes()


def etag_of(port: int, path: str) -> str:
    """The ETag of ``path``."""
    response = get(port, path)
    assert response.status == 200
    return response.headers["etag"]


@contextlib.contextmanager
def connection(port: int) -> Iterator[socket.socket]:
    """A client socket to ``port``, always closed."""
    with socket.create_connection(("127.0.0.1", port), timeout=5 * UNIT) as sock:
        yield sock


def read_to_eof(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (within the socket timeout)."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def thread_named(name: str) -> threading.Thread | None:
    """The running thread called ``name``, if any."""
    for thread in threading.enumerate():
        if thread.name == name:
            return thread
    return None


def assert_thread_ends_by(name: str, deadline: float) -> None:
    """The thread called ``name``, if it still runs, ends by ``deadline``."""
    thread = thread_named(name)
    if thread is not None:
        thread.join(max(deadline - time.monotonic(), 0))
        assert not thread.is_alive(), f"{name} still running"


# The four paths


@pytest.mark.parametrize(("path", "content_type"), PAGES.items())
def test_get_serves_each_path(
    server: BroadcastServer, path: str, content_type: str
) -> None:
    """GET of each path is 200 with its type, length, tag and every header."""
    response = get(server.port, path)
    assert_served(response, content_type)
    assert response.body


def test_browser_request_gets_the_page_and_a_close(server: BroadcastServer) -> None:
    """A browser's keep-alive request still gets ``Connection: close`` and EOF."""
    response = get(server.port, "/", headers=BROWSER_HEADERS)
    assert_served(response, PAGES["/"])


@pytest.mark.parametrize(("path", "file"), ASSET_FILES.items())
def test_assets_are_the_package_files(
    server: BroadcastServer, path: str, file: str
) -> None:
    """Each static path serves its file of the package, byte for byte."""
    assert get(server.port, path).body == package_file(file)


def test_icon_is_svg(server: BroadcastServer) -> None:
    """The icon is an SVG document."""
    assert b"<svg" in get(server.port, "/static/icon.svg").body


@pytest.mark.parametrize("file", ["index.html", "chat.js", "chat.css", "icon.svg"])
def test_page_is_package_data(file: str) -> None:
    """The page's four files are package data in ``broadcast_sync/web``."""
    assert package_file(file)


def test_index_references_script_and_style(server: BroadcastServer) -> None:
    """The page loads /static/chat.js and /static/chat.css from its own origin."""
    page = parse_page(get(server.port, "/").body)
    scripts = [same_origin_path(attrs.get("src")) for attrs in page.all("script")]
    assert "/static/chat.js" in scripts
    stylesheets = [
        same_origin_path(attrs.get("href"))
        for attrs in page.all("link")
        if "stylesheet" in (attrs.get("rel") or "").lower().split()
    ]
    assert "/static/chat.css" in stylesheets


def test_index_has_nothing_inline(server: BroadcastServer) -> None:
    """No inline script, handler or style: the CSP would block them."""
    page = parse_page(get(server.port, "/").body)
    assert page.all("script"), "no script at all"
    for attrs in page.all("script"):
        assert attrs.get("src"), f"a script without src: {attrs}"
    assert not page.script_text.strip()
    assert not page.all("style")
    for tag, attrs in page.elements:
        assert "style" not in attrs, f"style= on <{tag}>"
        handlers = [name for name in attrs if name.startswith("on")]
        assert not handlers, f"{handlers} on <{tag}>"


@pytest.mark.parametrize(
    ("options", "history", "max_name"),
    [
        pytest.param({}, "50", "50", id="defaults"),
        pytest.param({"history_size": 10}, "10", "50", id="small-history"),
        pytest.param({"history_size": 50}, "50", "50", id="history-50"),
        pytest.param({"history_size": 51}, "50", "50", id="history-51"),
        pytest.param({"max_username_chars": 20}, "50", "20", id="short-names"),
    ],
)
def test_html_carries_the_limits(
    options: dict[str, Any], history: str, max_name: str
) -> None:
    """``<html>`` has data-history = min(50, history_size), data-max-name."""
    with run_server(**options) as server:
        attributes = html_attributes(server.port)
    assert attributes.get("data-history") == history
    assert attributes.get("data-max-name") == max_name


def test_query_string_is_ignored(server: BroadcastServer) -> None:
    """``/?x=1`` is ``/``: the same page, the same tag."""
    plain = get(server.port, "/")
    with_query = get(server.port, "/?x=1")
    assert_served(with_query, PAGES["/"])
    assert with_query.body == plain.body
    assert with_query.headers["etag"] == plain.headers["etag"]


def test_one_request_per_connection(server: BroadcastServer) -> None:
    """A second, pipelined request is not answered: one response, then EOF."""
    request = page_request("/") + page_request("/static/chat.css")
    response = fetch(server.port, request)
    assert_served(response, PAGES["/"])  # its Content-Length covers the rest


# HEAD


@pytest.mark.parametrize(("path", "content_type"), PAGES.items())
def test_head_has_the_headers_of_get(
    server: BroadcastServer, path: str, content_type: str
) -> None:
    """HEAD answers GET's status and headers (full Content-Length), no body."""
    got = get(server.port, path)
    head = fetch(server.port, page_request(path, "HEAD"))
    assert (head.status, head.phrase) == (200, "OK")
    assert head.body == b""
    assert_imf_date(head.headers["date"])
    assert {**head.headers, "date": got.headers["date"]} == got.headers
    assert head.headers["content-type"] == content_type
    assert int(head.headers["content-length"]) == len(got.body)


# Validators


def assert_not_modified(response: Response, etag: str) -> None:
    """``response`` is a 304 for ``etag``, with no body and no length."""
    assert (response.status, response.phrase) == (304, "Not Modified")
    assert response.headers["etag"] == etag
    assert response.headers["cache-control"] == "no-cache"
    for name, value in SECURITY_HEADERS.items():
        assert response.headers.get(name) == value, name
    assert "content-length" not in response.headers
    assert response.body == b""


@pytest.mark.parametrize(
    "if_none_match",
    [
        pytest.param("{tag}", id="exact"),
        pytest.param("W/{tag}", id="weak"),
        pytest.param('"other", {tag}', id="list"),
        pytest.param('"a",{tag} , "b"', id="list-spaces"),
        pytest.param('W/"other", W/{tag}', id="list-weak"),
        pytest.param("*", id="star"),
    ],
)
def test_matching_tag_is_304(server: BroadcastServer, if_none_match: str) -> None:
    """If-None-Match with the tag, weak, in a list, or ``*`` is 304."""
    etag = etag_of(server.port, "/")
    value = if_none_match.format(tag=etag)
    response = get(server.port, "/", headers={"If-None-Match": value})
    assert_not_modified(response, etag)


@pytest.mark.parametrize(
    "if_none_match",
    [
        pytest.param('"other"', id="other"),
        pytest.param('W/"other"', id="weak-other"),
        pytest.param('"a", "b"', id="list-without"),
        pytest.param('"x{bare}"', id="longer"),
    ],
)
def test_other_tag_is_200(server: BroadcastServer, if_none_match: str) -> None:
    """If-None-Match without the page's tag gets the page."""
    etag = etag_of(server.port, "/")
    value = if_none_match.format(bare=etag.strip('"'))
    response = get(server.port, "/", headers={"If-None-Match": value})
    assert_served(response, PAGES["/"])


@pytest.mark.parametrize("path", PAGES)
def test_every_path_answers_304(server: BroadcastServer, path: str) -> None:
    """Each path has a tag of its own that If-None-Match matches."""
    etag = etag_of(server.port, path)
    response = get(server.port, path, headers={"If-None-Match": etag})
    assert_not_modified(response, etag)


def test_tags_are_stable_and_distinct(server: BroadcastServer) -> None:
    """A path's tag is the same twice; the four paths' tags all differ."""
    first = {path: etag_of(server.port, path) for path in PAGES}
    second = {path: etag_of(server.port, path) for path in PAGES}
    assert first == second
    assert len(set(first.values())) == len(PAGES)


def test_tag_follows_the_page_content() -> None:
    """A strong tag changes with the bytes: pages with other limits differ."""
    with run_server() as default, run_server(history_size=10) as small:
        pages = [get(each.port, "/") for each in (default, small)]
    assert pages[0].body != pages[1].body
    assert pages[0].headers["etag"] != pages[1].headers["etag"]


# 405 and 404


@pytest.mark.parametrize("path", ["/", "/static/chat.js"])
@pytest.mark.parametrize(
    ("method", "body"),
    [
        pytest.param("POST", b"hello", id="POST"),
        pytest.param("PUT", b"", id="PUT"),
        pytest.param("DELETE", b"", id="DELETE"),
        pytest.param("OPTIONS", b"", id="OPTIONS"),
    ],
)
def test_other_methods_are_405(
    server: BroadcastServer, path: str, method: str, body: bytes
) -> None:
    """Another method on a served path is 405 with ``Allow: GET, HEAD``."""
    response = refusal(server.port, page_request(path, method, body=body))
    assert (response.status, response.phrase) == (405, "Method Not Allowed")
    assert response.headers["allow"] == "GET, HEAD"
    assert response.text == f"method not allowed: {method}\n"


@pytest.mark.parametrize(
    ("target", "path"),
    [
        pytest.param("/index.html", "/index.html", id="index.html"),
        pytest.param("/static/", "/static/", id="static-dir"),
        pytest.param("/static", "/static", id="static"),
        pytest.param("/static/../chat.js", "/static/../chat.js", id="dot-dot"),
        pytest.param("/static/nope.js", "/static/nope.js", id="unknown-asset"),
        pytest.param("/static/chat.js/", "/static/chat.js/", id="trailing-slash"),
        pytest.param("/Static/chat.js", "/Static/chat.js", id="case"),
        pytest.param("/favicon.ico", "/favicon.ico", id="favicon"),
        pytest.param("/nope?x=1", "/nope", id="query"),
    ],
)
def test_other_paths_are_404(server: BroadcastServer, target: str, path: str) -> None:
    """Any other path is 404 naming the path, without its query."""
    response = refusal(server.port, page_request(target))
    assert (response.status, response.phrase) == (404, "Not Found")
    assert response.text == f"no such path: {path}\n"


def test_other_method_on_other_path_is_404(server: BroadcastServer) -> None:
    """405 is for served paths: POST to another path is 404."""
    response = refusal(server.port, page_request("/nope", "POST", body=b"hello"))
    assert response.status == 404
    assert response.text == "no such path: /nope\n"


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"web": False}, id="no-web"),
        pytest.param({"mode": Mode.RELAY}, id="relay"),
    ],
)
@pytest.mark.parametrize("path", PAGES)
def test_no_page_without_web_or_in_relay(options: dict[str, Any], path: str) -> None:
    """With ``web=False`` or in relay mode, the page's paths are 404."""
    with run_server(**options) as server:
        response = refusal(server.port, page_request(path))
    assert response.status == 404
    assert response.text == f"no such path: {path}\n"


@pytest.mark.parametrize(
    ("request_", "expected"),
    [
        pytest.param(page_request("/x"), "404 no such path: /x", id="404"),
        pytest.param(
            page_request("/", "POST", body=b"hello"),
            "405 method not allowed: POST",
            id="405",
        ),
    ],
)
def test_refusals_are_logged_once(
    server: BroadcastServer,
    caplog: pytest.LogCaptureFixture,
    request_: bytes,
    expected: str,
) -> None:
    """A 404 or a 405 is one INFO line ``rejected ADDRESS: STATUS REASON``."""
    caplog.set_level(logging.INFO, logger="broadcast_sync.server")
    with connection(server.port) as sock:
        address = "{}:{}".format(*sock.getsockname()[:2])
        sock.sendall(request_)
        assert parse_response(read_to_eof(sock)).status == int(expected[:3])
        thread_name = reader_thread_name(sock)
    # The line is written by the connection's thread: once it has ended.
    assert_thread_ends_by(thread_name, time.monotonic() + 5 * UNIT)
    lines = [
        record
        for record in caplog.records
        if record.name == "broadcast_sync.server"
        and re.search(rf"\b{re.escape(address)}\b", record.getMessage())
    ]
    assert [(r.levelno, r.getMessage()) for r in lines] == [
        (logging.INFO, f"rejected {address}: {expected}")
    ]


# WebSocket, next to the page


def test_websocket_still_works_with_the_page(server: BroadcastServer) -> None:
    """With the page served, /ws still upgrades and chats."""
    alice = join(server, "alice")
    alice.close()


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        pytest.param({"max_message_chars": 123}, 123, id="123"),
        pytest.param({}, 500, id="default"),
    ],
)
def test_welcome_carries_max_message_chars(
    options: dict[str, Any], expected: int
) -> None:
    """The JSON welcome tells the page the message limit."""
    with run_server(**options) as server, contextlib.ExitStack() as stack:
        welcome = receive_welcome(open_json(stack, server, "a"))
    assert welcome["max_message_chars"] == expected


# Timeouts


def test_client_that_never_reads_is_cut() -> None:
    """A client that never reads nor closes is cut at handshake_timeout."""
    with (
        run_server(handshake_timeout=SHORT_TIMEOUT) as server,
        connection(server.port) as sock,
    ):
        started = time.monotonic()
        sock.sendall(page_request("/"))
        # Readable: the server has written, so its thread exists. Not read.
        readable, _, _ = select.select([sock], [], [], 5 * UNIT)
        assert readable, "no answer"
        assert_thread_ends_by(reader_thread_name(sock), started + SHORT_TIMEOUT + SLACK)
        response = parse_response(read_to_eof(sock))  # then EOF
        assert time.monotonic() - started < SHORT_TIMEOUT + SLACK
    assert_served(response, PAGES["/"])


def test_half_request_line_is_408() -> None:
    """Half a request line for the page is 408 at handshake_timeout, thread gone.

    test_handshake covers a silent client and a cut header for /ws; this is
    the page's side, timed.
    """
    with (
        run_server(handshake_timeout=SHORT_TIMEOUT) as server,
        connection(server.port) as sock,
    ):
        started = time.monotonic()
        sock.sendall(b"GET /sta")
        response = parse_response(read_to_eof(sock))
        elapsed = time.monotonic() - started
        assert (response.status, response.phrase) == (408, "Request Timeout")
        assert response.text == "handshake timed out\n"
        assert 0.8 * SHORT_TIMEOUT <= elapsed < SHORT_TIMEOUT + SLACK
        assert_thread_ends_by(reader_thread_name(sock), started + SHORT_TIMEOUT + SLACK)
