"""``crisp install`` and ``uninstall`` in a temporary root, and the unit file they write."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from crisp.cli.daemon import main
from crisp.cli.install import CONFIG, CRICTL, UNIT, UNIT_TEMPLATE
from crisp.config import Config, parse
from crisp.doctor.checks import Status, cni_checks


def everything(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_install_then_uninstall_leaves_nothing(tmp_path: Path) -> None:
    assert main(["install", "--root", str(tmp_path), "--crisp", "/usr/local/bin/crisp"]) == 0
    assert {str(CONFIG), str(CRICTL), str(UNIT)} <= set(everything(tmp_path))
    assert "unix:///run/crisp/crisp.sock" in (tmp_path / CRICTL).read_text()
    parse((tmp_path / CONFIG).read_text(), str(CONFIG))  # the defaults, and valid
    assert main(["uninstall", "--root", str(tmp_path)]) == 0
    assert everything(tmp_path) == []


def test_install_keeps_what_is_there_and_uninstall_leaves_it(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / CRICTL).write_text("runtime-endpoint: unix:///run/other.sock\n")
    assert main(["install", "--root", str(tmp_path)]) == 0
    assert main(["install", "--root", str(tmp_path)]) == 0  # a second run changes nothing
    assert (tmp_path / CRICTL).read_text() == "runtime-endpoint: unix:///run/other.sock\n"
    with (tmp_path / CONFIG).open("a") as edited:  # the operator's own setting
        edited.write("\n# mine\n")
    assert main(["uninstall", "--root", str(tmp_path)]) == 0
    assert everything(tmp_path) == ["etc", "etc/crictl.yaml", "etc/crisp", "etc/crisp/crisp.toml"]


def unit_keys(text: str) -> dict[str, dict[str, str]]:
    sections: dict[str, dict[str, str]] = {}
    current: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
        else:
            key, _, value = line.partition("=")
            current[key] = value
    return sections


def test_the_unit_is_a_notify_service_that_leaves_containers_running() -> None:
    unit = unit_keys(UNIT_TEMPLATE.format(crisp="/usr/local/bin/crisp"))
    service = unit["Service"]
    assert service["Type"] == "notify"
    assert service["Delegate"] == "yes"
    assert service["KillMode"] == "process"
    assert int(service["LimitNOFILE"]) >= 1 << 20
    assert service["StandardOutput"] == service["StandardError"] == "journal"
    assert service["ExecStart"].startswith("/usr/local/bin/crisp daemon")
    assert unit["Install"]["WantedBy"] == "multi-user.target"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_analyze_accepts_the_unit(tmp_path: Path) -> None:
    unit = tmp_path / "crisp.service"
    unit.write_text(UNIT_TEMPLATE.format(crisp=shutil.which("true")))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)],
                            capture_output=True, text=True)
    assert "crisp.service" not in result.stderr, result.stderr


def test_the_installed_config_gives_pods_crisps_default_network(tmp_path: Path) -> None:
    """Install before the quick start: the quick start keeps this file, so it must ask for the
    default bridge network (otherwise the demo pod gets none); all else is the defaults."""
    assert main(["install", "--root", str(tmp_path), "--crisp", "/usr/local/bin/crisp"]) == 0
    installed = parse((tmp_path / CONFIG).read_text(), str(CONFIG))
    assert installed.cni.write_default_config
    defaults = Config()
    assert replace(installed, cni=defaults.cni) == defaults
    assert replace(installed.cni, write_default_config=False) == defaults.cni


def test_the_installed_config_passes_the_doctors_network_check(tmp_path: Path) -> None:
    """With an empty conf_dir the doctor says crisp writes its network, not 'no network'."""
    main(["install", "--root", str(tmp_path)])
    text = (tmp_path / CONFIG).read_text()
    conf_dir = tmp_path / "net.d"
    conf_dir.mkdir()
    config = parse(text.replace('conf_dir = "/etc/cni/net.d"', f'conf_dir = "{conf_dir}"'))
    assert config.cni.conf_dir == str(conf_dir)
    (check,) = [c for c in cni_checks(config) if c.name == "cni: network"]
    assert check.status is Status.OK, check
    assert "writes its default bridge network" in check.detail
