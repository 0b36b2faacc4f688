"""The generator's side of the wire: handshake, frames and chat payloads.

A minimal WebSocket client, just enough for the load generator and fast in
pure Python: the opening handshake as raw bytes, masked client text frames,
a decoder for the server's unmasked frames, and the fixed-size chat payload
that carries sender, sequence number and send time.

Every name is ``NAME_CHARS`` long and every chat payload ``PAYLOAD_CHARS``,
so every broadcast ``NAME: PAYLOAD`` frame is exactly
:data:`CHAT_FRAME_BYTES` long and every join notice exactly
:data:`JOIN_FRAME_BYTES`: a receiver that only counts bytes counts
messages exactly.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import os
import random

#: Names are ``c`` and five digits: up to 100,000 clients, all the same length.
NAME_CHARS = 6
#: Chat payload: sender (6 digits), sequence (9), send time in ns (20), padding.
PAYLOAD_CHARS = 48
#: ``NAME: PAYLOAD`` as broadcast by the server.
CHAT_TEXT_BYTES = NAME_CHARS + len(": ") + PAYLOAD_CHARS
#: Under 126 bytes, a frame has a 2-byte header.
CHAT_FRAME_BYTES = 2 + CHAT_TEXT_BYTES
#: ``Server: c00001 has joined the chat``.
JOIN_FRAME_BYTES = 2 + len("Server: ") + NAME_CHARS + len(" has joined the chat")
#: ``Server: c00001 has left the chat``.
LEAVE_FRAME_BYTES = 2 + len("Server: ") + NAME_CHARS + len(" has left the chat")

#: RFC 6455, section 1.3: appended to the key before hashing.
ACCEPT_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#: The end of an HTTP response head.
HEAD_END = b"\r\n\r\n"

TEXT = 0x1
CLOSE = 0x8
PING = 0x9
#: RFC 6455, section 7.4.1: the purpose of the connection is fulfilled.
NORMAL_CLOSURE = 1000


def client_name(index: int) -> str:
    """The name of client ``index``: ``c00042``."""
    return f"c{index:05d}"


# Handshake


@dataclasses.dataclass(frozen=True)
class Handshake:
    """An opening handshake request and the accept value that answers it."""

    request: bytes
    accept: bytes

    @classmethod
    def for_client(cls, host: str, port: int, name: str, query: str = "") -> Handshake:
        """The upgrade request of client ``name`` (no Origin: not a browser).

        ``query`` is appended to the query string, such as ``&format=json``.
        """
        key = base64.b64encode(os.urandom(16))
        request = (
            f"GET /ws?username={name}{query} HTTP/1.1\r\n"
            f"Host: {host}:{port}\r\n"
            "Upgrade: websocket\r\n"
            "Connection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key.decode('ascii')}\r\n"
            "Sec-WebSocket-Version: 13\r\n"
            "\r\n"
        ).encode("ascii")
        accept = base64.b64encode(hashlib.sha1(key + ACCEPT_GUID).digest())
        return cls(request, accept)

    def check_response(self, head: bytes) -> int:
        """The response's status code; 101 only if the accept value is right."""
        status_line, *header_lines = head.split(b"\r\n")
        parts = status_line.split(b" ", 2)
        if len(parts) < 2 or not parts[1].isdigit():
            return 0
        status = int(parts[1])
        if status != 101:
            return status
        for line in header_lines:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"sec-websocket-accept":
                return status if value.strip() == self.accept else 0
        return 0


# Client frames


class Masker:
    """Masks client frames (RFC 6455, section 5.3) with a fresh key each.

    The keys come from Python's PRNG, not ``os.urandom``: masking protects
    proxies from scripts in browsers, which a benchmark is not, and a system
    call per frame would be a large part of the generator's cost under flood.
    """

    def __init__(self, seed: int | None = None) -> None:
        self._random = random.Random(seed)

    def text_frame(self, payload: bytes) -> bytes:
        """A final, masked text frame carrying ``payload`` (under 126 bytes)."""
        return self.frame(TEXT, payload)

    def close_frame(self, code: int = NORMAL_CLOSURE) -> bytes:
        """A masked close frame with ``code`` and no reason."""
        return self.frame(CLOSE, code.to_bytes(2, "big"))

    def frame(self, opcode: int, payload: bytes) -> bytes:
        """A final, masked frame of ``opcode`` carrying ``payload`` (< 126 bytes)."""
        length = len(payload)
        if length > 125:
            raise ValueError("the generator only sends frames under 126 bytes")
        key = self._random.randbytes(4)
        mask = (key * (length // 4 + 1))[:length]
        masked = int.from_bytes(payload, "big") ^ int.from_bytes(mask, "big")
        return (
            bytes((0x80 | opcode, 0x80 | length)) + key + masked.to_bytes(length, "big")
        )


def chat_payload(sender: int, seq: int, sent_ns: int) -> bytes:
    """The fixed-size payload of message ``seq`` of ``sender``, sent at ``sent_ns``."""
    return f"{sender:06d} {seq:09d} {sent_ns:020d} ".encode("ascii").ljust(
        PAYLOAD_CHARS, b"."
    )


#: Where the fields sit in a broadcast ``NAME: PAYLOAD`` text.
_PAYLOAD_START = NAME_CHARS + 2
_SENDER = slice(_PAYLOAD_START, _PAYLOAD_START + 6)
_SEQ = slice(_PAYLOAD_START + 7, _PAYLOAD_START + 16)
_SENT = slice(_PAYLOAD_START + 17, _PAYLOAD_START + 37)


def parse_chat(text: bytes) -> tuple[int, int, int] | None:
    """``(sender, seq, sent_ns)`` of a broadcast chat text, or None for others."""
    if len(text) != CHAT_TEXT_BYTES or text.startswith(b"Server: "):
        return None
    return int(text[_SENDER]), int(text[_SEQ]), int(text[_SENT])


# Server frames


class FrameDecoder:
    """Splits the server's byte stream into ``(opcode, payload)`` frames.

    The server never fragments and never masks, so a frame is a message.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """Add ``data``; return the frames it completes."""
        buffer = self._buffer
        buffer += data
        frames: list[tuple[int, bytes]] = []
        position = 0
        available = len(buffer)
        while available - position >= 2:
            length = buffer[position + 1] & 0x7F
            start = position + 2
            if length >= 126:
                start += 2 if length == 126 else 8
                length = int.from_bytes(buffer[position + 2 : start], "big")
            end = start + length
            if start > available or end > available:
                break
            frames.append((buffer[position] & 0x0F, bytes(buffer[start:end])))
            position = end
        del buffer[:position]
        return frames
