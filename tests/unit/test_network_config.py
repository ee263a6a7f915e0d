"""Parsing CNI network configs, choosing versions, and the built-in default config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from crisp.network import masquerade, version
from crisp.network.conflist import NetworkConfig, parse_document, parse_text
from crisp.network.default import (
    DEFAULT_CONFIG_NAME,
    encode,
    ensure_default,
    masqueraded_subnets,
    render,
)
from crisp.network.discovery import Discovery, Rejected, config_files


def conflist(**overrides: object) -> dict[str, object]:
    document: dict[str, object] = {
        "cniVersion": "1.0.0",
        "name": "pods",
        "plugins": [{"type": "bridge", "ipam": {"type": "host-local"}},
                    {"type": "portmap", "capabilities": {"portMappings": True}}],
    }
    document.update(overrides)
    return document


def test_conflist_keeps_plugins_in_order() -> None:
    network = parse_document(conflist(), "/etc/cni/net.d/10.conflist")
    assert network.name == "pods"
    assert network.cni_version == "1.0.0"
    assert network.plugin_types() == ["bridge", "portmap"]
    assert network.disable_check is False


def test_single_plugin_conf_becomes_a_chain_of_one() -> None:
    network = parse_text(
        json.dumps({"cniVersion": "0.4.0", "name": "solo", "type": "bridge"}), "x.conf"
    )
    assert network.plugin_types() == ["bridge"]
    assert network.plugins[0]["name"] == "solo"


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        (conflist(name=""), "valid \"name\""),
        (conflist(name="-bad"), "valid \"name\""),
        (conflist(cniVersion=None), "no \"cniVersion\""),
        (conflist(cniVersion="0.2.0"), "crisp does not speak"),
        (conflist(cniVersion="1.0"), "bad CNI version"),
        (conflist(plugins=[]), "non-empty list"),
        (conflist(plugins=[{"bridge": "x"}]), "no \"type\""),
        (conflist(plugins=[{"type": "../bin/sh"}]), "not a plain file name"),
        (conflist(plugins=[{"type": "bridge", "capabilities": []}]), "capabilities"),
        (conflist(disableCheck="maybe"), "disableCheck"),
    ],
)
def test_invalid_configs_say_why(document: dict[str, object], reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_document(document, "f")


def test_text_that_is_not_json_is_rejected() -> None:
    with pytest.raises(ValueError, match="not valid JSON"):
        parse_text("{", "f")
    with pytest.raises(ValueError, match="not a JSON object"):
        parse_text("[]", "f")


def test_disable_check_accepts_the_spec_string_form() -> None:
    assert parse_document(conflist(disableCheck="true"), "f").disable_check is True


def test_cni_versions_list_picks_the_highest_crisp_speaks() -> None:
    network = parse_document(conflist(cniVersions=["0.4.0", "1.1.0", "9.0.0"]), "f")
    assert network.cni_version == "1.1.0"
    assert set(network.offered_versions) == {"0.4.0", "1.1.0", "1.0.0"}


def test_pod_cidr_template_is_filled_in_or_the_config_waits() -> None:
    text = json.dumps(conflist(plugins=[{"type": "bridge", "ipam": {
        "type": "host-local", "ranges": [[{"subnet": "{{.PodCIDR}}"}]]}}]))
    with pytest.raises(ValueError, match="UpdateRuntimeConfig"):
        parse_text(text, "f")
    network = parse_text(text, "f", ["10.244.3.0/24", "fd00::/64"])
    assert network.plugins[0]["ipam"]["ranges"] == [[{"subnet": "10.244.3.0/24"}]]


def test_cached_config_round_trips_at_its_chosen_version() -> None:
    network = parse_document(conflist(cniVersions=["0.4.0", "1.0.0"]), "src").at_version("0.4.0")
    again = NetworkConfig.from_json(json.loads(json.dumps(network.to_json())))
    assert again.cni_version == "0.4.0"
    assert again.plugins == network.plugins
    assert again.source == "src"


def test_highest_common_version_respects_every_plugin() -> None:
    assert version.highest_common(["0.4.0", "1.0.0", "1.1.0"],
                                  ["0.4.0", "1.0.0"], ["1.0.0", "1.1.0"]) == "1.0.0"
    assert version.highest_common(["1.1.0"], ["1.0.0"]) is None
    assert version.at_least("1.0.0", version.CHECK_SINCE)
    assert not version.at_least("0.3.1", version.CHECK_SINCE)


def test_config_files_are_lexical_and_filtered(tmp_path: Path) -> None:
    for name in ("20-b.conf", "10-a.conflist", "05-c.json", "00-skip.txt", ".10-hidden.conf"):
        (tmp_path / name).write_text("{}")
    assert [p.name for p in config_files(tmp_path)] == ["05-c.json", "10-a.conflist", "20-b.conf"]
    assert config_files(tmp_path / "missing") == []


def test_discovery_explains_rejections() -> None:
    empty = Discovery("/etc/cni/net.d", None)
    assert "no CNI network config in /etc/cni/net.d" in empty.explanation()
    broken = Discovery("/d", None, (Rejected("/d/10.conf", "is not valid JSON"),))
    assert broken.explanation() == "no valid CNI network config in /d: /d/10.conf is not valid JSON"


def test_default_config_is_bridge_host_local_portmap_loopback() -> None:
    document = render(["10.88.0.0/16", "fd00:88::/64"], "/var/lib/crisp/network/ipam")
    network = parse_document(document, "default")
    assert network.plugin_types() == ["loopback", "bridge", "portmap"]
    bridge = network.plugins[1]
    assert bridge["ipam"]["type"] == "host-local"
    assert bridge["ipam"]["ranges"] == [[{"subnet": "10.88.0.0/16"}], [{"subnet": "fd00:88::/64"}]]
    assert bridge["ipam"]["routes"] == [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]
    assert network.plugins[2]["capabilities"] == {"portMappings": True}
    assert bridge["ipMasq"] is False  # crisp masquerades per subnet, not the plugin per pod


def test_only_the_default_config_as_written_gets_crisps_masquerade(tmp_path: Path) -> None:
    assert ensure_default(tmp_path, ["10.88.0.0/16"], "/ipam") is True
    path = tmp_path / DEFAULT_CONFIG_NAME
    written = parse_document(json.loads(path.read_text()), str(path))
    assert masqueraded_subnets(written, "/ipam") == ["10.88.0.0/16"]
    edited = json.loads(path.read_text())
    edited["plugins"][1]["ipMasq"] = True
    assert masqueraded_subnets(parse_document(edited, str(path)), "/ipam") == []
    assert masqueraded_subnets(parse_document(json.loads(path.read_text()),
                                              str(tmp_path / "10-mine.conflist")), "/ipam") == []


def test_a_default_config_from_before_is_still_crisps_own(tmp_path: Path) -> None:
    """A file crisp wrote when the bridge masqueraded per pod is refreshed, not kept."""
    path = tmp_path / DEFAULT_CONFIG_NAME
    path.write_bytes(encode(render(["10.88.0.0/16"], "/ipam", per_pod_masquerade=True)))
    assert ensure_default(tmp_path, ["10.88.0.0/16"], "/ipam") is True
    assert json.loads(path.read_text())["plugins"][1]["ipMasq"] is False


def test_masquerade_rules_of_a_subnet() -> None:
    restore, jump = masquerade.rules("10.88.0.0/16")
    chain = masquerade.chain_name("10.88.0.0/16")
    assert len(chain) <= 28 and chain != masquerade.chain_name("10.89.0.0/16")
    assert restore.splitlines() == [
        "*nat", f":{chain} - [0:0]", f"-A {chain} -d 10.88.0.0/16 -j ACCEPT",
        f"-A {chain} -d 224.0.0.0/4 -j ACCEPT", f"-A {chain} -j MASQUERADE", "COMMIT"]
    assert jump[:5] == ["POSTROUTING", "-s", "10.88.0.0/16", "-j", chain]
    assert "-d ff00::/8 -j ACCEPT" in masquerade.rules("fd00:88::/64")[0]


def test_default_is_written_only_into_an_empty_dir(tmp_path: Path) -> None:
    assert ensure_default(tmp_path, ["10.88.0.0/16"], "/ipam") is True
    path = tmp_path / DEFAULT_CONFIG_NAME
    assert json.loads(path.read_text())["plugins"][1]["ipam"]["ranges"] == [
        [{"subnet": "10.88.0.0/16"}]]
    assert ensure_default(tmp_path, ["10.88.0.0/16"], "/ipam") is False
    # A new pod CIDR refreshes the file while it is still crisp's own...
    assert ensure_default(tmp_path, ["10.244.1.0/24"], "/ipam") is True
    assert "10.244.1.0/24" in path.read_text()
    # ...but never once someone edited it.
    path.write_text(path.read_text().replace('"hairpinMode": true', '"hairpinMode": false'))
    assert ensure_default(tmp_path, ["10.244.2.0/24"], "/ipam") is False
    assert "10.244.1.0/24" in path.read_text()


def test_default_is_not_written_beside_another_config(tmp_path: Path) -> None:
    (tmp_path / "10-mine.conflist").write_text("{}")
    assert ensure_default(tmp_path, ["10.88.0.0/16"], "/ipam") is False
    assert not (tmp_path / DEFAULT_CONFIG_NAME).exists()
