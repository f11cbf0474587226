"""Where the API listens and how it is protected: TLS, mutual TLS, Unix
sockets, the loopback rule, and the plaintext health listener.

The certificates come from a CA made in each test run with trustme, the
field's tool for test CAs, so nothing here depends on files or on the
system's trust store.
"""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import grpc
import pytest
import trustme
from grpc_health.v1 import health_pb2, health_pb2_grpc

from caxton.supervisor.config import ConfigError, config_from_table
from caxton.supervisor.listeners import check_api_listen, is_loopback
from caxton.supervisor.tls import TlsSettings, read_certificates
from caxton.v1 import caxton_pb2, caxton_pb2_grpc

from .harness import ROOT, SupervisorProcess, wait_until

# ---------------------------------------------------------------- the loopback rule (pure)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.1.2.3", "::1", "localhost"])
def test_loopback_hosts(host):
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "", "10.0.0.1", "192.168.1.5", "example.com", "localhost.evil"])
def test_other_hosts_are_not_loopback(host):
    assert not is_loopback(host)


@pytest.mark.parametrize("address", ["127.0.0.1:50051", "[::1]:0", "localhost:1", "unix:/run/caxton/api.sock"])
def test_plaintext_is_allowed_on_loopback_and_unix_sockets(address):
    check_api_listen(address, tls=False)


@pytest.mark.parametrize("address", ["0.0.0.0:50051", "[::]:50051", "10.1.2.3:443", "api.example.com:50051"])
def test_plaintext_elsewhere_is_refused_with_the_way_out(address):
    with pytest.raises(ValueError) as refused:
        check_api_listen(address, tls=False)
    message = str(refused.value)
    assert message.startswith(f"refusing to serve the API in plaintext on {address}")
    assert "[tls] cert" in message and "unix:PATH" in message
    check_api_listen(address, tls=True)


def test_a_listen_address_without_a_port_is_refused():
    with pytest.raises(ValueError, match="neither HOST:PORT nor unix:PATH"):
        check_api_listen("0.0.0.0", tls=False)


# ---------------------------------------------------------------- [tls] settings


def test_tls_settings_from_config():
    config = config_from_table({"tls": {"cert": "s.crt", "key": "s.key", "client_ca": "ca.pem"},
                                "health_listen": "0.0.0.0:8081"})
    assert config.tls == TlsSettings("s.crt", "s.key", "ca.pem")
    assert config.health_listen == "0.0.0.0:8081"
    assert not config_from_table({}).tls.enabled


@pytest.mark.parametrize("tls, field", [
    ({"cert": "s.crt"}, "tls.key"),
    ({"key": "s.key"}, "tls.cert"),
    ({"client_ca": "ca.pem"}, "tls.client_ca"),
    ({"cert": "s.crt", "key": "s.key", "ca": "x"}, "tls.ca"),
])
def test_incomplete_tls_settings_name_the_field(tls, field):
    with pytest.raises(ConfigError) as error:
        config_from_table({"tls": tls})
    assert error.value.field == field


def test_an_unreadable_certificate_names_its_field(tmp_path):
    with pytest.raises(ValueError, match=f"tls.cert: cannot read {tmp_path}/nope.crt: No such file or directory"):
        read_certificates(TlsSettings(str(tmp_path / "nope.crt"), str(tmp_path / "nope.key")))


@pytest.mark.parametrize("broken, message", [
    ("other_key", "tls.key: {key} is not the private key of the certificate in {cert}"),
    ("garbage_key", "tls.key: {key} holds no usable private key (PEM, unencrypted)"),
    ("garbage_cert", "tls.cert: {cert} holds no PEM certificate"),
    ("garbage_client_ca", "tls.client_ca: {ca} holds no PEM certificate"),
])
def test_unusable_certificate_files_are_named_before_grpc_sees_them(tmp_path, broken, message):
    """gRPC would report these only as "Failed to bind" at start, and not at
    all to the caller on a reload."""
    pki = Pki(tmp_path)
    garbage = b"-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n"
    if broken == "other_key":
        pki.server_key.write_bytes(trustme.CA().issue_cert("127.0.0.1").private_key_pem.bytes())
    elif broken == "garbage_key":
        pki.server_key.write_bytes(garbage)
    elif broken == "garbage_cert":
        pki.server_cert.write_bytes(b"not a certificate\n")
    else:
        pki.ca_file.write_bytes(b"")
    settings = TlsSettings(str(pki.server_cert), str(pki.server_key), str(pki.ca_file))
    with pytest.raises(ValueError) as refused:
        read_certificates(settings)
    assert str(refused.value) == message.format(key=pki.server_key, cert=pki.server_cert, ca=pki.ca_file)


