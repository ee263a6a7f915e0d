"""Parsing CNI network configuration files into one checked :class:`NetworkConfig`.

A ``.conflist`` (or any file with a ``plugins`` list) is a plugin chain; a ``.conf`` or
``.json`` holding a single plugin becomes a chain of one. Pure functions: reading the
directory and asking plugins which versions they speak happen in :mod:`discovery`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from crisp.network import version
from crisp.network.invoke import check_plugin_type

CONFIG_EXTENSIONS: tuple[str, ...] = (".conflist", ".conf", ".json")
POD_CIDR_PLACEHOLDER = "{{.PodCIDR}}"
"""Replaced by the pod CIDR the kubelet sent with UpdateRuntimeConfig (its first range)."""

_NETWORK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


@dataclass(frozen=True)
class NetworkConfig:
    """A network: its name, the CNI version it runs at, and its chain of plugin configs."""

    name: str
    cni_version: str
    plugins: tuple[dict[str, Any], ...]
    disable_check: bool = False
    source: str = ""
    offered_versions: tuple[str, ...] = ()
    """Versions the file allows (``cniVersions``, else just ``cniVersion``)."""

    def at_version(self, chosen: str) -> NetworkConfig:
        return replace(self, cni_version=chosen)

    def plugin_types(self) -> list[str]:
        return [str(plugin["type"]) for plugin in self.plugins]

    def to_json(self) -> dict[str, Any]:
        """The config as crisp runs it; stored in the result cache so DEL can use it later."""
        return {
            "cniVersion": self.cni_version,
            "name": self.name,
            "disableCheck": self.disable_check,
            "plugins": [dict(plugin) for plugin in self.plugins],
            "source": self.source,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> NetworkConfig:
        """Inverse of :meth:`to_json`, for cached configs; ValueError if it is not one."""
        config = parse_document(data, str(data.get("source", "")))
        return config.at_version(str(data["cniVersion"]))


def parse_text(text: str, source: str, pod_cidrs: Sequence[str] = ()) -> NetworkConfig:
    """Parse one file's text; ValueError carries the reason a person can fix."""
    if POD_CIDR_PLACEHOLDER in text:
        if not pod_cidrs:
            raise ValueError(
                f"uses {POD_CIDR_PLACEHOLDER} but the kubelet has not sent a pod CIDR yet "
                "(UpdateRuntimeConfig)"
            )
        text = text.replace(POD_CIDR_PLACEHOLDER, pod_cidrs[0])
    try:
        document = json.loads(text)
    except ValueError as error:
        raise ValueError(f"is not valid JSON: {error}") from None
    if not isinstance(document, dict):
        raise ValueError("is not a JSON object")
    return parse_document(document, source)


def parse_document(document: dict[str, Any], source: str) -> NetworkConfig:
    """Check a decoded config (list or single plugin) and make it a :class:`NetworkConfig`."""
    name = document.get("name")
    if not isinstance(name, str) or not _NETWORK_NAME.match(name):
        raise ValueError(
            f"has no valid \"name\" (got {name!r}; it must start with a letter or digit, "
            "then letters, digits, '_', '.' or '-')"
        )
    offered = _offered_versions(document)
    if "plugins" in document:
        raw_plugins = document["plugins"]
        if not isinstance(raw_plugins, list) or not raw_plugins:
            raise ValueError("has a \"plugins\" entry that is not a non-empty list")
    else:
        # A single-plugin config (.conf): the whole document is the plugin's config.
        raw_plugins = [document]
    plugins: list[dict[str, Any]] = []
    for index, plugin in enumerate(raw_plugins):
        if not isinstance(plugin, dict):
            raise ValueError(f"plugin {index} is not a JSON object")
        try:
            check_plugin_type(plugin.get("type"))
        except ValueError as error:
            raise ValueError(f"plugin {index}: {error}") from None
        capabilities = plugin.get("capabilities", {})
        if not isinstance(capabilities, dict):
            raise ValueError(f"plugin {index} ({plugin['type']}) has \"capabilities\" that is "
                             "not an object")
        plugins.append(plugin)
    supported = [v for v in offered if version.is_supported(v)]
    if not supported:
        raise ValueError(
            f"asks for CNI version {', '.join(offered)}, which crisp does not speak "
            f"(it speaks {', '.join(version.SUPPORTED)})"
        )
    return NetworkConfig(
        name=name,
        cni_version=max(supported, key=version.parse),
        plugins=tuple(plugins),
        disable_check=_flag(document.get("disableCheck", False)),
        source=source,
        offered_versions=tuple(supported),
    )


def _offered_versions(document: dict[str, Any]) -> list[str]:
    declared = document.get("cniVersion")
    if not isinstance(declared, str) or not declared:
        raise ValueError("has no \"cniVersion\"")
    offered = [declared]
    listed = document.get("cniVersions")
    if listed is not None:
        if not isinstance(listed, list) or not all(isinstance(v, str) for v in listed):
            raise ValueError("has a \"cniVersions\" entry that is not a list of strings")
        # Spec 1.1.0: the runtime picks the highest version of the list that it supports.
        offered = list(dict.fromkeys([*listed, declared]))
    for text in offered:
        try:
            version.parse(text)
        except ValueError as error:
            raise ValueError(f"has a bad CNI version: {error}") from None
    return offered


def _flag(value: object) -> bool:
    """disableCheck is a boolean, but the spec's own example spells it as a string."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ValueError(f"has \"disableCheck\" {value!r}, which is neither true nor false")
