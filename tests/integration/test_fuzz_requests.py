"""Property-based fuzzing of every RPC, with requests built from the protobuf descriptors.

Hypothesis draws each request field by field from its descriptor: enum numbers in and out of
range, strings with NUL bytes, '..', option-like dashes and overlong names, real and made-up
ids, nested messages, maps and lists. Image references point at the test registry or at a
closed port on 127.0.0.1 and host paths stay under the test's own directory, so nothing
leaves the machine or touches host files that matter. The property: crisp answers with a
code the design allows, never INTERNAL, never UNKNOWN from its own code ("crisp failed
unexpectedly"), never a traceback, and stays up. The environment's teardown then checks that
nothing the fuzzing created is left behind.

CRISP_FUZZ_EXAMPLES sets the examples per RPC (default 20: about a minute in all).
"""

from __future__ import annotations

import itertools
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crisp.api import cri_pb2, crisp_images_pb2
from crisp.server.validation import ID_FIELDS, PATH_FIELDS
from tests.support.pods import PodsEnv, pods_environment

pytestmark = pytest.mark.integration

EXAMPLES = int(os.environ.get("CRISP_FUZZ_EXAMPLES", "20"))
CALL_TIMEOUT = 10.0
MAX_DEPTH = 4
# Never ends by itself: an event stream is not a request-answer call.
SKIPPED = {"GetContainerEvents"}
ALLOWED = {
    grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.UNKNOWN, grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED,
}
CLOSED_REGISTRY = "127.0.0.1:9"  # the discard port: nothing listens, nothing leaves
_ATTEMPTS = itertools.count()  # pod attempts, so that seeded pods never share a name


def _services() -> list[tuple[str, MethodDescriptor]]:
    services = [cri_pb2.DESCRIPTOR.services_by_name["RuntimeService"],
                cri_pb2.DESCRIPTOR.services_by_name["ImageService"],
                crisp_images_pb2.DESCRIPTOR.services_by_name["Images"]]
    return [(service.full_name, method) for service in services for method in service.methods
            if method.name not in SKIPPED]


METHODS = _services()


@pytest.fixture(scope="module")
def env() -> Iterator[PodsEnv]:
    with tempfile.TemporaryDirectory(prefix="crisp-fuzz-") as base, \
            pods_environment(Path(base)) as environment:
        yield environment
        assert environment.daemon.process is not None
        assert environment.daemon.process.poll() is None, "the daemon died while fuzzed"
        log = environment.daemon.log()
        assert "failed unexpectedly" not in log, log[-4000:]
        environment.remove_all_pods()


@dataclass
class Targets:
    """What the fuzzer mixes into its requests so that they reach real code: real ids and
    images among made-up ones, paths under the test's own directory, and valid requests
    (seeds) that some examples only change a few fields of."""

    ids: list[str]
    images: list[str]
    paths: list[str]
    seeds: dict[str, Message]


