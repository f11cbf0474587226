"""Run a real supervisor process for tests and benchmarks, and clean up after it.

Everything here waits with a deadline and polls a condition; nothing sleeps in
place of synchronisation. Every process started is ended, even when a test
fails, and `leftover_workers()` finds any worker that outlived its supervisor.
"""

from __future__ import annotations

import os
import random
import re
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple, Self, TypeVar

import grpc
import psutil

from caxton.client.connection import connect
from caxton.contract import ADMIN_TOKEN_FILE
from caxton.v1 import caxton_pb2, caxton_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
AGENTS = ROOT / "tests" / "agents"
EXAMPLES = ROOT / "examples" / "agents"

T = TypeVar("T")

# Supervisors started in this process, to look for leftover workers later.
_started_pids: set[int] = set()


def wait_until(condition: Callable[[], T], timeout: float, what: str, interval: float = 0.02) -> T:
    """Poll `condition` until it returns something truthy; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(interval)


def module(name: str) -> bytes:
    """A test agent (tests/agents) or example agent (examples/agents) as WAT bytes."""
    for directory in (AGENTS, EXAMPLES):
        path = directory / f"{name}.wat"
        if path.exists():
            return path.read_bytes()
    raise FileNotFoundError(name)


def alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def worker_pids_of(supervisor_pid: int, *, include_fork_server: bool = False,
                   include_spares: bool = False) -> list[int]:
    """Worker processes serving agents (and, if asked, the fork server and
    the spare workers) started by the supervisor with this pid, alive now.
    Forked workers share the fork server's command line; their process name
    tells them apart."""
    names = {"caxton-worker"}
    if include_fork_server:
        names.add("caxton-forksrv")
    if include_spares:
        names.add("caxton-spare")
    pids = []
    for proc in psutil.process_iter(["cmdline", "name"]):
        cmdline = proc.info["cmdline"] or []
        if proc.info["name"] in names and "--parent-pid" in cmdline:
            try:
                parent = int(cmdline[cmdline.index("--parent-pid") + 1])
                if parent == supervisor_pid and proc.status() != psutil.STATUS_ZOMBIE:
                    pids.append(proc.pid)
            except (ValueError, IndexError, psutil.Error):
                continue
    return pids


def leftover_workers() -> list[int]:
    """Workers, spares or fork servers of any supervisor started here, still alive."""
    return [pid for sup in _started_pids
            for pid in worker_pids_of(sup, include_fork_server=True, include_spares=True)]


class SupervisorProcess:
    """A `python -m caxton.supervisor` subprocess with its own state directory.

    Its `channel` (and every channel from `connect()`) presents `token`: the
    one given, or else the admin token the supervisor created in its state
    directory, so tests authenticate without a word about it. `tls` holds the
    client's `ca`, `cert` and `key` files when the supervisor speaks TLS."""

    def __init__(self, state_dir: Path, *, config: str | None = None, log_path: Path | None = None,
                 listen: str = "127.0.0.1:0", token: str | None = None, args: Sequence[str] = (),
                 tls: Mapping[str, Path] | None = None, env: Mapping[str, str] | None = None,
                 cwd: Path = ROOT, wrapper: Sequence[str] = ()):
        self.env = dict(env) if env is not None else None  # extra environment variables
        self.cwd = cwd  # the supervisor's working directory
        # A command the supervisor is started through, which must exec it
        # (so the pid is the supervisor's): e.g. `ip netns exec NAME`.
        self.wrapper = list(wrapper)
        self.listen = listen
        self.token = token
        self.tls = dict(tls or {})
        self.args = list(args)
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.config_path: Path | None = None
        if config is not None:
            self.config_path = self.state_dir.parent / f"{self.state_dir.name}.toml"
            self.config_path.write_text(config)
        self.log_path = log_path or self.state_dir.parent / f"{self.state_dir.name}.log"
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.listening_on = ""
        self.channel: grpc.Channel | None = None
        # Where its workers' sockets are ("" until it has started): it
        # removes the directory when it stops, but not when killed.
        self.runtime_dir = ""

    # ------------------------------------------------------------ process

    def start(self, timeout: float = 60.0) -> SupervisorProcess:
        args = [*self.wrapper, sys.executable, "-m", "caxton.supervisor",
                "--listen", self.listen, "--state-dir", str(self.state_dir), *self.args]
        if self.config_path is not None:
            args += ["--config", str(self.config_path)]
        log = open(self.log_path, "ab")
        env = {**os.environ, **self.env} if self.env is not None else None
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, cwd=self.cwd,
                                     env=env)
        log.close()
        _started_pids.add(self.proc.pid)
        try:
            self.listening_on = self._read_listening(timeout)
        except BaseException:
            self.kill()
            raise
        if not self.listening_on.startswith("unix:"):
            self.port = int(self.listening_on.rsplit(":", 1)[1])
        sockets = re.findall(r"worker sockets in (/\S+)\)", self.log_text())
        self.runtime_dir = sockets[-1] if sockets else ""
        admin_token = self.state_dir / ADMIN_TOKEN_FILE
        if self.token is None and admin_token.exists():
            self.token = admin_token.read_text().strip()
        self.channel = self.connect()
        self.lifecycle = caxton_pb2_grpc.AgentLifecycleStub(self.channel)
        self.messaging = caxton_pb2_grpc.MessagingStub(self.channel)
        return self

    def _read_listening(self, timeout: float) -> str:
        """The address of the `caxton-supervisor listening on ADDRESS` line."""
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        buf = b""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"supervisor did not start within {timeout}s; log:\n{self.log_text()[-3000:]}")
            ready, _, _ = select.select([fd], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(fd, 4096)
            if not chunk:
                raise AssertionError(
                    f"supervisor exited with {self.proc.wait()} while starting; log:\n{self.log_text()[-3000:]}"
                )
            buf += chunk
            for line in buf.decode(errors="replace").splitlines():
                if "listening on " in line:
                    return line.rsplit(" ", 1)[1]

    @property
    def address(self) -> str:
        """Where to connect: the address it listens on, loopback for a wildcard one."""
        host, _, port = self.listening_on.rpartition(":")
        return f"127.0.0.1:{port}" if host in ("0.0.0.0", "[::]") else self.listening_on

    @property
    def token_file(self) -> Path:
        """The admin token the supervisor created (when its config names no tokens)."""
        return self.state_dir / ADMIN_TOKEN_FILE

    def connect(self, token: str | None = None, **tls: Path) -> grpc.Channel:
        """A new channel presenting `token` (default: this supervisor's), with
        TLS files `ca`, `cert` and `key` (default: this supervisor's `tls`)."""
        return connect(self.address, token=token or self.token, discover=False, **(tls or self.tls))

    @property
    def pid(self) -> int:
        return self.proc.pid

    def worker_pids(self) -> list[int]:
        return worker_pids_of(self.proc.pid)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def _close_channel(self) -> None:
        if self.channel is not None:
            self.channel.close()
            self.channel = None

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, wait for a clean exit; SIGKILL if it does not come."""
        self._close_channel()
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"supervisor did not exit within {timeout}s of SIGTERM") from None
        finally:
            self.proc.stdout.close()
            self._remove_runtime_dir()

    def kill(self) -> None:
        """SIGKILL: the supervisor gets no chance to clean up."""
        self._close_channel()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.proc is not None and not self.proc.stdout.closed:
            self.proc.stdout.close()
        self._remove_runtime_dir()

    def _remove_runtime_dir(self) -> None:
        """The workers' socket directory, which a killed supervisor leaves
        behind (a stopped one has removed it already)."""
        if self.runtime_dir and self.proc is not None and self.proc.poll() is not None:
            shutil.rmtree(self.runtime_dir, ignore_errors=True)

    # ------------------------------------------------------------ API helpers

    def deploy(self, name: str, module_name: str | None = None, *, wasm: bytes | None = None,
               **limits) -> caxton_pb2.AgentStatus:
        request = caxton_pb2.DeployAgentRequest(
            name=name, module=wasm if wasm is not None else module(module_name or name),
            limits=caxton_pb2.ResourceLimits(**limits),
        )
        return self.lifecycle.DeployAgent(request, timeout=60).status

    def send(self, name: str, content: bytes, timeout: float = 30, **envelope) -> caxton_pb2.SendResponse:
        message = caxton_pb2.AgentMessage(receiver=name, content=content, **envelope)
        return self.messaging.Send(caxton_pb2.SendRequest(message=message), timeout=timeout)

    def status(self, name: str) -> caxton_pb2.AgentStatus:
        return self.lifecycle.GetAgentStatus(caxton_pb2.GetAgentStatusRequest(name=name), timeout=30)


# ------------------------------------------------------------ load


class Trip(NamedTuple):
    """One message a LoadGenerator sent, and what became of it."""

    receiver: str
    content: bytes
    status: str  # "ok", or the name of the gRPC status code it failed with
    reply: bytes  # the reply's content when ok, else the error details
    start: float  # time.monotonic() before and after the call
    end: float

    @property
    def echoed(self) -> bool:
        """Answered with exactly the content sent, as an echo agent does."""
        return self.status == "ok" and self.reply == self.content


class LoadGenerator:
    """`callers` threads sending message after message until the with-block
    ends, each over its own channel to `supervisor`.

    Each message goes to one of `receivers`, picked by the caller's own rng
    seeded with its index, so runs repeat. Caller i sends `content(i, n)`
    (default b"c<i>-<n>") in conversation `conversation(i, n)` (default
    none) for n = 0, 1, ... and records each outcome in `results[i]`, in
    send order.
    Entering waits until every caller has `warmup` outcomes; leaving stops
    the callers and fails if one is stuck past its send timeout.
    """

    def __init__(
        self,
        supervisor: SupervisorProcess,
        receivers: str | Sequence[str],
        *,
        callers: int = 1,
        timeout: float = 30.0,
        pause: float = 0.0,
        warmup: int = 0,
        content: Callable[[int, int], bytes] | None = None,
        conversation: Callable[[int, int], str] | None = None,
    ) -> None:
        self.supervisor = supervisor
        self.receivers = [receivers] if isinstance(receivers, str) else list(receivers)
        self.timeout = timeout  # of each send
        self.pause = pause  # between one caller's sends
        self.warmup = warmup
        # What caller i sends as its n-th message, and in which conversation.
        self.content = content or (lambda caller, n: f"c{caller}-{n}".encode())
        self.conversation = conversation or (lambda caller, n: "")
        self.results: list[list[Trip]] = [[] for _ in range(callers)]
        # Counted before each send, so a send that never records an outcome
        # (a caller that died or hung) shows as sent but unanswered.
        self.sent: Counter[str] = Counter()
        self._sent_lock = threading.Lock()
        self._stop = threading.Event()
        # Daemon threads: a caller stuck in a send must not keep pytest alive.
        self.threads = [
            threading.Thread(target=self._run, args=(i,), name=f"load-{i}", daemon=True) for i in range(callers)
        ]

    def _run(self, caller: int) -> None:
        rng = random.Random(caller)
        with self.supervisor.connect() as channel:
            stub = caxton_pb2_grpc.MessagingStub(channel)
            n = 0
            while not self._stop.is_set():
                receiver = rng.choice(self.receivers)
                content = self.content(caller, n)
                conversation = self.conversation(caller, n)
                n += 1
                with self._sent_lock:
                    self.sent[receiver] += 1
                message = caxton_pb2.AgentMessage(receiver=receiver, content=content, conversation_id=conversation)
                start = time.monotonic()
                try:
                    response = stub.Send(caxton_pb2.SendRequest(message=message), timeout=self.timeout)
                    status, reply = "ok", response.reply.content
                except grpc.RpcError as exc:
                    status, reply = exc.code().name, (exc.details() or "").encode()
                self.results[caller].append(Trip(receiver, content, status, reply, start, time.monotonic()))
                self._stop.wait(self.pause)

    def __enter__(self) -> Self:
        for thread in self.threads:
            thread.start()
        try:
            wait_until(lambda: all(len(r) >= self.warmup for r in self.results), 20, "the load to get going")
        except BaseException:
            self._stop.set()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        self._stop.set()
        # Every send ends within its timeout; a caller running past that hung.
        deadline = time.monotonic() + self.timeout + 5
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        # Not when an error ended the with-block: that error is the one to see.
        if exc_type is None:
            hung = [thread.name for thread in self.threads if thread.is_alive()]
            assert not hung, f"a send to {', '.join(self.receivers)} hung in {', '.join(hung)}"

    def trips(self) -> list[Trip]:
        """Every caller's trips, caller by caller."""
        return [trip for results in self.results for trip in results]

    def outcomes(self) -> Counter[str]:
        """How many trips ended with each status ("ok" or a gRPC code name)."""
        return Counter(trip.status for trip in self.trips())
