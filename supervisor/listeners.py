"""Where the supervisor listens, and the rule that keeps plaintext off the network.

The API listens on TCP (`HOST:PORT`) or on a Unix socket (`unix:PATH`,
mode 0660: the owner and its group may connect). Plaintext TCP is allowed on
loopback only: anywhere else the API needs TLS, so a token never crosses a
network in the clear and `--listen 0.0.0.0:PORT` cannot open the API to
other machines by accident. The health listener serves grpc.health.v1 only,
in plaintext, on any address: orchestrators' probes speak neither TLS nor
tokens, and it gives nothing away.
"""

from __future__ import annotations

import ipaddress
import os

UNIX_PREFIX = "unix:"
UNIX_SOCKET_MODE = 0o660


def unix_path(address: str) -> str | None:
    """The socket path of a `unix:PATH` address, else None."""
    return address[len(UNIX_PREFIX):] if address.startswith(UNIX_PREFIX) else None


def tcp_host(address: str) -> str:
    """"127.0.0.1:50051" -> "127.0.0.1", "[::1]:0" -> "::1"; ValueError if there is no port."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"listen address {address!r} is neither HOST:PORT nor unix:PATH")
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def is_loopback(host: str) -> bool:
    """Only names that cannot mean another machine: loopback IPs and `localhost`.
    Other host names are not resolved: a name is not proof of where it points."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_api_listen(address: str, *, tls: bool) -> None:
    """Refuse plaintext TCP on a non-loopback address, saying how to fix it."""
    if unix_path(address) is not None or tls:
        return
    host = tcp_host(address)
    if not is_loopback(host):
        raise ValueError(
            f"refusing to serve the API in plaintext on {address}, which other machines can reach: "
            "configure TLS in the config ([tls] cert = \"server.crt\", key = \"server.key\", and client_ca "
            "for mutual TLS), or listen on loopback (127.0.0.1:PORT) or a Unix socket (unix:PATH); "
            "health probes can use a plaintext health_listen on any address"
        )


def restrict_unix_socket(address: str) -> None:
    """Mode 0660 on a `unix:PATH` listener once it is bound; nothing for TCP."""
    path = unix_path(address)
    if path is not None:
        os.chmod(path, UNIX_SOCKET_MODE)
