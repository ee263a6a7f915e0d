"""``crisp doctor`` on this machine: it passes, and a broken setting is named and fails it."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from tests.integration.conftest import DaemonFactory
from tests.support.daemon import CrispDaemon, checkout_env


def doctor(daemon: CrispDaemon, *args: str) -> tuple[int, Any]:
    result = subprocess.run(
        [sys.executable, "-m", "crisp", "doctor", "--config", str(daemon.config_path), *args],
        env=checkout_env(), capture_output=True, text=True, timeout=120)
    return result.returncode, json.loads(result.stdout) if "--json" in args else result.stdout


def test_doctor_passes_on_this_machine_with_crisp_running(make_daemon: DaemonFactory) -> None:
    daemon = make_daemon("[cni]\nwrite_default_config = false\n")
    code, report = doctor(daemon, "--json")
    statuses = {check["name"]: check["status"] for check in report["checks"]}
    assert code == 0 and report["ok"], report
    assert "FAIL" not in statuses.values()
    assert statuses["socket"] == "OK"
    assert statuses["config"] == "OK"
    assert statuses["binary: runtime of handler runc"] == "OK"
    assert any(name.startswith("registry: ") for name in statuses)


def test_a_missing_runtime_binary_is_named_and_fails(make_daemon: DaemonFactory) -> None:
    daemon = make_daemon('[runtimes.runc]\nruntime_path = "/nonexistent/runc"\n', start=False)
    code, text = doctor(daemon, "--offline")
    assert code == 1
    failing = [line for line in text.splitlines() if line.startswith("FAIL")]
    assert len(failing) == 1, text
    assert "/nonexistent/runc" in failing[0] and "runtimes.runc.runtime_path" in failing[0]
    assert "fix: install it" in text


def test_a_broken_config_file_fails_naming_the_key(make_daemon: DaemonFactory) -> None:
    daemon = make_daemon("cgroup_manager = 7\n", start=False)
    code, report = doctor(daemon, "--json", "--offline")
    assert code == 1
    [config] = [c for c in report["checks"] if c["name"] == "config"]
    assert config["status"] == "FAIL" and "cgroup_manager" in config["detail"]
