"""The daemon itself: CRI basics over a real socket, config reload, socket handling."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import pytest

from crisp import __version__
from crisp.api import cri_pb2
from tests.integration.conftest import DaemonFactory
from tests.support.daemon import CrispDaemon, checkout_env
from tests.support.registry import BusyboxRegistry


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for_log(daemon: CrispDaemon, text: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in daemon.log():
            return
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not in the daemon log:\n{daemon.log()}")


def test_version(crisp_daemon: CrispDaemon) -> None:
    response = crisp_daemon.runtime.Version(cri_pb2.VersionRequest(version="v1"))
    assert response.runtime_name == "crisp"
    assert response.runtime_version == __version__
    assert response.runtime_api_version == "v1"
    assert response.version == "0.1.0"


def test_status_reports_conditions_and_effective_config(crisp_daemon: CrispDaemon) -> None:
    response = crisp_daemon.runtime.Status(cri_pb2.StatusRequest(verbose=True))
    conditions = {c.type: c for c in response.status.conditions}
    assert set(conditions) == {"RuntimeReady", "NetworkReady"}
    for condition in conditions.values():
        assert condition.status or (condition.reason and condition.message)
    assert conditions["RuntimeReady"].status, conditions["RuntimeReady"].message
    config = json.loads(response.info["config"])
    assert config["socket"] == str(crisp_daemon.socket)
    assert config["runtimes"]["runc"]["runtime_path"] == "runc"
    # "" is the default handler, listed first as the kubelet and critest look for it.
    assert [h.name for h in response.runtime_handlers] == ["", "runc"]
    assert response.features.supplemental_groups_policy
    assert not crisp_daemon.runtime.Status(cri_pb2.StatusRequest()).info


def test_runtime_not_ready_names_the_missing_binary(make_daemon: DaemonFactory) -> None:
    daemon = make_daemon('[runtimes.runc]\nruntime_path = "/nonexistent/runc"\n')
    conditions = {
        c.type: c for c in daemon.runtime.Status(cri_pb2.StatusRequest()).status.conditions
    }
    ready = conditions["RuntimeReady"]
    assert not ready.status
    assert ready.reason == "RuntimeBinaryMissing"
    assert "/nonexistent/runc" in ready.message


def test_runtime_config_reports_the_cgroup_driver(make_daemon: DaemonFactory) -> None:
    daemon = make_daemon('cgroup_manager = "systemd"\n')
    response = daemon.runtime.RuntimeConfig(cri_pb2.RuntimeConfigRequest())
    assert response.linux.cgroup_driver == cri_pb2.SYSTEMD
    daemon.write_config("")
    daemon.restart()
    response = daemon.runtime.RuntimeConfig(cri_pb2.RuntimeConfigRequest())
    assert response.linux.cgroup_driver == cri_pb2.CGROUPFS


def test_update_runtime_config_records_the_pod_cidr(crisp_daemon: CrispDaemon) -> None:
    request = cri_pb2.UpdateRuntimeConfigRequest(
        runtime_config=cri_pb2.RuntimeConfig(
            network_config=cri_pb2.NetworkConfig(pod_cidr="10.244.1.0/24")
        )
    )
    crisp_daemon.runtime.UpdateRuntimeConfig(request)
    request.runtime_config.network_config.pod_cidr = "10.244.1.0/33"
    with pytest.raises(grpc.RpcError) as caught:
        crisp_daemon.runtime.UpdateRuntimeConfig(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "10.244.1.0/33" in caught.value.details()


def test_unbuilt_rpcs_answer_unimplemented_naming_the_rpc(crisp_daemon: CrispDaemon) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        crisp_daemon.runtime.CheckpointPod(cri_pb2.CheckpointPodRequest())
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "RuntimeService/CheckpointPod" in caught.value.details()


def test_socket_and_directory_permissions(crisp_daemon: CrispDaemon) -> None:
    mode = os.stat(crisp_daemon.socket).st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o660
    assert stat.S_IMODE(os.stat(crisp_daemon.socket.parent).st_mode) == 0o700
    # Tools that look for the daemon by its listening socket match the exact path.
    listening = [line.split()[-1] for line in Path("/proc/net/unix").read_text().splitlines()[1:]
                 if len(line.split()) >= 8 and line.split()[5] == "01"]
    assert str(crisp_daemon.socket) in listening


def test_stale_socket_is_replaced(make_daemon: DaemonFactory) -> None:
    daemon = make_daemon(start=False)
    daemon.run_dir.mkdir(parents=True)
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(daemon.socket))  # bound, never listening: what a crash leaves behind
    stale.close()
    daemon.start()
    assert "replacing stale socket" in daemon.log()


def test_second_daemon_on_the_same_state_is_refused(crisp_daemon: CrispDaemon) -> None:
    second = subprocess.run(
        [sys.executable, "-m", "crisp", "--config", str(crisp_daemon.config_path)],
        env=checkout_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert second.returncode == 1
    assert "another crisp daemon" in second.stderr
    assert str(crisp_daemon.process.pid if crisp_daemon.process else "") in second.stderr
    crisp_daemon.runtime.Version(cri_pb2.VersionRequest())  # the first one is unharmed


def test_daemon_on_a_live_foreign_socket_refuses(make_daemon: DaemonFactory) -> None:
    daemon = make_daemon(start=False)
    daemon.run_dir.mkdir(parents=True)
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(daemon.socket))
    listener.listen()
    try:
        daemon.start(wait=False)
        assert daemon.process is not None
        assert daemon.process.wait(20) == 1
        assert "something is already serving on" in daemon.log()
    finally:
        listener.close()


def test_sighup_applies_live_options_and_keeps_config_on_error(make_daemon: DaemonFactory) -> None:
    daemon = make_daemon('[registries]\nsearch = ["docker.io"]\n')
    daemon.write_config(
        'log_format = "json"\n[registries]\nsearch = ["quay.io", "docker.io"]\n'
        "cgroup_manager_typo = 1\n"
    )
    daemon.signal(signal.SIGHUP)
    wait_for_log(daemon, "config reload failed")
    assert "registries.cgroup_manager_typo: unknown option" in daemon.log()
    status = daemon.runtime.Status(cri_pb2.StatusRequest(verbose=True))
    assert json.loads(status.info["config"])["registries"]["search"] == ["docker.io"]

    daemon.write_config(
        '[registries]\nsearch = ["quay.io", "docker.io"]\n[pod]\n'
        'pause_image = "example.com/pause:1"\n'
    )
    daemon.signal(signal.SIGHUP)
    wait_for_log(daemon, "changed: registries.search")
    wait_for_log(daemon, "only after a restart: pod.pause_image")
    config = json.loads(daemon.runtime.Status(cri_pb2.StatusRequest(verbose=True)).info["config"])
    assert config["registries"]["search"] == ["quay.io", "docker.io"]
    assert config["pod"]["pause_image"] == "registry.k8s.io/pause:3.9"


def test_invalid_config_stops_startup_naming_file_and_key(make_daemon: DaemonFactory) -> None:
    daemon = make_daemon("[metrics]\nport = 70000\n", start=False)
    daemon.start(wait=False)
    assert daemon.process is not None
    assert daemon.process.wait(20) == 2
    log = daemon.log()
    assert f"{daemon.config_path}: metrics.port: must be a port number" in log


def test_metrics_port_in_use_stops_startup_with_one_line(make_daemon: DaemonFactory) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        daemon = make_daemon(f"[metrics]\nenabled = true\nport = {port}\n", start=False)
        daemon.start(wait=False)
        assert daemon.process is not None
        assert daemon.process.wait(20) != 0
    log = daemon.log()
    assert f"cannot serve metrics on 127.0.0.1:{port}: Address already in use" in log
    assert "Traceback" not in log


def test_sigterm_stops_cleanly(make_daemon: DaemonFactory) -> None:
    daemon = make_daemon()
    assert daemon.stop() == 0
    assert not daemon.socket.exists()
    assert "stopped" in daemon.log()


def test_metrics_endpoint_counts_calls_by_code(make_daemon: DaemonFactory) -> None:
    port = free_port()
    daemon = make_daemon(f"[metrics]\nenabled = true\nport = {port}\n")
    daemon.runtime.Version(cri_pb2.VersionRequest())
    with pytest.raises(grpc.RpcError):
        daemon.runtime.CheckpointPod(cri_pb2.CheckpointPodRequest())
    # The call is counted once its answer has gone out: a scrape right after may precede it.
    deadline = time.monotonic() + 10
    while True:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        body = body.decode()
        if 'method="CheckpointPod"' in body or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert (
        'crisp_grpc_requests_total{code="OK",method="Version",service="runtime.v1.RuntimeService"}'
    ) in body
    assert 'code="UNIMPLEMENTED",method="CheckpointPod"' in body
    assert "crisp_grpc_request_duration_seconds_bucket" in body


def test_crispctl_talks_cri_over_the_socket(crisp_daemon: CrispDaemon, tmp_path: Path) -> None:
    def crispctl(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-c",
                "from crisp.cli.client import main; raise SystemExit(main())",
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=30,
            env=checkout_env(**env),
        )

    version = crispctl("--runtime-endpoint", f"unix://{crisp_daemon.socket}", "version")
    assert version.returncode == 0, version.stderr
    assert "RuntimeName:  crisp" in version.stdout
    info = crispctl("info", CONTAINER_RUNTIME_ENDPOINT=str(crisp_daemon.socket))
    assert info.returncode == 0, info.stderr
    parsed = json.loads(info.stdout)
    assert parsed["runtimeConfig"]["linux"]["cgroupDriver"] == "CGROUPFS"
    assert parsed["config"]["socket"] == str(crisp_daemon.socket)
    missing = crispctl("-r", str(tmp_path / "nothing.sock"), "-t", "2", "version")
    assert missing.returncode == 1
    assert "UNAVAILABLE" in missing.stderr


def _loaded_libraries(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


def test_idle_daemon_loads_neither_http_stack_nor_version_metadata(
        make_daemon: DaemonFactory, registry_busybox: BusyboxRegistry) -> None:
    """aiohttp (about 10 MiB of RSS) is not the daemon's even after a pull (the registry
    helper process has it); the steps table is served."""
    daemon = make_daemon()
    assert daemon.process is not None
    status = daemon.runtime.Status(cri_pb2.StatusRequest(verbose=True))
    assert json.loads(status.info["steps"]) == {}
    assert "aiohttp" not in _loaded_libraries(daemon.process.pid)
    daemon.images.PullImage(cri_pb2.PullImageRequest(
        image=cri_pb2.ImageSpec(image=registry_busybox.reference)))
    assert "aiohttp" not in _loaded_libraries(daemon.process.pid)


def test_fixed_streaming_port_in_use_stops_startup(make_daemon: DaemonFactory) -> None:
    """A configured port is part of the node's setup: its conflict shows at start, not at exec."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        daemon = make_daemon(f"[streaming]\nport = {port}\n", start=False)
        daemon.start(wait=False)
        assert daemon.process is not None
        assert daemon.process.wait(30) == 1
    assert f"cannot start the streaming server on 127.0.0.1:{port}" in daemon.log()
