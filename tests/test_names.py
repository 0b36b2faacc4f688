"""Names and messages that can't impersonate (issue 10).

No user can make a line on another user's screen read as the server's or as
another user's: names are RFC 8266 nicknames, unique by their compared form
and their confusable skeleton, with nothing invisible in them; messages
cannot start a line, leak bidi reordering past their end, or push text to
where a line of its own seems to start. Unit tests of the checks first, then
the same payloads through real servers, alone and on one Redis.
"""

from __future__ import annotations

import contextlib
import io
import urllib.parse
from collections.abc import Iterator

import pytest

from broadcast_sync.log import MemoryLog
from broadcast_sync.messages import SERVER_NAME
from broadcast_sync.names import NameRegistry, name_variants
from broadcast_sync.nicknames import name_keys, skeleton
from broadcast_sync.server import BroadcastServer
from broadcast_sync.terminal import Console
from broadcast_sync.validation import (
    MAX_BLANK_RUN,
    InvalidMessage,
    InvalidUsername,
    check_message,
    clean_username,
    escape_controls,
    is_blank,
)
from tests.conftest import (
    http_exchange,
    join,
    join_all,
    receive_text,
    run_server,
    wait_until,
)
from tests.rawclient import new_key, upgrade_request
from tests.redisproc import RedisProcess
from tests.wsclient import ChatClient

#: Look-alikes: a Cyrillic capital DZE for S, a Cyrillic small a for a.
CYRILLIC_SERVER = "\u0405erver"
CYRILLIC_ALICE = "\u0430lice"
#: What a text client is told when its message was refused; a reason follows.
NOT_SENT = "Server: message not sent: "
#: A line that must never appear as another user's own.
FAKE_LEAVE = "Server: alice has left the chat"
#: Enough blank characters to push a line past the edge of a terminal.
PUSH = 200


def pushed(blank: str) -> str:
    """A message that pushes a fake line of alice's along with ``blank``."""
    return "hi" + blank * PUSH + "alice: I agree"


#: What makes a format character refused in a name; its code point follows.
INVISIBLE = "username contains an invisible or format character"
#: Names refused, by what they try: the name, and the reason the 400 gives
#: (at most 10 characters, once normalised).
REFUSED_NAMES = {
    "no-break-space-after-colon": (
        "Server:\u00a0bob has left the chat",
        "username contains ': '",
    ),
    "ratio-sign-for-colon": ("Server\u2236 bob", "username contains ': '"),
    "fullwidth-colon": ("Server\uff1a bob", "username contains ': '"),
    "zero-width-space": ("alice\u200b", f"{INVISIBLE} (U+200B ZERO WIDTH SPACE)"),
    "only-zero-width-space": ("\u200b", "username has nothing visible in it"),
    "only-hangul-filler": ("\u3164", "username has nothing visible in it"),
    "only-braille-blanks": ("\u2800\u2800", "username has nothing visible in it"),
    "only-invisible": ("\u200b\u2060\ufeff", "username has nothing visible in it"),
    "rlo": ("bob\u202eevil", f"{INVISIBLE} (U+202E RIGHT-TO-LEFT OVERRIDE)"),
    "rli": ("\u2067bob\u2069", f"{INVISIBLE} (U+2067 RIGHT-TO-LEFT ISOLATE)"),
    "zwj": ("al\u200dice", f"{INVISIBLE} (U+200D ZERO WIDTH JOINER)"),
    "hangul-filler": ("a\u3164b", f"{INVISIBLE} (U+3164 HANGUL FILLER)"),
    "braille-blank": ("a\u2800b", f"{INVISIBLE} (U+2800 BRAILLE PATTERN BLANK)"),
    "line-separator": (
        "alice\u2028x",
        "username contains a line or paragraph separator (U+2028 LINE SEPARATOR)",
    ),
    "paragraph-separator": (
        "a\u2029b",
        "username contains a line or paragraph separator (U+2029 PARAGRAPH SEPARATOR)",
    ),
    "private-use": ("bob\ue000", "username contains a private-use character (U+E000)"),
    "supplementary-private-use": (
        "bob\U000f0000",
        "username contains a private-use character (U+F0000)",
    ),
    "unassigned": ("bob\u0378", "username contains an unassigned code point (U+0378)"),
    "refused-by-the-profile": (
        "a\u1100b",
        "username contains U+1100 HANGUL CHOSEONG KIYEOK, "
        "which a nickname may not hold",
    ),
    "longer-once-normalised": (
        "\u3392" * 4,  # each MHz
        "username is longer than 10 characters (12)",
    ),
}

