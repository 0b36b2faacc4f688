"""Encoding of the frames the server sends.

Server frames are never masked, so a frame's bytes are the same for every
client: each broadcast frame is encoded once here and the bytes are shared.
Each call uses a fresh :class:`FrameProtocol`, whose message state is not
safe to share between threads; creating one costs about a microsecond.
"""

from __future__ import annotations

from wsproto.frame_protocol import CloseReason, FrameProtocol

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


def encode_message(data: str | bytes) -> bytes:
    """One unfragmented text (``str``) or binary (``bytes``) message."""
    return bytes(_encoder().send_data(data, fin=True))


def encode_close(code: int, reason: str = "") -> bytes:
    """A close frame; wsproto cuts ``reason`` to fit 125 bytes."""
    return bytes(_encoder().close(code, reason))


def encode_ping(payload: bytes = b"") -> bytes:
    """A ping frame."""
    return bytes(_encoder().ping(payload))


def encode_pong(payload: bytes) -> bytes:
    """A pong frame answering a ping with ``payload``."""
    return bytes(_encoder().pong(payload))
