"""``crisp``'s command line: global options before or after the subcommand."""

from __future__ import annotations

from pathlib import Path

import pytest

from crisp.cli.daemon import build_parser, main


@pytest.mark.parametrize(
    "argv",
    [["--config", "F", "daemon"], ["daemon", "--config", "F"], ["--config", "F"],
     ["--config", "F", "config", "default"], ["config", "--config", "F", "default"],
     ["config", "show", "--config", "F", "docker.io"], ["--config", "F", "config", "show"]],
)
def test_config_is_taken_before_or_after_the_subcommand(argv: list[str]) -> None:
    assert build_parser().parse_args(argv).config == "F"


def test_no_config_option_leaves_it_unset() -> None:
    assert getattr(build_parser().parse_args(["daemon"]), "config", None) is None


@pytest.mark.parametrize("order", ["before", "after"])
def test_the_daemon_reads_the_config_named_either_way(
    order: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("root_dir = 5\n")
    argv = ["--config", str(broken), "daemon"] if order == "before" else [
        "daemon", "--config", str(broken)]
    assert main(argv) == 2
    assert str(broken) in capsys.readouterr().err
