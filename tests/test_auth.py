"""Signed identities (--auth-secret-file): HS256 tokens name the users, and
their expiry ends the connection; on real servers, with raw handshakes."""

from __future__ import annotations

import base64
import json
import logging
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from wsproto.events import CloseConnection, Event

from broadcast_sync.auth import MIN_SECRET_BYTES, InvalidToken, verify
from broadcast_sync.server import BroadcastServer
from tests.conftest import UNIT, run_server
from tests.test_cli import run_command
from tests.test_handshake import (
    RawClient,
    Response,
    masked_text_frame,
    raw_client,
    refusal,
    upgrade_request,
)
from tests.test_probes import DISCONNECTS, in_process, settle, value_in

#: The site's secret: 64 bytes, so that HS512 tokens can be made too
#: (PyJWT warns about a shorter key).
SECRET = b"0123456789abcdef" * 4
#: How long a token lives when a test does not care.
LIFETIME = 60 * UNIT
#: When the short-lived token of the expiry tests expires, after it is made:
#: time enough for its client and another to join first.
SHORT_LIFETIME = 1.5 * UNIT
#: Frames a flooding client writes at a time: far more than the server
#: parses while one is written, so that its socket always has input.
FLOOD_FRAMES = 1000
#: How late after its token's exp a session may end (the brief: about a
#: second; the reader wakes on the millisecond, and this allows for the
#: closing handshake and a busy machine).
EXPIRY_SLACK = 1.0 * UNIT


# Helpers.


def make_token(
    sub: Any = "alice",
    *,
    lifetime: float = LIFETIME,
    secret: bytes = SECRET,
    algorithm: str = "HS256",
    **claims: Any,
) -> str:
    """A token for ``sub`` that expires ``lifetime`` seconds from now;
    ``claims`` add to or (as None) remove from ``sub`` and ``exp``."""
    payload = {"sub": sub, "exp": time.time() + lifetime, **claims}
    payload = {name: value for name, value in payload.items() if value is not None}
    return jwt.encode(payload, secret, algorithm=algorithm)


def unsigned_token(sub: str = "alice") -> str:
    """A token with ``"alg": "none"`` and no signature, built by hand: the
    forgery that a server accepting any algorithm would let through."""

    def part(value: dict[str, Any]) -> str:
        encoded = base64.urlsafe_b64encode(json.dumps(value).encode())
        return encoded.rstrip(b"=").decode()

    header = part({"alg": "none", "typ": "JWT"})
    return f"{header}.{part({'sub': sub, 'exp': time.time() + LIFETIME})}."


def with_token(token: str, **parameters: str) -> str:
    """The target of /ws with ``token`` and ``parameters`` in its query."""
    return "/ws?" + urllib.parse.urlencode({"token": token, **parameters})


def bearer(token: str) -> dict[str, str | None]:
    """An Authorization header carrying ``token``."""
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    """The secret in a file, with the trailing newline an editor leaves."""
    path = tmp_path / "secret"
    path.write_bytes(SECRET + b"\n")
    return path


@pytest.fixture
def auth_server(secret_file: Path) -> Iterator[BroadcastServer]:
    """A server that requires tokens signed with :data:`SECRET`."""
    with run_server(auth_secret_file=str(secret_file)) as running:
        yield running


def joined(client: RawClient, request: bytes) -> str:
    """Send ``request``, which must be accepted; the name the client got."""
    client.send(request)
    response = client.read_response()
    assert response.status == 101, response
    notice = client.next_text()
    prefix, suffix = "Server: ", " has joined the chat"
    assert notice.startswith(prefix), notice
    assert notice.endswith(suffix), notice
    return notice.removeprefix(prefix).removesuffix(suffix)


def events_until_close(client: RawClient) -> list[Event]:
    """The client's events up to the server's close frame, which ends the list."""
    events = [client.next_event()]
    while not isinstance(events[-1], CloseConnection):
        events.append(client.next_event())
    return events


def assert_unauthorized(response: Response, reason: str) -> None:
    """``response`` is 401 with a Bearer challenge and ``reason`` in its body."""
    assert response.status == 401, response
    assert response.headers["www-authenticate"].startswith("Bearer"), response
    assert reason in response.text, response.text


# Valid tokens.


def test_token_in_the_query_names_the_user(auth_server: BroadcastServer) -> None:
    """A valid token in ?token= is accepted, and its sub is the user's name."""
    with raw_client(auth_server.port) as client:
        assert joined(client, upgrade_request(with_token(make_token()))) == "alice"


