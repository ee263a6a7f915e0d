"""``crispctl`` container commands, with crictl's names and flags: create, start, stop, rm, ps,
inspect, run, logs, stats, update."""

from __future__ import annotations

import argparse
import re
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc

from crisp.api import cri_pb2, cri_pb2_grpc
from crisp.cli.output import (
    UsageError,
    add_output_option,
    ago,
    describe,
    emit,
    enum_name,
    load_message,
    parse_labels,
    short_id,
    table,
    to_dict,
    with_info,
)

STATES = {"created": cri_pb2.CONTAINER_CREATED, "running": cri_pb2.CONTAINER_RUNNING,
          "exited": cri_pb2.CONTAINER_EXITED, "unknown": cri_pb2.CONTAINER_UNKNOWN}


def add_container_commands(commands: Any) -> None:
    """Add the container commands to crispctl's subparsers."""
    create = commands.add_parser("create", help="create a container in a pod")
    create.add_argument("pod", metavar="POD_ID")
    create.add_argument("container_config", metavar="CONTAINER_CONFIG")
    create.add_argument("pod_config", metavar="POD_CONFIG")
    _pull_options(create)
    create.set_defaults(run=create_container)

    start = commands.add_parser("start", help="start created containers")
    start.add_argument("containers", nargs="+", metavar="CONTAINER_ID")
    start.set_defaults(run=start_containers)

    stop = commands.add_parser("stop", help="stop running containers")
    stop.add_argument("containers", nargs="+", metavar="CONTAINER_ID")
    stop.add_argument("-t", "--timeout", dest="stop_timeout", type=int, default=0,
                      metavar="SECONDS", help="seconds before SIGKILL (default 0)")
    stop.set_defaults(run=stop_containers)

    rm = commands.add_parser("rm", help="remove containers")
    rm.add_argument("containers", nargs="*", metavar="CONTAINER_ID")
    rm.add_argument("-a", "--all", action="store_true", help="remove every container")
    rm.add_argument("-f", "--force", action="store_true", help="stop running containers first")
    rm.set_defaults(run=remove_containers)

    ps = commands.add_parser("ps", help="list containers (running ones unless -a)")
    ps.add_argument("-a", "--all", action="store_true", help="containers in every state")
    ps.add_argument("--id", default="", help="only the container with this id (or prefix)")
    ps.add_argument("--name", default="", help="only containers whose name matches this regex")
    ps.add_argument("-p", "--pod", default="", help="only containers of this pod")
    ps.add_argument("-s", "--state", choices=sorted(STATES), type=str.lower,
                    help="only containers in this state")
    ps.add_argument("--image", default="", help="only containers of this image")
    ps.add_argument("--label", action="append", metavar="KEY=VALUE",
                    help="only containers with this label (repeatable)")
    ps.add_argument("--namespace", default="",
                    help="only containers whose pod's namespace matches this regex")
    ps.add_argument("-q", "--quiet", action="store_true", help="only container ids")
    ps.add_argument("-l", "--latest", action="store_true",
                    help="only the newest container (in any state)")
    ps.add_argument("-n", "--last", type=int, default=0, metavar="N",
                    help="only the N newest (in any state)")
    ps.add_argument("--no-trunc", action="store_true", help="full ids")
    ps.add_argument("-r", "--resolve-image-path", action="store_true",
                    help="show the image reference the container runs (its digest)")
    ps.add_argument("-v", "--verbose", action="store_true",
                    help="each container's details: ids, image, labels, annotations")
    add_output_option(ps)
    ps.set_defaults(run=list_containers)

    inspect = commands.add_parser("inspect", help="container status and info")
    inspect.add_argument("containers", nargs="+", metavar="CONTAINER_ID")
    add_output_option(inspect, table=False)
    inspect.set_defaults(run=inspect_containers)

    run = commands.add_parser("run", help="run a pod and a container in it from config files")
    run.add_argument("container_config", metavar="CONTAINER_CONFIG")
    run.add_argument("pod_config", metavar="POD_CONFIG")
    run.add_argument("--runtime", default="", help="runtime handler (default: the default)")
    _pull_options(run, default=True)
    run.set_defaults(run=run_container)

    logs = commands.add_parser("logs", help="a container's log (read from the CRI log file)")
    logs.add_argument("container", metavar="CONTAINER_ID")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    logs.add_argument("--tail", type=int, default=-1, metavar="N", help="only the last N lines")
    logs.add_argument("--since", default="", metavar="TIME",
                      help="only lines after TIME (RFC 3339, or a duration such as 10s, 5m)")
    logs.add_argument("-t", "--timestamps", action="store_true", help="show each line's time")
    logs.add_argument("-p", "--previous", action="store_true",
                      help="the log of the previous attempt of this container")
    logs.set_defaults(run=container_logs)

    stats = commands.add_parser("stats", help="container resource usage")
    stats.add_argument("containers", nargs="*", metavar="CONTAINER_ID")
    stats.add_argument("-a", "--all", action="store_true", help="stopped containers too")
    stats.add_argument("-p", "--pod", default="", help="only containers of this pod")
    stats.add_argument("--label", action="append", metavar="KEY=VALUE")
    _watch_options(stats)
    add_output_option(stats)
    stats.set_defaults(run=container_stats)

    update = commands.add_parser("update", help="change a running container's resources")
    update.add_argument("containers", nargs="+", metavar="CONTAINER_ID")
    update.add_argument("--cpu-period", type=int, default=0)
    update.add_argument("--cpu-quota", type=int, default=0)
    update.add_argument("--cpu-share", type=int, default=0)
    update.add_argument("--cpuset-cpus", default="")
    update.add_argument("--cpuset-mems", default="")
    update.add_argument("--memory", type=_bytes, default=0, help="limit, e.g. 512m or 1g")
    update.set_defaults(run=update_containers)


