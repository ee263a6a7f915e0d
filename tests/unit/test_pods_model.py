"""Pure pod logic: record round trips, names, pod files, stop signals, events."""

from __future__ import annotations

import asyncio

import pytest

from crisp.errors import InvalidArgument
from crisp.pods.codec import from_document, to_document
from crisp.pods.containers import signal_number
from crisp.pods.events import EventBus, EventKind, LifecycleEvent
from crisp.pods.execsync import exec_process
from crisp.pods.model import (
    Container,
    ContainerConfig,
    ContainerMetadata,
    DNSConfig,
    ImageRuntimeConfig,
    Mount,
    NamespaceMode,
    NamespaceOptions,
    ProcessUser,
    Propagation,
    Sandbox,
    SandboxConfig,
    SandboxMetadata,
    SecurityContext,
    container_name,
    labels_match,
    sandbox_name,
)
from crisp.pods.podfiles import hosts_text, resolv_conf_text


def sandbox() -> Sandbox:
    config = SandboxConfig(
        metadata=SandboxMetadata("web", "uid1", "prod", 2),
        dns=DNSConfig(["1.1.1.1"], ["svc"], ["ndots:2"]),
        namespaces=NamespaceOptions(pid=NamespaceMode.CONTAINER),
        labels={"app": "web"},
    )
    return Sandbox(id="s1", config=config, runtime_handler="runc", created_at=1)


def test_sandbox_and_container_round_trip_through_documents() -> None:
    original = sandbox()
    assert from_document(Sandbox, to_document(original)) == original
    container = Container(
        id="c1", sandbox_id="s1",
        config=ContainerConfig(
            metadata=ContainerMetadata("app", 1), image="busybox", env=[("A", "1")],
            mounts=[Mount("/d", "/h", True, Propagation.HOST_TO_CONTAINER)],
            security=SecurityContext(run_as_user=7, namespaces=NamespaceOptions(
                pid=NamespaceMode.TARGET, target_id="c0")),
        ),
        image=ImageRuntimeConfig(id="sha256:x", reference="busybox"),
        created_at=5, log_path="/l", runtime_handler="runc", bundle="/b",
        user=ProcessUser(7, 0, [1]),
    )
    original.infra = container
    back = from_document(Sandbox, to_document(original))
    assert back == original
    assert back.infra is not None
    assert back.infra.config.env == [("A", "1")]
    assert back.infra.config.security.namespaces.pid is NamespaceMode.TARGET


def test_unique_names_follow_the_metadata() -> None:
    pod = sandbox()
    assert sandbox_name(pod.config.metadata) == "web_prod_uid1_2"
    assert container_name(pod, ContainerMetadata("app", 3)) == "app_web_prod_uid1_2_3"


def test_label_selector() -> None:
    assert labels_match({"a": "1", "b": "2"}, {"a": "1"})
    assert not labels_match({"a": "1"}, {"a": "1", "b": "2"})
    assert labels_match({}, {})


def test_resolv_conf_and_hosts() -> None:
    assert resolv_conf_text(DNSConfig(["10.0.0.1", "10.0.0.2"], ["a.svc", "svc"], ["ndots:5"])) == (
        "search a.svc svc\nnameserver 10.0.0.1\nnameserver 10.0.0.2\noptions ndots:5\n")
    with pytest.raises(InvalidArgument):
        resolv_conf_text(DNSConfig(["1.1.1.1\nnameserver evil"]))
    assert "127.0.1.1\tweb\n" in hosts_text("web")
    assert "localhost" in hosts_text("")


@pytest.mark.parametrize(("name", "number"), [("SIGTERM", 15), ("TERM", 15), ("sigusr1", 10),
                                              ("9", 9), ("", 15)])
def test_signal_names(name: str, number: int) -> None:
    assert signal_number(name) == number


def test_unknown_signal_is_invalid() -> None:
    with pytest.raises(InvalidArgument):
        signal_number("SIGNOPE")
    with pytest.raises(InvalidArgument):
        signal_number("99")


def test_exec_process_replaces_args_and_drops_the_terminal() -> None:
    spec = {"process": {"args": ["sleep"], "terminal": True, "env": ["A=1"],
                        "consoleSize": {"height": 1, "width": 1}}}
    process = exec_process(spec, ["ls", "-l"])
    assert process == {"args": ["ls", "-l"], "terminal": False, "env": ["A=1"]}
    assert spec["process"]["args"] == ["sleep"]


async def test_event_bus_fans_out_to_every_subscriber() -> None:
    bus = EventBus()
    first, second = bus.subscribe(), bus.subscribe()
    got_first = asyncio.ensure_future(anext(first))
    got_second = asyncio.ensure_future(anext(second))
    await asyncio.sleep(0)
    bus.publish(LifecycleEvent("c1", EventKind.STARTED, None))
    assert (await got_first).object_id == "c1"
    assert (await got_second).kind is EventKind.STARTED
    bus.close()
    with pytest.raises(StopAsyncIteration):
        await anext(first)
