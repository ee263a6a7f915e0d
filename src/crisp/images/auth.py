"""Registry credentials and the answers to WWW-Authenticate challenges.

CRI's AuthConfig comes as username/password, a base64 ``auth`` of ``user:password``, an OAuth2
``identity_token`` (a refresh token exchanged at the token endpoint) or a ready
``registry_token`` (used as the bearer token directly). Basic challenges get the username and
password; bearer challenges get a token from the realm the registry names, cached per scope
until it expires.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
from dataclasses import dataclass, field, fields
from urllib.parse import urlsplit

from crisp.errors import InvalidArgument

_PARAM = re.compile(r'([A-Za-z][A-Za-z0-9_-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


@dataclass(frozen=True)
class Credentials:
    """What a client gave to authenticate to a registry (CRI's AuthConfig)."""

    username: str = ""
    password: str = field(default="", repr=False)
    auth: str = field(default="", repr=False)
    identity_token: str = field(default="", repr=False)
    registry_token: str = field(default="", repr=False)
    server_address: str = ""  # the registry these are for; empty: the image's own registry

    def secrets(self) -> Credentials:
        """The same credentials without server_address (what a request would carry)."""
        return Credentials(self.username, self.password, self.auth, self.identity_token,
                           self.registry_token)

    def identity(self) -> str:
        """A digest of every field, to key cached tokens without keeping secrets in keys."""
        import hashlib  # libcrypto only once something is hashed (crisp.tlsload)
        raw = "\0".join(getattr(self, f.name) for f in fields(self))
        return hashlib.sha256(raw.encode()).hexdigest()

    def is_for(self, host: str, image_domain: str) -> bool:
        """If these may be sent to ``host`` (host[:port]): only the registry they are for."""
        target = self.server_address or image_domain
        return normalize_host(host) == normalize_host(target)

    def user_password(self) -> tuple[str, str] | None:
        """Username and password, from the fields or decoded from ``auth``."""
        if self.username or self.password:
            return self.username, self.password
        if self.auth:
            try:
                decoded = base64.b64decode(self.auth, validate=True).decode()
            except (binascii.Error, UnicodeDecodeError) as error:
                raise InvalidArgument("auth is not base64 of 'username:password'") from error
            user, colon, password = decoded.partition(":")
            if not colon:
                raise InvalidArgument("auth must decode to 'username:password'")
            return user, password
        return None

    def basic_header(self) -> str | None:
        pair = self.user_password()
        if pair is None:
            return None
        raw = f"{pair[0]}:{pair[1]}".encode()
        return "Basic " + base64.b64encode(raw).decode()


_DOCKER_HUB = {"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"}


def normalize_host(address: str) -> str:
    """``host[:port]`` of a registry address, which may be a URL; Docker Hub's names are one."""
    address = (urlsplit(address).netloc if "://" in address else address.split("/", 1)[0]).lower()
    return "docker.io" if address in _DOCKER_HUB else address


def from_auth_file(text: str, domain: str, path: str, source: str) -> Credentials | None:
    """The entry of a docker config.json / containers auth.json for ``domain/path``.

    The longest key that matches wins: ``host/namespace`` (auth.json) before ``host``.
    Docker's ``https://index.docker.io/v1/`` key counts as docker.io.
    """
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise InvalidArgument(f"{source} is not valid JSON: {error.msg}") from error
    auths = document.get("auths") if isinstance(document, dict) else None
    if not isinstance(auths, dict):
        return None
    wanted = f"{normalize_host(domain)}/{path}"
    best: tuple[int, dict[str, object]] | None = None
    for key, entry in auths.items():
        if not isinstance(entry, dict):
            continue
        name = key.split("://", 1)[-1].rstrip("/")
        host, _, namespace = name.partition("/")
        host = normalize_host(host)
        if host == "docker.io" and namespace in ("v1", "v2"):
            namespace = ""
        prefix = f"{host}/{namespace}" if namespace else host
        matches = wanted == prefix or wanted.startswith(prefix + "/")
        if matches and (best is None or len(prefix) > best[0]):
            best = (len(prefix), entry)
    if best is None:
        return None
    entry = best[1]

    def text_of(name: str) -> str:
        value = entry.get(name, "")
        return value if isinstance(value, str) else ""

    return Credentials(username=text_of("username"), password=text_of("password"),
                       auth=text_of("auth"), identity_token=text_of("identitytoken"),
                       registry_token=text_of("registrytoken"), server_address=domain)


@dataclass(frozen=True)
class Challenge:
    """One parsed WWW-Authenticate challenge."""

    scheme: str
    params: dict[str, str]


def parse_challenges(header: str) -> list[Challenge]:
    """Parse a WWW-Authenticate header (possibly several challenges) into its parts."""
    challenges: list[Challenge] = []
    position = 0
    text = header.strip()
    while position < len(text):
        match = re.compile(r"\s*,?\s*([A-Za-z][A-Za-z0-9_-]*)").match(text, position)
        if not match:
            break
        scheme = match.group(1)
        position = match.end()
        params: dict[str, str] = {}
        while True:
            param = re.compile(r"\s*,?\s*").match(text, position)
            start = param.end() if param else position
            found = _PARAM.match(text, start)
            if not found:
                break
            value = found.group(2) if found.group(2) is not None else found.group(3)
            params[found.group(1).lower()] = re.sub(r"\\(.)", r"\1", value)
            position = found.end()
        challenges.append(Challenge(scheme.lower(), params))
    return challenges


@dataclass
class Token:
    value: str
    expires_at: float


class TokenCache:
    """Bearer tokens per (registry endpoint, scope), reused until shortly before expiry."""

    def __init__(self) -> None:
        self._tokens: dict[tuple[str, str, str], Token] = {}

    def get(self, endpoint: str, scope: str, identity: str) -> str | None:
        token = self._tokens.get((endpoint, scope, identity))
        if token is None or token.expires_at < time.monotonic():
            return None
        return token.value

    def put(self, endpoint: str, scope: str, identity: str, value: str, expires_in: float) -> None:
        if expires_in <= 0:
            self._tokens.pop((endpoint, scope, identity), None)
            return
        lifetime = max(expires_in - 10.0, expires_in / 2)
        self._tokens[(endpoint, scope, identity)] = Token(value, time.monotonic() + lifetime)
