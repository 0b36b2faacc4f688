"""The Autobahn environment: Python 2.7 and ``wstest``, set up once per checkout.

Autobahn|Testsuite is still Python 2.7 code, so it gets an interpreter of
its own: a Python 3 venv holding an old ``virtualenv`` (the last releases
that can still create Python 2 environments) creates a 2.7 environment from
a CPython 2.7 found on the machine, and pip installs the suite into it with
every version pinned. Both live in :data:`ENVIRONMENT` (git-ignored); a stamp
written last records what was installed, so an interrupted or outdated set-up
is thrown away and redone, and a complete one costs nothing next time.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

#: The working copy.
REPOSITORY = Path(__file__).resolve().parents[2]
#: Where the environment is kept: in the working copy, ignored by git.
ENVIRONMENT = REPOSITORY / ".venv-autobahn"
#: Names an interpreter for the suite, when it is not where we look.
PYTHON2_VARIABLE = "AUTOBAHN_PYTHON2"

#: The Python 3 side: virtualenv 20.22 dropped the creation of Python 2
#: environments; 20.21.1 is the last release before it. Its dependencies
#: are pinned too, so that a new release of one changes nothing here.
VIRTUALENV_REQUIREMENTS = (
    "virtualenv==20.21.1",
    "distlib==0.4.4",
    "filelock==3.32.7",
    "platformdirs==3.11.0",
)
#: The Python 2.7 side: the suite and everything it pulls in, as resolved
#: for it on 2025-11 (``pip freeze``); the suite pins most of them itself.
#: ``--tls`` needs pyOpenSSL (Twisted's TLS, on the OpenSSL 1.1.1 bundled in
#: the cryptography wheel) and service-identity (the address check of the
#: server's certificate); both are here already.
AUTOBAHN_REQUIREMENTS = (
    "autobahntestsuite==25.10.1",
    "argparse==1.4.0",
    "attrs==21.4.0",
    "autobahn==0.10.9",
    "Automat==22.10.0",
    "cffi==1.15.1",
    "constantly==15.1.0",
    "cryptography==3.3.2",
    "enum34==1.1.10",
    "hyperlink==21.0.0",
    "idna==2.10",
    "incremental==16.10.1",
    "ipaddress==1.0.23",
    "Jinja2==2.11.3",
    "klein==17.10.0",
    "linecache2==1.0.0",
    "MarkupSafe==1.1.1",
    "pyasn1==0.5.1",
    "pyasn1-modules==0.3.0",
    "pycparser==2.21",
    "PyHamcrest==1.10.1",
    "pyOpenSSL==19.1.0",
    "service-identity==18.1.0",
    "setuptools==44.0.0",
    "six==1.16.0",
    "traceback2==1.4.0",
    "Twisted==19.10.0",
    "txaio==2.1.0",
    "typing==3.10.0.0",
    "ujson==2.0.3",
    "unittest2==1.1.0",
    "Werkzeug==1.0.1",
    "wsaccel==0.6.6",
    "zope.interface==4.6.0",
)
#: A set-up step gets this long; a cold one takes under a minute.
STEP_TIMEOUT_SECONDS = 600.0
#: Lines of a failed step's output shown in the error.
ERROR_TAIL_LINES = 15


class SetupError(Exception):
    """The environment could not be set up; the message says why and what to do."""


def ensure_wstest() -> Path:
    """Set the environment up unless it is already; return the ``wstest`` command.

    Raises:
        SetupError: if Python 2.7 cannot be found or an install step fails.
    """
    ENVIRONMENT.mkdir(exist_ok=True)
    # Ignored by git, and so by ruff, whatever the repository's .gitignore says:
    # the suite's Python 2 files would fail every lint.
    (ENVIRONMENT / ".gitignore").write_text("*\n")
    with _locked(ENVIRONMENT / ".lock"):
        python2 = find_python2()
        stamp = ENVIRONMENT / "installed.txt"
        wanted = _stamp_text(python2)
        wstest = ENVIRONMENT / "py27" / "bin" / "wstest"
        if stamp.exists() and stamp.read_text() == wanted and wstest.exists():
            return wstest
        _progress(f"setting up Autobahn|Testsuite in {_shown(ENVIRONMENT)} (once)")
        started = time.monotonic()
        stamp.unlink(missing_ok=True)
        _build(python2)
        stamp.write_text(wanted)
        _progress(f"set up in {time.monotonic() - started:.0f} s")
        return wstest


def find_python2() -> Path:
    """The first CPython 2.7 interpreter found.

    Looks at ``$AUTOBAHN_PYTHON2``, then pyenv's 2.7 versions, then
    ``python2.7`` and ``python2`` on ``PATH``.

    Raises:
        SetupError: if none of them is a working Python 2.7.
    """
    versions = _pyenv_root() / "versions"
    rejected = []
    for candidate in _python2_candidates(versions):
        if _is_python27(candidate):
            return candidate
        rejected.append(str(candidate))
    not_27 = f"; not a working Python 2.7: {', '.join(rejected)}" if rejected else ""
    raise SetupError(
        "Python 2.7 not found, and Autobahn|Testsuite needs it (looked at "
        f"${PYTHON2_VARIABLE}, {versions}/2.7*/bin/python2.7, python2.7 and "
        f"python2 on PATH{not_27}). Install it with `pyenv install 2.7.18`, "
        f"or set {PYTHON2_VARIABLE} to a python2.7 executable."
    )


def _python2_candidates(pyenv_versions: Path) -> Iterator[Path]:
    explicit = os.environ.get(PYTHON2_VARIABLE)
    if explicit:
        yield Path(explicit)
    if pyenv_versions.is_dir():
        # Newest first: "2.7.18" sorts after "2.7.9" only as numbers.
        found = sorted(pyenv_versions.glob("2.7*"), key=_version_key, reverse=True)
        for version in found:
            yield version / "bin" / "python2.7"
    for name in ("python2.7", "python2"):
        path = shutil.which(name)
        if path:
            yield Path(path)


def _pyenv_root() -> Path:
    root = os.environ.get("PYENV_ROOT")
    if root:
        return Path(root)
    pyenv = shutil.which("pyenv")
    if pyenv:
        try:
            output = subprocess.run(
                [pyenv, "root"], capture_output=True, text=True, timeout=30, check=True
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            output = ""
        if output:
            return Path(output)
    return Path.home() / ".pyenv"


def _version_key(path: Path) -> tuple[int, ...]:
    parts = path.name.split(".")
    return tuple(int(part) if part.isdigit() else -1 for part in parts)


def _is_python27(path: Path) -> bool:
    if not os.access(path, os.X_OK):
        return False
    try:
        result = subprocess.run(
            [str(path), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return result.returncode == 0 and result.stdout.strip() == "2.7"


def _stamp_text(python2: Path) -> str:
    """What the stamp says of a complete environment: changes force a rebuild."""
    lines = [
        # Scripts name their interpreter by absolute path: a moved checkout
        # needs a new environment.
        f"location {ENVIRONMENT}",
        f"python2 {python2}",
        f"python3 {sys.version_info.major}.{sys.version_info.minor}",
        *VIRTUALENV_REQUIREMENTS,
        *AUTOBAHN_REQUIREMENTS,
    ]
    return "\n".join(lines) + "\n"


def _build(python2: Path) -> None:
    """Create both environments from scratch."""
    tools = ENVIRONMENT / "tools"
    py27 = ENVIRONMENT / "py27"
    for directory in (tools, py27):
        shutil.rmtree(directory, ignore_errors=True)
    log = ENVIRONMENT / "setup.log"
    log.write_text("")
    _step("create the tools venv", [sys.executable, "-m", "venv", str(tools)], log)
    _pip_install(tools / "bin" / "python", VIRTUALENV_REQUIREMENTS, log)
    _step(
        "create the Python 2.7 environment",
        [
            str(tools / "bin" / "python"),
            "-m",
            "virtualenv",
            "--no-periodic-update",
            # Its wheel cache in here, not in ~/.local: nothing outside.
            "--app-data",
            str(ENVIRONMENT / "app-data"),
            "--python",
            str(python2),
            str(py27),
        ],
        log,
    )
    _pip_install(py27 / "bin" / "python", AUTOBAHN_REQUIREMENTS, log)


def _pip_install(python: Path, requirements: Sequence[str], log: Path) -> None:
    command = [
        str(python),
        "-m",
        "pip",
        "install",
        "--no-input",
        "--disable-pip-version-check",
        *requirements,
    ]
    _step(f"install {requirements[0]}", command, log)


def _step(what: str, command: Sequence[str], log: Path) -> None:
    """Run one set-up command, its output appended to ``log``."""
    _progress(f"  {what}")
    with log.open("a") as output:
        output.write(f"$ {' '.join(command)}\n")
        output.flush()
        try:
            result = subprocess.run(
                command,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                timeout=STEP_TIMEOUT_SECONDS,
                env={**os.environ, "PYTHONNOUSERSITE": "1"},
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SetupError(f"could not {what}: {exc}") from exc
    if result.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-ERROR_TAIL_LINES:])
        raise SetupError(
            f"could not {what} (exit status {result.returncode}); "
            f"the end of {_shown(log)}:\n{tail}"
        )


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path``: two runs never build at once."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _shown(path: Path) -> str:
    """``path`` relative to the working copy when inside it, for messages."""
    try:
        return str(path.relative_to(REPOSITORY))
    except ValueError:
        return str(path)


def _progress(text: str) -> None:
    print(f"conformance: {text}", file=sys.stderr, flush=True)
