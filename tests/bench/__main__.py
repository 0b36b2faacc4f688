"""``python -m tests.bench``."""

from tests.bench.cli import main

main()
