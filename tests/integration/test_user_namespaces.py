"""User namespaces (CRI's userns_options) run by a real daemon with real runc and overlayfs.

NODE mode is the host's user namespace; POD mode runs the pod in one of its own, with the
rootfs owners shifted into the mapping (runc 1.1 has no idmapped mounts); what crisp cannot
honour is refused with INVALID_ARGUMENT and a message that says what to change.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from crisp.api import cri_pb2
from tests.support.pods import PodsEnv, assert_no_leaks, mounts_under, pods_environment

pytestmark = pytest.mark.integration

HOST_ID = 200000
LENGTH = 65536


@pytest.fixture(scope="module")
def env() -> Iterator[PodsEnv]:
    with tempfile.TemporaryDirectory(prefix="crisp-userns-") as base:
        # runc mounts a user namespace pod's rootfs as the pod's root: root_dir's parents
        # must be traversable, as /var/lib is (a temporary directory is 0700).
        os.chmod(base, 0o711)
        with pods_environment(Path(base)) as environment:
            yield environment


def mapping(host_id: int = HOST_ID, container_id: int = 0,
            length: int = LENGTH) -> cri_pb2.IDMapping:
    return cri_pb2.IDMapping(host_id=host_id, container_id=container_id, length=length)


def userns_options(mode: int, uids: list[cri_pb2.IDMapping] | None = None,
                   gids: list[cri_pb2.IDMapping] | None = None) -> cri_pb2.UserNamespace:
    return cri_pb2.UserNamespace(mode=mode, uids=uids or [], gids=gids or [])


def pod_with(env: PodsEnv, userns: cri_pb2.UserNamespace,
             **fields: int) -> cri_pb2.PodSandboxConfig:
    config = env.pod_config(**fields)  # type: ignore[arg-type]
    config.linux.security_context.namespace_options.userns_options.CopyFrom(userns)
    return config


def run(env: PodsEnv, pod_id: str, config: cri_pb2.PodSandboxConfig, name: str,
        script: str) -> tuple[str, int, list[str]]:
    """Run ``sh -c script`` with the pod's namespace options, as the kubelet passes them."""
    container = env.container_config(name, ["sh", "-c", script])
    container.linux.security_context.namespace_options.CopyFrom(
        config.linux.security_context.namespace_options)
    container_id = env.run_container(pod_id, container, config)
    status = env.wait_exited(container_id)
    lines = [line.split(" ", 3)[3] for line in Path(status.log_path).read_text().splitlines()]
    return container_id, status.exit_code, lines


def test_status_advertises_user_namespaces_per_handler(env: PodsEnv) -> None:
    status = env.runtime.Status(cri_pb2.StatusRequest())
    default = next(h for h in status.runtime_handlers if h.name == "")
    assert default.features.user_namespaces is True


def test_node_mode_runs_in_the_hosts_user_namespace(env: PodsEnv) -> None:
    config = pod_with(env, userns_options(cri_pb2.NODE))
    pod_id = env.run_pod(config)
    try:
        _, code, lines = run(env, pod_id, config, "node-userns", "cat /proc/self/uid_map")
        assert code == 0
        host = Path("/proc/self/uid_map").read_text().split()
        assert lines[0].split() == host
    finally:
        env.remove_pod(pod_id)


@pytest.mark.parametrize(("userns", "says"), [
    (userns_options(cri_pb2.CONTAINER), "mode CONTAINER is not supported"),
    (userns_options(cri_pb2.TARGET), "mode TARGET is not supported"),
    (userns_options(cri_pb2.POD), "exactly one uid mapping, got 0"),
    (userns_options(cri_pb2.POD, [mapping(), mapping(host_id=400000)],
                    [mapping(), mapping(host_id=400000)]), "exactly one uid mapping, got 2"),
    (userns_options(cri_pb2.POD, [mapping(container_id=1)], [mapping(container_id=1)]),
     "container root (id 0) is unmapped"),
    (userns_options(cri_pb2.NODE, [mapping()], [mapping()]), "NODE takes no uid/gid mappings"),
], ids=["container", "target", "pod-without-mappings", "two-mappings", "unmapped-root",
        "node-with-mappings"])
def test_requests_crisp_cannot_honour_are_refused(env: PodsEnv, userns: cri_pb2.UserNamespace,
                                                  says: str) -> None:
    with pytest.raises(grpc.RpcError) as error:
        env.run_pod(pod_with(env, userns))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert says in str(error.value.details())
    assert not env.runtime.ListPodSandbox(cri_pb2.ListPodSandboxRequest()).items


def test_pod_mode_excludes_the_hosts_network(env: PodsEnv) -> None:
    userns = userns_options(cri_pb2.POD, [mapping()], [mapping()])
    with pytest.raises(grpc.RpcError) as error:
        env.run_pod(pod_with(env, userns, network=cri_pb2.NODE))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "cannot share the host's network namespace" in str(error.value.details())


@pytest.fixture()
def userns_pod(env: PodsEnv) -> Iterator[tuple[str, cri_pb2.PodSandboxConfig]]:
    config = pod_with(env, userns_options(cri_pb2.POD, [mapping()], [mapping()]),
                      pid=cri_pb2.POD)  # with an infra process, in the namespace too
    pod_id = env.run_pod(config)
    yield pod_id, config
    env.remove_pod(pod_id)


