"""The benchmark of issue #3: ``make bench`` or ``python -m tests.bench``.

Design, in short: the server runs as a subprocess (``python -m
broadcast_sync start``) pinned to one core with ``taskset``; the load
generator is this process, pinned to the other core, with one thread and
one ``select.epoll`` over every client socket. It speaks WebSocket itself
(:mod:`tests.bench.wire`): raw handshakes, pipelined, and masked frames
built once per message. Every chat frame has the same size, so most
clients only ``recv_into`` a shared buffer and count bytes, which counts
messages exactly; 32 sampled clients, spread across the room, decode every
frame for latency (send time to receive time, one monotonic clock), order
and loss. This keeps the generator well below saturation at a million
deliveries per second, and it reports its own CPU use to prove it, along
with the CPU time other processes took on either core (``noise``).

The server runs with ``--rate-limit 0 --max-clients 12000`` and with
``--ping-interval 3600 --pong-timeout 3600``: no ping is sent during a run,
so the generator need not answer pings and no pong is in any measurement.

With ``--redis`` every run also starts a redis-server of its own (empty,
no persistence), pinned to the generator's core, and the server runs with
``--redis`` on it; Redis's CPU use is measured apart from the generator's.
``make bench`` runs both modes. The resume scenario uses blocking clients
of its own (:mod:`tests.bench.resume`): it times one client at a time.

With ``--tls`` (either mode) each run makes a certificate of its own
(:mod:`tests.bench.certificate`), the server speaks TLS with it, and every
client verifies it: the generator's clients are SSL objects over memory
buffers in the same event loop (:class:`~tests.bench.loadgen.TLSLoadGenerator`),
which counts decrypted bytes exactly as the plain loop counts bytes. The
generator then pays for TLS as well as the server: its CPU shows by how much.

Modules: :mod:`~tests.bench.wire` (handshake, frames, payloads),
:mod:`~tests.bench.loadgen` (the event loop and its clients, plain or TLS),
:mod:`~tests.bench.certificate` (``--tls``'s certificate),
:mod:`~tests.bench.pacing` (what is sent when),
:mod:`~tests.bench.tracking` (latency and order bookkeeping),
:mod:`~tests.bench.serverproc` (the server subprocess, and Redis),
:mod:`~tests.bench.resume` (the resume scenario's clients),
:mod:`~tests.bench.scenarios` (room, flood, idle, lone, resume, workers),
:mod:`~tests.bench.report` (figures, table, JSON),
:mod:`~tests.bench.cli` (the command line).
"""
