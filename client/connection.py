"""A client's connection to a supervisor: its address, TLS, and the token it presents.

`connect()` is what the CLI uses, and what a Python program should use:

    from caxton.client.connection import connect
    channel = connect("127.0.0.1:50051")      # finds its token as the CLI does
    stub = caxton_pb2_grpc.MessagingStub(channel)

The token is found in this order: `token`, `token_file`, $CAXTON_TOKEN,
$CAXTON_TOKEN_FILE, then ./.caxton/admin.token and
/var/lib/caxton/admin.token when readable (the admin token a supervisor
creates at first start). TLS is on when a CA, or a client certificate for
mutual TLS, is given. Without TLS the connection must stay on this machine
(loopback or a Unix socket): gRPC's local credentials refuse anything else,
so a token is never sent across a network in the clear.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Mapping
from pathlib import Path

import grpc

from caxton.contract import DEFAULT_TOKEN_FILES, MAX_GRPC_MESSAGE_BYTES, TOKEN_ENV, TOKEN_FILE_ENV

PathLike = str | os.PathLike[str]

CHANNEL_OPTIONS = (
    ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_GRPC_MESSAGE_BYTES),
)


class ConnectionSetupError(Exception):
    """A token or certificate the caller named cannot be used; the message says which and why."""


def read_token_file(path: PathLike) -> str:
    try:
        token = Path(path).read_text().strip()
    except OSError as exc:
        raise ConnectionSetupError(f"cannot read token file {path}: {exc.strerror}") from None
    if not token:
        raise ConnectionSetupError(f"token file {path} is empty")
    return token


def find_token(token: str | None = None, token_file: PathLike | None = None,
               environ: Mapping[str, str] | None = None) -> str | None:
    """The token to present, in the documented order; None if there is none.
    A file named explicitly (or by $CAXTON_TOKEN_FILE) must be readable; the
    default files are used only when they are."""
    environ = os.environ if environ is None else environ
    if token:
        return token
    if token_file:
        return read_token_file(token_file)
    if environ.get(TOKEN_ENV):
        return environ[TOKEN_ENV]
    if environ.get(TOKEN_FILE_ENV):
        return read_token_file(environ[TOKEN_FILE_ENV])
    for path in DEFAULT_TOKEN_FILES:
        try:
            return read_token_file(path)
        except ConnectionSetupError:
            continue
    return None


def _read_pem(what: str, path: PathLike) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConnectionSetupError(f"cannot read {what} {path}: {exc.strerror}") from None


def channel_credentials(address: str, *, ca: PathLike | None = None, cert: PathLike | None = None,
                        key: PathLike | None = None) -> grpc.ChannelCredentials:
    """TLS when `ca`, or `cert` and `key` (mutual TLS), are given; otherwise
    local credentials, which only connect over loopback or a Unix socket."""
    if bool(cert) != bool(key):
        raise ConnectionSetupError("a client certificate and its key go together (--cert and --key)")
    if ca or cert:
        return grpc.ssl_channel_credentials(
            root_certificates=_read_pem("CA certificate", ca) if ca else None,
            private_key=_read_pem("client key", key) if key else None,
            certificate_chain=_read_pem("client certificate", cert) if cert else None,
        )
    kind = grpc.LocalConnectionType.UDS if address.startswith("unix:") else grpc.LocalConnectionType.LOCAL_TCP
    return grpc.local_channel_credentials(kind)


def connect(address: str, *, token: str | None = None, token_file: PathLike | None = None,
            ca: PathLike | None = None, cert: PathLike | None = None, key: PathLike | None = None,
            discover: bool = True) -> grpc.Channel:
    """A channel to the supervisor at `address` (HOST:PORT or unix:PATH) whose
    every call carries the token found, if one is; `discover=False` looks no
    further than `token` and `token_file`. ConnectionSetupError if a named
    token or certificate file cannot be read."""
    credentials = channel_credentials(address, ca=ca, cert=cert, key=key)
    if discover:
        found = find_token(token, token_file)
    else:
        found = token or (read_token_file(token_file) if token_file else None)
    channel = grpc.secure_channel(address, credentials, options=CHANNEL_OPTIONS)
    if found is None:
        return channel
    return grpc.intercept_channel(channel, _Bearer(found))


class _Bearer(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
              grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds `authorization: Bearer <token>` to every call. Not grpc's
    access-token call credentials: their plugin runs on a new thread for
    every call, which measured 150-200 us of client CPU per Send."""

    def __init__(self, token: str) -> None:
        self._header = ("authorization", f"Bearer {token}")

    def _with_token(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        return _CallDetails(details.method, details.timeout, [*(details.metadata or ()), self._header],
                            details.credentials, details.wait_for_ready, details.compression)

    def intercept_unary_unary(self, continuation, client_call_details, request):
        return continuation(self._with_token(client_call_details), request)

    def intercept_unary_stream(self, continuation, client_call_details, request):
        return continuation(self._with_token(client_call_details), request)

    def intercept_stream_unary(self, continuation, client_call_details, request_iterator):
        return continuation(self._with_token(client_call_details), request_iterator)

    def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
        return continuation(self._with_token(client_call_details), request_iterator)


class _CallDetails(
    collections.namedtuple("_CallDetails", ("method", "timeout", "metadata", "credentials", "wait_for_ready",
                                            "compression")),
    grpc.ClientCallDetails,
):
    """grpc.ClientCallDetails with fields (grpc leaves building one to us)."""
