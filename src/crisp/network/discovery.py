"""Finding the network to use: the lexically first valid config file in conf_dir.

"Valid" means more than parseable: every plugin of the chain (and its IPAM plugin) must be
in a bin dir, and all of them must speak a CNI version the file allows, which crisp learns
by asking each binary (VERSION) once per binary and version. Every file passed over is
listed with its reason, so NetworkReady=false says what to fix.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crisp.errors import CrispError
from crisp.network import version
from crisp.network.conflist import CONFIG_EXTENSIONS, NetworkConfig, parse_text
from crisp.network.invoke import Call, check_plugin_type, find_plugin, run_plugin

_MAX_CONFIG_BYTES = 1 << 20


@dataclass(frozen=True)
class Rejected:
    """A config file that was passed over, and why."""

    path: str
    reason: str


@dataclass(frozen=True)
class Discovery:
    """The outcome of one look at conf_dir."""

    conf_dir: str
    network: NetworkConfig | None
    rejected: tuple[Rejected, ...] = ()

    def explanation(self) -> str:
        """Why there is no network, in words a person can act on."""
        if self.network is not None:
            return f"using network {self.network.name!r} from {self.network.source}"
        if not self.rejected:
            return (f"no CNI network config in {self.conf_dir} (files ending in "
                    f"{', '.join(CONFIG_EXTENSIONS)})")
        reasons = "; ".join(f"{r.path} {r.reason}" for r in self.rejected)
        return f"no valid CNI network config in {self.conf_dir}: {reasons}"


def config_files(conf_dir: Path) -> list[Path]:
    """Candidate files in lexical order of their names."""
    try:
        names = sorted(os.listdir(conf_dir))
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [conf_dir / name for name in names
            if name.endswith(CONFIG_EXTENSIONS) and not name.startswith(".")]


Fingerprint = tuple[tuple[str, int, int, int, int], ...]
"""What one stat pass saw of the conf dir and bin dirs: (path, ino, size, mtime, ctime)."""

_SETTLE_NS = 2_000_000_000


def fingerprint(conf_dir: Path, bin_dirs: Sequence[str]) -> Fingerprint | None:
    """A cheap stat pass over conf_dir, its config files and the bin dirs (blocking).

    Equal fingerprints mean discovery would find the same thing, so its outcome can be
    kept (Status is polled every few seconds and a full discovery costs milliseconds).
    None when something changed in the last two seconds: a file rewritten in place within
    one timestamp tick keeps its mtime and size, so a fresh change is never trusted.
    """
    seen: list[tuple[str, int, int, int, int]] = []
    newest = 0
    for path in (conf_dir, *config_files(conf_dir), *(Path(d) for d in bin_dirs)):
        try:
            st = os.stat(path)
        except OSError:
            seen.append((str(path), -1, -1, -1, -1))
            continue
        seen.append((str(path), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
        newest = max(newest, st.st_mtime_ns, st.st_ctime_ns)
    if time.time_ns() - newest < _SETTLE_NS:
        return None
    return tuple(seen)


class PluginVersions:
    """Remembers which CNI versions each plugin binary speaks, asked once per binary."""

    def __init__(self) -> None:
        self._known: dict[tuple[str, int, int, int], tuple[str, ...]] = {}
        self._lock = asyncio.Lock()

    async def supported(self, path: Path, bin_dirs: Sequence[str]) -> tuple[str, ...]:
        """The plugin's supportedVersions; CrispError if it cannot say."""
        stat = await asyncio.to_thread(path.stat)
        key = (str(path), stat.st_ino, stat.st_mtime_ns, stat.st_size)
        async with self._lock:
            if key not in self._known:
                self._known[key] = await self._ask(path, bin_dirs)
            return self._known[key]

    @staticmethod
    async def _ask(path: Path, bin_dirs: Sequence[str]) -> tuple[str, ...]:
        # The probe's own cniVersion only picks the output format; 0.4.0 is read by all.
        output = await run_plugin(path, Call("VERSION"), {"cniVersion": "0.4.0"}, bin_dirs,
                                  network="(version probe)", time_limit=30.0)
        listed: Any = (output or {}).get("supportedVersions")
        if not isinstance(listed, list) or not all(isinstance(v, str) for v in listed):
            raise CrispError(f"CNI plugin {path} did not list its supportedVersions")
        return tuple(listed)


async def discover(
    conf_dir: Path,
    bin_dirs: Sequence[str],
    pod_cidrs: Sequence[str],
    versions: PluginVersions,
) -> Discovery:
    """Look at conf_dir now and pick the network to use."""
    rejected: list[Rejected] = []
    for path in await asyncio.to_thread(config_files, conf_dir):
        try:
            network = await _load(path, bin_dirs, pod_cidrs, versions)
        except _Invalid as invalid:
            rejected.append(Rejected(str(path), str(invalid)))
            continue
        return Discovery(str(conf_dir), network, tuple(rejected))
    return Discovery(str(conf_dir), None, tuple(rejected))


class _Invalid(Exception):
    """A config file cannot be used; the message is the reason."""


async def _load(
    path: Path, bin_dirs: Sequence[str], pod_cidrs: Sequence[str], versions: PluginVersions
) -> NetworkConfig:
    try:
        text = await asyncio.to_thread(_read_config, path)
        network = parse_text(text, str(path), pod_cidrs)
    except (OSError, ValueError) as error:
        raise _Invalid(str(error)) from None
    spoken: list[tuple[str, ...]] = []
    for plugin_type in _binaries(network):
        try:
            check_plugin_type(plugin_type)
        except ValueError as error:
            raise _Invalid(f"has an IPAM plugin that cannot be run: {error}") from None
        binary = find_plugin(plugin_type, bin_dirs)
        if binary is None:
            raise _Invalid(
                f"needs CNI plugin {plugin_type!r}, which is in none of {', '.join(bin_dirs)}"
            )
        try:
            spoken.append(await versions.supported(binary, bin_dirs))
        except (OSError, CrispError) as error:
            raise _Invalid(f"needs CNI plugin {binary}, which failed its version probe: "
                           f"{error}") from None
    chosen = version.highest_common(network.offered_versions, *spoken)
    if chosen is None:
        raise _Invalid(
            f"allows CNI version {', '.join(network.offered_versions)}, which not every "
            f"plugin of {', '.join(_binaries(network))} supports"
        )
    return network.at_version(chosen)


def _read_config(path: Path) -> str:
    with path.open("rb") as file:
        data = file.read(_MAX_CONFIG_BYTES + 1)
    if len(data) > _MAX_CONFIG_BYTES:
        raise ValueError(f"is larger than {_MAX_CONFIG_BYTES} bytes")
    return data.decode("utf-8", errors="strict")


def _binaries(network: NetworkConfig) -> list[str]:
    """The chain's plugins and the IPAM plugins they delegate to, each once, in order."""
    names: list[str] = []
    for plugin in network.plugins:
        names.append(str(plugin["type"]))
        ipam = plugin.get("ipam")
        if isinstance(ipam, dict) and isinstance(ipam.get("type"), str) and ipam["type"]:
            names.append(ipam["type"])
    return list(dict.fromkeys(names))