#: The notice ends for a message whose bidi controls would leak, or that
#: pushes text along.
UNBALANCED = (
    "it has bidi controls (embeddings, overrides or isolates) that are not "
    "closed in order"
)
PUSHES = f"it has more than {MAX_BLANK_RUN} blank characters in a row"
#: Messages refused, by what they try: the message, and the end of the
#: notice its sender gets.
REFUSED_MESSAGES = {
    "line-separator": (f"hi\u2028{FAKE_LEAVE}", "it contains control characters"),
    "paragraph-separator": (
        f"hi\u2029{FAKE_LEAVE}",
        "it contains control characters",
    ),
    "rlo-unclosed": ("\u202eeerga I :ecila", UNBALANCED),
    "rli-unclosed": ("\u2067hello", UNBALANCED),
    "rle-unclosed": ("x\u202bhello", UNBALANCED),
    "stray-pdf": ("hello\u202c", UNBALANCED),
    "stray-pdi": ("hello\u2069", UNBALANCED),
    "pdi-closes-override": ("\u202ex\u2069", UNBALANCED),
    "misnested": ("\u2066\u202ax\u2069\u202c", UNBALANCED),
    "closed-then-opened": ("\u2068x\u2069\u2068", UNBALANCED),
    "spaces": (pushed(" "), PUSHES),
    "ideographic-spaces": (pushed("\u3000"), PUSHES),
    "em-spaces": (pushed("\u2003"), PUSHES),
    "no-break-spaces": (pushed("\u00a0"), PUSHES),
    "braille-blanks": (pushed("\u2800"), PUSHES),
    "hangul-fillers": (pushed("\u3164"), PUSHES),
    "spaces-split-by-zwsp": (pushed(" \u200b"), PUSHES),
    "one-too-many": (f"a{' ' * (MAX_BLANK_RUN + 1)}b", PUSHES),
}

#: Messages that show nothing, and are ignored like blank ones.
INVISIBLE_MESSAGES = [
    "\u200b\u200b\u200b",
    "\u3164",
    "\u2800",
    "\ufeff",
    " \u200b\u3000\u2060 ",
    "\u2067\u2069",
    "\u2028",
]

#: Messages that pass, bidi and all.
ACCEPTED_MESSAGES = [
    "\u2067\u05e9\u05dc\u05d5\u05dd\u2069 means hello",
    "\u202bx\u202c",
    "\u2066\u202bnested\u202c\u2069",
    "\u200f\u05e9\u05dc\u05d5\u05dd",  # a right-to-left mark is not paired
    "\U0001f468\u200d\U0001f469\u200d\U0001f467",  # ZWJ joins an emoji
    "a" + " " * MAX_BLANK_RUN + "b",
    "indent" + "\u3000" * MAX_BLANK_RUN + "ok",
]


# Unit tests: the checks, without sockets.


@pytest.mark.parametrize(
    ("requested", "reason"), REFUSED_NAMES.values(), ids=REFUSED_NAMES
)
def test_clean_username_refuses(requested: str, reason: str) -> None:
    """Every impersonating or invisible name is refused, naming the problem."""
    with pytest.raises(InvalidUsername) as caught:
        clean_username(requested, max_chars=10)
    assert str(caught.value) == reason


@pytest.mark.parametrize(
    ("requested", "shown"),
    [
        ("\uff22ob", "Bob"),  # fullwidth B: NFKC
        ("first\u00a0last", "first last"),  # other spaces become one ASCII space
        ("first \u3000 last", "first last"),
        ("Zoe\u0308", "Zo\u00eb"),  # composed
        ("\u2163", "IV"),  # a Roman numeral, by compatibility
        ("javascript:alert(1)", "javascript:alert(1)"),
        ("::1", "::1"),  # an IPv6 address, the name of a client without one
    ],
)
def test_clean_username_shows_the_enforced_form(requested: str, shown: str) -> None:
    """A valid name is shown as the Nickname profile enforces it, case kept."""
    assert clean_username(requested, max_chars=20) == shown


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("alice", "Alice"),
        ("alice", "ALICE"),
        ("alice", CYRILLIC_ALICE),
        ("Server", CYRILLIC_SERVER),
        ("Server", "server"),
        ("server", "\u0455erver"),  # a Cyrillic small dze
        ("lan", "Ian"),  # a capital I for a small l
        ("modern", "rnodern"),
        ("B0B", "BOB"),
        ("bob", "\U0001d41b\U0001d428\U0001d41b"),  # mathematical bold
    ],
)
def test_look_alikes_share_a_key(one: str, other: str) -> None:
    """Names equal case-insensitively, or with the same skeleton, share a key."""
    assert not name_keys(one).isdisjoint(name_keys(other))


@pytest.mark.parametrize(
    ("one", "other"), [("alice", "bob"), ("bob", "bob_1"), ("alice", "alice.")]
)
def test_different_names_share_no_key(one: str, other: str) -> None:
    """Names that look different keep apart."""
    assert name_keys(one).isdisjoint(name_keys(other))


