"""Run the command line: ``python -m broadcast_sync``."""

from broadcast_sync.cli import main

main()
