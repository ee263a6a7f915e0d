"""``crispctl``: a CRI client for crisp (and any other CRI runtime)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

import grpc
from google.protobuf import json_format

from crisp.api import cri_pb2, cri_pb2_grpc
from crisp.cli.container_commands import add_container_commands
from crisp.cli.endpoint import resolve_endpoint
from crisp.cli.images_commands import add_image_commands
from crisp.cli.output import UsageError, add_output_option, emit, to_dict
from crisp.cli.pod_commands import add_pod_commands
from crisp.cli.runtime_commands import add_runtime_commands
from crisp.cli.stream_commands import add_stream_commands

Command = Callable[[grpc.Channel, argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="crispctl", description="Talk CRI to crisp.")
    parser.add_argument(
        "-r",
        "--runtime-endpoint",
        metavar="ENDPOINT",
        help="CRI socket (default: $CONTAINER_RUNTIME_ENDPOINT, else runtime-endpoint in "
        "/etc/crictl.yaml, else unix:///run/crisp/crisp.sock)",
    )
    parser.add_argument(
        "-t",
        "--timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how long to wait for an answer (default 10)",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
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
    grpc.StatusCode.PERMISSION_DENIED: "run as a user that may use the socket (root)",
    grpc.StatusCode.UNKNOWN: "see the runtime's log for the cause",
    grpc.StatusCode.INTERNAL: "see the runtime's log for the cause",
}


def error_line(target: str, error: grpc.RpcError) -> str:
    """One line for a failed call: where, the gRPC code, what the runtime said, what to do."""
    code: grpc.StatusCode = error.code()
    details = " ".join((error.details() or "").split())
    hint = HINTS.get(code, "")
    return f"crispctl: {target}: {code.name}: {details}" + (f" ({hint})" if hint else "")


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    target = resolve_endpoint(args.runtime_endpoint)
    run: Command = args.run
    with grpc.insecure_channel(target) as channel:
        try:
            return run(channel, args)
        except grpc.RpcError as error:
            print(error_line(target, error), file=sys.stderr)
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
