"""One Chromium for the browser tests, and pages that must log no error.

The system's Chromium (Debian package ``chromium``) is launched once for the
whole test run, through Playwright, which downloads nothing; the flags keep
Chromium itself off Google's hosts too. Each page gets a context of its own,
and every console error or warning and every uncaught exception on it is
recorded: a test fails on any it did not expect. A violation of the
Content-Security-Policy is such a console error.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Error,
    Page,
    expect,
    sync_playwright,
)

from tests.conftest import UNIT

#: The browser the tests run: never one that Playwright would download.
CHROMIUM = Path("/usr/bin/chromium")
#: No sandbox (tests run as root, in containers), no GPU, and nothing that
#: reaches out to Google's hosts: the machine may have no network at all.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: Milliseconds, Playwright's unit: how long an expectation or action may take.
TIMEOUT_MS = 5000 * UNIT
#: The console message types that fail a test.
PROBLEM_TYPES = {"error", "warning"}


@pytest.fixture(scope="session", name="browser")
def browser_fixture() -> Iterator[Browser]:
    """The system's Chromium, launched once for the whole test run."""
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: install the Debian package chromium "
            "(apt-get install chromium)",
            pytrace=False,
        )
    expect.set_options(timeout=TIMEOUT_MS)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
        )
        yield chromium
        chromium.close()


@dataclasses.dataclass
class Pages:
    """The pages of one test, each in a context of its own, and what they
    logged.

    Leaving it as a context manager closes every page: list it after the
    server in the ``with`` statement, so that the pages close before the
    server stops and none of them sees it go.
    """

    browser: Browser
    contexts: list[BrowserContext] = dataclasses.field(default_factory=list)
    #: Console errors and warnings, and uncaught exceptions, in order.
    problems: list[str] = dataclasses.field(default_factory=list)
    #: Console messages that this test provokes on purpose.
    expected: list[re.Pattern[str]] = dataclasses.field(default_factory=list)

    def new(self, width: int = 1280, height: int = 800) -> Page:
        """A fresh page, in a context of its own, with a viewport of this
        size and the local time zone UTC."""
        context = self.browser.new_context(
            viewport={"width": width, "height": height}, timezone_id="UTC"
        )
        context.set_default_timeout(TIMEOUT_MS)
        self.contexts.append(context)
        page = context.new_page()
        page.on("console", self._console)
        page.on("pageerror", self._page_error)
        return page

    def expect_console(self, pattern: str) -> None:
        """Let console errors and warnings that match ``pattern`` (searched)
        through: those the test provokes on purpose."""
        self.expected.append(re.compile(pattern))

    def unexpected(self) -> list[str]:
        """The problems that no :meth:`expect_console` pattern allows."""
        return [
            problem
            for problem in self.problems
            if not any(pattern.search(problem) for pattern in self.expected)
        ]

    def close(self) -> None:
        """Close every page; nothing is recorded afterwards."""
        for context in self.contexts:
            context.close()
        self.contexts.clear()

    def __enter__(self) -> Pages:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _console(self, message: ConsoleMessage) -> None:
        if message.type in PROBLEM_TYPES:
            where = message.location
            self.problems.append(
                f"console {message.type}: {message.text} "
                f"({where['url']}:{where['lineNumber']})"
            )

    def _page_error(self, error: Error) -> None:
        self.problems.append(f"page error: {error.name}: {error.message}")


@pytest.fixture(name="pages")
def pages_fixture(browser: Browser) -> Iterator[Pages]:
    """This test's pages; the test fails if one logged an error it did not
    expect."""
    opened = Pages(browser)
    yield opened
    opened.close()
    unexpected = opened.unexpected()
    assert not unexpected, "the pages logged:\n" + "\n".join(unexpected)
