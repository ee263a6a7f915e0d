"""``crisp``: run the daemon (the default), or work with its config file."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from crisp import __version__, heap, logsetup
from crisp.config import ConfigError, LiveConfig, config_path, load, render_default

log = logging.getLogger("crisp")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="crisp", description="crisp, a Kubernetes container runtime speaking CRI v1."
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="config file (default: $CRISP_CONFIG, else /etc/crisp/crisp.toml if it exists, "
        "else built-in defaults)",
    )
    parser.add_argument("--version", action="version", version=f"crisp {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser("daemon", help="serve CRI on the configured socket (the default)")
    config = commands.add_parser("config", help="print or check a config file")
    config_commands = config.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    config_commands.add_parser("default", help="print a complete config file with every default")
    check = config_commands.add_parser("check", help="validate a config file")
    check.add_argument("file", metavar="FILE")
    show = config_commands.add_parser(
        "show", help="print the effective registry setup per host (all sources merged)")
    show.add_argument("hosts", metavar="HOST", nargs="*",
                      help="registry hosts (or host/repository); default: every configured one")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "config":
        if args.config_command == "default":
            sys.stdout.write(render_default())
            return 0
        if args.config_command == "show":
            return _show(args.config, args.hosts)
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


def _show(explicit_config: str | None, hosts: list[str]) -> int:
    from crisp.errors import CrispError
    from crisp.images.endpoints import describe

    path = config_path(explicit_config)
    try:
        live = LiveConfig(load(path), path)
        sys.stdout.write(describe(live, hosts))
    except (ConfigError, CrispError) as error:
        print(f"crisp: {error}", file=sys.stderr)
        return 1
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
