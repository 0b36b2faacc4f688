"""The client behind trusted proxies (``proxies.py``), without sockets."""

from __future__ import annotations

import ipaddress

import h11
import pytest

from broadcast_sync.config import Network
from broadcast_sync.proxies import Client, forwarded_client, parse_network

#: Our own proxies: nginx on this machine, a load balancer's subnet, IPv6.
TRUSTED: tuple[Network, ...] = (
    ipaddress.ip_network("127.0.0.1/32"),
    ipaddress.ip_network("10.0.0.0/8"),
    ipaddress.ip_network("::1/128"),
    ipaddress.ip_network("fd00::/8"),
)
#: The proxy the server sees, trusted.
PROXY = "127.0.0.1"
#: A client on the internet, not trusted.
CLIENT = "198.51.100.2"
#: What an attacker writes into the headers it sends.
SPOOFED = "6.6.6.6"


def headers(*fields: tuple[str, str]) -> list[tuple[bytes, bytes]]:
    """Header fields as h11 gives them: lower-case byte names, in order."""
    return [(name.lower().encode(), value.encode("latin-1")) for name, value in fields]


def xff(value: str) -> tuple[str, str]:
    """An ``X-Forwarded-For`` field."""
    return ("X-Forwarded-For", value)


def fwd(value: str) -> tuple[str, str]:
    """A ``Forwarded`` field."""
    return ("Forwarded", value)


def proto(value: str) -> tuple[str, str]:
    """An ``X-Forwarded-Proto`` field."""
    return ("X-Forwarded-Proto", value)


# parse_network


@pytest.mark.parametrize(
    ("text", "network"),
    [
        pytest.param("10.0.0.0/8", "10.0.0.0/8", id="ipv4 cidr"),
        pytest.param("127.0.0.1", "127.0.0.1/32", id="ipv4 address"),
        pytest.param("fd00::/8", "fd00::/8", id="ipv6 cidr"),
        pytest.param("::1", "::1/128", id="ipv6 address"),
        pytest.param("0.0.0.0/0", "0.0.0.0/0", id="everything"),
    ],
)
def test_parse_network(text: str, network: str) -> None:
    """A CIDR is that network; a bare address is that address alone."""
    assert parse_network(text) == ipaddress.ip_network(network)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("10.0.0.1/8", "did you mean 10.0.0.0/8?", id="host bits"),
        pytest.param("proxy.example", "not an IP address or network", id="name"),
        pytest.param("", "not an IP address or network", id="empty"),
        pytest.param("10.0.0.0/33", "not an IP address or network", id="prefix"),
        pytest.param("::1/129", "not an IP address or network", id="ipv6 prefix"),
    ],
)
def test_parse_network_refuses(text: str, message: str) -> None:
    """Anything else is a ValueError that says what was wrong."""
    with pytest.raises(ValueError, match=message.replace("?", r"\?")):
        parse_network(text)


# forwarded_client: who the peer is


@pytest.mark.parametrize(
    ("peer", "fields", "client"),
    [
        pytest.param(
            "203.0.113.7",
            [xff(CLIENT), fwd(f"for={CLIENT};proto=https"), proto("https")],
            Client("203.0.113.7", None),
            id="untrusted peer: headers ignored",
        ),
        pytest.param(
            "127.0.0.2",
            [xff(CLIENT)],
            Client("127.0.0.2", None),
            id="next to a trusted address, not in it",
        ),
        pytest.param(PROXY, [], Client(PROXY, None), id="trusted peer, no headers"),
        pytest.param(
            "::ffff:127.0.0.1",
            [xff(CLIENT)],
            Client(CLIENT, None),
            id="ipv4-mapped peer is its ipv4 address",
        ),
        pytest.param(
            "::ffff:203.0.113.7",
            [xff(CLIENT)],
            Client("::ffff:203.0.113.7", None),
            id="untrusted peer kept as given",
        ),
        pytest.param("::1", [xff(CLIENT)], Client(CLIENT, None), id="ipv6 peer"),
        pytest.param(
            "not-an-address", [xff(CLIENT)], Client("not-an-address", None), id="odd"
        ),
    ],
)
def test_peer(peer: str, fields: list[tuple[str, str]], client: Client) -> None:
    """Only a trusted peer's headers are read."""
    assert forwarded_client(peer, headers(*fields), TRUSTED) == client


def test_nothing_trusted() -> None:
    """With no trusted proxy (the default), headers never count."""
    fields = headers(xff(CLIENT), fwd(f"for={CLIENT}"))
    assert forwarded_client(PROXY, fields, ()) == Client(PROXY, None)


