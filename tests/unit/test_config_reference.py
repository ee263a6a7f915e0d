"""docs/configuration.md is what the config model generates, and its defaults are crisp's."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from crisp.cli.daemon import main
from crisp.config import parse
from crisp.config.reference import render_reference

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
ROW = re.compile(r"^\| `(?P<key>[a-z_]+)` \| [^|]+ \| `(?P<default>.*)` \| (live)? *\| ")


def documented_defaults(markdown: str) -> dict[str, Any]:
    """Dotted key -> default, read back from the reference's tables as TOML values."""
    found: dict[str, Any] = {}
    section = ""
    for line in markdown.splitlines():
        if line.startswith("## "):
            heading = line[3:].strip("`[]")
            section = "" if heading == "Top level" else heading + "."
            continue
        row = ROW.match(line)
        if row:
            key = section + row["key"]
            found[key] = tomllib.loads(f"value = {row['default']}")["value"]
    return found


def flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted keys of a TOML document; the tables of lists (``mirrors``,
    ``mirror_credentials``) are values."""
    flat: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, dict) and key not in ("mirrors", "mirror_credentials"):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def default_file_values(capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    """Every key `crisp config default` prints, with the named tables' keys as documented."""
    assert main(["config", "default"]) == 0
    text = capsys.readouterr().out
    parse(text)  # a valid file
    values = {key.replace("runtimes.runc.", "runtimes.NAME."): value
              for key, value in flatten(tomllib.loads(text)).items()}
    # [registries.tls."HOST"] has no built-in entry: its defaults are those of an empty one.
    tls = parse('[registries.tls."HOST"]\n').registries.tls["HOST"]
    for name in ("ca_file", "cert_file", "key_file", "insecure_skip_verify"):
        values[f'registries.tls."HOST".{name}'] = getattr(tls, name)
    return values


def test_the_reference_in_docs_is_the_generated_one() -> None:
    assert DOC.read_text() == render_reference(), (
        "docs/configuration.md is stale: run `crisp config reference > docs/configuration.md`"
    )


def test_crisp_config_reference_prints_it(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "reference"]) == 0
    assert capsys.readouterr().out == render_reference()


def test_documented_defaults_are_those_of_crisp_config_default(
    capsys: pytest.CaptureFixture[str],
) -> None:
    documented = documented_defaults(DOC.read_text())
    assert documented == default_file_values(capsys)
    assert {"socket", "cgroup_manager", "pod.pause_image", "runtimes.NAME.runtime_path",
            "cni.write_default_config", "metrics.port"} <= set(documented)


def test_a_wrong_documented_default_is_caught(capsys: pytest.CaptureFixture[str]) -> None:
    edited = DOC.read_text().replace('`"registry.k8s.io/pause:3.9"`', '`"pause:3.8"`')
    assert edited != DOC.read_text()
    assert documented_defaults(edited) != default_file_values(capsys)


def test_every_option_has_a_meaning() -> None:
    rows = [line for line in render_reference().splitlines() if ROW.match(line)]
    assert len(rows) >= 40
    empty = [row for row in rows if row.rstrip().endswith("|  |")]
    assert not empty, empty
