"""The report: ``index.json`` read, counted per outcome and group, and judged.

Autobahn gives each case two verdicts: ``behavior``, on the frames the
server sent, and ``behaviorClose``, on how the connection ended. A case's
outcome here is the worse of the two, read as Autobahn's own HTML report
colours them: a close that was unclean or failed fails the case; a wrong
close code, or a TCP connection the client had to drop, is non-strict.
A case *passes* when its outcome is not FAILED; a case that wstest planned
but did not report counts as failed.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

OK = "OK"
NON_STRICT = "NON-STRICT"
INFORMATIONAL = "INFORMATIONAL"
UNIMPLEMENTED = "UNIMPLEMENTED"
FAILED = "FAILED"
#: Every outcome, in the order of the table.
OUTCOMES = (OK, NON_STRICT, INFORMATIONAL, UNIMPLEMENTED, FAILED)

#: ``behaviorClose`` verdicts, as Autobahn's HTML report colours them.
_CLOSE_OUTCOMES = {
    OK: OK,
    INFORMATIONAL: INFORMATIONAL,
    "WRONG CODE": NON_STRICT,
    # The server left the TCP connection open after the closing handshake.
    "FAILED BY CLIENT": NON_STRICT,
    "UNCLEAN": FAILED,
    FAILED: FAILED,
}
#: The case groups, named as in Autobahn (``autobahntestsuite/case``).
GROUP_NAMES = {
    "1": "Framing",
    "2": "Pings/Pongs",
    "3": "Reserved Bits",
    "4": "Opcodes",
    "5": "Fragmentation",
    "6": "UTF-8 Handling",
    "7": "Close Handling",
    "9": "Limits/Performance",
    "10": "Misc",
    "12": "Compression (payloads)",
    "13": "Compression (parameters)",
}
#: Widths of the table's first and last columns.
GROUP_WIDTH = 22
TIME_WIDTH = 9
#: Cases named as the slowest: where a slow run spent its time.
SLOWEST_SHOWN = 5
#: Missing case ids listed: a run cut short misses them all.
MISSING_SHOWN = 20
#: Longest payload shown of a frame Autobahn expected or received.
PAYLOAD_CHARS = 40


class ReportError(Exception):
    """The report is missing or not what wstest writes."""


def outcome_of(behavior: str, behavior_close: str) -> str:
    """One outcome from Autobahn's two verdicts; anything unknown fails."""
    main = behavior if behavior in OUTCOMES else FAILED
    close = _CLOSE_OUTCOMES.get(behavior_close, FAILED)
    if FAILED in (main, close):
        return FAILED
    if main == UNIMPLEMENTED:  # the case did not run: its close says nothing
        return UNIMPLEMENTED
    return max(main, close, key=(OK, INFORMATIONAL, NON_STRICT).index)


def case_key(case_id: str) -> tuple[int, ...]:
    """Sort key of a case id: ``9.10.1`` after ``9.2.1``."""
    return tuple(int(part) for part in case_id.split("."))


@dataclasses.dataclass(frozen=True)
class CaseResult:
    """One case's entry in ``index.json``."""

    case_id: str
    behavior: str
    behavior_close: str
    duration_ms: int
    remote_close_code: int | None
    report_file: str

    @property
    def outcome(self) -> str:
        """The case's outcome (see the module's docstring)."""
        return outcome_of(self.behavior, self.behavior_close)

    @property
    def group(self) -> str:
        """The case's group: the first number of its id."""
        return self.case_id.split(".")[0]


def load_index(path: Path, agent: str) -> list[CaseResult]:
    """The results of ``agent`` in ``index.json``, sorted by case id.

    Raises:
        ReportError: if the file is missing, unreadable or has no ``agent``.
    """
    try:
        index = json.loads(path.read_text())
    except FileNotFoundError:
        raise ReportError(f"no report: {path} was not written") from None
    except (OSError, ValueError) as exc:
        raise ReportError(f"unreadable report {path}: {exc}") from exc
    if not isinstance(index, dict) or not isinstance(index.get(agent), dict):
        raise ReportError(f"{path} has no results for {agent!r}")
    try:
        results = [
            _case_result(case_id, entry) for case_id, entry in index[agent].items()
        ]
    except (KeyError, TypeError, ValueError) as exc:
        raise ReportError(f"unexpected entry in {path}: {exc!r}") from exc
    return sorted(results, key=lambda result: case_key(result.case_id))


def _case_result(case_id: str, entry: dict[str, Any]) -> CaseResult:
    code = entry.get("remoteCloseCode")
    return CaseResult(
        case_id=case_id,
        behavior=str(entry["behavior"]),
        behavior_close=str(entry["behaviorClose"]),
        duration_ms=int(entry.get("duration", 0)),
        remote_close_code=None if code is None else int(code),
        report_file=str(entry["reportfile"]),
    )


@dataclasses.dataclass(frozen=True)
class Summary:
    """The results of one run, and the cases planned but not reported."""

    results: list[CaseResult]
    missing: list[str]

    @classmethod
    def of(cls, results: list[CaseResult], planned: Iterable[str]) -> Summary:
        """The summary of ``results``, given the case ids wstest planned."""
        reported = {result.case_id for result in results}
        missing = sorted(set(planned) - reported, key=case_key)
        return cls(results, missing)

    @property
    def failed(self) -> int:
        """Cases FAILED, plus cases planned and not reported."""
        return self.counts()[FAILED] + len(self.missing)

    @property
    def passed(self) -> int:
        """Cases reported with any outcome but FAILED."""
        return len(self.results) - self.counts()[FAILED]

    def counts(self, group: str | None = None) -> Counter[str]:
        """Cases per outcome, of one group or of all."""
        return Counter(
            result.outcome
            for result in self.results
            if group is None or result.group == group
        )

    def groups(self) -> list[str]:
        """The groups present, in order."""
        return sorted({result.group for result in self.results}, key=int)

    def slowest(self, count: int) -> list[CaseResult]:
        """The ``count`` longest cases, longest first."""
        return sorted(self.results, key=lambda result: -result.duration_ms)[:count]

    def not_ok(self) -> list[CaseResult]:
        """Every case whose outcome is not OK, in order."""
        return [result for result in self.results if result.outcome != OK]


