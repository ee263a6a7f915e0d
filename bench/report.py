"""One benchmark report: crisp against containerd, as a ratio table and plots in docs/.

Runs bench/lifecycle.py, pull.py, node.py (once per pod count), streaming.py and churn.py, each
with ``--json``, keeps their JSON and logs in ``--save`` (a temporary directory otherwise), and
writes docs/benchmarks.md with the table of targets (crisp, containerd, ratio, target, met?)
and PNG plots in docs/benchmarks/: latency distributions, and memory and CPU against the
number of pods. ``--from DIR`` builds the report from JSON saved earlier, running nothing.

Every benchmark writes ``{"metric": {"crisp": x, "containerd": y}}``: a number, or a list of
samples (a distribution: the table shows its median). A metric named ``... @ N pods`` is a
point of a series against the pod count. node.py's file is named ``node-N.json`` for its
``--pods N`` and each of its metrics without ``@`` gets `` @ N pods`` appended, so it may name
them plainly (``daemon CPU %``, ``daemon RSS MiB``, ``ListContainers p99 ms``...). A metric or
benchmark that is missing is reported as "not measured", never as a failure of the report.
The targets live here, in the benchmark, never in a timed test. Run as root::

    python bench/report.py [--quick] [--save DIR] [--skip pull,...]
    python bench/report.py --from DIR
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
RUNTIMES = ("crisp", "containerd")
SERIES = re.compile(r"^(?P<base>.+) @ (?P<pods>\d+) pods$")
STEP_PREFIX = "lifecycle: start step "
# lifecycle.py's split of a pod start (its START_SPLIT), then the other steps by size
STEP_ORDER = ("namespaces", "CNI ADD", "conmon", "runc create", "runc start", "state commit")

Metrics = dict[str, dict[str, Any]]


# Targets -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Target:
    """A goal for every metric whose name matches ``pattern``."""

    label: str  # what the table shows when nothing matched
    pattern: str
    text: str
    check: Callable[[float, float | None], bool]
    needs_containerd: bool = True


def _ratio_at_most(bound: float) -> Callable[[float, float | None], bool]:
    return lambda crisp, ctrd: ctrd is not None and ctrd > 0 and crisp / ctrd <= bound


def _ratio_at_least(bound: float) -> Callable[[float, float | None], bool]:
    return lambda crisp, ctrd: ctrd is not None and ctrd > 0 and crisp / ctrd >= bound


TARGETS = (
    Target("lifecycle: pod start median ms", r"^lifecycle: pod start median ms$", "≤ 0.5x",
           _ratio_at_most(0.5)),
    Target("lifecycle: memory per additional pod MiB",
           r"^lifecycle: memory per additional pod MiB$", "< 0.5x",
           lambda crisp, ctrd: ctrd is not None and ctrd > 0 and crisp / ctrd < 0.5),
    Target("node: daemon RSS MiB @ 10 and 110 pods",
           r"^(lifecycle|node|churn): daemon RSS MiB @ \d+ pods$", "≤ 1x", _ratio_at_most(1.0)),
    Target("node: daemon CPU % @ 10 and 110 pods", r"^node: daemon CPU %.* @ \d+ pods$",
           "≤ 1x", _ratio_at_most(1.0)),
    Target("node: runtime CPU % (daemon + per-pod processes) @ 10 and 110 pods",
           r"^node: runtime CPU %.* @ \d+ pods$", "≤ 1x", _ratio_at_most(1.0)),
    Target("node: ListContainers p99 ms @ 110 pods", r"^node: ListContainers p99 ms @ \d+ pods$",
           "crisp < 5 ms", lambda crisp, ctrd: crisp < 5.0, needs_containerd=False),
    Target("churn: start throughput pods/s", r"^churn: start throughput pods/s$", "≥ 1x",
           _ratio_at_least(1.0)),
    Target("churn: leftovers", r"^churn: leftovers$", "crisp 0",
           lambda crisp, ctrd: crisp == 0, needs_containerd=False),
    Target("streaming: exec latency median ms", r"^streaming: exec latency median ms$", "< 1x",
           lambda crisp, ctrd: ctrd is not None and ctrd > 0 and crisp < ctrd),
    Target("streaming: exec stdout MiB/s", r"^streaming: exec stdout MiB/s$", "≥ 0.5x",
           _ratio_at_least(0.5)),
    Target("streaming: port-forward MiB/s", r"^streaming: port-forward MiB/s$", "≥ 0.5x",
           _ratio_at_least(0.5)),
)


# Loading -----------------------------------------------------------------------------------

def load(directory: Path) -> Metrics:
    """Every benchmark's JSON in ``directory``, each metric named ``<benchmark>: <metric>``."""
    metrics: Metrics = {}
    for path in sorted(directory.glob("*.json")):
        if path.name == "meta.json":
            continue
        try:
            found = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(found, dict):
            continue
        bench = path.stem.split("-")[0]
        node = re.fullmatch(r"node-(\d+)", path.stem)
        for metric, values in found.items():
            if not isinstance(values, dict):
                continue
            name = f"{metric} @ {node.group(1)} pods" if node and "@" not in metric else metric
            metrics.setdefault(f"{bench}: {name}", {}).update(
                {runtime: value for runtime, value in values.items() if _usable(value)})
    return metrics


