"""The systemd unit in contrib/: systemd accepts it, and it sets what it must."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from broadcast_sync.config import ServerConfig
from broadcast_sync.server import MAX_PENDING_HANDSHAKES

#: The unit, as shipped.
UNIT_FILE = Path(__file__).resolve().parent.parent / "contrib/broadcast-server.service"
#: Where ``make install`` puts the command (as root), and the unit runs it.
INSTALLED_COMMAND = "/usr/local/bin/broadcast-server"
#: The highest overall exposure ``systemd-analyze security`` may give, in
#: tenths. The unit's is 1.1 (systemd 252); without its capability bounding
#: set or its system call filter, it is over 2.5.
MAX_EXPOSURE = 15


def systemd_analyze(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``systemd-analyze`` offline; fail, in one line, where it is missing."""
    command = shutil.which("systemd-analyze")
    if command is None:
        pytest.fail(
            "systemd-analyze not found: install the Debian package systemd",
            pytrace=False,
        )
    return subprocess.run(
        [command, *args], capture_output=True, text=True, timeout=60, check=False
    )


def service_settings() -> configparser.SectionProxy:
    """The unit's [Service] section; a repeated key keeps its last value."""
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT_FILE.read_text())
    return parser["Service"]


def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    """``systemd-analyze verify`` prints nothing about the unit."""
    # verify wants ExecStart's command to exist and the man page to be
    # installed: point a copy at this environment's command, skip man.
    command = Path(sys.executable).with_name("broadcast-server")
    assert command.is_file()
    text = UNIT_FILE.read_text()
    assert f"ExecStart={INSTALLED_COMMAND} " in text
    copy = tmp_path / UNIT_FILE.name
    copy.write_text(text.replace(INSTALLED_COMMAND, str(command)))
    result = systemd_analyze("verify", "--man=no", str(copy))
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_the_unit_is_hardened() -> None:
    """``systemd-analyze security`` rates the unit's exposure low."""
    result = systemd_analyze(
        "security", "--offline=true", f"--threshold={MAX_EXPOSURE}", str(UNIT_FILE)
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_unit_sets_restarts_limits_and_sandbox() -> None:
    """Restart on failure, room for every client, and the main sandboxing."""
    service = service_settings()
    assert service["Restart"] == "on-failure"
    open_files = ServerConfig.max_clients + MAX_PENDING_HANDSHAKES
    assert int(service["LimitNOFILE"]) >= open_files
    assert int(service["TasksMax"]) >= 2 * ServerConfig.max_clients
    assert service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict"
    assert service["PrivateTmp"] == "yes"