def test_token_in_the_authorization_header(auth_server: BroadcastServer) -> None:
    """A valid token in Authorization: Bearer is accepted too."""
    request = upgrade_request("/ws", headers=bearer(make_token("bob")))
    with raw_client(auth_server.port) as client:
        assert joined(client, request) == "bob"


def test_the_signed_name_wins_over_username(auth_server: BroadcastServer) -> None:
    """With a token, ?username= cannot choose another name."""
    target = with_token(make_token("alice"), username="mallory")
    with raw_client(auth_server.port) as client:
        assert joined(client, upgrade_request(target)) == "alice"


def test_one_sub_twice_gets_a_unique_name(auth_server: BroadcastServer) -> None:
    """A user logged in twice (two tabs) gets a suffixed name the second time,
    as any taken name does."""
    request = upgrade_request(with_token(make_token("alice")))
    with raw_client(auth_server.port) as first, raw_client(auth_server.port) as again:
        assert joined(first, request) == "alice"
        second = joined(again, request)
        assert second != "alice"
        assert second.startswith("alice")


def test_a_basic_authorization_header_is_not_ours(
    auth_server: BroadcastServer,
) -> None:
    """An Authorization header of another scheme (a proxy's) is ignored."""
    headers: dict[str, str | None] = {"Authorization": "Basic dXNlcjpwYXNz"}
    request = upgrade_request(with_token(make_token()), headers=headers)
    with raw_client(auth_server.port) as client:
        assert joined(client, request) == "alice"


# Refused tokens.


@pytest.mark.parametrize(
    ("target", "headers", "reason"),
    [
        pytest.param("/ws?username=alice", None, "a token is required", id="missing"),
        pytest.param(
            with_token(make_token(lifetime=-10)), None, "token expired", id="expired"
        ),
        pytest.param(
            with_token(make_token(secret=b"another secret, 32 bytes or more!")),
            None,
            "Signature verification failed",
            id="badly-signed",
        ),
        pytest.param(
            with_token(unsigned_token()),
            None,
            "The specified alg value is not allowed",
            id="alg-none",
        ),
        pytest.param(
            with_token(make_token(algorithm="HS512")),
            None,
            "The specified alg value is not allowed",
            id="hs512",
        ),
        pytest.param(with_token("not-a-token"), None, "invalid token", id="malformed"),
        pytest.param(with_token(""), None, "invalid token", id="empty"),
        pytest.param(
            with_token(make_token(exp=None)), None, '"exp" claim', id="no-exp"
        ),
        pytest.param(
            with_token(make_token(sub=None)), None, '"sub" claim', id="no-sub"
        ),
        pytest.param(
            with_token(make_token(sub=42)),
            None,
            "Subject must be a string",
            id="sub-not-a-string",
        ),
        pytest.param(
            "/ws",
            bearer(make_token(lifetime=-10)),
            "token expired",
            id="expired-in-header",
        ),
        pytest.param(
            "/ws",
            bearer(unsigned_token()),
            "The specified alg value is not allowed",
            id="alg-none-in-header",
        ),
        pytest.param(
            with_token(make_token()),
            bearer(make_token()),
            "token given more than once",
            id="query-and-header",
        ),
    ],
)
def test_refused_token_gets_401(
    auth_server: BroadcastServer,
    target: str,
    headers: dict[str, str | None] | None,
    reason: str,
) -> None:
    """A missing, expired, badly signed, unsigned, malformed or incomplete
    token gets 401, with the reason in plain text."""
    response = refusal(auth_server.port, upgrade_request(target, headers=headers))
    assert_unauthorized(response, reason)


