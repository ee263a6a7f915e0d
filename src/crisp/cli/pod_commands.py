"""``crispctl`` pod sandbox commands, with crictl's names and flags: runp, stopp, rmp, pods,
inspectp."""

from __future__ import annotations

import argparse
import re
from typing import Any

import grpc

from crisp.api import cri_pb2, cri_pb2_grpc
from crisp.cli.output import (
    UsageError,
    add_output_option,
    ago,
    describe,
    emit,
    load_message,
    parse_labels,
    short_id,
    table,
    to_dict,
    with_info,
)

STATES = {"ready": cri_pb2.SANDBOX_READY, "notready": cri_pb2.SANDBOX_NOTREADY}


def add_pod_commands(commands: Any) -> None:
    """Add the pod commands to crispctl's subparsers."""
    runp = commands.add_parser("runp", help="run a pod sandbox from a JSON or YAML config")
    runp.add_argument("config", metavar="POD_CONFIG", help="PodSandboxConfig file (- for stdin)")
    runp.add_argument("--runtime", default="", help="runtime handler (default: the default)")
    runp.set_defaults(run=run_pod)

    stopp = commands.add_parser("stopp", help="stop pod sandboxes")
    stopp.add_argument("pods", nargs="+", metavar="POD_ID")
    stopp.set_defaults(run=stop_pods)

    rmp = commands.add_parser("rmp", help="remove pod sandboxes")
    rmp.add_argument("pods", nargs="*", metavar="POD_ID")
    rmp.add_argument("-a", "--all", action="store_true", help="remove every pod")
    rmp.add_argument("-f", "--force", action="store_true", help="stop running pods first")
    rmp.set_defaults(run=remove_pods)

    pods = commands.add_parser("pods", help="list pod sandboxes")
    pods.add_argument("--id", default="", help="only the pod with this id (or id prefix)")
    pods.add_argument("--name", default="", help="only pods whose name matches this regex")
    pods.add_argument("--namespace", default="",
                      help="only pods whose namespace matches this regex")
    pods.add_argument("-s", "--state", choices=sorted(STATES), type=str.lower,
                      help="only pods in this state")
    pods.add_argument("--label", action="append", metavar="KEY=VALUE",
                      help="only pods with this label (repeatable)")
    pods.add_argument("-q", "--quiet", action="store_true", help="only pod ids")
    pods.add_argument("-l", "--latest", action="store_true", help="only the newest pod")
    pods.add_argument("-n", "--last", type=int, default=0, metavar="N",
                      help="only the N newest")
    pods.add_argument("--no-trunc", action="store_true", help="full ids")
    pods.add_argument("-v", "--verbose", action="store_true",
                      help="each pod's details: ids, state, labels, annotations")
    add_output_option(pods)
    pods.set_defaults(run=list_pods)

    inspectp = commands.add_parser("inspectp", help="pod sandbox status and info")
    inspectp.add_argument("pods", nargs="+", metavar="POD_ID")
    add_output_option(inspectp, table=False)
    inspectp.set_defaults(run=inspect_pods)


def _runtime(channel: grpc.Channel) -> Any:
    return cri_pb2_grpc.RuntimeServiceStub(channel)


def run_pod(channel: grpc.Channel, args: argparse.Namespace) -> int:
    config = load_message(args.config, cri_pb2.PodSandboxConfig())
    response = _runtime(channel).RunPodSandbox(
        cri_pb2.RunPodSandboxRequest(config=config, runtime_handler=args.runtime),
        timeout=max(args.timeout, 120.0))  # the pause image may need pulling
    print(response.pod_sandbox_id)
    return 0


def stop_pods(channel: grpc.Channel, args: argparse.Namespace) -> int:
    runtime = _runtime(channel)
    for pod in args.pods:
        runtime.StopPodSandbox(cri_pb2.StopPodSandboxRequest(pod_sandbox_id=pod),
                               timeout=max(args.timeout, 60.0))
        print(f"Stopped sandbox {pod}")
    return 0