def _pull_options(parser: argparse.ArgumentParser, default: bool = False) -> None:
    """--with-pull/--no-pull; without either, crictl.yaml's pull-image-on-create (create) or
    disable-pull-on-run (run) decides, as for crictl."""
    setting = "disable-pull-on-run" if default else "pull-image-on-create"
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--with-pull", dest="pull", action="store_true", default=None,
                       help="pull the image first if it is missing" +
                       (f" (the default unless {setting} is true in crictl.yaml)" if default
                        else f" (the default when {setting} is true in crictl.yaml)"))
    group.add_argument("--no-pull", dest="pull", action="store_false",
                       help="never pull the image")
    parser.set_defaults(pull_setting=setting)


def _should_pull(args: argparse.Namespace) -> bool:
    if args.pull is not None:
        return bool(args.pull)
    configured = getattr(args, "settings", {}).get(args.pull_setting) is True
    return not configured if args.pull_setting == "disable-pull-on-run" else configured


def _watch_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-w", "--watch", action="store_true", help="refresh until ^C")
    parser.add_argument("-s", "--seconds", type=float, default=1.0,
                        help="seconds between refreshes (default 1)")


def _bytes(text: str) -> int:
    match = re.fullmatch(r"(\d+)([kmg]?)b?", text.strip().lower())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size such as 512m")
    return int(match[1]) << (10 * " kmg".index(match[2] or " "))


def _runtime(channel: grpc.Channel) -> Any:
    return cri_pb2_grpc.RuntimeServiceStub(channel)


def _ensure_image(channel: grpc.Channel, image: str, sandbox: cri_pb2.PodSandboxConfig,
                  timeout: float) -> None:
    images = cri_pb2_grpc.ImageServiceStub(channel)
    spec = cri_pb2.ImageSpec(image=image)
    if not images.ImageStatus(cri_pb2.ImageStatusRequest(image=spec), timeout=timeout).image.id:
        images.PullImage(cri_pb2.PullImageRequest(image=spec, sandbox_config=sandbox))


def _create(channel: grpc.Channel, args: argparse.Namespace, pod_id: str,
            sandbox: cri_pb2.PodSandboxConfig) -> str:
    config = load_message(args.container_config, cri_pb2.ContainerConfig())
    if _should_pull(args) and config.image.image:
        _ensure_image(args.image_channel, config.image.image, sandbox, args.timeout)
    response = _runtime(channel).CreateContainer(cri_pb2.CreateContainerRequest(
        pod_sandbox_id=pod_id, config=config, sandbox_config=sandbox),
        timeout=max(args.timeout, 60.0))
    return str(response.container_id)


