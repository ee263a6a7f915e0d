"""crispctl as a user runs it: a subprocess talking CRI to a real crisp daemon.

Checks the crictl verbs end to end (tables, JSON/YAML with crictl's camelCase names) and
that every failure is one line with the gRPC code, never a traceback.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import pty
import struct
import subprocess
import sys
import tempfile
import termios
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from google.protobuf import json_format

from crisp.api import cri_pb2, cri_pb2_grpc
from tests.support import image_builder as ib
from tests.support.daemon import checkout_env
from tests.support.pods import PodsEnv, pods_environment, wait_for
from tests.support.registry import FlakyProxy

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def env() -> Iterator[PodsEnv]:
    with tempfile.TemporaryDirectory(prefix="crisp-ctl-") as base, \
            pods_environment(Path(base)) as environment:
        yield environment


def crispctl(endpoint: str | Path, *args: str, check: bool = True,
             timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "crisp.cli.client", "-r", str(endpoint), *args],
        capture_output=True, text=True, env=checkout_env(), timeout=timeout)
    if check:
        assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    return result


def ctl(env: PodsEnv, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return crispctl(env.daemon.socket, *args, check=check)


def write_configs(env: PodsEnv, tmp: Path, name: str,
                  command: list[str]) -> tuple[Path, Path]:
    """A pod config as JSON (camelCase) and a container config as YAML (snake_case)."""
    pod = tmp / f"{name}-pod.json"
    pod.write_text(json_format.MessageToJson(env.pod_config(name, labels={"app": name})))
    container = tmp / f"{name}-container.yaml"
    container.write_text(yaml.safe_dump(json_format.MessageToDict(
        env.container_config("main", command), preserving_proto_field_name=True)))
    return pod, container


def one_error_line(result: subprocess.CompletedProcess[str], code: str) -> str:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert code in lines[0], lines[0]
    return lines[0]


def test_pod_and_container_verbs(env: PodsEnv, tmp_path: Path) -> None:
    pod_file, container_file = write_configs(
        env, tmp_path, "ctl-one", ["sh", "-c", "echo hello; echo oops >&2; exec sleep 3600"])
    pod_id = ctl(env, "runp", str(pod_file)).stdout.strip()
    try:
        listed = ctl(env, "pods").stdout.splitlines()
        assert listed[0].split() == ["POD", "ID", "CREATED", "STATE", "NAME", "NAMESPACE",
                                     "ATTEMPT", "RUNTIME"]
        row = next(line for line in listed if "ctl-one" in line)
        assert row.startswith(pod_id[:13]) and "Ready" in row and "test" in row
        assert ctl(env, "pods", "-q", "--name", "^ctl-o").stdout.split() == [pod_id]
        assert ctl(env, "pods", "-q", "--label", "app=ctl-one").stdout.split() == [pod_id]
        assert ctl(env, "pods", "-q", "--name", "ctl-one", "--state", "notready").stdout == ""
        assert ctl(env, "pods", "-q", "--namespace", "^nope$").stdout == ""
        items = json.loads(ctl(env, "pods", "-o", "json", "--id", pod_id).stdout)["items"]
        assert [item["id"] for item in items] == [pod_id]
        assert items[0]["state"] == "SANDBOX_READY" and "createdAt" in items[0]
        assert items[0]["metadata"]["name"] == "ctl-one"
        inspected = yaml.safe_load(ctl(env, "inspectp", "-o", "yaml", pod_id[:12]).stdout)
        assert inspected["status"]["id"] == pod_id
        assert inspected["status"]["labels"] == {"app": "ctl-one"}

        container_id = ctl(env, "create", pod_id, str(container_file), str(pod_file)) \
            .stdout.strip()
        assert ctl(env, "ps", "-q").stdout.split().count(container_id) == 0  # created only
        assert container_id in ctl(env, "ps", "-a", "-q").stdout.split()
        assert ctl(env, "start", container_id).stdout.strip() == container_id
        table = ctl(env, "ps", "--pod", pod_id).stdout.splitlines()
        assert table[0].split()[:3] == ["CONTAINER", "IMAGE", "CREATED"]
        assert "Running" in table[1] and "main" in table[1] and "ctl-one" in table[1]
        containers = json.loads(ctl(env, "ps", "-o", "json", "--id", container_id).stdout)
        assert containers["containers"][0]["podSandboxId"] == pod_id
        assert containers["containers"][0]["state"] == "CONTAINER_RUNNING"
        status = json.loads(ctl(env, "inspect", container_id).stdout)["status"]
        assert status["state"] == "CONTAINER_RUNNING" and status["logPath"].endswith("main.log")

        wait_for(lambda: "oops" in ctl(env, "logs", container_id).stderr, 10, "the log")
        logs = ctl(env, "logs", container_id)
        assert logs.stdout == "hello\n" and logs.stderr == "oops\n"
        stamped = ctl(env, "logs", "--timestamps", "--tail", "1", container_id)
        assert stamped.stdout == "" and stamped.stderr.endswith(" oops\n")
        assert ctl(env, "logs", "--since", "1h", container_id).stdout == "hello\n"
        assert ctl(env, "logs", "--since", "2999-01-01T00:00:00Z", container_id).stdout == ""

        stats = json.loads(ctl(env, "stats", "-o", "json", container_id).stdout)["stats"]
        assert [s["attributes"]["id"] for s in stats] == [container_id]
        assert "CPU %" in ctl(env, "stats").stdout
        assert "POD ID" in ctl(env, "statsp", pod_id).stdout

        running = one_error_line(ctl(env, "rm", container_id, check=False), "is running")
        assert "--force" in running
        assert ctl(env, "stop", "-t", "0", container_id).stdout.strip() == container_id
        assert ctl(env, "ps", "-q", "--pod", pod_id).stdout == ""
        exited = ctl(env, "ps", "-a", "--state", "exited", "-q").stdout.split()
        assert container_id in exited
        assert ctl(env, "rm", container_id).stdout.strip() == container_id
        assert container_id not in ctl(env, "ps", "-a", "-q").stdout.split()
        assert ctl(env, "stopp", pod_id).stdout.strip() == f"Stopped sandbox {pod_id}"
        assert "NotReady" in ctl(env, "pods", "--id", pod_id).stdout
        assert ctl(env, "rmp", pod_id).stdout.strip() == f"Removed sandbox {pod_id}"
        assert ctl(env, "pods", "-q", "--id", pod_id).stdout == ""
    finally:
        ctl(env, "rmp", "-f", pod_id, check=False)


def test_run_then_force_remove(env: PodsEnv, tmp_path: Path) -> None:
    pod_file, container_file = write_configs(env, tmp_path, "ctl-run", ["sleep", "3600"])
    container_id = ctl(env, "run", str(container_file), str(pod_file)).stdout.strip()
    containers = yaml.safe_load(ctl(env, "ps", "-o", "yaml", "--id", container_id).stdout)
    pod_id = containers["containers"][0]["podSandboxId"]
    one_error_line(ctl(env, "rmp", pod_id, check=False), "stopp")
    assert ctl(env, "rmp", "-f", pod_id).stdout.strip() == f"Removed sandbox {pod_id}"
    assert ctl(env, "ps", "-a", "-q", "--id", container_id).stdout == ""


def test_runtime_wide_verbs(env: PodsEnv) -> None:
    config: dict[str, Any] = json.loads(ctl(env, "runtime-config").stdout)
    assert "cgroupDriver" in json.dumps(config) or config == {}
    filesystems = json.loads(ctl(env, "imagefsinfo").stdout)
    assert filesystems["imageFilesystems"][0]["fsId"]["mountpoint"]
    version = ctl(env, "version").stdout
    assert "RuntimeName:" in version
    assert json.loads(ctl(env, "version", "-o", "json").stdout)["runtimeName"] == "crisp"
    assert "runtimeConfig" in yaml.safe_load(ctl(env, "info", "-o", "yaml").stdout)


def test_events_stream(env: PodsEnv, tmp_path: Path) -> None:
    events = subprocess.Popen(
        [sys.executable, "-m", "crisp.cli.client", "-r", str(env.daemon.socket), "events",
         "-o", "json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=checkout_env())
    try:
        time.sleep(1.5)  # the stream is open before the pod starts
        pod_file, _ = write_configs(env, tmp_path, "ctl-events", [])
        pod_id = ctl(env, "runp", str(pod_file)).stdout.strip()
        ctl(env, "rmp", "-f", pod_id)
    finally:
        time.sleep(0.5)
        events.terminate()
        out, err = events.communicate(timeout=10)
    assert "Traceback" not in err
    assert pod_id in out and "containerEventType" in out


def test_missing_object_is_one_line(env: PodsEnv) -> None:
    # stop, stopp are idempotent in CRI: a missing object is already stopped.
    for verb in ("inspect", "inspectp", "rm", "rmp", "logs"):
        line = one_error_line(ctl(env, verb, "0123456789abcdef", check=False), "NOT_FOUND")
        assert "crispctl ps -a" in line, line  # what to do next


def test_bad_config_file_is_one_line(env: PodsEnv, tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text('metadata: {nam: "x"}\n')
    one_error_line(ctl(env, "runp", str(broken), check=False), "is not a PodSandboxConfig")
    one_error_line(ctl(env, "runp", str(tmp_path / "absent.json"), check=False),
                   "cannot read")


def test_daemon_down_and_wrong_endpoint(tmp_path: Path) -> None:
    down = one_error_line(crispctl(tmp_path / "crisp.sock", "pods", check=False),
                          "UNAVAILABLE")
    assert "is the runtime running" in down
    not_a_socket = tmp_path / "file"
    not_a_socket.write_text("")
    one_error_line(crispctl(not_a_socket, "ps", check=False), "UNAVAILABLE")
    one_error_line(crispctl("tcp://", "version", check=False), "UNAVAILABLE")


def test_image_verbs(env: PodsEnv, tmp_path: Path) -> None:
    listing = ctl(env, "images", "--digests", "--pinned").stdout.splitlines()
    assert listing[0].split() == ["IMAGE", "TAG", "DIGEST", "IMAGE", "ID", "SIZE", "PINNED"]
    pause_row = next(line for line in listing if "test/pause" in line)
    assert pause_row.split()[-1] == "true" and pause_row.split()[2] != "<none>"
    images = json.loads(ctl(env, "images", "-o", "json").stdout)["images"]
    assert {tag for image in images for tag in image["repoTags"]} >= {env.busybox, env.pause}
    assert all("repoDigests" in image and "pinned" in image for image in images)
    only = ctl(env, "images", "-q", "--filter", "reference=*/test/sleeper").stdout.split()
    assert len(only) == 1 and only == ctl(env, "images", "-q", "--filter", env.sleeper) \
        .stdout.split()
    assert ctl(env, "images", "-q", "--filter", "dangling=true").stdout == ""
    one_error_line(ctl(env, "images", "--filter", "color=red", check=False), "--filter")
    status = yaml.safe_load(ctl(env, "inspecti", "-o", "yaml", env.busybox).stdout)
    assert env.busybox in status["status"]["repoTags"]
    one_error_line(ctl(env, "inspecti", f"{env.busybox}-missing", check=False), "NOT_FOUND")

    # --prune removes what no container uses and keeps pinned images (the pause image).
    pod_file, container_file = write_configs(env, tmp_path, "ctl-prune", ["sleep", "3600"])
    container_id = ctl(env, "run", str(container_file), str(pod_file)).stdout.strip()
    try:
        assert container_id in ctl(env, "ps", "-q").stdout.split()
        pruned = ctl(env, "rmi", "--prune")
        assert "Kept pinned image" in pruned.stderr
        left = {tag for image in json.loads(ctl(env, "images", "-o", "json").stdout)["images"]
                for tag in image["repoTags"]}
        assert env.busybox in left and env.pause in left and env.sleeper not in left
    finally:
        for pod in ctl(env, "pods", "-q", "--name", "ctl-prune").stdout.split():
            ctl(env, "rmp", "-f", pod)
        assert "up to date" in ctl(env, "pull", env.sleeper).stdout


def test_logs_follow_and_update(env: PodsEnv, tmp_path: Path) -> None:
    pod_file, container_file = write_configs(
        env, tmp_path, "ctl-follow", ["sh", "-c", "echo first; sleep 2; echo second; sleep 3600"])
    container_id = ctl(env, "run", str(container_file), str(pod_file)).stdout.strip()
    try:
        follower = subprocess.Popen(
            [sys.executable, "-m", "crisp.cli.client", "-r", str(env.daemon.socket), "logs",
             "-f", container_id], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=checkout_env())
        assert follower.stdout is not None
        assert follower.stdout.readline() == "first\n"
        assert follower.stdout.readline() == "second\n"  # printed after it was written
        ctl(env, "update", "--memory", "64m", "--cpu-period", "100000", "--cpu-quota", "50000",
            container_id)
        resources = json.loads(ctl(env, "inspect", container_id).stdout)["status"]["resources"]
        assert int(resources["linux"]["memoryLimitInBytes"]) == 64 << 20
        assert int(resources["linux"]["cpuQuota"]) == 50000
        ctl(env, "stop", container_id)
        out, err = follower.communicate(timeout=20)  # -f ends when the container exits
        assert follower.returncode == 0 and out == "" and "Traceback" not in err
    finally:
        for pod in ctl(env, "pods", "-q", "--name", "ctl-follow").stdout.split():
            ctl(env, "rmp", "-f", pod)


def test_logs_previous_attempt(env: PodsEnv, tmp_path: Path) -> None:
    pod_file, _ = write_configs(env, tmp_path, "ctl-prev", [])
    pod_id = ctl(env, "runp", str(pod_file)).stdout.strip()
    try:
        ids = []
        for attempt in (0, 1):
            config = json_format.MessageToDict(env.container_config(
                "c", ["echo", f"attempt {attempt}"]), preserving_proto_field_name=True)
            config["metadata"]["attempt"] = attempt
            config["log_path"] = f"c/{attempt}.log"
            path = tmp_path / f"c{attempt}.yaml"
            path.write_text(yaml.safe_dump(config))
            ids.append(ctl(env, "create", "--no-pull", pod_id, str(path), str(pod_file))
                       .stdout.strip())
            ctl(env, "start", ids[-1])
            env.wait_exited(ids[-1])
        assert ctl(env, "logs", ids[1]).stdout == "attempt 1\n"
        assert ctl(env, "logs", "-p", ids[1]).stdout == "attempt 0\n"
        one_error_line(ctl(env, "logs", "-p", ids[0], check=False), "no previous attempt")
    finally:
        ctl(env, "rmp", "-f", pod_id)


def test_stats_watch_refreshes(env: PodsEnv) -> None:
    watcher = subprocess.Popen(
        [sys.executable, "-m", "crisp.cli.client", "-r", str(env.daemon.socket), "statsp",
         "--watch", "-s", "0.3", "-o", "json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=checkout_env())
    time.sleep(3)
    watcher.terminate()
    out, err = watcher.communicate(timeout=10)
    assert "Traceback" not in err
    assert out.count('"stats"') >= 2


def test_verbose_listings_and_crictl_list_flags(env: PodsEnv, tmp_path: Path) -> None:
    pod_file, container_file = write_configs(
        env, tmp_path, "ctl-verbose", ["sh", "-c", "exit 0"])
    document = yaml.safe_load(container_file.read_text())
    document["labels"] = {"tier": "web"}
    document["annotations"] = {"note": "hello"}
    container_file.write_text(yaml.safe_dump(document))
    container_id = ctl(env, "run", str(container_file), str(pod_file)).stdout.strip()
    try:
        env.wait_exited(container_id)
        pod_id = ctl(env, "pods", "-q", "--name", "^ctl-verbose$").stdout.strip()
        # --latest and --last look at every state, as crictl's do; plain ps only running ones
        assert container_id not in ctl(env, "ps", "-q").stdout.split()
        assert ctl(env, "ps", "-q", "-l").stdout.split() == [container_id]
        assert container_id in ctl(env, "ps", "-q", "-n", "5").stdout.split()
        assert ctl(env, "ps", "-aq", "--namespace", "^test$", "--pod", pod_id).stdout.split() \
            == [container_id]
        assert ctl(env, "ps", "-aq", "--namespace", "^other$").stdout == ""
        resolved = ctl(env, "ps", "-a", "-r", "--no-trunc", "--id", container_id).stdout
        assert "sha256:" in resolved.splitlines()[1]

        verbose = ctl(env, "ps", "-a", "-v", "--id", container_id).stdout
        lines = verbose.splitlines()
        assert f"ID: {container_id}" in lines and f"PodID: {pod_id}" in lines
        assert "PodName: ctl-verbose" in lines and "State: CONTAINER_EXITED" in lines
        assert f"Image: {env.busybox}" in lines
        assert any(line.startswith("ImageRef: ") and len(line) > 20 for line in lines)
        assert lines[lines.index("Labels:") + 1] == "\ttier -> web"
        assert "\tnote -> hello" in lines[lines.index("Annotations:"):]

        pods = ctl(env, "pods", "-v", "--id", pod_id).stdout.splitlines()
        assert f"ID: {pod_id}" in pods and "Namespace: test" in pods
        assert "Status: SANDBOX_READY" in pods and "\tapp -> ctl-verbose" in pods
        assert ctl(env, "pods", "-q", "-n", "1").stdout.split() == \
            ctl(env, "pods", "-q", "--latest").stdout.split()

        images = ctl(env, "images", "-v", "-f", env.busybox).stdout.splitlines()
        assert f"RepoTags: {env.busybox}" in images and "Pinned: false" in images
        assert any(line.startswith("ID: sha256:") for line in images)
        assert any(line.startswith("Size: ") for line in images)
    finally:
        for pod in ctl(env, "pods", "-q", "--name", "ctl-verbose").stdout.split():
            ctl(env, "rmp", "-f", pod)


def progress_image() -> ib.Image:
    """Two uncompressed layers of 1.5 MB each, random so no other test shares them."""
    return ib.build_image([
        ib.make_layer(ib.LayerBuilder().file(name, os.urandom(1_500_000)), compression="none")
        for name in ("one", "two")])


async def run_crispctl(env: PodsEnv, *args: str, tty: bool = False) -> tuple[int, str, str]:
    """crispctl in a subprocess the test's event loop (which runs the proxy) does not wait
    for; with ``tty`` its stderr is a terminal."""
    command = [sys.executable, "-m", "crisp.cli.client", "-r", str(env.daemon.socket), *args]
    if not tty:
        process = await asyncio.create_subprocess_exec(
            *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env=checkout_env())
        out, err = await asyncio.wait_for(process.communicate(), 120)
        return process.returncode or 0, out.decode(), err.decode()
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=terminal,
        env={**checkout_env(), "TERM": "xterm"})
    os.close(terminal)
    screen = bytearray()
    loop = asyncio.get_running_loop()
    reading = loop.run_in_executor(None, _drain, controller, screen)
    out, _ = await asyncio.wait_for(process.communicate(), 120)
    await reading
    os.close(controller)
    return process.returncode or 0, out.decode(), screen.decode(errors="replace")


def _drain(fd: int, into: bytearray) -> None:
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the terminal's other end closed
            return
        if not chunk:
            return
        into.extend(chunk)


async def test_pull_shows_layer_progress(env: PodsEnv) -> None:
    image = progress_image()
    ib.push_image(env.registry, "test/progress", "1", image)
    proxy = FlakyProxy(env.registry, drops=0)
    proxy.throttle = 0.02  # about 3 MB/s: each pull takes a second or two
    await proxy.start()
    reference = f"{proxy.host}/test/progress:1"
    digests = [layer.digest.removeprefix("sha256:")[:12] for layer in image.layers]
    try:
        # not a terminal: plain lines, fed by WatchPull as the layers download
        code, out, err = await run_crispctl(env, "pull", reference)
        assert code == 0, err
        assert out == f"Image is up to date for {image.id}\n"
        lines = err.splitlines()
        assert lines[0] == f"Pulling {reference}" and lines[-1].startswith(f"Pulled {reference}")
        for digest in digests:
            assert any(line.startswith(f"{digest}: downloading ") for line in lines), err
            assert f"{digest}: done 1.5MB/1.5MB" in lines, err
        assert "\x1b" not in err  # no terminal codes in a log

        # on a terminal: rich's live bars, a row per layer
        assert (await run_crispctl(env, "rmi", reference))[0] == 0
        code, out, screen = await run_crispctl(env, "pull", reference, tty=True)
        assert code == 0, screen
        assert out == f"Image is up to date for {image.id}\n"
        assert "\x1b[" in screen and "━" in screen, screen
        for digest in digests:
            assert digest in screen and "1.5/1.5 MB" in screen, screen
        assert "Traceback" not in screen

        # a pull that fails prints its one error line and no progress
        for missing, code_name in ((f"{proxy.host}/test/absent:1", "NOT_FOUND"),
                                   ("Bad//Reference", "INVALID_ARGUMENT")):
            code, out, err = await run_crispctl(env, "pull", missing)
            assert code == 1 and out == ""
            [line] = err.splitlines()
            assert code_name in line, line
    finally:
        await proxy.stop()
        await run_crispctl(env, "rmi", reference)


def test_pull_from_a_runtime_without_progress(tmp_path: Path) -> None:
    """Another CRI runtime has no WatchPull: the pull shows its start and end lines only."""

    class Images(cri_pb2_grpc.ImageServiceServicer):  # type: ignore[misc]
        def PullImage(self, request: Any, context: Any) -> Any:
            time.sleep(0.5)
            return cri_pb2.PullImageResponse(image_ref="sha256:" + "ab" * 32)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    cri_pb2_grpc.add_ImageServiceServicer_to_server(Images(), server)
    socket = tmp_path / "other.sock"
    server.add_insecure_port(f"unix://{socket}")
    server.start()
    try:
        result = crispctl(socket, "pull", "example.com/app:1")
    finally:
        server.stop(0)
    assert result.stdout == f"Image is up to date for sha256:{'ab' * 32}\n"
    lines = result.stderr.splitlines()
    assert lines[0] == "Pulling example.com/app:1" and lines[1].startswith(
        "Pulled example.com/app:1 in "), result.stderr
    assert len(lines) == 2


class RecordingImages(cri_pb2_grpc.ImageServiceServicer):  # type: ignore[misc]
    """An image service on a socket of its own that answers from the real daemon and keeps
    the name of every call it was asked."""

    def __init__(self, daemon_socket: Path):
        self.channel = grpc.insecure_channel(f"unix://{daemon_socket}")
        self.upstream = cri_pb2_grpc.ImageServiceStub(self.channel)
        self.calls: list[str] = []

    def ImageStatus(self, request: Any, context: Any) -> Any:
        self.calls.append("ImageStatus")
        return self.upstream.ImageStatus(request, timeout=10)

    def PullImage(self, request: Any, context: Any) -> Any:
        self.calls.append("PullImage")
        return self.upstream.PullImage(request, timeout=60)


def test_create_and_run_use_the_image_endpoint(env: PodsEnv, tmp_path: Path) -> None:
    images = RecordingImages(env.daemon.socket)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    cri_pb2_grpc.add_ImageServiceServicer_to_server(images, server)
    socket = tmp_path / "images.sock"
    server.add_insecure_port(f"unix://{socket}")
    server.start()
    pod_file, container_file = write_configs(env, tmp_path, "ctl-image-ep", ["sleep", "3600"])

    def attempt(n: int) -> str:  # the same container config, another attempt (another name)
        config = yaml.safe_load(container_file.read_text())
        config["metadata"]["attempt"] = n
        path = tmp_path / f"attempt-{n}.yaml"
        path.write_text(yaml.safe_dump(config))
        return str(path)

    try:
        container_id = ctl(env, "-i", str(socket), "run", "--with-pull", str(container_file),
                           str(pod_file)).stdout.strip()
        assert images.calls == ["ImageStatus"]  # present already: looked up, not pulled
        pod_id = yaml.safe_load(ctl(env, "ps", "-o", "yaml", "--id", container_id).stdout)[
            "containers"][0]["podSandboxId"]
        ctl(env, "-i", str(socket), "create", "--with-pull", pod_id, attempt(1), str(pod_file))
        assert images.calls == ["ImageStatus", "ImageStatus"]
        # without -i the image calls go to the runtime endpoint, as before
        ctl(env, "create", "--with-pull", pod_id, attempt(2), str(pod_file))
        assert len(images.calls) == 2
        # the image endpoint down: the error names it, not the runtime endpoint
        server.stop(0).wait()
        failed = one_error_line(ctl(env, "-i", str(socket), "create", "--with-pull", pod_id,
                                    attempt(3), str(pod_file), check=False), "UNAVAILABLE")
        assert str(socket) in failed and str(env.daemon.socket) not in failed
    finally:
        server.stop(0)
        images.channel.close()
        for pod in ctl(env, "pods", "-q", "--name", "ctl-image-ep").stdout.split():
            ctl(env, "rmp", "-f", pod)


def test_debug_logs_each_call(env: PodsEnv, tmp_path: Path) -> None:
    result = ctl(env, "-D", "version")
    lines = [line for line in result.stderr.splitlines() if "DEBUG" in line]
    assert len(lines) == 2, result.stderr
    assert "/runtime.v1.RuntimeService/Version on unix://" in lines[0]
    assert "request: {}" in lines[0]
    assert "/runtime.v1.RuntimeService/Version OK in " in lines[1] and " ms " in lines[1]
    assert '"runtimeName":"crisp"' in lines[1]
    assert "RuntimeName:  crisp" in result.stdout  # the output itself is unchanged

    failed = ctl(env, "-D", "inspect", "0123456789abcdef", check=False)
    assert failed.returncode == 1
    debug = [line for line in failed.stderr.splitlines() if "DEBUG" in line]
    assert any("ContainerStatus NOT_FOUND in " in line for line in debug), failed.stderr
    assert failed.stderr.splitlines()[-1].startswith("crispctl: unix://")

    # credentials never reach the log
    pulled = ctl(env, "-D", "pull", "--creds", "alice:s3cret", env.busybox)
    assert "s3cret" not in pulled.stderr
    assert "<redacted>" in pulled.stderr
    assert "/runtime.v1.ImageService/PullImage OK in " in pulled.stderr
