"""Figures: what a run measured, medians over repeats, the table and the JSON."""

from __future__ import annotations

import dataclasses
import json
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tests.bench.tracking import percentile

#: Room capacity: the p99 latency under which a room size passes.
P99_LIMIT_MS = 100.0
#: Lone-message target for the median and p99 latency.
LONE_TARGET_MS = 5.0
#: Idle scale target: server memory per idle connection.
IDLE_TARGET_KIB = 48.0
#: Resume target: from the handshake to the last of 1000 replayed events.
RESUME_TARGET_MS = 50.0
#: Above this (the generator's CPU, Redis's, which shares its core, and the
#: core's interrupts) the generator may have been the bottleneck.
GENERATOR_CPU_WARNING = 80.0
#: Above this, other processes on a pinned core made the figures unsound.
OTHER_LOAD_WARNING = 10.0
#: A p99 send delay past this means the generator fell behind its schedule.
GENERATOR_LAG_WARNING_MS = 20.0
#: Figures that count faults: over repeats, the worst run's, not the median.
FAULT_FIELDS = ("lost", "out_of_order", "dropped", "unexpected", "server_warnings")
#: Other processes' load on our cores: over repeats, the worst run's.
OTHER_LOAD_FIELDS = ("server_core_other_percent", "generator_core_other_percent")
#: Scenario figures that tell of faults, and how to pick the worst run's.
WORST_EXTRAS: dict[str, Callable[[list[float]], float]] = {
    "refused": max,
    "unanswered": max,
    "not_tried": max,
    "server_killed": max,
    "notices": min,
    "failed": max,
    "tls_errors": max,
}
#: Figures that measure: over repeats, the median.
MEDIAN_FIELDS = (
    "seconds",
    "messages_sent",
    "deliveries",
    "deliveries_per_s",
    "server_cpu_percent",
    "server_system_percent",
    "server_rss_mib",
    "server_threads",
    "generator_cpu_percent",
    "generator_lag_ms",
)
#: Figures that may be missing (not pinned): over repeats, the median of those
#: that are there.
OPTIONAL_MEDIAN_FIELDS = (
    "server_core_irq_percent",
    "generator_core_irq_percent",
    "redis_cpu_percent",
)
#: Reference figures from the issue (other servers, same machine type).
TARGETS = {
    "room_capacity_gorilla_go": "375-400",
    "room_capacity_target": ">= 1000",
    "idle_rss_per_client_kib_target": f"< {IDLE_TARGET_KIB:g}",
    "lone_latency_ms_target": f"p50 and p99 < {LONE_TARGET_MS:g}",
    "resume_1000_ms_target": f"p50 < {RESUME_TARGET_MS:g}",
}


@dataclasses.dataclass
class Latency:
    """End-to-end latency percentiles in milliseconds."""

    p50: float
    p90: float
    p99: float
    max: float
    samples: int

    @classmethod
    def from_ns(cls, latencies_ns: list[int]) -> Latency | None:
        """Percentiles of ``latencies_ns``; None if there are none."""
        if not latencies_ns:
            return None
        ordered = sorted(latencies_ns)
        return cls(
            p50=percentile(ordered, 0.50) / 1e6,
            p90=percentile(ordered, 0.90) / 1e6,
            p99=percentile(ordered, 0.99) / 1e6,
            max=ordered[-1] / 1e6,
            samples=len(ordered),
        )


