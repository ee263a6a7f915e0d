"""Pod lifecycle latency and per-pod memory: crisp against containerd, same machine, same run.

Both runtimes get the same images from one local docker-registry, the same CNI plugins (a
bridge each, on its own subnet) and the very same CRI calls from this script:

* latency of RunPodSandbox + CreateContainer + StartContainer ("start") and of
  StopContainer + RemoveContainer + StopPodSandbox + RemovePodSandbox ("stop"), for a
  sequence of pods and for N concurrent clients (median and p90);
* memory with 10 and with 50 pods running, each with one ``sleep`` container: the daemon's RSS
  plus every per-pod process the runtime adds (crisp: one conmon per container, no pause
  process for infra-less pods; containerd: one shim per pod and its pause process).

Results are printed as a table and as crisp/containerd ratios. Run as root from the
repository root::

    python bench/lifecycle.py [--sequence 30] [--clients 10] [--per-client 3] [--json OUT]

crisp's pod start is also split into its steps (namespaces, CNI ADD, conmon, runc create,
runc start, state commit) from the step timing the daemon serves in Status verbose "steps".
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    PodDriver,
    Runtime,
    bench_registry,
    containerd_runtime,
    crisp_runtime,
    daemon_rss_bytes,
    percentile,
    rss_bytes,
    smaps_rollup,
    wait_for_helpers_to_end,
    write_json,
)

# Measurements ------------------------------------------------------------------------------

def sequence(driver: PodDriver, count: int, prefix: str) -> tuple[list[float], list[float]]:
    starts, stops = [], []
    for index in range(count):
        pod_id, container_id, took = driver.start(f"{prefix}-{index}")
        starts.append(took)
        stops.append(driver.stop(pod_id, container_id))
    return starts, stops


def concurrent(driver: PodDriver, clients: int, per_client: int,
               prefix: str) -> tuple[list[float], list[float]]:
    def client(number: int) -> tuple[list[float], list[float]]:
        own = PodDriver(driver.runtime, driver.busybox, driver.logs)
        return sequence(own, per_client, f"{prefix}-{number}")

    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(client, range(clients)))
    return [s for r in results for s in r[0]], [s for r in results for s in r[1]]


def memory_with(driver: PodDriver, pods: int, prefix: str,
                breakdown: dict[str, dict[str, int]]) -> tuple[int, int, int]:
    """(daemon RSS, per-pod processes' RSS, number of per-pod processes) with ``pods`` running."""
    running = [driver.start(f"{prefix}-{i}")[:2] for i in range(pods)]
    time.sleep(1.0)  # let lazily started helpers settle
    try:
        daemon = daemon_rss_bytes(driver.runtime)
        breakdown[f"{pods} pods"] = smaps_rollup(driver.runtime.daemon_pid())
        pids = driver.runtime.per_pod_pids([pod for pod, _ in running])
        pids += [pid for pid in (driver.sandbox_pid(pod) for pod, _ in running) if pid]
        return daemon, sum(rss_bytes(pid) for pid in set(pids)), len(set(pids))
    finally:
        for pod_id, container_id in running:
            driver.stop(pod_id, container_id)


# Main ----------------------------------------------------------------------------------------

@dataclass
class Results:
    seq_start: list[float]
    seq_stop: list[float]
    con_start: list[float]
    con_stop: list[float]
    memory: dict[int, tuple[int, int, int]]
    # smaps_rollup of the daemon: fresh, with the images pulled, with N pods
    breakdown: dict[str, dict[str, int]]
    # crisp only: mean ms per start step over the sequence, from Status verbose "steps"
    steps: dict[str, float]
    heap: list[list[Any]]
    # the largest RSS of the daemon's helper processes during the pull (crisp's registry helper)
    helper_peak: int = 0


def measure(runtime: Runtime, busybox: str, pause: str, logs: Path,
            options: argparse.Namespace) -> Results:
    driver = PodDriver(runtime, busybox, logs)
    breakdown = {"idle (fresh)": smaps_rollup(runtime.daemon_pid())}
    driver.pull(busybox, pause)
    # crisp's registry helper holds its own memory while pulls run, then ends: "idle" is after
    helper_peak = wait_for_helpers_to_end(runtime)
    breakdown["idle (pulled)"] = smaps_rollup(runtime.daemon_pid())
    sequence(driver, 3, "warmup")
    before = driver.status_info().get("steps")
    seq_start, seq_stop = sequence(driver, options.sequence, "seq")
    steps = step_means(before, driver.status_info().get("steps"), options.sequence)
    con_start, con_stop = concurrent(driver, options.clients, options.per_client, "con")
    memory = {count: memory_with(driver, count, f"mem{count}", breakdown)
              for count in (10, 50)}
    heap = json.loads(driver.status_info().get("tracemalloc", "[]"))
    return Results(seq_start, seq_stop, con_start, con_stop, memory, breakdown, steps, heap,
                   helper_peak)


# The split of a pod start the issue asks for, from the step names crisp records (steps.step
# in pods/sandboxes.py, pods/containers.py and oci/conmon.py). Steps named "cni: ..." and
# "conmon: ..." run inside "pod: CNI ADD" and "container: conmon + runc create".
START_SPLIT = (
    ("namespaces", ("pod: namespaces",)),
    ("CNI ADD", ("pod: CNI ADD",)),
    ("conmon", ("conmon: spawn",)),
    ("runc create", ("conmon: runc create",)),
    ("runc start", ("container: runc start",)),
    ("state commit", ("pod: state commit", "container: state commit",
                      "container: start commit")),
)
NESTED_PREFIXES = ("cni: ", "conmon: ")
PARENTS = ("container: conmon + runc create",)


def start_split(steps: dict[str, float]) -> tuple[dict[str, float], list[str]]:
    """Mean ms per pod start by the issue's steps, then every other top-level step; and the
    step names the split expects but crisp did not record (a renamed step shows here)."""
    split = {label: sum(steps.get(name, 0.0) for name in names) for label, names in START_SPLIT}
    named = {name for _, names in START_SPLIT for name in names}
    missing = sorted(name for name in named if name not in steps)
    for name, ms in sorted(steps.items(), key=lambda item: -item[1]):
        if name not in named and name not in PARENTS and not name.startswith(NESTED_PREFIXES):
            split[f"other: {name}"] = ms
    return split, missing


def step_means(before: str | None, after: str | None, pods: int) -> dict[str, float]:
    """Mean milliseconds per pod start of each step between two Status "steps" readings."""
    if not before or not after:
        return {}
    old, new = json.loads(before), json.loads(after)
    return {name: (value["seconds"] - old.get(name, {}).get("seconds", 0.0)) * 1000 / pods
            for name, value in new.items()}


def report(results: dict[str, Results]) -> None:
    crisp, ctrd = results["crisp"], results["containerd"]

    def row(label: str, a: float, b: float, unit: str) -> None:
        print(f"{label:<44} {a:>10.1f} {b:>12.1f} {unit:<4} {a / b:>7.2f}")

    print(f"\n{'':<44} {'crisp':>10} {'containerd':>12} {'':<4} {'ratio':>7}")
    for label, attr in (("sequence", "seq"), ("concurrent", "con")):
        for phase in ("start", "stop"):
            a = getattr(crisp, f"{attr}_{phase}")
            b = getattr(ctrd, f"{attr}_{phase}")
            row(f"{label} {phase} median", statistics.median(a) * 1000,
                statistics.median(b) * 1000, "ms")
            row(f"{label} {phase} p90", percentile(a, 0.9) * 1000, percentile(b, 0.9) * 1000,
                "ms")
    mib = 1024 * 1024
    for count in (10, 50):
        (cd, cp, cn), (kd, kp, kn) = crisp.memory[count], ctrd.memory[count]
        row(f"{count} pods: daemon RSS", cd / mib, kd / mib, "MiB")
        row(f"{count} pods: per-pod processes RSS ({cn} vs {kn})", cp / mib, kp / mib, "MiB")
        row(f"{count} pods: total RSS", (cd + cp) / mib, (kd + kp) / mib, "MiB")
        row(f"{count} pods: total RSS per pod", (cd + cp) / count / mib,
            (kd + kp) / count / mib, "MiB")
    marginal_crisp = (sum(crisp.memory[50][:2]) - sum(crisp.memory[10][:2])) / 40
    marginal_ctrd = (sum(ctrd.memory[50][:2]) - sum(ctrd.memory[10][:2])) / 40
    row("memory per additional pod (50 vs 10 pods)", marginal_crisp / mib, marginal_ctrd / mib,
        "MiB")
    print(f"\ndaemon memory (smaps_rollup, MiB)  {'':>10}", end="")
    kinds = ("Rss", "Pss", "Anonymous", "Private_Dirty")
    print("".join(f"{kind:>14}" for kind in kinds))
    for name, result in (("crisp", crisp), ("containerd", ctrd)):
        for stage, values in result.breakdown.items():
            print(f"{name + ' ' + stage:<45}", end="")
            print("".join(f"{values.get(kind, 0) / mib:>14.1f}" for kind in kinds))
    if crisp.helper_peak:
        print(f"crisp's registry helper held {crisp.helper_peak / mib:.1f} MiB RSS during the pull "
              "(it ends once pulls stop: the idle rows are read after it ended)")
    if crisp.heap:
        print("\ncrisp Python heap by file (tracemalloc, 50 pods just stopped)")
        for filename, kib, blocks in crisp.heap:
            print(f"  {kib:>8} KiB {blocks:>8} blocks  {filename}")
    if crisp.steps:
        print_split(crisp, statistics.median(ctrd.seq_start) * 1000)
    start_ok = statistics.median(crisp.seq_start) <= statistics.median(ctrd.seq_start) / 2
    memory_ok = marginal_crisp < marginal_ctrd / 2
    print(f"\ntarget: crisp pod start median at or below 0.5x containerd's: "
          f"{'met' if start_ok else 'NOT met'}")
    print(f"target: crisp memory per pod under half of containerd's: "
          f"{'met' if memory_ok else 'NOT met'}")
    daemon_ok = all(crisp.memory[n][0] <= ctrd.memory[n][0] for n in (10, 50))
    print(f"target: crisp daemon RSS at or below containerd's (10 and 50 pods): "
          f"{'met' if daemon_ok else 'NOT met'}")


def print_split(crisp: Results, containerd_median_ms: float | None) -> None:
    """crisp's pod start split into its steps, and what no step covers."""
    split, missing = start_split(crisp.steps)
    mean = statistics.mean(crisp.seq_start) * 1000
    against = (f", containerd median {containerd_median_ms:.1f} ms"
               if containerd_median_ms is not None else "")
    print(f"\ncrisp pod start by step (mean ms per start over the sequence: "
          f"{mean:.1f} ms, median {statistics.median(crisp.seq_start) * 1000:.1f}{against})")
    for label, ms in split.items():
        print(f"  {label:<44} {ms:>8.2f} {ms / mean * 100:>5.1f}%")
    outside = mean - sum(split.values())
    print(f"  {'outside the steps (gRPC, locks, the client)':<44} {outside:>8.2f} "
          f"{outside / mean * 100:>5.1f}%")
    detail = {name: ms for name, ms in crisp.steps.items() if name.startswith("cni: ")}
    if detail:
        print("  of which, inside CNI ADD:")
        for name, ms in sorted(detail.items()):
            print(f"    {name:<42} {ms:>8.2f}")
    for name in missing:
        print(f"  warning: crisp recorded no step {name!r} (renamed? see src/crisp/steps.py)")


def metrics(results: dict[str, Results]) -> dict[str, dict[str, Any]]:
    """The JSON bench/report.py reads: {"metric": {"crisp": x, "containerd": y}}."""
    mib = 2**20
    found: dict[str, dict[str, Any]] = {}

    def put(metric: str, name: str, value: Any) -> None:
        found.setdefault(metric, {})[name] = value

    for name, result in results.items():
        put("pod start ms", name, [round(s * 1000, 3) for s in result.seq_start])
        put("pod stop ms", name, [round(s * 1000, 3) for s in result.seq_stop])
        put("concurrent pod start ms", name, [round(s * 1000, 3) for s in result.con_start])
        put("pod start median ms", name, statistics.median(result.seq_start) * 1000)
        put("pod stop median ms", name, statistics.median(result.seq_stop) * 1000)
        put("concurrent pod start median ms", name, statistics.median(result.con_start) * 1000)
        put("daemon RSS MiB @ 0 pods", name,
            result.breakdown.get("idle (pulled)", {}).get("Rss", 0) / mib)
        for count, (daemon, per_pod, _) in result.memory.items():
            put(f"daemon RSS MiB @ {count} pods", name, daemon / mib)
            put(f"total RSS MiB @ {count} pods", name, (daemon + per_pod) / mib)
        if 10 in result.memory and 50 in result.memory:
            put("memory per additional pod MiB", name,
                (sum(result.memory[50][:2]) - sum(result.memory[10][:2])) / 40 / mib)
        if result.steps:
            split, _ = start_split(result.steps)
            for label, ms in split.items():
                put(f"start step {label} ms", name, ms)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sequence", type=int, default=30, help="pods run one after another")
    parser.add_argument("--clients", type=int, default=10, help="concurrent clients")
    parser.add_argument("--per-client", type=int, default=3, help="pods per concurrent client")
    parser.add_argument("--only", choices=("crisp", "containerd"), help="measure one runtime")
    parser.add_argument("--json", metavar="OUT", help="also write the figures as JSON")
    parser.add_argument("--tracemalloc", action="store_true",
                        help="trace crisp's Python heap and print its largest holders "
                        "(slows crisp down: not for latency figures)")
    options = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: the runtimes mount overlays and create namespaces")
    for binary in ("containerd", "runc", "conmon", "docker-registry"):
        if shutil.which(binary) is None:
            sys.exit(f"{binary} is not installed")
    base = Path(tempfile.mkdtemp(prefix="crisp-bench-"))
    results: dict[str, Results] = {}
    try:
        with bench_registry() as registry:
            busybox, pause = registry.busybox, registry.pause
            for name, factory in (("crisp", crisp_runtime), ("containerd", containerd_runtime)):
                if options.only and options.only != name:
                    continue
                print(f"measuring {name}...", flush=True)
                if name == "crisp" and options.tracemalloc:
                    os.environ["PYTHONTRACEMALLOC"] = "1"  # read by the daemon at start
                with factory(base / name, registry.host) as runtime:
                    results[name] = measure(runtime, busybox, pause, base / name / "logs",
                                            options)
        if len(results) == 2:
            report(results)
        else:
            for name, result in results.items():
                print(name, "start median ms", statistics.median(result.seq_start) * 1000,
                      "memory", result.memory)
                print("daemon smaps_rollup (MiB):", {
                    stage: {kind: round(value / 2**20, 1) for kind, value in values.items()}
                    for stage, values in result.breakdown.items()})
                if result.steps:
                    print_split(result, None)
        write_json(options.json, metrics(results))
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
