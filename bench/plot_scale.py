"""The scale curve, drawn: bench/results/scale.json (written step by step by
bench_scale.py) as a PNG plot and as the markdown table bench/README.md shows.

    .venv/bin/python -m bench.plot_scale           # writes the PNG, puts the table in the README
    .venv/bin/python -m bench.plot_scale --print   # prints the table only

The table goes between the README's `<!-- scale-table:begin -->` and
`<!-- scale-table:end -->` lines; everything else in the README is left as
it is. Matplotlib (the `bench` extra) is imported only to draw.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
CURVE_PATH = BENCH / "results" / "scale.json"
PNG_PATH = BENCH / "results" / "scale.png"
README_PATH = BENCH / "README.md"
BEGIN = "<!-- scale-table:begin -->"
END = "<!-- scale-table:end -->"

Step = dict[str, Any]


def _measured(curve: dict) -> list[Step]:
    """The steps with agents (the first entry is the supervisor alone)."""
    return [s for s in curve["steps"] if s["agents"] > 0]


def _at_zero(curve: dict, key: str) -> str:
    zero: Step = next((s for s in curve["steps"] if s["agents"] == 0), {})
    return f"{zero[key]:,}" if key in zero else "?"


def _answered(step: Step) -> str:
    if step["answered"] == step["agents"] and not step["sweep_errors"]:
        return f"yes ({step['sweep_s']:.2f} s)"
    return f"**{step['answered']:,} of {step['agents']:,}** ({step['sweep_s']:.1f} s)"


def stop_note(curve: dict) -> str:
    """One line on how the run ended: every step done, or where it stopped and which limits it hit."""
    stopped = curve.get("stopped")
    if stopped is None:
        done = [s["agents"] for s in _measured(curve)]
        missing = [n for n in curve["steps_asked"] if n not in done]
        if missing:
            return f"Unfinished: steps {', '.join(map(str, missing))} have no result (the run was cut short)."
        return f"Every step asked ({', '.join(map(str, curve['steps_asked']))} agents) completed."
    return (f"**Stopped in the {stopped['agents']:,} step at {stopped['reached']:,} agents; limits hit: "
            f"{', '.join(stopped['limits_hit'])}.** {stopped['error_code']}: {stopped['error'][:300]}")


def table(curve: dict) -> str:
    """The curve as a markdown table, a column per step."""
    steps = _measured(curve)
    settings = curve["settings"]
    rows: list[tuple[str, list[str]]] = [
        ("deploy + first reply p50 / p99, ms", [f"{s['deploy_p50_ms']:,.1f} / {s['deploy_p99_ms']:,.0f}"
                                                for s in steps]),
        ("worker PSS / USS, median, MiB", [f"{s['worker_pss_mib']:.1f} / {s['worker_uss_mib']:.1f}" for s in steps]),
        ("threads per worker", [f"{s['worker_threads']:g}" for s in steps]),
        ("machine memory used per agent, MiB (total used, GiB)",
         [f"{s['system_used_per_agent_mib']:.1f} ({s['system_used_gib']:.1f})" for s in steps]),
        (f"supervisor RSS, MiB (0 agents: {_at_zero(curve, 'supervisor_rss_mib')})",
         [f"{s['supervisor_rss_mib']:,.1f}" for s in steps]),
        (f"supervisor threads / open fds (0 agents: {_at_zero(curve, 'supervisor_threads')} / "
         f"{_at_zero(curve, 'supervisor_fds')})", [f"{s['supervisor_threads']:,} / {s['supervisor_fds']:,}"
                                                   for s in steps]),
        (f"tasks on the machine (`pid_max` {curve['machine']['pid_max']:,})", [f"{s['machine_tasks']:,}"
                                                                             for s in steps]),
        (f"idle CPU over {settings['idle_window_s']:g} s, % of one core: workers / supervisor",
         [f"{s['idle_cpu_workers_pct']:.1f} / {s['idle_cpu_supervisor_pct']:.1f}" for s in steps]),
        ("every agent answered one message (time for all)", [_answered(s) for s in steps]),
        ("step wall time, s", [f"{s['step_s']:,.1f}" for s in steps]),
        ("load average (1 min) after the step", [f"{s['load_average'][0]:.1f}" for s in steps]),
    ]
    header = "| agents | " + " | ".join(f"{s['agents']:,}" for s in steps) + " |"
    lines = [header, "|---|" + "---:|" * len(steps)]
    lines += [f"| {label} | " + " | ".join(cells) + " |" for label, cells in rows]
    machine = curve["machine"]
    lines += ["", f"Run of {curve['date']}: {machine['cpus']} cores, {machine['memory_gib']:g} GiB; each agent "
              f"deployed with a {settings['agent_memory_limit_bytes'] / (1 << 20):g} MiB memory limit. "
              f"{stop_note(curve)}"]
    return "\n".join(lines)


def with_table(readme: str, block: str) -> str:
    """`readme` with the text between the markers replaced by `block`."""
    head, begin, rest = readme.partition(BEGIN)
    _, end, tail = rest.partition(END)
    if not begin or not end:
        raise ValueError(f"the README has no {BEGIN} ... {END} pair of lines")
    return f"{head}{BEGIN}\n{block}\n{END}{tail}"


def draw(curve: dict, png: Path) -> None:
    """Six small panels against the number of agents; where the run
    stopped, a red line marks the agents reached."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    steps = _measured(curve)
    agents = [s["agents"] for s in steps]
    everything = curve["steps"]  # with the supervisor alone, at 0 agents
    all_agents = [s["agents"] for s in everything]

    fig, axes = plt.subplots(2, 3, figsize=(14, 7.5))
    (memory, cpu, deploy), (sup_rss, sup_counts, tasks) = axes

    memory.plot(agents, [s["worker_pss_mib"] for s in steps], "o-", label="PSS")
    memory.plot(agents, [s["worker_uss_mib"] for s in steps], "s-", label="USS")
    memory.set(title="memory per idle worker (median)", ylabel="MiB")
    memory.set_ylim(bottom=0)

    cpu.plot(agents, [s["idle_cpu_workers_pct"] + s["idle_cpu_supervisor_pct"] for s in steps], "o-",
             label="all")
    cpu.plot(agents, [s["idle_cpu_workers_pct"] for s in steps], "s-", label="workers")
    cpu.plot(agents, [s["idle_cpu_supervisor_pct"] for s in steps], "^-", label="supervisor")
    cpu.set(title=f"idle CPU over {curve['settings']['idle_window_s']:g} s", ylabel="% of one core")
    cpu.set_ylim(bottom=0)

    deploy.plot(agents, [s["deploy_p50_ms"] for s in steps], "o-", label="p50")
    deploy.plot(agents, [s["deploy_p99_ms"] for s in steps], "s-", label="p99")
    deploy.set(title="deploy + first reply (the step's deploys)", ylabel="ms")
    deploy.set_ylim(bottom=0)

    sup_rss.plot(all_agents, [s["supervisor_rss_mib"] for s in everything], "o-", label="RSS")
    sup_rss.set(title="supervisor memory", ylabel="MiB")
    sup_rss.set_ylim(bottom=0)

    sup_counts.plot(all_agents, [s["supervisor_threads"] for s in everything], "o-", label="threads")
    sup_counts.plot(all_agents, [s["supervisor_fds"] for s in everything], "s-", label="open fds")
    sup_counts.set(title="supervisor threads and descriptors", ylabel="count")
    sup_counts.set_ylim(bottom=0)

    pid_max = curve["machine"]["pid_max"]
    tasks.plot(all_agents, [s["machine_tasks"] for s in everything], "o-", label="tasks (processes + threads)")
    tasks.axhline(pid_max, color="grey", linestyle="--", label=f"kernel.pid_max ({pid_max:,})")
    tasks.set(title="tasks on the machine", ylabel="count")
    tasks.set_ylim(bottom=0)

    stopped = curve.get("stopped")
    for ax in axes.flat:
        if stopped is not None:
            ax.axvline(stopped["reached"], color="red", linestyle=":", label="stopped")
        ax.set_xlabel("idle echo agents")
        ax.set_xlim(left=0)
        ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,.10g}"))
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    machine = curve["machine"]
    title = (f"Caxton scale curve: idle echo agents, forked workers ({curve['date'][:10]}, "
             f"{machine['cpus']} cores, {machine['memory_gib']:g} GiB)")
    if stopped is not None:
        title += (f"\nstopped at {stopped['reached']:,} agents in the {stopped['agents']:,} step; "
                  f"limits hit: {', '.join(stopped['limits_hit'])}")
    fig.suptitle(title)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--curve", type=Path, default=CURVE_PATH, help="the curve bench_scale.py wrote")
    parser.add_argument("--png", type=Path, default=PNG_PATH, help="where to write the plot")
    parser.add_argument("--readme", type=Path, default=README_PATH, help="the README whose table to replace")
    parser.add_argument("--print", action="store_true", help="print the table; write neither PNG nor README")
    args = parser.parse_args(argv)
    try:
        curve = json.loads(args.curve.read_text())
    except (OSError, ValueError) as exc:
        print(f"cannot read the scale curve {args.curve}: {exc} (run bench/bench_scale.py first)", file=sys.stderr)
        return 1
    if not _measured(curve):
        print(f"{args.curve} has no measured step yet. {stop_note(curve)}", file=sys.stderr)
        return 1
    block = table(curve)
    print(block)
    if args.print:
        return 0
    try:
        readme = with_table(args.readme.read_text(), block)
    except (OSError, ValueError) as exc:
        print(f"{args.readme}: {exc}", file=sys.stderr)
        return 1
    draw(curve, args.png)
    args.readme.write_text(readme)
    print(f"wrote {args.png} and the table in {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
