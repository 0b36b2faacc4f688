"""The chat page in a real browser, against a real server in this process.

One Chromium for the whole file (tests/browser.py); each page in a context
of its own, and every test fails if a page logged an error it did not
provoke on purpose: the Content-Security-Policy holds if nothing was
refused. WebSocket clients (tests/wsclient.py) play the terminal users.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Locator, Page, Route, WebSocketRoute, expect

from broadcast_sync.config import ServerConfig
from broadcast_sync.metrics import Disconnect
from broadcast_sync.server import BroadcastServer
from tests.browser import Pages, browser_fixture, pages_fixture  # noqa: F401
from tests.conftest import UNIT, join, receive_text, run_server
from tests.wsclient import ChatClient

#: The Content-Security-Policy header of the page, as the spec gives it.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
#: Milliseconds a page may take to reconnect: backoff up to 10 s, with jitter.
RECONNECT_MS = 15000 * UNIT
#: What Chromium logs when a WebSocket cannot connect (or is refused).
WEBSOCKET_FAILED = (
    r"^console error: WebSocket connection to 'ws://127\.0\.0\.1:\d+/ws\?[^']*' "
    r"failed"
)
#: What Chromium logs when the server refuses a WebSocket (here: its origin).
WEBSOCKET_FORBIDDEN = (
    WEBSOCKET_FAILED
    + r": Error during WebSocket handshake: Unexpected response code: 403"
)
#: What Chromium logs when a request of the page gets an error status.
RESOURCE_REFUSED = (
    r"^console error: Failed to load resource: the server responded with a "
    r"status of {status}"
)
#: Markup that would run if a page inserted names or messages as HTML.
XSS = (
    "<img src=x onerror=window.__xss=1>",
    "<script>window.__xss=1</script>",
    "javascript:alert(1)",
)
#: An origin of no server: the browser gets its page from a route. HTTPS:
#: Chromium lets no plain-HTTP page of another site reach 127.0.0.1 (Local
#: Network Access), and grants the permission to secure origins only.
OTHER_ORIGIN = "https://other.test"
#: Opens a WebSocket to the server at port ``port``; resolves to "open",
#: "close", or "neither" after ``timeout`` ms.
TRY_WEBSOCKET = """([port, timeout]) => new Promise(resolve => {
    const ws = new WebSocket(`ws://127.0.0.1:${port}/ws?username=x`);
    ws.onopen = () => { resolve("open"); ws.close(); };
    ws.onclose = () => resolve("close");
    setTimeout(() => resolve("neither"), timeout);
})"""
#: Scrolls the element to the top and waits two frames: its scroll event
#: has been handled by then.
SCROLL_TO_TOP = """async element => {
    element.scrollTop = 0;
    for (let frame = 0; frame < 2; frame++) {
        await new Promise(requestAnimationFrame);
    }
}"""
#: The width of the page's content, and the elements wider than the window.
SIDEWAYS = """() => ({
    width: document.documentElement.scrollWidth,
    wider: [...document.querySelectorAll("body *")]
        .filter(e => e.getBoundingClientRect().right > innerWidth)
        .map(e => e.tagName.toLowerCase() + (e.id ? "#" + e.id : "")
                  + [...e.classList].map(c => "." + c).join("")),
})"""

#: Where the message list is, between the status bar and the message box.
LIST_BOUNDS = """() => {
    const box = id => document.getElementById(id).getBoundingClientRect();
    return {
        bar: box("status").bottom,
        top: box("messages").top,
        bottom: box("messages").bottom,
        box: box("message").top,
    };
}"""


@pytest.fixture
def screenshots(tmp_path: Path) -> Path:
    """Where screenshots go: $BROADCAST_SCREENSHOTS, else the test's tmp_path."""
    directory = Path(os.environ.get("BROADCAST_SCREENSHOTS", tmp_path))
    directory.mkdir(parents=True, exist_ok=True)
    return directory


@contextlib.contextmanager
def server_on(port: int) -> Iterator[BroadcastServer]:
    """A new server on ``port``, where another one ran: always stopped."""
    server = BroadcastServer(ServerConfig(host="127.0.0.1", port=port))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def chat_url(server: BroadcastServer) -> str:
    """The address of the server's chat page."""
    return f"http://127.0.0.1:{server.port}/"


