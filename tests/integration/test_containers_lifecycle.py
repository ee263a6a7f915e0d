"""Containers through CRI on a real daemon: process, user, mounts, exits, stop, status, list."""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from crisp.api import cri_pb2
from tests.support import image_builder as ib
from tests.support.pods import PodsEnv, mounts_under, pods_environment, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def env() -> Iterator[PodsEnv]:
    with tempfile.TemporaryDirectory(prefix="crisp-ctrs-") as base, \
            pods_environment(Path(base)) as environment:
        yield environment


@pytest.fixture
def pod(env: PodsEnv) -> Iterator[str]:
    pod_id = env.run_pod()
    yield pod_id
    env.remove_pod(pod_id)


def log_lines(path: str) -> list[str]:
    return [line.split(" ", 3)[3] for line in Path(path).read_text().splitlines()]


def run_to_exit(env: PodsEnv, pod: str, config: cri_pb2.ContainerConfig) -> cri_pb2.ContainerStatus:
    return env.wait_exited(env.run_container(pod, config))


def test_command_and_args_merge_with_the_image_as_the_kubelet_expects(env: PodsEnv,
                                                                      pod: str) -> None:
    # The sleeper image: entrypoint ["sleep"], cmd ["3600"].
    echo = "/bin/echo"
    cases = {
        "image-entrypoint-config-args": ({"args": ["0"]}, []),
        "command-drops-image-cmd": ({"command": [echo]}, [""]),
        "command-and-args": ({"command": [echo], "args": ["a", "b"]}, ["a b"]),
    }
    for name, (fields, expected) in cases.items():
        config = env.container_config(name, image=env.sleeper, **fields)  # type: ignore[arg-type]
        status = run_to_exit(env, pod, config)
        assert status.exit_code == 0, name
        assert log_lines(status.log_path) == expected, name


def test_env_working_dir_and_exit_codes(env: PodsEnv, pod: str) -> None:
    config = env.container_config(
        "envs", ["sh", "-c", 'echo "$GREETING $PATH"; pwd; exit 3'],
        envs=[cri_pb2.KeyValue(key="GREETING", value=b"hello"),
              cri_pb2.KeyValue(key="PATH", value=b"/bin")],
        working_dir="/tmp",
    )
    before = time.time_ns()
    status = run_to_exit(env, pod, config)
    assert log_lines(status.log_path) == ["hello /bin", "/tmp"]
    assert status.exit_code == 3
    assert status.reason == "Error"
    assert before <= status.created_at <= status.started_at <= status.finished_at <= time.time_ns()
    done = run_to_exit(env, pod, env.container_config("done", ["true"]))
    assert (done.exit_code, done.reason) == (0, "Completed")


def test_user_is_resolved_against_the_image(env: PodsEnv, pod: str) -> None:
    def identity(name: str, **security: object) -> tuple[str, cri_pb2.ContainerStatus]:
        config = env.container_config(name, ["sh", "-c", "id -u; id -g; id -G"])
        config.linux.security_context.MergeFrom(
            cri_pb2.LinuxContainerSecurityContext(**security))  # type: ignore[arg-type]
        status = run_to_exit(env, pod, config)
        return " ".join(log_lines(status.log_path)), status

    out, status = identity("by-uid", run_as_user=cri_pb2.Int64Value(value=65534))
    assert out == "65534 65534 65534"
    assert status.user.linux.uid == 65534 and status.user.linux.gid == 65534
    out, _ = identity("by-name", run_as_username="daemon")
    assert out.split()[:2] == ["1", "1"]
    out, _ = identity("with-group", run_as_user=cri_pb2.Int64Value(value=1000),
                      run_as_group=cri_pb2.Int64Value(value=2000), supplemental_groups=[3000])
    assert out == "1000 2000 2000 3000"
    config = env.container_config("nobody-here", ["true"])
    config.linux.security_context.run_as_username = "no-such-user"
    with pytest.raises(grpc.RpcError) as error:
        env.runtime.CreateContainer(cri_pb2.CreateContainerRequest(pod_sandbox_id=pod,
                                                                   config=config))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "no-such-user" in error.value.details()


def _grouped_image(env: PodsEnv) -> str:
    """Busybox whose user app (uid 1000) is a member of group 50000 in /etc/group."""
    etc = (ib.LayerBuilder()
           .file("etc/passwd", "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/:/bin/sh\n")
           .file("etc/group", "root:x:0:\napp:x:1000:\nin-image:x:50000:app\n"))
    image = ib.build_image([ib.make_layer(ib.busybox_rootfs()), ib.make_layer(etc)])
    ib.push_image(env.registry, "test/grouped", "v1", image)
    reference = f"{env.registry.removeprefix('http://')}/test/grouped:v1"
    env.daemon.images.PullImage(cri_pb2.PullImageRequest(image=cri_pb2.ImageSpec(image=reference)))
    return reference


