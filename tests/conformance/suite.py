"""Autobahn's fuzzingclient: its spec, its run, and the cases it planned.

``wstest -m fuzzingclient -s spec.json`` connects once per case to every
server of the spec and writes, to the spec's ``outdir``, one JSON and one
HTML file per case and ``index.json`` / ``index.html`` at the end. It prints
the list of cases it will run before the first one, which tells afterwards
whether the report covers them all.

Over ``wss://``, a server's ``hostname`` in the spec makes wstest verify the
server's certificate for that name (Twisted's ``optionsForClientTLS``,
trusting what OpenSSL's default paths hold); without it wstest uses
``ClientContextFactory``, which verifies nothing and sends no SNI.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

#: The server's name in the report (``index.json`` is keyed by it).
AGENT = "broadcast-sync"
#: Excluded from every run: permessage-deflate, which the server does not offer.
COMPRESSION_CASES = ("12.*", "13.*")
#: Excluded from a quick run as well: limits and performance, 2 to 3 minutes.
PERFORMANCE_CASES = ("9.*",)
#: Case files are named after the agent, dots and dashes made underscores.
CASE_FILE_PREFIX = "broadcast_sync_case_"
#: How long wstest gets to stop after SIGTERM before it is killed.
TERMINATE_SECONDS = 5.0
#: wstest's output, and the server's log, kept beside the report.
WSTEST_LOG = "wstest.log"
SERVER_LOG = "server.log"
#: The line where wstest lists the cases it will run.
PLAN_PREFIX = "Cases = "


@dataclasses.dataclass(frozen=True)
class SuiteRun:
    """What became of one run of wstest."""

    #: wstest's exit status; None if it was stopped at the timeout.
    returncode: int | None
    #: Case ids that wstest said it would run, in its order.
    planned: list[str]
    seconds: float
    #: The last line wstest printed: where it was when it stopped.
    last_line: str


def excluded_cases(quick: bool) -> tuple[str, ...]:
    """The case patterns a run leaves out."""
    return PERFORMANCE_CASES + COMPRESSION_CASES if quick else COMPRESSION_CASES


def clear_previous(report_dir: Path) -> None:
    """Remove a previous run's report, so that it is never read as this run's.

    Only files the runner or wstest write are removed, never the directory.
    """
    names = ("index.json", "index.html", "spec.json", WSTEST_LOG, SERVER_LOG)
    case_files = (f"{CASE_FILE_PREFIX}*.json", f"{CASE_FILE_PREFIX}*.html")
    for pattern in names + case_files:
        for path in report_dir.glob(pattern):
            path.unlink()


def write_spec(
    report_dir: Path,
    url: str,
    excluded: Sequence[str],
    verify_hostname: str | None = None,
) -> Path:
    """Write the fuzzingclient's spec into ``report_dir``; return its path.

    ``verify_hostname``: the name (or address) that a ``wss://`` server's
    certificate must be valid for; None: no verification.
    """
    server = {"agent": AGENT, "url": url}
    if verify_hostname is not None:
        server["hostname"] = verify_hostname
    spec = {
        "outdir": str(report_dir.resolve()),
        "servers": [server],
        "cases": ["*"],
        "exclude-cases": list(excluded),
        "exclude-agent-cases": {},
    }
    path = report_dir / "spec.json"
    path.write_text(json.dumps(spec, indent=2) + "\n")
    return path


def run_fuzzingclient(
    wstest: Path,
    spec: Path,
    log_path: Path,
    timeout: float,
    environment: Mapping[str, str] | None = None,
) -> SuiteRun:
    """Run every case of ``spec``, wstest's output going to ``log_path``.

    ``environment``: variables set for wstest besides the runner's own.

    wstest runs in a session of its own: Ctrl+C reaches only the runner,
    which stops it here, as it does at the timeout.
    """
    started = time.monotonic()
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(wstest), "-m", "fuzzingclient", "-s", str(spec)],
            cwd=spec.parent,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(environment or {})},
            start_new_session=True,
        )
        try:
            returncode: int | None = process.wait(timeout)
        except subprocess.TimeoutExpired:
            returncode = None
        finally:
            _terminate(process)
    lines = log_path.read_text("utf-8", "replace").splitlines()
    return SuiteRun(
        returncode=returncode,
        planned=planned_cases(lines),
        seconds=time.monotonic() - started,
        last_line=next((line for line in reversed(lines) if line.strip()), ""),
    )


def planned_cases(lines: Sequence[str]) -> list[str]:
    """The case ids of wstest's ``Cases = [...]`` line; empty if it has none."""
    for line in lines:
        if line.startswith(PLAN_PREFIX):
            try:
                cases = ast.literal_eval(line.removeprefix(PLAN_PREFIX))
            except (ValueError, SyntaxError):
                return []
            return [str(case) for case in cases]
    return []


def _terminate(process: subprocess.Popen[bytes]) -> None:
    """Stop ``process`` if it still runs: SIGTERM, then SIGKILL."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(TERMINATE_SECONDS)
    except subprocess.TimeoutExpired:
        pass
    finally:
        # Also reached on Ctrl+C during the wait: never leave it running.
        if process.poll() is None:
            process.kill()
            process.wait()