def open_chat(
    pages: Pages, server: BroadcastServer, width: int = 1280, height: int = 800
) -> Page:
    """A new page showing the server's chat page."""
    page = pages.new(width, height)
    page.goto(chat_url(server))
    return page


def expect_state(page: Page, state: str, timeout: float | None = None) -> None:
    """Wait for the status to be ``state``."""
    expect(page.locator("#status")).to_have_attribute(
        "data-state", state, timeout=timeout
    )


def enter_chat(page: Page, name: str) -> None:
    """Type ``name`` in the join form, press Enter, wait to be connected."""
    page.locator("#name").fill(name)
    page.locator("#name").press("Enter")
    expect_state(page, "connected")
    expect(page.locator("#chat")).to_be_visible()


def send(page: Page, text: str) -> None:
    """Type ``text`` in the message box and press Enter."""
    page.locator("#message").fill(text)
    page.locator("#message").press("Enter")


def exactly(text: str) -> re.Pattern[str]:
    """A pattern matching ``text`` and nothing more."""
    return re.compile(f"^{re.escape(text)}$")


def message_texts(page: Page) -> Locator:
    """The texts of the chat messages shown, in order."""
    return page.locator("#messages li.message .text")


def message(page: Page, text: str) -> Locator:
    """The chat messages whose text is ``text``."""
    return page.locator("#messages li.message").filter(
        has=page.locator(".text", has_text=exactly(text))
    )


def event(page: Page, text: str) -> Locator:
    """The join or leave entries whose text is ``text``."""
    return page.locator("#messages li.event .text", has_text=exactly(text))


def marker(page: Page, kind: str) -> Locator:
    """The markers of this ``kind`` (history, gap, renamed, reconnected)."""
    return page.locator(f'#messages li.marker[data-marker="{kind}"]')


def people(page: Page) -> Locator:
    """The entries of the people list, in order."""
    return page.locator("#people-list li")


def clock_times(since: float) -> set[str]:
    """Every HH:MM (UTC, the pages' time zone) from ``since`` until now."""
    return {
        time.strftime("%H:%M", time.gmtime(moment))
        for moment in range(int(since), int(time.time()) + 1)
    }


def expect_message(page: Page, sender: str, text: str, *, own: bool) -> None:
    """Wait for one message ``text`` from ``sender``, marked own or not."""
    entry = message(page, text)
    expect(entry).to_have_count(1)
    expect(entry.locator(".sender")).to_have_text(exactly(sender))
    expect(entry.locator("time")).to_have_text(re.compile(r"^\d\d:\d\d$"))
    own_class = re.compile(r"(^|\s)own(\s|$)")
    if own:
        expect(entry).to_have_class(own_class)
    else:
        expect(entry).not_to_have_class(own_class)


def shown_messages(page: Page) -> list[list[str]]:
    """[sender, text] of each message shown, their textContent as is."""
    shown: list[list[str]] = page.eval_on_selector_all(
        "#messages li.message",
        """entries => entries.map(entry => [
            entry.querySelector(".sender").textContent,
            entry.querySelector(".text").textContent,
        ])""",
    )
    return shown


def text_contents(locator: Locator) -> list[str]:
    """The textContent of each element, as is."""
    texts: list[str] = locator.evaluate_all("all => all.map(e => e.textContent)")
    return texts


def join_as(server: BroadcastServer, name: str) -> ChatClient:
    """A WebSocket client joined as ``name``, which may need quoting."""
    return join(server, urllib.parse.quote(name, safe=""))


def cut(server: BroadcastServer, name: str) -> None:
    """Cut ``name``'s connection on the server's side, as a network would."""
    sessions = [member for member in server.hub.members() if member.name == name]
    assert sessions, f"{name} is not connected"
    for session in sessions:
        session.abort(Disconnect.LOST, "test")


def assert_no_sideways_scroll(page: Page) -> None:
    """The page is no wider than its window: nothing scrolls sideways."""
    window = page.viewport_size
    assert window is not None
    layout = page.evaluate(SIDEWAYS)
    assert layout["width"] <= window["width"], f"wider than the window: {layout}"


