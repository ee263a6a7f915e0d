"""Which endpoints serve a registry, and how to reach each one (TLS, headers, capabilities).

Two sources, one rule: crisp's own ``[registries]`` table first, key by key (its mirrors for
a host, its ``insecure`` list, its ``[registries.tls."host:port"]``); a containerd hosts
directory (``registries.config_path``) fills in what that table leaves unset. The hosts
directory is read at each pull, as containerd does, so edits need no restart.

A hosts.toml follows containerd's docs/hosts.md: ``server`` (default ``https://<host>``),
``[host."URL"]`` entries tried in order before it, each with ``capabilities`` (``pull``,
``resolve``), ``skip_verify``, ``ca`` (a path or a list), ``client`` (a path, a
``[cert, key]`` pair, or a list of either), ``override_path`` and ``header``. Without a
hosts.toml, ``*.crt`` CAs and ``*.cert``/``*.key`` client pairs in the host directory apply
to the registry itself (docker's certs.d layout). Relative paths are relative to the host
directory.
"""

from __future__ import annotations

import logging
import os
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from crisp.config import LiveConfig, RegistryConfig
from crisp.errors import FailedPrecondition, InvalidArgument
from crisp.images import registries_conf
from crisp.images.auth import normalize_host

if TYPE_CHECKING:
    import ssl

log = logging.getLogger(__name__)

DOCKER_HUB_API = "registry-1.docker.io"
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]"})
ALL_CAPABILITIES = frozenset({"pull", "resolve"})


@dataclass(frozen=True)
class Endpoint:
    """One base URL that can serve a registry's content, and how to talk to it."""

    base_url: str
    mirror: bool
    verify_tls: bool = True
    ca_files: tuple[str, ...] = ()
    client_certs: tuple[tuple[str, str], ...] = ()
    headers: tuple[tuple[str, str], ...] = ()
    capabilities: frozenset[str] = field(default=ALL_CAPABILITIES)
    override_path: bool = False
    source: str = ""  # the file it came from, for error messages
    repository: str = ""  # the repository path here, if registries.conf rewrote it

    def __str__(self) -> str:
        return self.base_url + (" (mirror)" if self.mirror else "")

    @property
    def host(self) -> str:
        """``host[:port]`` of the URL, the key of its TLS settings."""
        return urlsplit(self.base_url).netloc

    def url(self, path: str) -> str:
        """The URL of API ``path`` (which starts with /v2/) on this endpoint."""
        if self.override_path:
            return self.base_url + path.removeprefix("/v2")
        return self.base_url + path

    def can(self, capability: str) -> bool:
        return capability in self.capabilities


def _host_only(domain: str) -> str:
    return domain.rsplit(":", 1)[0] if not domain.endswith("]") else domain


def _tls_for(host: str, config: RegistryConfig) -> Any:
    return config.tls.get(host) or config.tls.get(_host_only(host))


def _with_own_tls(endpoint: Endpoint, config: RegistryConfig) -> Endpoint:
    """crisp's [registries.tls."host"] replaces what a hosts.toml said about TLS."""
    tls = _tls_for(endpoint.host, config)
    if tls is None or not endpoint.base_url.startswith("https://"):
        return endpoint
    cas = (tls.ca_file,) if tls.ca_file else ()
    clients = ((tls.cert_file, tls.key_file),) if tls.cert_file else ()
    return replace(endpoint, verify_tls=not tls.insecure_skip_verify, ca_files=cas,
                   client_certs=clients)


# the per-host certificate directories that go with registries.conf
CERTS_DIRS = ("/etc/containers/certs.d", "/etc/docker/certs.d")


def search_registries(config: RegistryConfig) -> list[str]:
    """registries.search, or registries.conf's unqualified-search-registries while
    registries.search is left at its default."""
    if config.registries_conf and config.search == RegistryConfig().search:
        conf = registries_conf.load(config.registries_conf)
        if conf is not None and conf.search is not None:
            return list(conf.search)
    return config.search


