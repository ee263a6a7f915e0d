"""``crispctl``: a CRI client for crisp (and any other CRI runtime)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

import grpc
from google.protobuf import json_format

from crisp.api import cri_pb2, cri_pb2_grpc
from crisp.cli.endpoint import resolve_endpoint
from crisp.cli.images_commands import add_image_commands
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
    commands.add_parser("version", help="the runtime's name and versions").set_defaults(
        run=_version
    )
    commands.add_parser("info", help="the runtime's status, conditions and config").set_defaults(
        run=_info
    )
    add_image_commands(commands)
    add_stream_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:  # the reader went away, as `crispctl info | head` does
        sys.stderr.close()
        return 0


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    target = resolve_endpoint(args.runtime_endpoint)
    run: Command = args.run
    with grpc.insecure_channel(target) as channel:
        try:
            return run(channel, args)
        except grpc.RpcError as error:
            code = error.code()
            print(f"crispctl: {target}: {code.name}: {error.details()}", file=sys.stderr)
            return 1


def _version(channel: grpc.Channel, args: argparse.Namespace) -> int:
    runtime = cri_pb2_grpc.RuntimeServiceStub(channel)
    response = runtime.Version(cri_pb2.VersionRequest(), timeout=args.timeout)
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
    print(json.dumps(info, indent=2, sort_keys=True))
    return 0
