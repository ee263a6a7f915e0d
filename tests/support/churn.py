"""Pods coming and going while lists, stats and statuses are polled, as a kubelet does.

Shared by the churn test (seconds, in CI) and bench/soak.py (half an hour): client threads
run whole pod lifecycles with an exec, one poller lists and reads stats the whole time.
Every call's latency and every failure is recorded by call name. A Status call that answers
NOT_FOUND for an object removed since it was listed is what the kubelet expects, so it is
counted apart from errors; a List call must never fail.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

from crisp.api import cri_pb2
from tests.support.pods import PodsEnv


@dataclass
class Calls:
    """Latencies and failures per call name, filled by many threads."""

    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: Counter[str] = field(default_factory=Counter)
    error_samples: dict[str, str] = field(default_factory=dict)
    gone: Counter[str] = field(default_factory=Counter)
    lifecycles: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def call(self, name: str, method: Callable[..., Any], request: Any,
             *, may_be_gone: bool = False) -> Any:
        started = time.monotonic()
        try:
            answer = method(request, timeout=60)
        except ValueError as error:  # a channel the test closed (it killed the daemon)
            with self._lock:
                self.errors[name] += 1
                self.error_samples.setdefault(name, f"client: {error}")
            return None
        except grpc.RpcError as error:
            code = error.code()  # type: ignore[attr-defined]
            with self._lock:
                if may_be_gone and code == grpc.StatusCode.NOT_FOUND:
                    self.gone[name] += 1
                    return None
                self.errors[name] += 1
                self.error_samples.setdefault(
                    name, f"{code.name}: {error.details()}")  # type: ignore[attr-defined]
            return None
        with self._lock:
            self.latencies[name].append(time.monotonic() - started)
        return answer

    def finished_lifecycle(self) -> None:
        with self._lock:
            self.lifecycles += 1

    @property
    def total_errors(self) -> int:
        return sum(self.errors.values())


def lifecycle(env: PodsEnv, calls: Calls, name: str) -> None:
    """One pod from RunPodSandbox to RemovePodSandbox, with a container and an exec."""
    runtime = env.runtime
    pod_config = env.pod_config(name)
    ran = calls.call("RunPodSandbox", runtime.RunPodSandbox,
                     cri_pb2.RunPodSandboxRequest(config=pod_config))
    if ran is None:
        return
    pod_id = ran.pod_sandbox_id
    created = calls.call("CreateContainer", runtime.CreateContainer, cri_pb2.CreateContainerRequest(
        pod_sandbox_id=pod_id, sandbox_config=pod_config,
        config=env.container_config("work", ["sleep", "3600"])))
    if created is not None:
        container_id = created.container_id
        calls.call("StartContainer", runtime.StartContainer,
                   cri_pb2.StartContainerRequest(container_id=container_id))
        calls.call("ExecSync", runtime.ExecSync, cri_pb2.ExecSyncRequest(
            container_id=container_id, cmd=["cat", "/proc/self/status"], timeout=10))
        calls.call("StopContainer", runtime.StopContainer,
                   cri_pb2.StopContainerRequest(container_id=container_id, timeout=1))
        calls.call("RemoveContainer", runtime.RemoveContainer,
                   cri_pb2.RemoveContainerRequest(container_id=container_id))
    calls.call("StopPodSandbox", runtime.StopPodSandbox,
               cri_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id))
    calls.call("RemovePodSandbox", runtime.RemovePodSandbox,
               cri_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
    calls.finished_lifecycle()


def poll(env: PodsEnv, calls: Calls) -> None:
    """One round of what the kubelet polls: lists, stats, and the status of each object."""
    runtime = env.runtime
    pods = calls.call("ListPodSandbox", runtime.ListPodSandbox, cri_pb2.ListPodSandboxRequest())
    containers = calls.call("ListContainers", runtime.ListContainers,
                            cri_pb2.ListContainersRequest())
    calls.call("ListContainerStats", runtime.ListContainerStats,
               cri_pb2.ListContainerStatsRequest())
    calls.call("ListPodSandboxStats", runtime.ListPodSandboxStats,
               cri_pb2.ListPodSandboxStatsRequest())
    calls.call("ListPodSandboxMetrics", runtime.ListPodSandboxMetrics,
               cri_pb2.ListPodSandboxMetricsRequest())
    calls.call("Status", runtime.Status, cri_pb2.StatusRequest())
    calls.call("ImageFsInfo", env.daemon.images.ImageFsInfo, cri_pb2.ImageFsInfoRequest())
    for pod in pods.items if pods is not None else []:
        calls.call("PodSandboxStatus", runtime.PodSandboxStatus,
                   cri_pb2.PodSandboxStatusRequest(pod_sandbox_id=pod.id), may_be_gone=True)
        calls.call("PodSandboxStats", runtime.PodSandboxStats,
                   cri_pb2.PodSandboxStatsRequest(pod_sandbox_id=pod.id), may_be_gone=True)
    for container in containers.containers if containers is not None else []:
        calls.call("ContainerStatus", runtime.ContainerStatus,
                   cri_pb2.ContainerStatusRequest(container_id=container.id), may_be_gone=True)
        calls.call("ContainerStats", runtime.ContainerStats,
                   cri_pb2.ContainerStatsRequest(container_id=container.id), may_be_gone=True)


def churn(env: PodsEnv, seconds: float, *, clients: int, poll_every: float = 0.05,
          calls: Calls | None = None,
          tick: Callable[[Calls], None] | None = None) -> Calls:
    """Run ``clients`` lifecycle loops and one poller for ``seconds``; ``tick`` (if given) is
    called about once a second from the calling thread, e.g. to sample the daemon."""
    calls = calls or Calls()
    deadline = time.monotonic() + seconds
    names = itertools.count()

    def client(number: int) -> None:
        while time.monotonic() < deadline:
            lifecycle(env, calls, f"churn-{number}-{next(names)}")

    def poller() -> None:
        while time.monotonic() < deadline:
            poll(env, calls)
            time.sleep(poll_every)

    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(clients)]
    threads.append(threading.Thread(target=poller, daemon=True))
    for thread in threads:
        thread.start()
    while any(thread.is_alive() for thread in threads):
        if tick is not None:
            tick(calls)
        for thread in threads:
            thread.join(timeout=1.0 / len(threads))
    return calls
