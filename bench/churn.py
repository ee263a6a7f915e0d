"""Churn and scale: pods started and stopped in concurrent bursts, crisp against containerd.

Each runtime in turn (the same peers as bench/lifecycle.py, from bench/common.py) fills the node
to ``--pods`` pods (default 250) in bursts of ``--burst`` (default 50) concurrent pod +
container starts, then churns for ``--cycles`` rounds (a burst of the oldest pods stopped and
removed concurrently, a burst of new ones started), then stops everything in bursts.
Throughput is pods per second of each burst's wall time. With every pod gone, it checks what
the runtime left behind and prints it: mounts under its directories or of its pods' network
namespaces, network namespace files, IPs still allocated in its CNI host-local store, conmon
processes (containerd: shims), and cgroups named after its pods or containers.

Run as root from the repository root::

    python bench/churn.py [--pods 250] [--burst 50] [--cycles 2] [--json OUT]
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
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
    rss_bytes,
    write_json,
)

from crisp.api import cri_pb2

CGROUP_ROOT = Path("/sys/fs/cgroup")
NETNS_PATH = re.compile(r'"(/[^"]*(?:/netns/|/ns/net)[^"]*)"')


@dataclass
class Pod:
    pod_id: str
    container_id: str
    netns: list[str]


@dataclass
class Churn:
    """One runtime's figures."""

    start_rates: list[float] = field(default_factory=list)  # pods/s per burst
    stop_rates: list[float] = field(default_factory=list)
    start_latency: list[float] = field(default_factory=list)  # seconds per pod in a burst
    failures: list[str] = field(default_factory=list)
    daemon_rss: int = 0
    total_rss: int = 0
    full: int = 0  # pods running at the peak
    leaks: list[str] = field(default_factory=list)
    started: int = 0
    stopped: int = 0
    start_seconds: float = 0.0
    stop_seconds: float = 0.0


# Bursts ------------------------------------------------------------------------------------

class Node:
    """A runtime with the pods this benchmark runs on it, and every id it ever used."""

    def __init__(self, driver: PodDriver):
        self.driver = driver
        self.running: list[Pod] = []
        self.ids: set[str] = set()
        self.netns: set[str] = set()
        self.counter = 0
        self.result = Churn()

    def _start_one(self, name: str) -> tuple[str, str, float] | str:
        try:
            return self.driver.start(name)
        except grpc.RpcError as error:
            return f"start {name}: {error.code().name}: {error.details()}"[:300]

    def _stop_one(self, pod: Pod) -> str | None:
        try:
            self.driver.stop(pod.pod_id, pod.container_id)
            return None
        except grpc.RpcError as error:
            return f"stop {pod.pod_id[:12]}: {error.code().name}: {error.details()}"[:300]

    def start_burst(self, count: int) -> None:
        names = [f"churn-{self.counter + i}" for i in range(count)]
        self.counter += count
        began = time.perf_counter()
        with ThreadPoolExecutor(count) as pool:
            outcomes = list(pool.map(self._start_one, names))
        took = time.perf_counter() - began
        started = [o for o in outcomes if not isinstance(o, str)]
        self.result.failures += [o for o in outcomes if isinstance(o, str)]
        self.result.start_rates.append(len(started) / took)
        self.result.start_latency += [latency for _, _, latency in started]
        self.result.started += len(started)
        self.result.start_seconds += took
        for pod_id, container_id, _ in started:  # untimed: what the leak check looks for
            netns = self.netns_of(pod_id)
            self.ids.update((pod_id, container_id))
            self.netns.update(netns)
            self.running.append(Pod(pod_id, container_id, netns))

    def stop_burst(self, count: int) -> None:
        burst, self.running = self.running[:count], self.running[count:]
        began = time.perf_counter()
        with ThreadPoolExecutor(max(1, len(burst))) as pool:
            outcomes = list(pool.map(self._stop_one, burst))
        took = time.perf_counter() - began
        errors = [o for o in outcomes if o]
        self.result.failures += errors
        self.result.stop_rates.append((len(burst) - len(errors)) / took)
        self.result.stopped += len(burst) - len(errors)
        self.result.stop_seconds += took

    def netns_of(self, pod_id: str) -> list[str]:
        """The pod's network namespace path(s), from PodSandboxStatus verbose (either runtime)."""
        response = self.driver.stub.PodSandboxStatus(cri_pb2.PodSandboxStatusRequest(
            pod_sandbox_id=pod_id, verbose=True))
        text = json.dumps(dict(response.info))
        return sorted(set(NETNS_PATH.findall(text.replace('\\"', '"'))))

    def measure_full(self) -> None:
        runtime = self.driver.runtime
        time.sleep(1.0)
        daemon = rss_bytes(runtime.daemon_pid())
        self.result.daemon_rss = daemon
        self.result.total_rss = daemon + sum(rss_bytes(pid)
                                             for pid in runtime.per_pod_pids([]))
        self.result.full = len(self.running)


