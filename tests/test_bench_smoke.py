"""The benchmark (tests/bench): its wire format, and a tiny run end to end."""

from __future__ import annotations

import contextlib
import json
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.bench import wire
from tests.bench.certificate import make_certificate
from tests.bench.loadgen import TLSChannel, join_notice_bytes
from tests.bench.resume import Frame, ResumeError, check_replay, sender_text
from tests.bench.tracking import ReceiverLog, Tracker, percentile
from tests.conftest import UNIT

REPOSITORY = Path(__file__).resolve().parents[1]


def unmask(frame: bytes) -> tuple[int, bytes]:
    """The opcode and the unmasked payload of a short client frame."""
    assert frame[0] & 0x80, "FIN must be set"
    assert frame[1] & 0x80, "client frames must be masked"
    length = frame[1] & 0x7F
    key, masked = frame[2:6], frame[6:]
    assert len(masked) == length
    return frame[0] & 0x0F, bytes(b ^ key[i % 4] for i, b in enumerate(masked))


def server_frame(text: bytes) -> bytes:
    """An unmasked text frame as the server sends it."""
    if len(text) < 126:
        return bytes((0x81, len(text))) + text
    return bytes((0x81, 126)) + len(text).to_bytes(2, "big") + text


def test_masked_frame_carries_the_payload() -> None:
    """A client frame unmasks to the payload, with a fresh key each time."""
    masker = wire.Masker(seed=1)
    payload = wire.chat_payload(7, 42, 123_456_789)
    first, second = masker.text_frame(payload), masker.text_frame(payload)
    assert unmask(first) == (wire.TEXT, payload)
    assert unmask(second) == (wire.TEXT, payload)
    assert first[2:6] != second[2:6]


def test_every_chat_frame_has_the_same_size() -> None:
    """Broadcast chat frames and join notices have the sizes counted on."""
    smallest = b"c00000: " + wire.chat_payload(0, 0, 0)
    largest = b"c99999: " + wire.chat_payload(99_999, 10**9 - 1, 10**20 - 1)
    for text in (smallest, largest):
        assert len(server_frame(text)) == wire.CHAT_FRAME_BYTES
    join = b"Server: c12345 has joined the chat"
    assert len(server_frame(join)) == wire.JOIN_FRAME_BYTES


def test_chat_text_parses_back() -> None:
    """Sender, sequence number and send time survive the round trip."""
    text = b"c00003: " + wire.chat_payload(3, 17, 98_765_432_109)
    assert wire.parse_chat(text) == (3, 17, 98_765_432_109)
    assert wire.parse_chat(b"Server: c00003 has joined the chat") is None


@pytest.mark.parametrize("chunk", [1, 5, 64, 4096])
def test_decoder_splits_a_stream_cut_anywhere(chunk: int) -> None:
    """Frames come out whole whatever the reads' sizes, long ones included."""
    texts = [b"a", b"x" * 125, b"y" * 126, b"z" * 300]
    stream = b"".join(server_frame(text) for text in texts)
    decoder = wire.FrameDecoder()
    frames = []
    for start in range(0, len(stream), chunk):
        frames += decoder.feed(stream[start : start + chunk])
    assert frames == [(wire.TEXT, text) for text in texts]


def test_handshake_checks_the_accept_value() -> None:
    """Only a 101 with the right Sec-WebSocket-Accept counts as accepted."""
    handshake = wire.Handshake.for_client("127.0.0.1", 8080, "c00001")
    good = b"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: "
    assert handshake.check_response(good + handshake.accept) == 101
    assert handshake.check_response(good + b"d3Jvbmc=") == 0
    assert handshake.check_response(b"HTTP/1.1 503 Service Unavailable") == 503


def test_tracker_sees_disorder_and_windows_latency() -> None:
    """Out-of-order messages are counted; latency only inside the window."""
    tracker = Tracker()
    tracker.open_window(start_ns=1_000, end_ns=2_000)
    log = ReceiverLog()
    frames = [
        (wire.TEXT, b"c00001: " + wire.chat_payload(1, seq, sent))
        for seq, sent in ((0, 500), (2, 1_500), (1, 1_600))
    ]
    tracker.on_frames(log, frames, now_ns=1_700)
    assert log.chats == 3
    assert tracker.out_of_order == 1
    assert sorted(tracker.latencies_ns) == [100, 200]


