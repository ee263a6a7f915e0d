"""Image reference parsing and docker-style normalization."""

import pytest

from crisp.errors import InvalidArgument
from crisp.images.reference import looks_like_image_id, parse_reference

DIGEST = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("busybox", "docker.io/library/busybox:latest"),
        ("busybox:1.36", "docker.io/library/busybox:1.36"),
        ("library/busybox", "docker.io/library/busybox:latest"),
        ("docker.io/busybox", "docker.io/library/busybox:latest"),
        ("index.docker.io/library/busybox:1", "docker.io/library/busybox:1"),
        ("someone/app", "docker.io/someone/app:latest"),
        ("quay.io/org/app:v1.2", "quay.io/org/app:v1.2"),
        ("localhost/app", "localhost/app:latest"),
        ("localhost:5000/a/b/c:tag", "localhost:5000/a/b/c:tag"),
        ("127.0.0.1:5000/test/busybox", "127.0.0.1:5000/test/busybox:latest"),
        (f"busybox@{DIGEST}", f"docker.io/library/busybox@{DIGEST}"),
        (f"busybox:1.36@{DIGEST}", f"docker.io/library/busybox:1.36@{DIGEST}"),
        (f"registry.k8s.io:443/pause:3.9@{DIGEST}", f"registry.k8s.io:443/pause:3.9@{DIGEST}"),
        ("x__y/z-1.2", "docker.io/x__y/z-1.2:latest"),
    ],
)
def test_normalizes_like_docker(text: str, expected: str) -> None:
    assert str(parse_reference(text)) == expected


def test_parts_of_a_reference() -> None:
    ref = parse_reference(f"127.0.0.1:5000/test/busybox:v1@{DIGEST}")
    assert ref.domain == "127.0.0.1:5000"
    assert ref.path == "test/busybox"
    assert ref.tag == "v1"
    assert ref.digest == DIGEST
    assert ref.object == DIGEST  # the digest decides what is pulled
    assert ref.tagged() == "127.0.0.1:5000/test/busybox:v1"
    assert ref.with_digest(DIGEST) == f"127.0.0.1:5000/test/busybox@{DIGEST}"


def test_digest_only_reference_has_no_tag() -> None:
    ref = parse_reference(f"busybox@{DIGEST}")
    assert ref.tag is None
    assert ref.tagged() is None


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("", "empty"),
        (" busybox", "spaces"),
        ("Busybox", "lowercase"),
        ("docker.io/Library/busybox", "lowercase"),
        ("busybox:", "invalid tag"),
        ("busybox:-x", "invalid tag"),
        ("busybox:" + "a" * 129, "invalid tag"),
        ("busybox@sha256:abc", "malformed digest"),
        ("busybox@md5:" + "a" * 32, "only sha256"),
        ("busybox@sha256:" + "A" * 64, "lowercase hex"),
        ("a//b", "invalid path component"),
        ("a/b_", "invalid path component"),
        ("-host.example/x", "invalid registry host"),
        ("my_registry.example/x", "invalid registry host"),
        (":tag", "no repository"),
    ],
)
def test_invalid_references_say_what_is_wrong(text: str, complaint: str) -> None:
    with pytest.raises(InvalidArgument, match=complaint):
        parse_reference(text)


def test_image_ids() -> None:
    assert looks_like_image_id("a" * 64) == DIGEST
    assert looks_like_image_id(DIGEST) == DIGEST
    assert looks_like_image_id("busybox") is None
    assert looks_like_image_id("a" * 63) is None


def test_short_names_try_each_search_registry() -> None:
    from crisp.images.reference import search_candidates

    found = [str(r) for r in search_candidates("busybox", ["quay.io", "docker.io"])]
    assert found == ["quay.io/busybox:latest", "docker.io/library/busybox:latest"]
    assert [str(r) for r in search_candidates("quay.io/x:1", ["docker.io"])] == ["quay.io/x:1"]
    assert [str(r) for r in search_candidates("localhost/x", ["docker.io"])] == [
        "localhost/x:latest"]
    assert [str(r) for r in search_candidates("busybox", [])] == [
        "docker.io/library/busybox:latest"]
