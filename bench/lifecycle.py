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

    python bench/lifecycle.py [--sequence 30] [--clients 10] [--per-client 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    PodDriver,
    Runtime,
    bench_image,
    containerd_runtime,
    crisp_runtime,
    percentile,
    rss_bytes,
)

from tests.support.image_builder import ImageConfig, push_image
from tests.support.registry import running_registry

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


def memory_with(driver: PodDriver, pods: int, prefix: str) -> tuple[int, int, int]:
    """(daemon RSS, per-pod processes' RSS, number of per-pod processes) with ``pods`` running."""
    running = [driver.start(f"{prefix}-{i}")[:2] for i in range(pods)]
    time.sleep(1.0)  # let lazily started helpers settle
    try:
        daemon = rss_bytes(driver.runtime.daemon_pid())
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


def measure(runtime: Runtime, busybox: str, pause: str, logs: Path,
            options: argparse.Namespace) -> Results:
    driver = PodDriver(runtime, busybox, logs)
    driver.pull(busybox, pause)
    sequence(driver, 3, "warmup")
    seq_start, seq_stop = sequence(driver, options.sequence, "seq")
    con_start, con_stop = concurrent(driver, options.clients, options.per_client, "con")
    memory = {count: memory_with(driver, count, f"mem{count}") for count in (10, 50)}
    return Results(seq_start, seq_stop, con_start, con_stop, memory)


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
    start_ok = statistics.median(crisp.seq_start) < statistics.median(ctrd.seq_start)
    memory_ok = marginal_crisp < marginal_ctrd / 2
    print(f"\ntarget: crisp pod start median below containerd's: "
          f"{'met' if start_ok else 'NOT met'}")
    print(f"target: crisp memory per pod under half of containerd's: "
          f"{'met' if memory_ok else 'NOT met'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sequence", type=int, default=30, help="pods run one after another")
    parser.add_argument("--clients", type=int, default=10, help="concurrent clients")
    parser.add_argument("--per-client", type=int, default=3, help="pods per concurrent client")
    parser.add_argument("--only", choices=("crisp", "containerd"), help="measure one runtime")
    options = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: the runtimes mount overlays and create namespaces")
    for binary in ("containerd", "runc", "conmon", "docker-registry"):
        if shutil.which(binary) is None:
            sys.exit(f"{binary} is not installed")
    base = Path(tempfile.mkdtemp(prefix="crisp-bench-"))
    results: dict[str, Results] = {}
    try:
        with running_registry() as registry:
            push_image(registry.url, "bench/busybox", "latest", bench_image())
            push_image(registry.url, "bench/pause", "latest",
                       bench_image(ImageConfig(entrypoint=["/bin/sleep", "2147483647"],
                                               cmd=None)))
            busybox = f"{registry.host}/bench/busybox:latest"
            pause = f"{registry.host}/bench/pause:latest"
            for name, factory in (("crisp", crisp_runtime), ("containerd", containerd_runtime)):
                if options.only and options.only != name:
                    continue
                print(f"measuring {name}...", flush=True)
                with factory(base / name, registry.host) as runtime:
                    results[name] = measure(runtime, busybox, pause, base / name / "logs",
                                            options)
        if len(results) == 2:
            report(results)
        else:
            for name, result in results.items():
                print(name, "start median ms", statistics.median(result.seq_start) * 1000,
                      "memory", result.memory)
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
