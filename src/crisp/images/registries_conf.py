"""CRI-O's (containers-registries.conf v2) registry setup, read as containers/image reads it.

``FILE`` and then the drop-ins ``FILE.d/*.conf`` in lexical order: a later file's
``unqualified-search-registries`` replaces an earlier one's, and a later ``[[registry]]``
with the same prefix replaces the earlier entry. A reference picks the entry with the
longest matching ``prefix`` (``host``, ``host/namespace`` or ``*.domain``); its ``location``
replaces that prefix (so the repository path may change), and its ``[[registry.mirror]]``
entries come first, each honouring ``pull-from-mirror`` (``all``, ``digest-only``,
``tag-only``). Only version 2 files are understood; a v1 file is refused by name.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crisp.errors import InvalidArgument

PULL_FROM_MIRROR = ("all", "digest-only", "tag-only")


@dataclass(frozen=True)
class Mirror:
    location: str
    insecure: bool = False
    pull_from_mirror: str = "all"


@dataclass(frozen=True)
class RegistryEntry:
    prefix: str
    location: str
    insecure: bool = False
    blocked: bool = False
    mirrors: tuple[Mirror, ...] = ()
    source: str = ""


@dataclass(frozen=True)
class RegistriesConf:
    search: tuple[str, ...] | None
    registries: tuple[RegistryEntry, ...]


@dataclass(frozen=True)
class Place:
    """Where one endpoint serves the image: ``host`` and the repository path there."""

    host: str
    repository: str
    insecure: bool
    mirror: bool


def load(path: str) -> RegistriesConf | None:
    """FILE and FILE.d/*.conf merged; None if neither exists."""
    files = [Path(path)] if Path(path).is_file() else []
    drop_ins = Path(path + ".d")
    if drop_ins.is_dir():
        files += sorted(drop_ins.glob("*.conf"))
    if not files:
        return None
    search: tuple[str, ...] | None = None
    entries: dict[str, RegistryEntry] = {}
    for file in files:
        file_search, file_entries = parse(file.read_text(), str(file))
        if file_search is not None:
            search = file_search
        for entry in file_entries:
            entries.pop(entry.prefix, None)
            entries[entry.prefix] = entry
    return RegistriesConf(search, tuple(entries.values()))


def parse(text: str, source: str) -> tuple[tuple[str, ...] | None, list[RegistryEntry]]:
    """One registries.conf file; InvalidArgument names the file and the key."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise InvalidArgument(f"{source}: not valid TOML: {error}") from error
    if isinstance(document.get("registries"), dict):
        raise InvalidArgument(f"{source}: a version 1 registries.conf ([registries.search] "
                              "tables); crisp reads version 2 ([[registry]] entries)")
    search = document.get("unqualified-search-registries")
    if search is not None and (not isinstance(search, list)
                               or not all(isinstance(s, str) for s in search)):
        raise InvalidArgument(f"{source}: unqualified-search-registries must be a list of hosts")
    registries = document.get("registry", [])
    if not isinstance(registries, list):
        raise InvalidArgument(f"{source}: registry must be [[registry]] entries")
    entries = [_entry(item, f"{source}: registry[{i}]", source)
               for i, item in enumerate(registries)]
    return (tuple(search) if search is not None else None), entries


def _flag(table: dict[str, Any], key: str, where: str) -> bool:
    value = table.get(key, False)
    if not isinstance(value, bool):
        raise InvalidArgument(f"{where}: {key} must be true or false")
    return value


def _entry(item: Any, where: str, source: str) -> RegistryEntry:
    if not isinstance(item, dict):
        raise InvalidArgument(f"{where} must be a table")
    location = item.get("location", "")
    prefix = item.get("prefix", "") or location
    if not isinstance(location, str) or not isinstance(prefix, str) or not prefix:
        raise InvalidArgument(f"{where}: needs a prefix or a location (strings)")
    if prefix.startswith("*.") and location:
        raise InvalidArgument(f"{where}: a wildcard prefix {prefix!r} cannot have a location")
    by_digest_only = _flag(item, "mirror-by-digest-only", where)
    mirrors = []
    for j, mirror in enumerate(item.get("mirror", [])):
        mwhere = f"{where}.mirror[{j}]"
        if not isinstance(mirror, dict) or not isinstance(mirror.get("location"), str):
            raise InvalidArgument(f"{mwhere}: needs a location")
        pull_from = mirror.get("pull-from-mirror", "digest-only" if by_digest_only else "all")
        if pull_from not in PULL_FROM_MIRROR:
            raise InvalidArgument(
                f"{mwhere}: pull-from-mirror must be one of {', '.join(PULL_FROM_MIRROR)}")
        mirrors.append(Mirror(mirror["location"].rstrip("/"), _flag(mirror, "insecure", mwhere),
                              pull_from))
    return RegistryEntry(prefix.rstrip("/"), location.rstrip("/"), _flag(item, "insecure", where),
                         _flag(item, "blocked", where), tuple(mirrors), source)


def _matches(prefix: str, name: str) -> bool:
    if prefix.startswith("*."):
        host = name.split("/", 1)[0]
        return host.endswith(prefix[1:])
    return name == prefix or name.startswith(prefix + "/")


def find(conf: RegistriesConf, domain: str, path: str) -> RegistryEntry | None:
    """The entry whose prefix matches ``domain/path`` longest (a wildcard counts as a host)."""
    name = f"{domain}/{path}"
    best: RegistryEntry | None = None
    for entry in conf.registries:
        if _matches(entry.prefix, name) and (best is None or
                                             len(entry.prefix) > len(best.prefix)):
            best = entry
    return best


def places(entry: RegistryEntry, domain: str, path: str, by_digest: bool) -> list[Place]:
    """Mirrors (those allowed for a pull by digest or by tag), then the location itself."""
    name = f"{domain}/{path}"
    rest = "" if entry.prefix.startswith("*.") else name[len(entry.prefix):]

    def split(location: str) -> tuple[str, str]:
        full = (location + rest) if location else name
        host, _, repository = full.partition("/")
        return host, repository

    result: list[Place] = []
    for mirror in entry.mirrors:
        if mirror.pull_from_mirror == "digest-only" and not by_digest:
            continue
        if mirror.pull_from_mirror == "tag-only" and by_digest:
            continue
        host, repository = split(mirror.location)
        result.append(Place(host, repository, mirror.insecure, True))
    host, repository = split(entry.location)
    result.append(Place(host, repository, entry.insecure, False))
    return result
