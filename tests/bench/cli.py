"""``python -m tests.bench``: run the scenarios, print the table and the JSON."""

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

DEFAULT_JSON = REPOSITORY / "bench-results" / "latest.json"


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's command line."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench",
        description=(
            "Benchmark the broadcast server: room capacity, flood, idle scale "
            "and lone-message latency (issue #3)."
        ),
    )
    parser.add_argument(
        "--quick", action="store_true", help="small sizes and short runs"
    )
    parser.add_argument(
        "--scenario",
        action="append",
        choices=list(SCENARIOS),
        help="run only this scenario; repeat for several (default: all)",
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
        "--idle-clients",
        type=positive_int,
        metavar="N",
        help="clients of the idle scenario (default: 10000)",
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=DEFAULT_JSON,
        metavar="PATH",
        help="where to write the JSON document (default: bench-results/latest.json)",
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
    sys.exit(run(build_parser().parse_args(argv)))


def run(args: argparse.Namespace) -> int:
    """Run what ``args`` asks; 0 when every run completed."""
    server_cpu, generator_cpu = choose_cpus(args.pin)
    settings = _settings(args, server_cpu, generator_cpu)
    names = [name for name in SCENARIOS if name in (args.scenario or SCENARIOS)]
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
    except KeyboardInterrupt:
        print("bench: interrupted; server and clients stopped.", file=sys.stderr)
        return 130
    finally:
        gc.enable()
        os.sched_setaffinity(0, affinity)
        signal.signal(signal.SIGTERM, previous_handler)
    summary = _summary(rows, capacity, settings, time.monotonic() - started)
    machine = {
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
    report.write_json(args.json, document)
    # The JSON first, so that the table ends up on screen.
    print(report.to_json(document))
    _print_report(rows, summary, machine)
    print(f"JSON written to {args.json}")
    return 0


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    # Raising unwinds every context manager: the server and sockets close.
    raise KeyboardInterrupt


def _settings(
    args: argparse.Namespace, server_cpu: int | None, generator_cpu: int | None
) -> Settings:
    settings = QUICK if args.quick else Settings()
    changes: dict[str, Any] = {"server_cpu": server_cpu, "generator_cpu": generator_cpu}
    if args.sizes:
        changes["room_sizes"] = tuple(args.sizes)
    if args.duration:
        changes["duration"] = args.duration
    if args.idle_clients:
        changes["idle_clients"] = args.idle_clients
    return dataclasses.replace(settings, **changes)


def _sizes_of(scenario: Scenario, settings: Settings) -> tuple[int, ...]:
    return {
        "room": settings.room_sizes,
        "flood": (settings.flood_receivers,),
        "idle": (settings.idle_clients,),
        "lone": (settings.lone_clients,),
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
    print(f"\nbroadcast-sync benchmark ({machine['cpus']} CPUs, {pinned})\n")
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
    for warning in report.warnings(rows):
        print(f"warning: {warning}")
    print(f"total time: {summary['total_seconds']:.0f} s\n")


def _progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _sizes(text: str) -> list[int]:
    sizes = [positive_int(part) for part in text.split(",") if part.strip()]
    if not sizes:
        raise argparse.ArgumentTypeError("give at least one size")
    return sorted(sizes)
