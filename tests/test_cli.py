"""The command line: help, version, usage errors, ``start`` and the man page."""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from broadcast_sync import __version__
from broadcast_sync.cli import build_parser, main
from broadcast_sync.config import ServerConfig
from tests.conftest import UNIT
from tests.wsclient import ChatClient

#: The repository: the Makefile, the man page, and the package.
REPO = Path(__file__).resolve().parent.parent
MAN_PAGE = REPO / "man" / "broadcast-server.1"

#: How long any command may take to do what a test expects.
PROCESS_TIMEOUT = 10 * UNIT

#: Every option of ``start``, written out so that a lost one is noticed.
START_OPTIONS = (
    "--host",
    "--port",
    "--mode",
    "--no-web",
    "--allowed-origin",
    "--trusted-proxy",
    "--certfile",
    "--keyfile",
    "--keyfile-password-env",
    "--auth-secret-file",
    "--metrics-allow",
    "--history-size",
    "--redis",
    "--redis-prefix",
    "--workers",
    "--rate-limit",
    "--rate-window",
    "--max-message-bytes",
    "--max-message-chars",
    "--max-username-chars",
    "--queue-size",
    "--max-queue-bytes",
    "--max-clients",
    "--max-clients-per-ip",
    "--handshake-rate",
    "--ping-interval",
    "--pong-timeout",
    "--write-timeout",
    "--batch-window",
    "--handshake-timeout",
    "--close-timeout",
    "--log-level",
    "--log-format",
)
CONNECT_OPTIONS = ("--url", "--host", "--port", "--username", "--cafile", "--insecure")

#: ServerConfig fields whose option is not named after the field.
OPTION_FOR_FIELD = {
    "allowed_origins": "--allowed-origin",
    "redis_url": "--redis",
    "web": "--no-web",
    "trusted_proxies": "--trusted-proxy",
}


