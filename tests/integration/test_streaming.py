"""Exec over the streaming server, driven by crictl (SPDY and WebSocket) on a real daemon."""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from crisp.api import cri_pb2
from tests.support.pods import PodsEnv, pods_environment

pytestmark = pytest.mark.integration

CRICTL = "/usr/local/bin/crictl"
TRANSPORTS = ["spdy", "websocket"]


@pytest.fixture(scope="module")
def env() -> Iterator[PodsEnv]:
    with tempfile.TemporaryDirectory(prefix="crisp-stream-") as base, \
            pods_environment(Path(base), '[streaming]\ntoken_ttl = 2.0\n') as environment:
        yield environment


@pytest.fixture(scope="module")
def container(env: PodsEnv) -> Iterator[str]:
    pod_id = env.run_pod()
    container_id = env.run_container(pod_id, env.container_config(
        "shell", ["sh", "-c", "sleep 3600"],
        envs=[cri_pb2.KeyValue(key="GREETING", value=b"hello")], working_dir="/tmp"))
    yield container_id
    env.remove_pod(pod_id)


def crictl(env: PodsEnv, *args: str, stdin: bytes | None = None, timeout: float = 60
           ) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [CRICTL, "--runtime-endpoint", f"unix://{env.daemon.socket}", "--timeout", "10s",
         *args], input=stdin, capture_output=True, timeout=timeout,
        stdin=None if stdin is not None else subprocess.DEVNULL)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_exec_keeps_stdout_and_stderr_apart_with_the_containers_env(
        env: PodsEnv, container: str, transport: str) -> None:
    result = crictl(env, "exec", "--transport", transport, container, "sh", "-c",
                    'echo "$GREETING from $(pwd)"; echo oops >&2')
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"hello from /tmp\n"
    assert b"oops\n" in result.stderr


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("code", [0, 1, 137])
def test_exec_exit_codes_become_crictls(env: PodsEnv, container: str, transport: str,
                                        code: int) -> None:
    script = "kill -9 $$" if code == 137 else f"exit {code}"
    result = crictl(env, "exec", "--transport", transport, container, "sh", "-c", script)
    # crictl reports a streamed exit code in its message and exits 1 itself.
    if code == 0:
        assert result.returncode == 0, result.stderr
    else:
        assert result.returncode != 0
        assert f"command terminated with exit code {code}".encode() in result.stderr


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_exec_stdin_50_mib_round_trip(env: PodsEnv, container: str, transport: str) -> None:
    data = os.urandom(50 * 1024 * 1024)
    result = crictl(env, "exec", "-i", "--transport", transport, container, "cat",
                    stdin=data, timeout=120)
    assert result.returncode == 0, result.stderr
    assert hashlib.sha256(result.stdout).hexdigest() == hashlib.sha256(data).hexdigest()


def test_exec_url_rejects_bad_requests(env: PodsEnv, container: str) -> None:
    for request, code in [
        (cri_pb2.ExecRequest(container_id=container, cmd=["true"]),
         grpc.StatusCode.INVALID_ARGUMENT),
        (cri_pb2.ExecRequest(container_id=container, cmd=["true"], tty=True, stdout=True,
                             stderr=True), grpc.StatusCode.INVALID_ARGUMENT),
        (cri_pb2.ExecRequest(container_id=container, cmd=[], stdout=True),
         grpc.StatusCode.INVALID_ARGUMENT),
        (cri_pb2.ExecRequest(container_id="nonexistent", cmd=["true"], stdout=True),
         grpc.StatusCode.NOT_FOUND),
    ]:
        with pytest.raises(grpc.RpcError) as error:
            env.runtime.Exec(request)
        assert error.value.code() == code
