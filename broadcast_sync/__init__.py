"""A threaded WebSocket broadcast (chat) server and its terminal client."""

__version__ = "1.0.0"