def test_skeleton_is_a_fixed_point() -> None:
    """A skeleton is its own skeleton: a registry can compare them."""
    for text in ["m", "rn", CYRILLIC_SERVER, "\u2236", "Ian", "\u65e5\u672c"]:
        assert skeleton(skeleton(text)) == skeleton(text)


@pytest.mark.parametrize(
    "requested", [SERVER_NAME, "server", "SERVER", CYRILLIC_SERVER, "\u0455erver"]
)
def test_the_server_name_and_its_look_alikes_get_a_variant(requested: str) -> None:
    """Server, in any case or disguise, is never given as it is asked for."""
    assert next(name_variants(requested, 20)) == f"{requested}_1"


def test_registry_compares_keys_and_frees_them_all() -> None:
    """A name is taken while a look-alike or a case variant is online; once
    its holder has left, every form of it is free again."""
    registry = NameRegistry(max_clients=10, max_name_chars=20)
    assert registry.reserve("alice") == "alice"
    assert registry.reserve("Alice") == "Alice_1"
    assert registry.reserve(CYRILLIC_ALICE) == f"{CYRILLIC_ALICE}_2"
    assert registry.reserve("ALICE") == "ALICE_3"
    registry.release("alice")
    assert registry.reserve("Alice") == "Alice"
    registry.release("Alice_1")
    assert registry.reserve("alice") == "alice_1"
    registry.release("not reserved")  # nothing happens


def test_memory_log_compares_keys() -> None:
    """The in-memory log reserves as the registry does."""
    log = MemoryLog(max_clients=10, max_name_chars=20)
    assert log.reserve_name("bob") == "bob"
    assert log.reserve_name("BOB") == "BOB_1"
    log.release_name("bob")
    assert log.reserve_name("BOB") == "BOB"


@pytest.mark.parametrize(
    ("message", "reason"), REFUSED_MESSAGES.values(), ids=REFUSED_MESSAGES
)
def test_check_message_refuses(message: str, reason: str) -> None:
    """Line breaks, leaking bidi controls and pushing runs of blanks are
    refused with their reason."""
    with pytest.raises(InvalidMessage) as caught:
        check_message(message, max_chars=1000)
    assert str(caught.value) == f"message not sent: {reason}"


@pytest.mark.parametrize("message", ACCEPTED_MESSAGES)
def test_check_message_accepts(message: str) -> None:
    """Balanced bidi, marks, joiners and short runs of blanks pass."""
    check_message(message, max_chars=1000)


@pytest.mark.parametrize("message", INVISIBLE_MESSAGES)
def test_invisible_messages_are_blank(message: str) -> None:
    """A message with nothing visible is blank, and so ignored."""
    assert is_blank(message)


@pytest.mark.parametrize("message", ["a\u200b", "\u0301", "\u2067x\u2069", "."])
def test_visible_messages_are_not_blank(message: str) -> None:
    """One visible character is enough."""
    assert not is_blank(message)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("\u202eevil", "\\u202eevil"),
        ("a\u2028b\u2029", "a\\u2028b\\u2029"),
        ("\u2066x\u2069", "\\u2066x\\u2069"),
        ("\u202ax\u202c", "\\u202ax\\u202c"),
        ("\u200f\u05d0", "\u200f\u05d0"),  # a mark reorders nothing past it
    ],
)
def test_escape_controls_escapes_bidi_and_separators(text: str, expected: str) -> None:
    """Paired bidi controls and line separators are escaped like controls."""
    assert escape_controls(text) == expected


def test_terminal_shows_bidi_controls_escaped() -> None:
    """The terminal client prints an override as text, never as an override."""
    stream = io.StringIO()
    Console(stream, interactive=False).show("bob: \u202eeerga I :ecila")
    assert stream.getvalue() == "bob: \\u202eeerga I :ecila\n"


# End to end: a real server, real clients.


def refused_reason(port: int, requested: str) -> str:
    """The reason of the 400 that a handshake for ``requested`` gets."""
    answer = http_exchange(port, upgrade_request(port, requested, new_key()))
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 "), head
    return body.decode().removesuffix("\n")


def joined_name(server: BroadcastServer, requested: str) -> tuple[ChatClient, str]:
    """Connect as ``requested``; the client and the name its join notice shows."""
    query = urllib.parse.urlencode({"username": requested})
    ws: ChatClient = ChatClient.connect(f"ws://127.0.0.1:{server.port}/ws?{query}")
    notice = receive_text(ws)
    assert notice.startswith("Server: "), notice
    name = notice.removeprefix("Server: ").removesuffix(" has joined the chat")
    return ws, name


