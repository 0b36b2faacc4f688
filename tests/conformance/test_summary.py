"""The conformance runner's pure parts: verdicts, counts, the spec, wstest's plan."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conformance import suite
from tests.conformance.summary import (
    FAILED,
    INFORMATIONAL,
    NON_STRICT,
    OK,
    UNIMPLEMENTED,
    CaseResult,
    ReportError,
    Summary,
    case_key,
    load_details,
    load_index,
    outcome_of,
    render,
)

AGENT = suite.AGENT


def entry(behavior: str = OK, close: str = OK, duration: int = 1) -> dict[str, Any]:
    """One case's entry in ``index.json``, as wstest writes it."""
    return {
        "behavior": behavior,
        "behaviorClose": close,
        "duration": duration,
        "remoteCloseCode": 1000,
        "reportfile": "case.json",
    }


def write_index(path: Path, cases: dict[str, dict[str, Any]]) -> Path:
    index = path / "index.json"
    index.write_text(json.dumps({AGENT: cases}))
    return index


@pytest.mark.parametrize(
    ("behavior", "close", "outcome"),
    [
        (OK, OK, OK),
        (NON_STRICT, OK, NON_STRICT),
        (INFORMATIONAL, INFORMATIONAL, INFORMATIONAL),
        (UNIMPLEMENTED, OK, UNIMPLEMENTED),
        (FAILED, OK, FAILED),
        (OK, FAILED, FAILED),
        (OK, "UNCLEAN", FAILED),
        (OK, "WRONG CODE", NON_STRICT),
        (OK, "FAILED BY CLIENT", NON_STRICT),
        (INFORMATIONAL, "UNCLEAN", FAILED),
        ("NO_CLOSE", OK, FAILED),
        (OK, "SOMETHING NEW", FAILED),
    ],
)
def test_outcome_is_the_worse_verdict(behavior: str, close: str, outcome: str) -> None:
    """A case's outcome is the worse of its two verdicts; unknown ones fail."""
    assert outcome_of(behavior, close) == outcome


def test_case_ids_sort_as_numbers() -> None:
    """Case 9.10.1 sorts after 9.2.1, and 10.1.1 after 9.8.6."""
    ids = ["10.1.1", "9.10.1", "9.2.1", "9.8.6"]
    assert sorted(ids, key=case_key) == ["9.2.1", "9.8.6", "9.10.1", "10.1.1"]


def test_counts_per_group_and_outcome(tmp_path: Path) -> None:
    """Outcomes are counted per group and in all; only FAILED is not passed."""
    cases = {
        "1.1.1": entry(),
        "1.1.2": entry(NON_STRICT),
        "7.13.1": entry(INFORMATIONAL, INFORMATIONAL),
        "7.1.1": entry(OK, "UNCLEAN"),
    }
    summary = Summary.of(load_index(write_index(tmp_path, cases), AGENT), cases)
    assert summary.groups() == ["1", "7"]
    assert summary.counts("1") == {OK: 1, NON_STRICT: 1}
    assert summary.counts() == {OK: 1, NON_STRICT: 1, INFORMATIONAL: 1, FAILED: 1}
    assert (summary.passed, summary.failed) == (3, 1)
    assert [result.case_id for result in summary.not_ok()] == [
        "1.1.2",
        "7.1.1",
        "7.13.1",
    ]


def test_planned_cases_missing_from_the_report_fail(tmp_path: Path) -> None:
    """A case wstest planned but did not report counts as failed."""
    results = load_index(write_index(tmp_path, {"1.1.1": entry()}), AGENT)
    summary = Summary.of(results, ["1.1.1", "1.1.2", "2.1"])
    assert summary.missing == ["1.1.2", "2.1"]
    assert (summary.passed, summary.failed) == (1, 2)