def test_default_scheme() -> None:
    """The caller's scheme (the connection's own) holds when no proxy says
    otherwise; without one, the scheme stays unknown (None)."""
    fields = headers(xff(CLIENT))
    assert forwarded_client(PROXY, fields, TRUSTED, scheme="https") == Client(
        CLIENT, "https"
    )
    assert forwarded_client("203.0.113.7", fields, TRUSTED, scheme="https") == (
        Client("203.0.113.7", "https")
    )


# forwarded_client: X-Forwarded-For


@pytest.mark.parametrize(
    ("fields", "address"),
    [
        pytest.param([xff(CLIENT)], CLIENT, id="one address"),
        pytest.param([xff(f"{SPOOFED}, {CLIENT}")], CLIENT, id="spoofed leftmost"),
        pytest.param(
            [xff(f"{SPOOFED}, 10.0.0.9, {CLIENT}, 10.0.0.5, 10.0.0.6")],
            CLIENT,
            id="rightmost untrusted past trusted hops",
        ),
        pytest.param(
            [xff(SPOOFED), xff(f"{CLIENT}, 10.0.0.5")],
            CLIENT,
            id="repeated fields, in order",
        ),
        pytest.param(
            [xff(CLIENT), xff(SPOOFED)], SPOOFED, id="repeated fields: order counts"
        ),
        pytest.param([xff("10.0.0.1, 10.0.0.2")], "10.0.0.1", id="all trusted"),
        pytest.param([xff("127.0.0.1")], "127.0.0.1", id="the proxy itself"),
        pytest.param([xff("2001:db8::1")], "2001:db8::1", id="ipv6"),
        pytest.param([xff("2001:DB8:0:0::1")], "2001:db8::1", id="ipv6 normalized"),
        pytest.param(
            [xff(f"{SPOOFED}, 2001:db8::1, fd00::5")], "2001:db8::1", id="ipv6 chain"
        ),
        pytest.param([xff(f"{CLIENT}:4711")], CLIENT, id="ipv4 with port"),
        pytest.param([xff("[2001:db8::1]:4711")], "2001:db8::1", id="ipv6 with port"),
        pytest.param([xff("[2001:db8::1]")], "2001:db8::1", id="ipv6 in brackets"),
        pytest.param([xff(f"::ffff:{CLIENT}")], CLIENT, id="ipv4-mapped"),
        pytest.param([xff(f" {CLIENT} ,, ")], CLIENT, id="empty elements"),
        pytest.param([xff(f"{SPOOFED}, unknown")], PROXY, id="unknown: the proxy"),
        pytest.param(
            [xff(f"{SPOOFED}, unknown, 10.0.0.5")],
            "10.0.0.5",
            id="unknown: the last trusted hop",
        ),
        pytest.param([xff(f"{SPOOFED}, _hidden")], PROXY, id="obfuscated"),
        pytest.param([xff(f"{SPOOFED}, garbage")], PROXY, id="garbage"),
        pytest.param([xff(f"{SPOOFED}, 198.51.100.256")], PROXY, id="bad ipv4"),
        pytest.param([xff(f"{SPOOFED}, {CLIENT}:http")], PROXY, id="bad port"),
        pytest.param([xff(f"{SPOOFED}, {CLIENT}:65536")], PROXY, id="port too big"),
        pytest.param([xff(f"{SPOOFED}, [{CLIENT}]")], PROXY, id="ipv4 in brackets"),
        pytest.param([xff(f"{SPOOFED}, [2001:db8::1")], PROXY, id="open bracket"),
        pytest.param([xff(f"{SPOOFED}, 2001:db8::1:80:")], PROXY, id="bad ipv6"),
        pytest.param([xff(f'"{CLIENT}"')], PROXY, id="quoted"),
        pytest.param([("x-FORWARDED-for", CLIENT)], CLIENT, id="name in any case"),
        pytest.param([xff("  ")], PROXY, id="blank"),
    ],
)
def test_x_forwarded_for(fields: list[tuple[str, str]], address: str) -> None:
    """The rightmost untrusted address; never one left of what can't be read."""
    assert forwarded_client(PROXY, headers(*fields), TRUSTED).address == address


