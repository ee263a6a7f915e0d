"""Start-up, signals and shutdown of the crisp daemon, and nothing else.

The daemon holds an exclusive lock in its run dir for its whole life, so a second daemon on
the same state refuses to start instead of fighting the first over containers. A socket file
nobody answers on is left over from a crash and is replaced.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import os
import signal
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc

from crisp import __version__, logsetup, sdnotify
from crisp.api import cri_pb2, cri_pb2_grpc, crisp_images_pb2, crisp_images_pb2_grpc
from crisp.config import ConfigError, LiveConfig
from crisp.errors import CrispError
from crisp.filemodes import DAEMON_UMASK, private_dir
from crisp.server.errors import ErrorLayer
from crisp.server.images import CrispImagesServicer, ImageServicer
from crisp.server.layers import Layer, layered
from crisp.server.runtime import RuntimeServicer
from crisp.server.services import Services
from crisp.server.validation import RequestCheckLayer

log = logging.getLogger(__name__)

SHUTDOWN_GRACE_SECONDS = 30.0


class StartupError(RuntimeError):
    """The daemon cannot start; the message says why and what to do."""


def run(live: LiveConfig, on_locked: Callable[[], None] | None = None) -> None:
    """Serve until SIGTERM or SIGINT; ``on_locked`` runs once this daemon holds the lock
    (the pid file is written then, so a refused second daemon cannot touch the first's)."""
    # First: everything crisp creates from here on is root's alone unless made public on
    # purpose (crisp.filemodes); helper programs get the usual umask back.
    os.umask(DAEMON_UMASK)
    config = live.current
    run_dir = Path(config.run_dir)
    # Bundles, runtime state and namespace pins: nothing there is for other users.
    private_dir(run_dir)
    with _exclusive_lock(run_dir / "crisp.lock"):
        if on_locked is not None:
            on_locked()
        socket_path = Path(config.socket)
        _prepare_socket(socket_path)
        try:
            asyncio.run(_serve(live, socket_path))
        finally:
            socket_path.unlink(missing_ok=True)


async def _serve(live: LiveConfig, socket_path: Path) -> None:
    services = await Services.open(live)
    try:
        try:
            await services.streaming.start_if_configured()
        except CrispError as error:
            raise StartupError(str(error)) from error
        await _serve_until_stopped(live, services, socket_path)
    finally:
        await services.close()


async def _serve_until_stopped(live: LiveConfig, services: Services, socket_path: Path) -> None:
    layers: list[Layer] = []
    metrics_config = live.current.metrics
    if metrics_config.enabled:
        # prometheus_client costs several MiB of RSS: only daemons that serve metrics load it.
        from crisp.server.metrics import GrpcMetrics, MetricsLayer

        metrics = GrpcMetrics()
        address = f"{metrics_config.address}:{metrics_config.port}"
        try:
            metrics.serve(metrics_config.address, metrics_config.port)
        except OSError as error:  # a port in use, an address not on this host
            raise StartupError(
                f"cannot serve metrics on {address}: {error.strerror or error}; free the "
                "port or set metrics.address/metrics.port"
            ) from error
        layers.append(MetricsLayer(metrics))
    # Outermost first: metrics see every call, errors map what the request check refuses.
    layers += [ErrorLayer(live.current.root_dir), RequestCheckLayer()]

    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", 16 * 1024 * 1024),
            ("grpc.max_send_message_length", 16 * 1024 * 1024),
        ],
    )
    cri = cri_pb2.DESCRIPTOR.services_by_name
    cri_pb2_grpc.add_RuntimeServiceServicer_to_server(
        layered(RuntimeServicer(services), cri["RuntimeService"], layers), server)
    cri_pb2_grpc.add_ImageServiceServicer_to_server(
        layered(ImageServicer(services.images, services.pods.image_volume_users),
                cri["ImageService"], layers), server)
    crisp_images_pb2_grpc.add_ImagesServicer_to_server(
        layered(CrispImagesServicer(services.images),
                crisp_images_pb2.DESCRIPTOR.services_by_name["Images"], layers), server)
    server.add_insecure_port(f"unix:{socket_path}")  # sun_path is then exactly socket_path

    # Under the daemon's umask the socket is born 0600, never briefly world-writable; then
    # its group may connect too.
    await server.start()
    os.chmod(socket_path, 0o660)
    log.info("crisp %s serving CRI on %s", __version__, socket_path)
    sdnotify.notify(f"READY=1\nSTATUS=serving CRI on {socket_path}")

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGHUP, _reload, live)
    try:
        await stop.wait()
        log.info("stopping: finishing calls in flight; containers keep running")
        sdnotify.notify("STOPPING=1")
        await server.stop(SHUTDOWN_GRACE_SECONDS)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(signum)
    log.info("stopped")


def _reload(live: LiveConfig) -> None:
    source = live.path or "built-in defaults"
    try:
        result = live.reload()
    except ConfigError as error:
        log.error("config reload failed, keeping the running config:\n%s", error)
        return
    config = live.current
    logsetup.configure(config.log_level, config.log_format)
    if result.applied:
        log.info("config reloaded from %s; changed: %s", source, ", ".join(result.applied))
    else:
        log.info("config reloaded from %s; nothing changed", source)
    if result.needs_restart:
        log.warning(
            "these changes take effect only after a restart: %s", ", ".join(result.needs_restart)
        )


@contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` for as long as the daemon runs."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise StartupError(
                f"another crisp daemon (pid {holder}) is already running with run dir "
                f"{path.parent}; stop it first or give this one another run_dir and socket"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def _prepare_socket(path: Path) -> None:
    """Make the socket's directory private and clear a stale socket; refuse a live one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    if not path.exists() and not path.is_symlink():
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError as error:
        if error.errno not in (errno.ECONNREFUSED, errno.ENOTSOCK, errno.ENOENT):
            raise StartupError(f"cannot check socket {path}: {error}") from error
        log.info("replacing stale socket %s", path)
        path.unlink(missing_ok=True)
    else:
        raise StartupError(
            f"something is already serving on {path}; stop it or configure another socket"
        )
    finally:
        probe.close()
