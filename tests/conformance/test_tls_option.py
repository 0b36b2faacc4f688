"""``--tls``: the certificate's removal, the wss:// URL, the spec, the report dir."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from tests.certs import throwaway
from tests.conformance import cli, suite
from tests.conformance.serverproc import websocket_url


def test_throwaway_certificate_is_removed_with_its_key() -> None:
    """Nothing is left behind, the private key least of all."""
    with throwaway("conformance-test-") as certificate:
        directory = certificate.key.parent
        assert stat.S_IMODE(certificate.key.stat().st_mode) & 0o077 == 0
    assert not directory.exists()


@pytest.mark.parametrize(
    ("tls", "url"),
    [(False, "ws://127.0.0.1:8080/ws"), (True, "wss://127.0.0.1:8080/ws")],
)
def test_websocket_url(tls: bool, url: str) -> None:
    """Over TLS the suite connects to wss://, on the same port and path."""
    assert websocket_url(8080, tls) == url


def test_spec_asks_wstest_to_verify_the_address(tmp_path: Path) -> None:
    """Given an address, the spec names it: wstest then verifies the certificate."""
    url = "wss://127.0.0.1:1234/ws"
    path = suite.write_spec(tmp_path, url, ["12.*"], verify_hostname=cli.TLS_HOST)
    spec = json.loads(path.read_text())
    assert spec["servers"] == [
        {"agent": suite.AGENT, "url": url, "hostname": cli.TLS_HOST}
    ]


def test_spec_without_an_address_has_no_hostname(tmp_path: Path) -> None:
    """A plain run's spec says nothing of TLS."""
    path = suite.write_spec(tmp_path, "ws://127.0.0.1:1234/ws", [])
    assert "hostname" not in json.loads(path.read_text())["servers"][0]


def test_wstest_gets_the_environment_given(tmp_path: Path) -> None:
    """The variables given reach wstest, besides the runner's own."""
    wstest = tmp_path / "wstest"
    wstest.write_text(
        "#!/bin/sh\n"
        f'echo "trust=${cli.TRUST_VARIABLE} path=${{PATH:+set}}"\n'
        "echo \"Cases = ['1.1.1']\"\n"
    )
    wstest.chmod(0o755)
    spec = suite.write_spec(tmp_path, "wss://127.0.0.1:1/ws", [])
    log = tmp_path / "wstest.log"
    outcome = suite.run_fuzzingclient(
        wstest, spec, log, 30, {cli.TRUST_VARIABLE: "/some/cert.pem"}
    )
    assert outcome.returncode == 0
    assert outcome.planned == ["1.1.1"]
    assert log.read_text().splitlines()[0] == "trust=/some/cert.pem path=set"


@pytest.mark.parametrize(
    ("argv", "report_dir"),
    [
        ([], cli.DEFAULT_REPORT_DIR),
        (["--tls"], cli.DEFAULT_TLS_REPORT_DIR),
        (["--tls", "--report-dir", "elsewhere"], Path("elsewhere")),
    ],
)
def test_each_transport_has_its_report_dir(argv: list[str], report_dir: Path) -> None:
    """A TLS run does not overwrite the plain run's report, unless told to."""
    args = cli.build_parser().parse_args(argv)
    assert (args.report_dir or cli.default_report_dir(args.tls)) == report_dir


def test_tls_report_dir_survives_a_plain_run(tmp_path: Path) -> None:
    """Clearing the plain report leaves the TLS report, a directory inside it."""
    inner = tmp_path / "tls"
    inner.mkdir()
    (inner / "index.json").write_text("{}")
    (tmp_path / "index.json").write_text("{}")
    suite.clear_previous(tmp_path)
    assert (inner / "index.json").exists()
    assert not (tmp_path / "index.json").exists()
