"""crispctl without a daemon: shell completion, ``config`` (crictl.yaml) and call tracing."""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import sys
import threading
import time
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from crisp.api import cri_pb2, cri_pb2_grpc
from crisp.cli.client import build_parser
from crisp.cli.completion import script
from crisp.cli.endpoint import resolve_endpoint
from crisp.cli.tracing import REDACTED, Calls, describe, open_channel
from tests.support.daemon import checkout_env


def crispctl(*args: str, config: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = checkout_env()
    env.pop("CRI_CONFIG_FILE", None)
    command = [sys.executable, "-m", "crisp.cli.client",
               *(["--config", str(config)] if config else []), *args]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)
    assert "Traceback" not in result.stderr, result.stderr
    return result


def complete(tmp_path: Path, *words: str, shell_script: str | None = None) -> list[str]:
    """What bash's completion offers for the command line ``words`` (the last one is typed)."""
    path = tmp_path / "crispctl.bash"
    path.write_text(shell_script if shell_script is not None else script(build_parser(), "bash"))
    program = ('source "$1"; shift; COMP_WORDS=("$@"); COMP_CWORD=$(( $# - 1 )); '
               '_crispctl crispctl "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"; '
               'printf "%s\\n" "${COMPREPLY[@]}"')
    result = subprocess.run(["bash", "-c", program, "_", str(path), "crispctl", *words],
                            capture_output=True, text=True, cwd=tmp_path, check=True)
    return [line for line in result.stdout.splitlines() if line]


def test_bash_completion_is_valid_and_completes_verbs_flags_and_values(tmp_path: Path) -> None:
    printed = crispctl("completion", "bash")
    assert printed.returncode == 0, printed.stderr
    path = tmp_path / "printed.bash"
    path.write_text(printed.stdout)
    subprocess.run(["bash", "-n", str(path)], check=True)
    assert complete(tmp_path, "p", shell_script=printed.stdout) == [
        "pull", "pods", "ps", "port-forward"]
    # a global flag's value is skipped, so the verb after it still completes
    assert sorted(complete(tmp_path, "-r", "/run/x.sock", "inspect")) == [
        "inspect", "inspecti", "inspectp"]
    assert complete(tmp_path, "images", "") == ["import", "export"]
    assert complete(tmp_path, "images", "import", "--r") == ["--rootfs"]
    assert complete(tmp_path, "pods", "--st") == ["--state"]
    assert complete(tmp_path, "pods", "-o", "") == ["table", "json", "yaml"]
    assert complete(tmp_path, "ps", "--state", "r") == ["running"]
    assert complete(tmp_path, "completion", "") == ["bash", "zsh", "fish"]
    assert complete(tmp_path, "-D", "config", "--l") == ["--list"]
    # a flag that takes any value (a socket, a file) completes file names
    assert complete(tmp_path, "-r", "crisp") == ["crispctl.bash"]
    assert complete(tmp_path, "runp", "--runtime", "cr") == ["crispctl.bash"]


def test_zsh_and_fish_scripts() -> None:
    zsh = crispctl("completion", "zsh").stdout
    assert zsh.startswith("#compdef crispctl\n") and "bashcompinit" in zsh
    assert "complete -F _crispctl crispctl" in zsh
    fish = crispctl("completion", "fish").stdout
    assert "complete -c crispctl -n __fish_use_subcommand -a pods" in fish
    assert "__fish_seen_subcommand_from images; and not __fish_seen_subcommand_from import " \
           "export' -a import" in fish
    assert "-s q -l quiet" in fish
    if shutil.which("fish"):
        subprocess.run(["fish", "--no-execute", "-c", fish], check=True)
    assert crispctl("completion", "tcsh").returncode == 2


