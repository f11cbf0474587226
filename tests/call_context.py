"""A stand-in for grpc.ServicerContext, for calling WorkerService's methods in
process (no server): what the service asks of its context is kept, so a test
can see it, and an abort raises as the real one does."""

from __future__ import annotations

from collections.abc import Callable

import grpc


class Aborted(Exception):
    """What context.abort raised, with its code and details."""

    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


class CallContext:
    def __init__(self) -> None:
        # Termination callbacks, in order: a real server runs them once the
        # call has ended (its response sent); end() runs them here.
        self.callbacks: list[Callable[[], object]] = []

    def add_callback(self, callback: Callable[[], object]) -> bool:
        self.callbacks.append(callback)
        return True

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise Aborted(code, details)

    def end(self) -> None:
        """The call has ended: run its termination callbacks."""
        callbacks, self.callbacks = self.callbacks, []
        for callback in callbacks:
            callback()
