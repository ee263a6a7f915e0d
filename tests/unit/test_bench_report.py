"""bench/report.py's table, plots and document, from a small set of benchmark JSON files."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _report() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_report", ROOT / "bench" / "report.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


report = _report()

FIXTURE = {
    "lifecycle.json": {
        "pod start ms": {"crisp": [10.0, 12.0, 14.0], "containerd": [30.0, 40.0, 50.0]},
        "pod start median ms": {"crisp": 12.0, "containerd": 40.0},
        "daemon RSS MiB @ 10 pods": {"crisp": 60.0, "containerd": 50.0},
        "daemon RSS MiB @ 50 pods": {"crisp": 62.0, "containerd": 55.0},
        "start step CNI ADD ms": {"crisp": 5.0},
        "start step namespaces ms": {"crisp": 1.0},
        "start step other: pod: files ms": {"crisp": 2.0},
    },
    "churn.json": {
        "start throughput pods/s": {"crisp": 9.0, "containerd": 5.0},
        "leftovers": {"crisp": 2, "containerd": 0},
        "daemon RSS MiB @ 250 pods": {"crisp": 70.0, "containerd": 52.0},
        "flag": {"crisp": True, "containerd": "yes"},  # not a figure: left out
    },
    # node.py names its metrics plainly; the file's pod count makes them a series point
    "node-110.json": {
        "daemon CPU %": {"crisp": 2.0, "containerd": 1.0},
        "daemon RSS MiB": {"crisp": 80.0, "containerd": 90.0},
        "ListContainers p99 ms": {"crisp": 3.0, "containerd": 9.0},
        "ListContainers CPU ms per call": {"crisp": 1.2, "containerd": 0.4},
    },
    "meta.json": {"command": "python bench/report.py --quick", "uptime_before": "load 1.0",
                  "uptime_after": "load 2.0", "date": "2026-12-03 13:00 UTC",
                  "commit": "abc1234",
                  "runs": {"pull": {"argv": "bench/pull.py", "status": "failed (exit 2)"}}},
}


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    for name, content in FIXTURE.items():
        (tmp_path / name).write_text(json.dumps(content))
    (tmp_path / "pull.json").write_text("{not json")  # a benchmark that died half-way
    return tmp_path


def test_load_names_each_metric_after_its_benchmark_and_node_files_after_their_pods(
        saved: Path) -> None:
    metrics = report.load(saved)
    assert metrics["lifecycle: pod start median ms"] == {"crisp": 12.0, "containerd": 40.0}
    assert metrics["node: daemon CPU % @ 110 pods"] == {"crisp": 2.0, "containerd": 1.0}
    assert metrics["churn: flag"] == {}
    assert not any(name.startswith(("meta", "pull")) for name in metrics)


def test_target_rows_judge_each_target_and_mark_the_missing_ones(saved: Path) -> None:
    rows = {row.metric: row for row in report.target_rows(report.load(saved))}
    start = rows["lifecycle: pod start median ms"]
    assert start.ratio == pytest.approx(0.3) and start.met is True
    assert rows["lifecycle: daemon RSS MiB @ 10 pods"].met is False
    assert rows["node: daemon RSS MiB @ 110 pods"].met is True
    assert rows["node: daemon CPU % @ 110 pods"].met is False
    assert rows["node: ListContainers p99 ms @ 110 pods"].met is True
    assert rows["churn: start throughput pods/s"].met is True
    assert rows["churn: leftovers"].met is False
    # streaming wrote nothing: its targets are there, not measured
    missing = rows["streaming: exec latency median ms"]
    assert missing.crisp is None and missing.met is None
    table = report.markdown_table(list(rows.values()))
    assert "| lifecycle: pod start median ms | 12.0 | 40.0 | 0.30x | ≤ 0.5x | **met** |" in table
    assert "| streaming: port-forward MiB/s | not measured | not measured | — |" in table
    assert "NOT met" in table


def test_series_share_a_line_for_the_same_pods_and_keep_node_apart(saved: Path) -> None:
    lines = report.series(report.load(saved), "MiB")
    rss = lines["daemon RSS MiB"]
    assert rss["crisp, 1 container per pod"] == [(10, 60.0), (50, 62.0), (250, 70.0)]
    assert rss["containerd, 2 containers per pod, polled"] == [(110, 90.0)]
    # a share of a core, not node's CPU per call
    assert list(report.series(report.load(saved), "CPU %")) == ["daemon CPU %"]


def test_distributions_and_steps(saved: Path) -> None:
    metrics = report.load(saved)
    assert report.distributions(metrics) == {
        "lifecycle: pod start ms": {"crisp": [10.0, 12.0, 14.0],
                                    "containerd": [30.0, 40.0, 50.0]}}
    # the steps first in their order, then the others by size
    assert report.step_rows(metrics) == [("namespaces", 1.0), ("CNI ADD", 5.0),
                                         ("other: pod: files", 2.0)]


def test_plots_and_document(saved: Path, tmp_path: Path) -> None:
    metrics = report.load(saved)
    docs = tmp_path / "docs"
    plots = report.plot(metrics, docs / "benchmarks")
    assert sorted(p.name for p in plots) == ["cpu.png", "latency.png", "memory.png"]
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in plots)
    meta = json.loads((saved / "meta.json").read_text())
    text = report.document(metrics, meta, plots[:1], docs)
    assert "`python bench/report.py --quick`" in text
    assert "load before: `load 1.0`" in text and "pull: `bench/pull.py` — failed" in text
    assert "](benchmarks/latency.png)" in text
    assert "Memory against the number of pods: not measured." in text
    assert "| outside the steps (gRPC, locks, the client) | 4.00 | 33% |" in text


def test_without_cpu_figures_there_is_no_cpu_plot(tmp_path: Path) -> None:
    (tmp_path / "lifecycle.json").write_text(json.dumps(FIXTURE["lifecycle.json"]))
    plots = report.plot(report.load(tmp_path), tmp_path / "out")
    assert sorted(p.name for p in plots) == ["latency.png", "memory.png"]


def test_matplotlib_is_a_dev_dependency_only() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert any(d.startswith("matplotlib") for d in project["optional-dependencies"]["dev"])
    assert not any(d.startswith("matplotlib") for d in project["dependencies"])
    assert not [p for p in (ROOT / "src" / "crisp").rglob("*.py")
                if "matplotlib" in p.read_text()]
