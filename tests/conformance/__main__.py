"""``python -m tests.conformance``."""

from tests.conformance.cli import main

main()
