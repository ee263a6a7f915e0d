"""The request check refuses what the schema cannot mean, and passes everything it can."""

from __future__ import annotations

import pytest

from crisp.api import cri_pb2
from crisp.errors import InvalidArgument
from crisp.server.validation import check_request


def _pod(**options: int) -> cri_pb2.RunPodSandboxRequest:
    request = cri_pb2.RunPodSandboxRequest()
    request.config.metadata.name = "web"
    request.config.metadata.uid = "u1"
    request.config.metadata.namespace = "default"
    for name, value in options.items():
        setattr(request.config.linux.security_context.namespace_options, name, value)
    return request


def test_a_valid_request_passes() -> None:
    request = _pod(network=cri_pb2.NODE, pid=cri_pb2.CONTAINER)
    request.config.labels["app"] = "web"
    request.config.port_mappings.add(protocol=cri_pb2.UDP, container_port=53)
    check_request(request)


def test_an_unknown_enum_number_is_refused_with_the_names_it_may_take() -> None:
    with pytest.raises(InvalidArgument, match=r"namespace_options\.network is 8, which is not a "
                       r"NamespaceMode; use one of POD \(0\)"):
        check_request(_pod(network=8))


def test_an_unknown_enum_in_a_repeated_message_is_refused() -> None:
    request = cri_pb2.CreateContainerRequest(pod_sandbox_id="abc")
    request.config.mounts.add(container_path="/a", host_path="/b", propagation=7)
    with pytest.raises(InvalidArgument, match=r"mounts\[0\]\.propagation is 7"):
        check_request(request)


def test_an_unknown_state_in_a_list_filter_passes_to_match_nothing() -> None:
    request = cri_pb2.ListContainersRequest()
    request.filter.state.state = 8  # type: ignore[assignment]
    check_request(request)


@pytest.mark.parametrize("where", ["label key", "label value", "command", "metadata"])
def test_a_nul_byte_anywhere_is_refused(where: str) -> None:
    request = cri_pb2.CreateContainerRequest(pod_sandbox_id="abc")
    if where == "label key":
        request.config.labels["a\0b"] = "x"
    elif where == "label value":
        request.config.labels["a"] = "x\0"
    elif where == "command":
        request.config.command.append("sh\0")
    else:
        request.config.metadata.name = "n\0"
    with pytest.raises(InvalidArgument, match="NUL"):
        check_request(request)


def test_paths_longer_than_the_kernel_takes_are_refused() -> None:
    request = cri_pb2.CreateContainerRequest(pod_sandbox_id="abc")
    request.config.mounts.add(container_path="/" + "a" * 256, host_path="/b")
    with pytest.raises(InvalidArgument, match="component longer than the 255"):
        check_request(request)
    request.config.mounts[0].container_path = "/a" * 2049
    with pytest.raises(InvalidArgument, match="longer than the 4096 bytes"):
        check_request(request)


def test_metadata_longer_than_kubernetes_allows_is_refused() -> None:
    request = _pod()
    request.config.metadata.name = "n" * 254
    with pytest.raises(InvalidArgument, match=r"metadata\.name is longer than 253"):
        check_request(request)


@pytest.mark.parametrize("bad_id", ["../x", "a/b", "-rf", "x" * 256])
def test_ids_crisp_never_gives_out_are_refused(bad_id: str) -> None:
    with pytest.raises(InvalidArgument, match="is not an id crisp gave out"):
        check_request(cri_pb2.StartContainerRequest(container_id=bad_id))


def test_id_prefixes_as_crictl_users_type_them_pass() -> None:
    check_request(cri_pb2.StartContainerRequest(container_id="3fa9"))
