"""Which of gRPC's I/O engines Caxton's own processes run on, and why.

grpcio 1.85 runs channels and servers on its EventEngine by default. There a
completion crosses three threads: an engine thread reads the socket, the
completion-queue thread takes the event, and only then does the thread that
waits for it (the API event loop, a worker's RPC thread) run. grpc's older
iomgr engine polls the socket from the thread waiting on the completion
queue: one crossing fewer each way. On the worker link (a grpc.aio stream
in the supervisor, a sync server in the worker, 32 messages of 100 bytes a
batch over a Unix socket), measured side by side on a 2-core host:

- the supervisor's CPU per exchange: 60-64 µs on iomgr, 104-111 µs on the
  EventEngine (9 context switches per exchange against 4.4);
- the worker's: 58 µs against 106;
- an exchange's wall time: 92 µs against 145-164.

The choice is grpc's documented `GRPC_EXPERIMENTS` variable, which grpc
reads once, when it is first imported: the supervisor sets it for itself
before anything imports grpc (`select`) and hands it to the fork server and
workers in their environment (`environment`). pyproject.toml pins grpcio
to the minor version it was measured on, and it is set only under that
version: under another, grpc's default stays, rather than every process
logging an experiment grpc no longer knows. An operator's own `GRPC_EXPERIMENTS` is kept, and an experiment it
names, on or off, stays as the operator set it.

No I/O here but reading the environment and grpcio's installed version
(without importing grpc).
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import sys
from collections.abc import Mapping

VARIABLE = "GRPC_EXPERIMENTS"
# Off: client channels and servers on the EventEngine (back on iomgr).
EXPERIMENTS = ("-event_engine_client", "-event_engine_listener")
TESTED_GRPCIO = "1.85"


def experiments(current: str, grpcio_version: str) -> str | None:
    """The `GRPC_EXPERIMENTS` value to run with, given the one already set
    (`current`, "" if none) and grpcio's version; None to leave it as it is
    (another grpcio than the one measured, or nothing to add)."""
    if grpcio_version.split(".")[:2] != TESTED_GRPCIO.split("."):
        return None
    named = [item.strip() for item in current.split(",") if item.strip()]
    taken = {item.lstrip("-") for item in named}
    added = [item for item in EXPERIMENTS if item.lstrip("-") not in taken]
    return ",".join(named + added) if added else None


@functools.cache  # reading the installed metadata takes ~20 ms; it does not change
def _grpcio_version() -> str:
    try:
        return importlib.metadata.version("grpcio")
    except importlib.metadata.PackageNotFoundError:
        return ""


def environment(source: Mapping[str, str]) -> dict[str, str]:
    """`GRPC_EXPERIMENTS` for a child process (the fork server, a worker)
    whose parent environment is `source`: {} where grpc's default stays."""
    current = source.get(VARIABLE, "")
    chosen = experiments(current, _grpcio_version())
    if chosen is not None:
        return {VARIABLE: chosen}
    return {VARIABLE: current} if current else {}


def select() -> bool:
    """Set `GRPC_EXPERIMENTS` for this process, if grpc has not been
    imported yet; False if it has (it has read the variable already, so
    setting it now would only make the environment claim what grpc does
    not do: it is left as it is)."""
    if "grpc" in sys.modules:
        return False
    os.environ.update(environment(os.environ))
    return True