def create_container(channel: grpc.Channel, args: argparse.Namespace) -> int:
    sandbox = load_message(args.pod_config, cri_pb2.PodSandboxConfig())
    print(_create(channel, args, args.pod, sandbox))
    return 0


def run_container(channel: grpc.Channel, args: argparse.Namespace) -> int:
    sandbox = load_message(args.pod_config, cri_pb2.PodSandboxConfig())
    load_message(args.container_config, cri_pb2.ContainerConfig())  # fail before the pod runs
    runtime = _runtime(channel)
    pod_id = runtime.RunPodSandbox(cri_pb2.RunPodSandboxRequest(
        config=sandbox, runtime_handler=args.runtime), timeout=max(args.timeout, 120.0)
    ).pod_sandbox_id
    container_id = _create(channel, args, pod_id, sandbox)
    runtime.StartContainer(cri_pb2.StartContainerRequest(container_id=container_id),
                           timeout=max(args.timeout, 60.0))
    print(container_id)
    return 0


def start_containers(channel: grpc.Channel, args: argparse.Namespace) -> int:
    for container in args.containers:
        _runtime(channel).StartContainer(cri_pb2.StartContainerRequest(container_id=container),
                                         timeout=max(args.timeout, 60.0))
        print(container)
    return 0


def stop_containers(channel: grpc.Channel, args: argparse.Namespace) -> int:
    for container in args.containers:
        _runtime(channel).StopContainer(
            cri_pb2.StopContainerRequest(container_id=container, timeout=args.stop_timeout),
            timeout=args.timeout + args.stop_timeout + 30)
        print(container)
    return 0


def remove_containers(channel: grpc.Channel, args: argparse.Namespace) -> int:
    runtime = _runtime(channel)
    if args.all == bool(args.containers):
        raise UsageError("rm needs CONTAINER_ID arguments or --all, not both")
    if args.all:
        listed = runtime.ListContainers(cri_pb2.ListContainersRequest(), timeout=args.timeout)
        targets = [(c.id, c.state) for c in listed.containers]
    else:
        targets = []
        for container in args.containers:
            status = runtime.ContainerStatus(
                cri_pb2.ContainerStatusRequest(container_id=container), timeout=args.timeout)
            targets.append((status.status.id, status.status.state))
    for container_id, state in targets:
        if state == cri_pb2.CONTAINER_RUNNING:
            if not args.force:
                raise UsageError(f"container {container_id} is running: stop it with "
                                 f"`crispctl stop {short_id(container_id)}` or use rm --force")
            runtime.StopContainer(cri_pb2.StopContainerRequest(container_id=container_id),
                                  timeout=args.timeout + 30)
        runtime.RemoveContainer(cri_pb2.RemoveContainerRequest(container_id=container_id),
                                timeout=max(args.timeout, 60.0))
        print(container_id)
    return 0


def list_containers(channel: grpc.Channel, args: argparse.Namespace) -> int:
    runtime = _runtime(channel)
    request = cri_pb2.ListContainersRequest()
    request.filter.id = args.id
    request.filter.pod_sandbox_id = args.pod
    last = 1 if args.latest else args.last
    if args.state:
        request.filter.state.state = STATES[args.state]
    elif not args.all and not last:  # as crictl: --last and --latest look at every state
        request.filter.state.state = cri_pb2.CONTAINER_RUNNING
    request.filter.label_selector.update(parse_labels(args.label))
    try:
        name, namespace = re.compile(args.name), re.compile(args.namespace)
    except re.error as error:
        raise UsageError(f"--name/--namespace is not a regular expression: {error}") from None
    items = [c for c in runtime.ListContainers(request, timeout=args.timeout).containers
             if name.search(c.metadata.name)
             and (not args.image or args.image in (c.image.image, c.image_ref))]
    pods: dict[str, cri_pb2.PodSandbox] = {}
    if args.namespace or (args.output == "table" and not args.quiet):
        pods = {pod.id: pod for pod in runtime.ListPodSandbox(
            cri_pb2.ListPodSandboxRequest(), timeout=args.timeout).items}
    if args.namespace:
        items = [c for c in items if c.pod_sandbox_id in pods
                 and namespace.search(pods[c.pod_sandbox_id].metadata.namespace)]
    items.sort(key=lambda c: c.created_at, reverse=True)
    if last:
        items = items[:last]
    if args.quiet:
        for container in items:
            print(container.id)
        return 0
    if args.output != "table":
        emit({"containers": [to_dict(c) for c in items]}, args.output)
        return 0
    if args.verbose:
        for container in items:
            _describe_container(container, pods.get(container.pod_sandbox_id))
        return 0
    trim = (lambda text: text) if args.no_trunc else short_id

    def image(c: cri_pb2.Container) -> str:
        shown = c.image_ref if args.resolve_image_path and c.image_ref else c.image.image
        return trim(shown) if shown.startswith("sha256:") else shown

    table(("CONTAINER", "IMAGE", "CREATED", "STATE", "NAME", "ATTEMPT", "POD ID", "POD"), (
        (trim(c.id), image(c), ago(c.created_at),
         enum_name(cri_pb2.ContainerState.Name(c.state), "CONTAINER_"), c.metadata.name,
         str(c.metadata.attempt), trim(c.pod_sandbox_id),
         pods[c.pod_sandbox_id].metadata.name if c.pod_sandbox_id in pods else "")
        for c in items))
    return 0