def tab_to(page: Page, selector: str, presses: int = 10) -> None:
    """Press Tab until the element ``selector`` has the focus."""
    target = page.locator(selector)
    for _ in range(presses):
        if target.evaluate("element => element === document.activeElement"):
            return
        page.keyboard.press("Tab")
    pytest.fail(f"{selector} not reached with {presses} presses of Tab")


def fill_list(page: Page, client: ChatClient, count: int = 40) -> Locator:
    """Have ``client`` send more messages than the list shows at once; wait
    until the newest, which the list follows, is in view: return it."""
    for number in range(count):
        client.send(f"earlier {number}")
    expect(message_texts(page)).to_have_count(count)
    last = page.locator("#messages li.message").last
    expect(last).to_be_in_viewport()
    return last


def serve_other_origin(route: Route) -> None:
    """Answer for the other origin: an empty page."""
    route.fulfill(
        status=200,
        content_type="text/html; charset=utf-8",
        body="<!doctype html><title>another site</title>",
    )


def websocket_from_other_origin(pages: Pages, server: BroadcastServer) -> str:
    """Open a WebSocket to ``server`` from a page of another origin; say
    whether it opened or closed."""
    page = pages.new()
    # Else Chromium's Local Network Access checks would refuse first: the
    # server's origin check is what is tested.
    page.context.grant_permissions(["local-network-access"], origin=OTHER_ORIGIN)
    page.route(f"{OTHER_ORIGIN}/**", serve_other_origin)
    page.goto(f"{OTHER_ORIGIN}/")
    outcome: str = page.evaluate(TRY_WEBSOCKET, [server.port, 5000 * UNIT])
    return outcome


def test_two_pages_and_a_terminal_client_chat(pages: Pages, screenshots: Path) -> None:
    """Two pages and a WebSocket client see each other's messages with
    sender and time, own ones marked; joins, leaves and the people list
    follow; the client gets ``name: text`` lines."""
    with (
        run_server() as server,
        pages,
        contextlib.closing(join(server, "carol")) as carol,
    ):
        alice = open_chat(pages, server)
        enter_chat(alice, "alice")
        bob = open_chat(pages, server)
        enter_chat(bob, "bob")
        for page, own in [(alice, "alice"), (bob, "bob")]:
            expect(people(page)).to_have_text(["alice", "bob", "carol"])
            expect(page.locator("#people-count")).to_have_text("3")
            expect(page.locator("#people-list li.own")).to_have_text([own])
        expect(event(alice, "bob joined")).to_have_count(1)

        started = time.time()
        send(alice, "hello from alice")
        expect(alice.locator("#message")).to_have_value("")
        for page in [alice, bob]:
            expect_message(page, "alice", "hello from alice", own=page is alice)
        carol.send("hi from carol")
        for page in [alice, bob]:
            expect_message(page, "carol", "hi from carol", own=False)
            expect(message_texts(page)).to_have_text(
                ["hello from alice", "hi from carol"]
            )
            shown = text_contents(page.locator("#messages li.message time"))
            assert set(shown) <= clock_times(started), shown
        assert [receive_text(carol) for _ in range(4)] == [
            "Server: alice has joined the chat",
            "Server: bob has joined the chat",
            "alice: hello from alice",
            "carol: hi from carol",
        ]

        bob.locator("#leave").click()
        expect(bob.locator("#join-form")).to_be_visible()
        expect(bob.locator("#chat")).to_be_hidden()
        expect(event(alice, "bob left")).to_have_count(1)
        expect(people(alice)).to_have_text(["alice", "carol"])
        expect(alice.locator("#people-count")).to_have_text("2")
        assert receive_text(carol) == "Server: bob has left the chat"

        alice.screenshot(path=screenshots / "chat-desktop.png")
        alice.set_viewport_size({"width": 360, "height": 740})
        alice.screenshot(path=screenshots / "chat-narrow.png")


def test_the_name_is_remembered_for_the_next_visit(pages: Pages) -> None:
    """The name that joined is in the join form again after a reload."""
    with run_server() as server, pages:
        page = open_chat(pages, server)
        enter_chat(page, "alice")
        page.reload()
        expect(page.locator("#name")).to_have_value("alice")
        assert page.evaluate("localStorage.getItem('broadcast-sync.name')") == "alice"


