"""``python -m tests.conformance``: set up, run the fuzzingclient, summarize."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from broadcast_sync.cli import positive_float
from tests.certs import CertFiles, throwaway
from tests.conformance import suite
from tests.conformance.environment import REPOSITORY, SetupError, ensure_wstest
from tests.conformance.serverproc import ServerError, ServerProcess
from tests.conformance.suite import SuiteRun
from tests.conformance.summary import ReportError, Summary, load_details, load_index
from tests.conformance.summary import render as render_summary

DEFAULT_REPORT_DIR = REPOSITORY / "conformance-report"
#: Inside the plain run's directory: both reports are kept, and ignored by git.
DEFAULT_TLS_REPORT_DIR = DEFAULT_REPORT_DIR / "tls"
#: A quick run takes about 10 s against a correct server: most of it cases
#: that wait a second on purpose (5.19, 5.20, 6.4.*).
QUICK_TIMEOUT_SECONDS = 120.0
#: A full run takes 2 to 3 minutes, most of it in 9.7 and 9.8.
FULL_TIMEOUT_SECONDS = 900.0
#: Over TLS: the address wstest verifies in the server's certificate, and
#: the variable that makes the certificate's CA its only trust anchor.
TLS_HOST = "127.0.0.1"
TRUST_VARIABLE = "SSL_CERT_FILE"
#: Exit statuses besides 0 (all passed) and 1 (failures, or an incomplete run).
SETUP_FAILED = 2
INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    """The runner's command line."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.conformance",
        description=(
            "Run Autobahn|Testsuite's fuzzingclient against the server in relay "
            "mode and summarize its report (issue #4). Every case runs but "
            "12.* and 13.* (permessage-deflate, which the server does not offer)."
        ),
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="leave out 9.* (limits and performance) too: about 10 s",
    )
    parser.add_argument(
        "--tls",
        action="store_true",
        help=(
            "run over TLS (wss://): the server gets a self-signed certificate "
            "for 127.0.0.1 made for this run, which wstest trusts and verifies"
        ),
    )
    parser.add_argument(
        "--report-dir",
        type=Path,
        metavar="DIR",
        help=(
            "where Autobahn writes its report (default: conformance-report/, "
            "with --tls conformance-report/tls/)"
        ),
    )
    parser.add_argument(
        "--timeout",
        type=positive_float,
        metavar="SECONDS",
        help=(
            "stop the suite after this long (default: "
            f"{QUICK_TIMEOUT_SECONDS:g} quick, {FULL_TIMEOUT_SECONDS:g} full)"
        ),
    )
    parser.add_argument(
        "--server-option",
        action="append",
        default=[],
        dest="server_options",
        metavar="OPTION",
        help=(
            "one more argument for the server, such as --server-option=--batch-"
            "window=0; repeat for several"
        ),
    )
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Run the conformance suite and exit with its status."""
    sys.exit(run(build_parser().parse_args(argv)))


def run(args: argparse.Namespace) -> int:
    """Run what ``args`` asks: 0 when every case passed and the run completed."""
    previous_handler = signal.signal(signal.SIGTERM, _interrupt)
    try:
        return _run(args)
    except SetupError as exc:
        _progress(str(exc))
        return SETUP_FAILED
    except ServerError as exc:
        _progress(f"the server failed: {exc}")
        return 1
    except KeyboardInterrupt:
        _progress("interrupted; the server and wstest are stopped")
        return INTERRUPTED
    finally:
        signal.signal(signal.SIGTERM, previous_handler)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    # Raising unwinds every context manager: the subprocesses are stopped.
    raise KeyboardInterrupt


def default_report_dir(tls: bool) -> Path:
    """Where the report goes unless ``--report-dir`` says: one per transport."""
    return DEFAULT_TLS_REPORT_DIR if tls else DEFAULT_REPORT_DIR


def _run(args: argparse.Namespace) -> int:
    wstest = ensure_wstest()
    report_dir: Path = args.report_dir or default_report_dir(args.tls)
    report_dir.mkdir(parents=True, exist_ok=True)
    suite.clear_previous(report_dir)
    excluded = suite.excluded_cases(args.quick)
    timeout = args.timeout or (
        QUICK_TIMEOUT_SECONDS if args.quick else FULL_TIMEOUT_SECONDS
    )
    with contextlib.ExitStack() as stack:
        # Removed only after the server has stopped: it is the inner context.
        certificate = None
        if args.tls:
            certificate = stack.enter_context(throwaway("conformance-tls-"))
        server = stack.enter_context(
            ServerProcess(
                report_dir / suite.SERVER_LOG, args.server_options, certificate
            )
        )
        spec = suite.write_spec(
            report_dir,
            server.url,
            excluded,
            verify_hostname=TLS_HOST if certificate else None,
        )
        _progress(
            f"running the fuzzingclient against {server.url} "
            f"(every case but {', '.join(excluded)}); "
            f"progress in {report_dir / suite.WSTEST_LOG}"
        )
        outcome = suite.run_fuzzingclient(
            wstest,
            spec,
            report_dir / suite.WSTEST_LOG,
            timeout,
            {TRUST_VARIABLE: str(certificate.ca)} if certificate else None,
        )
    problems = _run_problems(outcome, timeout) + server.problems()
    try:
        results = load_index(report_dir / "index.json", suite.AGENT)
    except ReportError as exc:
        problems.append(str(exc))
        results = []
    summary = Summary.of(results, outcome.planned)
    details = {
        result.case_id: load_details(report_dir, result) for result in summary.not_ok()
    }
    server_command = " ".join(["python", *server.command[1:]])
    print(
        f"Autobahn|Testsuite fuzzingclient: {len(results)} of "
        f"{len(outcome.planned)} cases reported in {outcome.seconds:.1f} s\n"
        f"server: {server_command}\n"
        f"{_transport_line(certificate)}\n"
        f"report: {report_dir / 'index.html'}\n"
    )
    print(render_summary(summary, details, problems), flush=True)
    return 1 if summary.failed or problems else 0


def _transport_line(certificate: CertFiles | None) -> str:
    """How the suite reached the server: the summary's header says which run."""
    if certificate is None:
        return "transport: plain TCP (ws://)"
    return (
        "transport: TLS (wss://), a certificate made for this run and removed "
        f"after it; wstest trusts its CA alone and verifies {TLS_HOST} in it"
    )


def _run_problems(outcome: SuiteRun, timeout: float) -> list[str]:
    """What went wrong with the run of wstest itself."""
    if outcome.returncode is None:
        return [
            f"wstest was stopped after {timeout:g} s; its last line: "
            f"{outcome.last_line!r}"
        ]
    problems = []
    if outcome.returncode != 0:
        problems.append(
            f"wstest exited with status {outcome.returncode}; its last line: "
            f"{outcome.last_line!r}"
        )
    if not outcome.planned:
        problems.append(f"wstest listed no cases (its output: {suite.WSTEST_LOG})")
    return problems


def _progress(text: str) -> None:
    print(f"conformance: {text}", file=sys.stderr, flush=True)
