"""The RuntimeService servicer: one class composed of the per-area call mixins."""

from __future__ import annotations

from crisp.api import cri_pb2, cri_pb2_grpc
from crisp.server.containers import ContainerCalls
from crisp.server.runtime_info import RuntimeInfoCalls
from crisp.server.sandboxes import SandboxCalls
from crisp.server.services import Services
from crisp.server.stats import StatsCalls
from crisp.server.streaming import StreamingCalls
from crisp.server.summaries import Summaries
from crisp.server.unimplemented import fill_unimplemented


class RuntimeServicer(
    RuntimeInfoCalls, SandboxCalls, ContainerCalls, StatsCalls, StreamingCalls,
    cri_pb2_grpc.RuntimeServiceServicer
):
    """Every RuntimeService RPC; each mixin owns one area (runtime info, pods, containers...)."""

    def __init__(self, services: Services):
        self.services = services
        self.summaries = Summaries()


fill_unimplemented(
    RuntimeServicer,
    cri_pb2_grpc.RuntimeServiceServicer,
    cri_pb2.DESCRIPTOR.services_by_name["RuntimeService"],
)
