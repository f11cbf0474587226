"""The [cluster] table: read and checked up front, every error naming its field."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import nkeys
import pytest

from caxton.supervisor.cluster_settings import ClusterSettings
from caxton.supervisor.config import ConfigError, config_from_table

SERVERS = ["nats://10.0.0.1:4222"]


def cluster(**table) -> ClusterSettings:
    config = config_from_table({"cluster": {"servers": SERVERS, **table}})
    assert config.cluster is not None
    return config.cluster


def test_without_a_cluster_table_the_supervisor_is_standalone_and_nats_is_not_imported():
    assert config_from_table({}).cluster is None
    # A fresh interpreter: the whole supervisor imported, a config read.
    probe = ("import sys; from caxton.supervisor import server; from caxton.supervisor.config import "
             "config_from_table; config_from_table({}); print(sorted(m for m in sys.modules if m.split('.')[0] == "
             "'nats'))")
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True).stdout.strip() == "[]"


def test_defaults():
    settings = cluster()
    assert settings.servers == tuple(SERVERS)
    assert settings.host == socket.gethostname().split(".")[0]
    assert (settings.prefix, settings.bucket) == ("caxton", "caxton-agents")
    assert (settings.announce_ttl_s, settings.request_timeout_s, settings.ping_interval_s) == (15.0, 30.0, 5.0)
    assert not (settings.user or settings.nkeys_seed_file or settings.creds_file or settings.tls_cert)


def test_every_setting_is_read(tmp_path):
    password = tmp_path / "password"
    password.write_text("s3cret\n")
    for name in ("ca", "cert", "key"):
        (tmp_path / name).write_text("pem")
    settings = cluster(host="node-1", prefix="prod", user="caxton", password_file=str(password),
                       tls_ca=str(tmp_path / "ca"), tls_cert=str(tmp_path / "cert"), tls_key=str(tmp_path / "key"),
                       bucket="names", announce_ttl_s=6, request_timeout_s=2.5, ping_interval_s=1)
    assert (settings.host, settings.prefix, settings.user, settings.password) == ("node-1", "prod", "caxton",
                                                                                    "s3cret")
    assert (settings.bucket, settings.announce_ttl_s, settings.request_timeout_s) == ("names", 6.0, 2.5)


def _touch(tmp_path, name: str) -> str:
    path = tmp_path / name
    path.write_text("x")
    return str(path)


@pytest.mark.parametrize("table, message", [
    ({}, "cluster.servers: expected at least one NATS URL"),
    ({"servers": []}, "cluster.servers: expected at least one NATS URL"),
    ({"servers": "nats://a:4222"}, "cluster.servers: expected a list of strings"),
    ({"servers": ["http://a:4222"]}, "cluster.servers: expected nats://HOST:PORT or tls://HOST:PORT"),
    ({"servers": SERVERS, "host": "a.b"}, "cluster.host: expected 1-64 letters, digits"),
    ({"servers": SERVERS, "host": "*"}, "cluster.host: expected 1-64 letters, digits"),
    ({"servers": SERVERS, "prefix": "a b"}, "cluster.prefix: expected 1-64 letters"),
    ({"servers": SERVERS, "bucket": "a.b"}, "cluster.bucket: expected 1-64 letters"),
    ({"servers": SERVERS, "announce_ttl_s": 0.5}, "cluster.announce_ttl_s: expected a number >= 1"),
    ({"servers": SERVERS, "request_timeout_s": 0}, "cluster.request_timeout_s: expected a number > 0"),
    ({"servers": SERVERS, "ping_interval_s": 0}, "cluster.ping_interval_s: expected a number >= 1"),
    ({"servers": SERVERS, "user": "caxton"}, "cluster.password_file: cluster.user and cluster.password_file go"),
    ({"servers": SERVERS, "password_file": "/nonexistent/pw"}, "cluster.password_file: cannot read"),
    ({"servers": SERVERS, "creds_file": "/nonexistent/creds"}, "cluster.creds_file: cannot read"),
    ({"servers": SERVERS, "tls_key": "/nonexistent/key"}, "cluster.tls_key: cannot read"),
    ({"servers": SERVERS, "bogus": 1}, "cluster.bogus: unknown setting"),
])
def test_every_error_names_its_field(table, message):
    with pytest.raises(ConfigError) as info:
        config_from_table({"cluster": table})
    assert str(info.value).startswith(message), str(info.value)


def test_one_way_of_authenticating_and_tls_files_in_pairs(tmp_path):
    password, creds, cert = _touch(tmp_path, "password"), _touch(tmp_path, "creds"), _touch(tmp_path, "cert")
    with pytest.raises(ConfigError, match=r"^cluster\.creds_file: one way of authenticating to NATS"):
        cluster(user="caxton", password_file=password, creds_file=creds)
    with pytest.raises(ConfigError, match=r"^cluster\.tls_key: cluster\.tls_cert and cluster\.tls_key go together"):
        cluster(tls_cert=cert)


def _seed(prefix: int = nkeys.PREFIX_BYTE_USER) -> bytes:
    return nkeys.encode_seed(os.urandom(32), prefix)


def _creds(jwt: str = "eyJ0eXAiOiJKV1QiLCJhbGciOiJlZDI1NTE5LW5rZXkifQ.e30.c2ln", seed: bytes | None = None) -> str:
    seed = _seed() if seed is None else seed
    return (f"-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n"
            f"-----BEGIN USER NKEY SEED-----\n{seed.decode()}\n------END USER NKEY SEED------\n")


def _write(tmp_path, name: str, content: str | bytes) -> str:
    path = tmp_path / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return str(path)


def test_an_nkeys_seed_file_and_a_creds_file_are_read_as_nats_py_will(tmp_path):
    seed = _write(tmp_path, "user.nk", _seed() + b"\n")
    assert cluster(nkeys_seed_file=seed).nkeys_seed_file == seed
    creds = _write(tmp_path, "user.creds", _creds())
    assert cluster(creds_file=creds).creds_file == creds


def _altered(seed: bytes) -> bytes:
    """One character of the key changed (still base32): only the checksum tells."""
    i = len(seed) // 2
    return seed[:i] + (b"B" if seed[i:i + 1] == b"A" else b"A") + seed[i + 1:]


@pytest.mark.parametrize("content, problem", [
    (b"", "is not an NKeys seed"),
    (b"hello", "is not an NKeys seed"),
    (b"SUAJUNK-not-base32", "is not an NKeys seed"),
    (_seed()[:-6], "is not an NKeys seed"),
    (_altered(_seed()), "is an NKeys seed with a bad checksum"),
    (_seed(nkeys.PREFIX_BYTE_ACCOUNT), "is not a user's NKeys seed (SU...)"),
    (_seed() + b"\n" + _seed(), "is not an NKeys seed"),  # two seeds: nats-py reads the file as one
])
def test_a_seed_file_that_is_no_user_seed_is_refused_without_showing_it(tmp_path, content, problem):
    path = _write(tmp_path, "bad.nk", content)
    with pytest.raises(ConfigError) as info:
        cluster(nkeys_seed_file=path)
    assert str(info.value).startswith(f"cluster.nkeys_seed_file: {path!r} {problem}"), str(info.value)
    assert not content.strip() or content.strip() not in str(info.value).encode()


@pytest.mark.parametrize("content, problem", [
    # nats-py would read such a file line after line for ever, waiting for a JWT.
    ("-----BEGIN USER NKEY SEED-----\nSUxyz\n", "holds no user JWT"),
    (_creds(jwt=""), "holds no user JWT"),
    (_creds().split("-----BEGIN USER NKEY SEED")[0], "holds no user seed"),
    (_creds(seed=_seed(nkeys.PREFIX_BYTE_ACCOUNT)), "the seed in {path!r} is not a user's NKeys seed"),
    (_creds(seed=_altered(_seed())), "the seed in {path!r} is an NKeys seed with a bad checksum"),
])
def test_a_creds_file_without_a_jwt_and_a_user_seed_is_refused(tmp_path, content, problem):
    path = _write(tmp_path, "bad.creds", content)
    with pytest.raises(ConfigError) as info:
        cluster(creds_file=path)
    message = str(info.value)
    assert message.startswith("cluster.creds_file: ") and problem.format(path=path) in message, message


def test_a_seed_file_that_is_a_directory_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"^cluster\.nkeys_seed_file: cannot read .*: Is a directory"):
        cluster(nkeys_seed_file=str(tmp_path))


def test_without_the_nkeys_package_seed_and_creds_files_are_refused_up_front(tmp_path, monkeypatch):
    """nkeys comes with caxton (nats-py[nkeys]); an install without it
    (installed with --no-deps, say) is told so at start, not at every
    attempt to connect."""
    seed, creds = _write(tmp_path, "user.nk", _seed()), _write(tmp_path, "user.creds", _creds())
    monkeypatch.setitem(sys.modules, "nkeys", None)  # `import nkeys` raises ImportError
    with pytest.raises(ConfigError, match=r"^cluster\.nkeys_seed_file: NKeys need the nkeys package"):
        cluster(nkeys_seed_file=seed)
    with pytest.raises(ConfigError, match=r"^cluster\.creds_file: NKeys need the nkeys package"):
        cluster(creds_file=creds)
