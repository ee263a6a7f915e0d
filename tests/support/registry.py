"""A real ``docker-registry`` (Debian's distribution 2.8) for tests, on 127.0.0.1.

Each :class:`Registry` runs one registry process with its own temporary storage directory and
a free port, optionally behind htpasswd (basic) or token (bearer) authentication. Use
:func:`running_registry` as a context manager; the process and its storage are removed on exit,
also when the test fails.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REGISTRY_BINARY = "/usr/bin/docker-registry"
HTPASSWD_BINARY = "/usr/bin/htpasswd"


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def write_htpasswd(path: Path, users: dict[str, str]) -> Path:
    """Write an htpasswd file with bcrypt hashes (the only kind docker-registry accepts)."""
    lines = []
    for user, password in users.items():
        out = subprocess.run(
            [HTPASSWD_BINARY, "-nbB", user, password], check=True, capture_output=True, text=True
        ).stdout.strip()
        lines.append(out)
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass(frozen=True)
class ServerTLS:
    """The registry serves HTTPS with this cert; with ``client_ca`` it requires client certs."""

    cert: Path
    key: Path
    client_ca: Path | None = None


@dataclass(frozen=True)
class TokenAuth:
    """docker-registry's token auth: clients fetch a JWT from ``realm`` signed by ``cert``."""

    realm: str
    service: str
    issuer: str
    root_cert_bundle: Path


def registry_config(
    storage_dir: Path,
    port: int,
    *,
    htpasswd: Path | None = None,
    token: TokenAuth | None = None,
    tls: ServerTLS | None = None,
) -> str:
    """The YAML config of a registry on 127.0.0.1:``port`` storing under ``storage_dir``."""
    lines = [
        "version: 0.1",
        "log:",
        "  level: warn",
        "  accesslog:",
        "    disabled: true",
        "storage:",
        "  filesystem:",
        f"    rootdirectory: {storage_dir}",
        "  delete:",
        "    enabled: true",
        "http:",
        f"  addr: 127.0.0.1:{port}",
    ]
    if tls is not None:
        lines += ["  tls:", f"    certificate: {tls.cert}", f"    key: {tls.key}"]
        if tls.client_ca is not None:
            lines += ["    clientcas:", f"      - {tls.client_ca}"]
    if htpasswd is not None and token is not None:
        raise ValueError("a registry has either htpasswd or token auth, not both")
    if htpasswd is not None:
        lines += ["auth:", "  htpasswd:", "    realm: crisp-test", f"    path: {htpasswd}"]
    if token is not None:
        lines += [
            "auth:",
            "  token:",
            f"    realm: {token.realm}",
            f"    service: {token.service}",
            f"    issuer: {token.issuer}",
            f"    rootcertbundle: {token.root_cert_bundle}",
        ]
    return "\n".join(lines) + "\n"