@pytest.fixture
def targets(env: PodsEnv) -> Iterator[Targets]:
    """A running pod and container for each RPC's examples (the previous RPC's examples may
    have stopped or removed them, and the images)."""
    for image in (env.busybox, env.pause):
        env.daemon.images.PullImage(cri_pb2.PullImageRequest(
            image=cri_pb2.ImageSpec(image=image)))
    pod_config = env.pod_config("fuzz-target", attempt=next(_ATTEMPTS))
    pod_id = env.run_pod(pod_config)
    # A sleeper that ends on SIGTERM, so that removing pods does not wait out a stop timeout.
    sleeper = env.container_config("sleeper", ["sh", "-c", "trap 'exit 0' TERM; sleep 600 & wait"])
    container_id = env.run_container(pod_id, sleeper, pod_config)
    scratch = Path(env.daemon.base) / "fuzz-paths"
    scratch.mkdir(exist_ok=True)
    seed_pod = env.pod_config("fuzz-seed")
    seed_pod.log_directory = str(scratch / "logs")
    seeds: dict[str, Message] = {
        "RunPodSandbox": cri_pb2.RunPodSandboxRequest(config=seed_pod),
        "CreateContainer": cri_pb2.CreateContainerRequest(
            pod_sandbox_id=pod_id, sandbox_config=pod_config,
            config=env.container_config("seed", ["sh", "-c", "exit 0"])),
        "StartContainer": cri_pb2.StartContainerRequest(container_id=container_id),
        "ExecSync": cri_pb2.ExecSyncRequest(container_id=container_id, cmd=["true"],
                                            timeout=5),
        "UpdateContainerResources": cri_pb2.UpdateContainerResourcesRequest(
            container_id=container_id),
        "PullImage": cri_pb2.PullImageRequest(image=cri_pb2.ImageSpec(image=env.busybox)),
        "ImageStatus": cri_pb2.ImageStatusRequest(image=cri_pb2.ImageSpec(image=env.busybox)),
    }
    yield Targets(
        ids=[pod_id, container_id, pod_id[:6], container_id[:6], "", "0" * 64, "../x",
             "-rf", "a" * 300, "x\0y"],
        images=[env.busybox, env.pause, f"{CLOSED_REGISTRY}/fuzz/x:1",
                f"{CLOSED_REGISTRY}/a@sha256:{'0' * 64}", "", "::", "UPPER/x",
                f"{CLOSED_REGISTRY}/../x", f"{CLOSED_REGISTRY}/-x", "sha256:" + "1" * 64],
        paths=[str(scratch / "a"), str(scratch / "b" / "c"), str(scratch), "relative/x",
               "../../etc", str(scratch / ".." / ".." / "x"), "", "/dev/null",
               str(scratch / ("n" * 300)), "/" + "d/" * 2100, str(scratch / "x\0y"),
               "-F" + str(scratch)],
        seeds=seeds,
    )
    env.remove_all_pods()


_TEXT = st.one_of(
    st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=24),
    st.sampled_from(["", "-", "--help", "-F/etc/passwd", "..", "../..", "a/b", "\0",
                     "x" * 300, "web", "default", "SIGKILL", "true"]),
)
_INT32 = st.one_of(st.integers(-3, 12), st.sampled_from([-(2**31), 2**31 - 1]))
# Mostly small: a timeout field drawn in the millions only makes an example wait.
_INT64 = st.one_of(st.integers(-3, 10), st.integers(-3, 1 << 20),
                   st.sampled_from([-(2**63), 2**63 - 1]))


def _scalar(field: FieldDescriptor, targets: Targets) -> st.SearchStrategy[Any]:
    kind = field.type
    if kind == FieldDescriptor.TYPE_STRING:
        if field.name in ID_FIELDS or field.name == "id":
            return st.sampled_from(targets.ids)
        if field.name == "image":
            return st.sampled_from(targets.images)
        if field.name in PATH_FIELDS:
            return st.sampled_from(targets.paths)
        return _TEXT
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=64)
    if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return st.floats(width=32)
    if kind == FieldDescriptor.TYPE_ENUM:
        return st.integers(-1, 12)
    if kind in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32):
        return st.integers(0, 2**32 - 1)
    if kind in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64):
        return st.integers(0, 2**64 - 1)
    if kind in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32,
                FieldDescriptor.TYPE_SFIXED32):
        return _INT32
    return _INT64


