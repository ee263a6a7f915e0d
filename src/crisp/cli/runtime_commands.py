"""``crispctl`` runtime-wide commands, with crictl's names: statsp, events, runtime-config,
imagefsinfo."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import grpc

from crisp.api import cri_pb2, cri_pb2_grpc
from crisp.cli.container_commands import _human, _watch_options, cpu_percent, watch
from crisp.cli.output import add_output_option, emit, parse_labels, short_id, table, to_dict


def add_runtime_commands(commands: Any) -> None:
    """Add the runtime-wide commands to crispctl's subparsers."""
    statsp = commands.add_parser("statsp", help="pod resource usage")
    statsp.add_argument("pods", nargs="*", metavar="POD_ID")
    statsp.add_argument("--label", action="append", metavar="KEY=VALUE")
    _watch_options(statsp)
    add_output_option(statsp)
    statsp.set_defaults(run=pod_stats)

    events = commands.add_parser("events", help="follow container events until ^C")
    add_output_option(events)
    events.set_defaults(run=container_events)

    config = commands.add_parser("runtime-config", help="the runtime's config (cgroup driver)")
    add_output_option(config, table=False)
    config.set_defaults(run=runtime_config)

    fsinfo = commands.add_parser("imagefsinfo", help="usage of the image filesystems")
    add_output_option(fsinfo, table=False)
    fsinfo.set_defaults(run=image_fs_info, image_service=True)


def pod_stats(channel: grpc.Channel, args: argparse.Namespace) -> int:
    runtime = cri_pb2_grpc.RuntimeServiceStub(channel)

    def once() -> None:
        request = cri_pb2.ListPodSandboxStatsRequest()
        request.filter.label_selector.update(parse_labels(args.label))
        stats = [s for s in runtime.ListPodSandboxStats(request, timeout=args.timeout).stats
                 if not args.pods or any(s.attributes.id.startswith(p) for p in args.pods)]
        if args.output != "table":
            emit({"stats": [to_dict(s) for s in stats]}, args.output)
            return
        table(("POD", "POD ID", "CPU %", "MEM"), (
            (s.attributes.metadata.name, short_id(s.attributes.id), cpu_percent(s.linux.cpu),
             _human(s.linux.memory.working_set_bytes.value)) for s in stats))

    return watch(args, once)


def container_events(channel: grpc.Channel, args: argparse.Namespace) -> int:
    runtime = cri_pb2_grpc.RuntimeServiceStub(channel)
    if args.output == "table":
        print("CONTAINER ID   EVENT   POD ID", flush=True)
    for event in runtime.GetContainerEvents(cri_pb2.GetEventsRequest()):
        if args.output == "table":
            name = cri_pb2.ContainerEventType.Name(event.container_event_type)
            print(f"{event.container_id}   {name}   {event.pod_sandbox_status.id}")
        else:
            emit(to_dict(event), args.output)
        sys.stdout.flush()
    return 0


def runtime_config(channel: grpc.Channel, args: argparse.Namespace) -> int:
    response = cri_pb2_grpc.RuntimeServiceStub(channel).RuntimeConfig(
        cri_pb2.RuntimeConfigRequest(), timeout=args.timeout)
    emit(to_dict(response), args.output)
    return 0


def image_fs_info(channel: grpc.Channel, args: argparse.Namespace) -> int:
    response = cri_pb2_grpc.ImageServiceStub(channel).ImageFsInfo(
        cri_pb2.ImageFsInfoRequest(), timeout=args.timeout)
    emit(to_dict(response), args.output)
    return 0
