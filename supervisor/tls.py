"""TLS for the API's TCP listener: the [tls] settings and the server's certificates.

With `cert` and `key` the API speaks TLS; with `client_ca` as well it is
mutual TLS: a client without a certificate signed by that CA is refused
during the handshake, before any call (token or not) reaches the server.

The files are read again on SIGHUP (`ServerCertificates.replace`): new
handshakes get the new certificate, connections already open keep theirs,
and files that cannot be used leave the certificates in force serving.
"""

from __future__ import annotations

import contextlib
import os
import ssl
import threading
from collections.abc import Iterator
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


@contextlib.contextmanager
def _in_memory(data: bytes) -> Iterator[str]:
    """A path that reads as `data`, for OpenSSL, which loads keys from files
    only: a memory file, so the key is checked as it was read, once, and its
    bytes are never written to a disk."""
    fd = os.memfd_create("caxton-tls", os.MFD_CLOEXEC)
    try:
        with open(fd, "wb", closefd=False) as memory:
            memory.write(data)
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


def _check_certificates(settings: TlsSettings, cert: bytes, key: bytes, client_ca: bytes | None) -> None:
    """What gRPC would only find out when it builds its TLS context, and
    report then as a failure to bind (at start) or only in its own log (on a
    reload): PEM that holds no certificate, a key that is not the
    certificate's, an encrypted key. ValueError names the field."""
    pems = [("cert", settings.cert, cert)]
    if client_ca is not None:
        pems.append(("client_ca", settings.client_ca, client_ca))
    for field, path, pem in pems:
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_verify_locations(cadata=pem.decode("ascii", "replace"))
        except (ssl.SSLError, ValueError):
            raise ValueError(f"tls.{field}: {path} holds no PEM certificate") from None
    with _in_memory(cert) as cert_path, _in_memory(key) as key_path:
        try:
            # An encrypted key asks for a password: answer none rather than
            # let OpenSSL prompt on the terminal (gRPC cannot use it anyway).
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert_path, key_path, password=lambda: b"")
        except ssl.SSLError as exc:
            if exc.reason == "KEY_VALUES_MISMATCH":
                raise ValueError(f"tls.key: {settings.key} is not the private key of the certificate in "
                                 f"{settings.cert}") from None
            raise ValueError(f"tls.key: {settings.key} holds no usable private key (PEM, unencrypted)") from None


def read_certificates(settings: TlsSettings) -> grpc.ServerCertificateConfiguration:
    """The files of `settings` read and checked, ready for gRPC; ValueError
    names the field of a file that cannot be read or used."""
    cert, key = _read_pem("cert", settings.cert), _read_pem("key", settings.key)
    client_ca = _read_pem("client_ca", settings.client_ca) if settings.client_ca else None
    _check_certificates(settings, cert, key, client_ca)
    return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=client_ca)


class ServerCertificates:
    """The API listener's credentials, whose certificates can be replaced
    while it serves.

    gRPC calls `_fetch` at every new handshake, on its own threads, so
    `_fetch` does nothing but hand over, once, a configuration read
    beforehand (and None, "keep the current one", every other time): no file
    is read and nothing waits there. `replace` does the reading, on the
    thread that handles SIGHUP."""

    def __init__(self, settings: TlsSettings) -> None:
        self.settings = settings
        self._lock = threading.Lock()  # held only to swap one reference
        self._next: grpc.ServerCertificateConfiguration | None = None
        self.credentials = grpc.dynamic_ssl_server_credentials(
            read_certificates(settings),
            self._fetch,  # type: ignore[arg-type]  # the stub omits that None means "unchanged"
            require_client_authentication=bool(settings.client_ca),
        )

    def replace(self, settings: TlsSettings) -> None:
        """Read `settings`' files; new handshakes get them from now on. On
        ValueError (a file that cannot be used, or a change that takes a
        restart), the certificates in force stay."""
        if not settings.enabled:
            raise ValueError("tls: turning TLS off takes a restart")
        if bool(settings.client_ca) != bool(self.settings.client_ca):
            raise ValueError("tls.client_ca: turning mutual TLS on or off takes a restart")
        ready = read_certificates(settings)
        with self._lock:
            self._next = ready
        self.settings = settings

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        with self._lock:
            ready, self._next = self._next, None
        return ready
