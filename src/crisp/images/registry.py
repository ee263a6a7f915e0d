"""A client of the OCI distribution API (registry v2) on aiohttp.

One :class:`RepositoryClient` serves one pull: it knows the endpoints to try (mirrors from the
config in order, then the registry itself), answers auth challenges, retries with backoff on
5xx answers and dropped connections, and resumes interrupted blob downloads with Range
requests where the server allows. HTTPS is the default; plain HTTP only for registries the
config calls insecure and for localhost.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import aiohttp

from crisp.config import LiveConfig
from crisp.errors import (
    CrispError,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
    Unimplemented,
)
from crisp.images.auth import (
    Credentials,
    TokenCache,
    from_auth_file,
    parse_challenges,
)
from crisp.images.endpoints import (
    DOCKER_HUB_API,
    LOCAL_HOSTS,
    Endpoint,
    SSLContexts,
    endpoints_for,
    shares_credentials,
    tls_reason,
)
from crisp.images.manifest import (
    ACCEPT,
    MAX_MANIFEST_SIZE,
    Descriptor,
    FetchedManifest,
    media_type_of,
)
from crisp.images.reference import Reference

log = logging.getLogger(__name__)

__all__ = ["DOCKER_HUB_API", "LOCAL_HOSTS", "BlobSink", "Endpoint", "FetchedManifest",
           "RegistryClient", "RepositoryClient", "endpoints_for"]
ATTEMPTS = 4
BACKOFF = 0.2
READ_CHUNK = 1 << 20
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
# what a non-mirror endpoint's refusal raises as is (a mirror's moves on to the next endpoint)
_REFUSALS = (Unauthenticated, PermissionDenied, FailedPrecondition, Unimplemented)
_RETRYABLE = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, ConnectionError,
              asyncio.TimeoutError)


class BlobSink(Protocol):
    """Where a blob's bytes go: the content store's Ingest, or the registry helper's pipe
    to the daemon's Ingest (crisp.images.helper)."""

    @property
    def written(self) -> int: ...

    async def write(self, chunk: bytes) -> None: ...

    async def restart(self) -> None: ...


class RegistryClient:
    """Shared HTTP machinery: one aiohttp session and the bearer token cache."""

    def __init__(self, live: LiveConfig):
        self.live = live
        self.tokens = TokenCache()
        self.ssl = SSLContexts()
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=30),
                connector=aiohttp.TCPConnector(limit=64, ttl_dns_cache=60),
                auto_decompress=False,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def repository(self, reference: Reference, credentials: Credentials | None) -> RepositoryClient:
        """A client for one pull; with no credentials, those of registries.auth_file if any."""
        if credentials is None or credentials.secrets() == Credentials():
            credentials = self._from_auth_file(reference) or Credentials()
        return RepositoryClient(self, reference, credentials)

    def _from_auth_file(self, reference: Reference) -> Credentials | None:
        path = self.live.current.registries.auth_file
        if not path:
            return None
        try:
            text = Path(path).read_text()
        except FileNotFoundError:
            return None
        except OSError as error:
            raise FailedPrecondition(
                f"registries.auth_file {path} cannot be read: {error.strerror or error}"
            ) from error
        return from_auth_file(text, reference.domain, reference.path, path)