def test_a_taken_name_is_replaced_and_the_page_says_so(pages: Pages) -> None:
    """Joining as a name in use gives another one, and a renamed marker."""
    with run_server() as server, pages, contextlib.closing(join(server, "bob")):
        page = open_chat(pages, server)
        enter_chat(page, "bob")
        expect(marker(page, "renamed")).to_have_count(1)
        expect(marker(page, "renamed")).to_contain_text("bob_1")
        expect(page.locator("#status")).to_contain_text("bob_1")
        expect(page.locator("#people-list li.own")).to_have_text(["bob_1"])


def test_a_name_the_server_refuses_is_shown_with_the_reason(pages: Pages) -> None:
    """A name that passes the page's own checks (a fullwidth colon) but not
    the server's: the browser does not say why its handshake failed, so the
    page asks, shows the server's reason under the name, and stops there."""
    pages.expect_console(WEBSOCKET_FAILED)
    pages.expect_console(RESOURCE_REFUSED.format(status=400))
    with run_server() as server, pages:
        page = open_chat(pages, server)
        page.locator("#name").fill("bob\uff1a x")
        page.locator("#name").press("Enter")
        expect(page.locator("#name-error")).to_have_text(
            "The server refused: username contains ': '"
        )
        expect(page.locator("#join-form")).to_be_visible()
        expect_state(page, "idle")
        time.sleep(2 * UNIT)  # past the first retry's delay
        # Its handshake and its question: no retry.
        assert handshakes(server, 400) == 2


def test_a_full_server_is_retried_and_the_page_says_why(pages: Pages) -> None:
    """A refusal that may pass (the server is full) is shown in the status,
    and the page retries until it gets in."""
    pages.expect_console(WEBSOCKET_FAILED)
    pages.expect_console(RESOURCE_REFUSED.format(status=503))
    with run_server(max_clients=1) as server, pages:
        bob = join(server, "bob")
        page = open_chat(pages, server)
        page.locator("#name").fill("alice")
        page.locator("#name").press("Enter")
        expect(page.locator("#status")).to_contain_text(
            "Refused: full: 1 clients; retrying in"
        )
        bob.close()
        expect_state(page, "connected", timeout=RECONNECT_MS)


def handshakes(server: BroadcastServer, status: int) -> float:
    """How many handshakes the server answered with ``status``."""
    value = server.metrics.registry.get_sample_value(
        "broadcast_handshakes_total", {"status": str(status)}
    )
    return value or 0.0


def test_history_comes_first_then_a_marker_then_live_messages(pages: Pages) -> None:
    """Messages sent before the page joined are shown as history, then the
    history marker, then what comes live."""
    with (
        run_server() as server,
        pages,
        contextlib.closing(join(server, "carol")) as carol,
    ):
        for text in ["one", "two"]:
            carol.send(text)
        assert [receive_text(carol) for _ in range(2)] == ["carol: one", "carol: two"]
        page = open_chat(pages, server)
        enter_chat(page, "alice")
        expect(page.locator("#messages li.message.history .text")).to_have_text(
            ["one", "two"]
        )
        expect(marker(page, "history")).to_have_count(1)
        carol.send("three")
        expect(message_texts(page)).to_have_text(["one", "two", "three"])
        after = '#messages li.marker[data-marker="history"] ~ li'
        expect(page.locator(f"{after}.message .text")).to_have_text(["three"])
        expect(page.locator(f"{after}.history")).to_have_count(0)


