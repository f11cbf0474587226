"""Figures recorded by the benchmarks, and the summary table printed at the end.

pytest-benchmark times each target on its own; what matters for Caxton is how
a target compares with its baseline *measured in the same run*, because this
machine is shared and noisy and another machine is faster or slower as a
whole. So every benchmark records its headline figures here under a stable
key, and `ROWS` says which figure is read against which baseline. The table
and `bench/results/summary.json` are built from that at the end of the run.

Targets from the issue are printed beside the figures for the reader; they are
never checked: a benchmark is not a test.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path


@dataclass(frozen=True)
class Figure:
    value: float
    unit: str  # "µs", "ms", "msg/s", "MiB"
    label: str


FIGURES: dict[str, Figure] = {}
# 1/5/15-minute load averages at the start and end of the session.
LOAD: dict[str, tuple[float, float, float]] = {}


def record(key: str, value: float, unit: str, label: str) -> None:
    """Remember a figure for the summary table (last write wins)."""
    FIGURES[key] = Figure(float(value), unit, label)


def percentile(data: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) with linear interpolation between ranks,
    as numpy's default does; p99 of 2000 samples is then well defined."""
    if not data:
        return math.nan
    ordered = sorted(data)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass(frozen=True)
class Row:
    """One line of the summary: `key` read against `baseline` (ratio =
    value / baseline value). Rows whose figures were not measured in this run
    (a deselected benchmark, the optional 200-agent step) are left out."""

    section: str
    key: str
    baseline: str | None = None
    target: str = ""


def _memory_rows(steps: Sequence[int]) -> list[Row]:
    """Per step: deploy time and memory per agent against the first step,
    the supervisor against itself with no agents. Worker RSS is the same at
    every step (it counts the shared interpreter pages in full), so it is
    shown once; the machine's used-memory growth is too noisy on a shared
    machine for the table and stays in extra_info."""
    rows: list[Row] = []
    first = steps[0]
    for n in steps:
        base = None if n == first else f"memory.{first}"
        rows += [
            Row("memory", f"memory.{n}.deploy_p50", f"{base}.deploy_p50" if base else None),
            Row("memory", f"memory.{n}.pss", f"{base}.pss" if base else None),
            Row("memory", f"memory.{n}.uss", f"{base}.uss" if base else None),
            *([Row("memory", f"memory.{n}.rss")] if n == first else []),
            Row("memory", f"memory.{n}.supervisor_rss", "memory.0.supervisor_rss"),
        ]
    return rows


def _hotswap_rows() -> list[Row]:
    """Per start mode and replica count: the supervisor's own durations
    (request to switch, to old workers drained) and the client's wall time
    of the call against a cold deploy of as many replicas; the slowest Send
    the callers saw during the reloads, and messages lost (must be 0)."""
    rows: list[Row] = []
    for mode in ("fork", "exec"):
        for replicas in (1, 3):
            key = f"hotswap.{mode}.r{replicas}"
            rows += [
                Row("hot swap", f"{key}.switched.p50", f"{key}.cold.p50"),
                Row("hot swap", f"{key}.drained.p50", f"{key}.switched.p50"),
                Row("hot swap", f"{key}.call.p50", f"{key}.cold.p50"),
                Row("hot swap", f"{key}.call.p99", f"{key}.cold.p50"),
                Row("hot swap", f"{key}.idle.switched.p50", f"{key}.cold.p50"),
                Row("hot swap", f"{key}.idle.call.p50", f"{key}.cold.p50"),
                Row("hot swap", f"{key}.send.max"),
                Row("hot swap", f"{key}.lost", target="0"),
            ]
    rows.append(Row("hot swap", "hotswap.exec.r1.call.p50", "hotswap.fork.r1.call.p50"))
    return rows


def _scale_rows(steps: Sequence[int]) -> list[Row]:
    """Per step of bench_scale.py: deploy time and memory per agent against
    the first step, the supervisor's RSS, threads and descriptors against
    itself with no agents, and the step's wall time."""
    rows: list[Row] = []
    first = steps[0]
    for n in steps:
        base = None if n == first else f"scale.{first}"
        rows += [
            Row("scale", f"scale.{n}.deploy_p50", f"{base}.deploy_p50" if base else None,
                "≤ 30 ms" if n == first else ""),
            Row("scale", f"scale.{n}.deploy_p99", f"{base}.deploy_p99" if base else None),
            Row("scale", f"scale.{n}.pss", f"{base}.pss" if base else None, "≤ 5 MiB"),
            Row("scale", f"scale.{n}.uss", f"{base}.uss" if base else None, "≤ 4 MiB"),
            Row("scale", f"scale.{n}.used_per_agent"),
            Row("scale", f"scale.{n}.supervisor_rss", "scale.0.supervisor_rss"),
            Row("scale", f"scale.{n}.supervisor_threads", "scale.0.supervisor_threads"),
            Row("scale", f"scale.{n}.supervisor_fds", "scale.0.supervisor_fds"),
            Row("scale", f"scale.{n}.idle_cpu", None, "≤ 2 % at 1,000" if n == 1000 else ""),
            Row("scale", f"scale.{n}.step_s"),
        ]
    return rows