@pytest.mark.parametrize(
    ("fields", "scheme"),
    [
        pytest.param([xff(CLIENT), proto("https")], "https", id="https"),
        pytest.param([xff(CLIENT), proto("http")], "http", id="http"),
        pytest.param([xff(CLIENT), proto("HTTPS")], "https", id="any case"),
        pytest.param([xff(CLIENT), proto("http, https")], "https", id="rightmost"),
        pytest.param([xff(CLIENT), proto("http"), proto("https")], "https", id="rep"),
        pytest.param([xff(CLIENT), proto("https, gopher")], None, id="unknown"),
        pytest.param([xff(CLIENT), proto("wss")], None, id="not a page's scheme"),
        pytest.param([xff(CLIENT), proto("")], None, id="empty"),
        pytest.param([proto("https")], "https", id="without X-Forwarded-For"),
    ],
)
def test_x_forwarded_proto(fields: list[tuple[str, str]], scheme: str | None) -> None:
    """The rightmost X-Forwarded-Proto, if it is http or https."""
    assert forwarded_client(PROXY, headers(*fields), TRUSTED).scheme == scheme


# forwarded_client: Forwarded (RFC 7239)


@pytest.mark.parametrize(
    ("fields", "client"),
    [
        pytest.param([fwd(f"for={CLIENT}")], Client(CLIENT, None), id="for"),
        pytest.param(
            [fwd(f"for={CLIENT};proto=https;by=10.0.0.5;host=chat.example")],
            Client(CLIENT, "https"),
            id="all parameters",
        ),
        pytest.param(
            [fwd(f"For={CLIENT};PROTO=HTTPS")],
            Client(CLIENT, "https"),
            id="names and proto in any case",
        ),
        pytest.param(
            [fwd('for="[2001:db8:cafe::17]:4711"')],
            Client("2001:db8:cafe::17", None),
            id="quoted ipv6 with port",
        ),
        pytest.param(
            [fwd('for="[2001:db8:cafe::17]"')],
            Client("2001:db8:cafe::17", None),
            id="quoted ipv6",
        ),
        pytest.param(
            [fwd("for=[2001:db8:cafe::17]")],
            Client("2001:db8:cafe::17", None),
            id="unquoted ipv6, leniently",
        ),
        pytest.param(
            [fwd(f'for="{CLIENT}:47011"')],
            Client(CLIENT, None),
            id="quoted ipv4 with port",
        ),
        pytest.param(
            [fwd(f'for="{CLIENT}:_ab-c"')],
            Client(CLIENT, None),
            id="obfuscated port",
        ),
        pytest.param(
            [fwd(f'for="\\{CLIENT[0]}{CLIENT[1:]}";proto="https"')],
            Client(CLIENT, "https"),
            id="quoted pair",
        ),
        pytest.param(
            [fwd(f"for={SPOOFED}, for={CLIENT}")],
            Client(CLIENT, None),
            id="spoofed leftmost",
        ),
        pytest.param(
            [fwd(f"for={SPOOFED}"), fwd(f"for={CLIENT};proto=https")],
            Client(CLIENT, "https"),
            id="repeated fields, in order",
        ),
        pytest.param(
            [fwd(f"for={CLIENT};proto=https, for=10.0.0.5;proto=http")],
            Client(CLIENT, "https"),
            id="proto of the element used",
        ),
        pytest.param(
            [fwd(f"for={CLIENT};proto=http, for=10.0.0.5;proto=https")],
            Client(CLIENT, "http"),
            id="proto of the element used, not the rightmost",
        ),
        pytest.param(
            [fwd("for=10.0.0.1;proto=https, for=10.0.0.2")],
            Client("10.0.0.1", "https"),
            id="all trusted: the leftmost",
        ),
        pytest.param(
            [fwd(f' for={CLIENT} ; proto=https ,for="[fd00::1]" ')],
            Client(CLIENT, "https"),
            id="whitespace around separators",
        ),
        pytest.param(
            [fwd(f'for={CLIENT};by="a,b;c", for=10.0.0.5')],
            Client(CLIENT, None),
            id="separators inside quotes",
        ),
        pytest.param(
            [fwd(f"for={CLIENT},,;, for=10.0.0.5")],
            Client(CLIENT, None),
            id="empty elements and pairs",
        ),
        pytest.param(
            [fwd(f"for={CLIENT};proto=gopher")],
            Client(CLIENT, None),
            id="unknown proto",
        ),
        pytest.param(
            [fwd("for=_hidden;proto=https")],
            Client(PROXY, "https"),
            id="obfuscated: the proxy, with its proto",
        ),
        pytest.param(
            [fwd(f'for={SPOOFED}, for="_hidden", for=10.0.0.5')],
            Client("10.0.0.5", None),
            id="obfuscated: the last trusted hop",
        ),
        pytest.param(
            [fwd(f"for={SPOOFED}, for=unknown")],
            Client(PROXY, None),
            id="unknown",
        ),
        pytest.param(
            [fwd(f"for={SPOOFED}, proto=https")],
            Client(PROXY, "https"),
            id="element without for",
        ),
        pytest.param(
            [fwd(f"for={SPOOFED}, for=garbage")],
            Client(PROXY, None),
            id="garbage address",
        ),
        pytest.param(
            [fwd(f"for={SPOOFED}, for=[{CLIENT}]")],
            Client(PROXY, None),
            id="ipv4 in brackets",
        ),
        pytest.param(
            [fwd(f"for={SPOOFED}, garbage")],
            Client(PROXY, None),
            id="garbage element",
        ),
        pytest.param(
            [fwd(f"for={SPOOFED}, for=")],
            Client(PROXY, None),
            id="empty value",
        ),
        pytest.param(
            [fwd(f"for={SPOOFED};for={CLIENT}")],
            Client(PROXY, None),
            id="parameter twice",
        ),
        pytest.param(
            [fwd(f"for={SPOOFED} for={CLIENT}")],
            Client(PROXY, None),
            id="missing separator",
        ),
        pytest.param(
            [fwd(f'for="{SPOOFED}, for={CLIENT}')],
            Client(PROXY, None),
            id="unterminated quote swallows the rest",
        ),
        pytest.param(
            [fwd(f'for="{SPOOFED}\\'), fwd(f"for={CLIENT}")],
            Client(CLIENT, None),
            id="a malformed field spoils no other",
        ),
        pytest.param(
            [fwd(f"for={CLIENT}"), fwd("for=10.0.0.5 junk")],
            Client(PROXY, None),
            id="malformed rightmost field",
        ),
    ],
)
def test_forwarded(fields: list[tuple[str, str]], client: Client) -> None:
    """Forwarded: walked as X-Forwarded-For; proto from the element used."""
    assert forwarded_client(PROXY, headers(*fields), TRUSTED) == client


