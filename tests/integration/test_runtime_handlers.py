"""Runtime handlers: a wrapper handler chosen per pod, features in Status, unknown ones refused.

The "logged" handler is the wrapper docs/runtime-handlers.md describes: a shell script that
appends its arguments to a file and then execs runc, configured as [runtimes.logged] and
picked by RunPodSandbox's runtime_handler as a RuntimeClass would pick it.
"""

from __future__ import annotations

import json
import platform
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from crisp.api import cri_pb2
from tests.support.pods import PodsEnv, pods_environment, wait_for

pytestmark = pytest.mark.integration

WRAPPER = """#!/bin/sh
# A logging runtime wrapper: record how crisp (and conmon) call the runtime, then be runc.
printf '%s\\n' "$*" >> {log}
exec runc "$@"
"""

NO_RRO = """#!/bin/sh
# runc, except that its features document lacks "rro" and the user namespace: a runtime too
# old for them.
if [ "$1" = features ]; then
    runc features | sed 's/"rro",//; s/"user",//'
    exit 0
fi
exec runc "$@"
"""


@pytest.fixture(scope="module")
def env() -> Iterator[PodsEnv]:
    with tempfile.TemporaryDirectory(prefix="crisp-handlers-") as base_dir:
        base = Path(base_dir)
        wrapper = base / "logged-runc"
        wrapper.write_text(WRAPPER.format(log=base / "calls.log"))
        wrapper.chmod(0o755)
        no_rro = base / "no-rro-runc"
        no_rro.write_text(NO_RRO)
        no_rro.chmod(0o755)
        # Naming any [runtimes.*] table replaces the default set: runc is listed again.
        extra = (f'[runtimes.runc]\n[runtimes.logged]\nruntime_path = "{wrapper}"\n'
                 f'[runtimes.old]\nruntime_path = "{no_rro}"\n')
        with pods_environment(base, extra) as environment:
            yield environment


def calls(env: PodsEnv) -> list[str]:
    log = env.daemon.base / "calls.log"
    lines = log.read_text().splitlines() if log.exists() else []
    return [line for line in lines if line.split()[-1:] != ["features"]]


def commands_for(lines: list[str], container_id: str) -> set[str]:
    """The runc subcommands called for one container (the word before the options)."""
    found = set()
    for line in lines:
        words = line.split()
        if container_id in words:
            found.update(w for w in words if w in {"create", "start", "kill", "delete", "state"})
    return found


def test_status_lists_every_handler_with_its_features(env: PodsEnv) -> None:
    handlers = {h.name: h.features for h in env.runtime.Status(
        cri_pb2.StatusRequest()).runtime_handlers}
    # "" is the default handler (runc here), which the kubelet and critest look up by "".
    assert set(handlers) == {"", "runc", "logged", "old"}
    runc_features = json.loads(subprocess.run(["runc", "features"], capture_output=True,
                                              check=True).stdout)
    major, minor = (int(p) for p in platform.release().split(".")[:2])
    rro = "rro" in runc_features.get("mountOptions", []) and (major, minor) >= (5, 12)
    for name, features in handlers.items():
        # Each handler's own features output decides: "old" leaves "rro" out of it.
        assert features.recursive_read_only_mounts == (rro and name != "old"), name
        # Pod user namespaces: wherever the handler's runtime lists the user namespace.
        assert features.user_namespaces == (name != "old"), name


def test_a_pod_user_namespace_needs_a_runtime_that_lists_it(env: PodsEnv) -> None:
    config = env.pod_config()
    mapping = cri_pb2.IDMapping(host_id=200000, container_id=0, length=65536)
    config.linux.security_context.namespace_options.userns_options.CopyFrom(
        cri_pb2.UserNamespace(mode=cri_pb2.POD, uids=[mapping], gids=[mapping]))
    with pytest.raises(grpc.RpcError) as error:
        env.runtime.RunPodSandbox(cri_pb2.RunPodSandboxRequest(config=config,
                                                               runtime_handler="old"))
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "reports the user namespace" in str(error.value.details())


def test_the_wrapper_handler_runs_the_pods_that_ask_for_it(env: PodsEnv) -> None:
    before = len(calls(env))
    plain = env.run_pod()
    try:
        plain_container = env.run_container(plain, env.container_config("plain", ["true"]))
        env.wait_exited(plain_container)
        assert len(calls(env)) == before, "a default-handler pod went through the wrapper"
    finally:
        env.remove_pod(plain)

    pod = env.runtime.RunPodSandbox(cri_pb2.RunPodSandboxRequest(
        config=env.pod_config(), runtime_handler="logged")).pod_sandbox_id
    status = env.runtime.PodSandboxStatus(cri_pb2.PodSandboxStatusRequest(
        pod_sandbox_id=pod)).status
    assert status.runtime_handler == "logged"
    container = env.run_container(pod, env.container_config("wrapped", ["sleep", "3600"]))
    assert env.status(container).status.state == cri_pb2.CONTAINER_RUNNING
    env.runtime.StopContainer(cri_pb2.StopContainerRequest(container_id=container, timeout=1))
    env.runtime.RemoveContainer(cri_pb2.RemoveContainerRequest(container_id=container))
    env.remove_pod(pod)
    made = wait_for(lambda: commands_for(calls(env), container) >= {"create", "start", "kill",
                                                                    "delete"} and
                    commands_for(calls(env), container), 10, "the wrapper's log")
    assert {"create", "start", "kill", "delete"} <= made
    root = str(env.daemon.base / "run" / "runtimes" / "logged")
    assert all(root in line for line in calls(env)[before:] if container in line)