@pytest.mark.parametrize(
    "content",
    [None, "not json", json.dumps({"other-agent": {}}), json.dumps({AGENT: {"1": {}}})],
)
def test_bad_reports_raise(tmp_path: Path, content: str | None) -> None:
    """A missing, unreadable or foreign index.json raises ReportError."""
    path = tmp_path / "index.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ReportError):
        load_index(path, AGENT)


def test_render_ends_with_the_totals_line(tmp_path: Path) -> None:
    """The summary lists each case not OK and ends with 'N passed, N failed'."""
    results = load_index(
        write_index(tmp_path, {"1.1.1": entry(), "5.1": entry(FAILED)}), AGENT
    )
    summary = Summary.of(results, ["1.1.1", "5.1", "5.2"])
    text = render(summary, {}, problems=["wstest exited with status 1"])
    lines = text.splitlines()
    assert lines[-1] == "1 passed, 2 failed"
    assert any(line.strip().startswith("5.1 ") and FAILED in line for line in lines)
    assert "wstest exited with status 1" in text
    assert "5.2" in text


def test_details_come_from_the_case_file(tmp_path: Path) -> None:
    """A case's description, result and close code come from its own file."""
    (tmp_path / "case.json").write_text(
        json.dumps(
            {
                "description": "Send close with close code 5000",
                "result": "Actual events are undefined by the spec.",
                "resultClose": "Connection was properly closed",
                "remoteCloseCode": 1002,
                "remoteCloseReason": "CLOSE with invalid code",
                "expected": {OK: []},
                "received": [["message", "x" * 100, False]],
            }
        )
    )
    result = CaseResult("7.13.1", INFORMATIONAL, INFORMATIONAL, 1, 1002, "case.json")
    details = load_details(tmp_path, result)
    assert details.description == "Send close with close code 5000"
    assert details.remote_close == "1002 'CLOSE with invalid code'"
    assert details.expected == "OK: nothing"
    assert "x" * 100 not in details.received


def test_spec_names_the_server_and_the_exclusions(tmp_path: Path) -> None:
    """The spec runs every case against the URL given, minus the exclusions."""
    path = suite.write_spec(tmp_path, "ws://127.0.0.1:1234/ws", ["12.*", "13.*"])
    spec = json.loads(path.read_text())
    assert spec["servers"] == [{"agent": AGENT, "url": "ws://127.0.0.1:1234/ws"}]
    assert spec["cases"] == ["*"]
    assert spec["exclude-cases"] == ["12.*", "13.*"]
    assert Path(spec["outdir"]).is_absolute()


@pytest.mark.parametrize(
    ("quick", "excluded"),
    [(True, ("9.*", "12.*", "13.*")), (False, ("12.*", "13.*"))],
)
def test_exclusions(quick: bool, excluded: tuple[str, ...]) -> None:
    """A quick run leaves out 9.* besides the compression cases."""
    assert suite.excluded_cases(quick) == excluded


@pytest.mark.parametrize(
    ("lines", "planned"),
    [
        (
            ["Ok, will run 2 test cases", "Cases = ['1.1.1', '10.1.1']"],
            ["1.1.1", "10.1.1"],
        ),
        (["Cases = [u'2.1']"], ["2.1"]),
        (["Cases = [broken"], []),
        (["Connection to ws://x failed"], []),
    ],
)
def test_planned_cases_are_read_from_wstest_output(
    lines: list[str], planned: list[str]
) -> None:
    """The plan is wstest's 'Cases = [...]' line; none if it is absent or broken."""
    assert suite.planned_cases(lines) == planned


def test_clear_previous_removes_only_report_files(tmp_path: Path) -> None:
    """Clearing a report directory removes wstest's files and nothing else."""
    names = ["index.json", "spec.json", "wstest.log", "broadcast_sync_case_1_1_1.html"]
    for name in [*names, "notes.txt"]:
        (tmp_path / name).write_text("")
    suite.clear_previous(tmp_path)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["notes.txt"]
