"""Work done around every method (error mapping, request checks, metrics), fixed at build time.

grpc.aio runs its server interceptors on every call, each one awaiting the next to look the
handler up again; a layer instead wraps each servicer method once, when the server is built,
so a call pays for the wrappers it runs through and nothing else.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from types import SimpleNamespace
from typing import Any

import grpc
from google.protobuf.descriptor import ServiceDescriptor

Context = grpc.aio.ServicerContext[Any, Any]
UnaryBehavior = Callable[[Any, Context], Awaitable[Any]]
StreamBehavior = Callable[[Any, Context], AsyncIterator[Any]]


class Layer(abc.ABC):
    """What runs around the behavior of each method, streaming or not."""

    @abc.abstractmethod
    def wrap_unary(self, method: str, behavior: UnaryBehavior) -> UnaryBehavior:
        """``behavior`` with this layer's work around it (``method`` is /service/Rpc)."""

    @abc.abstractmethod
    def wrap_stream(self, method: str, behavior: StreamBehavior) -> StreamBehavior:
        """Likewise for a method that streams its responses."""


def layered(servicer: object, service: ServiceDescriptor, layers: Sequence[Layer]) -> Any:
    """An object with ``service``'s methods of ``servicer``, each inside ``layers`` (outermost
    first), for grpc's generated ``add_*Servicer_to_server``."""
    methods: dict[str, Any] = {}
    for method in service.methods:
        behavior = getattr(servicer, method.name)
        name = f"/{service.full_name}/{method.name}"
        # A client-streaming behavior takes a request iterator where a unary one takes a
        # request; both are awaited once, so one wrapper serves both (likewise for streams).
        wrap = "wrap_stream" if method.server_streaming else "wrap_unary"
        for layer in reversed(layers):
            behavior = getattr(layer, wrap)(name, behavior)
        methods[method.name] = behavior
    return SimpleNamespace(**methods)
