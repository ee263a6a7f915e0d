"""Registries reached as real nodes set them up: private CAs, mTLS, containerd hosts dirs.

A plain docker-registry gets the images; registries serving the same storage over TLS (with
certificates from a CA made here) are what crisp pulls from.
"""

from __future__ import annotations

import base64
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from crisp.config import Config, LiveConfig, RegistryConfig, RegistryTLS
from crisp.errors import CrispError, FailedPrecondition
from crisp.images import Credentials
from tests.integration.test_images_pull import open_service
from tests.support import image_builder as ib
from tests.support.registry import (
    FlakyProxy,
    Registry,
    ServerTLS,
    free_port,
    running_registry,
)
from tests.support.tls import CA, make_ca

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="unpacking layers needs root"),
]


@dataclass
class Plain:
    registry: Registry
    image: ib.Image
    storage: Path


@pytest.fixture(scope="module")
def plain() -> Iterator[Plain]:
    image = ib.busybox_image()
    with running_registry() as registry:
        ib.push_image(registry.url, "test/busybox", "latest", image)
        yield Plain(registry, image, registry.directory / "storage")


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CA:
    return make_ca(tmp_path_factory.mktemp("ca"))


def config(tmp: Path, **registries: object) -> LiveConfig:
    return LiveConfig(Config(root_dir=str(tmp / "root"),
                             registries=RegistryConfig(**registries)), None)  # type: ignore[arg-type]


async def pull(live: LiveConfig, tmp: Path, reference: str) -> str:
    async with open_service(tmp / "root", live) as svc:
        return (await svc.pull(reference)).id


async def test_private_ca_and_skip_verify(tmp_path: Path, plain: Plain, ca: CA) -> None:
    server = ca.issue(tmp_path, "server")
    with running_registry(tls=ServerTLS(server.cert, server.key), storage=plain.storage) as tls:
        reference = f"{tls.host}/test/busybox:latest"
        trusted = config(tmp_path, tls={tls.host: RegistryTLS(ca_file=str(ca.cert_path))})
        assert await pull(trusted, tmp_path, reference) == plain.image.id
        unverified = config(tmp_path, tls={tls.host: RegistryTLS(insecure_skip_verify=True)})
        assert await pull(unverified, tmp_path, reference) == plain.image.id


async def test_insecure_plain_http_registry_falls_back_from_https(tmp_path: Path,
                                                                  plain: Plain) -> None:
    """An insecure host that speaks only HTTP: the unverified HTTPS try fails, HTTP serves."""
    for host in (plain.registry.host, plain.registry.host.replace("127.0.0.1", "localhost")):
        live = config(tmp_path, insecure=[host])
        assert await pull(live, tmp_path, f"{host}/test/busybox:latest") == plain.image.id


@pytest.mark.parametrize("problem", ["unknown authority", "name mismatch", "expired"])
async def test_tls_errors_name_the_host_and_reason(tmp_path: Path, plain: Plain, ca: CA,
                                                   problem: str) -> None:
    server = ca.issue(tmp_path, "server",
                      hosts=("registry.example",) if problem == "name mismatch" else ("127.0.0.1",),
                      expired=problem == "expired")
    with running_registry(tls=ServerTLS(server.cert, server.key), storage=plain.storage) as tls:
        ca_file = "" if problem == "unknown authority" else str(ca.cert_path)
        live = config(tmp_path, tls={tls.host: RegistryTLS(ca_file=ca_file)})
        with pytest.raises(FailedPrecondition) as raised:
            await pull(live, tmp_path, f"{tls.host}/test/busybox:latest")
        assert tls.host in str(raised.value)
        assert problem in str(raised.value)


async def test_mutual_tls(tmp_path: Path, plain: Plain, ca: CA) -> None:
    server = ca.issue(tmp_path, "server")
    client = ca.issue(tmp_path, "client", client=True)
    with running_registry(tls=ServerTLS(server.cert, server.key, client_ca=ca.cert_path),
                          storage=plain.storage) as tls:
        reference = f"{tls.host}/test/busybox:latest"
        without = config(tmp_path, tls={tls.host: RegistryTLS(ca_file=str(ca.cert_path))})
        with pytest.raises(CrispError, match=f"{tls.host}.*client certificate"):
            await pull(without, tmp_path, reference)
        with_cert = config(tmp_path, tls={tls.host: RegistryTLS(
            ca_file=str(ca.cert_path), cert_file=str(client.cert), key_file=str(client.key))})
        assert await pull(with_cert, tmp_path, reference) == plain.image.id


