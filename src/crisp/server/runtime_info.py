"""Version, Status, RuntimeConfig and UpdateRuntimeConfig: what the kubelet asks of the node."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import sys
from typing import Any

import grpc

from crisp import __version__, steps
from crisp.api import cri_pb2
from crisp.oci.handlers import handler_features
from crisp.server.services import Services

log = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]

CRI_API_VERSION = "v1"
# The kubelet reads VersionResponse.version as the version of the CRI API the runtime speaks.
KUBELET_API_VERSION = "0.1.0"


class RuntimeInfoCalls:
    """RPCs about the runtime as a whole rather than one pod or container."""

    services: Services

    async def Version(
        self, request: cri_pb2.VersionRequest, context: Context
    ) -> cri_pb2.VersionResponse:
        return cri_pb2.VersionResponse(
            version=KUBELET_API_VERSION,
            runtime_name="crisp",
            runtime_version=__version__,
            runtime_api_version=CRI_API_VERSION,
        )

    async def Status(
        self, request: cri_pb2.StatusRequest, context: Context
    ) -> cri_pb2.StatusResponse:
        config = self.services.live.current
        ready, reason, message = self.services.pods.readiness()
        runtime = cri_pb2.RuntimeCondition(
            type="RuntimeReady", status=ready, reason=reason, message=message
        )
        network_ready, reason, message = await self.services.network.status()
        network = cri_pb2.RuntimeCondition(
            type="NetworkReady", status=network_ready, reason=reason, message=message
        )
        # "" is the default handler (pods that name none), as CRI and the kubelet expect it
        # listed; each configured handler follows under its own name, with its own features.
        names = ["", *sorted(config.runtimes)]
        features = await asyncio.gather(
            *(handler_features(config.runtime(name)) for name in names)
        )
        response = cri_pb2.StatusResponse(
            status=cri_pb2.RuntimeStatus(conditions=[runtime, network]),
            runtime_handlers=[
                cri_pb2.RuntimeHandler(name=name, features=cri_pb2.RuntimeHandlerFeatures(
                    recursive_read_only_mounts=found.recursive_read_only_mounts,
                    user_namespaces=found.user_namespaces,
                ))
                for name, found in zip(names, features, strict=True)
            ],
            # SupplementalGroupsPolicy (Merge and Strict) and ContainerStatus.user.
            features=cri_pb2.RuntimeFeatures(supplemental_groups_policy=True),
        )
        if request.verbose:
            response.info["config"] = json.dumps(dataclasses.asdict(config), sort_keys=True)
            # Time per step of pod and container starts since boot (bench/lifecycle.py).
            response.info["steps"] = json.dumps(steps.totals(), sort_keys=True)
            if _tracing():  # PYTHONTRACEMALLOC=1: where the heap went
                response.info["tracemalloc"] = json.dumps(_heap_by_file())
        return response

    async def RuntimeConfig(
        self, request: cri_pb2.RuntimeConfigRequest, context: Context
    ) -> cri_pb2.RuntimeConfigResponse:
        driver = {"cgroupfs": cri_pb2.CGROUPFS, "systemd": cri_pb2.SYSTEMD}[
            self.services.live.current.cgroup_manager
        ]
        return cri_pb2.RuntimeConfigResponse(
            linux=cri_pb2.LinuxRuntimeConfiguration(cgroup_driver=driver)
        )

    async def UpdateRuntimeConfig(
        self, request: cri_pb2.UpdateRuntimeConfigRequest, context: Context
    ) -> cri_pb2.UpdateRuntimeConfigResponse:
        cidr = request.runtime_config.network_config.pod_cidr
        if cidr:
            await self.services.network.update_pod_cidr(cidr)
        return cri_pb2.UpdateRuntimeConfigResponse()


def _tracing() -> bool:
    """Whether tracemalloc traces; its module (0.4 MiB) is imported only when it does."""
    if not (os.environ.get("PYTHONTRACEMALLOC") or "tracemalloc" in sys._xoptions):
        return False
    import tracemalloc

    return tracemalloc.is_tracing()


def _heap_by_file(top: int = 15) -> list[list[object]]:
    """The Python heap's largest holders, by source file: [[file, KiB, blocks], ...]."""
    import tracemalloc

    stats = tracemalloc.take_snapshot().statistics("filename")
    return [[str(stat.traceback[0].filename), stat.size // 1024, stat.count]
            for stat in stats[:top]]