def test_config_set_get_list(tmp_path: Path) -> None:
    config = tmp_path / "etc" / "crictl.yaml"
    listed = crispctl("config", "--list", config=config)
    assert listed.returncode == 0 and listed.stdout.split()[:3] == ["KEY", "VALUE",
                                                                   "runtime-endpoint"]
    assert not config.exists()  # listing writes nothing
    assert crispctl("config", "--set", "runtime-endpoint=unix:///run/a.sock,timeout=5",
                    "--set", "debug=true", config=config).returncode == 0
    assert crispctl("config", "image-endpoint", "unix:///run/i.sock",
                    config=config).returncode == 0
    assert yaml.safe_load(config.read_text()) == {
        "runtime-endpoint": "unix:///run/a.sock", "image-endpoint": "unix:///run/i.sock",
        "timeout": 5, "debug": True}
    assert config.read_text().startswith("runtime-endpoint:")  # crictl's key order
    assert crispctl("config", "--get", "timeout", config=config).stdout == "5\n"
    assert crispctl("config", "debug", config=config).stdout == "true\n"
    rows = {line.split()[0]: line.split()[1:] for line in
            crispctl("config", "--list", config=config).stdout.splitlines()[1:]}
    assert rows["runtime-endpoint"] == ["unix:///run/a.sock"] and rows["timeout"] == ["5"]
    assert resolve_endpoint(None, config) == "unix:///run/a.sock"
    assert [p.name for p in config.parent.iterdir()] == ["crictl.yaml"]  # no temp file left

    # other keys a user put in the file survive a --set
    config.write_text(config.read_text() + "custom: kept\n")
    assert crispctl("config", "--set", "timeout=7", config=config).returncode == 0
    assert yaml.safe_load(config.read_text())["custom"] == "kept"

    # the settings take effect: -D names the endpoint from the file
    pods = crispctl("pods", config=config)
    assert "pods talks to unix:///run/a.sock" in pods.stderr