class RepositoryClient:
    """Talks to the endpoints serving one repository, for one pull."""

    def __init__(self, client: RegistryClient, reference: Reference, credentials: Credentials):
        self.client = client
        self.reference = reference
        self.credentials = credentials
        self.endpoints = endpoints_for(reference.domain, client.live, reference.path,
                                       reference.digest is not None)
        self._dead: set[Endpoint] = set()

    def _repository(self, endpoint: Endpoint) -> str:
        """The repository path on ``endpoint`` (registries.conf may rewrite it)."""
        return endpoint.repository or self.reference.path

    def _scope(self, endpoint: Endpoint) -> str:
        return f"repository:{self._repository(endpoint)}:pull"

    def _token_key(self, endpoint: Endpoint) -> tuple[str, str, str]:
        """Cached tokens are per endpoint, scope and (a digest of) the credentials."""
        return endpoint.base_url, self._scope(endpoint), self._identity(endpoint)

    def _credentials_for(self, endpoint: Endpoint) -> Credentials:
        """The pull's credentials for ``endpoint``'s host, or none: they go to one registry,
        and to the hosts ``registries.mirror_credentials`` names for it."""
        domain = self.reference.domain
        if self.credentials.is_for(endpoint.host, domain):
            return self.credentials
        if self.credentials.is_for(domain, domain) and shares_credentials(
                self.client.live.current.registries, domain, endpoint.host):
            return self.credentials
        return Credentials()

    def _identity(self, endpoint: Endpoint) -> str:
        return self._credentials_for(endpoint).identity()

    def _falls_back(self, endpoint: Endpoint) -> bool:
        """Whether a failure of ``endpoint`` moves on to the next one (a mirror, or the
        unverified HTTPS try of an insecure registry, which plain HTTP follows)."""
        return endpoint.mirror or endpoint is not self.endpoints[-1]

    def _live_endpoints(self, capability: str) -> list[Endpoint]:
        """Endpoints that may serve ``capability`` (hosts.toml's pull or resolve), alive first."""
        able = [e for e in self.endpoints if e.can(capability)]
        alive = [e for e in able if e not in self._dead]
        return alive or able[-1:]

    async def _send(
        self, endpoint: Endpoint, method: str, path: str, headers: dict[str, str]
    ) -> aiohttp.ClientResponse:
        """One request with auth: answers a 401 challenge once, then gives up."""
        url = endpoint.url(path)
        ssl_arg: Any = self.client.ssl.get(endpoint)
        cached = self.client.tokens.get(*self._token_key(endpoint))
        request_headers = {**dict(endpoint.headers), **headers}
        if cached:
            request_headers["Authorization"] = cached
        timeout = self._timeout()
        response = await self.client.session().request(method, url, headers=request_headers,
                                                       ssl=ssl_arg, timeout=timeout)
        if response.status != 401:
            return response
        challenge_header = response.headers.get("WWW-Authenticate", "")
        response.release()
        authorization = await self._authorize(endpoint, challenge_header)
        request_headers["Authorization"] = authorization
        response = await self.client.session().request(method, url, headers=request_headers,
                                                       ssl=ssl_arg, timeout=timeout)
        if response.status == 401:
            response.release()
            has_credentials = self._credentials_for(endpoint).secrets() != Credentials()
            refused = "the given credentials" if has_credentials else "anonymous access"
            raise Unauthenticated(
                f"{endpoint} refused {refused} for {self.reference.name} (401 Unauthorized); "
                + ("check the username and password or token" if has_credentials
                   else "the registry needs credentials in the pull request's auth")
            )
        return response

    def _timeout(self) -> aiohttp.ClientTimeout:
        """No answer for images.pull_progress_timeout seconds counts as no progress."""
        idle = self.client.live.current.images.pull_progress_timeout or None
        return aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=idle)

    async def _authorize(self, endpoint: Endpoint, header: str) -> str:
        challenges = parse_challenges(header)
        for challenge in challenges:
            if challenge.scheme == "bearer":
                return await self._bearer(endpoint, challenge.params)
        for challenge in challenges:
            if challenge.scheme == "basic":
                basic = self._credentials_for(endpoint).basic_header()
                if basic is None:
                    raise Unauthenticated(
                        f"{endpoint} needs a username and password for {self.reference.name}; "
                        "none were given in the pull request's auth"
                    )
                self.client.tokens.put(*self._token_key(endpoint), basic, 3600.0)
                return basic
        raise Unimplemented(
            f"{endpoint} asked for authentication crisp does not support: {header!r}"
        )

    async def _bearer(self, endpoint: Endpoint, params: dict[str, str]) -> str:
        credentials = self._credentials_for(endpoint)
        if credentials.registry_token:
            return "Bearer " + credentials.registry_token
        realm = params.get("realm")
        if not realm:
            raise Unavailable(f"{endpoint} sent a bearer challenge without a realm")
        service = params.get("service", "")
        scope = params.get("scope") or self._scope(endpoint)
        session = self.client.session()
        # a token service on the registry's own host is reached with the registry's TLS setup
        ssl_arg: Any = (self.client.ssl.get(endpoint)
                        if realm.startswith(f"https://{endpoint.host}/") else None)
        try:
            if credentials.identity_token:
                form = {"grant_type": "refresh_token",
                        "refresh_token": credentials.identity_token,
                        "service": service, "scope": scope, "client_id": "crisp"}
                response = await session.post(realm, data=form, ssl=ssl_arg)
            else:
                query = {"scope": scope}
                if service:
                    query["service"] = service
                headers = {}
                basic = credentials.basic_header()
                if basic:
                    headers["Authorization"] = basic
                response = await session.get(realm, params=query, headers=headers,
                                             ssl=ssl_arg)
            async with response:
                if response.status != 200:
                    body = (await response.text())[:300]
                    raise http_error(
                        response.status,
                        f"token server {realm} answered {response.status} for {scope}: {body}",
                    )
                answer = await response.json(content_type=None)
        except aiohttp.ClientError as error:
            raise Unavailable(f"token server {realm} could not be reached: {error}") from error
        token = answer.get("token") or answer.get("access_token")
        if not isinstance(token, str) or not token:
            raise Unavailable(f"token server {realm} answered without a token")
        value = "Bearer " + token
        expires_in = float(answer.get("expires_in") or 60)
        self.client.tokens.put(*self._token_key(endpoint), value, expires_in)
        return value

    async def _with_retries(
        self, endpoint: Endpoint, method: str, path: str, headers: dict[str, str]
    ) -> aiohttp.ClientResponse:
        """A request retried with backoff on 5xx and connection errors."""
        # a mirror, or unverified HTTPS with plain HTTP to fall back on, gets one try
        attempts = 1 if endpoint.mirror or not endpoint.verify_tls else ATTEMPTS
        last: str = ""
        for attempt in range(attempts):
            if attempt:
                await asyncio.sleep(BACKOFF * 2 ** (attempt - 1))
            try:
                response = await self._send(endpoint, method, path, headers)
            except aiohttp.SocketTimeoutError as error:
                raise DeadlineExceeded(
                    f"{endpoint} sent no answer to {method} {path} for "
                    f"{self.client.live.current.images.pull_progress_timeout:g}s; cancelled "
                    "(images.pull_progress_timeout)"
                ) from error
            except aiohttp.ClientSSLError as error:
                message = f"TLS to registry {endpoint.host} failed: {tls_reason(error)}"
                if self._falls_back(endpoint):
                    raise Unavailable(f"{endpoint}: {message}") from error
                raise FailedPrecondition(message) from error
            except aiohttp.ClientOSError as error:
                if not _tls_alert(error):
                    last = f"{type(error).__name__}: {error}"
                    log.debug("%s %s%s failed: %s", method, endpoint, path, last)
                    continue
                message = f"TLS to registry {endpoint.host} failed: {tls_reason(error)}"
                if self._falls_back(endpoint):
                    raise Unavailable(f"{endpoint}: {message}") from error
                raise FailedPrecondition(message) from error
            except _RETRYABLE as error:
                last = f"{type(error).__name__}: {error}"
                log.debug("%s %s%s failed: %s", method, endpoint, path, last)
                continue
            except _REFUSALS as error:
                if not endpoint.mirror:
                    raise
                raise Unavailable(f"{endpoint}: {error}") from error  # try the next endpoint
            if response.status in RETRY_STATUSES:
                last = f"HTTP {response.status}"
                response.release()
                continue
            return response
        raise Unavailable(f"{endpoint} failed {attempts} time(s) for {path}: {last}")

    async def fetch_manifest(self, obj: str) -> FetchedManifest:
        """The manifest (or index) named by tag or digest ``obj``, its digest checked."""
        errors: list[str] = []
        capability = "pull" if obj.startswith("sha256:") else "resolve"
        endpoints = self._live_endpoints(capability)
        if not endpoints:
            raise FailedPrecondition(
                f"no endpoint of {self.reference.domain} has the {capability!r} capability "
                "(capabilities in hosts.toml)"
            )
        for endpoint in endpoints:
            path = f"/v2/{self._repository(endpoint)}/manifests/{obj}"
            try:
                response = await self._with_retries(endpoint, "GET", path, {"Accept": ACCEPT})
            except Unavailable as error:
                errors.append(str(error))
                self._dead.add(endpoint)
                continue
            async with response:
                if response.status == 404:
                    errors.append(f"{endpoint}: not found")
                    if endpoint.mirror:
                        continue
                    raise NotFound(
                        f"image {self.reference} was not found in {self.reference.domain}"
                        f" (manifest {obj} does not exist)"
                    )
                if response.status != 200:
                    body = (await response.text())[:300]
                    errors.append(f"{endpoint}: HTTP {response.status} {body}")
                    if endpoint.mirror:
                        continue
                    raise http_error(
                        response.status,
                        f"{endpoint} answered {response.status} for the manifest of "
                        f"{self.reference}: {body}",
                    )
                data = await _read_limited(response, MAX_MANIFEST_SIZE)
                if len(data) > MAX_MANIFEST_SIZE:
                    raise InvalidArgument(f"the manifest of {self.reference} is over 4 MiB")
                digest = "sha256:" + hashlib.sha256(data).hexdigest()
                if obj.startswith("sha256:") and digest != obj:
                    if endpoint.mirror:
                        errors.append(f"{endpoint}: manifest digest {digest} is not {obj}")
                        continue
                    raise InvalidArgument(
                        f"{endpoint} sent a manifest with digest {digest} for {obj}"
                    )
                media_type = media_type_of(data, response.headers.get("Content-Type"))
                return FetchedManifest(data, media_type, digest)
        raise Unavailable(
            f"no endpoint could serve the manifest of {self.reference}: {'; '.join(errors)}"
        )

    async def fetch_blob(
        self,
        descriptor: Descriptor,
        ingest: BlobSink,
        on_progress: Callable[[int], None],
        progress_timeout: float,
    ) -> None:
        """Stream the blob into ``ingest``, resuming with Range after dropped connections.

        DeadlineExceeded if no byte arrives for ``progress_timeout`` seconds (0: no limit).
        """
        errors: list[str] = []
        endpoints = self._live_endpoints("pull")
        if not endpoints:
            raise FailedPrecondition(
                f"no endpoint of {self.reference.domain} has the 'pull' capability "
                "(capabilities in hosts.toml)"
            )
        for endpoint in endpoints:
            path = f"/v2/{self._repository(endpoint)}/blobs/{descriptor.digest}"
            stalls = 0
            while stalls < ATTEMPTS:
                before = ingest.written
                try:
                    outcome = await self._download(endpoint, path, descriptor, ingest, on_progress,
                                                   progress_timeout)
                except Unavailable as error:
                    errors.append(str(error))
                    self._dead.add(endpoint)
                    break
                except _RETRYABLE as error:
                    outcome = f"{type(error).__name__}: {error}"
                if outcome is None:
                    return
                if outcome == "not found":
                    errors.append(f"{endpoint}: blob not found")
                    break
                errors.append(f"{endpoint}: {outcome}")
                stalls = 0 if ingest.written > before else stalls + 1
                log.info("download of %s from %s interrupted at %d bytes (%s); resuming",
                         descriptor.digest, endpoint, ingest.written, outcome)
                await asyncio.sleep(BACKOFF * 2 ** max(stalls - 1, 0))
            if not endpoint.mirror and errors and errors[-1].endswith("blob not found"):
                raise NotFound(
                    f"blob {descriptor.digest} of {self.reference} is not in the registry"
                )
        raise Unavailable(
            f"could not download blob {descriptor.digest} of {self.reference}: "
            f"{'; '.join(errors[-4:])}"
        )

    async def _download(
        self,
        endpoint: Endpoint,
        path: str,
        descriptor: Descriptor,
        ingest: BlobSink,
        on_progress: Callable[[int], None],
        progress_timeout: float,
    ) -> str | None:
        """One attempt; None when the whole blob arrived, else why not (to retry)."""
        headers = {}
        offset = ingest.written
        if offset:
            headers["Range"] = f"bytes={offset}-"
        response = await self._with_retries(endpoint, "GET", path, headers)
        async with response:
            if response.status == 404:
                return "not found"
            if response.status == 206 and offset:
                content_range = response.headers.get("Content-Range", "")
                if not content_range.startswith(f"bytes {offset}-"):
                    await ingest.restart()
                    return f"unexpected Content-Range {content_range!r}"
            elif response.status == 200:
                if offset:
                    log.info("%s ignores Range; downloading %s again", endpoint, descriptor.digest)
                    await ingest.restart()
            elif response.status == 416:
                await ingest.restart()
                return "range not satisfiable"
            else:
                body = (await response.text())[:300]
                raise http_error(
                    response.status,
                    f"{endpoint} answered {response.status} for blob {descriptor.digest}: {body}",
                )
            while True:
                try:
                    async with asyncio.timeout(progress_timeout or None):
                        chunk = await response.content.readany()
                except TimeoutError as error:
                    raise DeadlineExceeded(
                        f"the download of {descriptor.digest} of {self.reference} made no progress "
                        f"for {progress_timeout:g}s ({ingest.written} of {descriptor.size} bytes); "
                        "cancelled (images.pull_progress_timeout)"
                    ) from error
                if not chunk:
                    break
                await ingest.write(chunk)
                on_progress(len(chunk))
        if ingest.written < descriptor.size:
            return f"connection closed after {ingest.written} of {descriptor.size} bytes"
        return None



def http_error(status: int, message: str) -> CrispError:
    """The error for a registry's or token server's refusal, by what the puller can do about it.

    401: credentials are missing or wrong; 403: these credentials may not have the image;
    429 and 5xx: the server is overloaded or broken, try later; any other answer: the node's
    registry setup does not fit the server (plain HTTP to an HTTPS port, a wrong path prefix).
    """
    if status == 401:
        return Unauthenticated(message)
    if status == 403:
        return PermissionDenied(message)
    if status == 429 or status >= 500:
        return Unavailable(message)
    return FailedPrecondition(message)


def _tls_alert(error: BaseException) -> bool:
    """An OSError that is a TLS alert from the server (such as: certificate required)."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return True
        seen = seen.__cause__ or seen.__context__
    return "SSL" in str(error) and "alert" in str(error).lower()


async def _read_limited(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """The whole body, or its first ``limit + 1`` bytes if it is longer than ``limit``."""
    parts: list[bytes] = []
    total = 0
    while total <= limit:
        chunk = await response.content.read(limit + 1 - total)
        if not chunk:
            break
        parts.append(chunk)
        total += len(chunk)
    return b"".join(parts)