@dataclasses.dataclass
class Figures:
    """What one run of one scenario measured.

    ``lost`` counts deliveries missing at the connected clients (every
    client, from byte counts); ``out_of_order`` is seen by the sampled
    clients only, which decode every frame.
    """

    scenario: str
    clients: int
    seconds: float = 0.0
    messages_sent: int = 0
    deliveries: int = 0
    deliveries_per_s: float = 0.0
    #: What the workload asks for; None when it is "as fast as it goes".
    expected_per_s: float | None = None
    latency: Latency | None = None
    lost: int = 0
    out_of_order: int = 0
    dropped: int = 0
    #: Frames the sampled clients could not place: a framing problem.
    unexpected: int = 0
    server_cpu_percent: float = 0.0
    #: The part of ``server_cpu_percent`` spent in the kernel.
    server_system_percent: float = 0.0
    server_rss_mib: float = 0.0
    server_threads: int = 0
    #: WARNING or ERROR lines in the server's log.
    server_warnings: int = 0
    generator_cpu_percent: float = 0.0
    #: CPU use of the benchmark's redis-server (``--redis``), on the
    #: generator's core; None without Redis.
    redis_cpu_percent: float | None = None
    #: CPU time other processes took on the server's and the generator's
    #: cores (None: not pinned). More than a little makes figures unsound.
    server_core_other_percent: float | None = None
    generator_core_other_percent: float | None = None
    #: Interrupt time on those cores (loopback TCP, mostly ours), charged to
    #: no process: the server's core is saturated when this plus
    #: ``server_cpu_percent`` nears 100.
    server_core_irq_percent: float | None = None
    generator_core_irq_percent: float | None = None
    generator_lag_ms: float = 0.0
    passed: bool | None = None
    #: Figures particular to a scenario (idle scale's memory, for one).
    extra: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def label(self) -> str:
        """The scenario and its size, as the table shows it."""
        return f"{self.scenario} {self.clients}"


def median_figures(runs: Sequence[Figures]) -> Figures:
    """One :class:`Figures` from repeats: medians, but the worst run's faults."""
    if len(runs) == 1:
        return runs[0]
    first = runs[0]
    merged = dataclasses.replace(first)
    for name in FAULT_FIELDS:
        setattr(merged, name, max(getattr(run, name) for run in runs))
    for name in MEDIAN_FIELDS:
        setattr(merged, name, statistics.median(getattr(run, name) for run in runs))
    for name in OTHER_LOAD_FIELDS + OPTIONAL_MEDIAN_FIELDS:
        found = [getattr(run, name) for run in runs if getattr(run, name) is not None]
        pick = max if name in OTHER_LOAD_FIELDS else statistics.median
        setattr(merged, name, pick(found) if found else None)
    latencies = [run.latency for run in runs if run.latency is not None]
    if latencies:
        merged.latency = Latency(
            p50=statistics.median(each.p50 for each in latencies),
            p90=statistics.median(each.p90 for each in latencies),
            p99=statistics.median(each.p99 for each in latencies),
            max=statistics.median(each.max for each in latencies),
            samples=sum(each.samples for each in latencies),
        )
    merged.extra = {}
    for key in first.extra:
        values = [run.extra[key] for run in runs if key in run.extra]
        merged.extra[key] = WORST_EXTRAS.get(key, statistics.median)(values)
    return merged


# The table

_COLUMNS = (
    ("scenario", 11),
    ("deliv/s", 9),
    ("expected", 9),
    ("p50 ms", 7),
    ("p90 ms", 7),
    ("p99 ms", 7),
    ("max ms", 7),
    ("lost", 5),
    ("order", 5),
    ("drop", 5),
    ("srv CPU", 7),
    ("srv irq", 7),
    ("srv MiB", 7),
    ("gen CPU", 7),
    ("redis CPU", 9),
    ("noise", 5),
    ("verdict", 7),
)


def _cells(figures: Figures) -> list[str]:
    latency = figures.latency
    times = (
        [f"{value:.2f}" for value in (latency.p50, latency.p90, latency.p99)]
        + [f"{latency.max:.1f}"]
        if latency is not None
        else ["-"] * 4
    )
    expected = figures.expected_per_s
    verdict = {True: "pass", False: "FAIL", None: ""}[figures.passed]
    return [
        figures.label,
        f"{figures.deliveries_per_s:,.0f}",
        "-" if expected is None else f"{expected:,.0f}",
        *times,
        str(figures.lost),
        str(figures.out_of_order),
        str(figures.dropped),
        f"{figures.server_cpu_percent:.0f}%",
        _percent(figures.server_core_irq_percent),
        f"{figures.server_rss_mib:.0f}",
        f"{figures.generator_cpu_percent:.0f}%",
        _percent(figures.redis_cpu_percent),
        _noise(figures),
        verdict,
    ]