# Leftovers ---------------------------------------------------------------------------------

def mount_points() -> set[str]:
    return {line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()}


def leftovers(runtime: Runtime, ids: set[str], netns: set[str], baseline: set[str]) -> list[str]:
    """What the runtime still holds of pods that are all gone."""
    found: list[str] = []
    base = str(runtime.base) if runtime.base else None
    for point in sorted(mount_points() - baseline):
        if ((base and point.startswith(base)) or point in netns
                or any(pod_id in point for pod_id in ids)):
            found.append(f"mount {point}")
    found += [f"netns file {path}" for path in sorted(netns) if os.path.lexists(path)]
    if runtime.ipam_dir and runtime.ipam_dir.is_dir():
        for network in sorted(runtime.ipam_dir.iterdir()):
            if not network.is_dir():
                continue
            for entry in sorted(network.iterdir()):
                try:
                    ipaddress.ip_address(entry.name)
                except ValueError:
                    continue
                owner = entry.read_text().split()[0] if entry.stat().st_size else "?"
                found.append(f"IP {entry.name} in {network} (held by {owner[:12]})")
    label = "conmon" if runtime.name == "crisp" else "shim"
    found += [f"{label} process {pid}" for pid in runtime.per_pod_pids([])]
    found += [f"cgroup {path}" for path in cgroups_named(ids)]
    return found


def cgroups_named(ids: set[str], depth: int = 6) -> list[str]:
    """cgroup directories whose name contains one of ``ids`` (pods or containers)."""
    found = []
    for directory, subdirectories, _ in os.walk(CGROUP_ROOT):
        if directory.count("/") - str(CGROUP_ROOT).count("/") >= depth:
            subdirectories[:] = []
        name = os.path.basename(directory)
        if any(identifier in name for identifier in ids):
            found.append(directory)
            subdirectories[:] = []
    return found


# Main ----------------------------------------------------------------------------------------

def churn(runtime: Runtime, busybox: str, pause: str, logs: Path,
          options: argparse.Namespace) -> Churn:
    driver = PodDriver(runtime, busybox, logs)
    driver.pull(busybox, pause)
    baseline = mount_points()
    node = Node(driver)
    node.start_burst(min(options.burst, 5))  # warm up
    node.stop_burst(len(node.running))
    node.result = Churn()
    try:
        while len(node.running) < options.pods:
            node.start_burst(min(options.burst, options.pods - len(node.running)))
            print(f"{runtime.name}: {len(node.running)} pods", flush=True)
        node.measure_full()
        for cycle in range(options.cycles):
            node.stop_burst(options.burst)
            node.start_burst(options.burst)
            print(f"{runtime.name}: churn cycle {cycle + 1} of {options.cycles}", flush=True)
    finally:
        while node.running:
            node.stop_burst(options.burst)
    time.sleep(2.0)  # conmon and shims exit after the answer
    node.result.leaks = leftovers(runtime, node.ids, node.netns, baseline)
    return node.result