@st.composite
def _message(draw: st.DrawFn, descriptor: Descriptor, targets: Targets,
             depth: int = 0, *, sparse: bool = False) -> Message:
    """A message of ``descriptor``; ``sparse`` sets about one field in four, not one in two."""
    message: Message = _CLASSES[descriptor.full_name]()
    if depth > MAX_DEPTH:
        return message
    for field in descriptor.fields:
        if draw(st.integers(0, 3 if sparse else 1)) != 0:
            continue
        entry = field.message_type
        if entry is not None and entry.GetOptions().map_entry:
            key_field, value_field = entry.fields_by_name["key"], entry.fields_by_name["value"]
            target = getattr(message, field.name)
            for _ in range(draw(st.integers(0, 2))):
                key = draw(_scalar(key_field, targets))
                if value_field.message_type is not None:
                    target[key].CopyFrom(draw(_message(value_field.message_type, targets,
                                                       depth + 1, sparse=sparse)))
                else:
                    target[key] = draw(_scalar(value_field, targets))
        elif field.is_repeated:
            target = getattr(message, field.name)
            for _ in range(draw(st.integers(0, 2))):
                if entry is not None:
                    target.add().CopyFrom(draw(_message(entry, targets, depth + 1,
                                                        sparse=sparse)))
                else:
                    target.append(draw(_scalar(field, targets)))
        elif entry is not None:
            nested = draw(_message(entry, targets, depth + 1, sparse=sparse))
            getattr(message, field.name).CopyFrom(nested)
        else:
            setattr(message, field.name, draw(_scalar(field, targets)))
    return message


def _message_classes() -> dict[str, type[Message]]:
    from google.protobuf import message_factory

    classes: dict[str, type[Message]] = {}
    for module in (cri_pb2, crisp_images_pb2):
        for name in module.DESCRIPTOR.message_types_by_name.values():
            stack = [name]
            while stack:
                descriptor = stack.pop()
                classes[descriptor.full_name] = message_factory.GetMessageClass(descriptor)
                stack.extend(descriptor.nested_types)
    return classes


_CLASSES = _message_classes()


def _call(env: PodsEnv, service: str, method: MethodDescriptor, request: Any) -> None:
    path = f"/{service}/{method.name}"
    input_class = _CLASSES[method.input_type.full_name]
    output_class = _CLASSES[method.output_type.full_name]
    channel = env.daemon.channel
    serialize, deserialize = input_class.SerializeToString, output_class.FromString
    try:
        if method.client_streaming:
            channel.stream_unary(path, serialize, deserialize)(iter(request),
                                                               timeout=CALL_TIMEOUT)
        elif method.server_streaming:
            for _ in channel.unary_stream(path, serialize, deserialize)(request,
                                                                        timeout=CALL_TIMEOUT):
                pass
        else:
            channel.unary_unary(path, serialize, deserialize)(request, timeout=CALL_TIMEOUT)
    except grpc.RpcError as error:
        code: grpc.StatusCode = error.code()  # type: ignore[attr-defined]
        details: str = error.details() or ""  # type: ignore[attr-defined]
        assert code in ALLOWED, f"{path} answered {code.name}: {details}"
        assert "failed unexpectedly" not in details, f"{path}: {details}"
        assert "Traceback" not in details, f"{path}: {details}"


@pytest.mark.parametrize(("service", "method"), METHODS, ids=[m.name for _, m in METHODS])
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large, HealthCheck.filter_too_much])
@given(data=st.data())
def test_every_answer_is_a_code_the_design_allows(
        env: PodsEnv, targets: Targets, service: str, method: MethodDescriptor,
        data: st.DataObject) -> None:
    seed = targets.seeds.get(method.name)
    if seed is not None and data.draw(st.booleans(), label="from the seed"):
        request = type(seed)()
        request.CopyFrom(seed)
        if isinstance(request, cri_pb2.RunPodSandboxRequest | cri_pb2.CreateContainerRequest):
            request.config.metadata.attempt = next(_ATTEMPTS)
        request.MergeFrom(data.draw(_message(method.input_type, targets, sparse=True)))
    else:
        strategy = _message(method.input_type, targets)
        request = data.draw(st.lists(strategy, min_size=1, max_size=3)
                            if method.client_streaming else strategy)
    _call(env, service, method, request)
    env.runtime.Version(cri_pb2.VersionRequest(), timeout=10)
