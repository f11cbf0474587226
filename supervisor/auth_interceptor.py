"""The authorizer at the API's door: a grpc.aio server interceptor.

Every call is authorized from its method name and metadata before its
handler runs; a refused call is answered UNAUTHENTICATED or
PERMISSION_DENIED without its request being parsed. A refused lifecycle
call is audited here, since its handler never sees it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from .audit import Audit
from .auth import LIFECYCLE_CALLS, AuthError, Authorizer, call_name

_HANDLER_FACTORIES: dict[tuple[bool, bool], Callable[..., grpc.RpcMethodHandler]] = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


def _refusal(handler: grpc.RpcMethodHandler | None, error: AuthError) -> grpc.RpcMethodHandler:
    """A handler of the same shape as `handler` that only refuses the call.
    No deserializer: the request is never parsed."""

    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(error.code, error.message)

    shape = (handler.request_streaming, handler.response_streaming) if handler is not None else (False, False)
    serializer = handler.response_serializer if handler is not None else None
    return _HANDLER_FACTORIES[shape](refuse, response_serializer=serializer)


class AuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, authorizer: Authorizer, audit: Audit):
        self._authorizer = authorizer
        self._audit = audit

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        method = handler_call_details.method
        try:
            self._authorizer.authorize(method, handler_call_details.invocation_metadata or ())
        except AuthError as error:
            if method in LIFECYCLE_CALLS:
                self._audit.record(error.token, call_name(method), "", f"{error.code.name}: {error.message}")
            return _refusal(await continuation(handler_call_details), error)
        return await continuation(handler_call_details)