def endpoints_for(domain: str, live: LiveConfig, path: str = "",
                  by_digest: bool = False) -> list[Endpoint]:
    """Mirrors of ``domain`` in configured order, then the registry itself.

    Sources in order of precedence: crisp's table, the hosts directory, registries.conf (a
    blocked registry there is refused whatever the others say).
    """
    config = live.current.registries
    hosts = read_hosts_dir(config.config_path, domain) if config.config_path else None
    conf = registries_conf.load(config.registries_conf) if config.registries_conf else None
    entry = registries_conf.find(conf, domain, path) if conf is not None else None
    if entry is not None and entry.blocked:
        raise FailedPrecondition(
            f"registry {domain} is blocked (prefix {entry.prefix!r} in {entry.source})"
        )
    places = (registries_conf.places(entry, domain, path, by_digest)
              if entry is not None and hosts is None else [])
    if domain in config.mirrors:
        result = [Endpoint(url.rstrip("/"), True) for url in config.mirrors[domain]]
    elif hosts is not None:
        result = list(hosts.mirrors)
    else:
        result = [e for place in places if place.mirror for e in _conf_endpoints(place, path)]
    host = DOCKER_HUB_API if domain == "docker.io" else domain
    own_tls = _tls_for(domain, config)
    if own_tls is not None:
        result.append(Endpoint(f"https://{host}", False))
    elif domain in config.insecure or _host_only(domain) in config.insecure:
        result.append(Endpoint(f"https://{host}", False, verify_tls=False))
        result.append(Endpoint(f"http://{host}", False))
    elif hosts is not None and hosts.server is not None:
        result.append(hosts.server)
    elif places:
        result.extend(_conf_endpoints(places[-1], path))
    elif _host_only(domain) in LOCAL_HOSTS:
        result.append(Endpoint(f"http://{host}", False))
    else:
        result.append(Endpoint(f"https://{host}", False))
    return [_with_own_tls(endpoint, config) for endpoint in result]


def _conf_endpoints(place: registries_conf.Place, path: str) -> list[Endpoint]:
    """A registries.conf location as endpoints, with its certs.d CAs and client pairs."""
    host = DOCKER_HUB_API if place.host == "docker.io" else place.host
    repository = "" if place.repository == path else place.repository
    if place.insecure:
        return [Endpoint(f"https://{host}", place.mirror, verify_tls=False,
                         repository=repository),
                Endpoint(f"http://{host}", place.mirror, repository=repository)]
    cas: tuple[str, ...] = ()
    clients: tuple[tuple[str, str], ...] = ()
    for directory in CERTS_DIRS:
        found = _certs_dir(Path(directory) / place.host, place.host)
        if found is not None and found.server is not None:
            cas, clients = found.server.ca_files, found.server.client_certs
            break
    if not cas and not clients and _host_only(place.host) in LOCAL_HOSTS:
        return [Endpoint(f"http://{host}", place.mirror, repository=repository)]
    return [Endpoint(f"https://{host}", place.mirror, ca_files=cas, client_certs=clients,
                     repository=repository)]


@dataclass(frozen=True)
class HostsFile:
    """What a host directory says: the mirrors in order and the registry (server) itself."""

    mirrors: tuple[Endpoint, ...]
    server: Endpoint | None


def read_hosts_dir(directory: str, domain: str) -> HostsFile | None:
    """The hosts.toml of ``domain`` (or _default) under ``directory``; None if neither exists."""
    base = Path(directory)
    for name in (domain, "_default"):
        host_dir = base / name
        path = host_dir / "hosts.toml"
        if path.is_file():
            return parse_hosts_toml(path.read_text(), domain, host_dir, str(path))
        if name == domain and host_dir.is_dir():
            return _certs_dir(host_dir, domain)
    return None


def _default_server(domain: str) -> str:
    host = DOCKER_HUB_API if domain == "docker.io" else domain
    return f"https://{host}"


def _certs_dir(host_dir: Path, domain: str) -> HostsFile | None:
    """docker's certs.d layout: *.crt CAs, *.cert with a matching *.key client pairs."""
    cas = tuple(str(p) for p in sorted(host_dir.glob("*.crt")))
    clients = tuple((str(p), str(p.with_suffix(".key"))) for p in sorted(host_dir.glob("*.cert"))
                    if p.with_suffix(".key").is_file())
    if not cas and not clients:
        return None
    return HostsFile((), Endpoint(_default_server(domain), False, True, cas, clients,
                                  source=str(host_dir)))


