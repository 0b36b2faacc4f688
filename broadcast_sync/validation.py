"""Checks on what users type: usernames and chat messages.

Nothing here knows about sockets; the server turns a failed check into an
HTTP status (for a username) or a notice to the sender (for a message).
"""

from __future__ import annotations

import re

from broadcast_sync.messages import NAME_SEPARATOR


class InvalidUsername(ValueError):
    """The requested username cannot be used; the message says why."""


class InvalidMessage(ValueError):
    """A chat message is not broadcast; the message says why."""


#: Every control character: C0, DEL and C1 (Unicode category Cc).
_CONTROL_CODES = [*range(0x20), *range(0x7F, 0xA0)]
_CONTROL_CHARACTER = re.compile("[\x00-\x1f\x7f-\x9f]")
#: Each control character mapped to a visible escape.
_CONTROL_ESCAPES = {code: f"\\x{code:02x}" for code in _CONTROL_CODES}


def escape_controls(text: str) -> str:
    """Show control characters as ``\\xNN``, so that text from a peer cannot
    drive a terminal with escape sequences when it is printed or logged."""
    return text.translate(_CONTROL_ESCAPES)


def has_control_characters(text: str) -> bool:
    """Whether ``text`` holds a control character (C0, DEL or C1).

    Escape sequences start with one, so rejecting them keeps other users'
    terminals safe.
    """
    return _CONTROL_CHARACTER.search(text) is not None


def clean_username(requested: str, max_chars: int) -> str:
    """Return the username to use for ``requested``, trimmed of whitespace.

    Raises:
        InvalidUsername: if it is empty, too long or holds control characters.
    """
    username = requested.strip()
    if not username:
        raise InvalidUsername("username is empty")
    if len(username) > max_chars:
        raise InvalidUsername(
            f"username is longer than {max_chars} characters ({len(username)})"
        )
    if has_control_characters(username):
        raise InvalidUsername("username contains control characters")
    if NAME_SEPARATOR in username:
        # "Server: x" would pass its messages off as the server's notices.
        raise InvalidUsername(f"username contains {NAME_SEPARATOR!r}")
    return username


def is_blank(message: str) -> bool:
    """Whether a message is empty or only whitespace, and so ignored."""
    return not message or message.isspace()


def check_message(message: str, max_chars: int) -> None:
    """Check a chat message before it is broadcast.

    Raises:
        InvalidMessage: if it is too long or holds control characters.
    """
    if len(message) > max_chars:
        raise InvalidMessage(
            f"message not sent: it is {len(message)} characters long, "
            f"the limit is {max_chars}"
        )
    if has_control_characters(message):
        raise InvalidMessage("message not sent: it contains control characters")
