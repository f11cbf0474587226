"""Assemble and run the supervisor: the composition root, the gRPC server, signals.

Everything the runtime is made of (the state store, the launcher and fork
server, cgroups, the spare pool, the health sweep, the event bus, the memory
budget) is built here and handed in, so the runtime itself can be built in
tests from fakes.

The public API is a grpc.aio server on its own event-loop thread
(api_server.py). Signal handlers only queue the signal (as gunicorn's
arbiter does); the main thread waits on that queue and does the work, so
nothing complicated ever runs inside a signal handler, and the loop keeps
answering (in-flight messages, health) while the main thread drains.
"""

from __future__ import annotations

import functools
import logging
import os
import pwd
import queue
import signal
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from caxton import examples
from caxton.contract import MAX_GRPC_MESSAGE_BYTES
from caxton.v1 import caxton_pb2, caxton_pb2_grpc

from .admin_token import admin_token
from .allocator import return_freed_memory
from .api import AgentLifecycleService
from .api_server import ApiServer, add_port
from .audit import Audit
from .auth import Authorizer, TokenEntry
from .auth_interceptor import AuthInterceptor
from .cgroups import CgroupLimits, Cgroups
from .cluster import Cluster
from .config import Config, ConfigError
from .errors import CaxtonError, NotFound
from .events import EventBus
from .health import HealthMonitor
from .instance import WorkerEnv, launch_instance
from .ksm import host_merges_pages, start_note
from .launcher import Launcher
from .listeners import check_api_listen, restrict_unix_socket, unix_path
from .logs import set_level as set_log_level
from .memory_budget import MemoryBudget
from .messaging import MessagingService
from .metrics import AgentFigures, AgentTraffic, CaxtonCollector, Deployments, MessageTally, MetricsEndpoint
from .notify import Notifier
from .pool import SparePool
from .relay import LocalTransport, Relay
from .request_gate import Gate, RequestGate
from .runtime import Runtime
from .runtime_dir import RuntimeDirectory
from .specs import DeploySpec
from .store import StateStore
from .tls import ServerCertificates
from .uids import UidAllocator

log = logging.getLogger("caxton.supervisor")

SERVICE_NAMES = (
    caxton_pb2.DESCRIPTOR.services_by_name["AgentLifecycle"].full_name,
    caxton_pb2.DESCRIPTOR.services_by_name["Messaging"].full_name,
)

SERVER_OPTIONS = (
    ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_GRPC_MESSAGE_BYTES),
    ("grpc.so_reuseport", 0),
    # No bandwidth-delay probing: it grows every stream's receive window up
    # to megabytes, and gRPC then reads that much of every call arriving,
    # whether or not the server has asked for its request yet: three hundred
    # 1 MiB Sends at once were all in memory before the request gate let the
    # first through. With the default 64 KiB windows, a waiting call costs
    # 64 KiB; on a local network the windows do not limit throughput.
    ("grpc.http2.bdp_probe", 0),
    # Keepalive, so that a client that vanished without closing its
    # connection (host gone, network cut) frees its streams: after 60 s
    # without traffic the server pings, and a client that has not answered
    # within 20 s is dropped. Idle WatchEvents and SendStream streams are the
    # normal case, so pings continue without calls and without data.
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    # Clients may ping to keep their own streams alive (through NATs and
    # proxies), but not more often than every 10 s: a client pinging faster
    # is told so with GOAWAY after the usual two strikes.
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    # A connection with no call for 30 minutes is closed; clients reconnect
    # by themselves when they next call. Connections cost descriptors and
    # buffers; this returns them from clients that only forgot to close.
    ("grpc.max_connection_idle_ms", 30 * 60_000),
)

# Unary requests read from the network at once (request_gate.py): other
# requests four at a time; modules (up to the 64 MiB gRPC limit each) one at
# a time, and one of 1 MiB or more keeps its turn until its call ends, so that
# large modules are validated one after the other. A module call that has
# waited MODULE_WAIT_S for its turn is refused.
MODULE_CALLS = ("DeployAgent", "HotReloadAgent", "ValidateModule")
MODULE_READS = 1
LARGE_MODULE_BYTES = 1 << 20
MODULE_WAIT_S = 30.0
OTHER_READS = 4