def run_command(
    *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m broadcast_sync`` with ``args`` in an 80-column terminal."""
    return subprocess.run(
        [sys.executable, "-m", "broadcast_sync", *args],
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT,
        env={**os.environ, "COLUMNS": "80", **(env or {})},
        cwd=REPO,
        check=False,
    )


def parser_options(command: str) -> set[str]:
    """The long options that ``build_parser`` gives ``command``."""
    parser = build_parser()
    subparsers = next(
        action
        for action in parser._actions
        if isinstance(action.choices, dict) and command in action.choices
    )
    assert isinstance(subparsers.choices, dict)
    subparser = subparsers.choices[command]
    return {
        option
        for action in subparser._actions
        for option in action.option_strings
        if option.startswith("--") and option != "--help"
    }


def man_section(command: str) -> str:
    """The part of the committed man page about ``command``: from its
    heading to the next command's, or to the program's own options."""
    page = MAN_PAGE.read_text()
    start = page.index(f".SH COMMAND \\fI\\,'broadcast\\-server {command}'")
    ends = [
        page.find(heading, start + 1) for heading in (".SH COMMAND ", ".SH OPTIONS\n")
    ]
    return page[start : min(end for end in ends if end != -1)]


# Help and version


def test_top_level_help_lists_commands() -> None:
    """--help names both commands and --version, and exits 0."""
    result = run_command("--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: broadcast-server ")
    for word in ("start", "connect", "--version"):
        assert word in result.stdout


@pytest.mark.parametrize(
    ("command", "options"),
    [("start", START_OPTIONS), ("connect", CONNECT_OPTIONS)],
    ids=["start", "connect"],
)
def test_command_help_lists_every_option(
    command: str, options: tuple[str, ...]
) -> None:
    """Each command's --help lists every one of its options."""
    result = run_command(command, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: broadcast-server {command} ")
    missing = [option for option in options if f"  {option}" not in result.stdout]
    assert not missing, result.stdout


@pytest.mark.parametrize(
    ("command", "options"),
    [("start", START_OPTIONS), ("connect", CONNECT_OPTIONS)],
    ids=["start", "connect"],
)
def test_options_listed_here_are_all_the_options(
    command: str, options: tuple[str, ...]
) -> None:
    """The lists of options in this module are the parser's: a new option
    must be added here, and so is checked in the help and the man page."""
    assert parser_options(command) == set(options)


def test_start_has_an_option_for_every_server_setting() -> None:
    """Every ServerConfig field can be set with an option of ``start``."""
    fields = [field.name for field in dataclasses.fields(ServerConfig)]
    expected = {
        OPTION_FOR_FIELD.get(name, "--" + name.replace("_", "-")) for name in fields
    }
    assert sorted(expected - parser_options("start")) == []


def test_version() -> None:
    """--version prints the program's name and version, and exits 0."""
    result = run_command("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"broadcast-server {__version__}\n"


# Usage errors


#: Command lines with a usage error, and what the error message says.
USAGE_ERRORS = [
    (["start", "--port", "-1"], "port must be between 0 and 65535: -1"),
    (["start", "--port", "65536"], "port must be between 0 and 65535: 65536"),
    (["connect", "--port", "-1"], "port must be between 0 and 65535: -1"),
    (["connect", "--port", "http"], "not an integer: http"),
    (["start", "--rate-limit", "-1"], "must be 0 or more: -1"),
    (["start", "--rate-window", "0"], "must be a positive number: 0"),
    (["start", "--ping-interval", "0"], "must be a positive number: 0"),
    (["start", "--ping-interval", "nan"], "not a finite number: nan"),
    (["start", "--pong-timeout", "inf"], "not a finite number: inf"),
    (["start", "--write-timeout", "soon"], "not a number: soon"),
    (["start", "--batch-window", "-0.5"], "must be 0 or more: -0.5"),
    (["start", "--max-clients", "0"], "must be a positive integer: 0"),
    (["start", "--queue-size", "1.5"], "not an integer: 1.5"),
    (["start", "--log-level", "loud"], "invalid choice: 'loud'"),
    (["start", "--mode", "echo"], "invalid choice: 'echo'"),
    ([], "the following arguments are required: COMMAND"),
    (["stop"], "invalid choice: 'stop'"),
]


@pytest.mark.parametrize(
    ("argv", "message"),
    USAGE_ERRORS,
    ids=[" ".join(argv) or "no command" for argv, _ in USAGE_ERRORS],
)
def test_invalid_value_is_a_usage_error(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """An invalid option value exits 2 with a message saying what is wrong."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    errors = capsys.readouterr().err
    assert errors.startswith("usage: broadcast-server")
    assert message in errors.splitlines()[-1]


@pytest.mark.parametrize("command", ["start", "connect"])
def test_invalid_port_in_environment_is_a_usage_error(
    command: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A PORT variable that is not a port is reported like a bad --port."""
    monkeypatch.setenv("PORT", "http")
    with pytest.raises(SystemExit) as exit_info:
        main([command])
    assert exit_info.value.code == 2
    assert "argument --port: not an integer: http" in capsys.readouterr().err


def test_usage_error_from_the_command() -> None:
    """The installed command exits 2 on a usage error, with no traceback."""
    result = run_command("connect", "--port", "-1")
    assert result.returncode == 2
    assert "argument --port: port must be between 0 and 65535: -1" in result.stderr
    assert "Traceback" not in result.stderr


# start


def test_start_on_a_port_in_use() -> None:
    """``start`` on a port taken already says it cannot listen and exits 1."""
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = run_command("start", "--host", "127.0.0.1", "--port", str(port))
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"broadcast-server: cannot listen on 127.0.0.1:{port}")
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"]
)
def test_start_serves_until_signalled(signum: signal.Signals) -> None:
    """``start`` announces its port, serves clients, and exits 0 on SIGINT
    or SIGTERM."""
    process = subprocess.Popen(
        [sys.executable, "-m", "broadcast_sync", "start", "--host", "127.0.0.1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PORT": "0"},
        cwd=REPO,
    )
    try:
        assert process.stdout is not None
        announced = process.stdout.readline()
        match = re.fullmatch(r"Server started on port (\d+)\n", announced)
        assert match, announced
        ws = ChatClient.connect(f"ws://127.0.0.1:{match[1]}/ws?username=alice")
        assert ws.receive(timeout=PROCESS_TIMEOUT) == (
            "Server: alice has joined the chat"
        )
        ws.close()
        process.send_signal(signum)
        _, errors = process.communicate(timeout=PROCESS_TIMEOUT)
        assert process.returncode == 0, errors
        assert "Traceback" not in errors
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=PROCESS_TIMEOUT)


# The man page


def test_man_page_is_up_to_date(tmp_path: Path) -> None:
    """`make man` regenerates the committed man page byte for byte."""
    heading = MAN_PAGE.read_text().splitlines()[0]
    match = re.match(r'\.TH \S+ "1" "(\d{4})\\-(\d\d)\\-(\d\d)"', heading)
    assert match, heading
    year, month, day = map(int, match.groups())
    date = datetime.datetime(year, month, day, tzinfo=datetime.timezone.utc)
    output = tmp_path / "broadcast-server.1"
    result = subprocess.run(
        [
            "make",
            "--no-print-directory",
            "-s",
            # Use the tools next to this Python; never set up .venv for this.
            "--assume-old=.venv/.installed",
            "man",
            f"MAN_OUTPUT={output}",
            f"BIN={Path(sys.executable).parent}",
            f"SOURCE_DATE_EPOCH={int(date.timestamp())}",
        ],
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT,
        cwd=REPO,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    differences = list(
        difflib.unified_diff(
            MAN_PAGE.read_text().splitlines(),
            output.read_text().splitlines(),
            "committed",
            "generated",
            lineterm="",
        )
    )
    assert not differences, "out of date, run `make man`:\n" + "\n".join(differences)
    assert output.read_bytes() == MAN_PAGE.read_bytes()


@pytest.mark.parametrize(
    ("command", "option"),
    [
        *[("start", option) for option in START_OPTIONS],
        *[("connect", option) for option in CONNECT_OPTIONS],
    ],
)
def test_man_page_documents_option(command: str, option: str) -> None:
    """The man page has an entry for every option of ``start`` and ``connect``."""
    entry = "\\fB" + option.replace("-", "\\-") + "\\fR"
    assert entry in man_section(command)