@pytest.mark.parametrize(
    ("fraction", "expected"), [(0.5, 50), (0.9, 90), (0.99, 99), (1.0, 100)]
)
def test_percentile_is_nearest_rank(fraction: float, expected: int) -> None:
    """Percentiles of 1..100 are the values of that rank."""
    assert percentile(list(range(1, 101)), fraction) == expected


def test_close_frame_carries_the_code() -> None:
    """The generator's close frame is masked and says 1000."""
    frame = wire.Masker(seed=2).close_frame()
    assert unmask(frame) == (wire.CLOSE, (1000).to_bytes(2, "big"))


def check(events: list[dict[str, Any]], messages: int) -> None:
    """Check a replay of ``events`` after ``ab.7``: c00001 left, c00000 sent."""
    welcome = {"type": "welcome", "user": "c00001", "resumed": True}
    frames = [
        Frame(wire.TEXT, json.dumps(payload).encode(), 0)
        for payload in [welcome, *events]
    ]
    check_replay(
        frames,
        since="ab.7",
        resumer="c00001",
        sender="c00000",
        round_number=3,
        messages=messages,
    )


def test_check_replay_accepts_exactly_what_was_missed() -> None:
    """The resumer's leave then the messages, ids consecutive, and nothing else."""
    leave = {"type": "leave", "id": "ab.8", "user": "c00001"}
    chats = [
        {
            "type": "message",
            "id": f"ab.{9 + index}",
            "user": "c00000",
            "text": sender_text(3, index).decode(),
        }
        for index in range(2)
    ]
    check([leave, *chats], messages=2)
    with pytest.raises(ResumeError, match="ids"):
        check([leave, chats[1]], messages=2)
    with pytest.raises(ResumeError, match="not those sent"):
        check([leave, *chats], messages=3)


def test_join_notices_add_up_whatever_the_order() -> None:
    """A room of 3 sends 3 + 2 + 1 join notices."""
    assert join_notice_bytes(3) == 6 * wire.JOIN_FRAME_BYTES


def tls_pair(
    tmp_path: Path, served: str, trusted: str
) -> tuple[TLSChannel, ssl.SSLObject, ssl.MemoryBIO, ssl.MemoryBIO]:
    """A generator's channel and a server's SSL object, wired in memory.

    The server has a certificate made in ``tmp_path / served``; the client
    trusts the one made in ``tmp_path / trusted``.
    """
    certificates = {}
    for name in {served, trusted}:
        (tmp_path / name).mkdir()
        certificates[name] = make_certificate(tmp_path / name)
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    files = certificates[served].files
    server_context.load_cert_chain(files.cert, files.key)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    server = server_context.wrap_bio(incoming, outgoing, server_side=True)
    channel = TLSChannel(certificates[trusted].client_context(), "127.0.0.1")
    return channel, server, incoming, outgoing


def shake_hands(
    channel: TLSChannel,
    server: ssl.SSLObject,
    incoming: ssl.MemoryBIO,
    outgoing: ssl.MemoryBIO,
) -> None:
    """Pass each side's flights to the other until the client is done."""
    for _ in range(4):
        incoming.write(channel.handshake())
        if channel.established:
            break
        with contextlib.suppress(ssl.SSLWantReadError):
            server.do_handshake()
        channel.incoming.write(outgoing.read())


def test_tls_channel_verifies_and_carries_bytes(tmp_path: Path) -> None:
    """The generator's TLS: it trusts its certificate, and bytes cross both ways."""
    channel, server, incoming, outgoing = tls_pair(tmp_path, "run", "run")
    shake_hands(channel, server, incoming, outgoing)
    assert channel.established
    incoming.write(channel.encrypt(b"GET /ws HTTP/1.1\r\n\r\n"))
    assert server.read(1024) == b"GET /ws HTTP/1.1\r\n\r\n"
    frames = server_frame(b"a") + server_frame(b"b" * 300)
    server.write(frames)
    records = outgoing.read()
    # Cut mid-record: only the complete records come out, the rest waits.
    assert channel.decrypt(records[:10]) == b""
    assert channel.decrypt(records[10:]) == frames


