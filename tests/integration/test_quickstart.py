"""The quick start run twice gives the same result: one daemon, one config, one demo pod.

scripts/quickstart runs for real (crisp daemonized, the demo pod built from busybox-static
and fetched over its pod IP), on a scratch root, socket and CNI dir through its overrides;
only install-deps is left out (CRISP_SKIP_DEPS), which would change the shared venv.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from crisp.api import cri_pb2, cri_pb2_grpc
from crisp.network import default
from tests.support.daemon import SOURCE_DIR
from tests.support.pods import clean_leftovers

ROOT = SOURCE_DIR.parent
# crisp's default network on a bridge and subnet of its own: other tests' pods use crisp0.
BRIDGE = "crispqs0"
SUBNET = "10.88.213.0/24"

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("busybox") is None,
    reason="needs root and busybox-static",
)


def wrapper(path: Path, command: str) -> None:
    path.write_text(f"#!/bin/sh\nexec {command} \"$@\"\n")
    path.chmod(0o755)


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[dict[str, str]]:
    """The quick start's environment: this checkout's crisp, on paths under tmp_path."""
    bin_dir = tmp_path / "bin"
    venv_bin = tmp_path / "venv" / "bin"
    for directory in (bin_dir, venv_bin, tmp_path / "net.d"):
        directory.mkdir(parents=True)
    wrapper(bin_dir / "crisp", f"{sys.executable} -m crisp")
    wrapper(bin_dir / "crispctl",
            f"{sys.executable} -c 'from crisp.cli.client import main; raise SystemExit(main())'")
    wrapper(venv_bin / "python", sys.executable)
    socket = tmp_path / "run" / "crisp.sock"
    config = tmp_path / "crisp.toml"
    config.write_text(
        f'root_dir = "{tmp_path / "root"}"\nrun_dir = "{tmp_path / "run"}"\n'
        f'socket = "{socket}"\n[cni]\nconf_dir = "{tmp_path / "net.d"}"\n'
        f'write_default_config = true\n'
    )
    network = default.render([SUBNET], str(tmp_path / "ipam"))
    network["plugins"][1]["bridge"] = BRIDGE
    (tmp_path / "net.d" / "10-quickstart.conflist").write_bytes(default.encode(network))
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "PYTHONPATH": str(SOURCE_DIR),
        "CRISP_SKIP_DEPS": "1",
        "CRISP_VENV": str(tmp_path / "venv"),
        "CRISP_CONFIG": str(config),
        "CONTAINER_RUNTIME_ENDPOINT": f"unix://{socket}",
        "CRISP_PID_FILE": str(tmp_path / "crisp.pid"),
        "CRISP_LOG_FILE": str(tmp_path / "crisp.log"),
    }
    try:
        yield env
    finally:
        if socket.exists():
            subprocess.run([sys.executable, "scripts/demo_pod.py", "--remove"], cwd=ROOT,
                           env=env, capture_output=True, timeout=60)
        pid_file = tmp_path / "crisp.pid"
        if pid_file.exists():
            pid = int(pid_file.read_text())
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 30
            while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
                time.sleep(0.1)
        clean_leftovers(tmp_path)
        subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True)


def demo_module() -> Any:
    spec = importlib.util.spec_from_file_location("demo_pod", ROOT / "scripts" / "demo_pod.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def quickstart(env: dict[str, str]) -> str:
    result = subprocess.run(["./scripts/quickstart"], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=180)
    log = Path(env["CRISP_LOG_FILE"])
    assert result.returncode == 0, (result.stdout + result.stderr
                                    + (log.read_text() if log.exists() else ""))
    return result.stdout


def daemons_of(config: str) -> list[int]:
    """The crisp daemons running with this config file (there must never be two)."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            argv = Path(f"/proc/{name}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"crisp" in argv and b"daemon" in argv and config.encode() in argv:
            found.append(int(name))
    return found


def demo_state(env: dict[str, str]) -> tuple[list[str], list[str]]:
    """The demo pods (ready ones) and the images of the daemon."""
    with grpc.insecure_channel(env["CONTAINER_RUNTIME_ENDPOINT"]) as channel:
        runtime = cri_pb2_grpc.RuntimeServiceStub(channel)
        images = cri_pb2_grpc.ImageServiceStub(channel)
        pods = runtime.ListPodSandbox(cri_pb2.ListPodSandboxRequest()).items
        listed = images.ListImages(cri_pb2.ListImagesRequest()).images
    assert all(pod.state == cri_pb2.SANDBOX_READY for pod in pods)
    return [pod.id for pod in pods], sorted(tag for image in listed for tag in image.repo_tags
                                            or ["<none>"])


def test_the_quick_start_run_twice_gives_the_same_result(scratch: dict[str, str]) -> None:
    config = Path(scratch["CRISP_CONFIG"])
    written = config.read_text()

    first = quickstart(scratch)
    assert "starting crisp" in first
    assert "Hello from a crisp pod" in first
    (daemon,) = daemons_of(str(config))
    pods, images = demo_state(scratch)
    assert len(pods) == 1
    assert images == ["localhost/crisp-demo/busybox:1"]

    second = quickstart(scratch)
    assert "crisp is already running" in second
    assert "Hello from a crisp pod" in second
    assert daemons_of(str(config)) == [daemon]  # the same daemon, no second one
    assert config.read_text() == written  # the config kept, nothing appended
    pods_after, images_after = demo_state(scratch)
    assert len(pods_after) == 1 and pods_after != pods  # the demo pod replaced
    assert images_after == images  # no nameless image left by the re-import
    logs = demo_module().log_directory(scratch["CONTAINER_RUNTIME_ENDPOINT"])
    assert [p.name for p in logs.iterdir()] == ["web"]  # the old pod's logs went with it

    removed = subprocess.run([sys.executable, "scripts/demo_pod.py", "--remove"], cwd=ROOT,
                             env=scratch, capture_output=True, text=True, timeout=60)
    assert removed.returncode == 0, removed.stderr
    assert demo_state(scratch) == ([], [])
    assert not logs.exists()
