# Every target sets up what it needs: a virtual environment in .venv with the
# package (editable) and its development tools.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

PORT ?= 8080
HOST ?= localhost
USER_NAME ?= anonymous

# Where `make install` puts the command and its manual page: /usr/local when
# writable, else ~/.local (its bin/ must be on PATH).
PREFIX ?= $(shell [ -w /usr/local/bin ] && echo /usr/local || echo $(HOME)/.local)

MAN_PAGE := man/broadcast-server.1
MAN_OUTPUT ?= $(MAN_PAGE)
# The page's date is that of the last commit, so regenerating it changes
# nothing unless the command line changed.
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null || date +%s)
VERSION = $(shell $(BIN)/python -c 'import broadcast_sync; print(broadcast_sync.__version__)')

.PHONY: setup install server client test lint conformance conformance-full man \
	screenshots coverage bench build clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

install: $(STAMP)
	mkdir -p $(PREFIX)/bin $(PREFIX)/share/man/man1
	ln -sf $(CURDIR)/$(BIN)/broadcast-server $(PREFIX)/bin/broadcast-server
	install -m 644 $(MAN_PAGE) $(PREFIX)/share/man/man1/broadcast-server.1
	@echo "Installed $(PREFIX)/bin/broadcast-server and its manual page."
	@echo "Try: broadcast-server --help; man broadcast-server"

server: $(STAMP)
	$(BIN)/broadcast-server start --port $(PORT)

client: $(STAMP)
	$(BIN)/broadcast-server connect --host $(HOST) --port $(PORT) --username $(USER_NAME)

# The tests run a real redis-server, Chromium and nginx: install them first, or say
# what is missing.
test: $(STAMP)
	tests/require-services
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

man: $(STAMP)
	COLUMNS=80 SOURCE_DATE_EPOCH=$(SOURCE_DATE_EPOCH) $(BIN)/argparse-manpage \
		--module broadcast_sync.cli --function build_parser \
		--project-name broadcast-sync --prog broadcast-server \
		--version $(VERSION) --manual-title "broadcast-sync manual" \
		--description "WebSocket broadcast (chat) server and terminal client" \
		--include man/extra.inc --output $(MAN_OUTPUT)

# The README's pictures of the chat page, taken by a browser test.
screenshots: $(STAMP)
	tests/require-services
	BROADCAST_SCREENSHOTS=docs $(BIN)/pytest -q tests/test_browser.py \
		-k test_two_pages_and_a_terminal_client_chat

coverage: $(STAMP)
	$(BIN)/coverage erase
	$(BIN)/coverage run -m pytest -q
	$(BIN)/coverage combine -q
	$(BIN)/coverage report --show-missing --skip-covered

# Autobahn|Testsuite's fuzzingclient against the server in relay mode. The
# first run sets up Python 2.7 and wstest in .venv-autobahn.
conformance: $(STAMP)
	$(BIN)/python -m tests.conformance --quick

# All of it twice: plain, then over TLS (report in conformance-report/tls/).
# Each prints its summary; the target fails if either run does. A set-up
# failure (2) or Ctrl+C (130) in the first stops before the second.
conformance-full: $(STAMP)
	$(BIN)/python -m tests.conformance; plain=$$?; \
	[ $$plain -le 1 ] || exit $$plain; \
	$(BIN)/python -m tests.conformance --tls && exit $$plain

# Both modes, one after the other: the log in memory, then in a redis-server
# of the benchmark's own (bench-results/latest.json, latest-redis.json).
# More options for both: make bench BENCH_OPTIONS='--repeat 3'.
bench: $(STAMP)
	$(BIN)/python -m tests.bench $(BENCH_OPTIONS)
	$(BIN)/python -m tests.bench --redis $(BENCH_OPTIONS)

build: $(STAMP)
	$(BIN)/python -m build --outdir dist .

clean:
	rm -rf $(VENV) .venv-autobahn conformance-report bench-results \
		build dist *.egg-info .coverage .coverage.* htmlcov \
		.mypy_cache .ruff_cache .pytest_cache .hypothesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