def test_refusal_is_logged(
    auth_server: BroadcastServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A refused token leaves a log line with the status and the reason."""
    caplog.set_level(logging.INFO, logger="broadcast_sync")
    expired = with_token(make_token(lifetime=-10))
    refusal(auth_server.port, upgrade_request(expired))
    lines = [record.getMessage() for record in caplog.records]
    assert any("401 token expired" in line for line in lines), lines


def test_a_bad_signed_name_is_a_bad_username(auth_server: BroadcastServer) -> None:
    """A validly signed sub that is no valid username gets 400, as a bad
    ?username= does."""
    response = refusal(
        auth_server.port, upgrade_request(with_token(make_token("bad\x07name")))
    )
    assert response.status == 400, response


# Expiry.


def test_expiry_closes_with_1008_and_others_see_the_leave(
    auth_server: BroadcastServer,
) -> None:
    """A token expiring into the session closes it with 1008 within a second
    of its exp, and the others see the user leave."""
    port = auth_server.port
    expires = time.time() + SHORT_LIFETIME
    short = make_token("alice", lifetime=expires - time.time())
    with raw_client(port) as bob, raw_client(port) as alice:
        assert joined(bob, upgrade_request(with_token(make_token("bob")))) == "bob"
        assert joined(alice, upgrade_request(with_token(short))) == "alice"
        assert bob.next_text() == "Server: alice has joined the chat"
        alice.sock.settimeout(SHORT_LIFETIME + EXPIRY_SLACK)
        close = events_until_close(alice)[-1]
        closed_at = time.time()
        assert isinstance(close, CloseConnection)
        assert (close.code, close.reason) == (1008, "token expired")
        assert expires <= closed_at < expires + EXPIRY_SLACK
        assert bob.next_text() == "Server: alice has left the chat"
    settle(
        lambda: value_in(in_process(auth_server), DISCONNECTS, {"reason": "auth"}),
        1.0,
        "disconnects for auth",
    )


def test_expiry_closes_a_client_that_keeps_sending(
    auth_server: BroadcastServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Expiry also ends a session whose reader never waits in vain: one whose
    client sends faster than it reads (messages over the rate limit, which
    are dropped)."""
    caplog.set_level(logging.INFO, logger="broadcast_sync")
    expires = time.time() + SHORT_LIFETIME
    token = make_token("alice", lifetime=expires - time.time())
    flood = masked_text_frame("x") * FLOOD_FRAMES
    with raw_client(auth_server.port) as alice:
        assert joined(alice, upgrade_request(with_token(token))) == "alice"
        while time.time() < expires + EXPIRY_SLACK:
            alice.send(flood)
        events = events_until_close(alice)
    close = events[-1]
    assert isinstance(close, CloseConnection)
    assert (close.code, close.reason) == (1008, "token expired")
    left_at = [
        record.created
        for record in caplog.records
        if "alice" in record.getMessage()
        and "left: token expired" in record.getMessage()
    ]
    assert len(left_at) == 1, [record.getMessage() for record in caplog.records]
    assert left_at[0] < expires + EXPIRY_SLACK


# Without the option.


@pytest.mark.parametrize(
    "request_bytes",
    [
        pytest.param(upgrade_request("/ws?username=carol&token=junk"), id="query"),
        pytest.param(
            upgrade_request("/ws?username=carol&token=a&token=b"), id="query-twice"
        ),
        pytest.param(
            upgrade_request("/ws?username=carol", headers=bearer("junk")),
            id="header",
        ),
    ],
)
def test_without_the_option_tokens_are_ignored(request_bytes: bytes) -> None:
    """Without --auth-secret-file, names are anonymous as before, and a
    token, however bad, changes nothing."""
    with run_server() as server, raw_client(server.port) as client:
        assert joined(client, request_bytes) == "carol"


def test_without_the_option_a_token_does_not_name() -> None:
    """Without --auth-secret-file, a valid token's sub is not the name."""
    target = with_token(make_token("alice"), username="carol")
    with run_server() as server, raw_client(server.port) as client:
        assert joined(client, upgrade_request(target)) == "carol"


# The secret.


def test_verify_takes_the_sub_and_exp() -> None:
    """The identity of a valid token: its sub, and its exp as given."""
    expires = time.time() + LIFETIME
    token = jwt.encode({"sub": "alice", "exp": expires}, SECRET, algorithm="HS256")
    identity = verify(token, SECRET)
    assert identity.name == "alice"
    assert identity.expires == pytest.approx(expires)


def test_verify_refuses_another_secret() -> None:
    """A token is only good with the secret that signed it."""
    with pytest.raises(InvalidToken, match="Signature verification failed"):
        verify(make_token(), SECRET[::-1])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        pytest.param(None, "cannot read the auth secret", id="missing"),
        pytest.param(b"", "is empty", id="empty"),
        pytest.param(b"\n", "is empty", id="newline-only"),
        pytest.param(b"short\n", f"needs at least {MIN_SECRET_BYTES}", id="short"),
    ],
)
def test_start_with_a_bad_secret_file_exits_1(
    tmp_path: Path, content: bytes | None, message: str
) -> None:
    """``start`` with an unreadable, empty or too short secret says why in
    one line and exits 1."""
    path = tmp_path / "secret"
    if content is not None:
        path.write_bytes(content)
    result = run_command(
        "start", "--host", "127.0.0.1", "--port", "0", "--auth-secret-file", str(path)
    )
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("broadcast-server: "), lines
    assert message in lines[0], lines
    assert "Traceback" not in result.stderr