@dataclass
class Registry:
    """One running registry process."""

    port: int
    directory: Path
    process: subprocess.Popen[bytes]
    users: dict[str, str] = field(default_factory=dict)
    tls: bool = False

    @property
    def host(self) -> str:
        """``127.0.0.1:<port>``, the registry part of image references."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _wait_ready(registry: Registry, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if registry.process.poll() is not None:
            log = (registry.directory / "registry.log").read_text(errors="replace")
            raise RuntimeError(f"docker-registry exited with {registry.process.returncode}: {log}")
        try:
            if registry.tls:
                with socket.create_connection(("127.0.0.1", registry.port), timeout=1):
                    return
            urllib.request.urlopen(f"{registry.url}/v2/", timeout=1).close()
            return
        except urllib.error.HTTPError:
            return  # 401 means it is up and asks for credentials
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"docker-registry on {registry.host} did not come up in {timeout}s")


@contextlib.contextmanager
def running_registry(
    *,
    users: dict[str, str] | None = None,
    token: TokenAuth | None = None,
    port: int | None = None,
    base_dir: Path | None = None,
    tls: ServerTLS | None = None,
    storage: Path | None = None,
) -> Iterator[Registry]:
    """Start a registry (basic auth if ``users`` is given, bearer if ``token``); stop it after.

    ``tls`` serves HTTPS; ``storage`` serves another registry's storage directory (push to a
    plain one, serve its content over TLS too).
    """
    directory = Path(tempfile.mkdtemp(prefix="crisp-registry-", dir=base_dir))
    process: subprocess.Popen[bytes] | None = None
    try:
        if storage is None:
            storage = directory / "storage"
            storage.mkdir()
        htpasswd = write_htpasswd(directory / "htpasswd", users) if users else None
        port = port or free_port()
        config = directory / "config.yml"
        config.write_text(registry_config(storage, port, htpasswd=htpasswd, token=token,
                                           tls=tls))
        log = open(directory / "registry.log", "wb")  # noqa: SIM115 - closed below
        try:
            process = subprocess.Popen(
                [REGISTRY_BINARY, "serve", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "OTEL_TRACES_EXPORTER": "none"},
            )
        finally:
            log.close()
        registry = Registry(port, directory, process, dict(users or {}), tls=tls is not None)
        _wait_ready(registry)
        yield registry
    finally:
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(directory, ignore_errors=True)


BUSYBOX_REPOSITORY = "test/busybox"


@dataclass(frozen=True)
class BusyboxRegistry:
    """A running registry with the standard busybox image pushed as ``test/busybox:latest``."""

    registry: Registry
    image_digest: str  # the manifest digest
    image_id: str  # the config digest, which CRI reports as the image id

    @property
    def reference(self) -> str:
        return f"{self.registry.host}/{BUSYBOX_REPOSITORY}:latest"


@contextlib.contextmanager
def busybox_registry() -> Iterator[BusyboxRegistry]:
    """A registry serving ``127.0.0.1:<port>/test/busybox:latest`` (for session fixtures)."""
    from tests.support.image_builder import busybox_image, push_image

    image = busybox_image()
    with running_registry() as registry:
        digest = push_image(registry.url, BUSYBOX_REPOSITORY, "latest", image)
        yield BusyboxRegistry(registry, digest, image.id)


class TokenServer:
    """A small bearer-token server of our own for docker-registry's token auth.

    It checks basic credentials and answers with an RS256 JWT carrying its certificate in the
    ``x5c`` header, which the registry verifies against ``root_cert_bundle``. ``requests``
    counts the tokens handed out, so tests can see the token flow was used.
    """

    SERVICE = "crisp-test-registry"
    ISSUER = "crisp-test-issuer"

    def __init__(self, directory: Path, users: dict[str, str]):
        import datetime

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.x509.oid import NameOID

        self.users = users
        self.requests = 0
        # OAuth2 refresh tokens (CRI's identity_token) this server accepts on POST
        self.refresh_tokens = {f"refresh-{user}" for user in users}
        self.refresh_requests = 0
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "crisp test token signer")])
        now = datetime.datetime.now(datetime.UTC)
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(name).issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        self.cert_path = directory / "token-cert.pem"
        self.cert_path.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))
        self.port = free_port()
        self._server: Any = None
        self._thread: Any = None

    @property
    def realm(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    def auth(self) -> TokenAuth:
        return TokenAuth(self.realm, self.SERVICE, self.ISSUER, self.cert_path)

    def _token(self, scope: str) -> str:
        import json as json_module

        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import padding

        def b64(data: bytes) -> str:
            return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

        access = []
        for item in scope.split(" "):
            parts = item.split(":")
            if len(parts) >= 3:
                access.append({"type": parts[0], "name": ":".join(parts[1:-1]),
                               "actions": parts[-1].split(",")})
        now = int(time.time())
        der = self._cert.public_bytes(serialization.Encoding.DER)
        header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(der).decode()]}
        claims = {"iss": self.ISSUER, "sub": "test", "aud": self.SERVICE, "exp": now + 300,
                  "nbf": now - 10, "iat": now, "jti": os.urandom(8).hex(), "access": access}
        signing_input = (b64(json_module.dumps(header).encode()) + "."
                         + b64(json_module.dumps(claims).encode()))
        signature = self._key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return signing_input + "." + b64(signature)

    def start(self) -> None:
        import http.server
        import json as json_module
        import threading
        import urllib.parse as parse

        server_self = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                form = parse.parse_qs(self.rfile.read(length).decode())
                refresh = form.get("refresh_token", [""])[0]
                if (form.get("grant_type") != ["refresh_token"]
                        or refresh not in server_self.refresh_tokens):
                    self.send_response(401)
                    self.end_headers()
                    return
                server_self.requests += 1
                server_self.refresh_requests += 1
                token = server_self._token(" ".join(form.get("scope", [])))
                body = json_module.dumps({"access_token": token, "expires_in": 300}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                query = parse.parse_qs(parse.urlparse(self.path).query)
                header = self.headers.get("Authorization", "")
                expected = {
                    "Basic " + base64.b64encode(f"{u}:{p}".encode()).decode()
                    for u, p in server_self.users.items()
                }
                if header not in expected:
                    self.send_response(401)
                    self.end_headers()
                    return
                server_self.requests += 1
                token = server_self._token(" ".join(query.get("scope", [])))
                body = json_module.dumps({"token": token, "expires_in": 300}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


@contextlib.contextmanager
def token_registry(users: dict[str, str]) -> Iterator[tuple[Registry, TokenServer]]:
    """A registry behind bearer-token auth, with our token server accepting ``users``."""
    directory = Path(tempfile.mkdtemp(prefix="crisp-token-"))
    server = TokenServer(directory, users)
    server.start()
    try:
        with running_registry(token=server.auth(), users=None) as registry:
            registry.users.update(users)
            yield registry, server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


class FlakyProxy:
    """An HTTP proxy in front of a registry that cuts blob downloads short.

    The first ``drops`` full (non-Range) blob GETs get the headers and ``cut_at`` bytes of
    the body, then the connection closes. Range requests pass through, so a client that
    resumes gets the rest. Runs on the test's own event loop (start/stop are coroutines).
    """

    def __init__(self, upstream: str, drops: int = 1, cut_at: int = 100_000):
        self.upstream = upstream.rstrip("/")
        self.drops = drops
        self.cut_at = cut_at
        self.range_requests = 0
        self.blob_requests = 0
        self.concurrent_blobs = 0
        self.max_concurrent_blobs = 0
        self.blob_delay = 0.0
        self.throttle = 0.0  # seconds to pause after each 64 KiB of a blob body
        self.blob_bytes_sent = 0  # body bytes of blob GETs written to clients
        self.unavailable = 0  # answer this many requests with 503 first
        self.authorizations: list[str] = []  # every Authorization header it was sent
        self.requests = 0
        self.port = free_port()
        self._runner: Any = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def _handle(self, request: Any) -> Any:
        from aiohttp import web

        self.requests += 1
        if self.unavailable > 0:
            self.unavailable -= 1
            return web.Response(status=503, text="try again later")
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() in ("accept", "authorization", "range")}
        if "Authorization" in headers:
            self.authorizations.append(headers["Authorization"])
        if "Range" in headers:
            self.range_requests += 1
        is_blob = "/blobs/" in request.path and request.method == "GET"
        if is_blob:
            self.blob_requests += 1
            self.concurrent_blobs += 1
            self.max_concurrent_blobs = max(self.max_concurrent_blobs, self.concurrent_blobs)
        try:
            if is_blob and self.blob_delay:
                await asyncio.sleep(self.blob_delay)
            return await self._forward(request, headers)
        finally:
            if is_blob:
                self.concurrent_blobs -= 1

    async def _forward(self, request: Any, headers: dict[str, str]) -> Any:
        import aiohttp
        from aiohttp import web

        async with aiohttp.ClientSession(auto_decompress=False) as session, session.request(
            request.method, self.upstream + request.path_qs, headers=headers,
            allow_redirects=True,
        ) as upstream:
            body = await upstream.read()
            response = web.StreamResponse(status=upstream.status)
            for key in ("Content-Type", "Content-Range", "Docker-Content-Digest",
                        "WWW-Authenticate", "Accept-Ranges"):
                if key in upstream.headers:
                    response.headers[key] = upstream.headers[key]
            response.content_length = len(body)
            is_blob_get = "/blobs/" in request.path and request.method == "GET"
            cut = (is_blob_get and "Range" not in headers
                   and self.drops > 0 and len(body) > self.cut_at)
            await response.prepare(request)
            if cut:
                self.drops -= 1
                await response.write(body[: self.cut_at])
                self.blob_bytes_sent += self.cut_at
                await asyncio.sleep(0.05)
                request.transport.close()
                return response
            if is_blob_get and self.throttle:
                for start in range(0, len(body), 1 << 16):
                    await response.write(body[start:start + (1 << 16)])
                    self.blob_bytes_sent += len(body[start:start + (1 << 16)])
                    await asyncio.sleep(self.throttle)
            else:
                await response.write(body)
                if is_blob_get:
                    self.blob_bytes_sent += len(body)
            await response.write_eof()
            return response

    async def start(self) -> None:
        from aiohttp import web

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def _size(path: Path) -> int:
    """The file's size, -1 while there is none."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return -1