def _usable(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return True
    return (isinstance(value, list) and bool(value)
            and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value))


def scalar(value: Any) -> float | None:
    """A number as it is; a distribution as its median; anything else as None."""
    if isinstance(value, list):
        return float(statistics.median(value)) if value else None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


# The table ---------------------------------------------------------------------------------

@dataclass
class Row:
    metric: str
    crisp: float | None
    containerd: float | None
    target: str
    met: bool | None  # None: no target, or not measured

    @property
    def ratio(self) -> float | None:
        if self.crisp is None or not self.containerd:
            return None
        return self.crisp / self.containerd


def _pods(metric: str) -> int:
    match = SERIES.match(metric)
    return int(match.group("pods")) if match else -1


def target_rows(metrics: Metrics) -> list[Row]:
    """One row per metric a target covers (or one "not measured" row for the target)."""
    rows: list[Row] = []
    for target in TARGETS:
        matched = sorted((m for m in metrics if re.match(target.pattern, m)),
                         key=lambda m: (_pods(m), m))
        if not matched:
            rows.append(Row(target.label, None, None, target.text, None))
        for metric in matched:
            crisp = scalar(metrics[metric].get("crisp"))
            ctrd = scalar(metrics[metric].get("containerd"))
            measured = crisp is not None and (ctrd is not None or not target.needs_containerd)
            rows.append(Row(metric, crisp, ctrd, target.text,
                            target.check(crisp, ctrd) if measured and crisp is not None
                            else None))
    return rows


def other_rows(metrics: Metrics) -> list[Row]:
    """Every metric no target covers, for the full table."""
    covered = {m for m in metrics for t in TARGETS if re.match(t.pattern, m)}
    covered |= {m for m in metrics if m.startswith(STEP_PREFIX)}
    # a distribution whose median has a metric of its own
    covered |= {m for m in metrics if m.endswith(" ms") and f"{m[:-3]} median ms" in metrics}
    return [Row(m, scalar(metrics[m].get("crisp")), scalar(metrics[m].get("containerd")), "",
                None)
            for m in sorted(metrics, key=lambda m: (SERIES.sub(r"\g<base>", m), _pods(m)))
            if m not in covered]


def step_rows(metrics: Metrics) -> list[tuple[str, float]]:
    """crisp's pod start by step (lifecycle.py's split), in the order it records them."""
    found = {m[len(STEP_PREFIX):-3]: value for m in metrics
             if m.startswith(STEP_PREFIX) and m.endswith(" ms")
             and (value := scalar(metrics[m].get("crisp"))) is not None}
    named = [(label, found.pop(label)) for label in STEP_ORDER if label in found]
    return named + sorted(found.items(), key=lambda item: -item[1])


def _number(value: float | None) -> str:
    if value is None:
        return "not measured"
    if value == 0 or abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}"


def markdown_table(rows: list[Row], with_target: bool = True) -> str:
    head = "| metric | crisp | containerd | ratio |"
    rule = "| --- | ---: | ---: | ---: |"
    if with_target:
        head += " target | met? |"
        rule += " --- | --- |"
    lines = [head, rule]
    for row in rows:
        ratio = f"{row.ratio:.2f}x" if row.ratio is not None else "—"
        line = f"| {row.metric} | {_number(row.crisp)} | {_number(row.containerd)} | {ratio} |"
        if with_target:
            met = "not measured" if row.met is None else ("**met**" if row.met else "NOT met")
            line += f" {row.target} | {met} |"
        lines.append(line)
    return "\n".join(lines)