def test_supplemental_groups_policy_merge_and_strict(env: PodsEnv, pod: str) -> None:
    """Merge adds the image's /etc/group memberships to the requested groups, Strict does
    not; ContainerStatus.user reports the groups the process really has."""
    image = _grouped_image(env)
    seen = {}
    for name, policy in (("merge", cri_pb2.Merge), ("strict", cri_pb2.Strict)):
        config = env.container_config(name, ["sh", "-c", "id -G"], image=image)
        config.linux.security_context.MergeFrom(cri_pb2.LinuxContainerSecurityContext(
            run_as_user=cri_pb2.Int64Value(value=1000), supplemental_groups=[1234],
            supplemental_groups_policy=policy))
        status = run_to_exit(env, pod, config)
        user = status.user.linux
        seen[name] = (log_lines(status.log_path), user.uid, user.gid,
                      sorted(user.supplemental_groups))
    assert seen == {"merge": (["1000 1234 50000"], 1000, 1000, [1000, 1234, 50000]),
                    "strict": (["1000 1234"], 1000, 1000, [1000, 1234])}
    status = env.runtime.Status(cri_pb2.StatusRequest())
    assert status.features.supplemental_groups_policy
    bad = env.container_config("bad-policy", ["true"], image=image)
    bad.linux.security_context.supplemental_groups_policy = 7  # type: ignore[assignment]
    with pytest.raises(grpc.RpcError) as error:
        env.runtime.CreateContainer(cri_pb2.CreateContainerRequest(pod_sandbox_id=pod, config=bad))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "supplemental_groups_policy is 7" in error.value.details()


def test_bind_mounts_readonly_and_devices(env: PodsEnv, pod: str, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "in.txt").write_text("from host\n")
    config = env.container_config(
        "mounts",
        ["sh", "-c", "cat /data/in.txt; echo out > /data/out.txt; "
                     "(echo no > /ro/x) 2>/dev/null || echo readonly; "
                     "cat /prop/in.txt; ls -l /dev/mynull | cut -c1"],
        mounts=[cri_pb2.Mount(container_path="/data", host_path=str(shared)),
                cri_pb2.Mount(container_path="/ro", host_path=str(shared), readonly=True),
                cri_pb2.Mount(container_path="/prop", host_path=str(shared),
                              propagation=cri_pb2.PROPAGATION_HOST_TO_CONTAINER)],
        devices=[cri_pb2.Device(container_path="/dev/mynull", host_path="/dev/null",
                                permissions="rwm")],
    )
    status = run_to_exit(env, pod, config)
    assert status.exit_code == 0, log_lines(status.log_path)
    assert log_lines(status.log_path) == ["from host", "readonly", "from host", "c"]
    assert (shared / "out.txt").read_text() == "out\n"
    assert [(m.container_path, m.readonly) for m in status.mounts] == [
        ("/data", False), ("/ro", True), ("/prop", False)]
    assert status.mounts[2].propagation == cri_pb2.PROPAGATION_HOST_TO_CONTAINER


def test_stop_uses_the_image_stop_signal_then_kills(env: PodsEnv, pod: str) -> None:
    trap = ["sh", "-c", "trap 'echo got USR1; exit 0' USR1; echo ready; "
                        "while true; do sleep 0.1; done"]
    graceful = env.run_container(pod, env.container_config("graceful", trap, image=env.sleeper))
    wait_for(lambda: Path(env.status(graceful).status.log_path).read_text().strip(), 10,
             "the trap to be set")
    env.runtime.StopContainer(cri_pb2.StopContainerRequest(container_id=graceful, timeout=10))
    status = env.status(graceful).status
    assert status.state == cri_pb2.CONTAINER_EXITED
    assert status.exit_code == 0
    assert log_lines(status.log_path)[-1] == "got USR1"
    assert status.stop_signal == cri_pb2.SIGNAL_SIGUSR1

    stubborn = env.run_container(pod, env.container_config("stubborn", ["sleep", "3600"]))
    started = time.monotonic()
    env.runtime.StopContainer(cri_pb2.StopContainerRequest(container_id=stubborn, timeout=1))
    assert 0.9 < time.monotonic() - started < 10
    status = env.status(stubborn).status
    assert (status.state, status.exit_code) == (cri_pb2.CONTAINER_EXITED, 137)
    # Stopping again, or stopping a removed container, is fine.
    env.runtime.StopContainer(cri_pb2.StopContainerRequest(container_id=stubborn, timeout=1))


