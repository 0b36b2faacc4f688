"""Conformance (issue #4): ``make conformance``, ``python -m tests.conformance``.

Autobahn|Testsuite's fuzzingclient runs its cases against the server in
relay mode, an echo server to its lone connection, and its report is
summarized: outcomes per group, every case not OK with Autobahn's reasons,
and the closing line ``N passed, N failed``. The exit status is 0 only when
no case failed and the run completed. ``--tls`` runs it all over ``wss://``
with a certificate made for the run (``tests/certs.py``), which wstest
verifies; ``make conformance-full`` runs the full suite plain, then with
``--tls``.

Modules: :mod:`~tests.conformance.environment` (Python 2.7 and ``wstest``,
set up once in ``.venv-autobahn/``), :mod:`~tests.conformance.serverproc`
(the server subprocess), :mod:`~tests.conformance.suite` (the spec and the
run of wstest), :mod:`~tests.conformance.summary` (``index.json`` counted
and judged), :mod:`~tests.conformance.cli` (the command line).
"""
