"""A real gRPC server in the test process serving a stand-in AgentLifecycle,
for tests of the CLI's own logic (what it asks, prints and exits with)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from concurrent import futures

import grpc

from caxton.v1 import caxton_pb2_grpc


@contextlib.contextmanager
def serving(servicer: caxton_pb2_grpc.AgentLifecycleServicer, threads: int = 4) -> Iterator[str]:
    """Serve `servicer` on a loopback port; yields its address. Stopping the
    server cancels open streams too, so a CLI still waiting fails and ends."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=threads))
    caxton_pb2_grpc.add_AgentLifecycleServicer_to_server(servicer, server)
    port = server.add_secure_port("127.0.0.1:0", grpc.local_server_credentials(grpc.LocalConnectionType.LOCAL_TCP))
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(None).wait(10)