# Threads for lifecycle calls, which block for seconds (starting workers,
# draining, validating): this many run at once, the rest queue (their
# modules charged to the memory budget meanwhile).
LIFECYCLE_THREADS = 8
# Threads for status queries, apart, so that they never wait behind deploys.
QUERY_THREADS = 2


def _worker_uids(uid_range: tuple[int, int] | None) -> UidAllocator | None:
    """A uid of its own for each worker, from `uid_range`: only when we are
    root (only root can switch to them) and the range is not turned off."""
    if uid_range is None or os.geteuid() != 0:
        return None
    return UidAllocator(*uid_range)


def _worker_identity(user: str) -> tuple[int, int, str]:
    """(uid, gid, name) all workers switch to when they get no uid of their
    own: only when we are root and a user is configured; (-1, -1, "") means
    workers keep our identity."""
    if not user or os.geteuid() != 0:
        return -1, -1, ""
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise ValueError(f"sandbox.user: no user named {user!r} on this host") from None
    return entry.pw_uid, entry.pw_gid, user


def _request_gate() -> RequestGate:
    """A gate for each unary call of the public services (health and
    reflection are never held up)."""
    modules = Gate(MODULE_READS, hold_from=LARGE_MODULE_BYTES, wait_s=MODULE_WAIT_S,
                   busy=f"large modules are being validated one at a time, and this call waited {MODULE_WAIT_S:.0f}s "
                        "for its turn: try again later")
    others = Gate(OTHER_READS)
    gates = {}
    for name in ("AgentLifecycle", "Messaging"):
        service = caxton_pb2.DESCRIPTOR.services_by_name[name]
        for method in service.methods:
            if not method.client_streaming:
                gates[f"/{service.full_name}/{method.name}"] = modules if method.name in MODULE_CALLS else others
    return RequestGate(gates)


