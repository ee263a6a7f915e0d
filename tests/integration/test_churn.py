"""Lists, stats and statuses keep answering while pods come and go around them.

A pod being torn down leaves cgroup and /proc files that fail to read with ENOENT, ENODEV or
ESRCH for an instant; one such pod must never fail a whole List*Stats call. The soak
(bench/soak.py) runs the same load for half an hour; this runs it for seconds.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.churn import churn
from tests.support.pods import PodsEnv, pods_environment

pytestmark = pytest.mark.integration

SECONDS = 20.0
CLIENTS = 4


@pytest.fixture(scope="module")
def env() -> Iterator[PodsEnv]:
    with tempfile.TemporaryDirectory(prefix="crisp-churn-") as base, \
            pods_environment(Path(base)) as environment:
        yield environment


def test_stats_and_lists_survive_pods_coming_and_going(env: PodsEnv) -> None:
    calls = churn(env, SECONDS, clients=CLIENTS, poll_every=0.02)
    assert calls.lifecycles >= CLIENTS, "the clients barely ran: the test proves nothing"
    assert calls.latencies["ListContainerStats"], "the poller never listed stats"
    assert not calls.errors, calls.error_samples
    assert env.daemon.process is not None and env.daemon.process.poll() is None
