"""A daemon that has spoken no TLS has not loaded OpenSSL; its first TLS use loads it and works.

The daemon imports asyncio with ssl blocked (crisp.tlsload): these check, on a real daemon's
memory map, that ssl stays out until a registry pull or a TLS streaming server needs it, and
that asyncio then does TLS both ways (the pull connects out, the streaming server accepts).
"""

from __future__ import annotations

import asyncio
import os
import ssl
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from crisp.api import cri_pb2
from crisp.streaming.client import StreamOptions, open_command, pump
from tests.integration.conftest import DaemonFactory
from tests.support import image_builder as ib
from tests.support.daemon import CrispDaemon
from tests.support.pods import pods_environment
from tests.support.registry import ServerTLS, running_registry
from tests.support.tls import CA, make_ca

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="unpacking layers needs root"),
]

# Python's ssl and hashlib back ends and the OpenSSL libraries: what an idle daemon must not map.
SSL_FILES = ("/_ssl.", "/libssl.so", "/_hashlib.", "/libcrypto.so")


def ssl_mapped(daemon: CrispDaemon) -> list[str]:
    assert daemon.process is not None
    maps = Path(f"/proc/{daemon.process.pid}/maps").read_text()
    return sorted({line.split()[-1] for line in maps.splitlines()
                   if any(name in line for name in SSL_FILES)})


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CA:
    return make_ca(tmp_path_factory.mktemp("ca"))


def test_openssl_loads_with_the_first_https_pull(make_daemon: DaemonFactory, tmp_path: Path,
                                                ca: CA) -> None:
    image = ib.busybox_image()
    server = ca.issue(tmp_path, "registry")
    with running_registry() as plain:
        ib.push_image(plain.url, "test/busybox", "latest", image)
        with running_registry(tls=ServerTLS(server.cert, server.key),
                              storage=plain.directory / "storage") as tls:
            daemon = make_daemon(f'[registries.tls."{tls.host}"]\nca_file = "{ca.cert_path}"\n')
            daemon.runtime.ListPodSandbox(cri_pb2.ListPodSandboxRequest())
            assert ssl_mapped(daemon) == []
            pulled = daemon.images.PullImage(cri_pb2.PullImageRequest(
                image=cri_pb2.ImageSpec(image=f"{tls.host}/test/busybox:latest")))
            assert pulled.image_ref == image.id
            assert ssl_mapped(daemon) != []  # the pull did load it, in the daemon


@pytest.fixture(scope="module")
def tls_streaming(ca: CA) -> Iterator[tuple[str, ssl.SSLContext]]:
    """A daemon whose streaming server speaks TLS, and a running container's Exec URL maker."""
    with tempfile.TemporaryDirectory(prefix="crisp-tlsstream-") as base:
        pair = ca.issue(Path(base), "streaming")
        config = f'[streaming]\ntls_cert_file = "{pair.cert}"\ntls_key_file = "{pair.key}"\n'
        with pods_environment(Path(base), config) as env:
            pod_id = env.run_pod()
            container = env.run_container(pod_id, env.container_config(
                "shell", ["sh", "-c", "sleep 3600"]))
            url = env.runtime.Exec(cri_pb2.ExecRequest(
                container_id=container, cmd=["sh", "-c", "echo over tls; exit 3"],
                stdout=True, stderr=True)).url
            yield str(url), ssl.create_default_context(cafile=str(ca.cert_path))
            env.remove_pod(pod_id)


@pytest.mark.parametrize("transport", ["spdy"])
def test_exec_over_a_tls_streaming_server(tls_streaming: tuple[str, ssl.SSLContext],
                                          transport: str) -> None:
    url, context = tls_streaming
    assert url.startswith("https://")
    out = bytearray()

    async def run() -> int:
        async def keep(data: bytes) -> None:
            out.extend(data)

        async with await open_command(url, StreamOptions(), transport, context) as command:
            return await pump(command, stdin=None, stdout=keep, stderr=keep)

    assert asyncio.run(run()) == 3
    assert bytes(out) == b"over tls\n"
