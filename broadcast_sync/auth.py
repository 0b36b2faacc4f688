"""Signed identities: HS256 JSON Web Tokens that name a site's users.

A site with logins and this server share a secret (``--auth-secret-file``).
The site signs a short-lived token whose ``sub`` is the user's name; the
client hands it over in its handshake, and the server believes the name
because nobody without the secret could have signed it. Nothing here knows
of sockets or HTTP: :mod:`~broadcast_sync.handshake` turns
:class:`InvalidToken` into 401.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jwt

#: The only algorithm accepted. Naming it refuses ``"alg": "none"`` (an
#: unsigned token) and any other algorithm a forger might pick.
ALGORITHMS = ["HS256"]
#: Claims a token must carry: who it names, and until when. A token without
#: an expiry would be a password for life, valid wherever it leaked.
REQUIRED_CLAIMS = ["exp", "sub"]
#: RFC 7518, section 3.2: an HS256 key MUST be at least as long as the hash
#: (256 bits); a shorter one can be guessed offline from any token.
MIN_SECRET_BYTES = 32


class AuthSetupFailed(Exception):
    """The secret file cannot be used; the message says why, in one line."""


class InvalidToken(Exception):
    """A token that names nobody: malformed, badly signed, signed with
    another algorithm (or none), without ``exp`` or ``sub``, or expired."""


@dataclasses.dataclass(frozen=True)
class Identity:
    """Who a valid token says the client is, and for how long."""

    #: The token's ``sub``: the name the site knows the user by.
    name: str
    #: The token's ``exp``, in seconds since the Unix epoch.
    expires: float


def load_secret(path: str) -> bytes:
    """The secret in the file at ``path``, less one trailing newline (as
    ``echo`` or an editor leaves), so that the site can read the same file.

    Raises:
        AuthSetupFailed: if the file cannot be read, or the secret is empty
            or shorter than :data:`MIN_SECRET_BYTES`.
    """
    try:
        secret = Path(path).read_bytes().removesuffix(b"\n")
    except OSError as exc:
        reason = (exc.strerror or str(exc)).lower()
        raise AuthSetupFailed(f"cannot read the auth secret {path}: {reason}") from exc
    if not secret:
        raise AuthSetupFailed(f"the auth secret {path} is empty")
    if len(secret) < MIN_SECRET_BYTES:
        raise AuthSetupFailed(
            f"the auth secret {path} is {len(secret)} bytes: HS256 needs at "
            f"least {MIN_SECRET_BYTES} (try: openssl rand -hex 32 > {path})"
        )
    return secret


def verify(token: str, secret: bytes) -> Identity:
    """The identity that ``token`` carries, if ``secret`` signed it with
    HS256 and it has not expired.

    Raises:
        InvalidToken: with a reason that reveals nothing of the secret.
    """
    try:
        claims = jwt.decode(
            token, secret, algorithms=ALGORITHMS, options={"require": REQUIRED_CLAIMS}
        )
    except jwt.ExpiredSignatureError:
        raise InvalidToken("token expired") from None
    except jwt.InvalidTokenError as exc:
        raise InvalidToken(f"invalid token: {exc}") from None
    # PyJWT checked that sub is a string and exp a number.
    return Identity(name=claims["sub"], expires=float(claims["exp"]))
