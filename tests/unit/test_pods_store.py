"""The pod records: name reservation and persistence across a reload."""

from __future__ import annotations

from pathlib import Path

import pytest

from crisp.errors import AlreadyExists, NotFound
from crisp.pods.model import (
    Container,
    ContainerConfig,
    ContainerMetadata,
    ContainerState,
    ImageRuntimeConfig,
    Sandbox,
    SandboxConfig,
    SandboxMetadata,
)
from crisp.pods.store import PodStore
from crisp.state import Database


def sandbox(sandbox_id: str = "s1") -> Sandbox:
    return Sandbox(id=sandbox_id, config=SandboxConfig(metadata=SandboxMetadata("p", "u", "n")),
                   runtime_handler="runc", created_at=1)


def container(container_id: str = "c1") -> Container:
    return Container(id=container_id, sandbox_id="s1",
                     config=ContainerConfig(metadata=ContainerMetadata("c"), image="busybox"),
                     image=ImageRuntimeConfig(id="sha256:x", reference="busybox"),
                     created_at=2, log_path="", runtime_handler="runc", bundle="/b",
                     unique_name="c_p_n_u_0_0")


async def test_a_reserved_name_names_its_holder(tmp_path: Path) -> None:
    db = await Database.open(tmp_path / "crisp.db")
    store = PodStore(db)
    store.reserve("pod", "p_n_u_0", "first")
    store.reserve("pod", "p_n_u_0", "first")  # the holder may reserve again
    with pytest.raises(AlreadyExists, match="first"):
        store.reserve("pod", "p_n_u_0", "second")
    store.release("pod", "p_n_u_0", "second")  # not the holder: no effect
    with pytest.raises(AlreadyExists):
        store.reserve("pod", "p_n_u_0", "second")
    store.release("pod", "p_n_u_0", "first")
    store.reserve("pod", "p_n_u_0", "second")
    await db.close()


async def test_records_survive_a_reload_and_keep_names_taken(tmp_path: Path) -> None:
    db = await Database.open(tmp_path / "crisp.db")
    try:
        store = PodStore(db)
        pod = sandbox()
        store.reserve("pod", pod.name, pod.id)
        await store.save_sandbox(pod)
        item = container()
        item.state = ContainerState.RUNNING
        await store.save_container(item)

        reloaded = PodStore(db)
        await reloaded.load()
        assert reloaded.sandbox("s1") == pod
        assert reloaded.container("c1") == item
        assert reloaded.containers_of("s1") == [item]
        with pytest.raises(AlreadyExists):
            reloaded.reserve("pod", pod.name, "other")
        with pytest.raises(AlreadyExists):
            reloaded.reserve("ctr", item.unique_name, "other")

        await reloaded.delete_container(item)
        await reloaded.delete_sandbox(pod)
        with pytest.raises(NotFound):
            reloaded.sandbox("s1")
        reloaded.reserve("pod", pod.name, "other")
        empty = PodStore(db)
        await empty.load()
        assert not empty.sandboxes and not empty.containers
    finally:
        await db.close()
