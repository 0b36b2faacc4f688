"""The server's log: JSON lines from a real server process, and the throttle
of lines about one address."""

from __future__ import annotations

import contextlib
import json
import logging
from typing import Any

import pytest

from broadcast_sync.logs import LogFormat, LogSettings, Throttle, configure
from tests.conftest import UNIT, http_exchange, run_server, wait_until
from tests.serverproc import ServerProcess
from tests.test_web_http import page_request
from tests.wsclient import ChatClient

#: The keys of every JSON line.
JSON_KEYS = {"ts", "level", "logger", "message"}


def json_lines(server: ServerProcess) -> list[dict[str, Any]]:
    """Every line the server logged so far, each parsed as one JSON object."""
    return [json.loads(line) for line in server.log_lines()]


def test_json_lines_carry_the_fields_of_each_connection_event() -> None:
    """With --log-format json, every line is one object with ts, level,
    logger and message, and connection events carry client, user, reason,
    code and status as fields."""
    with ServerProcess(["--port", "0", "--log-format", "json"]) as server:
        client = ChatClient.connect(
            f"ws://127.0.0.1:{server.port}/ws?username=zo%C3%AB"
        )
        with contextlib.closing(client):
            assert client.receive(timeout=5 * UNIT) == "Server: zoë has joined the chat"
        http_exchange(server.port, page_request("/nowhere"))
        wait_until(
            lambda: any(" left: " in line["message"] for line in json_lines(server)),
            "the leave logged",
        )
    lines = json_lines(server)
    assert all(line.keys() >= JSON_KEYS for line in lines), lines
    by_message = {line["message"].split(" ")[0]: line for line in lines}
    joined = next(line for line in lines if " joined;" in line["message"])
    assert (joined["level"], joined["logger"]) == ("INFO", "broadcast_sync.dispatcher")
    assert joined["user"] == "zoë"
    assert joined["client"].startswith("127.0.0.1:")
    left = next(line for line in lines if " left: " in line["message"])
    assert (left["user"], left["reason"], left["code"]) == ("zoë", "client_close", 1000)
    rejected = by_message["rejected"]
    assert (rejected["status"], rejected["reason"]) == (404, "no such path: /nowhere")


def test_text_lines_stay_as_they_were() -> None:
    """The default format is text: time, level, logger and message."""
    with ServerProcess(["--port", "0"]) as server:
        pass
    assert any(
        " INFO broadcast_sync.server: listening on " in line
        for line in server.log_lines()
    )


def test_refusals_of_one_address_are_throttled(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A client failing handshakes again and again gets a few lines, not one
    per attempt; the count of those suppressed comes with a later line."""
    caplog.set_level(logging.INFO, logger="broadcast_sync.server")
    with run_server() as server:
        for _ in range(20):
            http_exchange(server.port, page_request("/nowhere"))
    refusals = [
        record.getMessage()
        for record in caplog.records
        if record.getMessage().startswith("rejected ")
    ]
    assert len(refusals) == 5, refusals


def test_throttle_admits_a_few_lines_per_window_then_tells_the_count() -> None:
    """Five lines per window get through; the first line of the next window
    says how many were dropped; each address has its own window."""
    throttle = Throttle(lines=5, window=10.0)
    assert [throttle.admit("a", 0.0) for _ in range(7)] == [0, 0, 0, 0, 0, None, None]
    assert throttle.admit("b", 1.0) == 0
    assert throttle.admit("a", 9.9) is None
    assert throttle.admit("a", 10.0) == 3
    assert throttle.admit("a", 10.1) == 0


def test_throttle_forgets_the_oldest_addresses_past_its_bound() -> None:
    """Many addresses cost bounded memory: the oldest windows go first."""
    throttle = Throttle(lines=1, window=10.0, addresses=2)
    assert throttle.admit("a", 0.0) == 0
    assert throttle.admit("b", 0.0) == 0
    assert throttle.admit("c", 0.0) == 0  # "a" is forgotten
    assert throttle.admit("a", 0.0) == 0
    assert throttle.admit("c", 0.0) is None


@pytest.mark.parametrize("workers", [False, True])
def test_configure_writes_json_with_the_process_for_workers(
    capsys: pytest.CaptureFixture[str], workers: bool
) -> None:
    """A JSON line names the process only when there are workers."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    root.handlers = []
    try:
        configure(LogSettings(format=LogFormat.JSON, workers=workers))
        logging.getLogger("broadcast_sync.test").info("hi", extra={"user": "zoë"})
    finally:
        root.handlers, root.level = saved[0], saved[1]
    line = json.loads(capsys.readouterr().err)
    assert line["message"] == "hi"
    assert line["user"] == "zoë"
    assert ("process" in line) is workers
