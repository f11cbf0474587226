"""Assemble and run the supervisor: the composition root, the gRPC server, signals.

Everything the runtime is made of (the state store, the launcher and fork
server, cgroups, the spare pool, the health sweep, the event bus) is built
here and handed in, so the runtime itself can be built in tests from fakes.

Signal handlers only queue the signal (as gunicorn's arbiter does); the main
thread waits on that queue and does the work, so nothing complicated ever
runs inside a signal handler.
"""

from __future__ import annotations

import functools
import logging
import os
import pwd
import queue
import shutil
import signal
import sys
import tempfile
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from caxton import examples
from caxton.contract import MAX_GRPC_MESSAGE_BYTES
from caxton.v1 import caxton_pb2, caxton_pb2_grpc

from .api import AgentLifecycleService, MessagingService
from .cgroups import Cgroups
from .config import Config
from .errors import CaxtonError, NotFound
from .events import EventBus
from .health import HealthMonitor
from .instance import WorkerEnv, launch_instance
from .launcher import Launcher
from .pool import SparePool
from .runtime import Runtime
from .specs import DeploySpec
from .store import StateStore

log = logging.getLogger("caxton.supervisor")

SERVICE_NAMES = (
    caxton_pb2.DESCRIPTOR.services_by_name["AgentLifecycle"].full_name,
    caxton_pb2.DESCRIPTOR.services_by_name["Messaging"].full_name,
)


def _worker_identity(user: str) -> tuple[int, int, str]:
    """(uid, gid, name) workers switch to: only when we are root and a user
    is configured; (-1, -1, "") means workers keep our identity."""
    if not user or os.geteuid() != 0:
        return -1, -1, ""
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise ValueError(f"sandbox.user: no user named {user!r} on this host") from None
    return entry.pw_uid, entry.pw_gid, user


class Supervisor:
    def __init__(self, config: Config, *, deploy_examples: bool = False, python: str = sys.executable):
        self.config = config
        self._deploy_examples_at_start = deploy_examples
        identity = _worker_identity(config.sandbox.user)
        self.store = StateStore(config.state_dir)
        self._own_runtime_dir = not config.runtime_dir
        self.runtime_dir = config.runtime_dir or tempfile.mkdtemp(prefix="caxton-", dir="/tmp")
        os.makedirs(self.runtime_dir, mode=0o700, exist_ok=True)
        os.chmod(self.runtime_dir, 0o700)
        self.launcher = Launcher(self.runtime_dir, mode=config.worker_start, python=python)
        self.cgroups = Cgroups(enabled=config.sandbox.cgroups == "auto")
        self.pool = SparePool(self.launcher, config.worker_pool, config.worker_start_timeout_s)
        env = WorkerEnv(config, self.launcher, self.store, self.cgroups, self.pool, *identity)
        self.events = EventBus()
        self.runtime = Runtime(config, self.store, functools.partial(launch_instance, env), self.events)
        self.health_monitor = HealthMonitor(
            self.runtime.live_instances,
            interval_s=config.health_interval_s,
            timeout_s=config.health_timeout_s,
            failures=config.health_failures,
        )
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=64, thread_name_prefix="api"),
            options=[
                ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_GRPC_MESSAGE_BYTES),
                ("grpc.so_reuseport", 0),
            ],
        )
        caxton_pb2_grpc.add_AgentLifecycleServicer_to_server(AgentLifecycleService(self.runtime), self.server)
        caxton_pb2_grpc.add_MessagingServicer_to_server(MessagingService(self.runtime.router), self.server)
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            SERVICE_NAMES + (health.SERVICE_NAME, reflection.SERVICE_NAME), self.server
        )
        self.port = self.server.add_insecure_port(config.listen)
        if self.port == 0:
            raise OSError(f"cannot listen on {config.listen}")

    def start(self) -> None:
        self.runtime.restore()
        self.health_monitor.start()
        if self._deploy_examples_at_start:
            self._deploy_examples()
        self.server.start()
        # SERVING at once (the callback first reports the current value), and
        # NOT_SERVING for as long as no worker can be started, so that a load
        # balancer or orchestrator sends its traffic elsewhere meanwhile.
        self.launcher.on_capacity_change(self._capacity_changed)
        log.info("serving on %s (state in %s)",
                 self.config.listen.rsplit(":", 1)[0] + f":{self.port}", self.config.state_dir)

    def _capacity_changed(self, up: bool) -> None:
        if not up:
            log.error("workers cannot be started: reporting NOT_SERVING until they can")
        status = health_pb2.HealthCheckResponse.SERVING if up else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("",) + SERVICE_NAMES:
            self.health.set(name, status)

    def _deploy_examples(self) -> None:
        """Deploy each example agent (package data) as agent NAME unless an
        agent of that name exists already (so restarts keep their state)."""
        for path in examples.agents():
            name = path.name.removesuffix(".wat")
            try:
                self.runtime.get(name)
                continue
            except NotFound:
                pass
            try:
                self.runtime.deploy(DeploySpec(name=name, module=path.read_bytes(), label="example"))
            except CaxtonError as exc:
                log.error("could not deploy example %s: %s", path.name, exc.message)

    def stop(self) -> None:
        """Refuse new calls, drain every agent, end every worker."""
        self.health.enter_graceful_shutdown()
        self.health_monitor.stop()
        self.runtime.shutdown(self.config.shutdown_timeout_s)
        self.events.close()
        self.pool.close()
        self.launcher.close()
        self.cgroups.close()
        self.store.close()
        if self._own_runtime_dir:
            shutil.rmtree(self.runtime_dir, ignore_errors=True)
        self.server.stop(grace=2.0).wait()


def run(supervisor: Supervisor) -> int:
    """Serve until SIGTERM or SIGINT; exit status 0 after a clean drain."""
    signals: queue.SimpleQueue[int] = queue.SimpleQueue()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda signum, frame: signals.put(signum))
    supervisor.start()
    print(f"caxton-supervisor listening on port {supervisor.port}", flush=True)
    received = signals.get()
    log.info("received %s: draining", signal.Signals(received).name)
    supervisor.stop()
    log.info("stopped")
    return 0
