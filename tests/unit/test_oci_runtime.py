"""The runc and conmon command lines crisp builds, and how it reads their answers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from crisp.config import Config
from crisp.errors import FailedPrecondition, InvalidArgument
from crisp.oci.backend import backend_for
from crisp.oci.conmon import Conmon, ContainerFiles, MonitorOptions, read_exit_code
from crisp.oci.runtime import OCIRuntime, _message


def files(tmp_path: Path) -> ContainerFiles:
    return ContainerFiles(bundle=tmp_path / "bundle", exit_dir=tmp_path / "exits",
                          persist_dir=tmp_path / "persist", socket_dir=tmp_path / "attach",
                          container_id="abc")


def test_conmon_command_line(tmp_path: Path) -> None:
    conmon = Conmon("/usr/bin/conmon", OCIRuntime("/usr/sbin/runc", tmp_path / "root"))
    args = conmon.command(files(tmp_path), MonitorOptions(name="app", log_path="/logs/app.log",
                                                         tty=True, stdin=True))
    assert args[0] == "/usr/bin/conmon"
    joined = " ".join(args)
    assert "--cid abc" in joined and "--runtime /usr/sbin/runc" in joined
    assert f"--runtime-arg --root={tmp_path / 'root'}" in joined
    assert "--log-path k8s-file:/logs/app.log" in joined
    assert f"--exit-dir {tmp_path / 'exits'}" in joined
    assert "--terminal" in args and "--stdin" in args and "--leave-stdin-open" in args
    once = conmon.command(files(tmp_path), MonitorOptions(name="a", log_path="/l", stdin=True,
                                                         stdin_once=True))
    assert "--leave-stdin-open" not in once


def test_exit_codes_are_read_from_the_exit_file(tmp_path: Path) -> None:
    paths = files(tmp_path)
    assert read_exit_code(paths) is None
    paths.exit_dir.mkdir()
    paths.exit_file.write_text("137")
    assert read_exit_code(paths) == 137
    paths.exit_file.write_text("garbage")
    assert read_exit_code(paths) is None


def test_reopen_log_without_a_monitor_is_a_failed_precondition(tmp_path: Path) -> None:
    paths = files(tmp_path)
    with pytest.raises(FailedPrecondition):
        Conmon.reopen_log(paths)
    paths.bundle.mkdir()
    os.mkfifo(paths.ctl_fifo)
    with pytest.raises(FailedPrecondition):  # a fifo nobody reads: conmon is gone
        Conmon.reopen_log(paths)


def test_reopen_log_writes_the_reopen_message(tmp_path: Path) -> None:
    paths = files(tmp_path)
    paths.bundle.mkdir()
    os.mkfifo(paths.ctl_fifo)
    reader = os.open(paths.ctl_fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        Conmon.reopen_log(paths)
        assert os.read(reader, 100) == b"2 0 0\n"
    finally:
        os.close(reader)


@pytest.mark.parametrize(("stderr", "message"), [
    (b'time="2024" level=error msg="container \\"x\\" does not exist"\n',
     'container \\"x\\" does not exist'),
    (b'{"level":"error","msg":"no such thing"}\n', "no such thing"),
    (b"plain failure\n", "plain failure"),
    (b"", "(no output)"),
])
def test_runc_messages_lose_their_decoration(stderr: bytes, message: str) -> None:
    assert _message(stderr) == message


def test_backends_come_from_the_configured_handlers(tmp_path: Path) -> None:
    config = Config(run_dir=str(tmp_path))
    backend = backend_for(config, "")
    assert backend.name == "runc"
    assert backend.runtime.root == tmp_path / "runtimes" / "runc"
    with pytest.raises(InvalidArgument, match="runc"):
        backend_for(config, "kata")
