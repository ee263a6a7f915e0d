"""bench/lifecycle.py splits a pod start by step names that crisp really records."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _start_split() -> tuple[tuple[str, tuple[str, ...]], ...]:
    tree = ast.parse((ROOT / "bench" / "lifecycle.py").read_text())
    for node in tree.body:
        if (isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
                and node.targets[0].id == "START_SPLIT"):
            value: tuple[tuple[str, tuple[str, ...]], ...] = ast.literal_eval(node.value)
            return value
    raise AssertionError("bench/lifecycle.py has no START_SPLIT")


def recorded_steps() -> set[str]:
    """Every literal name given to crisp.steps.step() in the daemon's source."""
    names: set[str] = set()
    for path in (ROOT / "src" / "crisp").rglob("*.py"):
        names.update(re.findall(r'\bstep\("([^"]+)"\)', path.read_text()))
    return names


def test_every_step_of_the_split_is_recorded_by_the_daemon() -> None:
    split = _start_split()
    assert [label for label, _ in split] == ["namespaces", "CNI ADD", "conmon", "runc create",
                                              "runc start", "state commit"]
    expected = {name for _, names in split for name in names}
    assert expected - recorded_steps() == set()