ROWS: list[Row] = [
    Row("round trip", "roundtrip.send.p50", "roundtrip.one_hop.p50"),
    Row("round trip", "roundtrip.send.p50", "roundtrip.two_hop.p50", "≤ 1.3"),
    Row("round trip", "roundtrip.send.p99", "roundtrip.two_hop.p99"),
    Row("round trip", "roundtrip.two_hop.p50", "roundtrip.one_hop.p50"),
    Row("throughput", "throughput.stream_1.rate", "throughput.in_process.rate", "≥ 25,000 msg/s; ≥ 0.40"),
    Row("throughput", "throughput.stream_8.rate", "throughput.in_process.rate", "≥ 0.40"),
    Row("throughput", "throughput.stream_8.rate", "throughput.in_process_frozen.rate", "≥ 2.0"),
    Row("throughput", "throughput.unary8_1.rate", "throughput.in_process.rate"),
    Row("throughput", "throughput.unary8_8.rate", "throughput.in_process.rate"),
    Row("throughput", "throughput.unary8_1.rate", "throughput.two_hop_unary8.rate"),
    Row("in-worker", "worker.metered.sandbox", "worker.metered.bare_handle"),
    Row("in-worker", "worker.metered.sandbox", "worker.metered.bare_alloc_handle"),
    Row("in-worker", "worker.unmetered.sandbox", "worker.unmetered.bare_alloc_handle"),
    Row("in-worker", "worker.metered.sandbox", "worker.unmetered.sandbox"),
    Row("in-worker", "worker.metered.bare_alloc_handle", "worker.unmetered.bare_alloc_handle"),
    Row("deploy", "deploy.cold.p50", "deploy.cached.p50", "cold ≤ 300 ms"),
    Row("deploy", "deploy.cold.max"),
    Row("deploy", "deploy.cached.max"),
    Row("recovery", "recovery.fork.p50", "recovery.fork.cold.p50", "≤ 150 ms; fork: tens of ms"),
    Row("recovery", "recovery.fork.p99", "recovery.fork.cold.p50"),
    Row("recovery", "recovery.fork.max"),
    Row("recovery", "recovery.exec.p50", "recovery.exec.cold.p50", "≤ 150 ms"),
    Row("recovery", "recovery.exec.p99", "recovery.exec.cold.p50"),
    Row("recovery", "recovery.exec.max"),
    Row("recovery", "recovery.exec.p50", "recovery.fork.p50"),
    *_memory_rows((10, 50, 100, 200)),
    Row("merging", "merging.after.pss", "merging.before.pss", "≤ 5 MiB"),
    Row("merging", "merging.after.uss", "merging.before.uss", "≤ 4 MiB"),
    Row("merging", "merging.after.used", "merging.before.used"),
    Row("merging", "merging.profit"),
    Row("merging", "merging.ksmd_cpu"),
    Row("merging", "merging.after.wake", "merging.before.wake"),
    Row("merging", "merging.after.wake_faults", "merging.before.wake_faults"),
    *_hotswap_rows(),
    *_scale_rows((10, 100, 500, 1000, 1500, 2000, 2500)),
]


def _fmt(figure: Figure) -> str:
    value = figure.value
    if math.isnan(value):
        return "n/a"
    if figure.unit in ("msg/s", "µs") and value >= 100:
        return f"{value:,.0f} {figure.unit}"
    if figure.unit in ("threads", "fds", "msg", "faults"):  # counts
        return f"{value:,.0f} {figure.unit}"
    if figure.unit == "µs":
        return f"{value:.1f} {figure.unit}"
    return f"{value:,.1f} {figure.unit}"


def table_lines() -> list[str]:
    """The summary table as text lines, rows in `ROWS` order."""
    header = ("section", "measurement", "value", "baseline (same run)", "value", "ratio", "target")
    lines: list[tuple[str, ...]] = [header]
    for row in ROWS:
        figure = FIGURES.get(row.key)
        if figure is None:
            continue
        base = FIGURES.get(row.baseline) if row.baseline else None
        if base is None:
            base_cells = ("", "", "")
        else:
            ratio = figure.value / base.value if base.value else math.nan
            base_cells = (base.label, _fmt(base), f"{ratio:.2f}")
        lines.append((row.section, figure.label, _fmt(figure), *base_cells, row.target))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for i, line in enumerate(lines):
        cells = [cell.rjust(w) if j in (2, 4, 5) and i else cell.ljust(w)
                 for j, (cell, w) in enumerate(zip(line, widths, strict=True))]
        out.append("  ".join(cells).rstrip())
        if i == 0:
            out.append("  ".join("-" * w for w in widths))
    return out


def load_text() -> str:
    """The 1-minute load average around the run: on 2 cores, anything much
    above the benchmark's own load means others were using the machine."""
    parts = [f"{when} {LOAD[when][0]:.2f}" for when in ("start", "end") if when in LOAD]
    return f"Load average (1 min): {', '.join(parts)}" if parts else "Load average unknown"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "?"


def write_json(path: Path) -> None:
    """Every figure, every row with its ratio, and what it ran on."""
    rows = []
    for row in ROWS:
        figure = FIGURES.get(row.key)
        if figure is None:
            continue
        base = FIGURES.get(row.baseline) if row.baseline else None
        rows.append(
            {
                "section": row.section,
                "key": row.key,
                "baseline": row.baseline,
                "ratio": figure.value / base.value if base and base.value else None,
                "target": row.target,
            }
        )
    try:
        import psutil

        memory_gib = round(psutil.virtual_memory().total / (1 << 30), 1)
    except ImportError:  # pragma: no cover - psutil is a dependency
        memory_gib = None
    document = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {
            "cpus": os.cpu_count(),
            "memory_gib": memory_gib,
            "python": platform.python_version(),
            "grpcio": _version("grpcio"),
            "protobuf": _version("protobuf"),
            "wasmtime": _version("wasmtime"),
        },
        "load_average": LOAD,
        "figures": {key: asdict(figure) for key, figure in sorted(FIGURES.items())},
        "rows": rows,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