# Plots -------------------------------------------------------------------------------------

def distributions(metrics: Metrics) -> dict[str, dict[str, list[float]]]:
    """Latency samples per metric (lists named ``... ms``), runtimes in a fixed order."""
    return {metric: {r: [float(v) for v in values[r]] for r in RUNTIMES
                     if isinstance(values.get(r), list)}
            for metric, values in sorted(metrics.items())
            if metric.endswith(" ms") and any(isinstance(values.get(r), list) for r in RUNTIMES)}


def series(metrics: Metrics, kind: str) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """Metrics ``<bench>: <base> @ N pods`` whose base contains ``kind``, as lines:
    base -> "<runtime>, <workload>" -> [(N, value)]. lifecycle and churn run the same pods
    (one container each) and share a line; node's pods (two containers, polled) have their own.
    """
    found: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for metric, values in metrics.items():
        match = SERIES.match(metric)
        if not match:
            continue
        bench, _, base = match.group("base").partition(": ")
        if kind not in base:
            continue
        workload = WORKLOADS.get(bench, bench)
        for runtime in RUNTIMES:
            value = scalar(values.get(runtime))
            if value is not None:
                found.setdefault(base, {}).setdefault(f"{runtime}, {workload}", []).append(
                    (int(match.group("pods")), value))
    for lines in found.values():
        for points in lines.values():
            points.sort()
    return dict(sorted(found.items()))


WORKLOADS = {"lifecycle": "1 container per pod", "churn": "1 container per pod",
             "node": "2 containers per pod, polled"}
COLOURS = {"crisp": "tab:blue", "containerd": "tab:orange"}


