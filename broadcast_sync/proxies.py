"""The client's real address and scheme, as told by trusted reverse proxies.

Behind a reverse proxy, every connection comes from the proxy: the client's
own address and the scheme of its page travel in headers the proxy adds,
RFC 7239 ``Forwarded`` or the older ``X-Forwarded-For`` and
``X-Forwarded-Proto``. Anyone can send those headers, so they are read only
on connections from a proxy the operator named (``--trusted-proxy``); from
any other peer they are ignored. No sockets here: the server passes the peer
and the request's headers, and uses the :class:`Client` it gets back for its
logs, default usernames, per-address limits and origin check.

Strategy: each proxy appends the address it received the request from to the
right of the list, after whatever the client sent; so only the right end of
the list is written by proxies we trust, and everything left of the first
untrusted address may be invented by the client (``X-Forwarded-For: 6.6.6.6``
sent through nginx arrives as ``6.6.6.6, REAL``). The walk therefore starts at
the right, skips our own proxies, and stops at the first address that is not
one of them: the client as our outermost proxy saw it. It never reads past an
element it cannot parse (an obfuscated ``_hidden``, ``unknown``, garbage): the
address it keeps is then the last trusted hop's, to the right of that
element. A proxy that clears neither header passes the client's on as they
are; ``Forwarded`` wins over ``X-Forwarded-For`` when both are present, so a
proxy that sets only ``X-Forwarded-For`` must remove the client's
``Forwarded`` (nginx: ``proxy_set_header Forwarded "";``).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Iterator, Sequence
from typing import TypeAlias

from broadcast_sync.config import Network

#: An address read from a header or from the socket.
Address: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address

#: The schemes a proxy may report: those of the page's origin, as the browser
#: sees it (a WebSocket's ws and wss follow from them).
SCHEMES = frozenset({"http", "https"})
#: Optional whitespace around separators (RFC 9110, section 5.6.3).
WHITESPACE = " \t"
#: One ``name=value`` of a ``Forwarded`` element: the name is a token (RFC 9110,
#: 5.6.2); the value a quoted string (5.6.4) or, unquoted, anything up to a
#: separator: RFC 7239 wants a token there, but ``for=192.0.2.1:80`` and
#: ``for=[::1]`` unquoted are common enough, and harmless.
PAIR = re.compile(
    r"""([!#$%&'*+.^_`|~0-9A-Za-z-]+)=(?:"((?:[^"\\]|\\.)*)"|([^,;"\s]+))"""
)
#: A quoted pair in a quoted string: the backslash goes, the character stays.
ESCAPE = re.compile(r"\\(.)")


@dataclasses.dataclass(frozen=True)
class Client:
    """Who sent a request, as far as the server can trust what it was told."""

    #: The client's IP address; the peer's own when nothing trusted says more.
    address: str
    #: ``http`` or ``https``: the scheme of the page's origin, as the browser
    #: sees it (``https`` when TLS ended at the proxy). None when no trusted
    #: proxy said and the caller did not know: a proxy that is silent about
    #: it must not make every https page fail a check against ``http``.
    scheme: str | None


@dataclasses.dataclass(frozen=True)
class _Hop:
    """One element of a forwarding chain: who connected to a proxy, and how.

    ``address`` is None when the element names no usable address (missing,
    obfuscated, ``unknown`` or malformed): the walk stops there.
    """

    address: Address | None
    proto: str | None = None


#: An element that could not be parsed at all: the walk stops there.
_MALFORMED = _Hop(None)


class _SyntaxError(ValueError):
    """A ``Forwarded`` field line that does not follow RFC 7239."""


def parse_network(text: str) -> Network:
    """A trusted proxy's network: CIDR (``10.0.0.0/8``) or one address.

    A bare address means that address alone (/32 or /128).

    Raises:
        ValueError: ``text`` is neither; the message says why.
    """
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError:
        pass
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(
            f"not an IP address or network (such as 10.0.0.0/8): {text!r}"
        ) from None
    raise ValueError(f"{text} has host bits set; did you mean {network}?")


def forwarded_client(
    peer: str,
    headers: Sequence[tuple[bytes, bytes]],
    trusted: Sequence[Network],
    *,
    scheme: str | None = None,
) -> Client:
    """The client behind ``peer``, from the headers of trusted proxies.

    From an untrusted peer, the peer itself. From a trusted one, the chain of
    ``Forwarded`` if the request has that header, else of ``X-Forwarded-For``,
    walked from the right (see the module's strategy). The scheme is the
    ``proto`` of the ``Forwarded`` element where the walk stopped (written by
    the proxy the client reached, one of ours), or else the rightmost
    ``X-Forwarded-Proto`` value (nginx replaces the client's; a proxy that
    appends puts its own on the right); a value other than ``http`` or
    ``https`` is ignored.

    Args:
        peer: The IP address of the socket's peer.
        headers: The request's headers in order, as h11 gives them.
        trusted: The networks of the proxies whose headers are believed.
        scheme: The scheme of the connection itself (``https`` over TLS), if
            the caller knows it.

    Returns:
        The client's address and scheme; the scheme is ``scheme`` unless a
        trusted proxy said otherwise.
    """
    peer_address = _parse_address(peer)
    if peer_address is None or not _is_trusted(peer_address, trusted):
        return Client(peer, scheme)
    forwarded = _field_lines(headers, b"forwarded")
    if forwarded:
        hops = [hop for line in forwarded for hop in _parse_forwarded(line)]
        return _walk(peer, hops, trusted, scheme)
    protos = [
        value.strip().lower()
        for line in _field_lines(headers, b"x-forwarded-proto")
        for value in line.split(",")
    ]
    if protos and protos[-1] in SCHEMES:
        scheme = protos[-1]
    hops = [
        _Hop(_parse_node(entry.strip()))
        for line in _field_lines(headers, b"x-forwarded-for")
        for entry in line.split(",")
        if entry.strip()  # An empty list element is no element (RFC 9110, 5.6.1).
    ]
    return _walk(peer, hops, trusted, scheme)


def _walk(
    peer: str, hops: Sequence[_Hop], trusted: Sequence[Network], scheme: str | None
) -> Client:
    """Walk ``hops`` from the right, past trusted addresses (see the strategy).

    ``peer`` is trusted already. The walk stops at the first untrusted address
    (the client), or at an element without a usable address (keeping the
    address to its right), or at the leftmost element if all are trusted.
    The scheme is the ``proto`` of the element where it stopped.
    """
    address = peer
    for hop in reversed(hops):
        if hop.address is None:
            return Client(address, _scheme(hop, scheme))
        address = str(hop.address)
        if not _is_trusted(hop.address, trusted):
            return Client(address, _scheme(hop, scheme))
    if hops:
        return Client(address, _scheme(hops[0], scheme))
    return Client(peer, scheme)


def _scheme(hop: _Hop, default: str | None) -> str | None:
    """The scheme a hop reports, if it is one we know, else ``default``."""
    if hop.proto is not None and hop.proto.lower() in SCHEMES:
        return hop.proto.lower()
    return default


def in_networks(address: str, networks: Sequence[Network]) -> bool:
    """Whether ``address`` (of a socket's peer, say) is in one of ``networks``;
    an IPv4 address mapped into IPv6 counts as itself."""
    parsed = _parse_address(address)
    return parsed is not None and _is_trusted(parsed, networks)


def _is_trusted(address: Address, trusted: Sequence[Network]) -> bool:
    """Whether ``address`` is in one of the ``trusted`` networks."""
    return any(address in network for network in trusted)


def _field_lines(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> list[str]:
    """The non-blank values of the header ``name`` (lower case), in order."""
    return [
        value.decode("latin-1")
        for field, value in headers
        if field.lower() == name and value.strip()
    ]


def _parse_address(text: str) -> Address | None:
    """An IP address; None if ``text`` is none.

    An IPv4-mapped address (``::ffff:192.0.2.1``, as a dual-stack socket
    reports an IPv4 peer) is returned as IPv4: the operator trusts, and the
    limits count, ``192.0.2.1``.
    """
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


def _parse_node(node: str) -> Address | None:
    """The address of a node (RFC 7239, section 6), without its port.

    Accepts ``192.0.2.1``, ``192.0.2.1:80``, ``[2001:db8::1]``,
    ``[2001:db8::1]:80`` and a bare ``2001:db8::1`` (as ``X-Forwarded-For``
    has it). ``unknown``, an obfuscated ``_name`` and anything else give None.
    """
    address = _parse_address(node)
    if address is not None:
        return address
    if node.startswith("["):
        host, bracket, rest = node[1:].partition("]")
        port_ok = not rest or (rest.startswith(":") and _is_port(rest[1:]))
        if not bracket or not port_ok or ":" not in host:  # IPv6 only
            return None
    else:
        host, colon, port = node.partition(":")
        if not colon or not _is_port(port) or ":" in host:  # IPv4 only
            return None
    return _parse_address(host)


def _is_port(text: str) -> bool:
    """Whether ``text`` is a port: digits, or obfuscated (``_abc``), which
    RFC 7239 allows and which names the same address."""
    if text.startswith("_"):
        return len(text) > 1 and all(
            c.isascii() and (c.isalnum() or c in "._-") for c in text
        )
    return text.isascii() and text.isdigit() and int(text) <= 65535


def _parse_forwarded(line: str) -> list[_Hop]:
    """The elements of one ``Forwarded`` field line, left to right.

    Quoted strings cannot span field lines, so one malformed line spoils no
    other. Within a line, nothing after a syntax error can be trusted to be
    split right (a stray quote swallows what follows), so the line's elements
    end with one malformed element there.
    """
    hops: list[_Hop] = []
    try:
        for element in _forwarded_elements(line):
            if element:  # An empty list element is no element.
                node = element.get("for")
                address = None if node is None else _parse_node(node)
                hops.append(_Hop(address, element.get("proto")))
    except _SyntaxError:
        hops.append(_MALFORMED)
    return hops


def _forwarded_elements(line: str) -> Iterator[dict[str, str]]:
    """The parameters of each element of a ``Forwarded`` line (RFC 7239, 4):
    ``name=value`` pairs separated by ``;``, elements by ``,``.

    Names are in lower case, quoted values unescaped.

    Raises:
        _SyntaxError: At the first element that is malformed or names a
            parameter twice, after yielding those before it.
    """
    element: dict[str, str] = {}
    position = 0
    while (position := _skip_whitespace(line, position)) < len(line):
        if line[position] in ",;":
            if line[position] == ",":
                yield element
                element = {}
            position += 1
            continue
        pair = PAIR.match(line, position)
        if pair is None:
            raise _SyntaxError(f"expected name=value at {position}: {line!r}")
        name, quoted, bare = pair.groups()
        if name.lower() in element:
            raise _SyntaxError(f"{name} twice in one element: {line!r}")
        element[name.lower()] = bare if quoted is None else ESCAPE.sub(r"\1", quoted)
        position = _skip_whitespace(line, pair.end())
        if position < len(line) and line[position] not in ",;":
            raise _SyntaxError(f"expected , or ; at {position}: {line!r}")
    yield element


def _skip_whitespace(line: str, position: int) -> int:
    """The position of the first character at or after ``position`` that is
    not optional whitespace."""
    while position < len(line) and line[position] in WHITESPACE:
        position += 1
    return position