def test_usable_certificate_files_are_read(pki):
    read_certificates(TlsSettings(str(pki.server_cert), str(pki.server_key), str(pki.ca_file)))


# ---------------------------------------------------------------- real supervisors


class Pki:
    """A CA made for this test, the supervisor's certificate for 127.0.0.1,
    and a client certificate, each written as PEM files."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.ca = trustme.CA()
        self.ca_file = self._write("ca.pem", self.ca.cert_pem.bytes())
        server = self.ca.issue_cert("127.0.0.1", "localhost")
        self.server_cert = self._write("server.crt", b"".join(blob.bytes() for blob in server.cert_chain_pems))
        self.server_key = self._write("server.key", server.private_key_pem.bytes())
        self.client = self.client_files(self.ca, "client")

    def _write(self, name: str, data: bytes) -> Path:
        path = self.directory / name
        path.write_bytes(data)
        return path

    def client_files(self, ca: trustme.CA, name: str) -> dict[str, Path]:
        issued = ca.issue_cert(f"{name}@caxton.test")
        return {"ca": self.ca_file,
                "cert": self._write(f"{name}.crt", b"".join(blob.bytes() for blob in issued.cert_chain_pems)),
                "key": self._write(f"{name}.key", issued.private_key_pem.bytes())}

    def config(self, *, mutual: bool) -> str:
        text = f'[tls]\ncert = "{self.server_cert}"\nkey = "{self.server_key}"\n'
        return text + (f'client_ca = "{self.ca_file}"\n' if mutual else "")


@pytest.fixture
def pki(tmp_path) -> Pki:
    return Pki(tmp_path)


def _list(channel: grpc.Channel) -> list[str]:
    stub = caxton_pb2_grpc.AgentLifecycleStub(channel)
    return [a.name for a in stub.ListAgents(caxton_pb2.ListAgentsRequest(), timeout=20).agents]


def _refused(channel: grpc.Channel) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as refused:
        _list(channel)
    return refused.value


def test_refuses_to_start_on_a_public_address_without_tls(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "caxton.supervisor", "--listen", "0.0.0.0:0", "--state-dir", str(tmp_path / "s")],
        capture_output=True, text=True, cwd=ROOT, timeout=60, stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 1
    assert "refusing to serve the API in plaintext on 0.0.0.0:0" in result.stderr
    assert "[tls] cert" in result.stderr


def test_refuses_to_start_with_a_key_that_is_not_the_certificates(tmp_path, pki):
    pki.server_key.write_bytes(trustme.CA().issue_cert("127.0.0.1").private_key_pem.bytes())
    config = tmp_path / "caxton.toml"
    config.write_text(pki.config(mutual=False))
    result = subprocess.run(
        [sys.executable, "-m", "caxton.supervisor", "--config", str(config), "--listen", "127.0.0.1:0",
         "--state-dir", str(tmp_path / "s")],
        capture_output=True, text=True, cwd=ROOT, timeout=60, stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 1
    assert (f"caxton-supervisor: tls.key: {pki.server_key} is not the private key of the certificate in "
            f"{pki.server_cert}") in result.stderr


def test_tls_on_a_public_address(tmp_path, pki):
    sup = SupervisorProcess(tmp_path / "state", listen="0.0.0.0:0", config=pki.config(mutual=False),
                            tls={"ca": pki.ca_file}).start()
    try:
        assert sup.listening_on.startswith("0.0.0.0:")
        assert _list(sup.channel) == []
        # a plaintext client gets no answer from a TLS port
        with grpc.insecure_channel(sup.address) as plain:
            assert _refused(plain).code() == grpc.StatusCode.UNAVAILABLE
        # TLS is no substitute for a token
        with sup.connect("not-the-token") as stranger:
            assert _refused(stranger).code() == grpc.StatusCode.UNAUTHENTICATED
        # a client that trusts another CA does not trust this server
        (tmp_path / "other").mkdir()
        other = Pki(tmp_path / "other")
        with sup.connect(ca=other.ca_file) as wrong_ca:
            assert _refused(wrong_ca).code() == grpc.StatusCode.UNAVAILABLE
    finally:
        sup.stop()


def test_mutual_tls_refuses_clients_without_a_valid_certificate(tmp_path, pki):
    sup = SupervisorProcess(tmp_path / "state", config=pki.config(mutual=True), tls=pki.client).start()
    try:
        assert _list(sup.channel) == []
        with sup.connect(ca=pki.ca_file) as no_certificate:
            error = _refused(no_certificate)
            assert error.code() == grpc.StatusCode.UNAVAILABLE  # the handshake failed: no call was made
        stranger_ca = trustme.CA()
        with sup.connect(**pki.client_files(stranger_ca, "stranger")) as foreign:
            assert _refused(foreign).code() == grpc.StatusCode.UNAVAILABLE
    finally:
        sup.stop()
    # refused at the handshake: no call (and so no audit line) ever reached the API
    assert "call=" not in sup.log_text()


def test_the_cli_speaks_mutual_tls(tmp_path, pki):
    sup = SupervisorProcess(tmp_path / "state", config=pki.config(mutual=True), tls=pki.client).start()
    try:
        base = [sys.executable, "-m", "caxton", "--address", sup.address, "--token-file", str(sup.token_file)]
        tls = ["--ca", str(pki.ca_file), "--cert", str(pki.client["cert"]), "--key", str(pki.client["key"])]
        listed = subprocess.run(base + tls + ["list"], capture_output=True, text=True, cwd=ROOT, timeout=60)
        assert listed.returncode == 0, listed.stderr
        refused = subprocess.run(base + tls[:2] + ["list"], capture_output=True, text=True, cwd=ROOT, timeout=60)
        assert refused.returncode == 1
        assert refused.stderr.startswith("caxton: UNAVAILABLE: ")
        half = subprocess.run(base + tls[:4] + ["list"], capture_output=True, text=True, cwd=ROOT, timeout=60)
        assert half.returncode == 1
        assert half.stderr == "caxton: a client certificate and its key go together (--cert and --key)\n"
    finally:
        sup.stop()


def test_the_health_listener_serves_health_only_in_plaintext(tmp_path, pki):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        health_port = probe.getsockname()[1]
    sup = SupervisorProcess(tmp_path / "state", config=pki.config(mutual=True), tls=pki.client,
                            args=["--health-listen", f"127.0.0.1:{health_port}"]).start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{health_port}") as plain:
            health = health_pb2_grpc.HealthStub(plain)
            for service in ("", "caxton.v1.AgentLifecycle", "caxton.v1.Messaging"):
                assert health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status == \
                    health_pb2.HealthCheckResponse.SERVING
            # nothing but health there
            assert _refused(plain).code() == grpc.StatusCode.UNIMPLEMENTED
        assert _list(sup.channel) == []  # the API itself still wants TLS and a token
    finally:
        sup.stop()


def test_a_unix_socket_listener_is_owner_and_group_only(tmp_path):
    socket_dir = Path(tempfile.mkdtemp(prefix="caxton-api-", dir="/tmp"))  # socket paths stay under 108 bytes
    path = socket_dir / "api.sock"
    sup = SupervisorProcess(tmp_path / "state", listen=f"unix:{path}")
    try:
        sup.start()
        assert sup.listening_on == f"unix:{path}"
        assert stat.S_ISSOCK(path.stat().st_mode)
        assert stat.S_IMODE(path.stat().st_mode) == 0o660
        assert _list(sup.channel) == []
        cli = subprocess.run([sys.executable, "-m", "caxton", "--address", f"unix:{path}", "--token-file",
                              str(sup.token_file), "list"], capture_output=True, text=True, cwd=ROOT, timeout=60)
        assert cli.returncode == 0, cli.stderr
        with grpc.insecure_channel(f"unix:{path}") as anonymous:
            assert _refused(anonymous).code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        sup.stop()
        for leftover in socket_dir.iterdir():
            leftover.unlink()
        os.rmdir(socket_dir)


# ---------------------------------------------------------------- SIGHUP: new certificates


def _reloaded(sup: SupervisorProcess, before: int) -> str:
    """Wait for the reload after `before` earlier ones; its log line."""
    def line() -> str | None:
        lines = [line for line in sup.log_text().splitlines() if "SIGHUP: " in line]
        return lines[before] if len(lines) > before else None
    return wait_until(line, 20, "the SIGHUP reload's log line")


@pytest.mark.parametrize("mutual", [False, True], ids=["tls", "mutual-tls"])
def test_sighup_gives_new_connections_the_new_certificate(tmp_path, pki, mutual):
    trust_a = tmp_path / "trust-a.pem"  # CA A, kept apart: the config's CA file is rewritten below
    trust_a.write_bytes(pki.ca_file.read_bytes())
    (tmp_path / "b").mkdir()
    b = Pki(tmp_path / "b")
    as_a = {"ca": trust_a, **({"cert": pki.client["cert"], "key": pki.client["key"]} if mutual else {})}
    as_b = {"ca": b.ca_file, **({"cert": b.client["cert"], "key": b.client["key"]} if mutual else {})}
    sup = SupervisorProcess(tmp_path / "state", config=pki.config(mutual=mutual), tls=as_a).start()
    try:
        with sup.connect(**as_a) as open_before:
            assert _list(open_before) == []  # connected, with certificate A
            pki.server_cert.write_bytes(b.server_cert.read_bytes())
            pki.server_key.write_bytes(b.server_key.read_bytes())
            if mutual:
                pki.ca_file.write_bytes(b.ca_file.read_bytes())  # client certificates of CA B from now on
            sup.proc.send_signal(signal.SIGHUP)
            assert "SIGHUP: config reloaded (" in _reloaded(sup, 0)
            with sup.connect(**as_b) as trusting_b:
                assert _list(trusting_b) == []
            with sup.connect(**as_a) as trusting_a:
                assert _refused(trusting_a).code() == grpc.StatusCode.UNAVAILABLE
            # a connection made before the reload keeps its certificate
            assert _list(open_before) == []
    finally:
        sup.stop()


@pytest.mark.parametrize("damage", ["missing", "garbage", "another_key"])
def test_sighup_with_an_unusable_key_keeps_the_certificate_in_force(tmp_path, pki, damage):
    sup = SupervisorProcess(tmp_path / "state", config=pki.config(mutual=False), tls={"ca": pki.ca_file}).start()
    try:
        (tmp_path / "b").mkdir()
        b = Pki(tmp_path / "b")
        pki.server_cert.write_bytes(b.server_cert.read_bytes())
        if damage == "missing":
            pki.server_key.unlink()
        elif damage == "garbage":
            pki.server_key.write_bytes(b"-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n")
        else:
            pki.server_key.write_bytes(trustme.CA().issue_cert("127.0.0.1").private_key_pem.bytes())
        sup.proc.send_signal(signal.SIGHUP)
        line = _reloaded(sup, 0)
        assert "SIGHUP: config reloaded, except TLS certificates (tls.key: " in line
        assert line.endswith("the ones in force stay)")
        with sup.connect(ca=pki.ca_file.parent / "b" / "ca.pem") as trusting_b:
            assert _refused(trusting_b).code() == grpc.StatusCode.UNAVAILABLE
        with sup.connect(ca=pki.ca_file) as trusting_a:
            assert _list(trusting_a) == []  # certificate A still serves new connections
        # Once the files are whole again, the next SIGHUP takes them.
        pki.server_key.write_bytes(b.server_key.read_bytes())
        sup.proc.send_signal(signal.SIGHUP)
        assert "SIGHUP: config reloaded (" in _reloaded(sup, 1)
        with sup.connect(ca=b.ca_file) as trusting_b:
            assert _list(trusting_b) == []
    finally:
        sup.stop()
