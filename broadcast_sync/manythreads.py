"""What a process of thousands of threads asks of the interpreter and the kernel.

The server runs two threads per client: ten thousand clients make twenty
thousand threads, almost all of them asleep, and some 90 objects each that
the garbage collector tracks. Five settings keep that cheap: small stacks,
a GIL that is never taken away by force, a futex table with room for every
sleeping thread, threads that do not preempt each other when they wake,
and a collector that seldom goes through every object. :func:`prepare`
makes them, before the server starts its threads.
"""

from __future__ import annotations

import ctypes
import gc
import os
import sys
import threading

#: Thread stack size: ten thousand clients at the default 8 MiB would
#: reserve 160 GiB of address space. Our deepest call chains use a small
#: fraction of this.
THREAD_STACK_BYTES = 256 * 1024
#: The interpreter's switch interval (5 ms by default): how long a thread
#: may hold the GIL while others wait for it. Every thread waiting for the
#: GIL also wakes once per interval to ask for it, and each wake-up costs the
#: kernel time. When 10,000 connections reset at once, 10,000 readers wait:
#: at 5 ms the wake-ups alone filled the core; at 0.5 s they still did, in
#: four runs of nineteen, and the server took a minute or more to let its
#: clients go, 95 % of the core in futex_wake (each wake also walked a
#: crowded slot of the futex table: see size_futex_table). Our threads give
#: the GIL up at every system call; the longest stretches without one (a
#: fan-out to thousands of closed clients, a replay) take milliseconds, so
#: forcing a switch is never needed, and half a minute is as good as never.
GIL_SWITCH_INTERVAL = 30.0
#: Tracked objects allocated (less those freed) that start a collection of
#: the youngest generation: 700 by default. The objects alive at each
#: collection move to an older generation, and once enough have piled up,
#: the collector goes through every object, holding the GIL. With 2,500
#: clients that is 250,000 objects and 104 ms; a spike run had three such
#: collections in 20 s, and a second at 220 ms p99. Messages in flight are
#: short-lived but many: collecting young objects 14 times more seldom
#: moves far fewer of them to the old generations, and the same run had
#: no full collection.
GC_YOUNG_THRESHOLD = 10_000
#: prctl(2) option and operation that size the process's own futex table
#: (Linux 6.16 and later), from <linux/prctl.h>.
PR_FUTEX_HASH = 78
PR_FUTEX_HASH_SET_SLOTS = 1


def prepare(threads: int) -> None:
    """Set the process up for at most about ``threads`` threads at once,
    and the calling thread for starting them."""
    threading.stack_size(THREAD_STACK_BYTES)
    sys.setswitchinterval(GIL_SWITCH_INTERVAL)
    size_futex_table(threads)
    schedule_as_batch()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


def futex_slots(threads: int) -> int:
    """Slots for ``threads`` sleeping threads: a power of two, one each."""
    return 1 << max(threads - 1, 1).bit_length()


def size_futex_table(threads: int) -> bool:
    """Give the process's futex table a slot for each of ``threads``;
    False where the kernel keeps no table per process.

    Every lock, queue and GIL hand-off sleeps and wakes on a futex, and each
    wake walks the sleepers of its slot. Since Linux 6.16 a process has a
    table of its own, sized by its CPUs, not its threads: 16 slots on two
    CPUs. With 20,000 threads asleep, each wake walked some 1,250 of them.
    When 10,000 clients were reset at once, futex_wake took 91 % of the
    server's core, and letting them go took 6.5 s instead of 3.1 s. (Older
    kernels share one table of 256 slots per CPU among all processes; the
    call fails there, and nothing changes.)
    """
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    # prctl() is variadic: each argument after the option an unsigned long.
    result = libc.prctl(
        PR_FUTEX_HASH,
        ctypes.c_ulong(PR_FUTEX_HASH_SET_SLOTS),
        ctypes.c_ulong(futex_slots(threads)),
        ctypes.c_ulong(0),  # flags
        ctypes.c_ulong(0),
    )
    return bool(result == 0)


def schedule_as_batch() -> bool:
    """Run the calling thread, and the threads it starts from now on, under
    SCHED_BATCH; False where that cannot be done.

    Under the default policy a thread that wakes may take the core from the
    one running. Here the thread that wakes nearly always needs the GIL,
    which the running one holds: it only goes back to sleep, and the thread
    it interrupted, back from its system call, then waits for the GIL behind
    every other thread waiting. SCHED_BATCH threads do not preempt on
    waking; they still get their fair share of the core. In two runs each:
    flood p99 2.6 ms instead of 12; a room of 3,000, 68-70 ms instead of
    73-91; a newcomer during a mass disconnect of 10,000, 0.13-0.19 s
    instead of 0.28-0.45.
    """
    if not hasattr(os, "SCHED_BATCH"):
        return False
    try:
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    except OSError:  # not allowed here
        return False
    return True
