"""Randomized crashes: crisp is SIGKILLed at random moments while clients run pod lifecycles.

Where test_pods_crash.py kills the daemon at each named point of one operation, this kills
it wherever several concurrent clients happen to be, a few times over, restarting it each
time. Afterwards every runc container, conmon process, mount, namespace pin, state dir and
pod address must belong to an object CRI lists, and removing every pod must leave nothing
(the environment's teardown checks the host). The seed is fixed so a failure repeats.
"""

from __future__ import annotations

import random
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.churn import Calls, churn
from tests.support.pods import PodsEnv, assert_no_leaks, pods_environment

pytestmark = pytest.mark.integration

SEED = 14
CRASHES = 5
CLIENTS = 3


@pytest.fixture(scope="module")
def env() -> Iterator[PodsEnv]:
    with tempfile.TemporaryDirectory(prefix="crisp-crash-random-") as base, \
            pods_environment(Path(base)) as environment:
        yield environment


def test_random_sigkills_under_load_leave_nothing_unaccounted(env: PodsEnv) -> None:
    chance = random.Random(SEED)
    delays = [chance.uniform(0.5, 3.0) for _ in range(CRASHES)]
    calls = Calls()
    load = threading.Thread(target=churn, args=(env, sum(delays) + 2 * CRASHES + 3.0),
                            kwargs={"clients": CLIENTS, "calls": calls}, daemon=True)
    load.start()
    for delay in delays:
        time.sleep(delay)
        env.daemon.kill()
        env.daemon.start()
    load.join(timeout=300)
    assert not load.is_alive(), "the clients did not finish"
    assert calls.lifecycles >= CLIENTS, "the clients barely ran: the test proves nothing"
    assert_no_leaks(env)
    env.remove_all_pods()
    assert_no_leaks(env)
