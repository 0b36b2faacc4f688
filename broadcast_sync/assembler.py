"""Reassembly of fragmented messages, with a size limit checked early."""

from __future__ import annotations


class MessageTooBig(Exception):
    """A message grew past the limit; the message says how far."""


class MessageAssembler:
    """Joins the fragments of one message at a time.

    wsproto hands over a message in pieces as its frames arrive, so counting
    bytes here refuses a huge message after ``max_bytes``, not at its end.
    Text fragments are ``str``, binary ones ``bytes``; wsproto never mixes
    them within a message. Owned by one reader thread.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._size = 0
        self._text: list[str] = []
        self._binary: list[bytes | bytearray] = []

    def add(
        self, fragment: str | bytes | bytearray, finished: bool
    ) -> str | bytes | None:
        """Add a fragment; return the whole message once ``finished``.

        Raises:
            MessageTooBig: if the message is over ``max_bytes``.
        """
        if isinstance(fragment, str):
            size = len(fragment.encode("utf-8"))
            self._text.append(fragment)
        else:
            size = len(fragment)
            self._binary.append(fragment)
        # An empty fragment counts as one byte: endless empty frames must
        # reach the limit too.
        self._size += size or 1
        if self._size > self.max_bytes:
            raise MessageTooBig(f"message over {self.max_bytes} bytes")
        if not finished:
            return None
        message = "".join(self._text) if self._text else b"".join(self._binary)
        self._size = 0
        self._text.clear()
        self._binary.clear()
        return message
