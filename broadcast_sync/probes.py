"""What operators ask the server over HTTP: is it alive, is it ready, and
its metrics.

These resources sit in the HTTP routes beside the chat page, on the same
port, but only addresses in ``--metrics-allow`` may read them.
"""

from __future__ import annotations

from collections.abc import Callable
from http import HTTPStatus

import h11
import prometheus_client

from broadcast_sync.http11 import Response, http_date
from broadcast_sync.metrics import Metrics

#: A probe's answer is about now: never cached.
NO_STORE = ("Cache-Control", "no-store")
PLAIN_TEXT = "text/plain; charset=utf-8"


def answer(status: HTTPStatus, content_type: str, body: bytes) -> Response:
    """A response of ``body``, fresh, closing the connection."""
    return Response(
        status,
        (
            ("Date", http_date()),
            NO_STORE,
            ("X-Content-Type-Options", "nosniff"),
            ("Content-Type", content_type),
            ("Content-Length", str(len(body))),
            ("Connection", "close"),
        ),
        body,
    )


class Liveness:
    """``/healthz``: 200 while the process serves requests at all."""

    def get(self, request: h11.Request) -> Response:
        """Always ``ok``: answering is the proof."""
        return answer(HTTPStatus.OK, PLAIN_TEXT, b"ok\n")


class Readiness:
    """``/readyz``: 200 while the server takes new clients, else 503 and why."""

    def __init__(self, unready: Callable[[], str | None]) -> None:
        """``unready`` says why the server takes no clients, or None."""
        self._unready = unready

    def get(self, request: h11.Request) -> Response:
        """``ready``, or 503 with the reason."""
        reason = self._unready()
        if reason is None:
            return answer(HTTPStatus.OK, PLAIN_TEXT, b"ready\n")
        body = (reason + "\n").encode("utf-8")
        return answer(HTTPStatus.SERVICE_UNAVAILABLE, PLAIN_TEXT, body)


class MetricsPage:
    """``/metrics``: the server's metrics in Prometheus's text format."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def get(self, request: h11.Request) -> Response:
        """Every metric, read now."""
        return answer(
            HTTPStatus.OK,
            prometheus_client.CONTENT_TYPE_LATEST,
            self._metrics.exposition(),
        )
