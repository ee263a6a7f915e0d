"""A real crisp daemon for integration tests: its own root, run dir, socket and config."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc

from crisp.api import cri_pb2, cri_pb2_grpc, crisp_images_pb2_grpc

START_TIMEOUT = 20.0
# Daemons run this checkout's code, whichever crisp happens to be installed.
SOURCE_DIR = Path(__file__).resolve().parents[2] / "src"


def checkout_env(**extra: str) -> dict[str, str]:
    """The environment for a crisp process that must run this checkout's code."""
    return {**os.environ, "PYTHONPATH": str(SOURCE_DIR), **extra}


class CrispDaemon:
    """One `python -m crisp` process, started on demand and always cleaned up by the owner."""

    def __init__(self, base: Path, config: str = "", root: Path | None = None):
        self.base = base
        self.root = root or base / "root"
        self.run_dir = base / "run"
        self.socket = self.run_dir / "crisp.sock"
        self.config_path = base / "crisp.toml"
        self.log_path = base / "crisp.log"
        self.extra_config = config
        self.process: subprocess.Popen[bytes] | None = None
        self.env: dict[str, str] = {}  # extra environment of the daemon (NOTIFY_SOCKET, ...)
        self._channel: grpc.Channel | None = None
        self.write_config(config)

    def write_config(self, extra: str) -> None:
        """Write the config file: the test paths first, then ``extra`` (TOML) after them."""
        self.extra_config = extra
        head = (
            f'root_dir = "{self.root}"\nrun_dir = "{self.run_dir}"\n'
            f'socket = "{self.socket}"\nlog_level = "debug"\n'
        )
        self.config_path.write_text(head + extra)

    def start(self, wait: bool = True) -> CrispDaemon:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "crisp", "--config", str(self.config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=checkout_env(PYTHONUNBUFFERED="1", **self.env),
        )
        log.close()
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"crisp exited with {self.process.returncode}:\n{self.log()}")
            if self.socket.exists():
                try:
                    self.runtime.Version(cri_pb2.VersionRequest(), timeout=2)
                    return
                except grpc.RpcError:
                    pass
            time.sleep(0.05)
        raise RuntimeError(f"crisp did not answer within {START_TIMEOUT}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        self._close_channel()
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        self._close_channel()
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def restart(self) -> CrispDaemon:
        self.stop()
        return self.start()

    @property
    def channel(self) -> grpc.Channel:
        if self._channel is None:
            self._channel = grpc.insecure_channel(f"unix://{self.socket}")
        return self._channel

    @property
    def runtime(self) -> Any:
        return cri_pb2_grpc.RuntimeServiceStub(self.channel)

    @property
    def images(self) -> Any:
        return cri_pb2_grpc.ImageServiceStub(self.channel)

    @property
    def crisp_images(self) -> Any:
        """crisp's own image extension service (import, export, pull progress)."""
        return crisp_images_pb2_grpc.ImagesStub(self.channel)

    def pull(self, reference: str, timeout: float = 120.0) -> str:
        """PullImage of ``reference``; the pulled image's id."""
        request = cri_pb2.PullImageRequest(image=cri_pb2.ImageSpec(image=reference))
        return str(self.images.PullImage(request, timeout=timeout).image_ref)

    def _close_channel(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None