def test_oom_kill_is_reported(env: PodsEnv, pod: str) -> None:
    config = env.container_config("oom", ["sh", "-c", "tail /dev/zero"])
    config.linux.resources.memory_limit_in_bytes = 32 * 1024 * 1024
    status = run_to_exit(env, pod, config)
    assert status.reason == "OOMKilled", (status.exit_code, status.message)
    assert status.exit_code == 137
    assert status.resources.linux.memory_limit_in_bytes == 32 * 1024 * 1024


def test_status_and_list(env: PodsEnv, pod: str) -> None:
    config = env.container_config("listed", ["sleep", "3600"], labels={"tier": "a"},
                                  annotations={"why": "test"})
    running = env.run_container(pod, config)
    created = env.runtime.CreateContainer(cri_pb2.CreateContainerRequest(
        pod_sandbox_id=pod,
        config=env.container_config("created", ["true"], labels={"tier": "b"}),
    )).container_id
    response = env.status(running, verbose=True)
    status = response.status
    assert status.state == cri_pb2.CONTAINER_RUNNING
    assert status.metadata.name == "listed"
    assert status.image.image == env.busybox
    assert status.image_id.startswith("sha256:")
    assert status.image_ref
    assert dict(status.labels) == {"tier": "a"} and dict(status.annotations) == {"why": "test"}
    assert status.log_path.endswith("/listed.log")
    info = json.loads(response.info["info"])
    assert info["pid"] > 0 and os.path.exists(f"/proc/{info['pid']}")
    assert not env.status(running).info  # the kept answer got no verbose info
    assert env.status(running).status == status

    def listed(**filter_fields: object) -> list[str]:
        request = cri_pb2.ListContainersRequest(
            filter=cri_pb2.ContainerFilter(**filter_fields))  # type: ignore[arg-type]
        return [c.id for c in env.runtime.ListContainers(request).containers]

    assert listed(pod_sandbox_id=pod) == [running, created]
    assert listed(pod_sandbox_id=pod, label_selector={"tier": "b"}) == [created]
    assert listed(id=running) == [running]
    assert listed(pod_sandbox_id=pod,
                  state=cri_pb2.ContainerStateValue(state=cri_pb2.CONTAINER_CREATED)) == [created]
    assert listed(pod_sandbox_id=pod,
                  state=cri_pb2.ContainerStateValue(state=cri_pb2.CONTAINER_RUNNING)) == [running]


def test_start_releases_runc_init_as_runc_start_would(env: PodsEnv, pod: str) -> None:
    """crisp reads runc init's start byte itself (oci/runtime.py): the process waiting
    must be runc init by the name crisp knows it by, and afterwards runc itself must call
    the container running (its exec.fifo gone)."""
    created = env.runtime.CreateContainer(cri_pb2.CreateContainerRequest(
        pod_sandbox_id=pod, config=env.container_config("fifo", ["sleep", "3600"]),
    )).container_id
    (fifo,) = env.daemon.run_dir.rglob(f"{created}/exec.fifo")
    pid = json.loads((fifo.parent / "state.json").read_text())["init_process_pid"]
    assert Path(f"/proc/{pid}/comm").read_text().strip() == "runc:[2:INIT]"
    env.runtime.StartContainer(cri_pb2.StartContainerRequest(container_id=created))
    assert env.status(created).status.state == cri_pb2.CONTAINER_RUNNING
    assert not fifo.exists()
    wait_for(lambda: Path(f"/proc/{pid}/comm").read_text().strip() == "sleep", 10,
             "the container to run sleep")


def test_remove_stops_a_running_container_and_is_idempotent(env: PodsEnv, pod: str) -> None:
    container_id = env.run_container(pod, env.container_config("removed", ["sleep", "3600"]))
    pid = json.loads(env.status(container_id, verbose=True).info["info"])["pid"]
    env.runtime.RemoveContainer(cri_pb2.RemoveContainerRequest(container_id=container_id))
    assert not os.path.exists(f"/proc/{pid}/ns")
    with pytest.raises(grpc.RpcError) as error:
        env.status(container_id)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    assert not [m for m in mounts_under(env.daemon.base) if container_id in m]
    env.runtime.RemoveContainer(cri_pb2.RemoveContainerRequest(container_id=container_id))


