"""Manifest parsing and platform selection."""

import json

import pytest

from crisp.errors import InvalidArgument, NotFound, Unimplemented
from crisp.images.manifest import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_INDEX,
    Index,
    Manifest,
    Platform,
    media_type_of,
    parse_config,
    parse_manifest,
    select_platform,
)

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
D3 = "sha256:" + "3" * 64


def manifest_bytes(media_type: str = DOCKER_MANIFEST) -> bytes:
    return json.dumps({
        "schemaVersion": 2, "mediaType": media_type,
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                   "digest": D1, "size": 10},
        "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                    "digest": D2, "size": 20}],
    }).encode()


def index(platforms: list[dict[str, str]]) -> Index:
    doc = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": DOCKER_MANIFEST, "digest": f"sha256:{i:064x}", "size": 1, "platform": p}
        for i, p in enumerate(platforms)]}
    parsed = parse_manifest(json.dumps(doc).encode(), OCI_INDEX)
    assert isinstance(parsed, Index)
    return parsed


def test_docker_schema2() -> None:
    parsed = parse_manifest(manifest_bytes(), DOCKER_MANIFEST)
    assert isinstance(parsed, Manifest)
    assert parsed.config.digest == D1
    assert [layer.digest for layer in parsed.layers] == [D2]


def test_media_type_from_document_or_header() -> None:
    assert media_type_of(manifest_bytes(), "text/plain") == DOCKER_MANIFEST
    bare = json.dumps({"schemaVersion": 2, "manifests": []}).encode()
    assert media_type_of(bare, None) == OCI_INDEX
    assert media_type_of(json.dumps({"schemaVersion": 1}).encode(), None).endswith("v1+json")


def test_schema1_is_refused_with_advice() -> None:
    doc = json.dumps({"schemaVersion": 1, "fsLayers": []}).encode()
    with pytest.raises(Unimplemented, match="schema 1"):
        parse_manifest(doc, media_type_of(doc, None))


def test_unknown_layer_type_is_refused() -> None:
    doc = json.loads(manifest_bytes())
    doc["layers"][0]["mediaType"] = "application/vnd.example.wasm"
    with pytest.raises(Unimplemented, match="cannot unpack"):
        parse_manifest(json.dumps(doc).encode(), DOCKER_MANIFEST)


def test_malformed_manifests() -> None:
    with pytest.raises(InvalidArgument, match="JSON"):
        parse_manifest(b"{", DOCKER_MANIFEST)
    doc = json.loads(manifest_bytes())
    doc["config"]["digest"] = "sha256:short"
    with pytest.raises(InvalidArgument):
        parse_manifest(json.dumps(doc).encode(), DOCKER_MANIFEST)


def test_platform_selection_prefers_exact_variant() -> None:
    idx = index([
        {"os": "linux", "architecture": "amd64"},
        {"os": "linux", "architecture": "arm64", "variant": "v8"},
        {"os": "linux", "architecture": "arm", "variant": "v6"},
        {"os": "linux", "architecture": "arm", "variant": "v7"},
        {"os": "windows", "architecture": "amd64"},
    ])
    assert select_platform(idx, Platform("linux", "amd64")).digest == f"sha256:{0:064x}"
    assert select_platform(idx, Platform("linux", "arm64", "v8")).digest == f"sha256:{1:064x}"
    assert select_platform(idx, Platform("linux", "arm", "v7")).digest == f"sha256:{3:064x}"


def test_arm64_without_variant_matches() -> None:
    idx = index([{"os": "linux", "architecture": "arm64"}])
    assert select_platform(idx, Platform("linux", "arm64", "v8")).digest == f"sha256:{0:064x}"


def test_no_matching_platform_lists_what_there_is() -> None:
    idx = index([{"os": "linux", "architecture": "s390x"},
                 {"os": "windows", "architecture": "amd64"}])
    with pytest.raises(NotFound, match=r"linux/s390x, windows/amd64"):
        select_platform(idx, Platform("linux", "amd64"))


def test_manifest_list_is_an_index() -> None:
    doc = {"schemaVersion": 2, "mediaType": DOCKER_LIST, "manifests": []}
    assert isinstance(parse_manifest(json.dumps(doc).encode(), DOCKER_LIST), Index)


def test_config_fields() -> None:
    config = parse_config(json.dumps({
        "os": "linux", "architecture": "amd64",
        "config": {"User": "1000:1000", "Env": ["A=1"], "Entrypoint": ["/bin/sh"],
                   "Cmd": ["-c", "x"], "WorkingDir": "/w", "StopSignal": "SIGINT",
                   "Labels": {"a": "b"}, "Volumes": {"/data": {}},
                   "ExposedPorts": {"80/tcp": {}}},
        "rootfs": {"type": "layers", "diff_ids": [D3]},
    }).encode())
    assert config.user == "1000:1000"
    assert config.entrypoint == ["/bin/sh"]
    assert config.cmd == ["-c", "x"]
    assert config.volumes == ["/data"]
    assert config.exposed_ports == ["80/tcp"]
    assert config.diff_ids == [D3]
    assert config.stop_signal == "SIGINT"


def test_config_without_diff_ids_is_invalid() -> None:
    with pytest.raises(InvalidArgument, match="diff_ids"):
        parse_config(b'{"config": {}}')
