"""Errors the supervisor reports to its callers.

Each carries the gRPC status code it maps to; the API layer translates them
at one boundary (supervisor/api.py). Code below the API raises these, never
grpc errors, so that the runtime can be used and tested without a server.
"""

from __future__ import annotations

import grpc


class CaxtonError(Exception):
    code = grpc.StatusCode.INTERNAL

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class InvalidArgument(CaxtonError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(CaxtonError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(CaxtonError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(CaxtonError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Unavailable(CaxtonError):
    code = grpc.StatusCode.UNAVAILABLE


class PermissionDenied(CaxtonError):
    code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(CaxtonError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class MessageFailed(CaxtonError):
    """A message's outcome was an error with this status (from the worker,
    or from the supervisor on the worker's behalf)."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code


class ModuleRejected(InvalidArgument):
    """The module failed validation; `report` holds every finding."""

    def __init__(self, message: str, report):
        super().__init__(message)
        self.report = report


class WorkerStartError(Exception):
    """A worker process could not be started (internal: agent.py turns it
    into Unavailable for the caller)."""