def _describe_container(c: cri_pb2.Container, pod: cri_pb2.PodSandbox | None) -> None:
    describe([
        ("ID", c.id), ("PodID", c.pod_sandbox_id),
        *([("PodName", pod.metadata.name), ("PodNamespace", pod.metadata.namespace)]
          if pod is not None else []),
        ("Name", c.metadata.name), ("Attempt", str(c.metadata.attempt)),
        ("State", cri_pb2.ContainerState.Name(c.state)), ("Image", c.image.image),
        ("ImageRef", c.image_ref), ("Created", ago(c.created_at)),
    ], [("Labels", c.labels), ("Annotations", c.annotations)])


def inspect_containers(channel: grpc.Channel, args: argparse.Namespace) -> int:
    for container in args.containers:
        response = _runtime(channel).ContainerStatus(
            cri_pb2.ContainerStatusRequest(container_id=container, verbose=True),
            timeout=args.timeout)
        emit(with_info({"status": to_dict(response.status)}, response.info), args.output)
    return 0


# -- logs: CRI has no log call; like crictl, read the file ContainerStatus names. --------------

LOG_LINE = re.compile(r"^(\S+) (stdout|stderr) ([PF]) ?(.*)$", re.DOTALL)


def _since(text: str) -> datetime | None:
    if not text:
        return None
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(s|m|h)", text)
    if match:
        seconds = float(match[1]) * {"s": 1, "m": 60, "h": 3600}[match[2]]
        return datetime.now(UTC) - timedelta(seconds=seconds)
    try:
        return _timestamp(text)
    except ValueError:
        raise UsageError(f"--since {text!r} is neither RFC 3339 nor a duration like 10s or "
                         "5m") from None


def _timestamp(text: str) -> datetime:
    """An RFC 3339 time with up to nanoseconds (Python's parser takes at most microseconds)."""
    text = text.replace("Z", "+00:00")
    match = re.fullmatch(
        r"(\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d)(?:\.(\d+))?([+-]\d\d:\d\d)?", text)
    if not match:
        raise ValueError(text)
    fraction = (match[2] or "")[:6]
    parsed = datetime.fromisoformat(match[1] + (f".{fraction.ljust(6, '0')}" if fraction else "")
                                    + (match[3] or "+00:00"))
    return parsed


def _log_path(channel: grpc.Channel, args: argparse.Namespace) -> tuple[str, Path]:
    status = _runtime(channel).ContainerStatus(
        cri_pb2.ContainerStatusRequest(container_id=args.container), timeout=args.timeout).status
    if not status.log_path:
        raise UsageError(f"container {status.id} has no log file (its pod has no log_directory)")
    path = Path(status.log_path)
    if args.previous:
        attempt = status.metadata.attempt
        suffix = f"{attempt}.log"
        if attempt == 0 or not path.name.endswith(suffix):
            raise UsageError(f"container {status.id} has no previous attempt whose log file "
                             f"can be named (attempt {attempt}, log {path})")
        path = path.with_name(path.name.removesuffix(suffix) + f"{attempt - 1}.log")
    return status.id, path


