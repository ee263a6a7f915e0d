"""The messages of the kubelet's relists (ListContainers, ListPodSandbox), kept per object.

The kubelet relists every pod and container every second. Building a CRI message for each of
220 containers took about 3 ms a call, copying kept ones a quarter of that, and answering
the previous response again when every message in it is still the one kept nothing. A kept
message is rebuilt as soon as anything it shows may have changed: the state, or the config or
image record, which are frozen and replaced rather than changed in place.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Any

from crisp.api import cri_pb2
from crisp.pods.model import Container, Sandbox
from crisp.server.pod_convert import container_summary, sandbox_metadata, sandbox_state

_SLACK = 64
"""Messages of removed objects allowed before the table is swept of them."""


class Summaries:
    """One kept message per container and per sandbox, with what it was built from."""

    def __init__(self) -> None:
        self._containers: dict[str, tuple[tuple[Any, ...], cri_pb2.Container]] = {}
        self._sandboxes: dict[str, tuple[tuple[Any, ...], cri_pb2.PodSandbox]] = {}
        self._last_containers: tuple[list[cri_pb2.Container],
                                     cri_pb2.ListContainersResponse | None] = ([], None)
        self._last_sandboxes: tuple[list[cri_pb2.PodSandbox],
                                    cri_pb2.ListPodSandboxResponse | None] = ([], None)

    def list_containers(self, containers: Iterable[Container],
                        live: Collection[str]) -> cri_pb2.ListContainersResponse:
        """ListContainers' answer: the previous one again if it still holds."""
        messages = self.containers(containers, live)
        last, response = self._last_containers
        if response is None or not _all_same(last, messages):
            response = cri_pb2.ListContainersResponse(containers=messages)
            self._last_containers = (messages, response)
        return response

    def list_sandboxes(self, sandboxes: Iterable[Sandbox],
                       live: Collection[str]) -> cri_pb2.ListPodSandboxResponse:
        """ListPodSandbox's answer: the previous one again if it still holds."""
        messages = self.sandboxes(sandboxes, live)
        last, response = self._last_sandboxes
        if response is None or not _all_same(last, messages):
            response = cri_pb2.ListPodSandboxResponse(items=messages)
            self._last_sandboxes = (messages, response)
        return response

    def containers(self, containers: Iterable[Container],
                   live: Collection[str]) -> list[cri_pb2.Container]:
        """Messages of ``containers``; ``live``: the ids of every container there is."""
        found = []
        kept = self._containers
        for container in containers:
            basis = (container.state, container.config, container.image)
            entry = kept.get(container.id)
            if entry is None or not _same(entry[0], basis):
                entry = kept[container.id] = (basis, container_summary(container))
            found.append(entry[1])
        if len(kept) > len(live) + _SLACK:
            self._containers = {k: v for k, v in kept.items() if k in live}
        return found

    def sandboxes(self, sandboxes: Iterable[Sandbox],
                  live: Collection[str]) -> list[cri_pb2.PodSandbox]:
        """Messages of ``sandboxes``; ``live``: the ids of every sandbox there is."""
        found = []
        kept = self._sandboxes
        for sandbox in sandboxes:
            basis = (sandbox.state, sandbox.config, sandbox.runtime_handler)
            entry = kept.get(sandbox.id)
            if entry is None or not _same(entry[0], basis):
                entry = kept[sandbox.id] = (basis, _sandbox_summary(sandbox))
            found.append(entry[1])
        if len(kept) > len(live) + _SLACK:
            self._sandboxes = {k: v for k, v in kept.items() if k in live}
        return found


def _all_same(old: list[Any], new: list[Any]) -> bool:
    return len(old) == len(new) and all(a is b for a, b in zip(old, new, strict=True))


def _same(old: tuple[Any, ...], new: tuple[Any, ...]) -> bool:
    """The state equal, the rest the very same objects."""
    return old[0] == new[0] and all(a is b for a, b in zip(old[1:], new[1:], strict=True))


def _sandbox_summary(sandbox: Sandbox) -> cri_pb2.PodSandbox:
    return cri_pb2.PodSandbox(
        id=sandbox.id, metadata=sandbox_metadata(sandbox), state=sandbox_state(sandbox),
        created_at=sandbox.created_at, labels=sandbox.config.labels,
        annotations=sandbox.config.annotations, runtime_handler=sandbox.runtime_handler,
    )