def parse_hosts_toml(text: str, domain: str, host_dir: Path, source: str) -> HostsFile:
    """A hosts.toml as containerd reads it; InvalidArgument names the file and the key."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise InvalidArgument(f"{source}: not valid TOML: {error}") from error
    server_url = document.get("server", _default_server(domain))
    if not isinstance(server_url, str):
        raise InvalidArgument(f"{source}: server must be a URL string")
    server = _host_entry(server_url, document, False, host_dir, f"{source}: server")
    hosts = document.get("host", {})
    if not isinstance(hosts, dict):
        raise InvalidArgument(f"{source}: host must be a table of [host.\"URL\"] entries")
    mirrors = tuple(
        _host_entry(url, entry, True, host_dir, f"{source}: host.{url!r}")
        for url, entry in hosts.items()  # TOML tables keep their order
    )
    return HostsFile(mirrors, server)


def _host_entry(url: str, entry: Any, mirror: bool, host_dir: Path, where: str) -> Endpoint:
    if not isinstance(entry, dict):
        raise InvalidArgument(f"{where} must be a table")
    if "://" not in url:
        url = "https://" + url
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InvalidArgument(f"{where}: {url!r} is not an http:// or https:// URL")
    override = entry.get("override_path", False)
    if not isinstance(override, bool):
        raise InvalidArgument(f"{where}: override_path must be true or false")
    path = parts.path.rstrip("/")
    if not override:
        path = path.removesuffix("/v2")  # /v2 is added to every API path
    base_url = f"{parts.scheme}://{parts.netloc}{path}"
    capabilities = entry.get("capabilities", ["pull", "resolve", "push"])
    if not isinstance(capabilities, list) or not all(isinstance(c, str) for c in capabilities):
        raise InvalidArgument(f"{where}: capabilities must be a list such as [\"pull\"]")
    skip_verify = entry.get("skip_verify", False)
    if not isinstance(skip_verify, bool):
        raise InvalidArgument(f"{where}: skip_verify must be true or false")
    return Endpoint(
        base_url, mirror, not skip_verify,
        _ca_files(entry.get("ca"), host_dir, where),
        _client_pairs(entry.get("client"), host_dir, where),
        _headers(entry.get("header"), where),
        frozenset(capabilities) & ALL_CAPABILITIES,
        override,
        where.split(": ")[0],
    )


def _absolute(path: str, host_dir: Path) -> str:
    return path if os.path.isabs(path) else str(host_dir / path)


def _ca_files(value: Any, host_dir: Path, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise InvalidArgument(f"{where}: ca must be a path or a list of paths")
    return tuple(_absolute(i, host_dir) for i in items)


def _client_pairs(value: Any, host_dir: Path, where: str) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    # one path (cert and key in one file), a list of such paths, or a list of [cert, key]
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list):
        raise InvalidArgument(f"{where}: client must be a path, a [cert, key] pair or a list")
    pairs: list[tuple[str, str]] = []
    for item in items:
        if isinstance(item, str):
            pairs.append((_absolute(item, host_dir), ""))
        elif (isinstance(item, list) and 1 <= len(item) <= 2
              and all(isinstance(i, str) for i in item)):
            key = _absolute(item[1], host_dir) if len(item) == 2 and item[1] else ""
            pairs.append((_absolute(item[0], host_dir), key))
        else:
            raise InvalidArgument(f"{where}: client must be a path, a [cert, key] pair or a list")
    return tuple(pairs)


def _headers(value: Any, where: str) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise InvalidArgument(f"{where}: header must be a table of name = value")
    result: list[tuple[str, str]] = []
    for name, item in value.items():
        values = [item] if isinstance(item, str) else item
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise InvalidArgument(f"{where}: header {name!r} must be a string or list of strings")
        result.append((name, ", ".join(values)))
    return tuple(result)


class SSLContexts:
    """One ssl.SSLContext per TLS setup, rebuilt when one of its files changes."""

    def __init__(self) -> None:
        self._contexts: dict[tuple[Any, ...], ssl.SSLContext] = {}

    def get(self, endpoint: Endpoint) -> ssl.SSLContext | bool | None:
        """What aiohttp's ``ssl=`` wants: None (the default), False (no checks) or a context."""
        if not endpoint.base_url.startswith("https://"):
            return None
        if not endpoint.verify_tls and not endpoint.client_certs:
            return False
        if endpoint.verify_tls and not endpoint.ca_files and not endpoint.client_certs:
            return None
        files = [*endpoint.ca_files, *(p for pair in endpoint.client_certs for p in pair if p)]
        key = (endpoint.verify_tls, endpoint.ca_files, endpoint.client_certs,
               tuple(_mtime(f) for f in files))
        context = self._contexts.get(key)
        if context is None:
            context = self._build(endpoint)
            self._contexts = {k: v for k, v in self._contexts.items()
                              if k[:3] != key[:3]}  # drop contexts of older files
            self._contexts[key] = context
        return context

    @staticmethod
    def _build(endpoint: Endpoint) -> ssl.SSLContext:
        import ssl  # OpenSSL only once a registry asks for TLS settings (crisp.tlsload)

        where = f" ({endpoint.source})" if endpoint.source else ""
        context = ssl.create_default_context()
        if not endpoint.verify_tls:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        for ca in endpoint.ca_files:
            try:
                context.load_verify_locations(cafile=ca)
            except (OSError, ssl.SSLError) as error:
                raise FailedPrecondition(
                    f"the CA file {ca} for registry {endpoint.host}{where} cannot be used: "
                    f"{getattr(error, 'strerror', None) or error}"
                ) from error
        for cert, key in endpoint.client_certs:
            try:
                context.load_cert_chain(cert, key or None)
            except (OSError, ssl.SSLError) as error:
                raise FailedPrecondition(
                    f"the client certificate {cert} for registry {endpoint.host}{where} cannot "
                    f"be used: {getattr(error, 'strerror', None) or error}"
                ) from error
        return context


