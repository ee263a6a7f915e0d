"""Exec, Attach and PortForward: validate, then answer with a URL on the streaming server.

The streams themselves run on crisp's streaming server (``crisp.streaming``); these RPCs only
check that the target exists and runs, and hand out the single-use URL.
"""

from __future__ import annotations

from typing import Any

import grpc

from crisp.api import cri_pb2
from crisp.errors import FailedPrecondition
from crisp.pods import PodService, SandboxState
from crisp.server.services import Services
from crisp.streaming.requests import AttachRequest, ExecRequest, PortForwardRequest

Context = grpc.aio.ServicerContext[Any, Any]


class StreamingCalls:
    """Exec, Attach, PortForward."""

    services: Services

    @property
    def _pods(self) -> PodService:
        return self.services.pods

    async def Exec(self, request: cri_pb2.ExecRequest, context: Context
                   ) -> cri_pb2.ExecResponse:
        container = self._pods.running_container(request.container_id)
        url = await self.services.streaming.exec_url(ExecRequest(
            container_id=container.id, cmd=tuple(request.cmd), tty=request.tty,
            stdin=request.stdin, stdout=request.stdout, stderr=request.stderr))
        return cri_pb2.ExecResponse(url=url)

    async def Attach(self, request: cri_pb2.AttachRequest, context: Context
                     ) -> cri_pb2.AttachResponse:
        container = self._pods.running_container(request.container_id)
        url = await self.services.streaming.attach_url(AttachRequest(
            container_id=container.id, tty=request.tty, stdin=request.stdin,
            stdout=request.stdout, stderr=request.stderr))
        return cri_pb2.AttachResponse(url=url)

    async def PortForward(self, request: cri_pb2.PortForwardRequest, context: Context
                          ) -> cri_pb2.PortForwardResponse:
        sandbox = self._pods.sandbox(request.pod_sandbox_id)
        if sandbox.state != SandboxState.READY:
            raise FailedPrecondition(
                f"pod sandbox {sandbox.id} is not ready: ports are forwarded only into a "
                "running pod")
        url = await self.services.streaming.port_forward_url(PortForwardRequest(
            sandbox_id=sandbox.id, ports=tuple(request.port)))
        return cri_pb2.PortForwardResponse(url=url)
