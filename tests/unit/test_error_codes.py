"""Each domain error has its own gRPC code; failures a person can act on are never UNKNOWN."""

from __future__ import annotations

import grpc
import pytest

from crisp import errors
from crisp.images.registry import http_error
from crisp.network.invoke import PluginError
from crisp.oci.runtime import runtime_failure
from crisp.server.errors import status_code


@pytest.mark.parametrize(("error", "code"), [
    (errors.Unauthenticated("401"), grpc.StatusCode.UNAUTHENTICATED),
    (errors.PermissionDenied("403"), grpc.StatusCode.PERMISSION_DENIED),
    (errors.Internal("runc"), grpc.StatusCode.INTERNAL),
    (errors.RuntimeFailure("runc start failed"), grpc.StatusCode.INTERNAL),
    (PluginError("bridge failed", code=999, msg="", details="", stderr=""),
     grpc.StatusCode.FAILED_PRECONDITION),
    (errors.Unavailable("down"), grpc.StatusCode.UNAVAILABLE),
    (ValueError("a bug"), grpc.StatusCode.UNKNOWN),
])
def test_status_code(error: BaseException, code: grpc.StatusCode) -> None:
    assert status_code(error) == code


def test_every_domain_error_has_a_code_of_its_own() -> None:
    kinds = [k for k in vars(errors).values()
             if isinstance(k, type) and issubclass(k, errors.CrispError)
             and k not in (errors.CrispError, errors.RuntimeFailure)]
    codes = [status_code(kind("x")) for kind in kinds]
    assert grpc.StatusCode.UNKNOWN not in codes
    assert len(set(codes)) == len(codes)


@pytest.mark.parametrize(("status", "kind", "code"), [
    (401, errors.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (403, errors.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (429, errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
    (500, errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
    (503, errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
    (400, errors.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (405, errors.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
])
def test_a_registry_answer_gets_the_code_of_what_the_puller_can_do(
    status: int, kind: type[errors.CrispError], code: grpc.StatusCode
) -> None:
    message = f"https://registry.lan answered {status} for the manifest of registry.lan/app:1"
    error = http_error(status, message)
    assert type(error) is kind
    assert str(error) == message  # the message is kept as is
    assert status_code(error) == code


@pytest.mark.parametrize("message", [
    'runc create failed: unable to start container process: exec: "/no/such/binary": '
    "stat /no/such/binary: no such file or directory",
    'exec in container abc failed: exec failed: unable to start container process: exec: "nope":'
    " executable file not found in $PATH",
    'runc create failed: unable to start container process: exec: "/etc/passwd": '
    "permission denied",
    # runc's stderr as logrus writes it, the quotes escaped
    'exec in container abc failed: time="2026-01-01T00:00:00Z" level=error msg="exec failed: '
    'unable to start container process: exec: \\"/no/such/thing\\": stat /no/such/thing: '
    'no such file or directory"',
])
def test_a_command_the_container_cannot_run_is_the_requests_to_fix(message: str) -> None:
    error = runtime_failure(message)
    assert status_code(error) == grpc.StatusCode.INVALID_ARGUMENT
    assert str(error) == message


def test_any_other_runtime_failure_is_internal() -> None:
    message = ("runc create failed: unable to start container process: error during container "
               "init: error mounting \"proc\" to rootfs at \"/proc\": permission denied")
    error = runtime_failure(message)
    assert isinstance(error, errors.RuntimeFailure)
    assert status_code(error) == grpc.StatusCode.INTERNAL