def remove_pods(channel: grpc.Channel, args: argparse.Namespace) -> int:
    runtime = _runtime(channel)
    if args.all == bool(args.pods):
        raise UsageError("rmp needs POD_ID arguments or --all, not both")
    if args.all:
        listed = runtime.ListPodSandbox(cri_pb2.ListPodSandboxRequest(), timeout=args.timeout)
        targets = [(pod.id, pod.state) for pod in listed.items]
    else:
        targets = []
        for pod in args.pods:
            status = runtime.PodSandboxStatus(
                cri_pb2.PodSandboxStatusRequest(pod_sandbox_id=pod), timeout=args.timeout)
            targets.append((status.status.id, status.status.state))
    for pod_id, state in targets:
        if state == cri_pb2.SANDBOX_READY:
            if not args.force:
                raise UsageError(f"pod {pod_id} is running: stop it with `crispctl stopp "
                                 f"{short_id(pod_id)}` or remove it with rmp --force")
            runtime.StopPodSandbox(cri_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id),
                                   timeout=max(args.timeout, 60.0))
        runtime.RemovePodSandbox(cri_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_id),
                                 timeout=max(args.timeout, 60.0))
        print(f"Removed sandbox {pod_id}")
    return 0


def list_pods(channel: grpc.Channel, args: argparse.Namespace) -> int:
    request = cri_pb2.ListPodSandboxRequest()
    if args.id:
        request.filter.id = args.id
    if args.state:
        request.filter.state.state = STATES[args.state]
    request.filter.label_selector.update(parse_labels(args.label))
    try:
        name, namespace = re.compile(args.name), re.compile(args.namespace)
    except re.error as error:
        raise UsageError(f"--name/--namespace is not a regular expression: {error}") from None
    items = [pod for pod in _runtime(channel).ListPodSandbox(request, timeout=args.timeout).items
             if name.search(pod.metadata.name) and namespace.search(pod.metadata.namespace)]
    items.sort(key=lambda pod: pod.created_at, reverse=True)
    last = 1 if args.latest else args.last
    if last:
        items = items[:last]
    if args.quiet:
        for pod in items:
            print(pod.id)
        return 0
    if args.output != "table":
        emit({"items": [to_dict(pod) for pod in items]}, args.output)
        return 0
    if args.verbose:
        for pod in items:
            describe([
                ("ID", pod.id), ("Name", pod.metadata.name), ("UID", pod.metadata.uid),
                ("Namespace", pod.metadata.namespace), ("Attempt", str(pod.metadata.attempt)),
                ("Status", cri_pb2.PodSandboxState.Name(pod.state)),
                ("Created", ago(pod.created_at)),
                ("RuntimeHandler", pod.runtime_handler or "(default)"),
            ], [("Labels", pod.labels), ("Annotations", pod.annotations)])
        return 0
    table(("POD ID", "CREATED", "STATE", "NAME", "NAMESPACE", "ATTEMPT", "RUNTIME"), (
        (pod.id if args.no_trunc else short_id(pod.id), ago(pod.created_at),
         "Ready" if pod.state == cri_pb2.SANDBOX_READY else "NotReady", pod.metadata.name,
         pod.metadata.namespace, str(pod.metadata.attempt), pod.runtime_handler or "(default)")
        for pod in items))
    return 0


def inspect_pods(channel: grpc.Channel, args: argparse.Namespace) -> int:
    runtime = _runtime(channel)
    documents = []
    for pod in args.pods:
        response = runtime.PodSandboxStatus(
            cri_pb2.PodSandboxStatusRequest(pod_sandbox_id=pod, verbose=True),
            timeout=args.timeout)
        documents.append(with_info({"status": to_dict(response.status)}, response.info))
    for document in documents:
        emit(document, args.output)
    return 0
