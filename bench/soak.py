"""Soak: pod lifecycles with exec and stats polling for half an hour against one daemon.

10 clients each run pods from RunPodSandbox to RemovePodSandbox (a container and an exec in
each), while one poller lists pods, containers and stats and reads every status, as the
kubelet does. Reported: errors by call (with a sample message), p50/p99 latency per call,
and the daemon's RSS and open fds over time. Target: no errors; RSS and fds flat after the
warm-up (the median of the last quarter within 10% and 16 fds of the first quarter's).

Run as root from the repository root::

    python bench/soak.py [--minutes 30] [--clients 10] [--warmup 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from tests.support.churn import Calls, churn
from tests.support.pods import pods_environment

SAMPLE_EVERY = 10.0  # seconds between RSS and fd samples
RSS_GROWTH_LIMIT = 0.10
FD_GROWTH_LIMIT = 16


@dataclass
class Sample:
    seconds: float
    rss_mib: float
    fds: int
    lifecycles: int


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def verdict(samples: list[Sample], warmup: float, calls: Calls) -> list[str]:
    """What missed the target; empty when the soak met it."""
    problems = []
    if calls.total_errors:
        problems.append(f"{calls.total_errors} errors")
    settled = [s for s in samples if s.seconds >= warmup]
    if len(settled) < 4:
        return [*problems, "too few samples after the warm-up to judge memory and fds"]
    # Medians of the first and the last quarter: the fds of calls in flight come and go.
    quarter = max(1, len(settled) // 4)
    start_rss = statistics.median(s.rss_mib for s in settled[:quarter])
    end_rss = statistics.median(s.rss_mib for s in settled[-quarter:])
    start_fds = statistics.median(s.fds for s in settled[:quarter])
    end_fds = statistics.median(s.fds for s in settled[-quarter:])
    if end_rss > start_rss * (1 + RSS_GROWTH_LIMIT):
        problems.append(f"RSS grew from {start_rss:.1f} to {end_rss:.1f} MiB (medians of the "
                        "first and last quarter after warm-up)")
    if end_fds > start_fds + FD_GROWTH_LIMIT:
        problems.append(f"open fds grew from {start_fds:g} to {end_fds:g}")
    return problems


def report(calls: Calls, samples: list[Sample], minutes: float, clients: int,
           problems: list[str]) -> None:
    print(f"\nsoak: {minutes:g} min, {clients} clients, {calls.lifecycles} pod lifecycles")
    print(f"\n{'call':<24}{'count':>9}{'p50 ms':>10}{'p99 ms':>10}{'errors':>8}{'gone':>7}")
    for name in sorted(set(calls.latencies) | set(calls.errors)):
        latencies = calls.latencies.get(name, [])
        p50 = statistics.median(latencies) * 1000 if latencies else 0.0
        p99 = percentile(latencies, 0.99) * 1000 if latencies else 0.0
        print(f"{name:<24}{len(latencies):>9}{p50:>10.1f}{p99:>10.1f}"
              f"{calls.errors[name]:>8}{calls.gone[name]:>7}")
    for name, sample in calls.error_samples.items():
        print(f"  {name}: {sample}")
    print(f"\n{'minute':>7}{'RSS MiB':>10}{'fds':>6}{'pods':>7}")
    step = max(1, len(samples) // 30)
    for sample in samples[::step]:
        print(f"{sample.seconds / 60:>7.1f}{sample.rss_mib:>10.1f}{sample.fds:>6}"
              f"{sample.lifecycles:>7}")
    print("\ntarget met: 0 errors, RSS and fds flat after warm-up" if not problems
          else f"\ntarget missed: {'; '.join(problems)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--warmup", type=float, default=2.0, help="minutes before judging")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    samples: list[Sample] = []
    with tempfile.TemporaryDirectory(prefix="crisp-soak-") as base, \
            pods_environment(Path(base)) as env:
        assert env.daemon.process is not None
        pid = env.daemon.process.pid
        started = time.monotonic()

        def sample(calls: Calls) -> None:
            elapsed = time.monotonic() - started
            if samples and elapsed - samples[-1].seconds < SAMPLE_EVERY:
                return
            samples.append(Sample(elapsed, rss_mib(pid), len(os.listdir(f"/proc/{pid}/fd")),
                                  calls.lifecycles))

        calls = churn(env, args.minutes * 60, clients=args.clients, tick=sample)
        sample(calls)
    problems = verdict(samples, args.warmup * 60, calls)
    report(calls, samples, args.minutes, args.clients, problems)
    if args.json:
        args.json.write_text(json.dumps({
            "minutes": args.minutes, "clients": args.clients, "lifecycles": calls.lifecycles,
            "errors": dict(calls.errors), "error_samples": calls.error_samples,
            "gone": dict(calls.gone),
            "latency_ms": {name: {"count": len(v), "p50": statistics.median(v) * 1000,
                                  "p99": percentile(v, 0.99) * 1000}
                           for name, v in calls.latencies.items() if v},
            "samples": [asdict(s) for s in samples], "problems": problems,
        }, indent=1))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
