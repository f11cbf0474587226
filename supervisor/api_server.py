"""The public gRPC server: grpc.aio on an event loop in a thread of its own.

With grpc's thread-pool server every open stream holds a pool thread for its
whole life, so a few dozen idle WatchEvents streams starve every other call.
On the asyncio server an idle stream is a suspended coroutine: no thread.
The services are coroutines; what blocks (lifecycle calls into the Runtime)
runs on bounded thread pools they are given (api.py), and what answers later
(a message's outcome, an event) is handed to the loop from its thread
(handoff.py).

The loop runs in the "api-loop" thread, so the main thread stays free to wait
for signals and to drive the drain (server.py); other threads reach the loop
with `call`, which waits for the result with a deadline.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

import grpc

T = TypeVar("T")

# How long a call into the loop may take before the caller gives up; the
# loop only ever runs short steps, so this is a generous bound.
_CALL_TIMEOUT_S = 30.0


class ApiServer:
    def __init__(self, options: Sequence[tuple[str, Any]],
                 interceptors: Sequence[grpc.aio.ServerInterceptor] = ()) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run_loop, name="api-loop", daemon=True)
        self._thread.start()
        self.server: grpc.aio.Server = self.call(self.create_server(options, interceptors))

    @property
    def thread_id(self) -> int:
        """The ident of the thread that runs the loop."""
        assert self._thread.ident is not None  # started in __init__
        return self._thread.ident

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    @staticmethod
    async def create_server(options: Sequence[tuple[str, Any]],
                            interceptors: Sequence[grpc.aio.ServerInterceptor] = ()) -> grpc.aio.Server:
        """A server bound to this loop, which grpc.aio ties it to (run it
        with `call`): the API's, or another one the same loop serves."""
        return grpc.aio.server(options=list(options), interceptors=list(interceptors))

    def call(self, coroutine: Coroutine[Any, Any, T], timeout: float = _CALL_TIMEOUT_S) -> T:
        """Run `coroutine` on the loop and wait (from another thread) for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def listen(self, address: str, credentials: grpc.ServerCredentials | None = None) -> int:
        """Listen on `address`, with TLS given `credentials`; returns the port
        (0 = could not bind). Before start()."""
        return add_port(self.server, address, credentials)

    def start(self) -> None:
        self.call(self.server.start())

    def stop(self, grace: float) -> None:
        """Finish calls in progress for up to `grace` seconds, cancel the
        rest, then end the loop and its thread."""
        self.call(self.server.stop(grace), timeout=grace + _CALL_TIMEOUT_S)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(_CALL_TIMEOUT_S)
        if not self._thread.is_alive():
            self.loop.close()


def add_port(server: grpc.aio.Server, address: str, credentials: grpc.ServerCredentials | None = None) -> int:
    """`server` listens on `address` (with TLS given `credentials`); the port,
    or 0 if it could not bind. grpcio 1.85 raises RuntimeError ("Failed to
    bind") where it used to return 0: the caller names the address in an
    error of its own rather than leaking grpc's."""
    try:
        if credentials is None:
            return server.add_insecure_port(address)
        return server.add_secure_port(address, credentials)
    except RuntimeError:
        return 0
