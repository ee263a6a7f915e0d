"""crispctl's pure helpers: ages, sizes, timestamps, labels, image filters, config files."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from crisp.api import cri_pb2
from crisp.cli.container_commands import _bytes, _print_entry, _since, _timestamp
from crisp.cli.images_commands import _image_filter
from crisp.cli.output import UsageError, ago, load_message, parse_labels


def test_ago_reads_like_crictl() -> None:
    now = 1_000_000.0
    assert ago(int((now - 0.2) * 1e9), now) == "Less than a second ago"
    assert ago(int((now - 1) * 1e9), now) == "1 second ago"
    assert ago(int((now - 125) * 1e9), now) == "2 minutes ago"
    assert ago(int((now - 3 * 86400) * 1e9), now) == "3 days ago"
    assert ago(0, now) == ""


def test_sizes_and_timestamps() -> None:
    assert _bytes("512m") == 512 << 20 and _bytes("1G") == 1 << 30 and _bytes("100") == 100
    with pytest.raises(argparse.ArgumentTypeError):
        _bytes("lots")
    nanos = _timestamp("2026-12-03T11:50:01.123456789+01:00")
    assert nanos.microsecond == 123456 and nanos.utcoffset() is not None
    assert _timestamp("2026-12-03T11:50:01Z") > _timestamp("2026-12-03T11:50:00.9Z")
    assert _since("") is None
    with pytest.raises(UsageError):
        _since("yesterday")


def test_log_lines_join_partial_entries(capsys: pytest.CaptureFixture[str]) -> None:
    _print_entry("2026-12-03T11:50:01.1Z stdout P hel\n", None, False)
    _print_entry("2026-12-03T11:50:01.2Z stdout F lo\n", None, False)
    _print_entry("2026-12-03T11:50:01.3Z stderr F oops\n", None, True)
    _print_entry("2020-01-01T00:00:00Z stdout F old\n", _timestamp("2021-01-01T00:00:00Z"),
                 False)
    out, err = capsys.readouterr()
    assert out == "hello\n" and err == "2026-12-03T11:50:01.3Z oops\n"


def test_labels() -> None:
    assert parse_labels(["a=b", "c="]) == {"a": "b", "c": ""}
    with pytest.raises(UsageError):
        parse_labels(["nolabel"])


def test_image_filters() -> None:
    old = cri_pb2.Image(id="sha256:aaa", repo_tags=["r.io/x/busybox:1"])
    dangling = cri_pb2.Image(id="sha256:bbb", repo_digests=["r.io/x/busybox@sha256:b"])
    new = cri_pb2.Image(id="sha256:ccc", repo_tags=["r.io/x/pause:3"])
    images = [old, dangling, new]
    assert _image_filter(["dangling=true"], images) == [dangling]
    assert _image_filter(["reference=*/pause"], images) == [new]
    assert _image_filter(["reference=^r\\.io/x/pa.se:3$"], images) == [new]  # crictl's regex
    assert _image_filter(["reference=busybox"], images) == [old, dangling]
    assert _image_filter(["since=r.io/x/busybox:1"], images) == [dangling, new]
    assert _image_filter(["before=ccc"], images) == [old, dangling]
    for bad in ("color=red", "dangling=maybe", "before=missing"):
        with pytest.raises(UsageError):
            _image_filter([bad], images)


def test_config_files_json_or_yaml(tmp_path: Path) -> None:
    camel = tmp_path / "pod.json"
    camel.write_text('{"metadata": {"name": "p", "namespace": "n"}, "logDirectory": "/l"}')
    snake = tmp_path / "pod.yaml"
    snake.write_text("metadata:\n  name: p\nlog_directory: /l\n")
    for path in (camel, snake):
        config = load_message(str(path), cri_pb2.PodSandboxConfig())
        assert config.metadata.name == "p" and config.log_directory == "/l"
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(UsageError, match="one object"):
        load_message(str(tmp_path / "list.yaml"), cri_pb2.PodSandboxConfig())
