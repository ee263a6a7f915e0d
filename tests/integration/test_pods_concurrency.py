"""Many pods with several containers each, driven by 20 concurrent clients, without errors.

This daemon gives every pod an infra process (``pod.infra_container``), so the infra path is
exercised under load too; the other modules run infra-less pods.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from crisp.api import cri_pb2
from tests.support.pods import PodsEnv, conmon_pids, mounts_under, pods_environment

pytestmark = pytest.mark.integration

CLIENTS = 20
CONTAINERS_PER_POD = 3


@pytest.fixture(scope="module")
def env() -> Iterator[PodsEnv]:
    with tempfile.TemporaryDirectory(prefix="crisp-many-") as base, \
            pods_environment(Path(base), infra_container=True) as environment:
        yield environment


def pod_life(env: PodsEnv, index: int) -> tuple[str, list[int]]:
    """One client's pod: containers that run, answer an exec, exit with their own codes."""
    config = env.pod_config(f"many-{index}", labels={"suite": "many"})
    pod_id = env.run_pod(config)
    codes = []
    ids = []
    for number in range(CONTAINERS_PER_POD):
        script = f"echo pod {index} container {number}; sleep 30"
        ids.append(env.run_container(pod_id, env.container_config(f"c{number}",
                                                                  ["sh", "-c", script])))
    for number, container_id in enumerate(ids):
        result = env.runtime.ExecSync(cri_pb2.ExecSyncRequest(
            container_id=container_id, cmd=["sh", "-c", f"exit {number + index}"], timeout=20))
        codes.append(result.exit_code)
    for container_id in ids:
        env.runtime.StopContainer(cri_pb2.StopContainerRequest(container_id=container_id,
                                                               timeout=0))
        assert env.status(container_id).status.exit_code == 137
    return pod_id, codes


def test_twenty_clients_at_once(env: PodsEnv) -> None:
    with ThreadPoolExecutor(CLIENTS) as pool:
        results = list(pool.map(lambda i: pod_life(env, i), range(CLIENTS)))
    for index, (pod_id, codes) in enumerate(results):
        assert codes == [index + n for n in range(CONTAINERS_PER_POD)]
        info = json.loads(env.runtime.PodSandboxStatus(cri_pb2.PodSandboxStatusRequest(
            pod_sandbox_id=pod_id, verbose=True)).info["info"])
        assert info["pid"] > 0, "every pod has its infra process"

    listed = env.runtime.ListPodSandbox(cri_pb2.ListPodSandboxRequest(
        filter=cri_pb2.PodSandboxFilter(label_selector={"suite": "many"}))).items
    assert {p.id for p in listed} == {pod_id for pod_id, _ in results}
    containers = env.runtime.ListContainers(cri_pb2.ListContainersRequest()).containers
    assert len(containers) == CLIENTS * CONTAINERS_PER_POD
    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(env.remove_pod, [pod_id for pod_id, _ in results]))
    assert not env.runtime.ListPodSandbox(cri_pb2.ListPodSandboxRequest()).items
    assert not env.runtime.ListContainers(cri_pb2.ListContainersRequest()).containers
    assert not conmon_pids(env.daemon.base)
    assert not mounts_under(env.daemon.base / "run" / "pods")
    assert not mounts_under(env.daemon.base / "root" / "containers")