def test_bad_input_gets_the_right_codes_and_leaves_nothing(env: PodsEnv, pod: str) -> None:
    def create(config: cri_pb2.ContainerConfig, pod_id: str = pod) -> grpc.StatusCode:
        with pytest.raises(grpc.RpcError) as error:
            env.runtime.CreateContainer(cri_pb2.CreateContainerRequest(
                pod_sandbox_id=pod_id, config=config))
        return error.value.code()  # type: ignore[no-any-return]

    before = set(mounts_under(env.daemon.base))
    assert create(env.container_config("x", ["true"]), "0" * 64) == grpc.StatusCode.NOT_FOUND
    missing = env.container_config("x", ["true"], image="127.0.0.1:1/none:latest")
    assert create(missing) == grpc.StatusCode.NOT_FOUND
    assert create(env.container_config("x", ["/no/such/binary"])) == \
        grpc.StatusCode.INVALID_ARGUMENT
    assert create(env.container_config("", ["true"])) == grpc.StatusCode.INVALID_ARGUMENT
    relative = env.container_config("x", ["true"], working_dir="relative")
    assert create(relative) == grpc.StatusCode.INVALID_ARGUMENT
    taken = env.container_config("taken", ["sleep", "3600"])
    holder = env.run_container(pod, taken)
    assert create(taken) == grpc.StatusCode.ALREADY_EXISTS
    for call, request in (
        (env.runtime.StartContainer, cri_pb2.StartContainerRequest(container_id="0" * 64)),
        (env.runtime.ContainerStatus, cri_pb2.ContainerStatusRequest(container_id="0" * 64)),
        (env.runtime.ExecSync, cri_pb2.ExecSyncRequest(container_id="0" * 64, cmd=["true"])),
    ):
        with pytest.raises(grpc.RpcError) as error:
            call(request)
        assert error.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as error:
        env.runtime.StartContainer(cri_pb2.StartContainerRequest(container_id=holder))
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    listed = env.runtime.ListContainers(cri_pb2.ListContainersRequest(
        filter=cri_pb2.ContainerFilter(pod_sandbox_id=pod))).containers
    assert [c.id for c in listed] == [holder]
    assert set(mounts_under(env.daemon.base)) - before == {
        m for m in mounts_under(env.daemon.base) if holder in m
    }
    assert not list((env.daemon.base / "run" / "containers").glob("*/")) or all(
        p.name == holder for p in (env.daemon.base / "run" / "containers").iterdir())


def test_update_resources_changes_the_live_cgroup(env: PodsEnv, pod: str) -> None:
    config = env.container_config("updated", ["sleep", "3600"])
    config.linux.resources.memory_limit_in_bytes = 64 * 1024 * 1024
    container_id = env.run_container(pod, config)
    limit = 96 * 1024 * 1024
    env.runtime.UpdateContainerResources(cri_pb2.UpdateContainerResourcesRequest(
        container_id=container_id,
        linux=cri_pb2.LinuxContainerResources(memory_limit_in_bytes=limit, cpu_shares=256)))
    status = env.status(container_id).status
    assert status.resources.linux.memory_limit_in_bytes == limit
    assert status.resources.linux.cpu_shares == 256
    result = env.runtime.ExecSync(cri_pb2.ExecSyncRequest(
        container_id=container_id, timeout=10,
        cmd=["sh", "-c", "cat /sys/fs/cgroup/memory/memory.limit_in_bytes "
                         "/sys/fs/cgroup/memory.max 2>/dev/null; true"]))
    assert str(limit) in result.stdout.decode()
    env.runtime.StopContainer(cri_pb2.StopContainerRequest(container_id=container_id, timeout=0))
    with pytest.raises(grpc.RpcError) as error:
        env.runtime.UpdateContainerResources(cri_pb2.UpdateContainerResourcesRequest(
            container_id=container_id,
            linux=cri_pb2.LinuxContainerResources(cpu_shares=512)))
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_oom_score_adj_is_set_but_never_below_crisps_own(env: PodsEnv, pod: str) -> None:
    daemon_pid = env.daemon.process.pid  # type: ignore[union-attr]
    floor = int(Path(f"/proc/{daemon_pid}/oom_score_adj").read_text())
    for requested in (-999, 700):
        config = env.container_config(f"oom-adj{requested}", ["cat", "/proc/self/oom_score_adj"])
        config.linux.resources.oom_score_adj = requested
        status = run_to_exit(env, pod, config)
        assert log_lines(status.log_path) == [str(max(requested, floor))]


def test_tty_and_stdin_containers_run(env: PodsEnv, pod: str) -> None:
    config = env.container_config("tty", ["sh", "-c", "tty; test -t 0 && echo terminal"],
                                  tty=True, stdin=True, stdin_once=True)
    status = run_to_exit(env, pod, config)
    assert status.exit_code == 0
    text = Path(status.log_path).read_text()
    assert "/dev/pts/" in text and "terminal" in text
