"""Checks on what users type: usernames and chat messages.

Nothing here knows about sockets; the server turns a failed check into an
HTTP status (for a username) or a notice to the sender (for a message).

The goal (issue 10): no user can make a line on another user's screen read
as the server's or as another user's. So a name is an RFC 8266 nickname with
nothing invisible in it (``nicknames.py`` keeps it from passing for another),
and a message cannot start a new line, reorder what follows it, or push text
to where a line of its own seems to start.
"""

from __future__ import annotations

import re
import unicodedata

from broadcast_sync import nicknames
from broadcast_sync.messages import NAME_SEPARATOR


class InvalidUsername(ValueError):
    """The requested username cannot be used; the message says why."""


class InvalidMessage(ValueError):
    """A chat message is not broadcast; the message says why."""


# Limits
#: The most blank characters in a row in a message, invisible ones included
#: (zero-width spaces must not split a run of spaces): enough to indent, too
#: few to push text to where a line of its own seems to start on a screen 40
#: columns wide, even in ideographic spaces (two columns each).
MAX_BLANK_RUN = 8

#: Control characters (C0, DEL and C1), and the line and paragraph separators
#: (U+2028, U+2029), which start a new line as a newline does.
_CONTROL_CODES = [*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029]
_CONTROL_CHARACTER = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
#: Every bidi control that opens or closes a run.
_BIDI_CONTROL = re.compile("[\u202a-\u202e\u2066-\u2069]")
#: The bidi controls that open a run, each with the control that closes it:
#: embeddings and overrides (LRE, RLE, LRO, RLO) end at PDF, isolates (LRI,
#: RLI, FSI) at PDI.
_BIDI_CLOSER = {
    **dict.fromkeys("\u202a\u202b\u202d\u202e", "\u202c"),
    **dict.fromkeys("\u2066\u2067\u2068", "\u2069"),
}
_BIDI_CLOSERS = frozenset(_BIDI_CLOSER.values())
#: Each control character and paired bidi control mapped to a visible escape.
_ESCAPES = {
    code: f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
    for code in [*_CONTROL_CODES, *map(ord, _BIDI_CLOSER), *map(ord, _BIDI_CLOSERS)]
}
#: Default_Ignorable_Code_Point (Unicode's DerivedCoreProperties.txt), which
#: ``unicodedata`` lacks: soft hyphen, Hangul fillers, variation selectors,
#: zero-width and bidi controls, tags.
_DEFAULT_IGNORABLE = (
    "\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f"
    "\u202a-\u202e\u2060-\u206f\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff0-\ufff8"
    "\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0000-\U000e0fff"
)


def _blank_class() -> str:
    """What shows nothing, as the inside of a regex class: spaces, controls,
    format characters, default-ignorable code points, and the braille blank
    (a symbol that shows as a space).

    Format characters are looked up in planes 0 and 1, which hold all but
    the tags of plane 14, default-ignorable already: 10 ms, once.
    """
    formats = "".join(
        re.escape(chr(code))
        for code in range(0x20000)
        if unicodedata.category(chr(code)) == "Cf"
    )
    return rf"\s\x00-\x1f\x7f-\x9f{formats}{_DEFAULT_IGNORABLE}\u2800"


_BLANK_CLASS = _blank_class()
_BLANK = re.compile(f"[{_BLANK_CLASS}]")
_VISIBLE = re.compile(f"[^{_BLANK_CLASS}]")
_BLANK_RUN = re.compile(f"[{_BLANK_CLASS}]{{{MAX_BLANK_RUN + 1},}}")
#: What names may not hold, by category, after control characters.
_REFUSED_IN_NAMES = {
    "Zl": "a line or paragraph separator",
    "Zp": "a line or paragraph separator",
    "Co": "a private-use character",
    "Cn": "an unassigned code point",
}


def escape_controls(text: str) -> str:
    """Show control characters and paired bidi controls as ``\\xNN`` and
    ``\\uNNNN``, so that text from a peer cannot drive a terminal with escape
    sequences, nor reorder what is printed after it."""
    return text.translate(_ESCAPES)


def has_control_characters(text: str) -> bool:
    """Whether ``text`` holds a control character (C0, DEL or C1) or a line
    or paragraph separator.

    Escape sequences start with one, and the others start a new line, so
    rejecting them keeps other users' terminals safe and their lines whole.
    """
    return _CONTROL_CHARACTER.search(text) is not None


def describe(char: str) -> str:
    """``char`` as a reason can name it: ``U+200B ZERO WIDTH SPACE``."""
    return f"U+{ord(char):04X} {unicodedata.name(char, '')}".rstrip()


