"""crispctl finds its endpoint the way crictl does."""

from __future__ import annotations

from pathlib import Path

import pytest

from crisp.cli.endpoint import DEFAULT_ENDPOINT, resolve_endpoint, resolve_image_endpoint


def test_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    crictl = tmp_path / "crictl.yaml"
    crictl.write_text("runtime-endpoint: unix:///run/from-file.sock  # comment\ntimeout: 2\n")
    monkeypatch.setenv("CONTAINER_RUNTIME_ENDPOINT", "/run/from-env.sock")
    assert resolve_endpoint("unix:///run/flag.sock", crictl) == "unix:///run/flag.sock"
    assert resolve_endpoint(None, crictl) == "unix:///run/from-env.sock"
    monkeypatch.delenv("CONTAINER_RUNTIME_ENDPOINT")
    assert resolve_endpoint(None, crictl) == "unix:///run/from-file.sock"
    assert resolve_endpoint(None, tmp_path / "missing.yaml") == DEFAULT_ENDPOINT


def test_image_endpoint_defaults_to_the_runtime_one(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IMAGE_SERVICE_ENDPOINT", raising=False)
    crictl = tmp_path / "crictl.yaml"
    crictl.write_text("runtime-endpoint: /run/r.sock\n")
    assert resolve_image_endpoint(None, "unix:///run/r.sock", crictl) == "unix:///run/r.sock"
    crictl.write_text("runtime-endpoint: /run/r.sock\nimage-endpoint: /run/i.sock\n")
    assert resolve_image_endpoint(None, "unix:///run/r.sock", crictl) == "unix:///run/i.sock"
    assert resolve_image_endpoint("/run/flag.sock", "x", crictl) == "unix:///run/flag.sock"
    crictl.write_text("runtime-endpoint: [broken\n")  # a broken file: the defaults, no error
    assert resolve_endpoint(None, crictl) == DEFAULT_ENDPOINT
