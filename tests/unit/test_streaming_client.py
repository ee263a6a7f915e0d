"""The client's reading of the error stream: exit codes from v4 statuses and older text."""

from __future__ import annotations

import json

import pytest

from crisp.streaming.client import RemoteError, exit_code_of
from crisp.streaming.session import V1, V4, V5, Outcome, failure_message, status_object


@pytest.mark.parametrize("protocol", [V4, V5])
@pytest.mark.parametrize("code", [0, 1, 137])
def test_exit_code_from_the_status_the_server_sends(protocol: str, code: int) -> None:
    sent = json.dumps(status_object(Outcome(exit_code=code))).encode()
    assert exit_code_of(protocol, sent) == code


def test_an_error_that_kept_the_command_from_running_is_raised() -> None:
    sent = json.dumps(status_object(Outcome(error="no such file"))).encode()
    with pytest.raises(RemoteError, match="no such file"):
        exit_code_of(V4, sent)


def test_older_protocols_report_text() -> None:
    assert exit_code_of(V1, b"") == 0
    assert exit_code_of(V1, failure_message(Outcome(exit_code=3)).encode()) == 3
    with pytest.raises(RemoteError, match="boom"):
        exit_code_of(V1, b"boom")
