"""The process-wide settings for thousands of threads, as the kernel sees them."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import gc
import os
import threading

from broadcast_sync.manythreads import GC_YOUNG_THRESHOLD, PR_FUTEX_HASH, futex_slots
from broadcast_sync.server import MAX_PENDING_HANDSHAKES
from tests.conftest import SERVER_THREAD_PREFIXES, join, run_server

#: prctl(2) operation that reads the size of the process's futex table.
PR_FUTEX_HASH_GET_SLOTS = 2


def futex_table_slots() -> int | None:
    """Slots of this process's own futex table; None where the kernel keeps
    no table per process (before Linux 6.16)."""
    libc = ctypes.CDLL(None, use_errno=True)
    unused = ctypes.c_ulong(0)
    get = ctypes.c_ulong(PR_FUTEX_HASH_GET_SLOTS)
    slots = int(libc.prctl(PR_FUTEX_HASH, get, unused, unused, unused))
    if slots < 0:
        assert ctypes.get_errno() == errno.EINVAL
        return None
    return slots


def test_futex_slots_are_a_power_of_two_with_one_per_thread() -> None:
    assert [futex_slots(threads) for threads in (1, 2, 3, 16, 17, 20512)] == [
        2,
        2,
        4,
        16,
        32,
        32768,
    ]


def test_a_started_server_gives_each_of_its_threads_a_futex_slot() -> None:
    """Two threads per connection it may hold: 16 slots, the kernel's size
    for two CPUs, made each wake walk a thousand sleepers."""
    max_clients = 3000
    threads = 2 * (max_clients + MAX_PENDING_HANDSHAKES)
    with run_server(max_clients=max_clients):
        slots = futex_table_slots()
    # Before Linux 6.16, all processes share one big table: nothing to size.
    assert slots is None or slots >= threads


def test_a_started_server_runs_its_threads_as_batch() -> None:
    """SCHED_BATCH for the thread that starts the server, and so for every
    thread of the server, down to a client's reader and writer."""
    os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))  # as at startup
    with run_server() as server, contextlib.closing(join(server, "alice")):
        threads = [
            thread
            for thread in threading.enumerate()
            if thread.name.startswith(SERVER_THREAD_PREFIXES)
        ]
        names = {thread.name.split()[0] for thread in threads}
        assert {"dispatcher", "reader", "writer"} <= names
        for thread in [threading.current_thread(), *threads]:
            assert thread.native_id is not None
            assert os.sched_getscheduler(thread.native_id) == os.SCHED_BATCH


def test_a_started_server_collects_young_objects_seldom() -> None:
    gc.set_threshold(700, 10, 10)  # the interpreter's defaults
    with run_server():
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, 10, 10)