@pytest.mark.parametrize(("args", "message"), [
    (("--set", "timeout=soon"), "timeout takes a whole number of seconds"),
    (("--set", "debug=yes"), "debug takes true or false"),
    (("--set", "colour=blue"), "unknown config key 'colour'"),
    (("--set", "timeout"), "is not KEY=VALUE"),
    (("--get", "colour"), "unknown config key 'colour'"),
    ((), "config takes one of"),
    (("--list", "--get", "timeout"), "config takes one of"),
])
def test_config_errors_are_one_line(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    config = tmp_path / "crictl.yaml"
    config.write_text("timeout: 3\n")
    result = crispctl("config", *args, config=config)
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1 and message in result.stderr, result.stderr
    assert config.read_text() == "timeout: 3\n"


def test_config_refuses_a_file_that_is_not_a_map(tmp_path: Path) -> None:
    config = tmp_path / "crictl.yaml"
    config.write_text("- a\n- list\n")
    result = crispctl("config", "--set", "timeout=1", config=config)
    assert result.returncode == 2 and "must hold a map" in result.stderr
    config.write_text("runtime-endpoint: [unclosed\n")
    result = crispctl("config", "--list", config=config)
    assert result.returncode == 2 and "is not YAML" in result.stderr
    assert len(result.stderr.splitlines()) == 1


@pytest.mark.parametrize("args", [("completion",), ("completion", "tcsh"), ("pods", "-s", "x"),
                                  (), ("nosuchverb",), ("ps", "--bogus")])
def test_a_command_line_mistake_is_one_line(args: tuple[str, ...]) -> None:
    result = crispctl(*args)
    assert result.returncode == 2 and result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("crispctl") and "--help`)" in line, line


def test_pull_on_create_and_run_follow_crictl_yaml() -> None:
    from crisp.cli.container_commands import _should_pull

    def pulls(*argv: str, **settings: bool) -> bool:
        args = build_parser().parse_args(list(argv))
        args.settings = {key.replace("_", "-"): value for key, value in settings.items()}
        return _should_pull(args)

    assert not pulls("create", "p", "c.yaml", "p.yaml")
    assert pulls("create", "p", "c.yaml", "p.yaml", pull_image_on_create=True)
    assert not pulls("create", "--no-pull", "p", "c.yaml", "p.yaml", pull_image_on_create=True)
    assert pulls("run", "c.yaml", "p.yaml")
    assert not pulls("run", "c.yaml", "p.yaml", disable_pull_on_run=True)
    assert pulls("run", "--with-pull", "c.yaml", "p.yaml", disable_pull_on_run=True)


def test_debug_describes_requests_without_their_secrets() -> None:
    request = cri_pb2.PullImageRequest(
        image=cri_pb2.ImageSpec(image="registry.lan/app:1"),
        auth=cri_pb2.AuthConfig(username="alice", password="s3cret", auth="YWxpY2U6czNjcmV0",
                                identity_token="refresh", registry_token="bearer"))
    text = describe(request)
    assert "alice" in text and "registry.lan/app:1" in text
    for secret in ("s3cret", "YWxpY2U6czNjcmV0", "refresh", "bearer"):
        assert secret not in text
    assert text.count(REDACTED) == 4
    big = describe(cri_pb2.ExecSyncResponse(stdout=b"x" * 100_000))
    assert len(big) < 4100 and big.endswith("characters)")


def test_traced_channel_logs_calls_and_never_waits_on_a_future(tmp_path: Path) -> None:
    release = threading.Event()

    class Fake(cri_pb2_grpc.RuntimeServiceServicer,  # type: ignore[misc]
               cri_pb2_grpc.ImageServiceServicer):
        def Version(self, request: Any, context: Any) -> Any:
            return cri_pb2.VersionResponse(runtime_name="fake")

        def ContainerStatus(self, request: Any, context: Any) -> Any:
            context.abort(grpc.StatusCode.NOT_FOUND, "no such container")

        def PullImage(self, request: Any, context: Any) -> Any:
            release.wait(10)
            return cri_pb2.PullImageResponse(image_ref="sha256:" + "ab" * 32)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    cri_pb2_grpc.add_RuntimeServiceServicer_to_server(Fake(), server)
    cri_pb2_grpc.add_ImageServiceServicer_to_server(Fake(), server)
    target = f"unix://{tmp_path / 'fake.sock'}"
    server.add_insecure_port(target)
    server.start()
    out = io.StringIO()
    calls = Calls(debug=True, out=out)
    try:
        with open_channel(target, calls) as channel:
            runtime = cri_pb2_grpc.RuntimeServiceStub(channel)
            assert runtime.Version(cri_pb2.VersionRequest()).runtime_name == "fake"
            first, second = out.getvalue().splitlines()
            assert first == (f"crispctl: DEBUG /runtime.v1.RuntimeService/Version on {target} "
                             "request: {}")
            assert re.fullmatch(r"crispctl: DEBUG /runtime.v1.RuntimeService/Version OK in "
                                r"[0-9.]+ ms response: \{\"runtimeName\":\"fake\"\}", second)
            assert calls.failed_target is None
            with pytest.raises(grpc.RpcError):
                runtime.ContainerStatus(cri_pb2.ContainerStatusRequest(container_id="x"))
            assert calls.failed_target == target
            assert "ContainerStatus NOT_FOUND in " in out.getvalue()
            assert "no such container" in out.getvalue()
            pull = cri_pb2_grpc.ImageServiceStub(channel).PullImage.future(
                cri_pb2.PullImageRequest(image=cri_pb2.ImageSpec(image="app:1")))
            assert not pull.done()  # the tracer did not wait for it
            assert "PullImage OK" not in out.getvalue()
            release.set()
            assert pull.result(timeout=10).image_ref.startswith("sha256:")
            wait_until = time.monotonic() + 5
            while "PullImage OK" not in out.getvalue() and time.monotonic() < wait_until:
                time.sleep(0.01)
            assert "/runtime.v1.ImageService/PullImage OK in " in out.getvalue()
    finally:
        release.set()
        server.stop(0)
