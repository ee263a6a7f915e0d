"""``crispctl``: a CRI client for crisp (and any other CRI runtime)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any, NoReturn

import grpc
from google.protobuf import json_format

from crisp.api import cri_pb2, cri_pb2_grpc
from crisp.cli.completion import add_completion_command
from crisp.cli.config_commands import add_config_command
from crisp.cli.container_commands import add_container_commands
from crisp.cli.endpoint import (
    config_path,
    load_crictl_config,
    resolve_endpoint,
    resolve_image_endpoint,
)
from crisp.cli.images_commands import add_image_commands
from crisp.cli.output import UsageError, add_output_option, emit, to_dict
from crisp.cli.pod_commands import add_pod_commands
from crisp.cli.runtime_commands import add_runtime_commands
from crisp.cli.stream_commands import add_stream_commands
from crisp.cli.tracing import Calls, open_channel

Command = Callable[[grpc.Channel, argparse.Namespace], int]
LocalCommand = Callable[[argparse.Namespace], int]
DEFAULT_TIMEOUT = 10.0


class Parser(argparse.ArgumentParser):
    """argparse, but a mistake is one line (what is wrong, where to read more), as every
    other crispctl error is; subcommand parsers inherit this class."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="crispctl", description="Talk CRI to crisp.")
    parser.add_argument(
        "-r",
        "--runtime-endpoint",
        metavar="ENDPOINT",
        help="CRI socket (default: $CONTAINER_RUNTIME_ENDPOINT, else runtime-endpoint in "
        "/etc/crictl.yaml, else unix:///run/crisp/crisp.sock)",
    )
    parser.add_argument(
        "-i",
        "--image-endpoint",
        metavar="ENDPOINT",
        help="CRI image socket (default: $IMAGE_SERVICE_ENDPOINT, else image-endpoint in "
        "/etc/crictl.yaml, else the runtime endpoint)",
    )
    parser.add_argument(
        "-c",
        "--config",
        dest="config_file",
        metavar="FILE",
        help="client config file (default: $CRI_CONFIG_FILE, else /etc/crictl.yaml)",
    )
    parser.add_argument(
        "-t",
        "--timeout",
        type=float,
        metavar="SECONDS",
        help="how long to wait for an answer (default: timeout in /etc/crictl.yaml, else 10)",
    )
    parser.add_argument(
        "-D", "--debug", action="store_true",
        help="log each CRI call to stderr: endpoint, request, status, duration and response"
    )
    commands: Any = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    version = commands.add_parser("version", help="the runtime's name and versions")
    add_output_option(version)
    version.set_defaults(run=_version)
    info = commands.add_parser("info", help="the runtime's status, conditions and config")
    add_output_option(info, table=False)
    info.set_defaults(run=_info)
    add_image_commands(commands)
    add_pod_commands(commands)
    add_container_commands(commands)
    add_runtime_commands(commands)
    add_stream_commands(commands)
    add_config_command(commands)
    add_completion_command(commands, parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:  # the reader went away, as `crispctl info | head` does
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:  # ^C during logs -f or stats --watch
        return 130


# What to do next, per gRPC code: every error is one line with the code and this.
HINTS: dict[grpc.StatusCode, str] = {
    grpc.StatusCode.UNAVAILABLE: "is the runtime running? check the endpoint (-r, "
    "$CONTAINER_RUNTIME_ENDPOINT, runtime-endpoint in /etc/crictl.yaml)",
    grpc.StatusCode.NOT_FOUND: "list what exists with `crispctl pods`, `crispctl ps -a` or "
    "`crispctl images`",
    grpc.StatusCode.UNIMPLEMENTED: "the runtime at this endpoint does not serve this call (is it "
    "a CRI v1 runtime?)",
    grpc.StatusCode.DEADLINE_EXCEEDED: "the runtime is slow or stuck; retry with a larger "
    "--timeout, or look at its log",
    grpc.StatusCode.INVALID_ARGUMENT: "fix the request or config file named in the message",
    grpc.StatusCode.FAILED_PRECONDITION: "the object is in the wrong state for this; see "
    "inspect/inspectp",
    grpc.StatusCode.ALREADY_EXISTS: "pick another name or attempt, or remove the old one",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "free disk space or memory on the node and retry",
    grpc.StatusCode.PERMISSION_DENIED: "the registry refuses these credentials this image: "
    "use an account with pull access",
    grpc.StatusCode.UNAUTHENTICATED: "give the registry's credentials (`crispctl pull --creds "
    "USER:PASSWORD`, an imagePullSecret, or registries.auth_file)",
    grpc.StatusCode.UNKNOWN: "see the runtime's log for the cause",
    grpc.StatusCode.INTERNAL: "the node's runtime (runc, conmon) failed: the message has its "
    "error, the runtime's log the rest",
}


def error_line(target: str, error: grpc.RpcError) -> str:
    """One line for a failed call: where, the gRPC code, what the runtime said, what to do."""
    code: grpc.StatusCode = error.code()
    details = " ".join((error.details() or "").split())
    hint = HINTS.get(code, "")
    return f"crispctl: {target}: {code.name}: {details}" + (f" ({hint})" if hint else "")


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    local: LocalCommand | None = getattr(args, "run_local", None)
    if local is not None:
        try:
            return local(args)
        except UsageError as error:
            print("crispctl: " + " ".join(str(error).split()), file=sys.stderr)
            return 2
    config = config_path(args.config_file)
    settings = args.settings = load_crictl_config(config)
    if args.timeout is None:
        configured = settings.get("timeout")
        args.timeout = float(configured) if isinstance(configured, int | float) and \
            configured > 0 else DEFAULT_TIMEOUT
    args.debug = args.debug or settings.get("debug") is True
    args.runtime_target = resolve_endpoint(args.runtime_endpoint, config)
    args.image_target = resolve_image_endpoint(args.image_endpoint, args.runtime_target, config)
    target = args.image_target if getattr(args, "image_service", False) else args.runtime_target
    if args.debug:
        print(f"crispctl: {args.command} talks to {target}", file=sys.stderr)
    calls = args.calls = Calls(debug=args.debug)
    run: Command = args.run
    with ExitStack() as channels:
        channel = channels.enter_context(open_channel(target, calls))
        # create and run look images up and pull them at the image endpoint (-i)
        args.image_channel = channel if args.image_target == target else \
            channels.enter_context(open_channel(args.image_target, calls))
        try:
            return run(channel, args)
        except grpc.RpcError as error:
            print(error_line(calls.failed_target or target, error), file=sys.stderr)
            return 1
        except UsageError as error:
            print("crispctl: " + " ".join(str(error).split()), file=sys.stderr)
            return 2


def _version(channel: grpc.Channel, args: argparse.Namespace) -> int:
    runtime = cri_pb2_grpc.RuntimeServiceStub(channel)
    response = runtime.Version(cri_pb2.VersionRequest(), timeout=args.timeout)
    if args.output != "table":
        emit(to_dict(response), args.output)
        return 0
    print(f"Version:  {response.version}")
    print(f"RuntimeName:  {response.runtime_name}")
    print(f"RuntimeVersion:  {response.runtime_version}")
    print(f"RuntimeApiVersion:  {response.runtime_api_version}")
    return 0


def _info(channel: grpc.Channel, args: argparse.Namespace) -> int:
    runtime = cri_pb2_grpc.RuntimeServiceStub(channel)
    status = runtime.Status(cri_pb2.StatusRequest(verbose=True), timeout=args.timeout)
    info: dict[str, object] = {
        "status": json_format.MessageToDict(status.status),
        "runtimeHandlers": [json_format.MessageToDict(h) for h in status.runtime_handlers],
    }
    for key, value in status.info.items():
        try:
            info[key] = json.loads(value)
        except ValueError:
            info[key] = value
    try:
        runtime_config = runtime.RuntimeConfig(cri_pb2.RuntimeConfigRequest(), timeout=args.timeout)
        info["runtimeConfig"] = json_format.MessageToDict(runtime_config)
    except grpc.RpcError as error:
        if error.code() != grpc.StatusCode.UNIMPLEMENTED:
            raise
    emit(info, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
