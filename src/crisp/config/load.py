"""Reading, validating and printing crisp's TOML config file.

Validation walks the dataclasses of :mod:`crisp.config.model` by their type hints, so a new
option needs no code here. Every problem names the file, the dotted key and the reason, and
all problems of a file are reported at once.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import tomllib
import types
import typing
from dataclasses import MISSING, Field, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from crisp.config.model import Config

DEFAULT_PATH = Path("/etc/crisp/crisp.toml")
ENVIRONMENT_VARIABLE = "CRISP_CONFIG"

_HANDLER_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class ConfigError(ValueError):
    """A config file that cannot be used, with every problem found in it."""

    def __init__(self, source: str, problems: list[tuple[str, str]]):
        self.source = source
        self.problems = problems
        lines = [
            f"{source}: {key}: {reason}" if key else f"{source}: {reason}"
            for key, reason in problems
        ]
        super().__init__("\n".join(lines))


def config_path(explicit: str | None) -> Path | None:
    """The file to read: --config, else $CRISP_CONFIG, else the default path if it exists."""
    if explicit:
        return Path(explicit)
    from_environment = os.environ.get(ENVIRONMENT_VARIABLE)
    if from_environment:
        return Path(from_environment)
    return DEFAULT_PATH if DEFAULT_PATH.exists() else None


def load(path: Path | None) -> Config:
    """The config in ``path``, or the built-in defaults when ``path`` is None."""
    if path is None:
        return Config()
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigError(str(path), [("", f"cannot read: {error.strerror or error}")]) from error
    return parse(text, str(path))


def parse(text: str, source: str = "<config>") -> Config:
    """Validate TOML text into a :class:`Config`; raise :class:`ConfigError` naming each problem."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(source, [("", f"not valid TOML: {error}")]) from error
    problems: list[tuple[str, str]] = []
    config = _build(Config, document, "", problems)
    if not problems:
        problems.extend(_check(config))
    if problems:
        raise ConfigError(source, problems)
    assert isinstance(config, Config)
    return config


def _build(cls: type, table: Any, prefix: str, problems: list[tuple[str, str]]) -> Any:
    """An instance of dataclass ``cls`` from a TOML table, collecting problems on the way."""
    if not isinstance(table, dict):
        problems.append((prefix.rstrip("."), f"must be a table, not {_kind(table)}"))
        return None
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    for key in table:
        if key not in known:
            problems.append((prefix + key, f"unknown option (known: {', '.join(sorted(known))})"))
    values: dict[str, Any] = {}
    for f in fields(cls):
        if f.name in table:
            value = _convert(hints[f.name], table[f.name], prefix + f.name, problems)
            built_in = _built_in_named_tables(f)
            if built_in and value is not MISSING:
                # Named tables such as [runtimes.NAME] add to the built-in ones (and may
                # redefine them); they do not make the built-in ones disappear.
                value = {**built_in, **value}
            values[f.name] = value
    if any(value is MISSING for value in values.values()):
        return None
    return cls(**values)


def _built_in_named_tables(f: Field[Any]) -> dict[str, Any]:
    """The built-in entries of a field holding named tables ([runtimes.NAME]), else {}."""
    if f.default_factory is MISSING:
        return {}
    default = f.default_factory()
    if isinstance(default, dict) and any(is_dataclass(v) for v in default.values()):
        return default
    return {}


def _convert(hint: Any, value: Any, key: str, problems: list[tuple[str, str]]) -> Any:
    """``value`` as type ``hint``, or MISSING after recording why it cannot be."""
    origin = get_origin(hint)
    if is_dataclass(hint):
        built = _build(typing.cast(type, hint), value, key + ".", problems)
        return MISSING if built is None else built
    if origin is Literal:
        choices = get_args(hint)
        if value in choices:
            return value
        problems.append((key, f"must be one of {', '.join(map(str, choices))}, not {value!r}"))
        return MISSING
    if origin is list:
        (item_hint,) = get_args(hint)
        if not isinstance(value, list):
            problems.append((key, f"must be a list, not {_kind(value)}"))
            return MISSING
        items = [_convert(item_hint, item, f"{key}[{i}]", problems) for i, item in enumerate(value)]
        return MISSING if MISSING in items else items
    if origin is dict:
        _, value_hint = get_args(hint)
        if not isinstance(value, dict):
            problems.append((key, f"must be a table, not {_kind(value)}"))
            return MISSING
        converted = {
            name: _convert(value_hint, item, f"{key}.{name}", problems)
            for name, item in value.items()
        }
        return MISSING if MISSING in converted.values() else converted
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint in (str, int, bool) and type(value) is hint:
        return value
    if isinstance(hint, type | types.UnionType):
        problems.append((key, f"must be {_name(hint)}, not {_kind(value)}"))
        return MISSING
    raise TypeError(f"config type {hint!r} of {key} is not supported")  # a bug in model.py