LEGEND = """\
deliv/s: deliveries per second measured (expected: what the load asks for);
p50..max: send-to-receive latency at the sampled receivers; lost: deliveries
missing at the end (all receivers); order: out of order (sampled receivers);
drop: clients the server disconnected; srv/gen/redis CPU: % of one core
(Redis, with --redis, shares the generator's core); srv irq: interrupt time
on the server's core (loopback TCP, charged to no process); noise: CPU
other processes took on our pinned cores (unsound above 10%). resume: p50..max
of the time from the handshake to the last replayed event, one per resume.
"""


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}%"


def _noise(figures: Figures) -> str:
    """Other processes' load on the busier of our two cores."""
    loads = [
        load
        for load in (
            figures.server_core_other_percent,
            figures.generator_core_other_percent,
        )
        if load is not None
    ]
    return f"{max(loads):.0f}%" if loads else "-"


def table(rows: Sequence[Figures]) -> str:
    """The figures as a plain-text table, one row per run or median of runs."""
    widths = [max(width, len(name)) for name, width in _COLUMNS]
    lines = [[name for name, _ in _COLUMNS]] + [_cells(row) for row in rows]
    for line in lines:
        for position, cell in enumerate(line):
            widths[position] = max(widths[position], len(cell))
    rendered = []
    for number, line in enumerate(lines):
        cells = [line[0].ljust(widths[0])]
        cells += [
            cell.rjust(width) for cell, width in zip(line[1:], widths[1:], strict=True)
        ]
        rendered.append("  ".join(cells).rstrip())
        if number == 0:
            rendered.append("-" * len(rendered[0]))
    return "\n".join(rendered)


def warnings(rows: Sequence[Figures]) -> list[str]:
    """What casts doubt on a figure: a busy generator, faults, a loud server."""
    found = []
    for row in rows:
        interrupts = row.generator_core_irq_percent or 0.0
        redis = row.redis_cpu_percent or 0.0
        busy = row.generator_cpu_percent + redis + interrupts
        if busy > GENERATOR_CPU_WARNING:
            redis_part = f", Redis {redis:.0f}%" if row.redis_cpu_percent else ""
            found.append(
                f"{row.label}: the generator's core was {busy:.0f}% busy "
                f"(generator {row.generator_cpu_percent:.0f}%{redis_part}, "
                f"interrupts {interrupts:.0f}%); it may have been the bottleneck"
            )
        if row.generator_lag_ms > GENERATOR_LAG_WARNING_MS:
            found.append(
                f"{row.label}: 1% of messages were sent over "
                f"{row.generator_lag_ms:.0f} ms late; the generator fell behind"
            )
        if row.extra.get("server_killed"):
            found.append(
                f"{row.label}: the server was still busy after SIGTERM and was killed"
            )
        for role, other in (
            ("server", row.server_core_other_percent),
            ("generator", row.generator_core_other_percent),
        ):
            if other is not None and other > OTHER_LOAD_WARNING:
                found.append(
                    f"{row.label}: other processes took {other:.0f}% of the "
                    f"{role}'s core; this machine was busy, figures are unsound"
                )
        if row.extra.get("failed"):
            found.append(
                f"{row.label}: {row.extra['failed']:.0f} resumes failed (see above)"
            )
        if row.unexpected:
            found.append(f"{row.label}: {row.unexpected} frames not understood")
        if row.extra.get("tls_errors"):
            found.append(
                f"{row.label}: {row.extra['tls_errors']:.0f} TLS errors in the "
                "generator (reasons above)"
            )
        if row.server_warnings:
            found.append(f"{row.label}: {row.server_warnings} warnings in its log")
    return found


def document(
    rows: Sequence[Figures], summary: dict[str, Any], settings: dict[str, Any]
) -> dict[str, Any]:
    """The JSON document: settings, every scenario's figures, the summary."""
    return {
        "settings": settings,
        "targets": TARGETS,
        "summary": summary,
        "scenarios": [dataclasses.asdict(row) for row in rows],
    }


def to_json(content: dict[str, Any]) -> str:
    """``content`` as indented JSON."""
    return json.dumps(content, indent=2)


def write_json(path: Path, content: dict[str, Any]) -> None:
    """Write ``content`` to ``path``, creating its directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_json(content) + "\n")