def _print_entry(line: str, since: datetime | None, timestamps: bool) -> None:
    match = LOG_LINE.match(line.rstrip("\n"))
    if not match:
        return
    when, stream, tag, content = match.groups()
    if since is not None:
        try:
            if _timestamp(when) < since:
                return
        except ValueError:
            pass
    out = sys.stdout if stream == "stdout" else sys.stderr
    end = "\n" if tag == "F" else ""
    out.write((f"{when} " if timestamps else "") + content + end)
    out.flush()


def container_logs(channel: grpc.Channel, args: argparse.Namespace) -> int:
    container_id, path = _log_path(channel, args)
    since = _since(args.since)
    try:
        log = path.open(encoding="utf-8", errors="replace")
    except OSError as error:
        raise UsageError(f"cannot read {path}: {error.strerror} (crispctl reads the log file "
                         "directly: run it on the node, as root)") from None
    with log:
        lines = log.readlines()
        if args.tail >= 0:
            lines = lines[len(lines) - args.tail:] if args.tail else []
        for line in lines:
            _print_entry(line, since, args.timestamps)
        if not args.follow:
            return 0
        pending = ""
        while True:
            chunk = log.readline()
            if chunk:
                pending += chunk
                if pending.endswith("\n"):
                    _print_entry(pending, since, args.timestamps)
                    pending = ""
                continue
            state = _runtime(channel).ContainerStatus(
                cri_pb2.ContainerStatusRequest(container_id=container_id),
                timeout=args.timeout).status.state
            if state != cri_pb2.CONTAINER_RUNNING:
                for rest in log.readlines():
                    _print_entry(rest, since, args.timestamps)
                return 0
            time.sleep(0.2)


# -- stats -----------------------------------------------------------------------------------

def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.4g}{unit}"
        value /= 1000
    return f"{size}B"


def cpu_percent(usage: cri_pb2.CpuUsage) -> str:
    """usage_nano_cores as a percentage of one core, as crictl prints CPU %."""
    return f"{usage.usage_nano_cores.value / 1e7:.2f}" if usage.HasField("usage_nano_cores") \
        else "0.00"


def watch(args: argparse.Namespace, once: Any) -> int:
    """Run ``once`` and, with --watch, again every --seconds until ^C."""
    while True:
        if args.watch and args.output == "table":
            sys.stdout.write("\x1b[H\x1b[2J")
        once()
        if not args.watch:
            return 0
        sys.stdout.flush()
        time.sleep(args.seconds)


def container_stats(channel: grpc.Channel, args: argparse.Namespace) -> int:
    runtime = _runtime(channel)

    def once() -> None:
        request = cri_pb2.ListContainerStatsRequest()
        request.filter.pod_sandbox_id = args.pod
        request.filter.label_selector.update(parse_labels(args.label))
        stats = list(runtime.ListContainerStats(request, timeout=args.timeout).stats)
        if args.containers:
            stats = [s for s in stats
                     if any(s.attributes.id.startswith(c) for c in args.containers)]
        if not args.all:
            running = {c.id for c in runtime.ListContainers(cri_pb2.ListContainersRequest(
                filter=cri_pb2.ContainerFilter(state=cri_pb2.ContainerStateValue(
                    state=cri_pb2.CONTAINER_RUNNING))), timeout=args.timeout).containers}
            stats = [s for s in stats if s.attributes.id in running]
        if args.output != "table":
            emit({"stats": [to_dict(s) for s in stats]}, args.output)
            return
        table(("CONTAINER", "NAME", "CPU %", "MEM", "DISK", "INODES"), (
            (short_id(s.attributes.id), s.attributes.metadata.name, cpu_percent(s.cpu),
             _human(s.memory.working_set_bytes.value),
             _human(s.writable_layer.used_bytes.value),
             str(s.writable_layer.inodes_used.value)) for s in stats))

    return watch(args, once)


def update_containers(channel: grpc.Channel, args: argparse.Namespace) -> int:
    resources = cri_pb2.LinuxContainerResources(
        cpu_period=args.cpu_period, cpu_quota=args.cpu_quota, cpu_shares=args.cpu_share,
        cpuset_cpus=args.cpuset_cpus, cpuset_mems=args.cpuset_mems,
        memory_limit_in_bytes=args.memory)
    for container in args.containers:
        _runtime(channel).UpdateContainerResources(cri_pb2.UpdateContainerResourcesRequest(
            container_id=container, linux=resources), timeout=args.timeout)
        print(container)
    return 0