def _check(config: Config) -> list[tuple[str, str]]:
    """Problems that types alone do not catch."""
    problems: list[tuple[str, str]] = []
    for key, path in [
        ("root_dir", config.root_dir),
        ("run_dir", config.run_dir),
        ("socket", config.socket),
        ("cni.conf_dir", config.cni.conf_dir),
    ]:
        if not os.path.isabs(path):
            problems.append((key, f"must be an absolute path, not {path!r}"))
    for i, directory in enumerate(config.cni.bin_dirs):
        if not os.path.isabs(directory):
            problems.append((f"cni.bin_dirs[{i}]", f"must be an absolute path, not {directory!r}"))
    if not config.runtimes:
        problems.append(("runtimes", "at least one runtime handler is needed"))
    elif config.default_runtime not in config.runtimes:
        problems.append(
            (
                "default_runtime",
                f"{config.default_runtime!r} is not one of the "
                f"configured runtimes ({', '.join(sorted(config.runtimes))})",
            )
        )
    for name in config.runtimes:
        if not _HANDLER_NAME.match(name):
            problems.append(
                (
                    f"runtimes.{name}",
                    "a handler name is lower-case letters, digits "
                    "and '-', as a RuntimeClass handler must be",
                )
            )
    for registry, mirrors in config.registries.mirrors.items():
        for i, mirror in enumerate(mirrors):
            if not mirror.startswith(("http://", "https://")):
                problems.append(
                    (
                        f"registries.mirrors.{registry}[{i}]",
                        f"must be an http:// or https:// URL, not {mirror!r}",
                    )
                )
    for registry, hosts in config.registries.mirror_credentials.items():
        for i, host in enumerate(hosts):
            if host != "*" and ("/" in host or not host):
                problems.append((
                    f"registries.mirror_credentials.{registry}[{i}]",
                    f'must be a host[:port] (no scheme or path) or "*", not {host!r}',
                ))
    for host, tls in config.registries.tls.items():
        if tls.key_file and not tls.cert_file:
            problems.append((f"registries.tls.{host}.key_file", "needs cert_file too"))
        for name in ("ca_file", "cert_file", "key_file"):
            value = getattr(tls, name)
            if value and not os.path.isabs(value):
                problems.append((f"registries.tls.{host}.{name}",
                                 f"must be an absolute path, not {value!r}"))
    for name in ("config_path", "registries_conf", "auth_file"):
        value = getattr(config.registries, name)
        if value and not os.path.isabs(value):
            problems.append((f"registries.{name}", f"must be an absolute path, not {value!r}"))
    for key, port in [
        ("streaming.port", config.streaming.port),
        ("metrics.port", config.metrics.port),
    ]:
        if not 0 <= port <= 65535:
            problems.append((key, f"must be a port number from 0 to 65535, not {port}"))
    if config.streaming.token_ttl <= 0:
        problems.append(("streaming.token_ttl", "must be more than 0 seconds"))
    if config.streaming.tls_key_file and not config.streaming.tls_cert_file:
        problems.append(("streaming.tls_key_file", "needs streaming.tls_cert_file too"))
    if config.images.max_concurrent_downloads < 1:
        problems.append(("images.max_concurrent_downloads", "must be at least 1"))
    for key, seconds in [
        ("images.pull_timeout", config.images.pull_timeout),
        ("images.pull_progress_timeout", config.images.pull_progress_timeout),
        ("images.registry_helper_idle", config.images.registry_helper_idle),
    ]:
        if seconds < 0:
            problems.append((key, "must not be negative"))
    try:
        ipaddress.ip_network(config.cni.default_subnet)
    except ValueError as error:
        problems.append(("cni.default_subnet", f"not a network in CIDR form: {error}"))
    return problems


def render_default() -> str:
    """A complete, commented config file holding every built-in default."""
    return render(
        Config(), ["crisp configuration. Every option is shown with its built-in default."]
    )


def render(config: Config, header: list[str]) -> str:
    """A complete, commented config file holding every value of ``config``.

    ``header`` is the opening comment, one line per item; the note on live options follows.
    """
    lines = [f"# {line}" if line else "#" for line in header]
    lines += ["# Options marked (live) change on SIGHUP; the rest need a restart.", ""]
    _render_table(config, "", lines)
    return "\n".join(lines).rstrip() + "\n"


def _render_table(instance: Any, prefix: str, lines: list[str]) -> None:
    tables: list[tuple[str, Any, str]] = []
    for f in fields(instance):
        value = getattr(instance, f.name)
        doc = f.metadata.get("doc", "")
        if f.metadata.get("live"):
            doc = f"{doc} (live)" if doc else ""
        if is_dataclass(value):
            tables.append((prefix + f.name, value, doc))
        elif isinstance(value, dict) and value and all(is_dataclass(v) for v in value.values()):
            tables.extend((f"{prefix}{f.name}.{name}", v, doc) for name, v in value.items())
        else:
            if doc:
                lines.append(f"# {doc}")
            lines.append(f"{f.name} = {_toml_value(value)}")
    for name, table, doc in tables:
        lines.append("")
        if doc:
            lines.append(f"# {doc}")
        lines.append(f"[{name}]")
        if table.__doc__:
            lines.append(f"# {table.__doc__.strip().splitlines()[0]}")
        _render_table(table, name + ".", lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return (
            "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
        )
    raise TypeError(f"cannot write {value!r} as TOML")


def _kind(value: Any) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a table",
    }.get(type(value), type(value).__name__)


def _name(hint: Any) -> str:
    return {str: "a string", int: "an integer", float: "a number", bool: "a boolean"}.get(
        hint, str(hint)
    )
