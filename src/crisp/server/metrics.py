"""Prometheus metrics of the gRPC API: calls, latency and status codes per method.

The layer sits outside :class:`~crisp.server.errors.ErrorLayer`, so it sees the
final status code a client received.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

from crisp.server.layers import Context, Layer, StreamBehavior, UnaryBehavior

log = logging.getLogger(__name__)


class GrpcMetrics:
    """The per-RPC counters and histograms, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.calls = Counter(
            "crisp_grpc_requests",
            "CRI calls handled, by method and status code.",
            ["service", "method", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "crisp_grpc_request_duration_seconds",
            "Time to answer a CRI call, by method.",
            ["service", "method"],
            registry=self.registry,
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
        )

    def serve(self, address: str, port: int) -> None:
        """Serve ``/metrics`` over HTTP from a background thread."""
        start_http_server(port, addr=address, registry=self.registry)
        log.info("serving metrics on http://%s:%d/metrics", address, port)

    def observe(self, full_method: str, code: grpc.StatusCode, seconds: float) -> None:
        _, service, method = full_method.split("/", 2)
        self.calls.labels(service, method, code.name).inc()
        self.latency.labels(service, method).observe(seconds)


class MetricsLayer(Layer):
    """Counts and times every call."""

    def __init__(self, metrics: GrpcMetrics):
        self.metrics = metrics

    def wrap_unary(self, method: str, behavior: UnaryBehavior) -> UnaryBehavior:
        observe = self.metrics.observe

        async def timed(request: Any, context: Context) -> Any:
            started = time.perf_counter()
            try:
                response = await behavior(request, context)
            except BaseException:
                observe(method, _code(context), time.perf_counter() - started)
                raise
            observe(method, grpc.StatusCode.OK, time.perf_counter() - started)
            return response

        return timed

    def wrap_stream(self, method: str, behavior: StreamBehavior) -> StreamBehavior:
        observe = self.metrics.observe

        async def timed(request: Any, context: Context) -> AsyncIterator[Any]:
            started = time.perf_counter()
            try:
                async for item in behavior(request, context):
                    yield item
            except BaseException:
                observe(method, _code(context), time.perf_counter() - started)
                raise
            observe(method, grpc.StatusCode.OK, time.perf_counter() - started)

        return timed


def _code(context: Context) -> grpc.StatusCode:
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    return grpc.StatusCode.CANCELLED if code is None else grpc.StatusCode.UNKNOWN