def test_names_and_messages_are_shown_as_text_never_as_markup(pages: Pages) -> None:
    """Markup in names and messages, from clients and typed in the page, is
    shown literally and never runs."""
    page_name, *client_names = XSS
    with run_server() as server, pages, contextlib.ExitStack() as stack:
        clients = [
            stack.enter_context(contextlib.closing(join_as(server, name)))
            for name in client_names
        ]
        page = open_chat(pages, server)
        enter_chat(page, page_name)
        sent: list[list[str]] = []
        for name, client in zip(client_names, clients, strict=True):
            for payload in XSS:
                client.send(payload)
                sent.append([name, payload])
            expect(message_texts(page)).to_have_count(len(sent))
        for payload in XSS:
            send(page, payload)
            sent.append([page_name, payload])
        expect(message_texts(page)).to_have_count(len(sent))
        expect(people(page)).to_have_count(len(XSS))

        assert shown_messages(page) == sent
        assert text_contents(people(page)) == sorted(XSS)
        events = text_contents(page.locator("#messages li.event .text"))
        assert {f"{name} joined" for name in XSS} <= set(events), events
        assert page_name in (page.locator("#status").text_content() or "")
        created = page.locator("#messages, #people-list").locator("img, script, a")
        expect(created).to_have_count(0)
        assert page.evaluate("typeof window.__xss") == "undefined"


def test_the_page_reconnects_to_a_restarted_server_and_flags_a_gap(
    pages: Pages,
) -> None:
    """After the server restarts on its port, the page reconnects by itself
    and says that messages may be missing: the new log cannot resume."""
    pages.expect_console(WEBSOCKET_FAILED)
    with run_server() as first:
        page = open_chat(pages, first)
        enter_chat(page, "alice")
    expect_state(page, "reconnecting")
    with server_on(first.port), pages:
        expect_state(page, "connected", timeout=RECONNECT_MS)
        expect(marker(page, "gap")).to_have_count(1)
        expect(marker(page, "reconnected")).to_have_count(0)


def test_a_dropped_connection_resumes_without_loss_or_duplicates(
    pages: Pages,
) -> None:
    """A page whose connection was cut reconnects by itself and gets the
    message sent meanwhile, once, with no gap."""
    pages.expect_console(WEBSOCKET_FAILED)
    with (
        run_server() as server,
        pages,
        contextlib.closing(join(server, "carol")) as carol,
    ):
        page = open_chat(pages, server)
        enter_chat(page, "alice")
        expect(people(page)).to_have_text(["alice", "carol"])
        cut(server, "alice")
        carol.send("while you were away")
        expect(marker(page, "reconnected")).to_have_count(1, timeout=RECONNECT_MS)
        expect_state(page, "connected")
        carol.send("after")
        # In order, so any second copy of the first would be in before this.
        expect(message_texts(page)).to_have_text(["while you were away", "after"])
        expect(marker(page, "gap")).to_have_count(0)


def test_a_message_lost_with_its_connection_is_sent_again_once(
    pages: Pages,
) -> None:
    """A message that never reached the server, because the link broke as it
    was sent, is sent again once the resume shows it missing, and shows once."""
    link = {"broken": False}

    def relay(page_side: WebSocketRoute) -> None:
        # Between the page and the real server: the test breaks it on demand.
        server_side = page_side.connect_to_server()

        def from_page(message: str | bytes) -> None:
            if link["broken"]:
                link["broken"] = False
                server_side.close()
                page_side.close(code=1006)
            else:
                server_side.send(message)

        page_side.on_message(from_page)

    with run_server() as server, pages:
        page = pages.new()
        page.route_web_socket(re.compile(r"/ws\?"), relay)
        page.goto(chat_url(server))
        enter_chat(page, "alice")
        link["broken"] = True
        send(page, "lost on the way")
        expect(marker(page, "reconnected")).to_have_count(1, timeout=RECONNECT_MS)
        send(page, "after")
        expect(message_texts(page)).to_have_text(["lost on the way", "after"])
        expect(marker(page, "gap")).to_have_count(0)


def test_offline_waits_for_the_network_then_resumes(pages: Pages) -> None:
    """When the browser goes offline the page says so and waits; back
    online, it resumes at once, with what was said meanwhile."""
    with (
        run_server() as server,
        pages,
        contextlib.closing(join(server, "carol")) as carol,
    ):
        page = open_chat(pages, server)
        enter_chat(page, "alice")
        page.context.set_offline(True)
        expect_state(page, "offline")
        expect(page.locator("#status")).to_have_text("Offline: waiting for the network")
        carol.send("while you were offline")
        page.context.set_offline(False)
        expect(marker(page, "reconnected")).to_have_count(1)
        expect(message_texts(page)).to_have_text(["while you were offline"])