def _mtime(path: str) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return -1.0


# OpenSSL's X509_V_ERR codes, grouped into the reasons people act on
_UNKNOWN_AUTHORITY = {2, 18, 19, 20, 21, 27}
_NAME_MISMATCH = {62, 64}
_EXPIRED = {10}
_NOT_YET_VALID = {9}


def tls_reason(error: BaseException) -> str:
    """Why a TLS handshake failed, in the words of the person fixing it."""
    cert_error = getattr(error, "certificate_error", error)
    code = getattr(cert_error, "verify_code", None)
    message = getattr(cert_error, "verify_message", "") or str(cert_error)
    if code in _UNKNOWN_AUTHORITY:
        return (f"certificate signed by unknown authority ({message}); give its CA as "
                "ca_file in [registries.tls] or ca in hosts.toml")
    if code in _NAME_MISMATCH:
        return f"certificate name mismatch ({message})"
    if code in _EXPIRED:
        return f"certificate has expired ({message})"
    if code in _NOT_YET_VALID:
        return f"certificate is not yet valid ({message})"
    text = str(cert_error)
    if any(alert in text.upper() for alert in ("CERTIFICATE_REQUIRED", "BAD_CERTIFICATE",
                                                "UNKNOWN_CA", "CERTIFICATE_UNKNOWN")):
        return (f"the registry wants a client certificate it trusts ({text}); give cert_file "
                "and key_file in [registries.tls] or client in hosts.toml")
    return f"TLS handshake failed ({text})"


def shares_credentials(config: RegistryConfig, domain: str, host: str) -> bool:
    """If ``registries.mirror_credentials`` sends ``domain``'s credentials to ``host`` too."""
    wanted = normalize_host(domain)
    for registry, hosts in config.mirror_credentials.items():
        if normalize_host(registry) == wanted:
            return "*" in hosts or normalize_host(host) in map(normalize_host, hosts)
    return False


def known_hosts(config: RegistryConfig) -> list[str]:
    """Every registry host some source configures, for ``crisp config show``."""
    hosts: set[str] = {*config.mirrors, *config.tls, *config.insecure}
    if config.config_path and Path(config.config_path).is_dir():
        hosts.update(p.name for p in Path(config.config_path).iterdir()
                     if p.is_dir() and p.name != "_default")
    if config.registries_conf:
        conf = registries_conf.load(config.registries_conf)
        for entry in conf.registries if conf is not None else ():
            if not entry.prefix.startswith("*."):
                hosts.add(entry.prefix.split("/", 1)[0])
    return sorted(hosts)


def describe(live: LiveConfig, hosts: list[str]) -> str:
    """The effective endpoints of each host, one block per host, as crisp would use them."""
    lines: list[str] = []
    for host in hosts or known_hosts(live.current.registries):
        domain, _, path = host.partition("/")
        lines.append(f"{host}:")
        try:
            endpoints = endpoints_for(domain, live, path)
        except FailedPrecondition as error:
            lines.append(f"  {error}")
            continue
        for endpoint in endpoints:
            parts = [str(endpoint), "capabilities=" + ",".join(sorted(endpoint.capabilities))]
            if endpoint.base_url.startswith("https://"):
                parts.append("verify" if endpoint.verify_tls else "no-verify")
            parts += [f"ca={ca}" for ca in endpoint.ca_files]
            parts += [f"client={cert}" for cert, _ in endpoint.client_certs]
            parts += [f"header={name}" for name, _ in endpoint.headers]
            if endpoint.repository:
                parts.append(f"repository={endpoint.repository}")
            if normalize_host(endpoint.host) != normalize_host(domain):
                shared = shares_credentials(live.current.registries, domain, endpoint.host)
                parts.append("credentials=" + ("shared" if shared else "anonymous"))
            if endpoint.source:
                parts.append(f"from={endpoint.source}")
            lines.append("  " + " ".join(parts))
    return "\n".join(lines) + ("\n" if lines else "")
