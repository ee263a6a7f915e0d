"""``crispctl config``: show and change the client settings in crictl.yaml, as ``crictl config``.

The file is crictl's own (/etc/crictl.yaml, or --config / $CRI_CONFIG_FILE), so crictl and
crispctl share one endpoint setting. Writes are atomic: a crash leaves the old file or the new.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml

from crisp.cli.endpoint import config_path
from crisp.cli.output import UsageError, table
from crisp.durable import write_atomic

# crictl's keys, in the order crictl writes them, and the type of each value.
KEYS: dict[str, type] = {
    "runtime-endpoint": str,
    "image-endpoint": str,
    "timeout": int,
    "debug": bool,
    "pull-image-on-create": bool,
    "disable-pull-on-run": bool,
}


def add_config_command(commands: Any) -> None:
    """Add ``config`` to crispctl's subparsers."""
    config = commands.add_parser(
        "config", help="show or change the client settings in crictl.yaml",
        description="Show or change crictl.yaml (the file given with --config, else "
        "$CRI_CONFIG_FILE, else /etc/crictl.yaml). Keys: " + ", ".join(KEYS) + ".")
    config.add_argument("key", nargs="?", metavar="KEY", help="print this key, or set it")
    config.add_argument("value", nargs="?", metavar="VALUE", help="the value to set KEY to")
    config.add_argument("--get", metavar="KEY", help="print the value of KEY")
    config.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="set KEY (repeatable; also KEY=VALUE,KEY=VALUE)")
    config.add_argument("--list", action="store_true", help="every key and its value")
    config.set_defaults(run_local=run_config)


def _parse(key: str, text: str) -> object:
    kind = KEYS.get(key)
    if kind is None:
        raise UsageError(f"unknown config key {key!r}: use one of {', '.join(KEYS)}")
    if kind is bool:
        if text.lower() not in ("true", "false"):
            raise UsageError(f"{key} takes true or false, not {text!r}")
        return text.lower() == "true"
    if kind is int:
        try:
            number = int(text)
        except ValueError:
            number = -1
        if number < 0:
            raise UsageError(f"{key} takes a whole number of seconds, not {text!r}")
        return number
    return text


def _show(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return "" if value is None else str(value)


def read_settings(path: Path) -> dict[str, Any]:
    """The file's settings; {} when it is absent. A file that is not a YAML map is an error."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except OSError as error:
        raise UsageError(f"cannot read {path}: {error.strerror}") from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise UsageError(f"{path} is not YAML: {str(error).splitlines()[0]}") from None
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise UsageError(f"{path} must hold a map of settings such as runtime-endpoint: ...")
    return document


def write_settings(path: Path, settings: dict[str, Any]) -> None:
    """Write the settings, crictl's keys first in crictl's order, others after as they were."""
    ordered = {key: settings[key] for key in KEYS if key in settings}
    ordered.update((key, value) for key, value in settings.items() if key not in KEYS)
    data = yaml.safe_dump(ordered, sort_keys=False, default_flow_style=False).encode()
    try:
        write_atomic(path, data)
    except OSError as error:
        raise UsageError(f"cannot write {path}: {error.strerror}") from None


def run_config(args: argparse.Namespace) -> int:
    path = config_path(args.config_file)
    assignments: list[tuple[str, str]] = []
    for item in args.set or ():
        for pair in item.split(","):
            key, separator, value = pair.partition("=")
            if not separator or not key.strip():
                raise UsageError(f"--set {pair!r} is not KEY=VALUE")
            assignments.append((key.strip(), value.strip()))
    if args.key is not None and args.value is not None:
        assignments.append((args.key, args.value))
    get = args.get or (args.key if args.value is None else None)
    if sum(bool(x) for x in (assignments, get, args.list)) != 1:
        raise UsageError("config takes one of: KEY, KEY VALUE, --get KEY, --set KEY=VALUE, "
                         "--list")
    settings = read_settings(path)
    if args.list:
        table(("KEY", "VALUE"), ((key, _show(settings.get(key))) for key in
                                 [*KEYS, *(k for k in settings if k not in KEYS)]))
        return 0
    if get:
        if get not in KEYS and get not in settings:
            raise UsageError(f"unknown config key {get!r}: use one of {', '.join(KEYS)}")
        print(_show(settings.get(get)))
        return 0
    for key, value in assignments:
        settings[key] = _parse(key, value)
    write_settings(path, settings)
    return 0