def test_the_rate_limit_notice_is_shown(pages: Pages) -> None:
    """Messages over the rate limit are dropped, and the server's notice is
    shown to the sender."""
    with run_server(rate_limit=2, rate_window=60 * UNIT) as server, pages:
        page = open_chat(pages, server)
        enter_chat(page, "alice")
        for number in range(4):
            send(page, f"message {number}")
        expect(page.locator("#messages li.notice .text")).to_have_text(
            [f"rate limit: at most 2 messages every {60 * UNIT:g} s; messages dropped"]
        )
        expect(message_texts(page)).to_have_text(["message 0", "message 1"])


def test_the_counter_warns_near_the_limit_and_refuses_over_it(pages: Pages) -> None:
    """The counter shows the characters left near the limit, negative over
    it, where the message is invalid and Enter does not send it."""
    with run_server(max_message_chars=30) as server, pages:
        page = open_chat(pages, server)
        enter_chat(page, "alice")
        box = page.locator("#message")
        counter = page.locator("#counter")
        box.fill("x" * 5)
        expect(counter).to_be_hidden()
        box.fill("x" * 25)
        expect(counter).to_be_visible()
        expect(counter).to_have_text("5")
        expect(box).not_to_have_attribute("aria-invalid", "true")
        box.fill("x" * 32)
        expect(counter).to_have_text("-2")
        expect(box).to_have_attribute("aria-invalid", "true")
        box.press("Enter")
        expect(box).to_have_value("x" * 32)
        box.fill("ok")
        expect(counter).to_be_hidden()
        expect(box).not_to_have_attribute("aria-invalid", "true")
        box.press("Enter")
        # In order, so the long one, had it gone, would be in before this.
        expect(message_texts(page)).to_have_text(["ok"])
        expect(page.locator("#messages li.notice")).to_have_count(0)


def test_the_message_box_is_disabled_while_disconnected_and_keeps_its_text(
    pages: Pages,
) -> None:
    """While the server is away the message box is disabled and keeps the
    draft, which can be sent once the page reconnected."""
    pages.expect_console(WEBSOCKET_FAILED)
    with run_server() as first:
        page = open_chat(pages, first)
        enter_chat(page, "alice")
        page.locator("#message").fill("draft")
    box = page.locator("#message")
    expect(box).to_be_disabled()
    expect(box).to_have_value("draft")
    with server_on(first.port), pages:
        expect(box).to_be_enabled(timeout=RECONNECT_MS)
        expect(box).to_have_value("draft")
        box.press("Enter")
        expect(message_texts(page)).to_have_text(["draft"])


def test_a_narrow_screen_fits_long_names_and_messages(pages: Pages) -> None:
    """At 360 px wide, long names and long unbroken messages neither make
    the page scroll sideways nor push the list over the status bar: the
    list scrolls between the bar and the message box."""
    with (
        run_server() as server,
        pages,
        contextlib.closing(join(server, "y" * 50)) as other,
    ):
        page = open_chat(pages, server, 360, 640)
        assert_no_sideways_scroll(page)
        enter_chat(page, "n" * 50)
        assert_no_sideways_scroll(page)
        send(page, "x" * 300)
        expect(message_texts(page)).to_have_text(["x" * 300])
        other.send("z" * 300)
        expect(message_texts(page)).to_have_text(["x" * 300, "z" * 300])
        assert_no_sideways_scroll(page)
        bounds = page.evaluate(LIST_BOUNDS)
        assert bounds["bar"] <= bounds["top"], f"the list overlaps the bar: {bounds}"
        assert bounds["bottom"] <= bounds["box"], f"the list overlaps the box: {bounds}"
        expect(page.locator("#people-count")).to_be_in_viewport(ratio=1)


def test_the_list_scrolls_up_with_the_arrow_key(pages: Pages) -> None:
    """From the bottom, the focused list scrolls up with the arrow key:
    following the newest messages does not pull it back down."""
    with (
        run_server(rate_limit=1000) as server,
        pages,
        contextlib.closing(join(server, "carol")) as carol,
    ):
        page = open_chat(pages, server)
        enter_chat(page, "alice")
        last = fill_list(page, carol)
        page.locator("#messages").focus()
        for _ in range(5):
            page.keyboard.press("ArrowUp")
        expect(last).not_to_be_in_viewport()


