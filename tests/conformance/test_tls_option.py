"""``--tls``: the throwaway certificate, the wss:// URL, the spec, the report dir."""

from __future__ import annotations

import datetime
import ipaddress
import json
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.conformance import cli, suite
from tests.conformance.certificate import (
    HOST,
    TRUST_VARIABLE,
    Certificate,
    make_certificate,
    self_signed,
)
from tests.conformance.serverproc import websocket_url


@pytest.fixture(scope="module", name="certificate")
def certificate_fixture(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    """One certificate for the tests that only read it."""
    return make_certificate(tmp_path_factory.mktemp("tls"))


def handshake(certificate: Certificate, client_host: str) -> str:
    """A TLS handshake in memory: the server with ``certificate``, a client
    that trusts it alone and expects ``client_host``; the version agreed."""
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(certificate.certfile, certificate.keyfile)
    client_context = ssl.create_default_context(cafile=str(certificate.certfile))
    server_in, server_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    client_in, client_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    server = server_context.wrap_bio(server_in, server_out, server_side=True)
    client = client_context.wrap_bio(client_in, client_out, server_hostname=client_host)
    done = {"server": False, "client": False}
    for _ in range(10):
        for name, side in (("client", client), ("server", server)):
            if not done[name]:
                try:
                    side.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        server_in.write(client_out.read())
        client_in.write(server_out.read())
        if all(done.values()):
            return str(client.version())
    raise AssertionError("the handshake did not complete")


def test_certificate_is_self_signed_for_the_address(certificate: Certificate) -> None:
    """An EC P-256 certificate for 127.0.0.1 alone, issued by itself, valid now."""
    loaded = x509.load_pem_x509_certificate(certificate.certfile.read_bytes())
    names = loaded.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert names.value.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address(HOST)
    ]
    assert names.value.get_values_for_type(x509.DNSName) == []
    assert loaded.issuer == loaded.subject
    public = loaded.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert public.curve.name == "secp256r1"
    now = datetime.datetime.now(datetime.timezone.utc)
    assert loaded.not_valid_before_utc < now < loaded.not_valid_after_utc


def test_key_is_private_and_matches(certificate: Certificate) -> None:
    """The key file is readable by its owner only, and is the certificate's key."""
    assert stat.S_IMODE(certificate.keyfile.stat().st_mode) & 0o077 == 0
    key = serialization.load_pem_private_key(
        certificate.keyfile.read_bytes(), password=None
    )
    loaded = x509.load_pem_x509_certificate(certificate.certfile.read_bytes())
    assert key.public_key() == loaded.public_key()


def test_a_client_trusting_it_accepts_the_address(certificate: Certificate) -> None:
    """A verifying client that trusts the certificate alone connects to 127.0.0.1."""
    assert handshake(certificate, HOST).startswith("TLSv1.")


def test_a_client_expecting_another_address_refuses(certificate: Certificate) -> None:
    """The address in the certificate is checked: 127.0.0.2 does not match."""
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(certificate, "127.0.0.2")


def test_server_options_and_client_environment(certificate: Certificate) -> None:
    """The server gets both files; wstest trusts the certificate file."""
    assert certificate.server_options() == (
        "--certfile",
        str(certificate.certfile),
        "--keyfile",
        str(certificate.keyfile),
    )
    assert certificate.client_environment() == {
        TRUST_VARIABLE: str(certificate.certfile)
    }


def test_self_signed_removes_its_files() -> None:
    """Nothing is left behind, the private key least of all."""
    with self_signed() as certificate:
        directory = certificate.certfile.parent
        assert certificate.keyfile.exists()
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
    path = suite.write_spec(tmp_path, url, ["12.*"], verify_hostname=HOST)
    spec = json.loads(path.read_text())
    assert spec["servers"] == [{"agent": suite.AGENT, "url": url, "hostname": HOST}]


def test_spec_without_an_address_has_no_hostname(tmp_path: Path) -> None:
    """A plain run's spec says nothing of TLS."""
    path = suite.write_spec(tmp_path, "ws://127.0.0.1:1234/ws", [])
    assert "hostname" not in json.loads(path.read_text())["servers"][0]


def test_wstest_gets_the_environment_given(tmp_path: Path) -> None:
    """The variables given reach wstest, besides the runner's own."""
    wstest = tmp_path / "wstest"
    wstest.write_text(
        "#!/bin/sh\n"
        f'echo "trust=${TRUST_VARIABLE} path=${{PATH:+set}}"\n'
        "echo \"Cases = ['1.1.1']\"\n"
    )
    wstest.chmod(0o755)
    spec = suite.write_spec(tmp_path, "wss://127.0.0.1:1/ws", [])
    log = tmp_path / "wstest.log"
    outcome = suite.run_fuzzingclient(
        wstest, spec, log, 30, {TRUST_VARIABLE: "/some/cert.pem"}
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
