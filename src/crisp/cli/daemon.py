"""``crisp``: run the daemon (the default), or work with its config file."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from crisp import __version__, heap, logsetup
from crisp.config import ConfigError, LiveConfig, config_path, load, render_default

log = logging.getLogger("crisp")


def _global_options() -> argparse.ArgumentParser:
    """Options accepted before or after the subcommand (``crisp daemon --config FILE``).

    SUPPRESS as the default keeps a subcommand's parser from resetting a value given
    before the subcommand.
    """
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument(
        "--config",
        metavar="FILE",
        default=argparse.SUPPRESS,
        help="config file (default: $CRISP_CONFIG, else /etc/crisp/crisp.toml if it exists, "
        "else built-in defaults)",
    )
    return options


def build_parser() -> argparse.ArgumentParser:
    common = _global_options()
    parser = argparse.ArgumentParser(
        prog="crisp",
        description="crisp, a Kubernetes container runtime speaking CRI v1.",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"crisp {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser(
        "daemon", parents=[common], help="serve CRI on the configured socket (the default)"
    )
    config = commands.add_parser("config", parents=[common], help="print or check a config file")
    config_commands = config.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    config_commands.add_parser("default", help="print a complete config file with every default")
    check = config_commands.add_parser("check", help="validate a config file")
    check.add_argument("file", metavar="FILE")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.config = getattr(args, "config", None)
    if args.command == "config":
        if args.config_command == "default":
            sys.stdout.write(render_default())
            return 0
        return _check(Path(args.file))
    return _daemon(args.config)


def _check(path: Path) -> int:
    try:
        load(path)
    except ConfigError as error:
        print(error, file=sys.stderr)
        return 1
    print(f"{path}: ok")
    return 0


def _daemon(explicit_config: str | None) -> int:
    heap.limit_malloc_arenas()  # before grpc starts its threads
    from crisp.server.app import StartupError, run  # the gRPC stack only where it is used

    path = config_path(explicit_config)
    try:
        config = load(path)
    except ConfigError as error:
        print(f"crisp: invalid config:\n{error}", file=sys.stderr)
        return 2
    logsetup.configure(config.log_level, config.log_format)
    log.info("config: %s", path or "built-in defaults")
    try:
        run(LiveConfig(config, path))
    except StartupError as error:
        log.error("%s", error)
        return 1
    return 0