def test_new_messages_below_are_announced_when_scrolled_up(pages: Pages) -> None:
    """Scrolled up, the reader gets a button counting new messages, which
    scrolls to the bottom and goes away."""
    with (
        run_server(rate_limit=1000) as server,
        pages,
        contextlib.closing(join(server, "carol")) as carol,
    ):
        page = open_chat(pages, server)
        enter_chat(page, "alice")
        last = fill_list(page, carol)
        button = page.locator("#new-messages")
        expect(button).to_be_hidden()

        page.locator("#messages").evaluate(SCROLL_TO_TOP)  # the list scrolls
        expect(last).not_to_be_in_viewport()
        for number in range(3):
            carol.send(f"new {number}")
        expect(message_texts(page)).to_have_count(40 + 3)
        expect(button).to_have_text("3 new messages ↓")
        expect(last).not_to_be_in_viewport()

        button.click()
        expect(button).to_be_hidden()
        expect(last).to_be_in_viewport(ratio=1)
        expect(last.locator(".text")).to_have_text("new 2")


def test_joining_and_sending_with_the_keyboard_alone(pages: Pages) -> None:
    """With the keyboard alone, one joins and sends a message: joining puts
    the focus in the message box."""
    with run_server() as server, pages:
        page = open_chat(pages, server)
        tab_to(page, "#name")
        page.keyboard.type("alice")
        page.keyboard.press("Enter")
        expect_state(page, "connected")
        expect(page.locator("#message")).to_be_focused()
        page.keyboard.type("typed, not clicked")
        page.keyboard.press("Enter")
        expect_message(page, "alice", "typed, not clicked", own=True)
        expect(page.locator("#message")).to_have_value("")


def test_the_page_has_its_content_security_policy(pages: Pages) -> None:
    """The page comes with the spec's Content-Security-Policy, and works
    under it (no refusal is logged: see the pages fixture)."""
    with run_server() as server, pages:
        page = pages.new()
        response = page.goto(chat_url(server))
        assert response is not None
        assert response.headers["content-security-policy"] == CSP
        enter_chat(page, "alice")
        send(page, "under the policy")
        expect_message(page, "alice", "under the policy", own=True)


def test_a_page_of_another_origin_cannot_connect(pages: Pages) -> None:
    """By default, a page from another origin is refused a WebSocket."""
    pages.expect_console(WEBSOCKET_FORBIDDEN)
    with run_server() as server, pages:
        assert websocket_from_other_origin(pages, server) == "close"


def test_an_allowed_origin_can_connect(pages: Pages) -> None:
    """An origin given in allowed_origins may open a WebSocket."""
    with run_server(allowed_origins=(OTHER_ORIGIN,)) as server, pages:
        assert websocket_from_other_origin(pages, server) == "open"


def test_the_page_isolates_each_name_and_message(pages: Pages) -> None:
    """On the chat page, each name and message is an isolate of its own
    direction (right-to-left text reorders nothing around it), and the join
    form refuses an invisible character before the server must."""
    hebrew = "\u05e9\u05dc\u05d5\u05dd"
    with run_server() as server, pages, contextlib.ExitStack() as stack:
        page = open_chat(pages, server)
        page.locator("#name").fill("al\u200bice")
        page.locator("#name").press("Enter")
        expect(page.locator("#name-error")).to_have_text(
            "No invisible characters, please."
        )
        enter_chat(page, "carol")
        client = join(server, urllib.parse.quote(hebrew))
        stack.callback(client.close)
        client.send(f"\u2067{hebrew}\u2069 hi")
        entry = page.locator("#messages li.message")
        expect(entry.locator(".text")).to_have_text(f"\u2067{hebrew}\u2069 hi")
        expect(page.locator("#messages li.event .name")).to_have_count(2)
        shown = page.eval_on_selector_all(
            "#messages .sender, #messages .text, #messages .name, #people-list span",
            "all => all.map(e => [e.dir, getComputedStyle(e).unicodeBidi])",
        )
        assert len(shown) >= 5
        assert all(each == ["auto", "isolate"] for each in shown), shown
