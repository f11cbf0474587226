"""TLS for the API's TCP listener: the [tls] settings and the server credentials.

With `cert` and `key` the API speaks TLS; with `client_ca` as well it is
mutual TLS: a client without a certificate signed by that CA is refused
during the handshake, before any call (token or not) reaches the server.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from .settings import Table


@dataclass(frozen=True)
class TlsSettings:
    cert: str = ""       # PEM certificate chain of the server
    key: str = ""        # PEM private key of that certificate
    client_ca: str = ""  # PEM CA(s) whose client certificates are accepted; "" = no client certificates

    @property
    def enabled(self) -> bool:
        return bool(self.cert)


def read_tls(table: Table) -> TlsSettings:
    """[tls]: cert and key together; client_ca only with them."""
    settings = TlsSettings(cert=table.string("cert", ""), key=table.string("key", ""),
                           client_ca=table.string("client_ca", ""))
    if bool(settings.cert) != bool(settings.key):
        raise table.error("key" if settings.cert else "cert", "tls.cert and tls.key go together")
    if settings.client_ca and not settings.cert:
        raise table.error("client_ca", "mutual TLS needs the server's own tls.cert and tls.key as well")
    table.finish()
    return settings


def _read_pem(field: str, path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise ValueError(f"tls.{field}: cannot read {path}: {exc.strerror}") from None


def server_credentials(settings: TlsSettings) -> grpc.ServerCredentials:
    """Credentials for `server.add_secure_port`; ValueError names an unreadable file."""
    cert, key = _read_pem("cert", settings.cert), _read_pem("key", settings.key)
    client_ca = _read_pem("client_ca", settings.client_ca) if settings.client_ca else None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None,
    )