@dataclasses.dataclass(frozen=True)
class CaseDetails:
    """What a case's own JSON file says about it: the reasons for its outcome."""

    description: str
    result: str
    result_close: str
    remote_close: str
    expected: str
    received: str


def load_details(report_dir: Path, result: CaseResult) -> CaseDetails:
    """The details of ``result`` from its report file; placeholders if unreadable."""
    try:
        case = json.loads((report_dir / result.report_file).read_text())
    except (OSError, ValueError) as exc:
        unknown = f"(no details: {exc})"
        return CaseDetails(unknown, "", "", "", "", "")
    code = case.get("remoteCloseCode")
    reason = case.get("remoteCloseReason")
    remote_close = "none" if code is None else str(code)
    if reason:
        remote_close += f" {reason!r}"
    expected = case.get("expected") or {}
    return CaseDetails(
        description=str(case.get("description", "")),
        result=str(case.get("result", "")),
        result_close=str(case.get("resultClose", "")),
        remote_close=remote_close,
        expected="; ".join(
            f"{outcome}: {_events(events)}" for outcome, events in expected.items()
        ),
        received=_events(case.get("received") or []),
    )


def _events(events: Sequence[Any]) -> str:
    """Frames Autobahn expected or received, payloads shortened."""
    shown = []
    for event in events:
        parts = [_short(part) for part in event] if isinstance(event, list) else [event]
        shown.append("(" + ", ".join(str(part) for part in parts) + ")")
    return " ".join(shown) or "nothing"


def _short(value: Any) -> Any:
    if isinstance(value, str) and len(value) > PAYLOAD_CHARS:
        return f"{value[:PAYLOAD_CHARS]!r}..."
    return repr(value) if isinstance(value, str) else value


def render(
    summary: Summary, details: dict[str, CaseDetails], problems: Sequence[str] = ()
) -> str:
    """The table per group, every case not OK with its reasons, the totals.

    ``problems`` are faults of the run itself, listed before the totals.
    Ends with the line ``N passed, N failed``.
    """
    lines = _table(summary)
    slowest = ", ".join(
        f"{result.case_id} {result.duration_ms / 1000:.1f} s"
        for result in summary.slowest(SLOWEST_SHOWN)
    )
    if slowest:
        lines += [f"slowest: {slowest}"]
    not_ok = summary.not_ok()
    if not_ok:
        lines += ["", "Cases not OK:"]
        for result in not_ok:
            lines += _case_lines(result, details.get(result.case_id))
    if summary.missing:
        shown = " ".join(summary.missing[:MISSING_SHOWN])
        more = len(summary.missing) - MISSING_SHOWN
        lines += [
            "",
            f"Planned but not reported ({len(summary.missing)}, counted as failed):",
            f"  {shown}" + (f" and {more} more" if more > 0 else ""),
        ]
    if problems:
        lines += ["", "Problems with the run:"]
        lines += [f"  {problem}" for problem in problems]
    lines += [
        "",
        "passed: every case whose outcome is not FAILED "
        "(OK, NON-STRICT, INFORMATIONAL or UNIMPLEMENTED)",
        f"{summary.passed} passed, {summary.failed} failed",
    ]
    return "\n".join(lines)


def _table(summary: Summary) -> list[str]:
    header = f"{'group':<{GROUP_WIDTH}}"
    header += "".join(f"{name:>{_width(name)}}" for name in OUTCOMES)
    lines = [f"{header}{'time':>{TIME_WIDTH}}"]
    for group in summary.groups():
        name = f"{group:>2} {GROUP_NAMES.get(group, '')}"
        lines.append(_row(name, summary.counts(group), _seconds(summary, group)))
    lines.append(_row("total", summary.counts(), _seconds(summary)))
    return lines


def _width(outcome: str) -> int:
    return len(outcome) + 2


def _row(name: str, counts: Counter[str], seconds: float) -> str:
    cells = "".join(f"{counts[outcome]:>{_width(outcome)}}" for outcome in OUTCOMES)
    return f"{name:<{GROUP_WIDTH}}{cells}{seconds:>{TIME_WIDTH - 1}.1f}s"


def _seconds(summary: Summary, group: str | None = None) -> float:
    """Time spent in the cases of ``group`` (or all), as Autobahn measured it."""
    return (
        sum(
            result.duration_ms
            for result in summary.results
            if group is None or result.group == group
        )
        / 1000
    )


def _case_lines(result: CaseResult, details: CaseDetails | None) -> list[str]:
    verdicts = f"behavior {result.behavior}, close {result.behavior_close}"
    lines = [f"  {result.case_id:<8} {result.outcome} ({verdicts})"]
    if details is None:
        return lines
    lines += [
        f"           {details.description}",
        f"           result: {details.result}",
        f"           close: {details.result_close} "
        f"(server's close code: {details.remote_close})",
        f"           expected: {details.expected}",
        f"           received: {details.received}",
    ]
    return lines
