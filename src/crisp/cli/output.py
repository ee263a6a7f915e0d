"""How crispctl prints: aligned tables, or JSON/YAML with the field names crictl prints.

crictl marshals CRI messages with protojson, so its JSON carries lowerCamelCase names
(``podSandboxId``), enum names (``SANDBOX_READY``) and unset fields with their zero values;
``json_format.MessageToDict`` gives the same, so scripts written against crictl read
crispctl's output unchanged.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from google.protobuf import json_format
from google.protobuf.message import Message

FORMATS = ("table", "json", "yaml")
M = TypeVar("M", bound=Message)


class UsageError(Exception):
    """A mistake in what the user typed or in a file they named: one line, exit code 2."""


def add_output_option(parser: argparse.ArgumentParser, *, table: bool = True) -> None:
    """``-o/--output`` with crictl's choices; ``table`` is the default where there is one."""
    choices = FORMATS if table else FORMATS[1:]
    parser.add_argument("-o", "--output", choices=choices, default=choices[0],
                        help=f"output format (default {choices[0]})")


def to_dict(message: Message) -> dict[str, Any]:
    """A CRI message as crictl prints it: protojson with unset fields shown (EmitUnpopulated)."""
    return json_format.MessageToDict(message, always_print_fields_with_no_presence=True)


def with_info(document: dict[str, Any], info: Mapping[str, str]) -> dict[str, Any]:
    """Add a verbose status's ``info`` map, JSON values decoded as crictl does."""
    for key, value in info.items():
        try:
            document[key] = json.loads(value)
        except ValueError:
            document[key] = value
    return document


def emit(document: Any, output: str) -> None:
    """Print a JSON-ready document as JSON (the default) or YAML."""
    if output == "yaml":
        sys.stdout.write(yaml.safe_dump(document, sort_keys=True, default_flow_style=False))
    else:
        print(json.dumps(document, indent=2, sort_keys=True))


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    """Print rows aligned under the header, three spaces between columns."""
    lines = [list(header), *(list(row) for row in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in lines:
        print("   ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True))
              .rstrip())


def describe(fields: list[tuple[str, str]], maps: list[tuple[str, Mapping[str, str]]]) -> None:
    """One object as crictl's -v prints it: "Key: value" lines, then sorted maps, a blank."""
    for key, value in fields:
        print(f"{key}: {value}")
    for title, entries in maps:
        if entries:
            print(f"{title}:")
            for key in sorted(entries):
                print(f"\t{key} -> {entries[key]}")
    print()


def ago(nanoseconds: int, now: float | None = None) -> str:
    """A CRI timestamp (ns since the epoch) as "5 minutes ago", like crictl's CREATED."""
    if not nanoseconds:
        return ""
    seconds = max(0.0, (now if now is not None else time.time()) - nanoseconds / 1e9)
    for size, unit in ((86400 * 365, "year"), (86400 * 7, "week"), (86400, "day"),
                       (3600, "hour"), (60, "minute"), (1, "second")):
        if seconds >= size:
            count = int(seconds // size)
            return f"{count} {unit}{'s' if count != 1 else ''} ago"
    return "Less than a second ago"


def short_id(identifier: str) -> str:
    """The 13 characters crictl shows of an id."""
    return identifier.removeprefix("sha256:")[:13]


def enum_name(name: str, prefix: str) -> str:
    """``SANDBOX_READY`` -> ``Ready``, as crictl's tables show states."""
    return name.removeprefix(prefix).capitalize()


def parse_labels(pairs: Sequence[str] | None) -> dict[str, str]:
    """``--label key=value`` options as a dict."""
    labels: dict[str, str] = {}
    for pair in pairs or ():
        key, separator, value = pair.partition("=")
        if not separator or not key:
            raise UsageError(f"--label {pair!r} is not KEY=VALUE")
        labels[key] = value
    return labels


def load_message(path: str, message: M) -> M:
    """Fill ``message`` from a JSON or YAML file, with CRI names camelCase or snake_case."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
    except OSError as error:
        raise UsageError(f"cannot read {path}: {error.strerror}") from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise UsageError(f"{path} is neither JSON nor YAML: "
                         f"{str(error).splitlines()[0]}") from None
    if not isinstance(document, dict):
        raise UsageError(f"{path} must hold one object (a {type(message).__name__})")
    try:
        json_format.ParseDict(document, message)
    except json_format.ParseError as error:
        raise UsageError(f"{path} is not a {type(message).__name__}: {error}") from None
    return message
