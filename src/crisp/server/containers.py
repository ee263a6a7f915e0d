"""The container RPCs of the RuntimeService: lifecycle, status, list, logs, exec and events."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from crisp.api import cri_pb2
from crisp.errors import InvalidArgument
from crisp.pods import EventKind, PodService
from crisp.server.pod_convert import (
    CONTAINER_STATES_BY_CODE,
    container_config,
    container_status,
    resources,
    sandbox_status,
)
from crisp.server.services import Services
from crisp.server.summaries import Summaries

Context = grpc.aio.ServicerContext[Any, Any]

_EVENT_TYPES: dict[EventKind, cri_pb2.ContainerEventType] = {
    EventKind.CREATED: cri_pb2.CONTAINER_CREATED_EVENT,
    EventKind.STARTED: cri_pb2.CONTAINER_STARTED_EVENT,
    EventKind.STOPPED: cri_pb2.CONTAINER_STOPPED_EVENT,
    EventKind.DELETED: cri_pb2.CONTAINER_DELETED_EVENT,
}


class ContainerCalls:
    """CreateContainer ... GetContainerEvents."""

    services: Services
    summaries: Summaries

    @property
    def _pods(self) -> PodService:
        return self.services.pods

    async def CreateContainer(
        self, request: cri_pb2.CreateContainerRequest, context: Context
    ) -> cri_pb2.CreateContainerResponse:
        if not request.HasField("config"):
            raise InvalidArgument("CreateContainer needs a container config")
        container = await self._pods.create_container(
            request.pod_sandbox_id, container_config(request.config)
        )
        return cri_pb2.CreateContainerResponse(container_id=container.id)

    async def StartContainer(
        self, request: cri_pb2.StartContainerRequest, context: Context
    ) -> cri_pb2.StartContainerResponse:
        await self._pods.start_container(request.container_id)
        return cri_pb2.StartContainerResponse()

    async def StopContainer(
        self, request: cri_pb2.StopContainerRequest, context: Context
    ) -> cri_pb2.StopContainerResponse:
        if request.timeout < 0:
            raise InvalidArgument(f"stop timeout {request.timeout} must not be negative")
        await self._pods.stop_container(request.container_id, float(request.timeout))
        return cri_pb2.StopContainerResponse()

    async def RemoveContainer(
        self, request: cri_pb2.RemoveContainerRequest, context: Context
    ) -> cri_pb2.RemoveContainerResponse:
        await self._pods.remove_container(request.container_id)
        return cri_pb2.RemoveContainerResponse()

    async def ContainerStatus(
        self, request: cri_pb2.ContainerStatusRequest, context: Context
    ) -> cri_pb2.ContainerStatusResponse:
        container = self._pods.container(request.container_id)
        limits = await self._pods.container_resources(container)
        kept = self.summaries.container_status(container, limits, self._pods.container_ids())
        if not request.verbose:
            return kept
        response = cri_pb2.ContainerStatusResponse()
        response.CopyFrom(kept)  # the kept one is shared: never add to it
        response.info.update(self._pods.container_info(container))
        return response

    async def ListContainers(
        self, request: cri_pb2.ListContainersRequest, context: Context
    ) -> cri_pb2.ListContainersResponse:
        wanted = request.filter
        state = None
        if wanted.HasField("state"):
            state = CONTAINER_STATES_BY_CODE.get(wanted.state.state)
            if state is None:  # a state this schema does not name matches nothing
                return cri_pb2.ListContainersResponse()
        containers = self._pods.list_containers(
            id_prefix=wanted.id, state=state, sandbox_id=wanted.pod_sandbox_id,
            labels=dict(wanted.label_selector),
        )
        return self.summaries.list_containers(containers, self._pods.container_ids())

    async def UpdateContainerResources(
        self, request: cri_pb2.UpdateContainerResourcesRequest, context: Context
    ) -> cri_pb2.UpdateContainerResourcesResponse:
        await self._pods.update_resources(request.container_id, resources(request.linux))
        return cri_pb2.UpdateContainerResourcesResponse()

    async def ReopenContainerLog(
        self, request: cri_pb2.ReopenContainerLogRequest, context: Context
    ) -> cri_pb2.ReopenContainerLogResponse:
        await self._pods.reopen_log(request.container_id)
        return cri_pb2.ReopenContainerLogResponse()

    async def ExecSync(
        self, request: cri_pb2.ExecSyncRequest, context: Context
    ) -> cri_pb2.ExecSyncResponse:
        if request.timeout < 0:
            raise InvalidArgument(f"exec timeout {request.timeout} must not be negative")
        result = await self._pods.exec_sync(request.container_id, list(request.cmd),
                                            float(request.timeout))
        return cri_pb2.ExecSyncResponse(stdout=result.stdout, stderr=result.stderr,
                                        exit_code=result.exit_code)

    async def GetContainerEvents(
        self, request: cri_pb2.GetEventsRequest, context: Context
    ) -> AsyncIterator[cri_pb2.ContainerEventResponse]:
        async for event in self._pods.events():
            response = cri_pb2.ContainerEventResponse(
                container_id=event.object_id,
                container_event_type=_EVENT_TYPES[event.kind],
                created_at=event.created_at,
                containers_statuses=[container_status(c) for c in event.containers],
            )
            if event.sandbox is not None:
                response.pod_sandbox_status.CopyFrom(sandbox_status(event.sandbox))
            yield response
