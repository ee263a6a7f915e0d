"""A refused pull reaches the client with the code of what it can do about it, not UNKNOWN.

A real daemon pulls over gRPC from docker-registry behind basic auth and behind token auth.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from crisp.api import cri_pb2
from tests.support.daemon import CrispDaemon
from tests.support.registry import BusyboxRegistry, Registry, running_registry, token_registry

pytestmark = pytest.mark.integration

USERS = {"alice": "wonderland"}


def _pull(daemon: CrispDaemon, reference: str, auth: cri_pb2.AuthConfig | None = None
          ) -> grpc.RpcError:
    request = cri_pb2.PullImageRequest(image=cri_pb2.ImageSpec(image=reference), auth=auth)
    with pytest.raises(grpc.RpcError) as error:
        daemon.images.PullImage(request, timeout=60)
    return error.value


@pytest.fixture(scope="module")
def basic_registry() -> Iterator[Registry]:
    with running_registry(users=USERS) as registry:
        yield registry


def test_a_pull_without_credentials_is_unauthenticated(
    crisp_daemon: CrispDaemon, basic_registry: Registry
) -> None:
    error = _pull(crisp_daemon, f"{basic_registry.host}/private/busybox:latest")
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
    assert "needs a username and password" in error.details()  # type: ignore[attr-defined]


def test_refused_credentials_are_unauthenticated(
    crisp_daemon: CrispDaemon, basic_registry: Registry
) -> None:
    wrong = cri_pb2.AuthConfig(username="alice", password="wrong")
    error = _pull(crisp_daemon, f"{basic_registry.host}/private/busybox:latest", wrong)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
    details: str = error.details()  # type: ignore[attr-defined]
    assert "refused the given credentials" in details and "401" in details
    assert "wrong" not in details  # the password never reaches the client


def test_a_token_server_refusing_the_credentials_is_unauthenticated(
    crisp_daemon: CrispDaemon,
) -> None:
    with token_registry(USERS) as (registry, _tokens):
        wrong = cri_pb2.AuthConfig(username="alice", password="bad")
        error = _pull(crisp_daemon, f"{registry.host}/private/busybox:latest", wrong)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
    assert "token server" in error.details()  # type: ignore[attr-defined]
    assert "answered 401" in error.details()  # type: ignore[attr-defined]


def test_an_image_the_registry_does_not_have_is_not_found(
    crisp_daemon: CrispDaemon, registry_busybox: BusyboxRegistry
) -> None:
    error = _pull(crisp_daemon, f"{registry_busybox.registry.host}/test/absent:latest")
    assert error.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
    assert "was not found" in error.details()  # type: ignore[attr-defined]