def plot(metrics: Metrics, directory: Path) -> list[Path]:
    """Write the PNGs there is data for; their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    samples = distributions(metrics)
    if samples:
        figure, axes = plt.subplots(len(samples), 1, figsize=(8, 2.4 * len(samples)),
                                    squeeze=False)
        for axis, (metric, by_runtime) in zip(axes[:, 0], samples.items(), strict=True):
            names = list(by_runtime)
            parts = axis.boxplot([by_runtime[n] for n in names], orientation="horizontal",
                                 widths=0.6,
                                 patch_artist=True, showfliers=True)
            axis.set_yticks(range(1, len(names) + 1), names)
            for patch, name in zip(parts["boxes"], names, strict=True):
                patch.set_facecolor(COLOURS.get(name, "grey"))
                patch.set_alpha(0.5)
            for position, name in enumerate(names, start=1):
                axis.plot(by_runtime[name], [position] * len(by_runtime[name]), "|",
                          color=COLOURS.get(name, "grey"), alpha=0.6)
            axis.set_title(metric, fontsize=10)
            axis.set_xlabel("ms")
            axis.grid(axis="x", alpha=0.3)
        figure.tight_layout()
        written.append(_save(figure, directory / "latency.png", plt))
    # "CPU %": the share of a core, not node's "<RPC> CPU ms per call".
    for kind, file_name, unit in (("MiB", "memory.png", "MiB"), ("CPU %", "cpu.png", "%")):
        lines = series(metrics, kind)
        if not lines:
            continue
        figure, axes = plt.subplots(1, len(lines), figsize=(4.5 * len(lines), 3.6),
                                    squeeze=False)
        for axis, (base, by_runtime) in zip(axes[0], lines.items(), strict=True):
            for label, points in sorted(by_runtime.items()):
                runtime, _, workload = label.partition(", ")
                style = "s--" if workload.startswith("2") else "o-"
                axis.plot([n for n, _ in points], [v for _, v in points], style,
                          label=label, color=COLOURS.get(runtime, "grey"))
            axis.set_title(base, fontsize=10)
            axis.set_xlabel("pods")
            axis.set_ylabel(unit)
            axis.set_ylim(bottom=0)
            axis.grid(alpha=0.3)
            axis.legend(fontsize=8)
        figure.tight_layout()
        written.append(_save(figure, directory / file_name, plt))
    return written


def _save(figure: Any, path: Path, plt: Any) -> Path:
    figure.savefig(path, dpi=90, metadata={"Software": None})  # no version: stable files
    plt.close(figure)
    return path


# The document ------------------------------------------------------------------------------

def document(metrics: Metrics, meta: dict[str, Any], plots: list[Path], docs: Path) -> str:
    """docs/benchmarks.md."""
    rows = target_rows(metrics)
    met = sum(1 for row in rows if row.met)
    measured = sum(1 for row in rows if row.met is not None)
    parts = [
        "# Benchmarks: crisp against containerd",
        "",
        "Written by `bench/report.py` (do not edit by hand: run it again). Both runtimes run on "
        "the same machine in the same run, get the same images from one local registry and "
        "the very same CRI calls; a ratio is crisp / containerd (below 1: crisp is lower). "
        "Where the daemon's memory goes, and what did not reduce it: "
        "[footprint.md](footprint.md).",
        "",
        "## How this was produced",
        "",
    ]
    parts += [f"- {line}" for line in describe(meta)]
    parts += ["", "## Targets", "",
              f"{met} of {measured} measured targets met.", "", markdown_table(rows), ""]
    names = {path.name: path for path in plots}
    parts += ["## Plots", ""]
    for file_name, caption in (("latency.png", "Latency distributions (box: quartiles; "
                                "ticks: every sample)"),
                               ("memory.png", "Memory against the number of pods"),
                               ("cpu.png", "Daemon CPU against the number of pods")):
        if file_name in names:
            relative = os.path.relpath(names[file_name], docs)
            parts += [f"{caption}:", "", f"![{caption}]({relative})", ""]
        else:
            parts += [f"{caption}: not measured.", ""]
    steps = step_rows(metrics)
    if steps:
        samples = metrics.get("lifecycle: pod start ms", {}).get("crisp")
        mean = statistics.mean(samples) if isinstance(samples, list) else None
        parts += ["## Where crisp's pod start goes", "",
                  "Mean ms per pod start over lifecycle.py's sequence, from the step timing "
                  "crisp serves in Status verbose `steps` (src/crisp/steps.py): the next gain "
                  "is in the largest row.", "", "| step | ms | share |", "| --- | ---: | ---: |"]
        for label, ms in steps:
            share = f"{ms / mean * 100:.0f}%" if mean else "—"
            parts.append(f"| {label} | {ms:.2f} | {share} |")
        if mean:
            outside = mean - sum(ms for _, ms in steps)
            parts.append(f"| outside the steps (gRPC, locks, the client) | {outside:.2f} | "
                         f"{outside / mean * 100:.0f}% |")
            parts.append(f"| **pod start, mean** | {mean:.2f} | 100% |")
        parts.append("")
    others = other_rows(metrics)
    if others:
        parts += ["## Every other figure", "", "Distributions show their median.", "",
                  markdown_table(others, with_target=False), ""]
    return "\n".join(parts)


def describe(meta: dict[str, Any]) -> list[str]:
    lines = []
    if meta.get("command"):
        lines.append(f"command: `{meta['command']}`")
    if meta.get("date"):
        lines.append(f"date: {meta['date']}, commit {meta.get('commit', '?')}")
    if meta.get("machine"):
        lines.append(f"machine: {meta['machine']}")
    if meta.get("uptime_before"):
        lines.append(f"load before: `{meta['uptime_before']}`; after: "
                     f"`{meta.get('uptime_after', '?')}` (the machine is shared: timings are "
                     f"noisy, ratios within one run are what to compare)")
    for name, run in meta.get("runs", {}).items():
        took = f", {run['seconds']:.0f} s" if "seconds" in run else ""
        took += f", load average after it {run['load']}" if run.get("load") else ""
        lines.append(f"{name}: `{run.get('argv', '')}` — {run.get('status', '?')}{took}")
    lines += meta.get("notes", [])
    return lines or ["from saved JSON, without a record of how it was run"]


# Running the benchmarks --------------------------------------------------------------------

def plan(options: argparse.Namespace) -> dict[str, list[str]]:
    """Benchmark runs: output name -> arguments (the script first)."""
    quick = options.quick
    runs = {
        "lifecycle": ["lifecycle.py", *(["--sequence", "10", "--clients", "5",
                                         "--per-client", "2"] if quick else [])],
        "pull": ["pull.py", *(["--repeat", "1", "--shapes", "large,small-files"]
                              if quick else [])],
        "streaming": ["streaming.py", *(["--execs", "10", "--rounds", "1"] if quick else [])],
        "churn": ["churn.py", "--pods", str(options.churn_pods), "--burst",
                  str(options.churn_burst), *(["--cycles", "1"] if quick else [])],
    }
    for pods in options.node_pods:
        runs[f"node-{pods}"] = ["node.py", "--pods", str(pods), "--duration",
                                str(options.node_duration)]
    order = ["lifecycle", "pull", *(f"node-{p}" for p in options.node_pods), "streaming",
             "churn"]
    return {name: runs[name] for name in order
            if name.split("-")[0] not in options.skip}


def run_all(options: argparse.Namespace, directory: Path) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "command": shlex.join(["python", "bench/report.py", *sys.argv[1:]]),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": _git("rev-parse", "--short", "HEAD"),
        "machine": f"{os.cpu_count()} cores, "
                   f"{os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / 2**30:.0f} GiB",
        "uptime_before": _uptime(), "runs": {}, "notes": options.note,
    }
    for name, args in plan(options).items():
        out = directory / f"{name}.json"
        argv = [sys.executable, str(BENCH / args[0]), *args[1:], "--json", str(out)]
        shown = shlex.join(["bench/" + args[0], *args[1:]])
        print(f"== {name}: {shown}", flush=True)
        began = time.monotonic()
        with open(directory / f"{name}.log", "wb") as log:
            try:
                code = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                                      timeout=options.timeout).returncode
                status = "ok" if code == 0 and out.exists() else f"failed (exit {code})"
            except subprocess.TimeoutExpired:
                status = f"stopped after {options.timeout:.0f} s"
        seconds = time.monotonic() - began
        if status != "ok":
            tail = (directory / f"{name}.log").read_text(errors="replace")[-600:]
            print(f"   {status}; the end of its log:\n{tail}", flush=True)
        meta["runs"][name] = {"argv": shown, "status": status, "seconds": round(seconds),
                              "load": _uptime().partition("load average: ")[2]}
        meta["uptime_after"] = _uptime()
        (directory / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    return meta


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], capture_output=True, text=True,
                          cwd=ROOT).stdout.strip() or "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--from", dest="source", metavar="DIR", type=Path,
                        help="build the report from the JSON saved there; run nothing")
    parser.add_argument("--save", metavar="DIR", type=Path, help="keep JSON and logs there")
    parser.add_argument("--quick", action="store_true",
                        help="fewer samples and rounds everywhere (a smoke run, not a figure)")
    parser.add_argument("--skip", default="", help="comma-separated benchmarks to leave out "
                        "(lifecycle, pull, node, streaming, churn)")
    parser.add_argument("--node-pods", default="10,110", help="node.py pod counts")
    parser.add_argument("--node-duration", type=float, default=300.0)
    parser.add_argument("--churn-pods", type=int, default=250)
    parser.add_argument("--churn-burst", type=int, default=50)
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per benchmark")
    parser.add_argument("--note", action="append", default=[],
                        help="a line for the report's account of how it was produced")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--plots", type=Path, default=ROOT / "docs" / "benchmarks")
    options = parser.parse_args()
    options.skip = {name for name in options.skip.split(",") if name}
    options.node_pods = [int(n) for n in options.node_pods.split(",") if n]
    if options.source:
        directory = options.source
        meta_file = directory / "meta.json"
        meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
        meta["notes"] = [*meta.get("notes", []), *options.note]
    else:
        if os.geteuid() != 0:
            sys.exit("run as root: the benchmarks mount overlays and create namespaces")
        directory = options.save or Path(tempfile.mkdtemp(prefix="crisp-report-"))
        directory.mkdir(parents=True, exist_ok=True)
        meta = run_all(options, directory)
    metrics = load(directory)
    plots = plot(metrics, options.plots)
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(document(metrics, meta, plots, options.out.parent))
    print(f"wrote {options.out} and {', '.join(str(p) for p in plots) or 'no plots'} "
          f"(JSON and logs in {directory})")


if __name__ == "__main__":
    main()