def is_blank_character(char: str) -> bool:
    """Whether ``char`` shows nothing: a space, a control or format character,
    a default-ignorable code point, or the braille blank."""
    return _BLANK.match(char) is not None


def has_visible(text: str) -> bool:
    """Whether anything in ``text`` shows."""
    return _VISIBLE.search(text) is not None


def clean_username(requested: str, max_chars: int) -> str:
    """Return the username to show for ``requested``: trimmed of whitespace,
    then enforced as an RFC 8266 nickname, case preserved.

    Raises:
        InvalidUsername: if it is empty, holds control characters, nothing
            visible, invisible or format characters, line separators,
            private-use or unassigned code points, or anything else the
            Nickname profile refuses; if it is too long, or holds ``": "``
            or anything that looks like it.
    """
    username = requested.strip()
    if not username:
        raise InvalidUsername("username is empty")
    if any(unicodedata.category(char) == "Cc" for char in username):
        raise InvalidUsername("username contains control characters")
    if not has_visible(username):
        raise InvalidUsername("username has nothing visible in it")
    for char in username:
        _check_name_character(char)
    username = _enforce(username)
    if nicknames.skeleton(NAME_SEPARATOR) in nicknames.skeleton(username):
        # "Server: x", or the same with a ratio sign (U+2236) for the colon,
        # would pass its messages off as the server's notices.
        raise InvalidUsername(f"username contains {NAME_SEPARATOR!r}")
    if len(username) > max_chars:
        raise InvalidUsername(
            f"username is longer than {max_chars} characters ({len(username)})"
        )
    return username


def _check_name_character(char: str) -> None:
    """Refuse a character of a name that hides, moves or breaks what is
    shown, or that shows differently on every screen, naming it.

    Raises:
        InvalidUsername: if ``char`` is one.
    """
    category = unicodedata.category(char)
    problem = _REFUSED_IN_NAMES.get(category)
    # Spaces are no problem: the profile makes each an ASCII space.
    if problem is None and category != "Zs" and is_blank_character(char):
        problem = "an invisible or format character"
    if problem is not None:
        raise InvalidUsername(f"username contains {problem} ({describe(char)})")


def _enforce(username: str) -> str:
    """The name as the Nickname profile shows it.

    Raises:
        InvalidUsername: naming the first character the profile refuses.
    """
    try:
        return nicknames.enforce(username)
    except UnicodeEncodeError as exc:
        refused = describe(exc.object[exc.start])
        raise InvalidUsername(
            f"username contains {refused}, which a nickname may not hold"
        ) from exc


def is_blank(message: str) -> bool:
    """Whether a message shows nothing (empty, only spaces or invisible
    characters such as ``\\u200b``), and so is ignored."""
    return not has_visible(message)


def check_message(message: str, max_chars: int) -> None:
    """Check a chat message before it is broadcast.

    Messages are refused, never repaired: the sender's echo must be the text
    it sent (the chat page matches echoes against what it sent, and takes a
    changed one for a lost message), and a refusal tells the sender why.

    Raises:
        InvalidMessage: if it is too long, holds control characters or line
            separators, bidi controls that are not balanced, or more than
            :data:`MAX_BLANK_RUN` blank characters in a row.
    """
    if len(message) > max_chars:
        raise InvalidMessage(
            f"message not sent: it is {len(message)} characters long, "
            f"the limit is {max_chars}"
        )
    if has_control_characters(message):
        raise InvalidMessage("message not sent: it contains control characters")
    if not has_balanced_bidi(message):
        raise InvalidMessage(
            "message not sent: it has bidi controls (embeddings, overrides or "
            "isolates) that are not closed in order"
        )
    if _BLANK_RUN.search(message) is not None:
        raise InvalidMessage(
            f"message not sent: it has more than {MAX_BLANK_RUN} blank "
            "characters in a row"
        )


def has_balanced_bidi(text: str) -> bool:
    """Whether every bidi embedding, override and isolate in ``text`` is
    closed, in order, within it.

    An unclosed one would reorder whatever a client shows after the message
    on the same line or paragraph; a stray closer would end one that the
    client opened around it. Balanced ones stay: right-to-left writers need
    them, and they end where the message does.
    """
    expected: list[str] = []
    for match in _BIDI_CONTROL.finditer(text):
        char = match.group()
        if char in _BIDI_CLOSER:
            expected.append(_BIDI_CLOSER[char])
        elif char in _BIDI_CLOSERS and (not expected or expected.pop() != char):
            return False
    return not expected
