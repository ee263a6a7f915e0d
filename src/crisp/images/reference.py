"""Image references, normalized the way docker and the kubelet write them.

``busybox`` is ``docker.io/library/busybox:latest``; a reference may carry a tag, a digest, or
both (``name:tag@sha256:...``, where the digest decides what is pulled). The grammar is the
one of the distribution project's reference package.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from crisp.errors import InvalidArgument

DEFAULT_DOMAIN = "docker.io"
LEGACY_DOMAINS = frozenset({"index.docker.io", "registry-1.docker.io"})
OFFICIAL_PREFIX = "library/"
DEFAULT_TAG = "latest"
NAME_MAX = 255

_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_DOMAIN_LABEL = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = re.compile(
    rf"(?:{_DOMAIN_LABEL}(?:\.{_DOMAIN_LABEL})*|\[[0-9a-fA-F:.]+\])(?::[0-9]+)?"
)
_TAG = re.compile(r"[\w][\w.-]{0,127}")
_DIGEST = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]{32,}")
_SHA256_HEX = re.compile(r"[a-f0-9]{64}")


@dataclass(frozen=True)
class Reference:
    """A normalized image reference: registry domain, repository path, tag and/or digest."""

    domain: str
    path: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        """``domain/path`` without tag or digest, e.g. ``docker.io/library/busybox``."""
        return f"{self.domain}/{self.path}"

    @property
    def object(self) -> str:
        """What to ask the registry's manifest endpoint for: the digest if known, else the tag."""
        return self.digest or self.tag or DEFAULT_TAG

    def tagged(self) -> str | None:
        """``name:tag``, the form listed as a repo tag, if the reference has a tag."""
        return f"{self.name}:{self.tag}" if self.tag else None

    def with_digest(self, digest: str) -> str:
        """``name@digest``, the form listed as a repo digest."""
        return f"{self.name}@{digest}"

    def __str__(self) -> str:
        text = self.name
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def validate_digest(digest: str) -> str:
    """Return ``digest`` if it is a well-formed ``sha256:<64 hex>``; InvalidArgument otherwise."""
    algorithm, _, hex_part = digest.partition(":")
    if algorithm != "sha256":
        raise InvalidArgument(
            f"digest {digest!r} is not supported: only sha256 digests are, "
            "as sha256:<64 hex digits>"
        )
    if not _SHA256_HEX.fullmatch(hex_part):
        raise InvalidArgument(
            f"digest {digest!r} must be sha256: followed by 64 lowercase hex digits"
        )
    return digest


def parse_reference(text: str) -> Reference:
    """Parse and normalize an image reference; InvalidArgument says which part is wrong."""
    if not text or text != text.strip():
        raise InvalidArgument(f"image reference {text!r} is empty or has surrounding spaces")
    remainder, at, digest = text.partition("@")
    if at:
        if not _DIGEST.fullmatch(digest):
            raise InvalidArgument(f"image reference {text!r} has a malformed digest {digest!r}")
        validate_digest(digest)
    tag: str | None = None
    last_slash = remainder.rfind("/")
    colon = remainder.rfind(":")
    if colon > last_slash:
        remainder, tag = remainder[:colon], remainder[colon + 1 :]
        if not _TAG.fullmatch(tag):
            raise InvalidArgument(
                f"image reference {text!r} has an invalid tag {tag!r}: a tag is up to 128 "
                "letters, digits, '_', '.' or '-' and does not start with '.' or '-'"
            )
    if not remainder:
        raise InvalidArgument(f"image reference {text!r} has no repository name")
    domain, path = _split_domain(remainder)
    if not _DOMAIN.fullmatch(domain):
        raise InvalidArgument(f"image reference {text!r} has an invalid registry host {domain!r}")
    for component in path.split("/"):
        if not _COMPONENT.fullmatch(component):
            reason = (
                "repository names must be lowercase"
                if component.lower() != component
                else "path components are lowercase letters and digits separated by '.', '_', "
                "'__' or dashes"
            )
            raise InvalidArgument(
                f"image reference {text!r} has an invalid path component {component!r}: {reason}"
            )
    if len(f"{domain}/{path}") > NAME_MAX:
        raise InvalidArgument(f"image reference {text!r} is longer than {NAME_MAX} characters")
    if tag is None and not at:
        tag = DEFAULT_TAG
    return Reference(domain=domain, path=path, tag=tag, digest=digest if at else None)


def _split_domain(name: str) -> tuple[str, str]:
    first, slash, rest = name.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost" or first != first.lower()):
        domain, path = first, rest
    else:
        domain, path = DEFAULT_DOMAIN, name
    if domain in LEGACY_DOMAINS:
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in path:
        path = OFFICIAL_PREFIX + path
    return domain, path


def has_registry(text: str) -> bool:
    """Whether ``text`` names its registry (``quay.io/x``) rather than being a short name."""
    first, slash, _ = text.split("@", 1)[0].partition("/")
    return bool(slash) and ("." in first or ":" in first or first == "localhost"
                            or first != first.lower())


def search_candidates(text: str, search: list[str]) -> list[Reference]:
    """The references a short name may mean, one per search registry in order.

    ``busybox`` with search ``["quay.io", "docker.io"]`` is ``quay.io/busybox:latest``, then
    ``docker.io/library/busybox:latest``. A name with a registry means only itself.
    """
    if has_registry(text) or not search:
        return [parse_reference(text)]
    result: list[Reference] = []
    for domain in search:
        candidate = parse_reference(f"{domain}/{text}")
        if candidate not in result:
            result.append(candidate)
    return result


def looks_like_image_id(text: str) -> str | None:
    """The full ``sha256:...`` id if ``text`` is an image id (with or without ``sha256:``)."""
    candidate = text.removeprefix("sha256:")
    if _SHA256_HEX.fullmatch(candidate):
        return f"sha256:{candidate}"
    return None
