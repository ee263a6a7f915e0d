"""CRI logs and their rotation, ExecSync, and the GetContainerEvents stream, on a real daemon."""

from __future__ import annotations

import re
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from crisp.api import cri_pb2, cri_pb2_grpc
from tests.support.pods import PodsEnv, pods_environment, wait_for

pytestmark = pytest.mark.integration

CRI_LOG_LINE = re.compile(
    r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{1,9}(Z|[+-]\d\d:\d\d) (stdout|stderr) ([PF]) (.*)$"
)


@pytest.fixture(scope="module")
def env() -> Iterator[PodsEnv]:
    with tempfile.TemporaryDirectory(prefix="crisp-logs-") as base, \
            pods_environment(Path(base)) as environment:
        yield environment


@pytest.fixture(scope="module")
def pod(env: PodsEnv) -> Iterator[str]:
    pod_id = env.run_pod()
    yield pod_id
    env.remove_pod(pod_id)


def parsed(path: str) -> list[tuple[str, str, str]]:
    entries = []
    for line in Path(path).read_text().splitlines():
        match = CRI_LOG_LINE.match(line)
        assert match, f"not a CRI log line: {line!r}"
        entries.append((match.group(2), match.group(3), match.group(4)))
    return entries


def test_log_is_in_cri_format_with_streams_and_partial_lines(env: PodsEnv, pod: str) -> None:
    script = "echo out; echo err >&2; printf part; sleep 0.3; echo ial; printf tail"
    container_id = env.run_container(pod, env.container_config("format", ["sh", "-c", script]))
    status = env.wait_exited(container_id)
    entries = parsed(status.log_path)
    assert ("stdout", "F", "out") in entries
    assert ("stderr", "F", "err") in entries
    stdout = [entry for entry in entries if entry[0] == "stdout"]
    assert stdout[1:] == [("stdout", "P", "part"), ("stdout", "F", "ial"),
                          ("stdout", "P", "tail")]


def test_reopen_log_after_rotation(env: PodsEnv, pod: str) -> None:
    script = "i=0; while true; do echo line$i; i=$((i+1)); sleep 0.05; done"
    container_id = env.run_container(pod, env.container_config("rotating", ["sh", "-c", script]))
    log_path = Path(env.status(container_id).status.log_path)
    wait_for(lambda: log_path.exists() and len(parsed(str(log_path))) >= 3, 10, "log lines")
    rotated = log_path.with_name(log_path.name + ".1")
    log_path.rename(rotated)
    env.runtime.ReopenContainerLog(cri_pb2.ReopenContainerLogRequest(container_id=container_id))
    assert log_path.exists(), "the kubelet expects the new log file once the call returns"
    wait_for(lambda: log_path.exists() and len(parsed(str(log_path))) >= 3, 10,
             "lines in the reopened log")
    old = [int(text.removeprefix("line")) for _, _, text in parsed(str(rotated))]
    new = [int(text.removeprefix("line")) for _, _, text in parsed(str(log_path))]
    assert old == list(range(len(old)))
    assert new[0] >= old[-1] + 1
    assert new == list(range(new[0], new[0] + len(new)))
    env.runtime.StopContainer(cri_pb2.StopContainerRequest(container_id=container_id, timeout=0))
    with pytest.raises(grpc.RpcError) as error:
        env.runtime.ReopenContainerLog(
            cri_pb2.ReopenContainerLogRequest(container_id=container_id))
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION


@pytest.fixture(scope="module")
def sleeper(env: PodsEnv, pod: str) -> str:
    return env.run_container(pod, env.container_config("exec-target", ["sleep", "3600"]))


def exec_sync(env: PodsEnv, container_id: str, cmd: list[str], timeout: int = 10) -> Any:
    return env.runtime.ExecSync(cri_pb2.ExecSyncRequest(container_id=container_id, cmd=cmd,
                                                        timeout=timeout))


def test_exec_sync_returns_output_and_exit_code(env: PodsEnv, sleeper: str) -> None:
    result = exec_sync(env, sleeper, ["sh", "-c", "echo out; echo err >&2; hostname; exit 3"])
    assert result.stdout.decode().splitlines()[0] == "out"
    assert result.stderr == b"err\n"
    assert result.exit_code == 3
    assert exec_sync(env, sleeper, ["true"]).exit_code == 0


def test_exec_sync_timeout_kills_the_command(env: PodsEnv, sleeper: str) -> None:
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as error:
        exec_sync(env, sleeper, ["sleep", "1234"], timeout=1)
    assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 8
    processes = exec_sync(env, sleeper, ["ps", "-o", "args"]).stdout.decode()
    assert "sleep 1234" not in processes


def test_exec_sync_caps_output(env: PodsEnv, sleeper: str) -> None:
    channel = grpc.insecure_channel(f"unix://{env.daemon.socket}", options=[
        ("grpc.max_receive_message_length", 64 * 1024 * 1024)])
    try:
        runtime = cri_pb2_grpc.RuntimeServiceStub(channel)
        result = runtime.ExecSync(cri_pb2.ExecSyncRequest(
            container_id=sleeper, cmd=["head", "-c", "20000000", "/dev/zero"], timeout=30))
    finally:
        channel.close()
    assert result.exit_code == 0
    assert 0 < len(result.stdout) <= 16 * 1024 * 1024
    assert len(result.stdout) < 20000000


def test_exec_sync_of_a_missing_binary_fails_clearly(env: PodsEnv, sleeper: str) -> None:
    with pytest.raises(grpc.RpcError) as error:
        exec_sync(env, sleeper, ["/no/such/thing"])
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "/no/such/thing" in error.value.details()


def test_events_stream_lifecycle_of_pods_and_containers(env: PodsEnv) -> None:
    received: list[Any] = []
    stream = env.runtime.GetContainerEvents(cri_pb2.GetEventsRequest())

    def read() -> None:
        try:
            for event in stream:
                received.append(event)
        except grpc.RpcError:
            pass

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    time.sleep(0.3)  # let the subscription reach the daemon
    pod_id = env.run_pod()
    container_id = env.run_container(pod_id, env.container_config("evented", ["true"]))
    env.wait_exited(container_id)
    env.remove_pod(pod_id)

    def kinds(object_id: str) -> list[int]:
        return [e.container_event_type for e in received if e.container_id == object_id]

    expected = [cri_pb2.CONTAINER_CREATED_EVENT, cri_pb2.CONTAINER_STARTED_EVENT,
                cri_pb2.CONTAINER_STOPPED_EVENT, cri_pb2.CONTAINER_DELETED_EVENT]
    wait_for(lambda: kinds(container_id) == expected and kinds(pod_id) == expected, 10,
             "the events of the container and its pod")
    stream.cancel()
    started = next(e for e in received if e.container_id == container_id
                   and e.container_event_type == cri_pb2.CONTAINER_STARTED_EVENT)
    assert started.pod_sandbox_status.id == pod_id
    assert started.created_at > 0
    assert [s.id for s in started.containers_statuses] == [container_id]
