"""The relist messages kept per object: reused while nothing they show changed."""

from __future__ import annotations

from dataclasses import replace

from crisp.api import cri_pb2
from crisp.pods.model import ContainerState, Resources, SandboxState
from crisp.server.summaries import Summaries
from tests.unit.test_pods_store import container, sandbox


def test_a_container_message_follows_its_state_and_config() -> None:
    summaries = Summaries()
    first = container("c1")
    live = {"c1"}
    (created,) = summaries.containers([first], live)
    assert created.state == cri_pb2.CONTAINER_CREATED and created.metadata.name == "c"
    assert summaries.containers([first], live)[0] is created  # kept, not rebuilt

    first.state = ContainerState.RUNNING
    (running,) = summaries.containers([first], live)
    assert running.state == cri_pb2.CONTAINER_RUNNING

    first.config = replace(first.config, resources=Resources(cpu_shares=512))
    assert summaries.containers([first], live)[0] is not running
    assert summaries.containers([first], live)[0] == running  # same content, rebuilt once


def test_a_sandbox_message_follows_its_state() -> None:
    summaries = Summaries()
    pod = sandbox("s1")
    (ready,) = summaries.sandboxes([pod], {"s1"})
    assert ready.state == cri_pb2.SANDBOX_READY and ready.runtime_handler == "runc"
    pod.state = SandboxState.NOTREADY
    assert summaries.sandboxes([pod], {"s1"})[0].state == cri_pb2.SANDBOX_NOTREADY


def test_messages_of_removed_containers_are_swept() -> None:
    summaries = Summaries()
    for index in range(200):
        summaries.containers([container(f"gone{index}")], {f"gone{index}"})
    summaries.containers([container("kept")], {"kept"})
    assert len(summaries._containers) <= 1 + 64


def test_a_relist_with_nothing_changed_is_answered_with_the_previous_response() -> None:
    summaries = Summaries()
    one, two = container("c1"), container("c2")
    live = {"c1", "c2"}
    first = summaries.list_containers([one, two], live)
    assert [c.id for c in first.containers] == ["c1", "c2"]
    assert summaries.list_containers([one, two], live) is first
    assert [c.id for c in summaries.list_containers([one], live).containers] == ["c1"]
    two.state = ContainerState.EXITED
    again = summaries.list_containers([one, two], live)
    assert again is not first and again.containers[1].state == cri_pb2.CONTAINER_EXITED
    pods = summaries.list_sandboxes([sandbox("s1")], {"s1"})
    assert [p.id for p in pods.items] == ["s1"]


def test_a_container_status_is_kept_until_what_it_shows_changes() -> None:
    summaries = Summaries()
    one = container("c1")
    live = {"c1"}
    limits = Resources(cpu_shares=2)
    first = summaries.container_status(one, limits, live)
    assert first.status.id == "c1" and first.status.resources.linux.cpu_shares == 2
    assert summaries.container_status(one, limits, live) is first

    one.state, one.started_at = ContainerState.RUNNING, 5
    running = summaries.container_status(one, limits, live)
    assert running.status.state == cri_pb2.CONTAINER_RUNNING and running.status.started_at == 5
    one.state, one.exit_code, one.reason = ContainerState.EXITED, 3, "Error"
    exited = summaries.container_status(one, limits, live)
    assert (exited.status.exit_code, exited.status.reason) == (3, "Error")
    moved = summaries.container_status(one, Resources(cpu_shares=4), live)
    assert moved.status.resources.linux.cpu_shares == 4  # new limits in force


def test_statuses_of_removed_containers_are_swept() -> None:
    summaries = Summaries()
    for index in range(200):
        summaries.container_status(container(f"gone{index}"), Resources(), {f"gone{index}"})
    summaries.container_status(container("kept"), Resources(), {"kept"})
    assert len(summaries._statuses) <= 1 + 64
