"""A node at steady state: the kubelet's polling of the runtime, crisp against containerd.

Both runtimes run ``--pods`` pods (default 110, the kubelet's limit) with two sleeping
containers each, then answer the kubelet's steady-state call pattern for ``--duration``
seconds. The pattern was measured under a real kubelet with 30 pods, per minute: about 100
ListPodSandbox, 100 ListContainers, 180 ContainerStatus, 12 Status, 6 ImageFsInfo and 6
ListContainerStats, plus ListPodSandboxStats every 10 s (PodAndContainerStatsFromCRI).
ContainerStatus scales with the number of containers; the relists do not.

Printed per runtime: the daemon's CPU (share of one core) and that of its per-pod processes,
the daemon's RSS, and p50/p99 latency per RPC, with crisp/containerd ratios; ``--json OUT``
writes the same figures as ``{metric: {"crisp": value, "containerd": value}}`` (latencies
per RPC as ``<RPC> p50 ms`` and ``<RPC> p99 ms``). After the polling, where the daemon's CPU
goes: each RPC called back to back on its own, the daemon's CPU per call less its idle CPU
(``<RPC> CPU ms per call``; the stats RPCs spaced so that nothing they read is cached). Calls
back to back cost a Python daemon less than the same calls spread over the minute, where each
one wakes its threads from idle: the polled figure is the one the targets read. Run as root
from the repository root::

    python bench/node.py [--pods 110] [--minutes 5] [--json node.json]
    python bench/node.py --pods 30 --minutes 1      # a quick check
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    PodDriver,
    Runtime,
    bench_registry,
    containerd_runtime,
    crisp_runtime,
    daemon_rss_bytes,
    percentile,
    smaps_rollup,
)

from crisp.api import cri_pb2

TICKS = os.sysconf("SC_CLK_TCK")

# Calls per minute at 30 pods with one container each (measured under kubelet v1.36.2).
PER_MINUTE = {"ListPodSandbox": 100, "ListContainers": 100, "Status": 12, "ImageFsInfo": 6,
              "ListContainerStats": 6, "ListPodSandboxStats": 6}
CONTAINER_STATUS_PER_CONTAINER_MINUTE = 180 / 30


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def start_pods(driver: PodDriver, pods: int) -> list[tuple[str, list[str]]]:
    """``pods`` pods with two containers each; [(pod id, [container ids])]."""
    running = []
    for index in range(pods):
        pod_id, first, _ = driver.start(f"node-{index}")
        second = driver.add_container(pod_id, f"node-{index}", "second")
        running.append((pod_id, [first, second]))
    return running


def schedule(containers: list[str]) -> list[tuple[float, str]]:
    """One minute of calls: (offset in seconds, RPC name), evenly spread per kind."""
    calls: list[tuple[float, str]] = []
    counts = dict(PER_MINUTE)
    counts["ContainerStatus"] = round(CONTAINER_STATUS_PER_CONTAINER_MINUTE * len(containers))
    for name, count in counts.items():
        calls += [(60.0 * (i + 0.5) / count, name) for i in range(count)]
    return sorted(calls)


def calls(driver: PodDriver, containers: list[str]) -> dict[str, Callable[[], Any]]:
    """One call of each RPC the kubelet polls; ContainerStatus takes the containers in turn."""
    stub = driver.stub
    rotation = iter(range(10**9))
    return {
        "ListPodSandbox": lambda: stub.ListPodSandbox(cri_pb2.ListPodSandboxRequest()),
        "ListContainers": lambda: stub.ListContainers(cri_pb2.ListContainersRequest()),
        "Status": lambda: stub.Status(cri_pb2.StatusRequest()),
        "ImageFsInfo": lambda: driver.images.ImageFsInfo(cri_pb2.ImageFsInfoRequest()),
        "ListContainerStats": lambda: stub.ListContainerStats(
            cri_pb2.ListContainerStatsRequest()),
        "ListPodSandboxStats": lambda: stub.ListPodSandboxStats(
            cri_pb2.ListPodSandboxStatsRequest()),
        "ContainerStatus": lambda: stub.ContainerStatus(cri_pb2.ContainerStatusRequest(
            container_id=containers[next(rotation) % len(containers)])),
    }


def steady_state(runtime: Runtime, driver: PodDriver, containers: list[str],
                 duration: float) -> tuple[dict[str, list[float]], float, float, int]:
    """Run the pattern; (latencies per RPC, daemon CPU share, per-pod CPU share, max RSS)."""
    requests = calls(driver, containers)
    latencies: dict[str, list[float]] = {name: [] for name in requests}
    failures: dict[str, str] = {}
    lock = threading.Lock()

    def call(name: str) -> None:
        began = time.perf_counter()
        try:
            requests[name]()
        except grpc.RpcError as error:
            with lock:
                failures[name] = f"{error.code().name}: {error.details()}"[:200]
            return
        took = time.perf_counter() - began
        with lock:
            latencies[name].append(took)

    daemon = runtime.daemon_pid()
    per_pod = runtime.per_pod_pids([])
    daemon_cpu = cpu_seconds(daemon)
    per_pod_cpu = sum(cpu_seconds(pid) for pid in per_pod)
    peak = daemon_rss_bytes(runtime)
    minute = schedule(containers)
    began = time.monotonic()
    with ThreadPoolExecutor(8) as pool:  # the kubelet's goroutines call concurrently too
        start = began
        while start - began < duration:
            for offset, name in minute:
                at = start + offset
                if at - began >= duration:
                    break
                delay = at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                pool.submit(call, name)
                peak = max(peak, daemon_rss_bytes(runtime)) if name == "Status" else peak
            start += 60.0
    elapsed = time.monotonic() - began
    for name, message in failures.items():
        print(f"{runtime.name}: {name} failed: {message}", flush=True)
    return (latencies, (cpu_seconds(daemon) - daemon_cpu) / elapsed,
            (sum(cpu_seconds(pid) for pid in per_pod) - per_pod_cpu) / elapsed, peak)


# Calls per RPC for the CPU per call, and the pause between stats calls (their caches last 2 s).
PER_CALL_COUNT = {"ListPodSandbox": 200, "ListContainers": 200, "ContainerStatus": 400,
                  "Status": 100, "ImageFsInfo": 50, "ListContainerStats": 8,
                  "ListPodSandboxStats": 8}
STATS_PAUSE_SECONDS = 2.1


def cpu_per_call(runtime: Runtime, driver: PodDriver,
                 containers: list[str]) -> dict[str, float]:
    """The daemon's CPU ms per call of each RPC, called on its own, less its idle CPU."""
    daemon = runtime.daemon_pid()
    time.sleep(2)  # the polling's last calls done
    before = cpu_seconds(daemon)
    time.sleep(10)
    idle = (cpu_seconds(daemon) - before) / 10
    found = {}
    for name, call in calls(driver, containers).items():
        try:
            call()
        except grpc.RpcError:  # reported by the polling already
            continue
        count = PER_CALL_COUNT[name]
        before, began = cpu_seconds(daemon), time.perf_counter()
        for _ in range(count):
            call()
            if "Stats" in name:
                time.sleep(STATS_PAUSE_SECONDS)
        spent = cpu_seconds(daemon) - before - idle * (time.perf_counter() - began)
        found[name] = max(spent, 0.0) / count * 1000
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pods", type=int, default=110)
    parser.add_argument("--minutes", type=float, default=5.0, help="minutes of polling")
    parser.add_argument("--duration", type=float, help="seconds of polling (overrides --minutes)")
    parser.add_argument("--json", type=Path, metavar="OUT", help="write the figures as JSON")
    parser.add_argument("--only", choices=("crisp", "containerd"), help="measure one runtime")
    options = parser.parse_args()
    if options.duration is None:
        options.duration = options.minutes * 60.0
    if os.geteuid() != 0:
        sys.exit("run as root: the runtimes mount overlays and create namespaces")
    print(f"load average at the start: {os.getloadavg()[0]:.2f} (machine of {os.cpu_count()} "
          "cores; other load makes the figures noisy)", flush=True)
    base = Path(tempfile.mkdtemp(prefix="crisp-node-"))
    results: dict[str, dict[str, Any]] = {}
    try:
        with bench_registry() as registry:
            busybox, pause = registry.busybox, registry.pause
            for name, factory in (("crisp", crisp_runtime), ("containerd", containerd_runtime)):
                if options.only and options.only != name:
                    continue
                print(f"{name}: starting {options.pods} pods...", flush=True)
                with factory(base / name, registry.host) as runtime:
                    driver = PodDriver(runtime, busybox, base / name / "logs")
                    driver.pull(busybox, pause)
                    running = start_pods(driver, options.pods)
                    containers = [c for _, ids in running for c in ids]
                    print(f"{name}: polling for {options.duration:.0f} s...", flush=True)
                    latencies, cpu, pod_cpu, peak = steady_state(
                        runtime, driver, containers, options.duration)
                    print(f"{name}: CPU per call, each RPC on its own...", flush=True)
                    per_call = cpu_per_call(runtime, driver, containers)
                    results[name] = {
                        "latencies": latencies, "cpu": cpu, "pod_cpu": pod_cpu,
                        "rss": daemon_rss_bytes(runtime), "peak": peak,
                        "smaps": smaps_rollup(runtime.daemon_pid()), "per_call": per_call,
                    }
                    for pod_id, ids in running:
                        driver.stop_pod(pod_id, ids)
        report(results, options.pods)
        print(f"load average at the end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
        if options.json is not None:
            options.json.write_text(json.dumps(as_json(results, options), indent=2) + "\n")
            print(f"wrote {options.json}")
    finally:
        shutil.rmtree(base, ignore_errors=True)


def as_json(results: dict[str, dict[str, Any]], options: argparse.Namespace) -> dict[str, Any]:
    """The figures keyed by metric, then runtime, named as bench/report.py's targets read them
    (it adds the pod count from the file name, node-N.json)."""
    mib = 2**20

    def per_runtime(read: Callable[[dict[str, Any]], float]) -> dict[str, float]:
        return {name: round(read(result), 3) for name, result in results.items()}

    figures: dict[str, Any] = {
        "pods": options.pods, "containers_per_pod": 2, "seconds": options.duration,
        "load_average": list(os.getloadavg()),
        "daemon CPU %": per_runtime(lambda r: r["cpu"] * 100),
        "per-pod processes CPU %": per_runtime(lambda r: r["pod_cpu"] * 100),
        # containerd asks its shims for every container's state and stats, crisp answers
        # in the daemon: what the node pays for the polling is the sum
        "runtime CPU %": per_runtime(lambda r: (r["cpu"] + r["pod_cpu"]) * 100),
        "daemon RSS MiB": per_runtime(lambda r: r["rss"] / mib),
        "daemon RSS peak MiB": per_runtime(lambda r: r["peak"] / mib),
        "daemon anonymous MiB": per_runtime(lambda r: r["smaps"].get("Anonymous", 0) / mib),
    }
    for name, result in results.items():
        for rpc, samples in result["latencies"].items():
            if samples:
                figures.setdefault(f"{rpc} p50 ms", {})[name] = round(
                    statistics.median(samples) * 1000, 3)
                figures.setdefault(f"{rpc} p99 ms", {})[name] = round(
                    percentile(samples, 0.99) * 1000, 3)
                figures.setdefault(f"{rpc} calls", {})[name] = len(samples)
        for rpc, ms in result["per_call"].items():
            figures.setdefault(f"{rpc} CPU ms per call", {})[name] = round(ms, 3)
    return figures


def report(results: dict[str, dict[str, Any]], pods: int) -> None:
    names = list(results)
    print(f"\n{pods} pods, 2 containers each{'':<14}" + "".join(f"{n:>12}" for n in names)
          + ("       ratio" if len(names) == 2 else ""))

    def row(label: str, values: list[float], unit: str) -> None:
        ratio = f"{values[0] / values[1]:>12.2f}" if len(values) == 2 and values[1] else ""
        print(f"{label:<40}" + "".join(f"{v:>12.2f}" for v in values) + f" {unit:<4}{ratio}")

    mib = 2**20
    row("daemon CPU (% of one core)", [results[n]["cpu"] * 100 for n in names], "%")
    row("per-pod processes CPU (% of one core)", [results[n]["pod_cpu"] * 100 for n in names],
        "%")
    row("runtime CPU (daemon + per-pod)", [(results[n]["cpu"] + results[n]["pod_cpu"]) * 100
                                           for n in names], "%")
    row("daemon RSS at the end", [results[n]["rss"] / mib for n in names], "MiB")
    row("daemon RSS peak", [results[n]["peak"] / mib for n in names], "MiB")
    row("daemon anonymous memory", [results[n]["smaps"].get("Anonymous", 0) / mib
                                    for n in names], "MiB")
    for rpc in results[names[0]]["latencies"]:
        samples = [results[n]["latencies"][rpc] for n in names]
        if not all(samples):  # failed on one runtime (containerd 1.6 lacks some RPCs)
            answered = [n for n, s in zip(names, samples, strict=True) if s]
            for name in answered:
                found = results[name]["latencies"][rpc]
                print(f"{rpc} on {name} only: p50 {statistics.median(found) * 1000:.2f} ms, "
                      f"p99 {percentile(found, 0.99) * 1000:.2f} ms ({len(found)} calls)")
            continue
        row(f"{rpc} p50 ({len(samples[0])} calls)",
            [statistics.median(s) * 1000 for s in samples], "ms")
        row(f"{rpc} p99", [percentile(s, 0.99) * 1000 for s in samples], "ms")
    print("\nwhere the daemon's CPU goes: ms per call, each RPC called on its own")
    for rpc in results[names[0]]["per_call"]:
        if all(rpc in results[n]["per_call"] for n in names):
            row(f"{rpc} CPU per call", [results[n]["per_call"][rpc] for n in names], "ms")
        else:
            for name in names:
                if rpc in results[name]["per_call"]:
                    print(f"{rpc} CPU per call on {name} only: "
                          f"{results[name]['per_call'][rpc]:.2f} ms")
    if "crisp" in results:
        p99 = percentile(results["crisp"]["latencies"]["ListContainers"], 0.99) * 1000
        print(f"\ntarget: crisp ListContainers p99 under 5 ms: {'met' if p99 < 5 else 'NOT met'}"
              f" ({p99:.2f} ms)")
    if len(names) == 2:
        ok = results["crisp"]["cpu"] <= results["containerd"]["cpu"]
        print(f"target: crisp daemon CPU at or below containerd's: {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