async def pull_until_partial(daemon: Any, reference: str, partial: Path,
                             at_least: int = 2 << 20, seconds: float = 60.0) -> asyncio.Task[str]:
    """A pull of ``reference`` by ``daemon`` (a CrispDaemon), running in a thread, once the
    blob's ingest file ``partial`` holds ``at_least`` bytes (to interrupt it mid-blob)."""
    pulling = asyncio.create_task(asyncio.to_thread(daemon.pull, reference))
    deadline = time.monotonic() + seconds
    while _size(partial) < at_least:
        assert time.monotonic() < deadline, daemon.log()
        assert not pulling.done()
        await asyncio.sleep(0.05)
    return pulling


async def assert_pull_resumes(daemon: Any, proxy: FlakyProxy, reference: str, digest: str,
                              size: int, partial: Path, image_id: str) -> None:
    """The next pull, unthrottled, resumes the blob ``digest`` of ``size`` bytes from what
    ``partial`` kept: a Range request, only the missing bytes (the config is a few hundred
    more), and the ingest file gone once the blob is in."""
    kept = _size(partial)
    assert 0 < kept < size
    proxy.throttle = 0.0
    proxy.range_requests = 0
    sent_before = proxy.blob_bytes_sent
    assert await asyncio.to_thread(daemon.pull, reference) == image_id
    assert proxy.range_requests >= 1
    assert proxy.blob_bytes_sent - sent_before <= size - kept + 4096
    assert "resuming the download of " + digest in daemon.log()
    assert _size(partial) == -1
