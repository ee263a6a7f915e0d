"""The cgroupfs and systemd drivers: parents, cgroupsPath and where cgroups land."""

from __future__ import annotations

import pytest

from crisp.cgroups.driver import (
    CgroupfsDriver,
    SystemdDriver,
    cgroups_path,
    driver_for,
    expand_slice,
)
from crisp.errors import InvalidArgument

UID = "0b9e4f5c_7d1a_4e36_9c2f_5a3b8d7e6f10"
ID = "3f2a" * 16


def test_cgroupfs_path_is_the_parent_plus_a_named_child() -> None:
    driver = CgroupfsDriver()
    path = cgroups_path(driver, f"/kubepods/burstable/pod{UID}", ID)
    assert path == f"/kubepods/burstable/pod{UID}/crisp-{ID}"
    assert driver.container_cgroup(path) == path
    assert driver.parent_cgroup(f"/kubepods/burstable/pod{UID}") == f"/kubepods/burstable/pod{UID}"


def test_cgroupfs_normalises_relative_and_doubled_slashes() -> None:
    driver = CgroupfsDriver()
    assert driver.validate_parent("kubepods//besteffort/") == "/kubepods/besteffort"


def test_cgroupfs_default_parent_when_none_is_given() -> None:
    driver = CgroupfsDriver()
    assert cgroups_path(driver, "", "abc") == "/crisp/crisp-abc"
    assert driver.parent_cgroup("") == "/crisp"


@pytest.mark.parametrize("parent", ["/kubepods/../etc", "/a/./b"])
def test_cgroupfs_refuses_dot_components(parent: str) -> None:
    with pytest.raises(InvalidArgument, match="without"):
        CgroupfsDriver().validate_parent(parent)


def test_cgroupfs_names_the_driver_mismatch_for_a_slice() -> None:
    with pytest.raises(InvalidArgument, match='cgroup_manager = "systemd"'):
        cgroups_path(CgroupfsDriver(), "kubepods-burstable.slice", ID)


@pytest.mark.parametrize("container_id", ["", "../x", "a/b", "-lead", "x" * 129])
def test_container_ids_that_cannot_name_a_cgroup_are_refused(container_id: str) -> None:
    for driver in (CgroupfsDriver(), SystemdDriver()):
        with pytest.raises(InvalidArgument, match="cannot name a cgroup"):
            cgroups_path(driver, "", container_id)


@pytest.mark.parametrize(
    ("name", "path"),
    [
        ("a-b-c.slice", "/a.slice/a-b.slice/a-b-c.slice"),
        ("kubepods.slice", "/kubepods.slice"),
        (
            f"kubepods-burstable-pod{UID}.slice",
            f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID}.slice",
        ),
        ("-.slice", "/"),
    ],
)
def test_slice_names_expand_to_their_nesting(name: str, path: str) -> None:
    assert expand_slice(name) == path


@pytest.mark.parametrize(
    "name", ["a--b.slice", "-a.slice", "a-.slice", "a.scope", "a/b.slice", ".slice"]
)
def test_malformed_slice_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidArgument):
        expand_slice(name)


def test_systemd_path_is_slice_prefix_name() -> None:
    driver = SystemdDriver()
    parent = f"kubepods-burstable-pod{UID}.slice"
    path = cgroups_path(driver, parent, ID)
    assert path == f"{parent}:crisp:{ID}"
    assert driver.container_cgroup(path) == (
        f"/kubepods.slice/kubepods-burstable.slice/{parent}/crisp-{ID}.scope"
    )
    assert driver.parent_cgroup(parent) == (
        f"/kubepods.slice/kubepods-burstable.slice/{parent}"
    )


def test_systemd_default_parent_is_system_slice() -> None:
    driver = SystemdDriver()
    assert cgroups_path(driver, "", "abc") == "system.slice:crisp:abc"
    assert driver.container_cgroup("system.slice:crisp:abc") == "/system.slice/crisp-abc.scope"


def test_systemd_names_the_driver_mismatch_for_a_path() -> None:
    with pytest.raises(InvalidArgument, match='cgroup_manager = "cgroupfs"'):
        cgroups_path(SystemdDriver(), f"/kubepods/pod{UID}", ID)


@pytest.mark.parametrize("path", ["system.slice:crisp", "a:b:c:d", "system.slice::x"])
def test_systemd_refuses_paths_not_in_its_form(path: str) -> None:
    with pytest.raises(InvalidArgument, match="slice:prefix:name"):
        SystemdDriver().container_cgroup(path)


def test_cgroupfs_refuses_a_systemd_cgroups_path() -> None:
    with pytest.raises(InvalidArgument, match="absolute"):
        CgroupfsDriver().container_cgroup("system.slice:crisp:abc")


def test_driver_for_config_names() -> None:
    assert isinstance(driver_for("cgroupfs"), CgroupfsDriver)
    assert isinstance(driver_for("systemd"), SystemdDriver)
    with pytest.raises(InvalidArgument, match="unknown"):
        driver_for("other")


def test_pods_without_a_parent_get_one_of_their_own() -> None:
    cgroupfs = CgroupfsDriver()
    assert cgroupfs.sandbox_parent("", "abc") == "/crisp/pod-abc"
    assert cgroupfs.owns_parent("/crisp/pod-abc")
    assert not cgroupfs.owns_parent(f"/kubepods/pod{UID}")
    systemd = SystemdDriver()
    parent = systemd.sandbox_parent("", "ab-c")
    assert parent == "crisp-podab_c.slice"
    assert systemd.parent_cgroup(parent) == "/crisp.slice/crisp-podab_c.slice"
    assert systemd.owns_parent(parent)
    assert not systemd.owns_parent(f"kubepods-pod{UID}.slice")


def test_a_given_parent_is_validated_and_kept() -> None:
    assert CgroupfsDriver().sandbox_parent("/kubepods/pod1/", "abc") == "/kubepods/pod1"
    with pytest.raises(InvalidArgument):
        SystemdDriver().sandbox_parent("/kubepods", "abc")
    with pytest.raises(InvalidArgument, match="cannot name a cgroup"):
        CgroupfsDriver().sandbox_parent("", "../x")