def test_tls_channel_refuses_another_certificate(tmp_path: Path) -> None:
    """A server with a certificate other than the run's fails verification."""
    channel, server, incoming, outgoing = tls_pair(tmp_path, "other", "run")
    with pytest.raises(ssl.SSLCertVerificationError):
        shake_hands(channel, server, incoming, outgoing)


def run_bench(tmp_path: Path, *options: str) -> tuple[str, dict[str, Any]]:
    """Run ``python -m tests.bench`` as ``make bench`` does; its output and JSON."""
    output = tmp_path / "bench.json"
    completed = subprocess.run(
        [sys.executable, "-m", "tests.bench", *options, "--json", str(output)],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=120 * UNIT,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    return completed.stdout, json.loads(output.read_text())


def test_quick_room_and_lone_count_every_delivery(tmp_path: Path) -> None:
    """A tiny room and lone-message run deliver, count and report everything."""
    options = ["--quick", "--scenario", "room", "--scenario", "lone"]
    stdout, document = run_bench(tmp_path, *options, "--sizes", "20")
    rows = {row["scenario"]: row for row in document["scenarios"]}
    assert set(rows) == {"room", "lone"}
    assert "room 20" in stdout
    assert "lone 4" in stdout
    for row in rows.values():
        faults = {name: row[name] for name in ("lost", "dropped", "out_of_order")}
        assert faults == {"lost": 0, "dropped": 0, "out_of_order": 0}, row
        assert row["unexpected"] == 0, row
        assert row["extra"]["refused"] == 0, row
        assert row["extra"]["notices"] == 1.0, row
        assert row["messages_sent"] > 0, row
        assert row["deliveries"] > 0, row
        assert row["latency"]["samples"] > 0, row
        assert row["server_rss_mib"] > 0, row
        assert row["server_warnings"] == 0, row
    lone = rows["lone"]
    assert lone["messages_sent"] == 8
    assert lone["latency"]["samples"] == 8 * 4
    assert lone["deliveries"] == 8 * 4
    assert document["summary"]["room_capacity"] in (20, None)
    assert document["settings"]["machine"]["mode"] == "embedded"
    assert all(row["redis_cpu_percent"] is None for row in rows.values())


def test_quick_tls_room_flood_and_lone_count_every_delivery(tmp_path: Path) -> None:
    """With --tls, a tiny room, flood and lone run go through TLS, all counted."""
    options = ["--quick", "--tls", "--sizes", "20"]
    scenarios = ["--scenario", "room", "--scenario", "flood", "--scenario", "lone"]
    stdout, document = run_bench(tmp_path, *options, *scenarios)
    assert document["settings"]["tls"] is True
    assert document["settings"]["machine"]["tls"] is True
    assert "embedded mode over TLS" in stdout
    rows = {row["scenario"]: row for row in document["scenarios"]}
    assert set(rows) == {"room", "flood", "lone"}
    for row in rows.values():
        faults = {name: row[name] for name in ("lost", "dropped", "out_of_order")}
        assert faults == {"lost": 0, "dropped": 0, "out_of_order": 0}, row
        assert row["unexpected"] == 0, row
        assert row["extra"]["tls_errors"] == 0, row
        assert row["extra"]["refused"] == 0, row
        assert row["extra"]["notices"] == 1.0, row
        assert row["deliveries"] > 0, row
        assert row["latency"]["samples"] > 0, row
        assert row["server_warnings"] == 0, row
    assert rows["lone"]["deliveries"] == 8 * 4


def test_quick_redis_room_and_resume_replay_exactly(tmp_path: Path) -> None:
    """With --redis: a tiny room delivers everything, resumes replay exactly."""
    options = ["--quick", "--redis", "--scenario", "room", "--scenario", "resume"]
    stdout, document = run_bench(tmp_path, *options, "--sizes", "20")
    assert document["settings"]["redis"] is True
    assert document["settings"]["machine"]["mode"] == "redis"
    rows = {row["scenario"]: row for row in document["scenarios"]}
    assert set(rows) == {"room", "resume"}
    assert "redis mode" in stdout
    room, resume = rows["room"], rows["resume"]
    faults = {name: room[name] for name in ("lost", "dropped", "out_of_order")}
    assert faults == {"lost": 0, "dropped": 0, "out_of_order": 0}, room
    assert room["deliveries"] > 0, room
    assert room["redis_cpu_percent"] is not None, room
    assert resume["extra"]["failed"] == 0, resume
    assert resume["extra"]["resumes"] == 3, resume
    assert resume["latency"]["samples"] == 3, resume
    assert resume["extra"]["redis_cpu_ms"] >= 0, resume
    assert resume["server_warnings"] == 0, resume
    assert document["summary"]["resume"]["events"] == 50


def test_workers_scenario_needs_redis(tmp_path: Path) -> None:
    """Asking for the workers scenario without --redis is a usage error."""
    completed = subprocess.run(
        [sys.executable, "-m", "tests.bench", "--scenario", "workers"],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=30 * UNIT,
        check=False,
    )
    assert completed.returncode == 2
    assert "needs --redis" in completed.stderr


#: Enough clients that a server whose teardown is quadratic, or whose
#: threads fight over the GIL, froze: 5,000 reset at once did not clear in
#: minutes and SIGTERM went unheeded. Five thousand clients fit in the
#: machine's 20,000 open files per process, on each side.
MASS_CLIENTS = 5000


def test_mass_disconnect_and_shutdown_at_scale(tmp_path: Path) -> None:
    """Thousands of clients reset at once are all let go, newcomers are
    answered meanwhile, and SIGTERM with thousands connected exits with 0.

    Only that they happen at all is checked here, with the benchmark's
    generous time limits; how fast is for ``make bench`` to say.
    """
    options = ["--scale-clients", str(MASS_CLIENTS)]
    scenarios = ["--scenario", "disconnect", "--scenario", "shutdown"]
    stdout, document = run_bench(tmp_path, *options, *scenarios)
    rows = {row["scenario"]: row for row in document["scenarios"]}
    disconnect, shutdown = rows["disconnect"]["extra"], rows["shutdown"]["extra"]
    assert disconnect["refused"] == 0, disconnect
    assert disconnect["cleared"] == 1.0, disconnect
    assert disconnect["probes"] > 0, disconnect
    assert disconnect["probes_failed"] == 0, disconnect
    assert disconnect["server_killed"] == 0.0, disconnect
    assert shutdown["refused"] == 0, shutdown
    assert shutdown["exit_code"] == 0.0, shutdown
    assert shutdown["server_killed"] == 0.0, shutdown
    assert rows["disconnect"]["server_warnings"] == 0
    assert rows["shutdown"]["server_warnings"] == 0
    assert "mass disconnect of 5000 clients" in stdout


def test_quick_spike_reports_each_phase(tmp_path: Path) -> None:
    """The spike scenario doubles a small room's rate for a while and says
    how latency fared before, during and after: all delivered, in order."""
    stdout, document = run_bench(tmp_path, "--quick", "--scenario", "spike")
    (row,) = document["scenarios"]
    assert row["scenario"] == "spike"
    assert (row["lost"], row["out_of_order"], row["dropped"]) == (0, 0, 0), row
    # 20 clients, 5 s at 1 message a second each, 5 s at 2, 10 s at 1.
    assert abs(row["messages_sent"] - 20 * (5 + 10 + 10)) <= 40, row
    extra = row["extra"]
    assert extra["p99_before_ms"] > 0
    assert extra["p99_spike_ms"] > 0
    assert extra["recovered_s"] >= 0
    assert "spike: a room of 20 at twice its rate for 5 s" in stdout


def test_quick_overload_accounts_for_every_message(tmp_path: Path) -> None:
    """The overload scenario finds a small room's capacity, sends at 1.5
    times it, and accounts for every message: delivered or refused."""
    stdout, document = run_bench(tmp_path, "--quick", "--scenario", "overload")
    (row,) = document["scenarios"]
    assert row["scenario"] == "overload"
    assert (row["out_of_order"], row["dropped"]) == (0, 0), row
    extra = row["extra"]
    assert extra["rate"] == pytest.approx(1.5 * extra["capacity_rate"])
    assert extra["lost_silently"] == 0, extra
    assert extra["server_received"] == row["messages_sent"] > 0, extra
    assert extra["probes"] > 0, extra
    assert extra["probes_failed"] == 0, extra
    assert extra["health_failed"] == 0, extra
    assert "overload: a room of 20 at" in stdout
