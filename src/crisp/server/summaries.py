"""The messages of the kubelet's polls (ListContainers, ListPodSandbox, ContainerStatus), kept.

The kubelet relists every pod and container every second. Building a CRI message for each of
220 containers took about 3 ms a call, copying kept ones a quarter of that, and answering
the previous response again when every message in it is still the one kept nothing. A kept
message is rebuilt as soon as anything it shows may have changed: the state, or the config or
image record, which are frozen and replaced rather than changed in place.

ContainerStatus is the most frequent call (every container, every few seconds): its answer
is kept per container too, until a field it shows or the limits in force differ.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from typing import Any, Generic, TypeVar

from crisp.api import cri_pb2
from crisp.pods.model import Container, Resources, Sandbox
from crisp.server.pod_convert import (
    container_status,
    container_summary,
    sandbox_metadata,
    sandbox_state,
)

_SLACK = 64
"""Messages of removed objects allowed before the table is swept of them."""

Item = TypeVar("Item", bound=Container | Sandbox)
Message = TypeVar("Message")
Response = TypeVar("Response")


class _Kept(Generic[Item, Message, Response]):
    """The kept messages of one kind of object, and the last response built from them."""

    def __init__(self, basis: Callable[[Item], tuple[Any, ...]],
                 build: Callable[[Item], Message],
                 respond: Callable[[list[Message]], Response]) -> None:
        self._basis = basis
        self._build = build
        self._respond = respond
        self._entries: dict[str, tuple[tuple[Any, ...], Message]] = {}
        self._last: tuple[list[Message], Response | None] = ([], None)

    def __len__(self) -> int:
        return len(self._entries)

    def messages(self, items: Iterable[Item], live: Collection[str]) -> list[Message]:
        """Messages of ``items``; ``live``: the ids of every object of this kind there is."""
        found = []
        kept = self._entries
        for item in items:
            basis = self._basis(item)
            entry = kept.get(item.id)
            if entry is None or entry[0] != basis:  # equal tuples of the same objects: fast
                entry = kept[item.id] = (basis, self._build(item))
            found.append(entry[1])
        if len(kept) > len(live) + _SLACK:
            self._entries = {k: v for k, v in kept.items() if k in live}
        return found

    def response(self, items: Iterable[Item], live: Collection[str]) -> Response:
        """The list answer: the previous one again if it still holds."""
        messages = self.messages(items, live)
        last, response = self._last
        if response is None or not _all_same(last, messages):
            response = self._respond(messages)
            self._last = (messages, response)
        return response


class Summaries:
    """One kept message per container and per sandbox, with what it was built from."""

    def __init__(self) -> None:
        self._containers: _Kept[Container, cri_pb2.Container, cri_pb2.ListContainersResponse] = (
            _Kept(lambda c: (c.state, c.config, c.image), container_summary,
                  lambda messages: cri_pb2.ListContainersResponse(containers=messages)))
        self._sandboxes: _Kept[Sandbox, cri_pb2.PodSandbox, cri_pb2.ListPodSandboxResponse] = (
            _Kept(lambda s: (s.state, s.config, s.runtime_handler), _sandbox_summary,
                  lambda messages: cri_pb2.ListPodSandboxResponse(items=messages)))
        self._statuses: dict[str, tuple[tuple[Any, ...], cri_pb2.ContainerStatusResponse]] = {}

    def container_status(self, container: Container, limits: Resources,
                         live: Collection[str]) -> cri_pb2.ContainerStatusResponse:
        """ContainerStatus' answer without ``info``: the kept one while it still holds."""
        basis = _status_basis(container, limits)
        entry = self._statuses.get(container.id)
        if entry is None or entry[0] != basis:  # equal tuples of the same objects: fast
            response = cri_pb2.ContainerStatusResponse(status=container_status(container, limits))
            entry = self._statuses[container.id] = (basis, response)
            if len(self._statuses) > len(live) + _SLACK:
                self._statuses = {k: v for k, v in self._statuses.items() if k in live}
        return entry[1]

    def list_containers(self, containers: Iterable[Container],
                        live: Collection[str]) -> cri_pb2.ListContainersResponse:
        """ListContainers' answer: the previous one again if it still holds."""
        return self._containers.response(containers, live)

    def list_sandboxes(self, sandboxes: Iterable[Sandbox],
                       live: Collection[str]) -> cri_pb2.ListPodSandboxResponse:
        """ListPodSandbox's answer: the previous one again if it still holds."""
        return self._sandboxes.response(sandboxes, live)

    def containers(self, containers: Iterable[Container],
                   live: Collection[str]) -> list[cri_pb2.Container]:
        """Messages of ``containers``; ``live``: the ids of every container there is."""
        return self._containers.messages(containers, live)

    def sandboxes(self, sandboxes: Iterable[Sandbox],
                  live: Collection[str]) -> list[cri_pb2.PodSandbox]:
        """Messages of ``sandboxes``; ``live``: the ids of every sandbox there is."""
        return self._sandboxes.messages(sandboxes, live)


def _all_same(old: list[Any], new: list[Any]) -> bool:
    return len(old) == len(new) and all(a is b for a, b in zip(old, new, strict=True))


def _status_basis(container: Container, limits: Resources) -> tuple[Any, ...]:
    """Every field of the container that its status shows, besides the immutable ones."""
    return (container.state, container.started_at, container.finished_at, container.exit_code,
            container.reason, container.message, container.config, container.image, limits,
            container.user, container.stop_signal, container.log_path, container.image_volumes)


def _sandbox_summary(sandbox: Sandbox) -> cri_pb2.PodSandbox:
    return cri_pb2.PodSandbox(
        id=sandbox.id, metadata=sandbox_metadata(sandbox), state=sandbox_state(sandbox),
        created_at=sandbox.created_at, labels=sandbox.config.labels,
        annotations=sandbox.config.annotations, runtime_handler=sandbox.runtime_handler,
    )
