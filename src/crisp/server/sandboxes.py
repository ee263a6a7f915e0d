"""RunPodSandbox, StopPodSandbox, RemovePodSandbox, PodSandboxStatus and ListPodSandbox.

Each method translates the request into crisp.pods types, calls the pods service and
translates the answer back; the work and the rules live in crisp.pods.
"""

from __future__ import annotations

import time
from typing import Any

import grpc

from crisp.api import cri_pb2
from crisp.pods import PodService, SandboxState
from crisp.server.pod_convert import (
    container_status,
    resources,
    sandbox_config,
    sandbox_status,
)
from crisp.server.services import Services
from crisp.server.summaries import Summaries

_SANDBOX_STATES = {
    cri_pb2.SANDBOX_READY: SandboxState.READY, cri_pb2.SANDBOX_NOTREADY: SandboxState.NOTREADY,
}
Context = grpc.aio.ServicerContext[Any, Any]


class SandboxCalls:
    """The pod sandbox RPCs of the RuntimeService."""

    services: Services
    summaries: Summaries

    @property
    def _pods(self) -> PodService:
        return self.services.pods

    async def RunPodSandbox(
        self, request: cri_pb2.RunPodSandboxRequest, context: Context
    ) -> cri_pb2.RunPodSandboxResponse:
        sandbox = await self._pods.run_sandbox(sandbox_config(request.config),
                                               request.runtime_handler)
        return cri_pb2.RunPodSandboxResponse(pod_sandbox_id=sandbox.id)

    async def StopPodSandbox(
        self, request: cri_pb2.StopPodSandboxRequest, context: Context
    ) -> cri_pb2.StopPodSandboxResponse:
        await self._pods.stop_sandbox(request.pod_sandbox_id)
        return cri_pb2.StopPodSandboxResponse()

    async def RemovePodSandbox(
        self, request: cri_pb2.RemovePodSandboxRequest, context: Context
    ) -> cri_pb2.RemovePodSandboxResponse:
        await self._pods.remove_sandbox(request.pod_sandbox_id)
        return cri_pb2.RemovePodSandboxResponse()

    async def PodSandboxStatus(
        self, request: cri_pb2.PodSandboxStatusRequest, context: Context
    ) -> cri_pb2.PodSandboxStatusResponse:
        pods = self._pods
        sandbox = pods.sandbox(request.pod_sandbox_id)
        response = cri_pb2.PodSandboxStatusResponse(
            status=sandbox_status(sandbox),
            containers_statuses=[container_status(c) for c in pods.containers_of(sandbox.id)],
            timestamp=time.time_ns(),
        )
        if request.verbose:
            response.info.update(pods.sandbox_info(sandbox))
        return response

    async def ListPodSandbox(
        self, request: cri_pb2.ListPodSandboxRequest, context: Context
    ) -> cri_pb2.ListPodSandboxResponse:
        wanted = request.filter
        state = None
        if wanted.HasField("state"):
            state = _SANDBOX_STATES.get(wanted.state.state)
            if state is None:  # a state this schema does not name matches nothing
                return cri_pb2.ListPodSandboxResponse()
        sandboxes = self._pods.list_sandboxes(
            id_prefix=wanted.id, state=state, labels=dict(wanted.label_selector)
        )
        return self.summaries.list_sandboxes(sandboxes, self._pods.sandbox_ids())

    async def UpdatePodSandboxResources(
        self, request: cri_pb2.UpdatePodSandboxResourcesRequest, context: Context
    ) -> cri_pb2.UpdatePodSandboxResourcesResponse:
        await self._pods.update_sandbox_resources(
            request.pod_sandbox_id, resources(request.overhead), resources(request.resources)
        )
        return cri_pb2.UpdatePodSandboxResourcesResponse()
