"""Encoding of the frames the server sends.

Server frames are never masked, so a frame's bytes are the same for every
client: each broadcast frame is encoded once here and the bytes are shared.
Data frames, one per broadcast event, are built here directly: their header
is two to ten bytes (RFC 6455, section 5.2), and a fresh wsproto
:class:`FrameProtocol` per frame costs the dispatcher thread ten times as
much. Control frames, which are rare, go through wsproto.
"""

from __future__ import annotations

import struct

from wsproto.frame_protocol import CloseReason, FrameProtocol, Opcode

#: The close codes the server sends, by the fault that causes them.
NORMAL_CLOSURE = CloseReason.NORMAL_CLOSURE  # 1000
GOING_AWAY = CloseReason.GOING_AWAY  # 1001: the server shuts down
UNSUPPORTED_DATA = CloseReason.UNSUPPORTED_DATA  # 1003: binary frames in chat mode
INVALID_PAYLOAD = CloseReason.INVALID_FRAME_PAYLOAD_DATA  # 1007: invalid UTF-8
POLICY_VIOLATION = CloseReason.POLICY_VIOLATION  # 1008: too slow to read
MESSAGE_TOO_BIG = CloseReason.MESSAGE_TOO_BIG  # 1009
INTERNAL_ERROR = CloseReason.INTERNAL_ERROR  # 1011: no pong in time
TRY_AGAIN_LATER = CloseReason.TRY_AGAIN_LATER  # 1013: the log is unreachable


def _encoder() -> FrameProtocol:
    return FrameProtocol(client=False, extensions=[])


#: First byte of an unfragmented message: FIN, no RSV bits, the opcode.
_FIN = 0x80
_TEXT_HEAD = bytes([_FIN | Opcode.TEXT])
_BINARY_HEAD = bytes([_FIN | Opcode.BINARY])
#: Payload lengths that fit the 7-bit field, and the 16-bit one.
_MAX_SHORT_LENGTH = 125
_MAX_MEDIUM_LENGTH = 0xFFFF
_LENGTH_16 = 126
_LENGTH_64 = 127


def encode_message(data: str | bytes) -> bytes:
    """One unfragmented, unmasked text (``str``) or binary (``bytes``) message."""
    if isinstance(data, str):
        head, payload = _TEXT_HEAD, data.encode("utf-8")
    else:
        head, payload = _BINARY_HEAD, data
    length = len(payload)
    if length <= _MAX_SHORT_LENGTH:
        size = bytes([length])
    elif length <= _MAX_MEDIUM_LENGTH:
        size = struct.pack("!BH", _LENGTH_16, length)
    else:
        size = struct.pack("!BQ", _LENGTH_64, length)
    return head + size + payload


def encode_close(code: int, reason: str = "") -> bytes:
    """A close frame; wsproto cuts ``reason`` to fit 125 bytes."""
    return bytes(_encoder().close(code, reason))


def encode_ping(payload: bytes = b"") -> bytes:
    """A ping frame."""
    return bytes(_encoder().ping(payload))


def encode_pong(payload: bytes) -> bytes:
    """A pong frame answering a ping with ``payload``."""
    return bytes(_encoder().pong(payload))
