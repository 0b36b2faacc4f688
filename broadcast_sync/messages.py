"""The text of what the chat sends: chat lines and the server's notices."""

from __future__ import annotations

#: The name on the server's own notices; no user may take it.
SERVER_NAME = "Server"
#: Between the name and the text of a chat line.
NAME_SEPARATOR = ": "


def chat_line(name: str, text: str) -> str:
    """A user's message as everybody sees it."""
    return f"{name}{NAME_SEPARATOR}{text}"


def server_notice(text: str) -> str:
    """A message from the server itself."""
    return chat_line(SERVER_NAME, text)


def joined(name: str) -> str:
    """The notice that ``name`` joined."""
    return server_notice(f"{name} has joined the chat")


def left(name: str) -> str:
    """The notice that ``name`` left."""
    return server_notice(f"{name} has left the chat")
