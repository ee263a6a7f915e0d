"""Resolving the container user against the image's passwd and group files."""

from __future__ import annotations

from pathlib import Path

import pytest

from crisp.errors import InvalidArgument
from crisp.oci.model import ProcessUser, SupplementalGroupsPolicy, UserRequest
from crisp.oci.users import parse_group, parse_passwd, resolve_user, resolve_user_from

PASSWD = parse_passwd("root:x:0:0:root:/root:/bin/sh\n"
                      "# comment\n"
                      "app:x:1000:1000::/home/app:/bin/sh\n"
                      "broken line\n"
                      "nobody:x:65534:65534:nobody:/:/bin/false\n")
GROUP = parse_group("root:x:0:\napp:x:1000:\nwheel:x:10:app,root\naudio:x:29:app\n")


def resolve(image_user: str = "", **security: object) -> ProcessUser:
    return resolve_user_from(PASSWD, GROUP, image_user,
                             UserRequest(**security))  # type: ignore[arg-type]


def test_default_is_root_with_its_groups() -> None:
    assert resolve() == ProcessUser(0, 0, [0, 10])


def test_image_user_by_name_and_group() -> None:
    assert resolve("app") == ProcessUser(1000, 1000, [1000, 10, 29])
    assert resolve("app:wheel") == ProcessUser(1000, 10, [10, 29])
    assert resolve("1000:29") == ProcessUser(1000, 29, [29, 10])
    assert resolve("4242") == ProcessUser(4242, 0, [0])


def test_security_context_wins_over_the_image() -> None:
    assert resolve("app", run_as_user=65534) == ProcessUser(65534, 65534, [65534])
    assert resolve("root", run_as_username="app") == ProcessUser(1000, 1000, [1000, 10, 29])
    assert resolve(run_as_user=5, run_as_group=6, supplemental_groups=[7, 6]) == ProcessUser(
        5, 6, [6, 7])


def test_invalid_combinations_and_unknown_names() -> None:
    with pytest.raises(InvalidArgument, match="mutually exclusive"):
        resolve(run_as_user=1, run_as_username="app")
    with pytest.raises(InvalidArgument, match="run_as_group"):
        resolve("app", run_as_group=5)
    with pytest.raises(InvalidArgument, match="ghost"):
        resolve(run_as_username="ghost")
    with pytest.raises(InvalidArgument, match="nogroup"):
        resolve("app:nogroup")


def test_reads_the_rootfs_files_and_ignores_escaping_symlinks(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "passwd").write_text("app:x:1000:1000::/:/bin/sh\n")
    (etc / "group").symlink_to("/etc/group")
    assert resolve_user(tmp_path, "app", UserRequest()) == ProcessUser(1000, 1000, [1000])
    empty = tmp_path / "empty"
    empty.mkdir()
    assert resolve_user(empty, "", UserRequest()) == ProcessUser(0, 0, [0])


def test_supplemental_groups_policy_merge_or_strict() -> None:
    """Merge adds the image's /etc/group memberships; Strict only what was asked for."""
    merge = resolve(run_as_user=1000, supplemental_groups=[1234])
    strict = resolve(run_as_user=1000, supplemental_groups=[1234],
                     supplemental_groups_policy=SupplementalGroupsPolicy.STRICT)
    assert merge == ProcessUser(1000, 1000, [1000, 10, 29, 1234])
    assert strict == ProcessUser(1000, 1000, [1000, 1234])
