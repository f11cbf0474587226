"""Assemble and run the supervisor: runtime, gRPC server, signals.

Signal handlers only queue the signal (as gunicorn's arbiter does); the main
thread waits on that queue and does the work, so nothing complicated ever
runs inside a signal handler.
"""

from __future__ import annotations

import logging
import queue
import signal
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from caxton import examples
from caxton.contract import MAX_GRPC_MESSAGE_BYTES
from caxton.v1 import caxton_pb2, caxton_pb2_grpc

from .api import AgentLifecycleService, MessagingService
from .config import Config
from .errors import CaxtonError, NotFound
from .runtime import Runtime

log = logging.getLogger("caxton.supervisor")

SERVICE_NAMES = (
    caxton_pb2.DESCRIPTOR.services_by_name["AgentLifecycle"].full_name,
    caxton_pb2.DESCRIPTOR.services_by_name["Messaging"].full_name,
)


class Supervisor:
    def __init__(self, config: Config, *, deploy_examples: bool = False):
        self.config = config
        self._deploy_examples_at_start = deploy_examples
        self.runtime = Runtime(config)
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=64, thread_name_prefix="api"),
            options=[
                ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_GRPC_MESSAGE_BYTES),
                ("grpc.so_reuseport", 0),
            ],
        )
        caxton_pb2_grpc.add_AgentLifecycleServicer_to_server(AgentLifecycleService(self.runtime), self.server)
        caxton_pb2_grpc.add_MessagingServicer_to_server(MessagingService(self.runtime), self.server)
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
        if self._deploy_examples_at_start:
            self._deploy_examples()
        self.server.start()
        for name in ("",) + SERVICE_NAMES:
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("serving on %s (state in %s)", self.config.listen.rsplit(":", 1)[0] + f":{self.port}", self.config.state_dir)

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
                self.runtime.deploy(name, path.read_bytes(), caxton_pb2.ResourceLimits(), "", "example")
            except CaxtonError as exc:
                log.error("could not deploy example %s: %s", path.name, exc.message)

    def stop(self) -> None:
        """Refuse new calls, drain every agent, end every worker."""
        self.health.enter_graceful_shutdown()
        self.runtime.shutdown(self.config.shutdown_timeout_s)
        self.server.stop(grace=2.0).wait()


def run(supervisor: Supervisor) -> int:
    """Serve until SIGTERM or SIGINT; exit status 0 after a clean drain."""
    signals: queue.SimpleQueue[int] = queue.SimpleQueue()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda signum, frame: signals.put(signum))
    supervisor.start()
    print(f"caxton-supervisor listening on port {supervisor.port}", flush=True)
    signum = signals.get()
    log.info("received %s: draining", signal.Signals(signum).name)
    supervisor.stop()
    log.info("stopped")
    return 0
