"""A base for server interceptors that wrap the behavior of every method, streaming or not."""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc

Context = grpc.aio.ServicerContext[Any, Any]
UnaryBehavior = Callable[[Any, Context], Awaitable[Any]]
StreamBehavior = Callable[[Any, Context], AsyncIterator[Any]]

if TYPE_CHECKING:
    _ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    _ServerInterceptor = grpc.aio.ServerInterceptor


class BehaviorInterceptor(_ServerInterceptor):
    """Wraps each method's behavior once, when grpc first looks the method up."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method: str = handler_call_details.method
        # A client-streaming behavior takes a request iterator where a unary one takes a
        # request; both are awaited once, so one wrapper serves both (likewise for streams).
        if handler.unary_unary is not None:
            return handler._replace(unary_unary=self.wrap_unary(method, handler.unary_unary))
        if handler.stream_unary is not None:
            return handler._replace(stream_unary=self.wrap_unary(method, handler.stream_unary))
        if handler.unary_stream is not None:
            return handler._replace(unary_stream=self.wrap_stream(method, handler.unary_stream))
        if handler.stream_stream is not None:
            return handler._replace(stream_stream=self.wrap_stream(method, handler.stream_stream))
        return handler

    @abc.abstractmethod
    def wrap_unary(self, method: str, behavior: UnaryBehavior) -> UnaryBehavior:
        """``behavior`` with this interceptor's work around it (``method`` is /service/Rpc)."""

    @abc.abstractmethod
    def wrap_stream(self, method: str, behavior: StreamBehavior) -> StreamBehavior:
        """Likewise for a method that streams its responses."""
