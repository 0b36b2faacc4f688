"""``python -m tests.bench``: run the scenarios, print the table and the JSON.

One mode per run: the log in memory (the default), or ``--redis``, where
each run starts its own redis-server on the generator's core. ``make bench``
runs both, one after the other, each writing its own JSON. ``--tls`` goes
with either: the same scenarios over TLS, with a certificate made for the
run, and JSON of its own, so that it never overwrites the plain figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import platform
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from broadcast_sync.cli import positive_float, positive_int
from tests.bench import report
from tests.bench.report import Figures
from tests.bench.scenarios import QUICK, SCENARIOS, Scenario, Settings
from tests.bench.serverproc import REPOSITORY, ServerError, choose_cpus
from tests.redisproc import RedisError

#: Where each mode writes its JSON unless told: both survive ``make bench``.
DEFAULT_JSON = REPOSITORY / "bench-results" / "latest.json"
DEFAULT_REDIS_JSON = REPOSITORY / "bench-results" / "latest-redis.json"
DEFAULT_TLS_JSON = REPOSITORY / "bench-results" / "latest-tls.json"
DEFAULT_REDIS_TLS_JSON = REPOSITORY / "bench-results" / "latest-redis-tls.json"


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's command line."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench",
        description=(
            "Benchmark the broadcast server: room capacity, flood, idle scale, "
            "lone-message latency and resume (issue #3); with --redis, also "
            "--workers 2 for correctness."
        ),
    )
    parser.add_argument(
        "--redis",
        action="store_true",
        help=(
            "run the server with --redis on a redis-server of the benchmark's "
            "own, pinned to the generator's core; its CPU use is reported "
            "(default: the log in memory)"
        ),
    )
    parser.add_argument(
        "--tls",
        action="store_true",
        help=(
            "run the server with a certificate (EC P-256, for 127.0.0.1) made "
            "for each run and deleted after it; every client "
            "speaks TLS and verifies it. The generator pays for TLS too: "
            "watch its CPU. Every scenario works with it; resume's times "
            "start after its TLS handshake (default: plain TCP)"
        ),
    )
    parser.add_argument(
        "--quick", action="store_true", help="small sizes and short runs"
    )
    parser.add_argument(
        "--scenario",
        action="append",
        choices=list(SCENARIOS),
        help=(
            "run only this scenario; repeat for several (default: all; "
            "workers only with --redis)"
        ),
    )
    parser.add_argument(
        "--sizes",
        type=_sizes,
        help="room sizes to climb, such as 250,500,750 (default: 250 to 2500)",
    )
    parser.add_argument(
        "--repeat",
        type=positive_int,
        default=1,
        metavar="N",
        help="runs per figure; the table shows medians (default: 1)",
    )
    parser.add_argument(
        "--duration",
        type=positive_float,
        metavar="SECONDS",
        help="measured seconds of each room and flood run (default: 8)",
    )
    parser.add_argument(
        "--spike-clients",
        type=positive_int,
        metavar="N",
        help="room size of the spike scenario (default: 2500)",
    )
    parser.add_argument(
        "--overload-clients",
        type=positive_int,
        metavar="N",
        help="room size of the overload scenario (default: 1000)",
    )
    parser.add_argument(
        "--scale-clients",
        type=positive_int,
        metavar="N",
        help="clients of the idle, disconnect and shutdown scenarios (default: 10000)",
    )
    parser.add_argument(
        "--json",
        type=Path,
        metavar="PATH",
        help=(
            "where to write the JSON document (default: bench-results/latest.json, "
            "with --redis bench-results/latest-redis.json; with --tls, "
            "latest-tls.json and latest-redis-tls.json)"
        ),
    )
    parser.add_argument(
        "--no-pin",
        dest="pin",
        action="store_false",
        help="do not pin the server and the generator to separate cores",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Run the benchmark and exit with its status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.redis and "workers" in (args.scenario or ()):
        parser.error("the workers scenario needs --redis: the workers share it")
    sys.exit(run(args))


def run(args: argparse.Namespace) -> int:
    """Run what ``args`` asks; 0 when every run completed."""
    server_cpu, generator_cpu = choose_cpus(args.pin)
    settings = _settings(args, server_cpu, generator_cpu)
    json_path = args.json or _default_json(args)
    names = [
        name
        for name, scenario in SCENARIOS.items()
        if name in (args.scenario or SCENARIOS)
        and (args.redis or not scenario.needs_redis)
    ]
    previous_handler = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    affinity = os.sched_getaffinity(0)
    if generator_cpu is not None:
        os.sched_setaffinity(0, {generator_cpu})
    started = time.monotonic()
    # A collection pause would show up as latency: the generator makes no
    # reference cycles worth collecting during a run.
    gc.disable()
    try:
        rows, capacity = _run_scenarios(settings, names, args.repeat)
    except ServerError as exc:
        print(f"bench: the server failed: {exc}", file=sys.stderr)
        return 1
    except (RedisError, RuntimeError) as exc:
        # RuntimeError: redis-server is not installed; the message says so.
        print(f"bench: redis-server failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted; server and clients stopped.", file=sys.stderr)
        return 130
    finally:
        gc.enable()
        os.sched_setaffinity(0, affinity)
        signal.signal(signal.SIGTERM, previous_handler)
    summary = _summary(rows, capacity, settings, time.monotonic() - started)
    machine = {
        "mode": "redis" if args.redis else "embedded",
        "tls": args.tls,
        "cpus": len(affinity),
        "server_cpu": server_cpu,
        "generator_cpu": generator_cpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    document = report.document(
        rows,
        summary,
        {**dataclasses.asdict(settings), "repeat": args.repeat, "machine": machine},
    )
    report.write_json(json_path, document)
    # The JSON first, so that the table ends up on screen.
    print(report.to_json(document))
    _print_report(rows, summary, machine)
    print(f"JSON written to {json_path}")
    return 0


def _default_json(args: argparse.Namespace) -> Path:
    if args.tls:
        return DEFAULT_REDIS_TLS_JSON if args.redis else DEFAULT_TLS_JSON
    return DEFAULT_REDIS_JSON if args.redis else DEFAULT_JSON


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    # Raising unwinds every context manager: the server and sockets close.
    raise KeyboardInterrupt


def _settings(
    args: argparse.Namespace, server_cpu: int | None, generator_cpu: int | None
) -> Settings:
    settings = QUICK if args.quick else Settings()
    changes: dict[str, Any] = {
        "server_cpu": server_cpu,
        "generator_cpu": generator_cpu,
        "redis": args.redis,
        "tls": args.tls,
    }
    if args.sizes:
        changes["room_sizes"] = tuple(args.sizes)
    if args.duration:
        changes["duration"] = args.duration
    if args.scale_clients:
        changes["scale_clients"] = args.scale_clients
    if args.spike_clients:
        changes["spike_clients"] = args.spike_clients
    if args.overload_clients:
        changes["overload_clients"] = args.overload_clients
    return dataclasses.replace(settings, **changes)


def _sizes_of(scenario: Scenario, settings: Settings) -> tuple[int, ...]:
    return {
        "room": settings.room_sizes,
        "flood": (settings.flood_receivers,),
        "idle": (settings.scale_clients,),
        "lone": (settings.lone_clients,),
        "resume": (settings.resume_events,),
        "workers": (settings.workers_clients,),
        "spike": (settings.spike_clients,),
        "overload": (settings.overload_clients,),
        "disconnect": (settings.scale_clients,),
        "shutdown": (settings.scale_clients,),
    }[scenario.name]


def _run_scenarios(
    settings: Settings, names: Sequence[str], repeat: int
) -> tuple[list[Figures], int | None]:
    """Every run; the room climbs sizes until the first that fails."""
    rows: list[Figures] = []
    capacity: int | None = None
    for name in names:
        scenario = SCENARIOS[name]
        for size in _sizes_of(scenario, settings):
            runs = []
            for number in range(repeat):
                _progress(f"{name} {size}" + (f" (run {number + 1})" * (repeat > 1)))
                began = time.monotonic()
                runs.append(scenario.run(settings, size))
                row = report.table(runs[-1:]).splitlines()[-1]
                _progress(f"  -> {row}  ({time.monotonic() - began:.0f} s)")
            figures = report.median_figures(runs)
            figures.passed = scenario.judge(figures)
            rows.append(figures)
            if name == "room":
                if not figures.passed:
                    break
                capacity = size
    return rows, capacity


def _summary(
    rows: Sequence[Figures],
    capacity: int | None,
    settings: Settings,
    elapsed: float,
) -> dict[str, Any]:
    summary: dict[str, Any] = {"total_seconds": round(elapsed, 1)}
    by_name = {row.scenario: row for row in rows}
    rooms = [row for row in rows if row.scenario == "room"]
    if rooms:
        summary["room_capacity"] = capacity
        climbed_all = capacity == settings.room_sizes[-1]
        summary["room_capacity_text"] = (
            f">= {capacity}"
            if climbed_all
            else f"< {settings.room_sizes[0]}"
            if capacity is None
            else str(capacity)
        )
    if "flood" in by_name and by_name["flood"].latency is not None:
        flood = by_name["flood"]
        assert flood.latency is not None
        summary["flood"] = {
            "deliveries_per_s": round(flood.deliveries_per_s),
            "p50_ms": flood.latency.p50,
            "p99_ms": flood.latency.p99,
        }
    if "idle" in by_name:
        idle = by_name["idle"]
        summary["idle"] = {"clients": idle.clients, **idle.extra}
    if "lone" in by_name and by_name["lone"].latency is not None:
        lone = by_name["lone"]
        assert lone.latency is not None
        summary["lone"] = {"p50_ms": lone.latency.p50, "p99_ms": lone.latency.p99}
    if "resume" in by_name:
        resume = by_name["resume"]
        summary["resume"] = {
            "events": resume.clients,
            "p50_ms": None if resume.latency is None else resume.latency.p50,
            "max_ms": None if resume.latency is None else resume.latency.max,
            **resume.extra,
        }
    if "workers" in by_name:
        workers = by_name["workers"]
        summary["workers"] = {
            "clients": workers.clients,
            "deliveries": workers.deliveries,
            "lost": workers.lost,
            "out_of_order": workers.out_of_order,
            "dropped": workers.dropped,
            "passed": workers.passed,
            **{key: value for key, value in workers.extra.items() if "worker_" in key},
        }
    for name in ("spike", "overload", "disconnect", "shutdown"):
        if name in by_name:
            row = by_name[name]
            summary[name] = {
                "clients": row.clients,
                "passed": row.passed,
                **row.extra,
            }
    if "overload" in by_name:
        overload = by_name["overload"]
        summary["overload"]["rss_mib"] = overload.server_rss_mib
        if overload.latency is not None:
            summary["overload"]["p99_ms"] = overload.latency.p99
    return summary


def _print_report(
    rows: Sequence[Figures], summary: dict[str, Any], machine: dict[str, Any]
) -> None:
    pinned = (
        f"server on CPU {machine['server_cpu']}, "
        f"generator on CPU {machine['generator_cpu']}"
        if machine["server_cpu"] is not None
        else "not pinned"
    )
    redis = ", Redis on the generator's CPU" if machine["mode"] == "redis" else ""
    tls = " over TLS" if machine["tls"] else ""
    print(
        f"\nbroadcast-sync benchmark, {machine['mode']} mode{tls} "
        f"({machine['cpus']} CPUs, {pinned}{redis})\n"
    )
    print(report.table(rows))
    print(report.LEGEND)
    if "room_capacity_text" in summary:
        print(
            f"room capacity: {summary['room_capacity_text']} clients "
            f"(p99 < {report.P99_LIMIT_MS:g} ms, nothing lost or dropped; "
            "gorilla/websocket: 375-400; target >= 1000)"
        )
    if "flood" in summary:
        flood = summary["flood"]
        print(
            f"flood: {flood['deliveries_per_s']:,} deliveries/s, "
            f"p50 {flood['p50_ms']:.2f} ms, p99 {flood['p99_ms']:.2f} ms"
        )
    if "idle" in summary:
        idle = summary["idle"]
        left_out = (
            f" (then {idle['unanswered']:.0f} handshakes unanswered, "
            f"{idle['not_tried']:.0f} not tried)"
            if idle["accepted"] < idle["clients"]
            else ""
        )
        print(
            f"idle scale: {idle['accepted']:.0f}/{idle['clients']} accepted in "
            f"{idle['connect_s']:.1f} s{left_out}; join notices delivered "
            f"{idle['notices']:.1%} {idle['settle_s']:.1f} s later; "
            f"RSS {idle['rss_before_mib']:.0f} -> {idle['rss_after_mib']:.0f} MiB, "
            f"{idle['rss_per_client_kib']:.1f} KiB per accepted connection "
            f"(target < {report.IDLE_TARGET_KIB:g})"
        )
    if "lone" in summary:
        lone = summary["lone"]
        print(
            f"lone message: p50 {lone['p50_ms']:.2f} ms, p99 {lone['p99_ms']:.2f} ms "
            f"(target < {report.LONE_TARGET_MS:g} ms)"
        )
    if "resume" in summary:
        _print_resume(summary["resume"])
    if "workers" in summary:
        workers = summary["workers"]
        spread = "/".join(
            f"{value:.0f}"
            for key, value in workers.items()
            if key.startswith("worker_")
        )
        print(
            f"workers: {workers['clients']} clients on 2 workers ({spread}): "
            f"{workers['deliveries']:,} deliveries, {workers['lost']} lost, "
            f"{workers['out_of_order']} out of order, {workers['dropped']} dropped "
            "(correctness only: on 2 cores the generator needs the second)"
        )
    if "spike" in summary:
        spike = summary["spike"]
        recovered = (
            f"back under 100 ms {spike['recovered_s']:.0f} s after it"
            if spike["recovered_s"] >= 0
            else "not back under 100 ms by the end"
        )
        print(
            f"spike: a room of {spike['clients']} at twice its rate for 5 s: "
            f"p99 {spike['p99_before_ms']:.0f} ms before, "
            f"{spike['p99_spike_ms']:.0f} ms during, {recovered} (target < 5 s)"
        )
    if "overload" in summary:
        _print_overload(summary["overload"])
    if "disconnect" in summary:
        _print_disconnect(summary["disconnect"])
    if "shutdown" in summary:
        shutdown = summary["shutdown"]
        print(
            f"shutdown of {shutdown['clients']} clients, half of them reset at "
            f"the same moment: exit {shutdown['exit_code']:.0f} after "
            f"{shutdown['stop_s']:.2f} s (target < 5 s: --close-timeout + 2 s)"
        )
    for warning in report.warnings(rows):
        print(f"warning: {warning}")
    print(f"total time: {summary['total_seconds']:.0f} s\n")


def _print_resume(resume: dict[str, Any]) -> None:
    if resume["p50_ms"] is None:
        print(f"resume: no resume succeeded ({resume['failed']:.0f} failed)")
        return
    redis = (
        f", Redis {resume['redis_cpu_ms']:.1f} ms" if "redis_cpu_ms" in resume else ""
    )
    print(
        f"resume of {resume['events']} events: p50 {resume['p50_ms']:.1f} ms, "
        f"max {resume['max_ms']:.1f} ms from handshake to last event "
        f"(target < {report.RESUME_TARGET_MS:g} ms); first replayed byte after "
        f"{resume['first_frame_ms']:.1f} ms (101 after {resume['response_ms']:.1f} "
        f"ms); CPU per resume: server {resume['server_cpu_ms']:.1f} ms{redis}; "
        f"{resume['failed']:.0f} of {resume['resumes'] + resume['failed']:.0f} failed"
    )


def _print_overload(overload: dict[str, Any]) -> None:
    print(
        f"overload: a room of {overload['clients']} at "
        f"{overload['rate']:.1f} messages a second each, 1.5 times the "
        f"{overload['capacity_rate']:.1f} it carries within 100 ms: "
        f"p99 {overload.get('p99_ms', float('nan')):.0f} ms for what was "
        f"delivered (worst "
        f"second {overload['p99_max_second_ms']:.0f} ms); "
        f"{overload['refused_percent']:.1f} % refused with a notice, "
        f"{overload['lost_silently']:.0f} lost silently; RSS "
        f"{overload['rss_mib']:.0f} MiB; newcomers' handshakes max "
        f"{overload['probe_max_ms']:.0f} ms, /healthz max "
        f"{overload['health_max_ms']:.0f} ms"
    )


def _print_disconnect(disconnect: dict[str, Any]) -> None:
    cleared = (
        f"all let go after {disconnect['clear_s']:.2f} s"
        if disconnect["cleared"]
        else f"not all let go after {disconnect['clear_s']:.0f} s"
    )
    print(
        f"mass disconnect of {disconnect['clients']} clients: {cleared} "
        f"(target < 5 s); newcomers' handshakes p50 "
        f"{disconnect.get('probe_p50_ms', 0):.1f} ms, max "
        f"{disconnect['probe_max_ms']:.0f} ms, {disconnect['probes_failed']:.0f} "
        f"of {disconnect['probes']:.0f} unanswered (target < 1000 ms); then "
        f"SIGTERM took {disconnect['stop_s']:.2f} s"
    )


def _progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _sizes(text: str) -> list[int]:
    sizes = [positive_int(part) for part in text.split(",") if part.strip()]
    if not sizes:
        raise argparse.ArgumentTypeError("give at least one size")
    return sorted(sizes)
