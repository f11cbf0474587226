"""The [cluster] table: read and checked up front, every error naming its field."""

from __future__ import annotations

import importlib.util
import socket
import subprocess
import sys

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


def test_nkeys_and_creds_files_need_the_nkeys_package(tmp_path, monkeypatch):
    seed = _touch(tmp_path, "seed")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None if name == "nkeys" else object())
    with pytest.raises(ConfigError, match=r"^cluster\.nkeys_seed_file: NKeys need the nkeys package"):
        cluster(nkeys_seed_file=seed)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: object())
    assert cluster(nkeys_seed_file=seed).nkeys_seed_file == seed