async def test_hosts_dir_mirror_with_its_own_ca_and_client_cert(tmp_path: Path, plain: Plain,
                                                                 ca: CA) -> None:
    server = ca.issue(tmp_path, "server")
    client = ca.issue(tmp_path, "client", client=True)
    with running_registry(tls=ServerTLS(server.cert, server.key, client_ca=ca.cert_path),
                          storage=plain.storage) as mirror:
        hosts = tmp_path / "certs.d" / "upstream.invalid:5000"
        hosts.mkdir(parents=True)
        (hosts / "ca.crt").write_bytes(ca.cert_path.read_bytes())
        (hosts / "hosts.toml").write_text(
            'server = "https://upstream.invalid:5000"\n\n'
            f'[host."https://{mirror.host}/v2"]\n'
            '  capabilities = ["pull", "resolve"]\n'
            '  ca = "ca.crt"\n'
            f'  client = [["{client.cert}", "{client.key}"]]\n'
            '  [host."https://' + mirror.host + '/v2".header]\n'
            '    x-crisp-test = "yes"\n')
        live = config(tmp_path, config_path=str(tmp_path / "certs.d"))
        # the registry itself does not exist: only the mirror can serve this
        assert await pull(live, tmp_path, "upstream.invalid:5000/test/busybox:latest") == \
            plain.image.id


async def test_hosts_dir_capabilities_and_default(tmp_path: Path, plain: Plain) -> None:
    proxy = FlakyProxy(plain.registry.url, drops=0)
    await proxy.start()
    try:
        default = tmp_path / "certs.d" / "_default"
        default.mkdir(parents=True)
        # the mirror may serve blobs only: the tag is resolved at the server
        (default / "hosts.toml").write_text(
            f'server = "{plain.registry.url}"\n'
            f'[host."http://{proxy.host}"]\n  capabilities = ["pull"]\n')
        live = config(tmp_path, config_path=str(tmp_path / "certs.d"))
        assert await pull(live, tmp_path, "anything.invalid/test/busybox:latest") == \
            plain.image.id
        assert proxy.blob_requests >= 1
    finally:
        await proxy.stop()


USERS = {"alice": "wonderland"}


async def test_credentials_go_only_to_their_registry(tmp_path: Path) -> None:
    image = ib.busybox_image()
    with running_registry(users=USERS) as private:
        ib.push_image(private.url, "private/busybox", "latest", image, "alice", "wonderland")
        mirror = FlakyProxy(private.url, drops=0)  # another host in front of the same content
        await mirror.start()
        try:
            live = config(tmp_path, mirrors={private.host: [f"http://{mirror.host}"]})
            reference = f"{private.host}/private/busybox:latest"
            alice = Credentials(username="alice", password="wonderland",
                                server_address=f"https://{private.host}")
            async with open_service(tmp_path / "root", live) as svc:
                assert (await svc.pull(reference, alice)).id == image.id
                # the mirror was asked, anonymously, and never saw alice's password
                assert mirror.authorizations == []
                # credentials for another registry are not sent to this one either
                await svc.remove(image.id)
                elsewhere = Credentials(username="alice", password="wonderland",
                                        server_address="other.example:5000")
                with pytest.raises(CrispError, match="needs a username and password") as raised:
                    await svc.pull(reference, elsewhere)
                assert "wonderland" not in str(raised.value)
                assert "wonderland" not in repr(alice)
        finally:
            await mirror.stop()


async def test_credentials_go_to_a_mirror_the_config_names(tmp_path: Path, ca: CA) -> None:
    """A private mirror over TLS with the same users as its registry gets the registry's
    credentials when registries.mirror_credentials names it; a mirror it does not name (tried
    first) never sees them."""
    image = ib.busybox_image()
    server = ca.issue(tmp_path, "server")
    with running_registry(users=USERS) as private, \
            running_registry(users=USERS, tls=ServerTLS(server.cert, server.key),
                             storage=private.directory / "storage") as trusted:
        ib.push_image(private.url, "private/busybox", "latest", image, "alice", "wonderland")
        other = FlakyProxy(private.url, drops=0)
        await other.start()
        try:
            # the registry itself is down: only a mirror can serve this pull
            upstream = f"127.0.0.1:{free_port()}"
            reference = f"{upstream}/private/busybox:latest"
            alice = Credentials(username="alice", password="wonderland",
                                server_address=upstream)
            setup: dict[str, object] = {
                "mirrors": {upstream: [f"http://{other.host}", f"https://{trusted.host}"]},
                "tls": {trusted.host: RegistryTLS(ca_file=str(ca.cert_path))},
            }
            async with open_service(tmp_path / "root", config(tmp_path, **setup)) as svc:
                with pytest.raises(CrispError) as raised:
                    await svc.pull(reference, alice)  # no mirror may have alice's password
                assert "wonderland" not in str(raised.value)
            live = config(tmp_path, **setup, mirror_credentials={upstream: [trusted.host]})
            async with open_service(tmp_path / "root", live) as svc:
                assert (await svc.pull(reference, alice)).id == image.id
            assert other.requests > 0 and other.authorizations == []
        finally:
            await other.stop()


