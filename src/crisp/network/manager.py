"""The CNI runtime side: attach a pod's network namespace to the network and detach it.

One :class:`NetworkManager` per daemon. It reads the ``[cni]`` options at each call (SIGHUP
may change them), records every attachment on disk before the first plugin runs, undoes a
failed ADD with DEL, and runs DEL from that record, so teardown works after a restart, after
a crash half-way through setup, and after conf_dir changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
from collections.abc import Collection, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from crisp.config import CNIConfig, LiveConfig
from crisp.errors import CrispError, FailedPrecondition, InvalidArgument
from crisp.keyedlocks import KeyedLocks
from crisp.network import default, masquerade, version
from crisp.network.cache import Attachment, AttachmentCache, check_sandbox_id
from crisp.network.conflist import NetworkConfig
from crisp.network.discovery import Discovery, PluginVersions, discover, fingerprint
from crisp.network.invoke import Call, PluginError, require_plugin, run_plugin
from crisp.network.result import pod_network
from crisp.network.types import (
    BandwidthLimits,
    DNSConfig,
    NetworkStatus,
    PodNetwork,
    PodRef,
    PortMapping,
)
from crisp.state import Settings
from crisp.steps import step

log = logging.getLogger(__name__)

POD_INTERFACE = "eth0"
POD_CIDR_SETTING = "pod_cidr"
NOT_READY_REASON = "NetworkPluginNotReady"


class NetworkManager:
    """Pod networking through CNI plugins; see the module docstring for the guarantees.

    ``state_dir`` (under root_dir) holds ``attachments/`` (one record per pod) and ``ipam/``
    (the built-in network's address leases).
    """

    def __init__(self, live: LiveConfig, state_dir: Path, settings: Settings | None = None):
        self._live = live
        self._cache = AttachmentCache(state_dir / "attachments")
        self._ipam_dir = state_dir / "ipam"
        self._settings = settings
        self._versions = PluginVersions()
        self._locks = KeyedLocks()
        self._pod_cidrs: tuple[str, ...] = ()
        # The last discovery and what it was made from (settings and a stat pass of the
        # dirs): Status answers from it until anything it depends on changes.
        self._known: tuple[tuple[object, ...], Discovery] | None = None
        # Subnets whose masquerade this daemon has put in place (crisp's default network).
        self._masqueraded: set[str] = set()
        self._masquerading = asyncio.Lock()

    @property
    def _cni(self) -> CNIConfig:
        return self._live.current.cni

    async def start(self) -> None:
        """Load the recorded pod CIDR and write the default config if it is wanted."""
        if self._settings is not None:
            recorded = await self._settings.get(POD_CIDR_SETTING)
            if recorded:
                try:
                    self._pod_cidrs = parse_pod_cidrs(recorded)
                except InvalidArgument as error:
                    log.warning("ignoring the recorded pod CIDR: %s", error)
        await self._discover()

    @property
    def pod_cidrs(self) -> tuple[str, ...]:
        return self._pod_cidrs

    async def update_pod_cidr(self, cidr: str) -> None:
        """Record the kubelet's pod CIDR (UpdateRuntimeConfig); "" changes nothing."""
        if not cidr.strip():
            return
        cidrs = parse_pod_cidrs(cidr)
        if self._settings is not None:
            await self._settings.set(POD_CIDR_SETTING, ",".join(cidrs))
        if cidrs != self._pod_cidrs:
            log.info("pod CIDR is now %s", ",".join(cidrs))
        self._pod_cidrs = cidrs
        await self._discover()  # refreshes the default config's subnet if it is ours

    async def status(self) -> NetworkStatus:
        """NetworkReady: a valid config exists and (CNI 1.1.0+) its plugins say they are ready."""
        discovery = await self._discover()
        network = discovery.network
        if network is None:
            return NetworkStatus(False, NOT_READY_REASON, discovery.explanation())
        if version.at_least(network.cni_version, version.STATUS_SINCE):
            bin_dirs = list(self._cni.bin_dirs)
            for plugin in network.plugins:
                try:
                    path = require_plugin(str(plugin["type"]), bin_dirs)
                    await run_plugin(path, Call("STATUS"), _plugin_input(network, plugin),
                                     bin_dirs, network=network.name)
                except CrispError as error:
                    return NetworkStatus(False, NOT_READY_REASON, str(error))
        return NetworkStatus(True, "", "")

    async def setup(
        self,
        sandbox_id: str,
        netns_path: str,
        pod: PodRef,
        port_mappings: Sequence[PortMapping] = (),
        dns: DNSConfig | None = None,
        bandwidth: BandwidthLimits | None = None,
    ) -> PodNetwork:
        """Attach the pod's network namespace (ADD); on any failure nothing is left behind."""
        check_sandbox_id(sandbox_id)
        if not await asyncio.to_thread(os.path.exists, netns_path):
            raise FailedPrecondition(f"network namespace {netns_path} does not exist")
        async with self._lock(sandbox_id):
            stale = await self._cache.load(sandbox_id)
            if stale is not None:
                log.info("sandbox %s has an earlier network attachment: removing it first",
                         sandbox_id)
                await self._delete(stale, None)
            with step("cni: discovery"):
                discovery = await self._discover()
            if discovery.network is None:
                raise FailedPrecondition(f"pod network is not ready: {discovery.explanation()}")
            await self._masquerade(discovery.network)
            attachment = Attachment(
                sandbox_id=sandbox_id,
                netns=netns_path,
                ifname=POD_INTERFACE,
                cni_args=cni_args(pod, sandbox_id),
                runtime_config=self._runtime_config(port_mappings, dns, bandwidth),
                network=discovery.network,
            )
            with step("cni: result cache"):
                await self._cache.save(attachment)  # the intent: DEL can run from here on
            progress = _Progress()
            try:
                result = await self._add(attachment, progress)
                try:
                    attached = pod_network(result, attachment.network.name, POD_INTERFACE)
                except ValueError as error:
                    raise FailedPrecondition(
                        f"network {attachment.network.name!r} returned a result crisp cannot "
                        f"read: {error}"
                    ) from None
                await self._cache.save(replace(attachment, result=result))
            except BaseException as error:
                failed = replace(attachment, failed_at=progress.succeeded)
                undo_error = await asyncio.shield(self._undo(failed))
                if undo_error is not None and isinstance(error, CrispError):
                    kind = FailedPrecondition if isinstance(error, PluginError) else type(error)
                    raise kind(
                        f"{error}; undoing the partial network setup failed too ({undo_error}); "
                        "StopPodSandbox will try again"
                    ) from error
                raise
            log.info("sandbox %s joined network %r (%s) with IPs %s", sandbox_id,
                     attachment.network.name, attachment.network.source or "cached config",
                     ", ".join(attached.ips) or "none")
            return attached

    async def teardown(self, sandbox_id: str, netns_path: str | None = None) -> None:
        """Detach the pod (DEL) from its recorded attachment; a pod with none is a no-op."""
        check_sandbox_id(sandbox_id)
        async with self._lock(sandbox_id):
            attachment = await self._cache.load(sandbox_id)
            if attachment is None:
                return
            await self._delete(attachment, netns_path)
            log.info("sandbox %s left network %r", sandbox_id, attachment.network.name)

    async def check(self, sandbox_id: str, netns_path: str | None = None) -> None:
        """Ask the plugins to verify the pod's attachment (CHECK); raises what they report."""
        check_sandbox_id(sandbox_id)
        async with self._lock(sandbox_id):
            attachment = await self._cache.load(sandbox_id)
            if attachment is None or attachment.result is None:
                raise FailedPrecondition(f"sandbox {sandbox_id} has no finished network setup")
            network = attachment.network
            if network.disable_check or not version.at_least(network.cni_version,
                                                             version.CHECK_SINCE):
                return
            netns = netns_path or attachment.netns
            call = Call("CHECK", sandbox_id, netns, attachment.ifname, attachment.cni_args)
            bin_dirs = list(self._cni.bin_dirs)
            for plugin in network.plugins:
                path = require_plugin(str(plugin["type"]), bin_dirs)
                config = _plugin_input(network, plugin, attachment.runtime_config,
                                       attachment.result)
                await run_plugin(path, call, config, bin_dirs, network=network.name)

    async def cached(self, sandbox_id: str) -> PodNetwork | None:
        """The pod's network as last set up (for PodSandboxStatus after a restart)."""
        attachment = await self._cache.load(check_sandbox_id(sandbox_id))
        if attachment is None or attachment.result is None:
            return None
        return pod_network(attachment.result, attachment.network.name, attachment.ifname)

    async def attached_sandboxes(self) -> list[str]:
        """Sandboxes with an attachment record, for start-up reconciliation of leaks."""
        return await self._cache.sandbox_ids()

    async def release_strays(self, known_sandboxes: Collection[str]) -> list[str]:
        """Tear down attachments of sandboxes crisp has no record of; return their ids.

        For start-up, after the pod records are loaded: a crash between ADD and saving the
        sandbox leaves an attachment nobody would ever DEL. Failures are logged and kept.
        """
        released = []
        for sandbox_id in await self._cache.sandbox_ids():
            if sandbox_id in known_sandboxes:
                continue
            try:
                await self.teardown(sandbox_id)
            except CrispError as error:
                log.error("could not release the network of unknown sandbox %s: %s",
                          sandbox_id, error)
                continue
            log.info("released the network of unknown sandbox %s", sandbox_id)
            released.append(sandbox_id)
        return released

    # -- internals -------------------------------------------------------------------------

    async def _masquerade(self, network: NetworkConfig) -> None:
        """Put the default network's masquerade in place, once per subnet and daemon."""
        subnets = default.masqueraded_subnets(network, str(self._ipam_dir))
        if all(subnet in self._masqueraded for subnet in subnets):
            return
        async with self._masquerading:
            missing = [subnet for subnet in subnets if subnet not in self._masqueraded]
            if missing:
                await asyncio.to_thread(masquerade.ensure, missing)
                self._masqueraded.update(missing)
                log.info("masquerading traffic that leaves pod subnet(s) %s",
                         ", ".join(missing))

    def _lock(self, sandbox_id: str) -> contextlib.AbstractAsyncContextManager[None]:
        return self._locks.hold(sandbox_id)

    async def _discover(self) -> Discovery:
        cni = self._cni
        conf_dir = Path(cni.conf_dir)
        bin_dirs = list(cni.bin_dirs)
        settings = (cni.conf_dir, tuple(bin_dirs), self._pod_cidrs, cni.write_default_config,
                    cni.default_subnet, str(self._ipam_dir))
        seen = await asyncio.to_thread(fingerprint, conf_dir, bin_dirs)
        known = self._known
        if seen is not None and known is not None and known[0] == (settings, seen):
            return known[1]
        if cni.write_default_config:
            subnets = list(self._pod_cidrs) or [cni.default_subnet]
            try:
                if await asyncio.to_thread(default.ensure_default, conf_dir, subnets,
                                           str(self._ipam_dir)):
                    log.info("wrote crisp's default network config to %s",
                             conf_dir / default.DEFAULT_CONFIG_NAME)
                    seen = None  # just written: the next call looks again
            except (OSError, ValueError) as error:
                log.warning("could not write the default network config into %s: %s",
                            conf_dir, error)
        # The fingerprint is taken before discovery reads: a change during it shows next time.
        discovery = await discover(conf_dir, bin_dirs, self._pod_cidrs, self._versions)
        self._known = None if seen is None else ((settings, seen), discovery)
        return discovery

    def _runtime_config(
        self,
        port_mappings: Sequence[PortMapping],
        dns: DNSConfig | None,
        bandwidth: BandwidthLimits | None,
    ) -> dict[str, Any]:
        """Every capability value crisp can offer; each plugin gets those it declares."""
        values: dict[str, Any] = {"portMappings": [m.to_cni() for m in port_mappings]}
        if dns is not None:
            values["dns"] = dns.to_cni()
        if bandwidth is not None and bandwidth.to_cni():
            values["bandwidth"] = bandwidth.to_cni()
        if self._pod_cidrs:
            values["ipRanges"] = [[{"subnet": cidr}] for cidr in self._pod_cidrs]
        return values

    async def _add(self, attachment: Attachment, progress: _Progress) -> dict[str, Any]:
        """Run ADD through the chain, each plugin getting the previous one's result.

        In crisp's own default network the leading loopback runs beside the rest of the
        chain, as containerd runs its loopback network beside the pod's: it only brings
        ``lo`` up, and the reference bridge after it builds its result without reading
        loopback's, so the outcome is the chain's. ``progress`` counts the chain's prefix
        that succeeded, as if it had run in order.
        """
        network = attachment.network
        bin_dirs = list(self._cni.bin_dirs)
        call = Call("ADD", attachment.sandbox_id, attachment.netns, attachment.ifname,
                    attachment.cni_args)
        plugins = list(network.plugins)
        beside: asyncio.Future[dict[str, Any]] | None = None
        if (len(plugins) > 1 and plugins[0].get("type") == "loopback"
                and default.is_crisps_own(network, str(self._ipam_dir))):
            beside = asyncio.ensure_future(self._add_one(network, plugins[0], call, attachment,
                                                         None, bin_dirs))
            plugins = plugins[1:]
        done = 0
        try:
            previous: dict[str, Any] | None = None
            for plugin in plugins:
                if previous is not None and _nothing_to_map(plugin, attachment.runtime_config):
                    done += 1  # its DEL still runs: it is in the chain
                    continue
                previous = await self._add_one(network, plugin, call, attachment, previous,
                                               bin_dirs)
                done += 1
        finally:
            if beside is not None:
                await asyncio.wait([beside])
                if beside.cancelled() or beside.exception() is not None:
                    done = -1  # the chain failed at its first plugin
                else:
                    done += 1
            progress.succeeded = max(done, 0)
        if beside is not None:
            beside.result()  # raises loopback's error when only it failed
        assert previous is not None  # a NetworkConfig always has a plugin
        return previous

    async def _add_one(self, network: NetworkConfig, plugin: dict[str, Any], call: Call,
                       attachment: Attachment, previous: dict[str, Any] | None,
                       bin_dirs: list[str]) -> dict[str, Any]:
        """ADD of one plugin of the chain; its result."""
        path = require_plugin(str(plugin["type"]), bin_dirs)
        config = _plugin_input(network, plugin, attachment.runtime_config, previous)
        with step(f"cni: ADD {plugin['type']}"):
            output = await run_plugin(path, call, config, bin_dirs, network=network.name)
        if output is None:
            raise FailedPrecondition(
                f"CNI plugin {path} ADD for network {network.name!r} succeeded but "
                "printed no result"
            )
        return output

    async def _delete(self, attachment: Attachment, netns_path: str | None) -> None:
        """Run DEL through the chain in reverse (stopping at an error), then forget it.

        After a failed ADD, DEL also goes to the plugins that failed or never ran, as the
        spec asks; their errors are only logged, since a plugin that did not succeed holds
        nothing (plugins undo their own failed ADD) and a config broken enough to fail ADD
        would otherwise make the pod impossible to remove.
        """
        network = attachment.network
        netns = netns_path or attachment.netns
        if not await asyncio.to_thread(_is_namespace, netns):
            netns = ""  # the namespace is gone: plugins still release addresses and rules
        bin_dirs = list(self._cni.bin_dirs)
        call = Call("DEL", attachment.sandbox_id, netns, attachment.ifname, attachment.cni_args)
        previous = (attachment.result
                    if version.at_least(network.cni_version, version.DEL_PREV_RESULT_SINCE)
                    else None)
        for index in reversed(range(len(network.plugins))):
            plugin = network.plugins[index]
            try:
                path = require_plugin(str(plugin["type"]), bin_dirs)
                config = _plugin_input(network, plugin, attachment.runtime_config, previous)
                await run_plugin(path, call, config, bin_dirs, network=network.name)
            except CrispError as error:
                if attachment.failed_at is None or index < attachment.failed_at:
                    raise
                log.warning("ignoring the DEL error of a plugin whose ADD did not succeed "
                            "(sandbox %s): %s", attachment.sandbox_id, error)
        await self._cache.remove(attachment.sandbox_id)

    async def _undo(self, attachment: Attachment) -> Exception | None:
        """DEL after a failed ADD; returns the error if that failed too (the record stays)."""
        try:
            await self._cache.save(attachment)  # records which plugins had succeeded
            await self._delete(attachment, None)
        except (CrispError, OSError) as error:
            log.error("undoing the failed network setup of sandbox %s failed: %s",
                      attachment.sandbox_id, error)
            return error
        return None


class _Progress:
    """How many plugins of a chain finished ADD, kept as the chain runs."""

    def __init__(self) -> None:
        self.succeeded = 0


def _plugin_input(
    network: NetworkConfig,
    plugin: dict[str, Any],
    runtime_config: dict[str, Any] | None = None,
    previous: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A plugin's stdin: its config with the list's name and version, capabilities, prevResult."""
    config = dict(plugin)
    config["name"] = network.name
    config["cniVersion"] = network.cni_version
    capabilities = plugin.get("capabilities") or {}
    offered = {key: value for key, value in (runtime_config or {}).items()
               if capabilities.get(key) is True}
    if offered:
        config["runtimeConfig"] = offered  # as libcni does: replaces one written in the file
    if previous is not None:
        config["prevResult"] = previous
    return config


def _nothing_to_map(plugin: dict[str, Any], runtime_config: dict[str, Any]) -> bool:
    """Whether ``plugin`` is the reference portmap plugin with no port to map, whose ADD
    prints its prevResult unchanged and touches nothing (plugins/meta/portmap: "no
    mappings: return the previous result"): not running it saves a process per pod start
    (6-7 ms of ~100 here). Only when the mappings come from the runtime and there are
    none; one written in the plugin's own config still runs it."""
    capabilities = plugin.get("capabilities") or {}
    return (plugin.get("type") == "portmap" and capabilities.get("portMappings") is True
            and "runtimeConfig" not in plugin and not runtime_config.get("portMappings"))


def _is_namespace(path: str) -> bool:
    """Whether ``path`` still is a namespace: a pin left unmounted is a plain file on the
    directory's own file system, which plugins would refuse as "not a network namespace"."""
    if not path:
        return False
    try:
        pinned = os.stat(path)
        directory = os.stat(os.path.dirname(path) or "/")
    except OSError:
        return False
    return pinned.st_dev != directory.st_dev


def cni_args(pod: PodRef, sandbox_id: str) -> str:
    """CNI_ARGS as the kubelet's conventions name them."""
    return ";".join([
        "IgnoreUnknown=1",
        f"K8S_POD_NAMESPACE={pod.namespace}",
        f"K8S_POD_NAME={pod.name}",
        f"K8S_POD_INFRA_CONTAINER_ID={sandbox_id}",
        f"K8S_POD_UID={pod.uid}",
    ])


def parse_pod_cidrs(text: str) -> tuple[str, ...]:
    """"10.244.1.0/24,fd00:1::/64" -> the CIDRs, normalised; InvalidArgument if one is bad."""
    cidrs: list[str] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            cidrs.append(str(ipaddress.ip_network(part, strict=False)))
        except ValueError:
            raise InvalidArgument(f"pod CIDR {part!r} is not an IPv4 or IPv6 CIDR") from None
    if not cidrs:
        raise InvalidArgument(f"pod CIDR {text!r} names no CIDR")
    return tuple(cidrs)
