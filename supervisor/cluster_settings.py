"""The [cluster] table: how this supervisor joins other hosts' over NATS.

Absent, the supervisor runs standalone and nothing of NATS is imported.
Present, `servers` is required; everything else has a default. Each value
is checked here, up front, and an error names its dotted field: a file
named for credentials or TLS must be readable at start, not at the first
reconnect an hour later; a seed or creds file must hold what nats-py
will sign with, since nats-py reads it at every connection attempt (and
waits forever on a creds file without a JWT).
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import socket
from dataclasses import dataclass

from .settings import Table

# A host name is a NATS subject token (and a KV value): no dots, spaces or
# wildcards, so that one host can never subscribe to another's subject.
_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,64}")
# A KV bucket's name, as nats-server accepts it.
_BUCKET = re.compile(r"[A-Za-z0-9_-]{1,64}")
_URL = re.compile(r"(nats|tls)://[^\s/]+")


@dataclass(frozen=True)
class ClusterSettings:
    # NATS server URLs (nats://HOST:PORT or tls://HOST:PORT); any one will do.
    servers: tuple[str, ...]
    # This host's name in the cluster: it is what other hosts see in
    # `caxton list --cluster`, and its subject. Default: the host name.
    host: str
    # Subjects start with it, and the name space is per prefix: several
    # Caxton clusters can share one NATS.
    prefix: str = "caxton"
    # Credentials (at most one way): user and password (read from a file),
    # an NKeys seed file, or a creds file (JWT + NKey, decentralised auth).
    user: str = ""
    password_file: str = ""
    nkeys_seed_file: str = ""
    creds_file: str = ""
    # TLS to NATS: the CA to trust, and a client certificate and key for
    # servers that verify clients.
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    # The JetStream key-value bucket holding which host runs which agent.
    bucket: str = "caxton-agents"
    # A host's announcements lapse this long after it stops renewing them
    # (renewed every third of it): how long a vanished host's agents stay
    # listed.
    announce_ttl_s: float = 15.0
    # How long a message that has no caller deadline (an agent's send) may
    # wait for the other host's outcome before it fails with UNAVAILABLE.
    request_timeout_s: float = 30.0
    # How often the link pings NATS; two unanswered pings and it is cut off
    # and reconnects (so a cut network is noticed in about twice this).
    ping_interval_s: float = 5.0

    @property
    def password(self) -> str:
        """The password (read when connecting: it never sits in the config)."""
        with open(self.password_file, encoding="utf-8") as f:
            return f.read().strip()


def _readable(table: Table, key: str) -> str:
    path = table.string(key, "")
    if path and not os.access(path, os.R_OK):
        raise table.error(key, f"cannot read {path!r}")
    return path


def _file_bytes(table: Table, key: str, path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise table.error(key, f"cannot read {path!r}: {exc.strerror}") from exc


def _check_user_seed(table: Table, key: str, seed: bytes, what: str) -> None:
    """`seed` is a NATS user's NKeys seed (SU...), intact. The seed itself
    never appears in an error."""
    try:
        # A dependency (nats-py[nkeys]); missing only from a broken install,
        # where nats-py would fail at every connection attempt instead.
        import nkeys  # type: ignore[import-untyped]
    except ImportError as exc:
        raise table.error(key, "NKeys need the nkeys package, which this install lacks: "
                               "pip install 'nats-py[nkeys]'") from exc
    try:
        prefix, _ = nkeys.decode_seed(seed)
        raw = base64.b32decode(seed + b"=" * (-len(seed) % 8))
        nkeys.from_seed(seed).wipe()
    except (nkeys.NkeysError, binascii.Error, ValueError) as exc:
        raise table.error(key, f"{what} is not an NKeys seed (one line, SU...)") from exc
    if nkeys.crc16_checksum(raw[:-2]) != raw[-2:]:
        raise table.error(key, f"{what} is an NKeys seed with a bad checksum (altered or cut short)")
    if prefix != nkeys.PREFIX_BYTE_USER:
        raise table.error(key, f"{what} is not a user's NKeys seed (SU...): NATS signs clients in as users")


def _line_after(lines: list[bytes], marker: bytes) -> bytes:
    """The line after the one holding `marker` (a creds file's section), as
    nats-py reads it; b"" when there is none."""
    for i, line in enumerate(lines[:-1]):
        if marker in line:
            return lines[i + 1].strip()
    return b""


def _check_creds(table: Table, key: str, path: str) -> None:
    """A creds file as `nsc` writes it: a user's JWT, then the user's seed."""
    lines = _file_bytes(table, key, path).splitlines()
    if not _line_after(lines, b"BEGIN NATS USER JWT"):
        raise table.error(key, f"{path!r} holds no user JWT (no line after -----BEGIN NATS USER JWT-----)")
    seed = _line_after(lines, b"BEGIN USER NKEY SEED")
    if not seed:
        raise table.error(key, f"{path!r} holds no user seed (no line after -----BEGIN USER NKEY SEED-----)")
    _check_user_seed(table, key, seed, f"the seed in {path!r}")


def read_cluster(table: Table) -> ClusterSettings:
    """[cluster]: see ClusterSettings."""
    servers = table.strings("servers", None)
    if not servers:
        raise table.error("servers", 'expected at least one NATS URL, e.g. ["nats://10.0.0.1:4222"]')
    for url in servers:
        if not _URL.fullmatch(url):
            raise table.error("servers", f"expected nats://HOST:PORT or tls://HOST:PORT, got {url!r}")
    host = table.string("host", "") or socket.gethostname().split(".")[0]
    if not _TOKEN.fullmatch(host):
        raise table.error("host", f"expected 1-64 letters, digits, '-' or '_', got {host!r}"
                                  + ("" if "host" in table else " (the host name; set cluster.host)"))
    prefix = table.string("prefix", ClusterSettings.prefix)
    if not _TOKEN.fullmatch(prefix):
        raise table.error("prefix", f"expected 1-64 letters, digits, '-' or '_', got {prefix!r}")
    bucket = table.string("bucket", ClusterSettings.bucket)
    if not _BUCKET.fullmatch(bucket):
        raise table.error("bucket", f"expected 1-64 letters, digits, '-' or '_', got {bucket!r}")
    user = table.string("user", "")
    password_file = _readable(table, "password_file")
    if bool(user) != bool(password_file):
        raise table.error("password_file" if user else "user", "cluster.user and cluster.password_file go together")
    nkeys_seed_file = _readable(table, "nkeys_seed_file")
    creds_file = _readable(table, "creds_file")
    ways = [key for key, value in (("user", user), ("nkeys_seed_file", nkeys_seed_file),
                                   ("creds_file", creds_file)) if value]
    if len(ways) > 1:
        raise table.error(ways[1], f"one way of authenticating to NATS, got {' and '.join(ways)}")
    if nkeys_seed_file:
        # nats-py signs with the whole file, stripped.
        _check_user_seed(table, "nkeys_seed_file", _file_bytes(table, "nkeys_seed_file", nkeys_seed_file).strip(),
                         repr(nkeys_seed_file))
    if creds_file:
        _check_creds(table, "creds_file", creds_file)
    tls_ca = _readable(table, "tls_ca")
    tls_cert = _readable(table, "tls_cert")
    tls_key = _readable(table, "tls_key")
    if bool(tls_cert) != bool(tls_key):
        raise table.error("tls_key" if tls_cert else "tls_cert", "cluster.tls_cert and cluster.tls_key go together")
    settings = ClusterSettings(
        servers=tuple(servers), host=host, prefix=prefix, user=user, password_file=password_file,
        nkeys_seed_file=nkeys_seed_file, creds_file=creds_file, tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key,
        bucket=bucket,
        announce_ttl_s=table.number("announce_ttl_s", ClusterSettings.announce_ttl_s, minimum=1),
        request_timeout_s=table.number("request_timeout_s", ClusterSettings.request_timeout_s, above=0),
        ping_interval_s=table.number("ping_interval_s", ClusterSettings.ping_interval_s, minimum=1),
    )
    table.finish()
    return settings