async def test_node_wide_auth_file(tmp_path: Path) -> None:
    image = ib.busybox_image()
    with running_registry(users=USERS) as private:
        ib.push_image(private.url, "private/busybox", "latest", image, "alice", "wonderland")
        auth_file = tmp_path / "config.json"
        auth_file.write_text(json.dumps({"auths": {
            "https://index.docker.io/v1/": {"auth": base64.b64encode(b"bob:x").decode()},
            private.host: {"auth": base64.b64encode(b"alice:wonderland").decode()},
        }}))
        live = config(tmp_path, auth_file=str(auth_file))
        assert await pull(live, tmp_path, f"{private.host}/private/busybox:latest") == image.id


async def test_registries_conf_mirror_rewrite_search_and_drop_ins(tmp_path: Path,
                                                                  plain: Plain) -> None:
    proxy = FlakyProxy(plain.registry.url, drops=0)
    await proxy.start()
    try:
        conf = tmp_path / "registries.conf"
        conf.write_text(
            'unqualified-search-registries = ["nowhere.invalid"]\n'
            '[[registry]]\nprefix = "upstream.invalid:5000"\nlocation = "upstream.invalid:5000"\n'
            f'[[registry.mirror]]\nlocation = "{proxy.host}"\n'
            # a namespace moved: example.invalid/apps/X is <registry>/test/X
            f'[[registry]]\nprefix = "example.invalid/apps"\n'
            f'location = "{plain.registry.host}/test"\n')
        (tmp_path / "registries.conf.d").mkdir()
        (tmp_path / "registries.conf.d" / "50-search.conf").write_text(
            f'unqualified-search-registries = ["{plain.registry.host}"]\n')
        live = config(tmp_path, registries_conf=str(conf))
        async with open_service(tmp_path / "root", live) as svc:
            assert (await svc.pull("upstream.invalid:5000/test/busybox:latest")).id == \
                plain.image.id
            assert proxy.blob_requests >= 1
            await svc.remove(plain.image.id)
            pulled = await svc.pull("example.invalid/apps/busybox:latest")
            assert pulled.id == plain.image.id
            assert pulled.repo_tags == ["example.invalid/apps/busybox:latest"]
            await svc.remove(plain.image.id)
            # a short name uses the drop-in's search list (registries.search is at its default)
            assert (await svc.pull("test/busybox:latest")).id == plain.image.id
    finally:
        await proxy.stop()


async def test_registries_conf_digest_only_mirror_and_blocked(tmp_path: Path,
                                                              plain: Plain) -> None:
    proxy = FlakyProxy(plain.registry.url, drops=0)
    await proxy.start()
    try:
        conf = tmp_path / "registries.conf"
        conf.write_text(
            f'[[registry]]\nlocation = "{plain.registry.host}"\n'
            f'[[registry.mirror]]\nlocation = "{proxy.host}"\npull-from-mirror = "digest-only"\n'
            '[[registry]]\nlocation = "evil.invalid"\nblocked = true\n')
        live = config(tmp_path, registries_conf=str(conf))
        async with open_service(tmp_path / "root", live) as svc:
            assert (await svc.pull(f"{plain.registry.host}/test/busybox:latest")).id == \
                plain.image.id
            assert proxy.blob_requests == 0  # a pull by tag does not use a digest-only mirror
            with pytest.raises(FailedPrecondition, match=r"evil\.invalid is blocked") as raised:
                await svc.pull("evil.invalid/any/thing:latest")
            assert str(conf) in str(raised.value)
    finally:
        await proxy.stop()


async def test_registries_conf_certs_d(tmp_path: Path, plain: Plain, ca: CA) -> None:
    server = ca.issue(tmp_path, "server")
    client = ca.issue(tmp_path, "client", client=True)
    with running_registry(tls=ServerTLS(server.cert, server.key, client_ca=ca.cert_path),
                          storage=plain.storage) as tls:
        certs = tmp_path / "containers-certs.d" / tls.host
        certs.mkdir(parents=True)
        (certs / "ca.crt").write_bytes(ca.cert_path.read_bytes())
        (certs / "client.cert").write_bytes(client.cert.read_bytes())
        (certs / "client.key").write_bytes(client.key.read_bytes())
        conf = tmp_path / "registries.conf"
        conf.write_text(f'[[registry]]\nlocation = "{tls.host}"\n')
        live = config(tmp_path, registries_conf=str(conf))
        certs_dirs = (str(tmp_path / "containers-certs.d"),)
        async with open_service(tmp_path / "root", live) as svc:
            # the registry helper process reads the certificate directories: patch them there
            svc.puller.client.command = [
                sys.executable, "-P", "-c",
                f"import crisp.images.endpoints as e; e.CERTS_DIRS = {certs_dirs!r}; "
                "from crisp.cli.daemon import main; raise SystemExit(main(['registry-helper']))",
            ]
            assert (await svc.pull(f"{tls.host}/test/busybox:latest")).id == plain.image.id