def is_free(server: BroadcastServer, name: str) -> bool:
    """Whether ``server`` would give ``name`` as asked: reserved, then freed."""
    given = server.log.reserve_name(name)
    server.log.release_name(given)
    return given == name


@pytest.mark.parametrize(
    ("requested", "reason"), REFUSED_NAMES.values(), ids=REFUSED_NAMES
)
def test_refused_names_get_400_with_the_reason(requested: str, reason: str) -> None:
    """Every refused name gets 400 and the reason, from a real server."""
    with run_server(max_username_chars=10) as server:
        assert refused_reason(server.port, requested) == reason


def test_look_alikes_get_a_variant_and_everyone_sees_it() -> None:
    """While alice is online, Alice and a Cyrillic alice get alice's variants;
    Server in any disguise gets a variant; alice sees each one join."""
    with run_server() as server, contextlib.ExitStack() as stack:
        (alice,) = join_all(server, ["alice"])
        stack.callback(alice.close)
        expected = {
            "Alice": "Alice_1",
            CYRILLIC_ALICE: f"{CYRILLIC_ALICE}_2",
            "server": "server_1",
            CYRILLIC_SERVER: f"{CYRILLIC_SERVER}_2",  # looks like server_1
            "\uff22ob": "Bob",
        }
        for requested, given in expected.items():
            ws, name = joined_name(server, requested)
            stack.callback(ws.close)
            assert name == given
            assert receive_text(alice) == f"Server: {given} has joined the chat"


def test_a_name_is_free_again_in_every_form_once_its_holder_left() -> None:
    """Once alice has left, Alice is given as asked."""
    with run_server() as server:
        (alice,) = join_all(server, ["alice"])
        assert not is_free(server, "Alice")
        alice.close()
        wait_until(lambda: is_free(server, "Alice"), "Alice free")
        ws, name = joined_name(server, "Alice")
        ws.close()
        assert name == "Alice"


def test_no_message_reads_as_another_line() -> None:
    """Every refused message is told to its sender alone, every invisible one
    is ignored, and alice sees only bob's real lines, each a line of bob's."""
    with run_server(
        max_message_chars=1000, max_message_bytes=4096, rate_limit=0
    ) as server:
        alice, bob = join_all(server, ["alice", "bob"])
        with contextlib.closing(alice), contextlib.closing(bob):
            for message, reason in REFUSED_MESSAGES.values():
                bob.send(message)
                assert receive_text(bob) == NOT_SENT + reason
            for message in INVISIBLE_MESSAGES:
                bob.send(message)
            for message in ACCEPTED_MESSAGES:
                bob.send(message)
            for message in ACCEPTED_MESSAGES:
                assert receive_text(alice) == f"bob: {message}"
                assert receive_text(bob) == f"bob: {message}"


# On Redis: the registry of a room of many nodes compares the same way.


@contextlib.contextmanager
def two_nodes(redis: RedisProcess) -> Iterator[list[BroadcastServer]]:
    """Two servers in one room of ``redis``; always stopped."""
    with (
        run_server(redis_url=redis.url) as one,
        run_server(redis_url=redis.url) as two,
    ):
        yield [one, two]


def test_redis_registry_compares_keys_across_nodes(
    redis_server: RedisProcess,
) -> None:
    """alice on one node: her look-alikes on the other get variants, and
    Redis holds the keys; once she left, Alice is free on the other node."""
    with two_nodes(redis_server) as (one, two), contextlib.ExitStack() as stack:
        alice = join(one, "alice")
        expected = {
            "Alice": "Alice_1",
            CYRILLIC_ALICE: f"{CYRILLIC_ALICE}_2",
            CYRILLIC_SERVER: f"{CYRILLIC_SERVER}_1",
            "SERVER": "SERVER_2",
        }
        for requested, given in expected.items():
            ws, name = joined_name(two, requested)
            stack.callback(ws.close)
            assert name == given
        held = redis_server.command("HKEYS", "broadcast-sync:names")
        assert isinstance(held, list)
        names = ["alice", *expected.values()]
        assert {key for key in held if isinstance(key, bytes)} == {
            key.encode() for name in names for key in name_keys(name)
        }
        alice.close()
        wait_until(lambda: is_free(two, "Alice"), "Alice free")
        ws, name = joined_name(two, "Alice")
        stack.callback(ws.close)
        assert name == "Alice"


@pytest.mark.parametrize(
    "what", ["no-break-space-after-colon", "zero-width-space", "rlo"]
)
def test_redis_node_refuses_names_the_same_way(
    redis_server: RedisProcess, what: str
) -> None:
    """A node on Redis refuses as a lone server does."""
    requested, reason = REFUSED_NAMES[what]
    with run_server(redis_url=redis_server.url, max_username_chars=10) as server:
        assert refused_reason(server.port, requested) == reason