@pytest.mark.parametrize(
    ("fields", "client"),
    [
        pytest.param(
            [xff(SPOOFED), fwd(f"for={CLIENT}")],
            Client(CLIENT, None),
            id="Forwarded wins over X-Forwarded-For",
        ),
        pytest.param(
            [fwd(f"for={CLIENT}"), proto("https")],
            Client(CLIENT, None),
            id="X-Forwarded-Proto ignored with Forwarded",
        ),
        pytest.param(
            [fwd("  "), xff(CLIENT), proto("https")],
            Client(CLIENT, "https"),
            id="blank Forwarded is none",
        ),
    ],
)
def test_precedence(fields: list[tuple[str, str]], client: Client) -> None:
    """A request with ``Forwarded`` is read from it alone."""
    assert forwarded_client(PROXY, headers(*fields), TRUSTED) == client


#: What a client may put in the headers it sends, before its proxy appends.
ATTACKS = [
    SPOOFED,
    f"{SPOOFED}, 10.0.0.5",
    f"{SPOOFED}, unknown",
    f'"{SPOOFED}',
    f"for={SPOOFED}",
    f'for="{SPOOFED}',
    f'for="{SPOOFED}\\',
    f"for={SPOOFED};proto=https,",
    f'for={SPOOFED}, for="_x" ;',
    "\t, ,;;=",
]


@pytest.mark.parametrize("attack", ATTACKS)
@pytest.mark.parametrize("header", ["X-Forwarded-For", "Forwarded"])
@pytest.mark.parametrize("appended", ["same field", "new field"])
def test_no_spoofing(attack: str, header: str, appended: str) -> None:
    """Whatever a client sends, the result is its own address or the proxy's.

    The proxy appends the client's address to the client's header, in the
    same field (nginx's ``$proxy_add_x_forwarded_for``) or in a new one.
    """
    own = CLIENT if header == "X-Forwarded-For" else f"for={CLIENT}"
    if appended == "same field":
        fields = [(header, f"{attack}, {own}")]
    else:
        fields = [(header, attack), (header, own)]
    client = forwarded_client(PROXY, headers(*fields), TRUSTED)
    assert client.address in (CLIENT, PROXY)
    assert client.scheme is None
    if appended == "new field" or header == "X-Forwarded-For":
        assert client.address == CLIENT


def test_h11_headers() -> None:
    """The headers of a request parsed by h11 are taken as they come."""
    connection = h11.Connection(h11.SERVER)
    connection.receive_data(
        b"GET /ws HTTP/1.1\r\n"
        b"Host: chat.example\r\n"
        b"X-Forwarded-For: " + SPOOFED.encode() + b"\r\n"
        b"x-forwarded-for: " + CLIENT.encode() + b", 10.0.0.5\r\n"
        b"X-Forwarded-Proto: https\r\n"
        b"\r\n"
    )
    request = connection.next_event()
    assert isinstance(request, h11.Request)
    assert forwarded_client(PROXY, request.headers, TRUSTED) == Client(CLIENT, "https")
