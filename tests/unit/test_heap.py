"""The arena cap reaches glibc, and an operator's MALLOC_ARENA_MAX is left alone."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import crisp

SRC = str(Path(crisp.__file__).resolve().parents[1])


def _run(env: dict[str, str]) -> str:
    code = "from crisp import heap; print(heap.limit_malloc_arenas())"
    return subprocess.run(
        [sys.executable, "-c", code],
        env={**env, "PYTHONPATH": SRC},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def test_cap_is_applied_by_glibc() -> None:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    assert _run(env) == "True"


def test_operator_setting_wins() -> None:
    assert _run({**os.environ, "MALLOC_ARENA_MAX": "4"}) == "True"
