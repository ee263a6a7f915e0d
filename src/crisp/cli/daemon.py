"""``crisp``: run the daemon (the default), or work with its config file."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from crisp import __version__, heap, logsetup, sdnotify, tlsload
from crisp.cli import background
from crisp.cli.install import main_install, main_uninstall
from crisp.config import ConfigError, LiveConfig, config_path, load, render_default

log = logging.getLogger("crisp")

GIL_SWITCH_INTERVAL_S = 0.0005
"""How long a thread may hold the GIL while another waits for it (see `_daemon`)."""


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


def _daemon_options() -> argparse.ArgumentParser:
    """Options of the daemon, given to ``crisp`` or ``crisp daemon``."""
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument("--daemonize", action="store_true", default=argparse.SUPPRESS,
                         help="run in the background (for systems without systemd); returns "
                         "once CRI is served")
    options.add_argument("--pid-file", metavar="FILE", default=argparse.SUPPRESS,
                         help="write the daemon's pid here (removed when it exits)")
    options.add_argument("--log-file", metavar="FILE", default=argparse.SUPPRESS,
                         help="where a daemonized crisp logs (default /var/log/crisp.log)")
    return options


def build_parser() -> argparse.ArgumentParser:
    common = _global_options()
    daemon = _daemon_options()
    parser = argparse.ArgumentParser(
        prog="crisp",
        description="crisp, a Kubernetes container runtime speaking CRI v1.",
        parents=[common, daemon],
    )
    parser.add_argument("--version", action="version", version=f"crisp {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser(
        "daemon", parents=[common, daemon],
        help="serve CRI on the configured socket (the default)",
    )
    install = commands.add_parser(
        "install", help="lay down the config, /etc/crictl.yaml and a systemd unit when absent"
    )
    install.add_argument("--root", default="/", metavar="DIR", help="install below DIR")
    install.add_argument("--crisp", metavar="PATH", help="the crisp program the unit runs")
    doctor = commands.add_parser(
        "doctor", parents=[common], help="check the node: OK, WARN or FAIL with the fix"
    )
    doctor.add_argument("--json", action="store_true", help="machine-readable output")
    doctor.add_argument("--offline", action="store_true", help="skip the registry probes")
    # hidden (no help): the registry client of pulls, started by the daemon (crisp.images.helper)
    commands.add_parser("registry-helper")
    uninstall = commands.add_parser("uninstall", help="remove what crisp install laid down")
    uninstall.add_argument("--root", default="/", metavar="DIR", help="uninstall below DIR")
    config = commands.add_parser("config", parents=[common], help="print or check a config file")
    config_commands = config.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    config_commands.add_parser("default", help="print a complete config file with every default")
    config_commands.add_parser(
        "reference", help="print the configuration reference (docs/configuration.md) in Markdown"
    )
    check = config_commands.add_parser("check", help="validate a config file")
    check.add_argument("file", metavar="FILE")
    show = config_commands.add_parser(
        "show", parents=[common],
        help="print the effective registry setup per host (all sources merged)")
    show.add_argument("hosts", metavar="HOST", nargs="*",
                      help="registry hosts (or host/repository); default: every configured one")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.config = getattr(args, "config", None)
    if args.command == "config":
        if args.config_command == "default":
            sys.stdout.write(render_default())
            return 0
        if args.config_command == "reference":
            from crisp.config.reference import render_reference

            sys.stdout.write(render_reference())
            return 0
        if args.config_command == "show":
            return _show(args.config, args.hosts)
        return _check(Path(args.file))
    if args.command == "install":
        return main_install(Path(args.root), args.crisp)
    if args.command == "doctor":
        from crisp.cli.doctor import main_doctor  # its checks only where they run

        return main_doctor(args.config, args.json, network=not args.offline)
    if args.command == "registry-helper":
        from crisp.images.helper import main as main_helper

        return main_helper()
    if args.command == "uninstall":
        return main_uninstall(Path(args.root))
    return _daemon(
        args.config,
        daemonize=getattr(args, "daemonize", False),
        pid_file=Path(args.pid_file) if getattr(args, "pid_file", None) else None,
        log_file=Path(getattr(args, "log_file", "/var/log/crisp.log")),
    )


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


def _daemon(
    explicit_config: str | None,
    *,
    daemonize: bool = False,
    pid_file: Path | None = None,
    log_file: Path = Path("/var/log/crisp.log"),
) -> int:
    path = config_path(explicit_config)
    try:
        config = load(path)
    except ConfigError as error:
        print(f"crisp: invalid config:\n{error}", file=sys.stderr)
        return 2
    if daemonize:  # after the config check, which the caller's terminal sees
        background.daemonize(log_file)
    sdnotify.claim(only_until_ready=daemonize)  # before any helper program inherits it
    heap.limit_malloc_arenas()  # before grpc starts its threads
    # A worker thread reading a node's stats holds the GIL for up to the switch interval
    # (5 ms by default) each time the event loop wants it back: with a hundred pods the
    # kubelet's relists, answered in about a millisecond, waited tens of milliseconds.
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    tlsload.import_asyncio_without_ssl()  # before anything imports asyncio: no OpenSSL idle
    from crisp.server.app import StartupError, run  # the gRPC stack only where it is used

    logsetup.configure(config.log_level, config.log_format)
    log.info("config: %s", path or "built-in defaults")
    try:
        run(LiveConfig(config, path),
            on_locked=(lambda: background.write_pid_file(pid_file)) if pid_file else None)
    except StartupError as error:
        log.error("%s", error)
        return 1
    return 0