def conmon_runtime(container_id: str) -> str:
    """The --runtime that conmon of ``container_id`` was given (what it executes for create)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        words = [word.decode() for word in argv]
        if "--cid" in words and words[words.index("--cid") + 1] == container_id:
            return words[words.index("--runtime") + 1]
    raise AssertionError(f"no conmon for container {container_id}")


def test_runc_runs_from_the_daemons_sealed_copy_and_a_wrapper_from_its_path(
        env: PodsEnv) -> None:
    assert env.daemon.process is not None
    daemon = env.daemon.process.pid
    for handler in ("", "logged"):
        pod = env.runtime.RunPodSandbox(cri_pb2.RunPodSandboxRequest(
            config=env.pod_config(), runtime_handler=handler)).pod_sandbox_id
        try:
            container = env.run_container(pod, env.container_config("sealed", ["sleep", "60"]))
            assert env.status(container).status.state == cri_pb2.CONTAINER_RUNNING
            runtime = conmon_runtime(container)
            if handler:  # a shell script: no copy, conmon runs the script itself
                assert runtime == str(env.daemon.base / "logged-runc")
                continue
            # The named link in the daemon's private dir, to the daemon's sealed memfd.
            assert runtime.startswith(str(env.daemon.base / "run" / "runtimes" / ".sealed"))
            assert Path(runtime).name == "runc"
            target = Path(runtime).readlink()
            assert str(target).startswith(f"/proc/{daemon}/fd/")
            assert Path(f"/proc/{daemon}/fd/{target.name}").readlink().name.startswith(
                "memfd:sealed:runc")
        finally:
            env.remove_pod(pod)


def test_an_unknown_handler_is_refused_listing_the_configured_ones(env: PodsEnv) -> None:
    with pytest.raises(grpc.RpcError) as error:
        env.runtime.RunPodSandbox(cri_pb2.RunPodSandboxRequest(
            config=env.pod_config(), runtime_handler="kata"))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = str(error.value.details())
    assert "'kata'" in details and "logged, old, runc" in details


def test_recursive_read_only_mounts_make_submounts_read_only(env: PodsEnv) -> None:
    features = {h.name: h.features for h in env.runtime.Status(
        cri_pb2.StatusRequest()).runtime_handlers}["runc"]
    if not features.recursive_read_only_mounts:
        pytest.skip("runc or the kernel cannot make recursive read-only mounts here")
    volume = env.daemon.base / "volume"
    (volume / "sub").mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(volume / "sub")], check=True)
    pod = env.run_pod()
    try:
        script = ["sh", "-c", "touch /data/sub/x 2>/dev/null && echo writable || echo read-only"]
        outputs = {}
        for name, recursive in (("rro", True), ("ro", False)):
            config = env.container_config(name, script)
            config.mounts.append(cri_pb2.Mount(container_path="/data", host_path=str(volume),
                                               readonly=True, recursive_read_only=recursive))
            status = env.wait_exited(env.run_container(pod, config))
            outputs[name] = (Path(status.log_path).read_text().split()[-1],
                             [m.recursive_read_only for m in status.mounts
                              if m.container_path == "/data"])
        # ContainerStatus reports the mount as it was asked for.
        assert outputs == {"rro": ("read-only", [True]), "ro": ("writable", [False])}
        refusals = {
            "readonly": cri_pb2.Mount(container_path="/data", host_path=str(volume),
                                      recursive_read_only=True),
            "private": cri_pb2.Mount(container_path="/data", host_path=str(volume),
                                     readonly=True, recursive_read_only=True,
                                     propagation=cri_pb2.PROPAGATION_HOST_TO_CONTAINER),
            "PROPAGATION_PRIVATE": cri_pb2.Mount(
                container_path="/data", host_path=str(volume), readonly=True,
                recursive_read_only=True, propagation=cri_pb2.PROPAGATION_BIDIRECTIONAL),
        }
        for expected, mount in refusals.items():
            bad = env.container_config(f"rro-bad-{mount.propagation}-{mount.readonly}", script)
            bad.mounts.append(mount)
            with pytest.raises(grpc.RpcError) as error:
                env.runtime.CreateContainer(cri_pb2.CreateContainerRequest(
                    pod_sandbox_id=pod, config=bad))
            assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT, expected
            assert expected in str(error.value.details())
        old_pod = env.runtime.RunPodSandbox(cri_pb2.RunPodSandboxRequest(
            config=env.pod_config("old-runtime"), runtime_handler="old")).pod_sandbox_id
        try:
            old = env.container_config("rro-old", script)
            old.mounts.append(cri_pb2.Mount(container_path="/data", host_path=str(volume),
                                            readonly=True, recursive_read_only=True))
            with pytest.raises(grpc.RpcError) as error:
                env.runtime.CreateContainer(cri_pb2.CreateContainerRequest(
                    pod_sandbox_id=old_pod, config=old))
            assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "'old' does not support recursive read-only" in str(error.value.details())
        finally:
            env.remove_pod(old_pod)
    finally:
        env.remove_pod(pod)
        subprocess.run(["umount", str(volume / "sub")], check=False)
