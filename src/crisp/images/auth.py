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
import re
import time
from dataclasses import dataclass

from crisp.errors import InvalidArgument

_PARAM = re.compile(r'([A-Za-z][A-Za-z0-9_-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


@dataclass(frozen=True)
class Credentials:
    """What a client gave to authenticate to a registry (CRI's AuthConfig)."""

    username: str = ""
    password: str = ""
    auth: str = ""
    identity_token: str = ""
    registry_token: str = ""

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
