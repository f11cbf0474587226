"""Bare gRPC servers that Caxton's message path is measured against.

    python -m bench.baselines echo --listen 127.0.0.1:0
    python -m bench.baselines echo --listen unix:/tmp/x/echo.sock --threads 2
    python -m bench.baselines forward --listen 127.0.0.1:0 --upstream unix:/tmp/x/echo.sock

`echo` answers `caxton.v1.Messaging/Send` with the reply envelope the
supervisor would build; `forward` passes each Send on to an upstream server
and returns its answer. Client -> forward (TCP) -> echo (Unix socket) is the
shape of client -> supervisor -> worker with nothing of Caxton in it: the same
protobuf message types (so serialization costs the same), sync gRPC servers
with thread pools, one process per hop, on the same gRPC engine
(`start_baseline` sets it as the supervisor does for itself and its workers). What Caxton adds on top of that
(mailbox, dispatch, wasmtime) is the ratio the benchmarks report.

Each server prints `listening on ADDRESS` once it serves, exits cleanly on
SIGTERM, and asks the kernel to SIGTERM it if the benchmark process dies, so
a crashed or interrupted run leaves no server behind.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import sys
import threading
from concurrent import futures

import grpc

from caxton.contract import MAX_GRPC_MESSAGE_BYTES
from caxton.v1 import caxton_pb2, caxton_pb2_grpc

# Same bounds as the supervisor and the worker.
_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_GRPC_MESSAGE_BYTES),
    ("grpc.so_reuseport", 0),
]
_PR_SET_PDEATHSIG = 1


class EchoServicer(caxton_pb2_grpc.MessagingServicer):
    """Replies with the request's content in the envelope Caxton builds
    (`supervisor.messaging.fill_reply_envelope`), so the reply has the same size."""

    def Send(self, request: caxton_pb2.SendRequest, context: grpc.ServicerContext) -> caxton_pb2.SendResponse:
        message = request.message
        reply = caxton_pb2.AgentMessage(
            performative=caxton_pb2.PERFORMATIVE_INFORM,
            sender=message.receiver,
            receiver=message.sender,
            conversation_id=message.conversation_id,
            in_reply_to=message.reply_with or message.message_id,
            content=message.content,
        )
        return caxton_pb2.SendResponse(reply=reply, has_reply=True)


class ForwardServicer(caxton_pb2_grpc.MessagingServicer):
    """One extra hop: decode, call upstream over its own channel, re-encode."""

    def __init__(self, upstream: str):
        self._channel = grpc.insecure_channel(upstream, options=_OPTIONS[:2])
        self._stub = caxton_pb2_grpc.MessagingStub(self._channel)

    def Send(self, request: caxton_pb2.SendRequest, context: grpc.ServicerContext) -> caxton_pb2.SendResponse:
        try:
            return self._stub.Send(request, timeout=context.time_remaining())
        except grpc.RpcError as exc:
            context.abort(exc.code(), exc.details() or "upstream failed")


def _die_with_parent(parent_pid: int) -> None:
    """SIGTERM this process when the benchmark process exits, however it exits."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        sys.exit(1)


def serve(servicer: caxton_pb2_grpc.MessagingServicer, listen: str, threads: int) -> int:
    """Serve until SIGTERM/SIGINT; print the bound address once serving."""
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="rpc"), options=_OPTIONS)
    caxton_pb2_grpc.add_MessagingServicer_to_server(servicer, server)
    port = server.add_insecure_port(listen)
    if port == 0:
        print(f"cannot listen on {listen}", file=sys.stderr)
        return 1
    address = listen if listen.startswith("unix:") else f"{listen.rsplit(':', 1)[0]}:{port}"
    server.start()
    print(f"listening on {address}", flush=True)
    stop.wait()
    server.stop(grace=1.0).wait()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.baselines", description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=["echo", "forward"])
    parser.add_argument("--listen", required=True, help="HOST:PORT (port 0 = any free port) or unix:PATH")
    parser.add_argument("--upstream", help="forward: the echo server's address, e.g. unix:PATH")
    # Defaults mirror Caxton: the supervisor's API pool has 64 threads, a
    # worker's has 2.
    parser.add_argument("--threads", type=int, default=64)
    parser.add_argument("--parent-pid", type=int, help="exit when this process exits")
    args = parser.parse_args(argv)
    if args.parent_pid:
        _die_with_parent(args.parent_pid)
    if args.kind == "forward":
        if not args.upstream:
            parser.error("forward needs --upstream")
        servicer: caxton_pb2_grpc.MessagingServicer = ForwardServicer(args.upstream)
    else:
        servicer = EchoServicer()
    return serve(servicer, args.listen, args.threads)


if __name__ == "__main__":
    sys.exit(main())