class Supervisor:
    def __init__(self, config: Config, *, deploy_examples: bool = False, python: str = sys.executable):
        # First, so that RSS follows what the memory budget counts.
        return_freed_memory()
        # Before anything is built: plaintext on a network address is refused.
        check_api_listen(config.listen, tls=config.tls.enabled)
        # Absolute from here on: workers start in "/" (a clean start), where
        # a path relative to the supervisor's working directory means nothing.
        config = replace(config, state_dir=config.state_dir.resolve(),
                         runtime_dir=os.path.abspath(config.runtime_dir) if config.runtime_dir else "")
        self.config = config
        self._deploy_examples_at_start = deploy_examples
        uids = _worker_uids(config.sandbox.uid_range)
        identity = _worker_identity(config.sandbox.user) if uids is None else (-1, -1, "")
        self.store = StateStore(config.state_dir)
        self.tokens = self._tokens()
        self._runtime_dir = RuntimeDirectory.open(config.runtime_dir)
        self.runtime_dir = self._runtime_dir.path
        try:
            self._build(config, python, uids, identity)
        except BaseException:
            # A failed start ends the process (cli.py): its fork server and
            # workers die with it, but the directory would stay behind.
            self._runtime_dir.close()
            raise

    def _build(self, config: Config, python: str, uids: UidAllocator | None,
               identity: tuple[int, int, str]) -> None:
        """The parts, from the launcher to the listeners (see __init__)."""
        self.launcher = Launcher(self.runtime_dir, mode=config.worker_start, python=python, uids=uids,
                                 gid=identity[1], merge_pages=config.sandbox.merge_pages)
        self.cgroups = Cgroups(enabled=config.sandbox.cgroups == "auto")
        self.pool = SparePool(self.launcher, config.worker_pool, config.worker_start_timeout_s,
                              cgroups=self.cgroups if self.cgroups.active else None,
                              cgroup_limits=CgroupLimits(0, config.sandbox.cpu_cores, config.sandbox.pids_max))
        self.logbook = EventBus(history=config.log_lines, per_agent=True)
        self.traffic = AgentTraffic()
        # Bound late: the router it delivers through belongs to the runtime,
        # which needs the worker environment that carries the relay.
        self.relay = Relay(LocalTransport(lambda *call: self.runtime.router.submit(*call)), config.messaging,
                           lambda: self.runtime.router.new_id(), self.traffic)
        env = WorkerEnv(config, self.launcher, self.store, self.cgroups, self.pool, *identity, logbook=self.logbook,
                        relay=self.relay)
        self.events = EventBus()
        self.runtime = Runtime(config, self.store, functools.partial(launch_instance, env), self.events)
        self.health_monitor = HealthMonitor(
            self.runtime.live_instances,
            interval_s=config.health_interval_s,
            timeout_s=config.health_timeout_s,
            failures=config.health_failures,
            park_after_s=config.park_after_s,
        )
        self.budget = MemoryBudget(config.memory_budget, config.queue_bytes)
        self.runtime.router.budget = self.budget
        self.tally = MessageTally(self.store.saved_counters()[1])
        self.runtime.router.tally = self.tally
        self.deployments = Deployments()
        self.runtime.deployments = self.deployments
        self.metrics: MetricsEndpoint | None = None
        self._lifecycle_pool = ThreadPoolExecutor(LIFECYCLE_THREADS, thread_name_prefix="lifecycle")
        self._query_pool = ThreadPoolExecutor(QUERY_THREADS, thread_name_prefix="query")
        self.health = health.aio.HealthServicer()
        self.authorizer = Authorizer(self.tokens)
        self.audit = Audit(self.events)
        # One host of several over NATS ([cluster]); None: standalone, no NATS.
        self.cluster = Cluster(config.cluster, self.runtime) if config.cluster is not None else None
        self.api = self._serve_api([AuthInterceptor(self.authorizer, self.audit)])
        # Messages that arrive on the API loop go to their workers from there.
        env.dispatch.serve_loop(self.api.loop, self.api.thread_id)
        self.pool.connect_on(self.api.loop)
        self.certificates = (ServerCertificates(config.tls) if config.tls.enabled and unix_path(config.listen) is None
                             else None)
        self.port = self.api.listen(config.listen, self.certificates.credentials if self.certificates else None)
        if self.port == 0:
            raise OSError(f"cannot listen on {config.listen}")
        # Orchestrators' probes speak neither TLS nor tokens: health only, in
        # plaintext, on a listener of its own, served by the API's event loop
        # (which the health servicer belongs to).
        self.health_server: grpc.aio.Server | None = None
        self.health_port = 0
        if config.health_listen:
            self.health_server = self.api.call(self.api.create_server(SERVER_OPTIONS))
            health_pb2_grpc.add_HealthServicer_to_server(self.health, self.health_server)
            self.health_port = add_port(self.health_server, config.health_listen)
            if self.health_port == 0:
                raise OSError(f"cannot listen on {config.health_listen} (health_listen)")

    def _tokens(self) -> tuple[TokenEntry, ...]:
        """The configured tokens; none configured: the admin token in the
        state directory, created at first start (never logged)."""
        if self.config.auth.tokens:
            return self.config.auth.tokens
        entry, created = admin_token(self.config.state_dir)
        if created:
            log.warning("created an admin token in %s (readable by its owner only)",
                        self.config.state_dir / "admin.token")
        return (entry,)

    def _serve_api(self, interceptors: Sequence[grpc.aio.ServerInterceptor] = ()) -> ApiServer:
        """The public gRPC server with every service on it, not yet listening.
        `interceptors` run first (in order), then the request gate."""
        api = ApiServer(SERVER_OPTIONS, [*interceptors, _request_gate()])
        caxton_pb2_grpc.add_AgentLifecycleServicer_to_server(
            AgentLifecycleService(self.runtime, self.budget, self._lifecycle_pool, self._query_pool,
                                  self.authorizer, self.audit, self.deployments, self.logbook,
                                  self.relay.traces, self.cluster), api.server)
        caxton_pb2_grpc.add_MessagingServicer_to_server(MessagingService(self.runtime.router, self.authorizer),
                                                        api.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, api.server)
        reflection.enable_server_reflection(SERVICE_NAMES + (health.SERVICE_NAME, reflection.SERVICE_NAME), api.server)
        return api

    def start(self) -> None:
        self.runtime.restore()
        self.health_monitor.start()
        if self._deploy_examples_at_start:
            self._deploy_examples()
        if self.cluster is not None:
            self.cluster.start(status.name for status in self.runtime.list())
        # SERVING from the first call on (set before the server starts), and
        # NOT_SERVING for as long as no worker can be started, so that a load
        # balancer or orchestrator sends its traffic elsewhere meanwhile.
        self.api.call(self._set_health(self.launcher.can_start_workers))
        self.api.start()
        restrict_unix_socket(self.config.listen)
        if self.health_server is not None:
            self.api.call(self.health_server.start())
        if self.config.metrics_listen:
            self.metrics = MetricsEndpoint(self.config.metrics_listen,
                                           CaxtonCollector(self.tally, self.deployments, self._agent_figures,
                                                           self.traffic))
            host = self.config.metrics_listen.rpartition(":")[0] or "127.0.0.1"
            log.info("metrics on http://%s:%d/metrics", host, self.metrics.port)
        self.launcher.on_capacity_change(self._capacity_changed)
        log.info("%s", start_note(self.config.sandbox.merge_pages, self.config.worker_start, host_merges_pages()))
        log.info("serving on %s (state in %s, worker sockets in %s)", self.address, self.config.state_dir,
                 self.runtime_dir)

    @property
    def address(self) -> str:
        """Where the API listens, with the port it got for `HOST:0`."""
        listen = self.config.listen
        return listen if unix_path(listen) is not None else f"{listen.rsplit(':', 1)[0]}:{self.port}"

    def _agent_figures(self) -> list[AgentFigures]:
        """Every agent's figures for a scrape (worker figures asked at once)."""
        figures = []
        for status in self.runtime.list():
            try:
                depth = len(self.runtime.get(status.name).mailbox)
            except NotFound:
                continue  # removed meanwhile
            figures.append(AgentFigures(
                name=status.name, state=status.state.value, breaker=status.breaker.state.value,
                restarts=status.restarts, resets=sum(i.resets for i in status.instances),
                memory_bytes=status.memory_bytes, mailbox_depth=depth,
                worker_rss=tuple((i.pid, i.rss_bytes) for i in status.instances),
            ))
        return figures

    def healthy(self, timeout: float) -> bool:
        """The supervisor's own machinery answers: the launcher thread and
        the state store (the API loop answers health checks itself)."""
        return self.launcher.responsive(timeout) and self.store.responsive(timeout)

    def summary(self) -> str:
        """One line for `systemctl status`."""
        states = self.runtime.states()
        return (f"{states.count('running')} of {len(states)} agents running, {states.count('failed')} failed; "
                f"API on {self.address}")

    def reload_config(self, config: Config) -> list[str]:
        """SIGHUP: the accepted tokens change at once (a revoked token is
        refused from its next call), and so do default limits, policies and
        caps for new requests (Runtime.reconfigure), the log level, and the
        TLS certificates for new connections (open ones keep theirs); running
        agents are not touched. Returns what was not applied, each with why
        (certificate files that cannot be used: the ones in force stay), so
        that a broken certificate file never holds up a token's revocation."""
        not_applied: list[str] = []
        self.authorizer.replace(config.auth.tokens or self.tokens)
        self.runtime.reconfigure(config)
        if config.log_level:
            set_log_level(config.log_level)
        tls = self.config.tls
        if self.certificates is not None:
            try:
                self.certificates.replace(config.tls)
                tls = config.tls
            except ValueError as exc:
                not_applied.append(f"TLS certificates ({exc}; the ones in force stay)")
        elif config.tls.enabled and unix_path(self.config.listen) is None:
            not_applied.append("TLS (turning TLS on takes a restart)")
        if config.cluster != self.config.cluster:
            not_applied.append("[cluster] (joining, leaving or changing the cluster takes a restart)")
        self.config = replace(self.runtime.config, auth=config.auth, tls=tls, cluster=self.config.cluster,
                              log_level=config.log_level or self.config.log_level)
        return not_applied

    def _capacity_changed(self, up: bool) -> None:
        if not up:
            log.error("workers cannot be started: reporting NOT_SERVING until they can")
        self.api.call(self._set_health(up))

    async def _set_health(self, up: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if up else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("",) + SERVICE_NAMES:
            await self.health.set(name, status)

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
        """Refuse new calls, drain every agent, end every worker. The API
        keeps serving meanwhile, so messages in flight get their answers."""
        self.api.call(self.health.enter_graceful_shutdown())
        self.health_monitor.stop()
        self.runtime.shutdown(self.config.shutdown_timeout_s)
        if self.cluster is not None:
            self.cluster.stop()
        self.runtime.save_counters()
        self.events.close()
        self.pool.close()
        self.launcher.close()
        self.cgroups.close()
        self.store.close()
        self._runtime_dir.close()
        if self.metrics is not None:
            self.metrics.close()
        if self.health_server is not None:
            self.api.call(self.health_server.stop(0.5))
        self.api.stop(grace=2.0)
        self._lifecycle_pool.shutdown(wait=False, cancel_futures=True)
        self._query_pool.shutdown(wait=False, cancel_futures=True)


def run(supervisor: Supervisor, reload: Callable[[], Config] | None = None) -> int:
    """Serve until SIGTERM or SIGINT; exit status 0 after a clean drain.

    Under systemd it says READY=1 once agents are restored and the API
    serves, pings WATCHDOG=1 from this loop only while the supervisor's own
    threads answer (a stuck launcher or store stops the pings, and systemd
    restarts the service), reports RELOADING=1/READY=1 around a SIGHUP
    config reload (`reload()` reads the config again) and STOPPING=1 when it
    drains."""
    notifier = Notifier()
    signals: queue.SimpleQueue[int] = queue.SimpleQueue()
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, lambda signum, frame: signals.put(signum))
    supervisor.start()
    print(f"caxton-supervisor listening on {supervisor.address}", flush=True)
    notifier.ready(supervisor.summary())
    tick = notifier.watchdog_interval_s or STATUS_INTERVAL_S
    save_due = time.monotonic() + SAVE_COUNTERS_EVERY_S
    while True:
        try:
            received = signals.get(timeout=tick)
        except queue.Empty:
            if supervisor.healthy(timeout=min(tick, HEALTHY_WITHIN_S)):
                summary = supervisor.summary()
                # Before the ping: every WATCHDOG=1 systemd received has its line by then.
                log.debug("the launcher thread and the state store answered: %s", summary)
                notifier.watchdog()
                notifier.status(summary)
                if time.monotonic() >= save_due:
                    supervisor.runtime.save_counters()
                    save_due = time.monotonic() + SAVE_COUNTERS_EVERY_S
            else:
                log.error("the launcher thread or the state store did not answer: withholding the watchdog ping")
            continue
        if received == signal.SIGHUP:
            notifier.reloading()
            _reload(supervisor, reload)
            notifier.ready(supervisor.summary())
            continue
        break
    log.info("received %s: draining", signal.Signals(received).name)
    notifier.stopping()
    supervisor.stop()
    log.info("stopped")
    return 0


# How often STATUS= is refreshed without a watchdog, and how long the
# supervisor's own threads may take to answer the watchdog's question.
STATUS_INTERVAL_S = 10.0
# How often counters are saved (and always at shutdown): a crash loses at most this much.
SAVE_COUNTERS_EVERY_S = 30.0
HEALTHY_WITHIN_S = 5.0


def _reload(supervisor: Supervisor, reload: Callable[[], Config] | None) -> None:
    if reload is None:
        log.warning("SIGHUP: no config file to read again")
        return
    try:
        not_applied = supervisor.reload_config(reload())
    except (ConfigError, ValueError) as exc:
        log.error("SIGHUP: the config was not reloaded, the old one stays in force: %s", exc)
        return
    if not_applied:
        log.error("SIGHUP: config reloaded, except %s", "; ".join(not_applied))
    else:
        log.info("SIGHUP: config reloaded (tokens, default limits, policies, caps, default restart policy, "
                 "log level, TLS certificates)")
