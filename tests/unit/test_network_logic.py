"""Pure parts of the CNI runtime: results, plugin input, arguments, errors, records."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from crisp.errors import InvalidArgument
from crisp.keyedlocks import KeyedLocks
from crisp.network import (
    BandwidthLimits,
    DNSConfig,
    PodRef,
    PortMapping,
    bandwidth_from_annotations,
    parse_pod_cidrs,
)
from crisp.network.annotations import UNLIMITED_BURST, parse_quantity
from crisp.network.cache import Attachment, AttachmentCache, check_sandbox_id
from crisp.network.conflist import parse_document
from crisp.network.invoke import Call, _plugin_error
from crisp.network.manager import _plugin_input, cni_args
from crisp.network.result import pod_network

RESULT_1_0: dict[str, Any] = {
    "cniVersion": "1.0.0",
    "interfaces": [
        {"name": "cni0", "mac": "aa:00:00:00:00:01"},
        {"name": "veth1", "mac": "aa:00:00:00:00:02"},
        {"name": "eth0", "mac": "aa:00:00:00:00:03", "sandbox": "/run/netns/p"},
        {"name": "eth1", "mac": "aa:00:00:00:00:04", "sandbox": "/run/netns/p"},
    ],
    "ips": [
        {"address": "fd00::5/64", "interface": 2},
        {"address": "10.1.0.5/24", "gateway": "10.1.0.1", "interface": 2},
        {"address": "10.9.0.5/24", "interface": 3},
        {"address": "10.1.0.1/24", "interface": 0},
    ],
}


def test_pod_ips_are_those_of_the_pod_interface_ipv4_first() -> None:
    network = pod_network(RESULT_1_0, "net", "eth0")
    assert network.ips == ("10.1.0.5", "fd00::5")
    assert network.primary_ip == "10.1.0.5"
    assert network.additional_ips == ("fd00::5",)
    assert network.mac == "aa:00:00:00:00:03"


def test_result_0_4_with_version_fields_and_no_interface_index() -> None:
    result = {"cniVersion": "0.4.0",
              "ips": [{"version": "4", "address": "10.2.0.7/16"}]}
    assert pod_network(result, "net", "eth0").ips == ("10.2.0.7",)


def test_malformed_result_is_an_error() -> None:
    with pytest.raises(ValueError, match="not an address"):
        pod_network({"ips": [{"address": "10.0.0.300/24"}]}, "n", "eth0")
    with pytest.raises(ValueError, match="no address"):
        pod_network({"ips": [{}]}, "n", "eth0")


def test_plugin_input_overrides_name_and_version_and_filters_capabilities() -> None:
    network = parse_document({
        "cniVersion": "1.0.0", "name": "pods",
        "plugins": [{"type": "bridge", "name": "ignored", "cniVersion": "0.3.0"},
                    {"type": "portmap", "capabilities": {"portMappings": True, "dns": False}}],
    }, "f")
    runtime = {"portMappings": [{"hostPort": 1, "containerPort": 2, "protocol": "tcp"}],
               "dns": {"servers": ["1.1.1.1"]}}
    first = _plugin_input(network, network.plugins[0], runtime, None)
    assert first == {"type": "bridge", "name": "pods", "cniVersion": "1.0.0"}
    second = _plugin_input(network, network.plugins[1], runtime, {"ips": []})
    assert second["runtimeConfig"] == {"portMappings": runtime["portMappings"]}
    assert second["prevResult"] == {"ips": []}
    assert second["name"] == "pods"


def test_cni_args_follow_kubelet_conventions() -> None:
    args = cni_args(PodRef("web", "prod", "1234"), "sb1")
    assert args == ("IgnoreUnknown=1;K8S_POD_NAMESPACE=prod;K8S_POD_NAME=web;"
                    "K8S_POD_INFRA_CONTAINER_ID=sb1;K8S_POD_UID=1234")
    with pytest.raises(InvalidArgument, match="CNI_ARGS"):
        PodRef("a;K8S_POD_NAME=b", "ns", "u")


def test_call_environment_sets_cni_variables_only_where_they_belong() -> None:
    env = Call("ADD", "sb1", "/run/netns/p", "eth0", "A=1").environment(["/a", "/b"])
    assert env["CNI_COMMAND"] == "ADD"
    assert env["CNI_CONTAINERID"] == "sb1"
    assert env["CNI_NETNS"] == "/run/netns/p"
    assert env["CNI_IFNAME"] == "eth0"
    assert env["CNI_ARGS"] == "A=1"
    assert env["CNI_PATH"] == "/a:/b"
    assert "/usr/sbin" in env["PATH"]
    status = Call("STATUS").environment(["/a"])
    assert "CNI_NETNS" not in status and "CNI_CONTAINERID" not in status


def test_plugin_error_carries_msg_details_code_and_stderr() -> None:
    error = _plugin_error("CNI plugin bridge ADD", 1,
                          b'{"code": 7, "msg": "bad config", "details": "no subnet"}',
                          "trace here")
    assert error.code == 7 and error.msg == "bad config" and error.details == "no subnet"
    text = str(error)
    for part in ("exit status 1", "bad config: no subnet", "CNI error code 7",
                 "stderr: trace here"):
        assert part in text
    plain = _plugin_error("p", 2, b"segfault", "")
    assert "segfault" in str(plain) and plain.code is None


def test_pod_cidrs_are_validated_and_normalised() -> None:
    assert parse_pod_cidrs("10.244.1.0/24, fd00:1::/64") == ("10.244.1.0/24", "fd00:1::/64")
    assert parse_pod_cidrs("10.244.1.7/24") == ("10.244.1.0/24",)
    with pytest.raises(InvalidArgument, match="not an IPv4 or IPv6 CIDR"):
        parse_pod_cidrs("10.244.1.0/33")
    with pytest.raises(InvalidArgument, match="names no CIDR"):
        parse_pod_cidrs(" , ")


def test_port_mapping_validation_and_cni_form() -> None:
    mapping = PortMapping(8080, 80, "udp", "127.0.0.1")
    assert mapping.to_cni() == {"hostPort": 8080, "containerPort": 80, "protocol": "udp",
                                "hostIP": "127.0.0.1"}
    assert "hostIP" not in PortMapping(8080, 80).to_cni()
    with pytest.raises(InvalidArgument, match="protocol"):
        PortMapping(1, 1, "icmp")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="host port"):
        PortMapping(0, 80)
    with pytest.raises(InvalidArgument, match="not an IP"):
        PortMapping(1, 1, "tcp", "localhost")


def test_dns_and_bandwidth_cni_forms() -> None:
    assert DNSConfig(("10.0.0.10",), ("svc.local",), ("ndots:5",)).to_cni() == {
        "servers": ["10.0.0.10"], "searches": ["svc.local"], "options": ["ndots:5"]}
    assert BandwidthLimits(ingress_rate=1000, ingress_burst=5).to_cni() == {
        "ingressRate": 1000, "ingressBurst": 5}


@pytest.mark.parametrize(("text", "value"), [
    ("10M", 10_000_000), ("1Gi", 2**30), ("1.5k", 1500), ("2000", 2000), ("100Ki", 102400),
    ("1500m", 1), ("0.5Ki", 512), ("1.0001k", 1000), ("0.25", 0)])
def test_quantities(text: str, value: int) -> None:
    assert parse_quantity(text) == value


def test_bandwidth_annotations() -> None:
    assert bandwidth_from_annotations({}) is None
    limits = bandwidth_from_annotations({"kubernetes.io/ingress-bandwidth": "10M"})
    assert limits == BandwidthLimits(ingress_rate=10_000_000, ingress_burst=UNLIMITED_BURST)
    with pytest.raises(InvalidArgument, match="not a quantity"):
        bandwidth_from_annotations({"kubernetes.io/egress-bandwidth": "fast"})
    with pytest.raises(InvalidArgument, match="between 1k and 1P"):
        bandwidth_from_annotations({"kubernetes.io/egress-bandwidth": "10"})


def test_sandbox_ids_must_be_plain_file_names() -> None:
    assert check_sandbox_id("abc-1.2_3") == "abc-1.2_3"
    for bad in ("", "../x", "a/b", ".hidden"):
        with pytest.raises(InvalidArgument):
            check_sandbox_id(bad)


async def test_attachment_records_round_trip(tmp_path: Path) -> None:
    cache = AttachmentCache(tmp_path / "attachments")
    network = parse_document({"cniVersion": "1.0.0", "name": "n",
                              "plugins": [{"type": "bridge"}]}, "/etc/cni/net.d/x.conflist")
    attachment = Attachment("sb1", "/run/netns/p", "eth0", "A=1", {"portMappings": []}, network)
    await cache.save(attachment)
    assert await cache.sandbox_ids() == ["sb1"]
    assert await cache.load("sb1") == attachment
    await cache.remove("sb1")
    await cache.remove("sb1")
    assert await cache.load("sb1") is None
    assert await cache.sandbox_ids() == []


async def test_keyed_locks_serialise_one_key_and_forget_it_afterwards() -> None:
    locks = KeyedLocks()
    order: list[str] = []

    async def hold(key: str, name: str, pause: float) -> None:
        async with locks.hold(key):
            order.append(f"{name}+")
            await asyncio.sleep(pause)
            order.append(f"{name}-")

    await asyncio.gather(hold("a", "first", 0.05), hold("a", "second", 0), hold("b", "other", 0))
    assert order.index("first-") < order.index("second+")  # same key: one after the other
    assert order.index("other+") < order.index("first-")  # another key: in parallel
    assert len(locks) == 0
