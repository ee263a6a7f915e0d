"""Crash safety: crisp is SIGKILLed inside each operation and restarted.

After every restart the records must match the world: what a client sees exists and works,
and nothing else is left (mounts, namespace pins, conmon processes, runc state, files).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from crisp.api import cri_pb2
from tests.support.pods import (
    PodsEnv,
    assert_no_leaks,
    known_ids,
    mounts_under,
    pods_environment,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def env() -> Iterator[PodsEnv]:
    with tempfile.TemporaryDirectory(prefix="crisp-crash-") as base, \
            pods_environment(Path(base)) as environment:
        yield environment


def crash_inside(env: PodsEnv, failpoint: str, operation: Callable[[], object]) -> None:
    """Restart crisp armed with ``failpoint``, run ``operation`` into it, restart clean."""
    daemon = env.daemon
    daemon.stop()
    os.environ["CRISP_FAILPOINTS"] = failpoint
    try:
        daemon.start()
    finally:
        del os.environ["CRISP_FAILPOINTS"]
    with pytest.raises(grpc.RpcError) as error:
        operation()
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE, error.value.details()
    assert daemon.process is not None
    daemon.process.wait(timeout=10)
    daemon.kill()  # closes the channel
    daemon.start()


def test_containers_survive_a_crash_and_exits_during_it_are_recorded(env: PodsEnv) -> None:
    pod_id = env.run_pod()
    long_running = env.run_container(pod_id, env.container_config("long", ["sleep", "3600"]))
    short = env.run_container(pod_id, env.container_config("short", ["sh", "-c",
                                                                      "sleep 1; exit 42"]))
    pid = json.loads(env.status(long_running, verbose=True).info["info"])["pid"]
    env.daemon.kill()
    time.sleep(1.5)  # the short one exits while crisp is down
    env.daemon.start()
    status = env.status(short).status
    assert (status.state, status.exit_code, status.reason) == (cri_pb2.CONTAINER_EXITED, 42,
                                                               "Error")
    assert status.finished_at > status.started_at
    running = env.status(long_running, verbose=True)
    assert running.status.state == cri_pb2.CONTAINER_RUNNING
    assert json.loads(running.info["info"])["pid"] == pid
    # The restarted daemon watches the survivor: its exit is recorded too.
    env.runtime.StopContainer(cri_pb2.StopContainerRequest(container_id=long_running,
                                                           timeout=0))
    assert env.status(long_running).status.exit_code == 137
    assert_no_leaks(env)
    env.remove_pod(pod_id)
    assert_no_leaks(env)


@pytest.mark.parametrize("failpoint", ["sandbox.run.namespaces", "sandbox.run.network"])
def test_crash_inside_run_pod_sandbox_rolls_back(env: PodsEnv, failpoint: str) -> None:
    config = env.pod_config(f"crash-{failpoint.replace('.', '-')}")
    crash_inside(env, failpoint, lambda: env.run_pod(config))
    pods, _, _ = known_ids(env)
    assert not pods
    assert_no_leaks(env)
    env.remove_pod(env.run_pod(config))  # the name is free
    assert_no_leaks(env)


def test_crash_while_starting_the_infra_rolls_back(env: PodsEnv) -> None:
    config = env.pod_config("crash-infra", pid=cri_pb2.POD)
    crash_inside(env, "sandbox.run.infra", lambda: env.run_pod(config))
    pods, _, _ = known_ids(env)
    assert not pods
    assert_no_leaks(env)


@pytest.mark.parametrize("failpoint", ["container.create.rootfs", "container.create.monitor",
                                       "container.create.saved"])
def test_crash_inside_create_container(env: PodsEnv, failpoint: str) -> None:
    pod_id = env.run_pod()
    config = env.container_config("crashy", ["sh", "-c", "exit 5"])
    crash_inside(env, failpoint, lambda: env.runtime.CreateContainer(
        cri_pb2.CreateContainerRequest(pod_sandbox_id=pod_id, config=config)))
    _, containers, _ = known_ids(env)
    assert_no_leaks(env)
    if failpoint == "container.create.saved":
        # It was recorded before the crash: it is complete and works.
        (container_id,) = containers
        env.runtime.StartContainer(cri_pb2.StartContainerRequest(container_id=container_id))
        assert env.wait_exited(container_id).exit_code == 5
    else:
        assert not containers
        env.wait_exited(env.run_container(pod_id, config))  # the name is free
    env.remove_pod(pod_id)
    assert_no_leaks(env)


def test_crash_right_after_start_is_reconciled_as_running(env: PodsEnv) -> None:
    pod_id = env.run_pod()
    container_id = env.runtime.CreateContainer(cri_pb2.CreateContainerRequest(
        pod_sandbox_id=pod_id, config=env.container_config("started", ["sleep", "3600"]),
    )).container_id
    crash_inside(env, "container.start.started", lambda: env.runtime.StartContainer(
        cri_pb2.StartContainerRequest(container_id=container_id)))
    assert env.status(container_id).status.state == cri_pb2.CONTAINER_RUNNING
    assert_no_leaks(env)
    env.remove_pod(pod_id)
    assert_no_leaks(env)


@pytest.mark.parametrize("failpoint", ["container.destroy.runtime",
                                       "container.remove.destroyed"])
def test_crash_inside_remove_container_finishes_it(env: PodsEnv, failpoint: str) -> None:
    pod_id = env.run_pod()
    container_id = env.run_container(pod_id, env.container_config("doomed", ["sleep", "3600"]))
    crash_inside(env, failpoint, lambda: env.runtime.RemoveContainer(
        cri_pb2.RemoveContainerRequest(container_id=container_id)))
    _, containers, _ = known_ids(env)
    assert container_id not in containers
    assert_no_leaks(env)
    env.remove_pod(pod_id)
    assert_no_leaks(env)


@pytest.mark.parametrize("failpoint", ["sandbox.stop.containers", "sandbox.stop.released"])
def test_crash_inside_stop_pod_sandbox_then_stop_again(env: PodsEnv, failpoint: str) -> None:
    pod_id = env.run_pod()
    env.run_container(pod_id, env.container_config("stopping", ["sleep", "3600"]))
    crash_inside(env, failpoint, lambda: env.runtime.StopPodSandbox(
        cri_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id)))
    assert_no_leaks(env)
    env.runtime.StopPodSandbox(cri_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id))
    status = env.runtime.PodSandboxStatus(
        cri_pb2.PodSandboxStatusRequest(pod_sandbox_id=pod_id)).status
    assert status.state == cri_pb2.SANDBOX_NOTREADY
    assert not [m for m in mounts_under(env.daemon.base / "run") if pod_id in m]
    env.remove_pod(pod_id)
    assert_no_leaks(env)


@pytest.mark.parametrize("failpoint", ["sandbox.remove.containers", "sandbox.remove.files"])
def test_crash_inside_remove_pod_sandbox_finishes_it(env: PodsEnv, failpoint: str) -> None:
    pod_id = env.run_pod()
    env.run_container(pod_id, env.container_config("inside", ["sleep", "3600"]))
    env.runtime.StopPodSandbox(cri_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id))
    crash_inside(env, failpoint, lambda: env.runtime.RemovePodSandbox(
        cri_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_id)))
    pods, containers, _ = known_ids(env)
    assert pod_id not in pods and not containers
    assert_no_leaks(env)
