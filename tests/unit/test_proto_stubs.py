"""Guards for the CRI v1 wire contract and the committed generated stubs.

The kubelet talks to crisp purely through these messages, so a renumbered
field, a lost ``stream`` keyword or a stale stub breaks every node silently.
The pins below duplicate a slice of the upstream contract on purpose: an edit
to cri.proto that changes any of them has to change this file as well.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from types import ModuleType

import grpc
import pytest
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import FieldDescriptor, ServiceDescriptor

from crisp.api import cri_pb2, cri_pb2_grpc

REPO_ROOT = Path(__file__).resolve().parents[2]
PROTO = REPO_ROOT / "src" / "crisp" / "api" / "cri.proto"

RUNTIME_METHODS = [
    "Version",
    "RunPodSandbox",
    "StopPodSandbox",
    "RemovePodSandbox",
    "PodSandboxStatus",
    "ListPodSandbox",
    "StreamPodSandboxes",
    "CreateContainer",
    "StartContainer",
    "StopContainer",
    "RemoveContainer",
    "ListContainers",
    "StreamContainers",
    "ContainerStatus",
    "UpdateContainerResources",
    "ReopenContainerLog",
    "ExecSync",
    "Exec",
    "Attach",
    "PortForward",
    "ContainerStats",
    "ListContainerStats",
    "StreamContainerStats",
    "PodSandboxStats",
    "ListPodSandboxStats",
    "StreamPodSandboxStats",
    "UpdateRuntimeConfig",
    "Status",
    "CheckpointContainer",
    "CheckpointPod",
    "RestorePod",
    "GetContainerEvents",
    "ListMetricDescriptors",
    "ListPodSandboxMetrics",
    "StreamPodSandboxMetrics",
    "RuntimeConfig",
    "UpdatePodSandboxResources",
]
IMAGE_METHODS = [
    "ListImages",
    "StreamImages",
    "ImageStatus",
    "PullImage",
    "RemoveImage",
    "ImageFsInfo",
]
SERVER_STREAMING = {
    "RuntimeService": {
        "StreamPodSandboxes",
        "StreamContainers",
        "StreamContainerStats",
        "StreamPodSandboxStats",
        "GetContainerEvents",
        "StreamPodSandboxMetrics",
    },
    "ImageService": {"StreamImages"},
}

_T = FieldDescriptor
# (message, field) -> (number, type, repeated)
FIELD_PINS: dict[tuple[str, str], tuple[int, int, bool]] = {
    ("PodSandboxConfig", "metadata"): (1, _T.TYPE_MESSAGE, False),
    ("PodSandboxConfig", "log_directory"): (3, _T.TYPE_STRING, False),
    ("PodSandboxConfig", "port_mappings"): (5, _T.TYPE_MESSAGE, True),
    ("PodSandboxConfig", "linux"): (8, _T.TYPE_MESSAGE, False),
    ("PodSandboxConfig", "windows"): (9, _T.TYPE_MESSAGE, False),
    ("RunPodSandboxRequest", "runtime_handler"): (2, _T.TYPE_STRING, False),
    ("ContainerConfig", "metadata"): (1, _T.TYPE_MESSAGE, False),
    ("ContainerConfig", "envs"): (6, _T.TYPE_MESSAGE, True),
    ("ContainerConfig", "log_path"): (11, _T.TYPE_STRING, False),
    ("ContainerConfig", "tty"): (14, _T.TYPE_BOOL, False),
    ("ContainerConfig", "linux"): (15, _T.TYPE_MESSAGE, False),
    ("ContainerConfig", "windows"): (16, _T.TYPE_MESSAGE, False),
    ("ContainerConfig", "CDI_devices"): (17, _T.TYPE_MESSAGE, True),
    ("ContainerConfig", "stop_signal"): (18, _T.TYPE_ENUM, False),
    ("KeyValue", "value"): (2, _T.TYPE_BYTES, False),
    ("Mount", "uidMappings"): (6, _T.TYPE_MESSAGE, True),
    ("Mount", "gidMappings"): (7, _T.TYPE_MESSAGE, True),
    ("Mount", "recursive_read_only"): (8, _T.TYPE_BOOL, False),
    ("Mount", "image"): (9, _T.TYPE_MESSAGE, False),
    ("Mount", "image_sub_path"): (10, _T.TYPE_STRING, False),
    ("Mount", "mount_options"): (11, _T.TYPE_STRING, True),
    ("ImageSpec", "user_specified_image"): (18, _T.TYPE_STRING, False),
    ("ImageSpec", "runtime_handler"): (19, _T.TYPE_STRING, False),
    ("ImageSpec", "image_ref"): (20, _T.TYPE_STRING, False),
    ("LinuxSandboxSecurityContext", "run_as_group"): (8, _T.TYPE_MESSAGE, False),
    ("LinuxSandboxSecurityContext", "seccomp_profile_path"): (7, _T.TYPE_STRING, False),
    ("LinuxSandboxSecurityContext", "supplemental_groups_policy"): (11, _T.TYPE_ENUM, False),
    ("LinuxContainerResources", "memory_swap_limit_in_bytes"): (10, _T.TYPE_INT64, False),
    ("ContainerStatus", "exit_code"): (7, _T.TYPE_INT32, False),
    ("ContainerStatus", "image_id"): (17, _T.TYPE_STRING, False),
    ("ContainerStatus", "stop_signal"): (19, _T.TYPE_ENUM, False),
    ("PodSandboxStatusResponse", "containers_statuses"): (3, _T.TYPE_MESSAGE, True),
    ("ExecSyncResponse", "stdout"): (1, _T.TYPE_BYTES, False),
    ("Image", "size"): (4, _T.TYPE_UINT64, False),
    ("Image", "pinned"): (8, _T.TYPE_BOOL, False),
    ("PsiStats", "Full"): (1, _T.TYPE_MESSAGE, False),
    ("PsiStats", "Some"): (2, _T.TYPE_MESSAGE, False),
    ("PsiData", "Avg10"): (2, _T.TYPE_DOUBLE, False),
    ("RuntimeFeatures", "mount_options"): (3, _T.TYPE_BOOL, False),
    ("ContainerEventResponse", "containers_statuses"): (5, _T.TYPE_MESSAGE, True),
    ("RestorePodRequest", "container_configs"): (5, _T.TYPE_MESSAGE, True),
}

# The whole message, because its numbering is the least regular one.
LINUX_CONTAINER_SECURITY_CONTEXT = {
    "capabilities": 1,
    "privileged": 2,
    "namespace_options": 3,
    "selinux_options": 4,
    "run_as_user": 5,
    "run_as_username": 6,
    "readonly_rootfs": 7,
    "supplemental_groups": 8,
    "apparmor_profile": 9,
    "seccomp_profile_path": 10,
    "no_new_privs": 11,
    "run_as_group": 12,
    "masked_paths": 13,
    "readonly_paths": 14,
    "seccomp": 15,
    "apparmor": 16,
    "supplemental_groups_policy": 17,
}

ENUM_PINS: dict[tuple[str, str], int] = {
    ("NamespaceMode", "POD"): 0,
    ("NamespaceMode", "TARGET"): 3,
    ("ContainerState", "CONTAINER_RUNNING"): 1,
    ("ContainerState", "CONTAINER_UNKNOWN"): 3,
    ("PodSandboxState", "SANDBOX_NOTREADY"): 1,
    ("MountPropagation", "PROPAGATION_BIDIRECTIONAL"): 2,
    ("Protocol", "SCTP"): 2,
    ("Signal", "SIGNAL_RUNTIME_DEFAULT"): 0,
    ("Signal", "SIGNAL_SIGKILL"): 13,
    ("Signal", "SIGNAL_SIGTERM"): 23,
    ("Signal", "SIGNAL_SIGRTMAX"): 65,
    ("ContainerEventType", "CONTAINER_DELETED_EVENT"): 3,
    ("CgroupDriver", "SYSTEMD"): 0,
    ("CgroupDriver", "CGROUPFS"): 1,
    ("SupplementalGroupsPolicy", "Strict"): 1,
    ("MetricType", "GAUGE"): 1,
}


def _load_generator() -> ModuleType:
    """Import scripts/generate_proto.py, which is a script rather than a package module."""
    path = REPO_ROOT / "scripts" / "generate_proto.py"
    spec = importlib.util.spec_from_file_location("crisp_generate_proto", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _service(name: str) -> ServiceDescriptor:
    return cri_pb2.DESCRIPTOR.services_by_name[name]


def test_committed_stubs_are_current() -> None:
    stale = _load_generator().stale_files()
    assert stale == [], f"regenerate with scripts/generate_proto.py: {stale}"


def test_proto_is_plain_proto3_without_imports() -> None:
    text = PROTO.read_text()
    assert re.search(r"^\s*import\s", text, re.MULTILINE) is None
    assert "gogoproto" not in text
    assert cri_pb2.DESCRIPTOR.package == "runtime.v1"
    assert list(cri_pb2.DESCRIPTOR.dependencies) == []


def test_service_full_names_match_grpc_paths() -> None:
    # The kubelet dials /runtime.v1.RuntimeService/<Method>; the package is the path.
    assert _service("RuntimeService").full_name == "runtime.v1.RuntimeService"
    assert _service("ImageService").full_name == "runtime.v1.ImageService"
    assert set(cri_pb2.DESCRIPTOR.services_by_name) == {"RuntimeService", "ImageService"}


@pytest.mark.parametrize(
    ("service", "expected"),
    [("RuntimeService", RUNTIME_METHODS), ("ImageService", IMAGE_METHODS)],
)
def test_service_methods(service: str, expected: list[str]) -> None:
    assert [m.name for m in _service(service).methods] == expected


@pytest.mark.parametrize("service", ["RuntimeService", "ImageService"])
def test_streaming_flags(service: str) -> None:
    proto = descriptor_pb2.ServiceDescriptorProto()
    _service(service).CopyToProto(proto)
    streaming = {m.name for m in proto.method if m.server_streaming}
    assert streaming == SERVER_STREAMING[service]
    assert not any(m.client_streaming for m in proto.method)


def test_method_types() -> None:
    methods = _service("RuntimeService").methods_by_name
    events = methods["GetContainerEvents"]
    assert events.input_type.name == "GetEventsRequest"
    assert events.output_type.name == "ContainerEventResponse"
    assert methods["Version"].output_type.name == "VersionResponse"
    assert methods["RuntimeConfig"].output_type.name == "RuntimeConfigResponse"
    pull = _service("ImageService").methods_by_name["PullImage"]
    assert pull.input_type.name == "PullImageRequest"


@pytest.mark.parametrize(("key", "pin"), sorted(FIELD_PINS.items()))
def test_field_pins(key: tuple[str, str], pin: tuple[int, int, bool]) -> None:
    message, field_name = key
    field = cri_pb2.DESCRIPTOR.message_types_by_name[message].fields_by_name[field_name]
    assert (field.number, field.type, field.is_repeated) == pin


def test_linux_container_security_context_numbers() -> None:
    fields = cri_pb2.LinuxContainerSecurityContext.DESCRIPTOR.fields
    assert {f.name: f.number for f in fields} == LINUX_CONTAINER_SECURITY_CONTEXT


@pytest.mark.parametrize(("key", "number"), sorted(ENUM_PINS.items()))
def test_enum_pins(key: tuple[str, str], number: int) -> None:
    enum_name, value_name = key
    enum = cri_pb2.DESCRIPTOR.enum_types_by_name[enum_name]
    assert enum.values_by_name[value_name].number == number


def test_map_fields_are_maps() -> None:
    annotations = cri_pb2.PodSandboxConfig.DESCRIPTOR.fields_by_name["annotations"]
    assert annotations.message_type is not None
    assert annotations.message_type.GetOptions().map_entry
    msg = cri_pb2.PodSandboxConfig(annotations={"a": "b"})
    assert dict(msg.annotations) == {"a": "b"}


def test_field_options() -> None:
    auth = cri_pb2.AuthConfig.DESCRIPTOR.fields_by_name
    for name in ("password", "auth", "identity_token", "registry_token"):
        assert auth[name].GetOptions().debug_redact, name
    assert not auth["username"].GetOptions().debug_redact
    sec = cri_pb2.LinuxContainerSecurityContext.DESCRIPTOR.fields_by_name
    assert sec["apparmor_profile"].GetOptions().deprecated
    assert sec["seccomp_profile_path"].GetOptions().deprecated


def test_wire_bytes() -> None:
    # metadata (field 1, len-delimited) { name (field 1) = "a" }
    config = cri_pb2.PodSandboxConfig(metadata=cri_pb2.PodSandboxMetadata(name="a"))
    assert config.SerializeToString() == b"\x0a\x03\x0a\x01a"
    # linux = 15 -> tag (15 << 3 | 2) = 0x7a; security_context = 2 { privileged = 2 }
    container = cri_pb2.ContainerConfig(
        linux=cri_pb2.LinuxContainerConfig(
            security_context=cri_pb2.LinuxContainerSecurityContext(privileged=True)
        )
    )
    assert container.SerializeToString() == b"\x7a\x04\x12\x02\x10\x01"
    parsed = cri_pb2.ContainerConfig.FromString(b"\x7a\x04\x12\x02\x10\x01")
    assert parsed.linux.security_context.privileged


class _Servicer(cri_pb2_grpc.RuntimeServiceServicer):
    """Minimal servicer proving the generated server/stub code runs on this grpcio."""

    def Version(
        self, request: cri_pb2.VersionRequest, context: grpc.ServicerContext
    ) -> cri_pb2.VersionResponse:
        return cri_pb2.VersionResponse(version=request.version, runtime_name="crisp")

    def GetContainerEvents(
        self, request: cri_pb2.GetEventsRequest, context: grpc.ServicerContext
    ) -> Iterator[cri_pb2.ContainerEventResponse]:
        for container_id in ("a", "b"):
            yield cri_pb2.ContainerEventResponse(container_id=container_id)


def test_grpc_round_trip(tmp_path: Path) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    # The generated gRPC module is untyped (only cri_pb2 has a .pyi).
    cri_pb2_grpc.add_RuntimeServiceServicer_to_server(_Servicer(), server)  # type: ignore[no-untyped-call]
    address = f"unix://{tmp_path / 'cri.sock'}"
    server.add_insecure_port(address)
    server.start()
    try:
        with grpc.insecure_channel(address) as channel:
            stub = cri_pb2_grpc.RuntimeServiceStub(channel)  # type: ignore[no-untyped-call]
            reply = stub.Version(cri_pb2.VersionRequest(version="v1"), timeout=5)
            assert (reply.version, reply.runtime_name) == ("v1", "crisp")
            events = stub.GetContainerEvents(cri_pb2.GetEventsRequest(), timeout=5)
            assert [e.container_id for e in events] == ["a", "b"]
            with pytest.raises(grpc.RpcError) as err:
                stub.Status(cri_pb2.StatusRequest(), timeout=5)
            assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        server.stop(grace=None)
