"""Fixtures for the benchmarks, their collection, and the summary table.

Benchmark files are named `bench_*.py` and collected by the hook below, so
`pytest bench` finds them while a plain `pytest` (testpaths = tests) never
does: the test suite stays fast. No pytest.ini here on purpose: one in bench/
would become the rootdir config and drop pyproject's settings (pythonpath).

Every process a benchmark starts (supervisors, baseline servers) is owned by a
fixture whose teardown ends it with a deadline, even when the benchmark fails;
the session ends by checking that no worker process outlived its supervisor.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import wasmtime

from tests.harness import SupervisorProcess, leftover_workers, module, wait_until

from . import report
from .support import BaselineServer, running_supervisor, start_baseline

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Module | None:
    # Files named on the command line are collected by pytest itself already.
    if file_path.suffix == ".py" and file_path.name.startswith("bench_") and not parent.session.isinitpath(file_path):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


def pytest_benchmark_generate_commit_info(config: pytest.Config) -> dict:
    """pytest-benchmark would run git to describe the commit; results here
    are read as ratios within one run, so no commit info is needed."""
    return {}


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    """Print the measurement/baseline/ratio table and save it as JSON."""
    lines = report.table_lines()
    if len(lines) <= 2:  # header only: nothing of ours ran
        return
    terminalreporter.write_sep("=", "Caxton benchmarks: each figure beside its baseline from the same run")
    for line in lines:
        terminalreporter.write_line(line)
    summary = RESULTS_DIR / "summary.json"
    report.write_json(summary)
    terminalreporter.write_line(
        f"ratio = value / baseline; targets are printed, never checked. {report.load_text()}. Saved to {summary}"
    )


# ------------------------------------------------------------ modules


@pytest.fixture(scope="session")
def echo_wasm() -> bytes:
    """examples/agents/echo.wat as a binary module (what a client deploys)."""
    return bytes(wasmtime.wat2wasm(module("echo").decode()))


# ------------------------------------------------------------ processes


@pytest.fixture(scope="session")
def supervisor(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SupervisorProcess]:
    """One real supervisor for the round-trip, throughput and deploy
    benchmarks; each deploys agents under names of its own and removes them."""
    with running_supervisor(tmp_path_factory.mktemp("bench") / "state") as sup:
        yield sup


@pytest.fixture(scope="session")
def one_hop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BaselineServer]:
    """Bare echo server on TCP loopback: the floor for one gRPC round trip."""
    logs = tmp_path_factory.mktemp("baselines")
    server = start_baseline("echo", "127.0.0.1:0", log_path=logs / "one_hop.log")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def two_hop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[BaselineServer, BaselineServer]]:
    """Forwarder on TCP (64 threads, like the supervisor) in front of an echo
    server on a Unix socket (2 threads, like a worker). Yields
    (forwarder, echo); clients call the forwarder."""
    logs = tmp_path_factory.mktemp("baselines")
    # Unix socket paths must stay under 108 bytes: keep them short, in /tmp.
    socket_dir = Path(tempfile.mkdtemp(prefix="caxton-bench-", dir="/tmp"))
    servers: list[BaselineServer] = []
    try:
        upstream = start_baseline("echo", f"unix:{socket_dir}/echo.sock", threads=2, log_path=logs / "upstream.log")
        servers.append(upstream)
        forwarder = start_baseline("forward", "127.0.0.1:0", upstream=upstream.address, log_path=logs / "forward.log")
        servers.append(forwarder)
        yield forwarder, upstream
    finally:
        for server in reversed(servers):
            server.stop()
        shutil.rmtree(socket_dir, ignore_errors=True)


def _our_baselines() -> list[int]:
    """Baseline servers started by this process that are still alive."""
    pids = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if "bench.baselines" in cmdline and "--parent-pid" in cmdline:
            with contextlib.suppress(ValueError, IndexError, psutil.Error):
                parent = int(cmdline[cmdline.index("--parent-pid") + 1])
                if parent == os.getpid() and proc.status() != psutil.STATUS_ZOMBIE:
                    pids.append(proc.pid)
    return pids


@pytest.fixture(scope="session", autouse=True)
def no_orphans() -> Iterator[None]:
    """After the run, no worker, fork server or baseline server started here
    may live. Also notes the load average before and after: other work on a
    shared machine shows up in every figure."""
    report.LOAD["start"] = os.getloadavg()
    yield
    report.LOAD["end"] = os.getloadavg()
    wait_until(lambda: not leftover_workers(), 15, "every worker process to exit")
    wait_until(lambda: not _our_baselines(), 15, "every baseline server to exit")