def report(results: dict[str, Churn], options: argparse.Namespace) -> None:
    names = list(results)
    print(f"\n{options.pods} pods, bursts of {options.burst}{'':<12}"
          + "".join(f"{n:>12}" for n in names) + ("       ratio" if len(names) == 2 else ""))

    def row(label: str, values: list[float], unit: str) -> None:
        ratio = f"{values[0] / values[1]:>12.2f}" if len(values) == 2 and values[1] else ""
        print(f"{label:<40}" + "".join(f"{v:>12.1f}" for v in values) + f" {unit:<6}{ratio}")

    row("start throughput (all bursts)", [r.started / r.start_seconds for r in results.values()],
        "pods/s")
    row("start throughput, median burst", [statistics.median(r.start_rates)
                                           for r in results.values()], "pods/s")
    row("stop throughput (all bursts)", [r.stopped / r.stop_seconds for r in results.values()],
        "pods/s")
    row("pod start in a burst, median", [statistics.median(r.start_latency) * 1000
                                         for r in results.values()], "ms")
    row(f"daemon RSS with {options.pods} pods", [r.daemon_rss / 2**20 for r in results.values()],
        "MiB")
    row(f"total RSS with {options.pods} pods", [r.total_rss / 2**20 for r in results.values()],
        "MiB")
    for name, result in results.items():
        for failure in result.failures[:10]:
            print(f"{name}: failed: {failure}")
        if len(result.failures) > 10:
            print(f"{name}: ... {len(result.failures)} failures in all")
        if result.leaks:
            print(f"{name}: left behind after every pod was removed ({len(result.leaks)}):")
            for leak in result.leaks[:40]:
                print(f"  {leak}")
        else:
            print(f"{name}: nothing left behind (mounts, netns, IPs, "
                  f"{'conmons' if name == 'crisp' else 'shims'}, cgroups)")
    if len(names) == 2:
        crisp, ctrd = results["crisp"], results["containerd"]
        ok = crisp.started / crisp.start_seconds >= ctrd.started / ctrd.start_seconds
        print(f"\ntarget: crisp start throughput at or above containerd's: "
              f"{'met' if ok else 'NOT met'}")
    if "crisp" in results:
        print(f"target: crisp leaves nothing behind: "
              f"{'met' if not results['crisp'].leaks else 'NOT met'}")


def metrics(results: dict[str, Churn]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for name, result in results.items():
        values = {
            "start throughput pods/s": result.started / result.start_seconds,
            "stop throughput pods/s": result.stopped / result.stop_seconds,
            "pod start in a burst ms": [round(s * 1000, 3) for s in result.start_latency],
            f"daemon RSS MiB @ {result.full} pods": result.daemon_rss / 2**20,
            f"total RSS MiB @ {result.full} pods": result.total_rss / 2**20,
            "leftovers": len(result.leaks),
            "failures": len(result.failures),
        }
        for metric, value in values.items():
            found.setdefault(metric, {})[name] = value
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pods", type=int, default=250, help="pods on the node at the peak")
    parser.add_argument("--burst", type=int, default=50, help="concurrent starts or stops")
    parser.add_argument("--cycles", type=int, default=2, help="stop+start bursts at the peak")
    parser.add_argument("--only", choices=("crisp", "containerd"), help="measure one runtime")
    parser.add_argument("--json", metavar="OUT", help="also write the figures as JSON")
    options = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: the runtimes mount overlays and create namespaces")
    for binary in ("containerd", "runc", "conmon", "docker-registry"):
        if shutil.which(binary) is None:
            sys.exit(f"{binary} is not installed")
    base = Path(tempfile.mkdtemp(prefix="crisp-churn-"))
    results: dict[str, Churn] = {}
    try:
        with bench_registry() as registry:
            for name, factory in (("crisp", crisp_runtime), ("containerd", containerd_runtime)):
                if options.only and options.only != name:
                    continue
                print(f"measuring {name}...", flush=True)
                with factory(base / name, registry.host) as runtime:
                    results[name] = churn(runtime, registry.busybox, registry.pause,
                                          base / name / "logs", options)
        report(results, options)
        write_json(options.json, metrics(results))
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