def test_pod_mode_maps_the_pod_and_its_root_owns_the_rootfs(
        env: PodsEnv, userns_pod: tuple[str, cri_pb2.PodSandboxConfig]) -> None:
    pod_id, config = userns_pod
    script = ("cat /proc/self/uid_map /proc/self/gid_map; id -u; stat -c '%u:%g' / /bin/busybox;"
              " echo hi > /etc/written && cat /etc/written; echo shm > /dev/shm/x && cat "
              "/dev/shm/x; cat /etc/hostname; echo 1.2.3.4 extra >> /etc/hosts && echo hosts;"
              " test -s /etc/resolv.conf -o -e /etc/resolv.conf && echo resolv;"
              " cat /proc/1/uid_map")
    container_id, code, lines = run(env, pod_id, config, "pod-userns", script)
    assert code == 0, lines
    assert lines[0].split() == ["0", str(HOST_ID), str(LENGTH)]
    assert lines[1].split() == ["0", str(HOST_ID), str(LENGTH)]
    assert lines[2:5] == ["0", "0:0", "0:0"]  # container root owns its rootfs
    assert lines[5:7] == ["hi", "shm"]
    assert lines[7] == config.metadata.name
    assert lines[8:10] == ["hosts", "resolv"]
    assert lines[10].split() == ["0", str(HOST_ID), str(LENGTH)]  # the infra process, pid 1
    # On the host: what the container wrote is owned by the mapped root, and the shifted
    # image files are metadata-only copies (no data copied).
    upper = env.daemon.base / "root" / "containers" / container_id / "upper"
    assert (upper / "etc" / "written").stat().st_uid == HOST_ID
    assert "trusted.overlay.metacopy" in os.listxattr(upper / "bin" / "busybox")
    assert (upper / "bin" / "busybox").stat().st_blocks == 0
    # Exec enters the same user namespace.
    response = env.runtime.ExecSync(cri_pb2.ExecSyncRequest(
        container_id=env.run_container(pod_id, env.container_config(
            "pod-userns-exec", ["sleep", "60"]), config), cmd=["cat", "/proc/self/uid_map"],
        timeout=10))
    assert response.stdout.split() == [b"0", str(HOST_ID).encode(), str(LENGTH).encode()]


def test_host_paths_are_bound_unshifted(
        env: PodsEnv, userns_pod: tuple[str, cri_pb2.PodSandboxConfig],
        tmp_path: Path) -> None:
    pod_id, config = userns_pod
    os.chmod(tmp_path, 0o755)
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    (shared / "note").write_text("from the host\n")
    os.chmod(shared / "note", 0o644)
    owned = tmp_path / "owned"
    owned.mkdir(mode=0o755)
    os.chown(owned, HOST_ID, HOST_ID)  # what the pod's root owns on the host
    container = env.container_config("volumes", ["sh", "-c", (
        "cat /shared/note; stat -c %u /shared/note; touch /shared/x || echo refused;"
        " touch /owned/x && stat -c %u /owned/x")])
    container.linux.security_context.namespace_options.CopyFrom(
        config.linux.security_context.namespace_options)
    container.mounts.extend([
        cri_pb2.Mount(container_path="/shared", host_path=str(shared)),
        cri_pb2.Mount(container_path="/owned", host_path=str(owned))])
    status = env.wait_exited(env.run_container(pod_id, container, config))
    lines = [line.split(" ", 3)[3] for line in Path(status.log_path).read_text().splitlines()]
    # Host root shows as the overflow id and the file is read through its "other" bits.
    stdout = [line for line in lines if not line.startswith("touch:")]
    assert stdout == ["from the host", "65534", "refused", "0"]
    assert (owned / "x").stat().st_uid == HOST_ID


def test_a_container_cannot_leave_its_pods_user_namespace(
        env: PodsEnv, userns_pod: tuple[str, cri_pb2.PodSandboxConfig]) -> None:
    pod_id, config = userns_pod
    container = env.container_config("other-userns", ["true"])
    container.linux.security_context.namespace_options.userns_options.CopyFrom(
        userns_options(cri_pb2.NODE))
    with pytest.raises(grpc.RpcError) as error:
        env.run_container(pod_id, container, config)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "other than its pod's" in str(error.value.details())


def test_removing_a_user_namespace_pod_leaves_nothing(env: PodsEnv) -> None:
    config = pod_with(env, userns_options(cri_pb2.POD, [mapping()], [mapping()]))
    pod_id = env.run_pod(config)
    container_id, code, _ = run(env, pod_id, config, "leaves-nothing", "touch /new")
    assert code == 0
    ns_dir = env.daemon.base / "run" / "pods" / pod_id / "ns"
    assert (ns_dir / "user").exists()
    env.remove_pod(pod_id)
    assert not ns_dir.exists()
    assert not (env.daemon.base / "root" / "containers" / container_id).exists()
    assert not (env.daemon.base / "root" / "userns" / container_id).exists()
    assert not [m for m in mounts_under(env.daemon.base) if pod_id in m or container_id in m]
    assert_no_leaks(env)
