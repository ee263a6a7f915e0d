"""Suite-wide settings: integration tests need root and the real runtime parts."""

from __future__ import annotations

import os

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="integration tests run as root (they mount, spawn runc...)")
    for item in items:
        if "integration" in item.path.parts:
            item.add_marker(skip)
